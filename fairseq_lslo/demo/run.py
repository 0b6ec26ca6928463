"""``make demo``: generate -> SentencePiece -> binarize -> pretrain -> fine-tune 4 ways -> decode -> BLEU.

``python -m fairseq_lslo.demo [--demo tiny|default] [--out DIR] [--jobs N] [--force]``.
Each stage prints a banner with the elapsed time and leaves a stamp file; a rerun skips the
stages whose stamp matches the configuration (``--force`` redoes everything).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from typing import Callable, Dict, List, Optional

from lslo_common.atomic import atomic_write_text

from . import report
from .benchmark import GRAMMARS, generate
from .commands import METHODS, Method, Run, runs_of, train_command
from .config import CONFIGS
from .data import binarize, encode_all, train_sentencepiece, write_raw
from .params import group_counts, method_counts
from .scoring import aggregate, direction_bleu

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Stages:
    """Stage banners with elapsed time, and stamp files that let a rerun skip finished stages.

    A stage is skipped when its stamp holds the same configuration and no earlier stage ran."""

    def __init__(self, work: str, key: Dict, force: bool, total: int):
        self.work, self.key, self.force, self.total = work, key, force, total
        self.start = time.time()
        self.n = 0
        self.seconds: Dict[str, float] = {}  # per stage, measured when it ran (also for skipped ones)
        self.loads: Dict[str, List[float]] = {}  # load average when each stage finished
        self.reused: List[str] = []  # stages skipped because an earlier run did them
        os.makedirs(os.path.join(work, "stamps"), exist_ok=True)

    def elapsed(self) -> str:
        s = int(time.time() - self.start)
        return f"{s // 60}m{s % 60:02d}s"

    def run(self, name: str, title: str, fn: Callable[[], Optional[Dict]]) -> Dict:
        self.n += 1
        stamp = os.path.join(self.work, "stamps", f"{name}.json")
        print(f"==> [{self.n}/{self.total}] {title}  (elapsed {self.elapsed()})", flush=True)
        if not self.force and os.path.exists(stamp):
            with open(stamp, encoding="utf-8") as f:
                saved = json.load(f)
            if saved.get("key") == self.key:
                print(f"    done before: skipped (delete {stamp} or pass --force to redo)", flush=True)
                self.seconds[name], self.loads[name] = saved["seconds"], saved.get("load", [])
                self.reused.append(name)
                return saved.get("result") or {}
        t0 = time.time()
        self.force = True  # every later stage depends on this one: redo them too
        result = fn() or {}
        self.seconds[name], self.loads[name] = time.time() - t0, [round(x, 2) for x in os.getloadavg()]
        record = {"key": self.key, "result": result, "seconds": self.seconds[name], "load": self.loads[name]}
        atomic_write_text(stamp, json.dumps(record, indent=1))
        print(f"    finished in {time.time() - t0:.0f} s", flush=True)
        return result


def pruning_available() -> bool:
    """True when the ``lslo_pruning`` optimizer (issue 3) is registered."""
    import fairseq_lslo  # noqa: F401  (fills the registries)
    from fairseq.optim import OPTIMIZER_REGISTRY

    return "lslo_pruning" in OPTIMIZER_REGISTRY


def run_logged(cmd: List[str], log: str, threads: int) -> float:
    """Run a command with its output in ``log``; returns its wall time; raises naming the log."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    t0 = time.time()
    with open(log, "w", encoding="utf-8") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
    if done.returncode != 0:
        with open(log, encoding="utf-8") as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"command failed (exit {done.returncode}), log {log}:\n{tail}")
    return time.time() - t0


