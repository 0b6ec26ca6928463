"""``lslo-arch CHECKPOINT [--plot FILE.png] [--json]``: read the routing a search run learned.

The report itself is :mod:`fairseq_lslo.reports.arch`.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from ..reports.arch import RULE, analyse, format_text, plot, plot_format
from .runner import run_tool


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lslo-arch",
        description="Show the src/tgt routing weights learned by a search run (--lslo-*-routing learn) and "
                    "the flags for a hard-routed run. " + RULE[0].upper() + RULE[1:] + ".",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="fairseq checkpoint of an lslo_transformer model")
    p.add_argument("--plot", metavar="FILE.png", help="also draw the weights as a layer-by-layer heatmap "
                                                       "(.png, .pdf or .svg)")
    p.add_argument("--json", action="store_true", help="print a JSON document instead of the table")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool("lslo-arch", lambda: report(args))


def report(args: argparse.Namespace) -> int:
    if args.plot:
        plot_format(args.plot)  # before reading a large checkpoint
    doc = analyse(args.checkpoint)
    if args.plot:
        plot(doc, args.plot)
    print(json.dumps(doc, indent=2) if args.json else format_text(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
