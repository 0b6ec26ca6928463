"""``make bench`` = ``python -m bench [ARGS]``: every benchmark of this folder, one process each.

A benchmark is a module ``bench/NAME.py`` with a ``main(argv)``; the modules listed in
``NOT_BENCHMARKS`` are helpers or other checks (``make soak``, ``make gpu-check``).  ``speed``
runs first and receives ARGS (e.g. ``--device cuda``); the others run with their defaults.
``--list`` prints the benchmarks; ``--only NAME[,NAME]`` runs some.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIRST = "speed"
#: modules of bench/ that are not benchmarks run by ``make bench``
NOT_BENCHMARKS = {"__init__", "__main__", "timing", "evaluate_speed", "gpu_check", "soak", "fairseq_wheel_setup"}


def benchmarks() -> List[str]:
    """The benchmark modules present, ``speed`` first, then by name."""
    names = sorted(f[:-3] for f in os.listdir(HERE) if f.endswith(".py") and f[:-3] not in NOT_BENCHMARKS)
    return sorted(names, key=lambda n: (n != FIRST, n))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--list", action="store_true", help="print the benchmarks and exit")
    p.add_argument("--only", default=None, help="comma-separated benchmarks to run (default: all)")
    args, rest = p.parse_known_args(argv)
    names = benchmarks()
    if args.list:
        print("\n".join(names))
        return 0
    if args.only:
        unknown = sorted(set(args.only.split(",")) - set(names))
        if unknown:
            p.error(f"--only: no benchmark {', '.join(unknown)} (there are: {', '.join(names)})")
        names = [n for n in names if n in args.only.split(",")]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    failed = []
    for name in names:
        cmd = [sys.executable, "-m", f"bench.{name}"] + (rest if name == FIRST else [])
        print(f"==> {' '.join(cmd[1:])}", flush=True)
        if subprocess.run(cmd, cwd=ROOT, env=env).returncode != 0:
            failed.append(name)
    if failed:
        print(f"bench: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