def kind_of(method: Method) -> str:
    if not method.trains:
        return "base"
    return "full" if method.arch == "transformer" else "lslo"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--demo", choices=sorted(CONFIGS), default="default", help="size of the run (default: default)")
    p.add_argument("--out", help="output directory (default: results/demo, or results/demo-tiny for --demo tiny)")
    p.add_argument("--jobs", type=int, default=2, help="fine-tuning/decoding runs in parallel, one thread each (default: 2)")
    p.add_argument("--force", action="store_true", help="redo every stage even if its stamp file exists")
    p.add_argument("--seeds", metavar="S1,S2",
                   help="seeds of the parameterisation study (LSLo and LSLo + pruning, our parameterisation "
                        "and the reference's), e.g. 1,2 (default: the size's, 1,2 for default, 1 for tiny)")
    a = p.parse_args(argv)
    if a.jobs < 1:
        p.error(f"--jobs must be at least 1, got {a.jobs}")
    cfg = CONFIGS[a.demo]
    if a.seeds:
        try:
            seeds = tuple(int(x) for x in a.seeds.split(","))
        except ValueError:
            p.error(f"--seeds: expected comma-separated integers such as 1,2, got {a.seeds!r}")
        if not seeds or len(set(seeds)) != len(seeds):
            p.error(f"--seeds: expected distinct seeds such as 1,2, got {a.seeds!r}")
        cfg = replace(cfg, study_seeds=seeds)
    out = os.path.abspath(a.out or os.path.join(REPO_ROOT, "results", "demo" if a.demo == "default" else f"demo-{a.demo}"))
    work = os.path.join(out, "work")
    os.makedirs(work, exist_ok=True)
    key = {"config": json.loads(json.dumps(asdict(cfg))), "grammars": [asdict(g) for g in GRAMMARS]}
    methods = [m for m in METHODS.values()]
    notes: List[str] = []
    if not pruning_available():
        methods = [m for m in methods if not m.prune]
        notes.append("LSLo + gradual pruning was not run: the lslo_pruning optimizer is not installed.")
    runs = runs_of(methods, cfg.seed, cfg.study_seeds)
    stages = Stages(work, key, a.force, total=7)
    t_start = time.time()
    print(f"LSLo demo '{cfg.name}': {len(cfg.langs)} languages, {len(cfg.langs) * (len(cfg.langs) - 1)} directions, "
          f"methods: {', '.join(m.name for m in methods)} (study seeds {','.join(map(str, cfg.study_seeds))}: "
          f"{len(runs)} runs); output {out}", flush=True)

    bench = generate(cfg.sizes, seed=cfg.seed)
    raw, spm_dir, bin_dir = (os.path.join(work, d) for d in ("raw", "spm", "bin"))

    def data_stage():
        write_raw(bench, raw)
        model = train_sentencepiece(bench, raw, spm_dir, cfg.spm_vocab)
        dict_path = encode_all(bench, raw, model, spm_dir)
        binarize(bench, spm_dir, dict_path, bin_dir, a.jobs)
        return {p: {l: len(bench.portions[p]["train"][l]) for l in bench.langs} for p in bench.portions}

    stages.run("data", "generate the benchmark, train SentencePiece, binarize", data_stage)
    ckpt_dir = os.path.join(work, "checkpoints")
    logs = os.path.join(work, "logs")
    os.makedirs(logs, exist_ok=True)
    base_ckpt = os.path.join(ckpt_dir, "base", "checkpoint_last.pt")

    def pretrain_stage():
        shutil.rmtree(os.path.join(ckpt_dir, "base"), ignore_errors=True)
        cmd = train_command(cfg, os.path.join(bin_dir, "pretrain"), os.path.join(ckpt_dir, "base"), METHODS["base"])
        return {"seconds": run_logged(cmd, os.path.join(logs, "pretrain.log"), 1)}

    pre = stages.run("pretrain", f"pretrain the base transformer ({cfg.pretrain.updates} updates)", pretrain_stage)

    def finetune_one(r: Run) -> float:
        save = os.path.join(ckpt_dir, r.name)
        shutil.rmtree(save, ignore_errors=True)
        cmd = train_command(cfg, os.path.join(bin_dir, "finetune"), save, r.method, base_ckpt, seed=r.seed)
        return run_logged(cmd, os.path.join(logs, f"finetune-{r.name}.log"), 1)

    trained = [r for r in runs if r.method.trains]

    def finetune_stage():
        with ThreadPoolExecutor(a.jobs) as pool:
            secs = list(pool.map(finetune_one, trained))
        return {r.name: s for r, s in zip(trained, secs)}

    ft = stages.run("finetune", f"fine-tune {len(trained)} runs ({cfg.finetune.updates} updates each, "
                    f"{a.jobs} at a time): {', '.join(r.name for r in trained)}", finetune_stage)
    ckpts = {r.name: base_ckpt if not r.method.trains else os.path.join(ckpt_dir, r.name, "checkpoint_last.pt")
             for r in runs}

    def decode_one(r: Run) -> float:
        cmd = [sys.executable, "-m", "fairseq_lslo.demo.decode", "--demo", cfg.name, "--data",
               os.path.join(bin_dir, "finetune"), "--path", ckpts[r.name], "--out", os.path.join(work, "hyp", r.name)]
        return run_logged(cmd, os.path.join(logs, f"decode-{r.name}.log"), 1)

    def decode_stage():
        with ThreadPoolExecutor(a.jobs) as pool:
            secs = list(pool.map(decode_one, runs))
        return {r.name: s for r, s in zip(runs, secs)}

    dec = stages.run("decode", f"decode all directions of the test set, {len(runs)} models (beam {cfg.beam})",
                     decode_stage)

    def bleu_stage():
        groups = dict(cfg.languages)
        return {r.name: {"directions": (d := direction_bleu(os.path.join(work, "hyp", r.name), raw, cfg.langs)),
                         **aggregate(d, groups)} for r in runs}

    bleu = stages.run("bleu", "score every direction with sacrebleu", bleu_stage)

    def params_stage():
        counts = {r.name: method_counts(ckpts[r.name], kind_of(r.method)) for r in runs}
        curve = []
        if any(m.prune for m in methods):
            snaps = sorted(
                (int(mt.group(1)), os.path.join(ckpt_dir, "lslo_pruned", f))
                for f in os.listdir(os.path.join(ckpt_dir, "lslo_pruned"))
                if (mt := re.fullmatch(r"checkpoint_\d+_(\d+)\.pt", f))
            )
            for update, path in snaps:
                g = group_counts(path)
                curve.append({"update": update, "groups": {
                    k: 1 - v["nonzero_parameters"] / max(1, v["lslo_parameters"]) for k, v in g.items()}})
        return {"counts": counts, "curve": curve}

    params = stages.run("params", "count trainable and non-zero parameters", params_stage)

    def report_stage():
        summary = {
            "format": "lslo-demo/1",
            "demo": cfg.name,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), highest 1-minute load average "
                       f"at the end of a stage {max([l[0] for l in stages.loads.values() if l] or [0.0]):.1f}",
            "stage_load_averages": stages.loads,
            "stage_seconds": {k: round(v, 1) for k, v in stages.seconds.items()},
            "command": f"make demo DEMO={cfg.name}",
            # the stages' own times, so that a rerun which skips stages reports the real cost
            "wall_seconds": round(sum(stages.seconds.values()), 1),
            "pretrain_seconds": round(pre.get("seconds", 0.0), 1),
            "directions": len(cfg.langs) * (len(cfg.langs) - 1),
            "languages": cfg.langs,
            "groups": dict(cfg.languages),
            "train_sentences": stages_result(work, "data"),
            "model_parameters": params["counts"]["base"]["model_parameters"],
            "methods": {
                m.name: {"label": m.label, "bleu": bleu[m.name], "parameters": params["counts"][m.name],
                         "train_seconds": round(ft[m.name], 1) if m.trains else None,
                         "decode_seconds": round(dec[m.name], 1)}
                for m in methods
            },
            "sparsity_curve": params["curve"],
            "study": report.study_summary(
                [r for r in runs if r.method.study], bleu, params["counts"],
                {r.name: round(ft[r.name], 1) for r in trained}),
            "notes": notes + ([f"Stages reused from an earlier run (their times are that run's): "
                               f"{', '.join(stages.reused)}."] if stages.reused else []),
        }
        report.write_json(os.path.join(out, "summary.json"), summary)
        report.write_markdown(os.path.join(out, "summary.md"), summary)
        report.plot_bleu(os.path.join(out, "bleu_per_language.png"), summary)
        if params["curve"]:
            report.plot_sparsity(os.path.join(out, "sparsity.png"), params["curve"])
        return {}

    stages.force = True  # the report (timings, load) always reflects this run
    stages.run("report", "write summary.md, summary.json and plots", report_stage)
    with open(os.path.join(out, "summary.md"), encoding="utf-8") as f:
        print(f.read())
    print(f"demo finished in {time.time() - t_start:.0f} s; results in {out}", flush=True)
    return 0


def stages_result(work: str, name: str) -> Dict:
    with open(os.path.join(work, "stamps", f"{name}.json"), encoding="utf-8") as f:
        return json.load(f)["result"]


if __name__ == "__main__":
    sys.exit(main())
