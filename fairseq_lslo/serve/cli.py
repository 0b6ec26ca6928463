"""``lslo-serve CHECKPOINT``: translate every direction of one model over HTTP, with dynamic batching.

    lslo-serve checkpoints/checkpoint_best.pt --data DATA --spm spm.model --port 8000
    curl -s localhost:8000/translate -d '{"src": "en", "tgt": "de", "text": ["Hello world"]}'

Loads one :class:`fairseq_lslo.Translator` and answers ``POST /translate``, ``GET /languages``
and ``GET /health`` (see :mod:`fairseq_lslo.serve.app`).  Concurrent requests of any
directions share batches (``--max-batch-tokens``, ``--max-wait-ms``).  SIGTERM or Ctrl-C stops
accepting connections, answers the requests already received, then exits.  Needs the ``serve``
extra (aiohttp).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import List, Optional

from lslo_common.runner import run_tool
from ..errors import LSLoConfigError, LSLoError

PROG = "lslo-serve"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="HTTP translation server over one LSLo model: every "
                                "direction, concurrent requests batched together.")
    p.add_argument("checkpoint", help="LSLo checkpoint (or any checkpoint fairseq_lslo.Translator loads)")
    p.add_argument("--data", metavar="DIR", help="fairseq data directory with the dictionaries "
                                                 "(default: beside the checkpoint)")
    p.add_argument("--spm", metavar="FILE", help="SentencePiece model (default: beside the checkpoint)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    p.add_argument("--max-batch-tokens", type=int, default=4000, metavar="N",
                   help="a batch closes when its requests fill N padded source tokens, longest sentence x "
                        "sentences (default: 4000)")
    p.add_argument("--max-wait-ms", type=float, default=10.0, metavar="MS",
                   help="... or when its oldest request has waited MS milliseconds (default: 10)")
    p.add_argument("--max-input-tokens", type=int, default=512, metavar="N",
                   help="refuse a text of more than N source tokens with 413 (default: 512)")
    p.add_argument("--beam", type=int, default=5, metavar="K", help="beam size (default: 5)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if "
                                                  "available, else cpu)")
    p.add_argument("--half", action="store_true", help="half precision (on a GPU)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads for translating (default: torch's)")
    p.add_argument("--shutdown-timeout", type=float, default=60.0, metavar="S",
                   help="on SIGTERM, wait at most S seconds for the requests in flight (default: 60)")
    return p


def check_args(args: argparse.Namespace) -> None:
    for flag, value in (("--max-batch-tokens", args.max_batch_tokens), ("--max-input-tokens", args.max_input_tokens),
                        ("--beam", args.beam)):
        if value < 1:
            raise LSLoConfigError(f"{flag} must be >= 1, got {value}")
    if args.max_wait_ms < 0:
        raise LSLoConfigError(f"--max-wait-ms must be >= 0, got {args.max_wait_ms}")
    if args.max_input_tokens > args.max_batch_tokens:
        raise LSLoConfigError(f"--max-input-tokens {args.max_input_tokens} is more than --max-batch-tokens "
                              f"{args.max_batch_tokens}: one text must fit in a batch")
    if not 0 <= args.port < 65536:
        raise LSLoConfigError(f"--port must be in 0..65535, got {args.port}")
    if not os.path.isfile(args.checkpoint):
        raise LSLoConfigError(f"CHECKPOINT {args.checkpoint}: no such checkpoint file")


def require_aiohttp() -> None:
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        raise LSLoError("lslo-serve needs the Python package 'aiohttp': pip install 'fairseq-lslo[serve]' "
                        "(make install installs it)") from None


async def serve(service, host: str, port: int, shutdown_timeout: float, ready=None) -> None:
    """Listen until SIGTERM/SIGINT (or ``service.stop_event``), then finish the requests in flight."""
    from aiohttp import web

    from .app import build_app

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    service.listen_for_stop(lambda: loop.call_soon_threadsafe(stop.set))
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
            pass
    runner = web.AppRunner(build_app(service), shutdown_timeout=shutdown_timeout, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        print(f"{PROG}: serving {len(service.languages)} languages ({len(service.directions)} directions) on "
              f"http://{bound_host}:{bound_port}", flush=True)
        if ready is not None:
            ready(bound_host, bound_port)
        await stop.wait()
        print(f"{PROG}: stopping: answering the requests in flight", file=sys.stderr, flush=True)
        service.stopping = True
        service.batcher.drain()
    finally:
        await runner.cleanup()  # stops listening, waits for the handlers, then closes the batcher
    print(f"{PROG}: stopped after {service.batcher.sentences} sentences in {service.batcher.batches} batches",
          file=sys.stderr, flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=os.environ.get("LOGLEVEL", "WARNING").upper(), stream=sys.stderr, force=True)

    def body() -> int:
        check_args(args)
        require_aiohttp()
        import torch

        from .. import Translator
        from .app import ServeConfig, Service

        if args.threads:
            torch.set_num_threads(args.threads)
        translator = Translator.from_checkpoint(args.checkpoint, data=args.data, spm=args.spm, device=args.device,
                                                half=args.half)
        config = ServeConfig(args.max_batch_tokens, args.max_wait_ms, args.max_input_tokens, args.beam)
        asyncio.run(serve(Service(translator, config), args.host, args.port, args.shutdown_timeout))
        return 0

    return run_tool(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
