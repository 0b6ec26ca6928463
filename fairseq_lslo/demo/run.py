"""``make demo``: generate -> SentencePiece -> binarize -> pretrain -> fine-tune -> decode -> BLEU.

``python -m fairseq_lslo.demo [--demo default|study|pruning|tiny] [--out DIR] [--jobs N] [--force]``.
``default`` compares the fine-tuning methods (base, full fine-tuning, shared LoRA, LSLo,
LSLo + gradual pruning); ``study`` is the parameterisation study and ``pruning`` the pruning
study, both on the ``default`` size's data and base model.  Each stage prints a banner with the
elapsed time and leaves a stamp file, each fine-tuning run one of its own; a rerun skips what
is done with the same settings (``--force`` redoes everything).
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
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from typing import Callable, Dict, List, Optional

from lslo_common.atomic import atomic_write_text

from . import pruning_report, report
from .benchmark import GRAMMARS, generate
from .commands import METHODS, Method, Run, runs_of, train_command
from .config import CONFIGS, DemoConfig, base_key, data_key
from .data import binarize, encode_all, train_sentencepiece, write_raw
from .params import group_counts, method_counts
from .scoring import aggregate, direction_bleu

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _read_json(path: str) -> Optional[Dict]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path: str, data: Dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=1))


def load() -> List[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Stages:
    """Stage banners with elapsed time, and stamp files that let a rerun skip finished stages.

    A stage is skipped when its stamp holds the same key; a stamp records when the stage finished
    (``done``), which later stages put into their keys: what depends on a redone stage is redone."""

    def __init__(self, force: bool, total: int):
        self.force, self.total = force, total
        self.start = time.time()
        self.n = 0
        self.seconds: Dict[str, float] = {}  # per stage, measured when it ran (also for skipped ones)
        self.loads: Dict[str, List[float]] = {}  # load average when each stage finished
        self.reused: List[str] = []  # stages skipped because an earlier run did them

    def elapsed(self) -> str:
        s = int(time.time() - self.start)
        return f"{s // 60}m{s % 60:02d}s"

    def banner(self, title: str) -> None:
        self.n += 1
        print(f"==> [{self.n}/{self.total}] {title}  (elapsed {self.elapsed()})", flush=True)

    def run(self, name: str, title: str, fn: Callable[[], Optional[Dict]], key: Optional[Dict] = None,
            stamp_dir: str = "") -> Dict:
        """Run ``fn`` unless ``stamp_dir/name.json`` holds ``key``; returns the stamp's contents
        (``result``, ``seconds``, ``done``).  Without ``stamp_dir`` the stage always runs."""
        self.banner(title)
        stamp = os.path.join(stamp_dir, f"{name}.json") if stamp_dir else ""
        saved = _read_json(stamp) if stamp and not self.force else None
        if saved is not None and saved.get("key") == key:
            print(f"    done before: skipped (delete {stamp} or pass --force to redo)", flush=True)
            self.seconds[name], self.loads[name] = saved["seconds"], saved.get("load", [])
            self.reused.append(name)
            return saved
        t0 = time.time()
        result = fn() or {}
        self.seconds[name], self.loads[name] = time.time() - t0, load()
        done = {"key": key, "result": result, "seconds": self.seconds[name], "load": self.loads[name],
                "done": time.time()}
        if stamp:
            os.makedirs(stamp_dir, exist_ok=True)
            _write_json(stamp, done)
        print(f"    finished in {time.time() - t0:.0f} s", flush=True)
        return done


def pruning_available() -> bool:
    """True when the ``lslo_pruning`` optimizer is registered."""
    import fairseq_lslo  # noqa: F401  (fills the registries)
    from fairseq.optim import OPTIMIZER_REGISTRY

    return "lslo_pruning" in OPTIMIZER_REGISTRY


def prune_structure_available() -> bool:
    """True when ``--lslo-prune-structure`` (structured rank pruning) exists in this install."""
    import argparse as ap

    from fairseq_lslo.optim.lslo_pruning import LSLoPruningOptimizer

    parser = ap.ArgumentParser()
    try:
        LSLoPruningOptimizer.add_args(parser)
    except ap.ArgumentError:
        return True  # already registered elsewhere: cannot tell, assume present
    return any("--lslo-prune-structure" in a.option_strings for a in parser._actions)


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


def _without_save_dir(cmd: List[str]) -> List[str]:
    return [x for i, x in enumerate(cmd) if x != "--save-dir" and (i == 0 or cmd[i - 1] != "--save-dir")]


def kind_of(method: Method) -> str:
    if not method.trains:
        return "base"
    return "full" if method.arch == "transformer" else "lslo"


def methods_of(cfg: DemoConfig, notes: List[str]) -> List[Method]:
    """The methods a size runs; pruning methods are left out (with a note) where the optimizer is missing."""
    if cfg.name == "pruning":
        from .pruning_study import study_methods

        with_structure = prune_structure_available()
        if not with_structure:
            notes.append("Structured rank pruning was not run: this install has no --lslo-prune-structure.")
        methods = [METHODS["base"], *study_methods(cfg, with_structure)]
    else:
        methods = [METHODS[name] for name in cfg.methods]
    if any(m.prune for m in methods) and not pruning_available():
        methods = [m for m in methods if not m.prune]
        notes.append("LSLo + gradual pruning was not run: the lslo_pruning optimizer is not installed.")
    return methods


def default_out(name: str) -> str:
    return os.path.join(REPO_ROOT, "results", "demo" if name == "default" else f"demo-{name}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fairseq_lslo.demo", description="\n\n".join(__doc__.split("\n\n")[:2]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", choices=sorted(CONFIGS), default="default",
                   help="what to run: default (the methods comparison), study (the parameterisation study), "
                        "pruning (the pruning study), tiny (a small variant for the tests) (default: default)")
    p.add_argument("--out", help="output directory (default: results/demo, or results/demo-NAME for --demo NAME)")
    p.add_argument("--base-dir", metavar="DIR",
                   help="study and pruning: output directory of the default size, whose data and base model they "
                        "reuse (default: results/demo; made there first if missing)")
    p.add_argument("--jobs", type=int, default=2, help="fine-tuning/decoding runs in parallel, one thread each (default: 2)")
    p.add_argument("--force", action="store_true", help="redo every stage and run even if its stamp file exists")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write the report from the runs finished so far (e.g. while a study runs)")
    p.add_argument("--seeds", metavar="S1,S2",
                   help="seeds of the study runs (every run of study and pruning; LSLo and LSLo + pruning in "
                        "default), e.g. 1,2 (default: the size's: 1 for default and tiny, 1,2 for study and pruning)")
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
    out = os.path.abspath(a.out or default_out(a.demo))
    work = os.path.join(out, "work")
    base_work = work
    if cfg.shares_base_of:
        base_work = os.path.join(os.path.abspath(a.base_dir or default_out(cfg.shares_base_of)), "work")
    for d in (work, base_work):
        os.makedirs(d, exist_ok=True)
    notes: List[str] = []
    methods = methods_of(cfg, notes)
    runs = runs_of(methods, cfg.seed, cfg.study_seeds)
    if cfg.name == "pruning":  # the core comparison first, with both seeds: the clock may cut a study short
        from .pruning_study import run_order

        runs.sort(key=lambda r: run_order(r.name, r.method.name, list(cfg.study_seeds).index(r.seed)
                                          if r.method.study else 0))
    stages = Stages(a.force, total=6)
    t_start = time.time()
    print(f"LSLo demo '{cfg.name}': {len(cfg.langs)} languages, {len(cfg.langs) * (len(cfg.langs) - 1)} directions, "
          f"{len(methods)} methods ({', '.join(m.name for m in methods)}), seeds "
          f"{','.join(map(str, cfg.study_seeds))} for the study methods: {len(runs)} runs; output {out}"
          + (f"; data and base model in {base_work}" if base_work != work else ""), flush=True)

    raw, spm_dir, bin_dir = (os.path.join(base_work, d) for d in ("raw", "spm", "bin"))
    base_stamps = os.path.join(base_work, "stamps")

    def data_stage():
        bench = generate(cfg.sizes, seed=cfg.seed)
        write_raw(bench, raw)
        model = train_sentencepiece(bench, raw, spm_dir, cfg.spm_vocab)
        dict_path = encode_all(bench, raw, model, spm_dir)
        binarize(bench, spm_dir, dict_path, bin_dir, a.jobs)
        return {p: {l: len(bench.portions[p]["train"][l]) for l in bench.langs} for p in bench.portions}

    data = stages.run("data", "generate the benchmark, train SentencePiece, binarize", data_stage,
                      key=data_key(cfg), stamp_dir=base_stamps)
    ckpt_dir = os.path.join(work, "checkpoints")
    logs = os.path.join(work, "logs")
    os.makedirs(logs, exist_ok=True)
    base_ckpt = os.path.join(base_work, "checkpoints", "base", "checkpoint_last.pt")

    def pretrain_stage():
        shutil.rmtree(os.path.dirname(base_ckpt), ignore_errors=True)
        cmd = train_command(cfg, os.path.join(bin_dir, "pretrain"), os.path.dirname(base_ckpt), METHODS["base"])
        os.makedirs(os.path.join(base_work, "logs"), exist_ok=True)
        return {"seconds": run_logged(cmd, os.path.join(base_work, "logs", "pretrain.log"), 1)}

    pre = stages.run("pretrain", f"pretrain the base transformer ({cfg.pretrain.updates} updates)", pretrain_stage,
                     key={**base_key(cfg), "data": data["done"]}, stamp_dir=base_stamps)
    if not os.path.isfile(base_ckpt):
        raise SystemExit(f"demo: the base model {base_ckpt} is missing: delete {base_stamps}/pretrain.json and rerun")
    ckpts = {r.name: base_ckpt if not r.method.trains else os.path.join(ckpt_dir, r.name, "checkpoint_last.pt")
             for r in runs}
    run_stamps = os.path.join(work, "stamps", "runs")
    os.makedirs(run_stamps, exist_ok=True)
    ft_data = os.path.join(bin_dir, "finetune")

    def run_key(r: Run) -> Dict:
        train = train_command(cfg, ft_data, os.path.join(ckpt_dir, r.name), r.method, base_ckpt, seed=r.seed) \
            if r.method.trains else []
        return {"train": train, "base": pre["done"], "beam": cfg.beam, "demo": cfg.name}

    def same_run_of_base_size(key: Dict) -> Optional[Dict]:
        """The stamp of a run of the size whose base this one shares that trained exactly the same way
        (the same command but for the save folder, the same base model and beam), if its outputs exist."""
        if base_work == work:
            return None
        stamps = os.path.join(base_work, "stamps", "runs")
        for f in sorted(os.listdir(stamps)) if os.path.isdir(stamps) else []:
            other = _read_json(os.path.join(stamps, f))
            if not other or not os.path.isdir(os.path.join(base_work, "hyp", f[:-5])):
                continue
            ok = {k: v for k, v in other["key"].items() if k not in ("train", "demo")}
            mine = {k: v for k, v in key.items() if k not in ("train", "demo")}
            if ok == mine and _without_save_dir(other["key"]["train"]) == _without_save_dir(key["train"]):
                return {**other, "from": f[:-5]}
        return None

    def one_run(r: Run) -> Dict:
        """Fine-tune (unless the base), decode every direction, count parameters; one stamp per run."""
        stamp = os.path.join(run_stamps, f"{r.name}.json")
        key = run_key(r)
        saved = None if a.force else _read_json(stamp)
        if saved is not None and saved.get("key") == key:
            return {**saved, "reused": True}
        if a.report_only:
            return {}
        same = None if a.force else same_run_of_base_size(key)
        if same is not None:  # e.g. the pruning study's LSLo 1/1/4 is the default size's LSLo: take its outputs
            hyp = os.path.join(work, "hyp", r.name)
            shutil.rmtree(hyp, ignore_errors=True)
            shutil.copytree(os.path.join(base_work, "hyp", same["from"]), hyp)
            done = {"key": key, "result": {**same["result"], "same_as": f"{cfg.shares_base_of}/{same['from']}"},
                    "done": time.time()}
            _write_json(stamp, done)
            print(f"    {r.name}: the same run as {cfg.shares_base_of}'s {same['from']}: its outputs reused", flush=True)
            return {**done, "reused": True}
        result: Dict = {"train_seconds": None}
        if r.method.trains:
            save = os.path.join(ckpt_dir, r.name)
            shutil.rmtree(save, ignore_errors=True)
            result["train_seconds"] = run_logged(key["train"], os.path.join(logs, f"finetune-{r.name}.log"), 1)
        cmd = [sys.executable, "-m", "fairseq_lslo.demo.decode", "--demo", cfg.name, "--data", ft_data,
               "--path", ckpts[r.name], "--out", os.path.join(work, "hyp", r.name)]
        result["decode_seconds"] = run_logged(cmd, os.path.join(logs, f"decode-{r.name}.log"), 1)
        result["parameters"] = method_counts(ckpts[r.name], kind_of(r.method))
        result["load"] = load()
        done = {"key": key, "result": result, "done": time.time()}
        _write_json(stamp, done)
        print(f"    {r.name}: trained in {result['train_seconds'] or 0:.0f} s, decoded in "
              f"{result['decode_seconds']:.0f} s (load {result['load'][0]:.1f})", flush=True)
        return done

    failures: Dict[str, str] = {}

    def safe_run(r: Run) -> Dict:
        try:
            return one_run(r)
        except Exception as e:  # one failed run must not lose the others: it is reported at the end
            failures[r.name] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
            return {}

    def runs_stage():
        with ThreadPoolExecutor(a.jobs) as pool:
            results = list(pool.map(safe_run, runs))
        return {r.name: res for r, res in zip(runs, results)}

    trained = [r for r in runs if r.method.trains]
    verb = "report the finished runs of" if a.report_only else f"fine-tune ({cfg.finetune.updates} updates) and decode"
    done_runs = stages.run("runs", f"{verb} {len(runs)} runs, {a.jobs} at a time ({len(trained)} fine-tuning runs, "
                           f"beam {cfg.beam}): {', '.join(r.name for r in runs)}", runs_stage)["result"]
    finished = [r for r in runs if done_runs.get(r.name)]
    reused = [r.name for r in finished if done_runs[r.name].get("reused")]
    missing = [r.name for r in runs if r not in finished]
    if reused:
        notes.append(f"Runs reused from an earlier invocation (their times are that invocation's): {', '.join(reused)}.")
    if missing:
        notes.append(f"Runs missing from this report (not finished or failed): {', '.join(missing)}.")
    res = {r.name: done_runs[r.name]["result"] for r in finished}

    def bleu_stage():
        groups = dict(cfg.languages)
        return {r.name: {"directions": (d := direction_bleu(os.path.join(work, "hyp", r.name), raw, cfg.langs)),
                         **aggregate(d, groups)} for r in finished}

    bleu = stages.run("bleu", "score every direction with sacrebleu", bleu_stage)["result"]

    def curve_stage():
        curve = []
        for r in finished:
            if r.method.snapshots and r.name == r.method.name:
                d = os.path.join(ckpt_dir, r.name)
                snaps = sorted((int(mt.group(1)), os.path.join(d, f)) for f in os.listdir(d)
                               if (mt := re.fullmatch(r"checkpoint_\d+_(\d+)\.pt", f)))
                for update, path in snaps:
                    g = group_counts(path)
                    curve.append({"update": update, "groups": {
                        k: 1 - v["nonzero_parameters"] / max(1, v["lslo_parameters"]) for k, v in g.items()}})
                break
        return {"curve": curve}

    curve = stages.run("params", "sparsity over the updates of the pruning run", curve_stage)["result"]["curve"]
    counts = {name: r["parameters"] for name, r in res.items()}
    train_seconds = {name: r["train_seconds"] for name, r in res.items()}
    machine = (f"{os.cpu_count()} CPU cores ({platform.machine()}), highest 1-minute load average at the end of a "
               f"stage or run {max([l[0] for l in stages.loads.values() if l] + [r['load'][0] for r in res.values()] or [0.0]):.1f}")

    def report_stage():
        first = {r.method.name: r for r in finished if r.name == r.method.name}
        summary = {
            "format": "lslo-demo/1",
            "demo": cfg.name,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine,
            "stage_load_averages": stages.loads,
            "stage_seconds": {k: round(v, 1) for k, v in stages.seconds.items()},
            "command": "make demo" if cfg.name == "default" else f"make demo DEMO={cfg.name}",
            # the stages' own times (a reused stage or run counts with the time it took when it ran)
            # (runs reused from an earlier invocation: their own times, divided by the runs in parallel)
            "wall_seconds": round(sum(v for k, v in stages.seconds.items() if k != "runs") + (
                sum((r["train_seconds"] or 0) + r["decode_seconds"] for r in res.values()) / max(1, a.jobs)
                if reused else stages.seconds["runs"]), 1),
            "pretrain_seconds": round(pre["result"].get("seconds", 0.0), 1),
            "directions": len(cfg.langs) * (len(cfg.langs) - 1),
            "languages": cfg.langs,
            "groups": dict(cfg.languages),
            "train_sentences": data["result"],
            "model_parameters": counts["base"]["model_parameters"] if "base" in counts else None,
            "methods": {
                name: {"label": r.method.label, "bleu": bleu[name], "parameters": counts[name],
                       "train_seconds": round(train_seconds[name], 1) if train_seconds[name] is not None else None,
                       "decode_seconds": round(res[name]["decode_seconds"], 1)}
                for name, r in first.items()
            },
            "sparsity_curve": curve,
            "study": report.study_summary([r for r in finished if r.method.study], bleu, counts,
                                          {k: round(v, 1) for k, v in train_seconds.items() if v is not None}),
            "failures": failures,
            "notes": notes + ([f"Stages reused from an earlier run (their times are that run's): "
                               f"{', '.join(stages.reused)}."] if stages.reused else []),
        }
        report.write_json(os.path.join(out, "summary.json"), summary)
        if cfg.name == "pruning":
            pruning_report.write(out, summary, methods)
        else:
            report.write_markdown(os.path.join(out, "summary.md"), summary)
            report.plot_bleu(os.path.join(out, "bleu_per_language.png"), summary)
            if curve:
                report.plot_sparsity(os.path.join(out, "sparsity.png"), curve)
        return {}

    stages.run("report", "write summary.md, summary.json and plots", report_stage)
    with open(os.path.join(out, "summary.md"), encoding="utf-8") as f:
        print(f.read())
    print(f"demo finished in {time.time() - t_start:.0f} s; results in {out}", flush=True)
    if failures:
        print(f"demo: {len(failures)} run(s) failed: {', '.join(failures)} (logs in {logs})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
