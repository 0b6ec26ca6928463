"""``lslo-export``: the adapters of an LSLo checkpoint, without the base model, as safetensors.

    lslo-export checkpoints/checkpoint_best.pt -o adapters.safetensors

The file holds the LSLo weights, their pruning masks and the LSLo configuration, nothing
else and no pickle; pruned factors are stored sparsely (see
:mod:`fairseq_lslo.modules.adapter_file` for the format).  Load it onto a base model with
the model flag ``--lslo-adapters FILE``.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ..checkpoint_io import load_checkpoint
from ..modules.adapter_file import adapter_tensors, save_adapters
from ..modules.adapter_state import compact_ranks
from ..modules.spec import LSLoSpec
from .runner import run_tool


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lslo-export",
        description="Write the LSLo adapters, masks and configuration of a checkpoint to a safetensors file "
                    "(pruned adapters stored sparsely).",
    )
    p.add_argument("checkpoint", help="LSLo checkpoint (e.g. checkpoints/checkpoint_best.pt)")
    p.add_argument("-o", "--output", required=True, help="adapter file to write (.safetensors)")
    p.add_argument("--keep-ranks", action="store_true",
                   help="keep every rank component, also those pruning emptied (by default a component whose row "
                        "of A or column of B is entirely pruned is dropped: each language's adapters are written "
                        "at the rank pruning kept, and a model loaded from the file computes only those ranks)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool("lslo-export", lambda: export(args))


def export(args: argparse.Namespace) -> int:
    model = load_checkpoint(args.checkpoint)["model"]
    spec = LSLoSpec.from_state(model, args.checkpoint)
    lslo = adapter_tensors(model)
    full = sum(v.numel() for k, v in lslo.items() if not k.endswith("_mask"))
    if not args.keep_ranks:
        spec, lslo = compact_ranks(spec, lslo)
    size = save_adapters(args.output, spec, lslo)
    total = sum(v.numel() for k, v in lslo.items() if not k.endswith("_mask"))
    kept = sum(int(v.sum()) for k, v in lslo.items() if k.endswith("_mask"))
    print(f"lslo-export: wrote {args.output}: {size:,} bytes, {len(lslo)} tensors, "
          f"{kept:,} kept of {total:,} adapter weights")
    if spec.bank_ranks:
        print(f"lslo-export: {len(spec.bank_ranks)} banks written at the ranks pruning kept "
              f"({total:,} of {full:,} weights remain in the smaller layout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
