"""``lslo-merge``: fold a direction's adapters into the base weights -> a plain fairseq transformer.

    lslo-merge CHECKPOINT --source-lang en --target-lang de -o en-de.pt
    lslo-merge CHECKPOINT --all-directions -o merged/        # merged/en-de.pt, merged/de-en.pt, ...

The library is :mod:`fairseq_lslo.deploy.merge`.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from ..checkpoint_io import CheckpointError, atomic_torch_save, load_checkpoint
from ..deploy.merge import (PLAIN_ARCH, parse_direction, plain_checkpoint, trained_directions, writable_directory,
                            write_directions)
from ..modules.spec import LSLoSpec
from .runner import run_tool


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lslo-merge",
        description="Merge LSLo adapters into the base weights and write plain fairseq 'transformer' checkpoints "
                    "(fairseq-generate loads them without --user-dir; ct2-fairseq-converter converts them).",
    )
    p.add_argument("checkpoint", help="LSLo checkpoint (e.g. checkpoints/checkpoint_best.pt)")
    p.add_argument("--source-lang", "-s", help="source language code of the direction")
    p.add_argument("--target-lang", "-t", help="target language code of the direction")
    p.add_argument("--all-directions", action="store_true",
                   help="write one merged checkpoint per direction (the checkpoint's --lang-pairs, or "
                        "--directions) into the directory -o, reading the checkpoint once")
    p.add_argument("--directions", default=None,
                   help="with --all-directions: comma-separated SRC-TGT directions to write instead of all")
    p.add_argument("-o", "--output", required=True,
                   help="merged checkpoint to write (.pt); with --all-directions a directory for SRC-TGT.pt files")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    single = args.source_lang is not None or args.target_lang is not None
    if args.all_directions == single or (single and None in (args.source_lang, args.target_lang)):
        parser.error("give either --source-lang and --target-lang, or --all-directions")
    if args.directions and not args.all_directions:
        parser.error("--directions goes with --all-directions")
    return run_tool("lslo-merge", lambda: merge(args, single))


def merge(args: argparse.Namespace, single: bool) -> int:
    if single and os.path.isdir(args.output):
        raise CheckpointError(f"-o/--output {args.output}: is a directory, expected a file name (e.g. en-de.pt)")
    if single:
        writable_directory(os.path.dirname(os.path.abspath(args.output)), "-o/--output (its directory)")
    state = load_checkpoint(args.checkpoint)
    if single:
        merged = plain_checkpoint(state, args.source_lang, args.target_lang, args.checkpoint)
        atomic_torch_save(merged, args.output)
        print(f"lslo-merge: wrote {args.output} ({args.source_lang}->{args.target_lang}, "
              f"plain '{PLAIN_ARCH}' checkpoint)")
        return 0
    spec = LSLoSpec.from_state(state["model"], args.checkpoint)
    if args.directions:
        directions = [parse_direction(d, "--directions") for d in args.directions.split(",")]
    else:
        directions = trained_directions(state, spec)
    written = write_directions(state, directions, args.output, args.checkpoint)
    print(f"lslo-merge: wrote {len(written)} merged checkpoints to {args.output} "
          f"({', '.join(os.path.basename(w)[:-3] for w in written)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
