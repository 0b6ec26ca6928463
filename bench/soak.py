"""Soak test: a long CPU fairseq-train run of a tiny LSLo model (with gradual pruning).

Checks that no logged loss is NaN/inf and that the resident memory of the training process
stays flat after warm-up.  It samples ``VmRSS`` of the fairseq-train process from /proc while
the run goes, and writes ``results/bench/soak.json``.

usage: python bench/soak.py [--updates 2000] [--out results/bench/soak.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

LANGS = ["en", "fr", "de"]
PAIRS = ["en-fr", "fr-en", "en-de", "de-en", "fr-de", "de-fr"]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def train_command(data: str, save: str, updates: int, extra: List[str]) -> List[str]:
    bin_dir = os.path.dirname(sys.executable)
    return [
        os.path.join(bin_dir, "fairseq-train"), data, "--user-dir", os.path.join(ROOT, "fairseq_lslo"),
        "--task", "translation_multi_simple_epoch", "--lang-pairs", ",".join(PAIRS),
        "--encoder-langtok", "src", "--decoder-langtok", "--arch", "lslo_transformer",
        "--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
        "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2",
        "--decoder-attention-heads", "2", "--share-all-embeddings",
        "--lslo-langs", "en:high,fr:high,de:low", "--lslo-rank", "high:2,low:8",
        "--lslo-encoder-positions", "all", "--lslo-decoder-positions", "all",
        "--cpu", "--optimizer", "adam", "--lr", "0.003", "--max-tokens", "300", "--max-update", str(updates),
        "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.2", "--clip-norm", "1.0",
        "--sampling-method", "temperature", "--sampling-temperature", "5", "--num-workers", "0",
        "--log-format", "json", "--log-interval", "50", "--no-epoch-checkpoints", "--no-save",
        "--disable-validation", "--seed", "1", "--save-dir", save, *extra,
    ]


def soak(updates: int, extra: List[str]) -> Dict:
    from fairseq_lslo.testing.tinydata import bin_dir_for

    work = tempfile.mkdtemp(prefix="lslo-soak-")
    data = bin_dir_for(work, LANGS, PAIRS)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(train_command(data, os.path.join(work, "ckpt"), updates, extra),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    samples: List[Dict] = []
    lock = threading.Lock()
    current = {"update": 0}

    def sample_memory() -> None:
        while proc.poll() is None:
            try:
                kib = rss_kib(proc.pid)
            except OSError:
                break
            with lock:
                samples.append({"t": time.time(), "update": current["update"], "rss_kib": kib})
            time.sleep(0.5)

    sampler = threading.Thread(target=sample_memory, daemon=True)
    sampler.start()
    losses, tail = [], []
    for line in proc.stdout:
        tail = (tail + [line])[-40:]
        if '"num_updates"' in line and "{" in line:
            stats = json.loads(line[line.index("{"):])
            with lock:
                current["update"] = int(stats["num_updates"])
            losses.append({"update": int(stats["num_updates"]), "loss": float(stats["loss"])})
    proc.wait()
    sampler.join(timeout=2)
    if proc.returncode != 0:
        raise SystemExit("fairseq-train failed:\n" + "".join(tail))
    return summarize(updates, samples, losses)


def summarize(updates: int, samples: List[Dict], losses: List[Dict]) -> Dict:
    warm = [s["rss_kib"] for s in samples if s["update"] >= updates // 10]
    first, last = warm[: max(1, len(warm) // 10)], warm[-max(1, len(warm) // 10):]
    start, end = sorted(first)[len(first) // 2], sorted(last)[len(last) // 2]
    bad = [x for x in losses if not math.isfinite(x["loss"])]
    return {
        "updates": updates,
        "logged_losses": losses,
        "non_finite_losses": len(bad),
        "rss_samples": len(samples),
        "rss_after_warmup_mib": round(start / 1024, 1),
        "rss_at_end_mib": round(end / 1024, 1),
        "rss_growth_after_warmup": round(end / start - 1.0, 4),
        "rss_peak_mib": round(max(s["rss_kib"] for s in samples) / 1024, 1),
        "warmup_updates": updates // 10,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=2000, help="training updates (default: 2000)")
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "bench", "soak.json"), help="JSON report")
    parser.add_argument("--no-prune", action="store_true", help="plain Adam instead of the pruning optimizer")
    args = parser.parse_args(argv)
    extra = [] if args.no_prune else prune_flags(args.updates)
    report = soak(args.updates, extra)
    report["pruning"] = not args.no_prune
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, args.out)
    print(f"soak: {report['updates']} updates, non-finite losses {report['non_finite_losses']}, "
          f"RSS after warm-up {report['rss_after_warmup_mib']} MiB, at end {report['rss_at_end_mib']} MiB "
          f"(growth {100 * report['rss_growth_after_warmup']:+.1f}%), peak {report['rss_peak_mib']} MiB -> {args.out}")
    ok = report["non_finite_losses"] == 0 and report["rss_growth_after_warmup"] < 0.05
    print("soak: OK" if ok else "soak: FAILED (non-finite loss or RSS growth >= 5% after warm-up)")
    return 0 if ok else 1


def prune_flags(updates: int) -> List[str]:
    """Pruning from 10% to 60% of the run, masks recomputed every 50 updates."""
    return ["--optimizer", "lslo_pruning", "--lslo-sparsity", "high:0.9,low:0.5",
            "--lslo-prune-start", str(updates // 10), "--lslo-prune-end", str(updates * 6 // 10),
            "--lslo-prune-interval", "50"]


if __name__ == "__main__":
    sys.exit(main())
