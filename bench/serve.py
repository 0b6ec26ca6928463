"""Serving figures: ``serve_mixed_vs_sequential`` (measured) and one server vs one merged model per
direction (memory, counted for the 615M shapes).

    python bench/serve.py            # -> results/bench/serve.json

**Throughput.** The shared tiny run (:mod:`fairseq_lslo.testing.tiny_run`, built once under
``--root``) is served by ``lslo-serve`` in a subprocess (one torch thread, beam 5).  The same
requests, one sentence each in a random direction of the six, are sent (a) by ``--clients``
concurrent clients to a server that batches (``--max-wait-ms``), and (b) one at a time by a
single client to a server started with ``--max-wait-ms 0`` (each request its own batch).  The
two alternate over ``--rounds`` rounds; the figure is median sentences/s of (a) over (b), with
each round's ratio on record (wall-clock time: the server is another process, and the machine's
load average is recorded before and after).

**Memory.** Lang12 (ranks high 2, medium 2, low 8) on the 615M model (12+12 layers, d_model
1024, FFN 4096, vocabulary 256,206): the base model's parameters are counted on the meta device
(tied embeddings once), the LSLo parameters by ``lslo-stats``' own arithmetic
(:func:`fairseq_lslo.cli.stats.compute_stats`) on the banks the configuration builds, for our
default placement (fc1/fc2, full width) and the paper's (q,k,v,[cross],fc1,fc2, sliced).  One
server holds base + all adapters; merged models hold one base-sized model per direction (132).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from argparse import Namespace
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

TARGET = 3.0  # serve_mixed_vs_sequential >= 3 on CPU (issue 18)
LANG12 = "en:high,fr:high,it:high,de:high,nl:medium,zh:medium,ja:medium,ko:medium,oc:low,or:low,sd:low,wo:low"
RANKS = "high:2,medium:2,low:8"
DIMS_615M = dict(layers=12, dim=1024, ffn=4096, heads=16, vocab=256206)
PLACEMENTS = {  # name -> (encoder positions, decoder positions, preset)
    "ours": ("fc1,fc2", "fc1,fc2", "ours"),
    "paper": ("q,k,v,fc1,fc2", "q,k,v,cross_q,cross_k,cross_v,fc1,fc2", "paper"),
}


# --- memory: counted for the 615M shapes ------------------------------------------------------
def base_parameters_615m() -> int:
    """Parameters of the plain 615M transformer (shared embeddings counted once), built on the meta device."""
    import torch
    from fairseq.data import Dictionary
    from fairseq.models.transformer import TransformerModel, base_architecture

    d = Dictionary()
    for i in range(DIMS_615M["vocab"] - len(d)):
        d.add_symbol(f"w{i}")
    task = Namespace(source_dictionary=d, target_dictionary=d)
    n, dim, ffn, heads = DIMS_615M["layers"], DIMS_615M["dim"], DIMS_615M["ffn"], DIMS_615M["heads"]
    args = Namespace(arch="transformer", encoder_layers=n, decoder_layers=n, encoder_embed_dim=dim,
                     decoder_embed_dim=dim, encoder_ffn_embed_dim=ffn, decoder_ffn_embed_dim=ffn,
                     encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_normalize_before=True,
                     decoder_normalize_before=True, share_all_embeddings=True,
                     share_decoder_input_output_embed=True, max_source_positions=1024, max_target_positions=1024)
    base_architecture(args)
    with torch.device("meta"):
        model = TransformerModel.build_model(args, task)
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once


def lslo_parameters_615m(placement: str) -> int:
    """LSLo parameters of Lang12 on the 615M layers, counted by lslo-stats from the banks the spec builds."""
    from fairseq_lslo.reports.stats import compute_stats
    from fairseq_lslo.modules.spec import CONFIG_KEY, LSLoSpec, resolve_preset

    enc, dec, preset = PLACEMENTS[placement]
    args = Namespace(lslo_langs=LANG12, lslo_rank=RANKS, lslo_encoder_positions=enc, lslo_decoder_positions=dec,
                     lslo_encoder_routing="auto", lslo_decoder_routing="auto", lslo_preset=preset)
    resolve_preset(args)
    n, dim, ffn = DIMS_615M["layers"], DIMS_615M["dim"], DIMS_615M["ffn"]
    spec = LSLoSpec.from_args(args, n, n)
    shapes = {"fc1": (dim, ffn), "fc2": (ffn, dim)}
    state = {CONFIG_KEY: spec.to_tensor()}
    for side in ("encoder", "decoder"):
        side_spec = getattr(spec, side)
        for layer, route in enumerate(side_spec.routing):
            for position in side_spec.positions:
                bank = spec.build_bank(route, *shapes.get(position, (dim, dim)), position)
                for name, t in bank.state_dict().items():
                    state[f"{side}.layers.{layer}.{position}.lslo_{route}.{name}"] = t
    return compute_stats(f"lang12-615m-{placement}", {"model": state})["total"]["lslo_parameters"]


def memory_figures() -> dict:
    base = base_parameters_615m()
    languages = len(LANG12.split(","))
    directions = languages * (languages - 1)
    out: Dict[str, object] = {"base_parameters": base, "directions": directions}
    for placement in PLACEMENTS:
        lslo = lslo_parameters_615m(placement)
        one_server = base + lslo
        merged = directions * base
        out[placement] = {
            "lslo_parameters": lslo,
            "one_server_parameters": one_server,
            "merged_per_direction_parameters": merged,
            "one_server_GiB": {"fp32": one_server * 4 / 2**30, "fp16": one_server * 2 / 2**30},
            "merged_per_direction_GiB": {"fp32": merged * 4 / 2**30, "fp16": merged * 2 / 2**30},
            "merged_per_direction_vs_one_server": merged / one_server,
        }
    return out


# --- throughput: measured on the tiny run ----------------------------------------------------
class ServerProcess:
    """``lslo-serve`` (``python -m fairseq_lslo.serve``) on 127.0.0.1, a free port."""

    def __init__(self, ckpt: str, max_wait_ms: float, beam: int):
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen([sys.executable, "-m", "fairseq_lslo.serve", ckpt, "--port", "0", "--threads", "1",
                                      "--beam", str(beam), "--max-wait-ms", str(max_wait_ms)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        line = self.proc.stdout.readline()
        if "serving" not in line:
            self.proc.kill()
            raise RuntimeError(f"lslo-serve did not start: {line}{self.proc.stderr.read()[-3000:]}")
        self.url = line.strip().rsplit(" ", 1)[1]

    def stop(self) -> str:
        self.proc.terminate()
        self.proc.wait(60)
        return self.proc.stderr.read()


def make_requests(run, n: int, seed: int) -> List[dict]:
    """``n`` one-sentence requests, each of a random direction, sentences from the raw valid/test text."""
    rng = random.Random(seed)
    text = {}
    for lang in run.langs:
        lines: List[str] = []
        for split in ("valid", "test"):
            with open(os.path.join(run.raw, f"{split}.{lang}"), encoding="utf-8") as f:
                lines += [ln.strip() for ln in f if ln.strip()]
        text[lang] = lines
    out = []
    for _ in range(n):
        src, tgt = rng.choice(run.pairs).split("-")
        out.append({"src": src, "tgt": tgt, "text": [rng.choice(text[src])]})
    return out


async def send_all(url: str, requests: List[dict], clients: int) -> Tuple[float, List[List[str]]]:
    """(seconds, translations) for ``requests`` sent by ``clients`` concurrent clients, each one at a time."""
    import aiohttp

    results: List[Optional[List[str]]] = [None] * len(requests)
    queue = list(enumerate(requests))

    async def client(session):
        while queue:
            i, body = queue.pop(0)
            async with session.post(url + "/translate", json=body) as r:
                if r.status != 200:
                    raise RuntimeError(f"request {i}: HTTP {r.status}: {await r.text()}")
                results[i] = (await r.json())["translations"]

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        await asyncio.gather(*[client(session) for _ in range(clients)])
        elapsed = time.perf_counter() - start
    return elapsed, results  # type: ignore[return-value]


def throughput_figures(run, requests: int, clients: int, rounds: int, max_wait_ms: float, beam: int) -> dict:
    batching = ServerProcess(run.ckpt, max_wait_ms, beam)
    sequential = ServerProcess(run.ckpt, 0, beam)
    try:
        warm = make_requests(run, 16, seed=99)
        for server in (batching, sequential):
            asyncio.run(send_all(server.url, warm, 4))
        rates: Dict[str, List[float]] = {"mixed": [], "sequential": []}
        for r in range(rounds):
            reqs = make_requests(run, requests, seed=r)
            t_mixed, out_mixed = asyncio.run(send_all(batching.url, reqs, clients))
            t_seq, out_seq = asyncio.run(send_all(sequential.url, reqs, 1))
            rates["mixed"].append(requests / t_mixed)
            rates["sequential"].append(requests / t_seq)
            same = sum(a == b for a, b in zip(out_mixed, out_seq))
            print(f"round {r + 1}/{rounds}: mixed {requests / t_mixed:.1f} sentences/s, one at a time "
                  f"{requests / t_seq:.1f} sentences/s, ratio {t_seq / t_mixed:.2f}; identical outputs "
                  f"{same}/{requests}", file=sys.stderr, flush=True)
    finally:
        logs = {"batching": batching.stop(), "sequential": sequential.stop()}
    ratios = [m / s for m, s in zip(rates["mixed"], rates["sequential"])]
    return {
        "serve_mixed_vs_sequential": statistics.median(rates["mixed"]) / statistics.median(rates["sequential"]),
        "round_ratios": ratios,
        "sentences_per_s": rates,
        "server_logs_last_line": {k: (v.strip().splitlines() or [""])[-1] for k, v in logs.items()},
        "setup": {"requests_per_round": requests, "clients": clients, "rounds": rounds, "beam": beam,
                  "max_wait_ms": max_wait_ms, "sentences_per_request": 1, "directions": list(run.pairs),
                  "model": "the shared tiny run (2+2 layers, d_model 32), one torch thread"},
    }


def load_average() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=None, help="where the tiny run is built or found (default: a temporary dir)")
    p.add_argument("--requests", type=int, default=192, help="one-sentence requests per round (default: 192)")
    p.add_argument("--clients", type=int, default=32, help="concurrent clients of the mixed run (default: 32)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-wait-ms", type=float, default=20.0, help="the batching server's (default: 20)")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--out", default=os.path.join(ROOT, "results", "bench", "serve.json"))
    a = p.parse_args(argv)

    from fairseq_lslo.checkpoint_io import atomic_write
    from fairseq_lslo.testing.tiny_run import build_tiny_run

    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load_before = load_average()
    memory = memory_figures()
    with tempfile.TemporaryDirectory() as tmp:
        run = build_tiny_run(a.root or os.path.join(tmp, "tiny_run"))
        throughput = throughput_figures(run, a.requests, a.clients, a.rounds, a.max_wait_ms, a.beam)
    report = {
        "command": "python bench/serve.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started": started,
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        **throughput,
        "target": {"serve_mixed_vs_sequential": f">= {TARGET}"},
        "meets_target": throughput["serve_mixed_vs_sequential"] >= TARGET,
        "memory_615m_lang12": memory,
    }
    text = json.dumps(report, indent=2) + "\n"
    atomic_write(a.out, lambda f: f.write(text.encode("utf-8")))
    ours = memory["ours"]
    print(f"serve_mixed_vs_sequential = {report['serve_mixed_vs_sequential']:.2f} (target >= {TARGET}; rounds "
          f"{', '.join(f'{r:.2f}' for r in throughput['round_ratios'])}; load {load_before} -> "
          f"{report['load_average_after']})")
    print(f"615M Lang12: one server {ours['one_server_parameters'] / 1e6:.1f}M parameters "
          f"({ours['one_server_GiB']['fp16']:.2f} GiB fp16) vs {memory['directions']} merged models "
          f"{ours['merged_per_direction_parameters'] / 1e9:.1f}B ({ours['merged_per_direction_GiB']['fp16']:.0f} GiB "
          f"fp16): {ours['merged_per_direction_vs_one_server']:.0f}x -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
