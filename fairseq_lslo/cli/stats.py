"""``lslo-stats CHECKPOINT [--json]``: LSLo parameters and what pruning kept, per language.

The record and the table are :mod:`fairseq_lslo.reports.stats`.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from ..reports.stats import compute_stats, format_table
from .runner import run_tool


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lslo-stats",
        description="LSLo parameters and non-zero (kept by pruning) parameters per language, group and in total.",
    )
    parser.add_argument("checkpoint", help="a fairseq checkpoint of an lslo_transformer model")
    parser.add_argument("--json", action="store_true", help="print the lslo-stats/1 JSON record instead of a table")
    args = parser.parse_args(argv)
    return run_tool("lslo-stats", lambda: print_stats(args.checkpoint, args.json))


def print_stats(path: str, as_json: bool) -> int:
    record = compute_stats(path)
    print(json.dumps(record, indent=2) if as_json else format_table(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
