"""``lslo-export-hf``: one direction as a Hugging Face ``M2M100ForConditionalGeneration`` directory.

    lslo-export-hf CHECKPOINT -s en -t de --data DATA -o en-de-hf/ [--spm sentencepiece.model]

The library is :mod:`fairseq_lslo.deploy.hf_export`.  Needs the ``deploy`` extra (transformers).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from ..checkpoint_io import CheckpointError, load_checkpoint
from ..deploy.hf_export import export_direction
from ..deploy.m2m100 import optional_spm
from ..deploy.merge import writable_directory
from .runner import run_tool


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lslo-export-hf",
        description="Write one direction of an LSLo (or merged fairseq transformer) checkpoint as a Hugging Face "
                    "M2M100ForConditionalGeneration directory (config.json + model.safetensors [+ tokenizer]).",
    )
    p.add_argument("checkpoint", help="LSLo checkpoint, or a checkpoint written by lslo-merge")
    p.add_argument("--source-lang", "-s", help="source language (default: the merged checkpoint's)")
    p.add_argument("--target-lang", "-t", help="target language (default: the merged checkpoint's); its token "
                                               "is forced first in generation")
    p.add_argument("--data", required=True, help="fairseq data directory with the dictionaries (dict.LANG.txt)")
    p.add_argument("--spm", default=None, help="SentencePiece model: also write M2M100Tokenizer files")
    p.add_argument("-o", "--output", required=True, help="directory to write (replaced atomically if it exists)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool("lslo-export-hf", lambda: export(args))


def export(args: argparse.Namespace) -> int:
    spm = optional_spm(args.spm)
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise CheckpointError(f"-o/--output {args.output}: exists and is not a directory")
    writable_directory(os.path.dirname(os.path.abspath(args.output)), "-o/--output (its directory)")
    state = load_checkpoint(args.checkpoint)
    names = export_direction(state, args.data, args.output, args.source_lang, args.target_lang, spm,
                             args.checkpoint)
    print(f"lslo-export-hf: wrote {args.output} ({', '.join(names)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
