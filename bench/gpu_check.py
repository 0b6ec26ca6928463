"""The GPU check: everything that needs a CUDA device, in one command, with one summary table.

    python bench/gpu_check.py --device cuda          # what `make gpu-check` runs (about 3-5 min, one H200)
    python bench/gpu_check.py --device cpu --quick   # the CPU-runnable part (the test suite runs it)

Checks (each one row of the table; the exit status is 1 if any row FAILs):

* ``tests``: the test files that take their device from ``tests/devices.py`` (batched routing,
  the low-rank ops under autocast/fp16/bf16), with ``LSLO_TEST_DEVICE=<device>``;
* ``train/<precision>/<route>``: ``fairseq-train`` from a base checkpoint in the published
  layout, every route (src, tgt, shared, learn) under every precision (CUDA: ``--fp16``,
  ``--bf16``, ``--amp``), ``--optimizer lslo_pruning`` pruning during the run: exit status 0,
  every logged loss finite, the saved ``checkpoint_last.pt`` has pruned entries, every pruned
  weight exactly 0, every weight finite, and the last update number;
* ``resume/<precision>``: killed (SIGKILL) between two saves and resumed with the same command,
  the LSLo weights and masks equal those of an uninterrupted run (bit for bit on CPU; on CUDA
  within a tolerance: atomic adds make GPU sums order-dependent);
* ``bench``: ``python -m bench.speed --device <device>`` (what ``make bench
  BENCH_ARGS="--device cuda"`` runs) -> ``results/bench/bench-gpu.json`` on CUDA.

The table is also written as JSON (``--out``, default ``results/bench/gpu-check.json``).
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from lslo_common.atomic import atomic_write_text  # noqa: E402  (no torch: importable before the wheels)

CHECKS = ("tests", "train", "resume", "bench")
ROUTES = ("src", "tgt", "shared", "learn")
PRECISIONS = {"cuda": ("fp16", "bf16", "amp"), "cpu": ("fp32", "fp16", "bf16")}
PRECISION_FLAGS = {"fp32": [], "fp16": ["--fp16"], "bf16": ["--bf16"], "amp": ["--amp"]}
#: a test file runs on LSLO_TEST_DEVICE when it takes its device from tests/devices.py
USES_TEST_DEVICE = re.compile(r"^\s*(from devices import|import devices\b)", re.MULTILINE)
LANG_PAIRS = ["en-fr", "fr-en", "en-de", "de-en", "fr-de", "de-fr"]
MAX_UPDATE = 8
RESUME_UPDATES, SAVE_EVERY, KILL_AT = 12, 4, 6


@dataclass
class Row:
    check: str
    status: str  # PASS | FAIL | SKIP
    seconds: float
    detail: str


# --- setup -------------------------------------------------------------------------------
def prepare(work: str) -> Dict[str, str]:
    """Tiny binarized data and a base checkpoint in the published FLORES-101 layout."""
    from fairseq import options, tasks

    from fairseq_lslo.testing.base_fixture import write_published_checkpoint
    from fairseq_lslo.testing.dicts import write_dicts

    data = write_dicts(os.path.join(work, "data"))
    argv = [data, "--task", "translation_multi_simple_epoch", "--lang-pairs", ",".join(LANG_PAIRS),
            "--encoder-langtok", "src", "--decoder-langtok", "--arch", "transformer", "--cpu"]
    task = tasks.setup_task(options.parse_args_and_arch(options.get_training_parser(), argv))
    base = write_published_checkpoint(os.path.join(work, "base.pt"), task)
    return {"data": data, "base": base}


def train_command(setup: Dict[str, str], save_dir: str, route: str, precision: str, device: str,
                  max_update: int, extra: Sequence[str] = ()) -> List[str]:
    """fairseq-train of an LSLo model (architecture from the base checkpoint) with pruning."""
    criterion = "lslo_label_smoothed_cross_entropy" if route == "learn" else "label_smoothed_cross_entropy"
    sparsity = "high:0.8,low:0.5" + (",shared:0.8" if route == "shared" else "")  # shared layers: their own unit
    cmd = [sys.executable, "-m", "fairseq_cli.train", setup["data"], "--user-dir", os.path.join(ROOT, "fairseq_lslo"),
           "--task", "translation_multi_simple_epoch", "--lang-pairs", ",".join(LANG_PAIRS),
           "--encoder-langtok", "src", "--decoder-langtok", "--arch", "lslo_transformer",
           "--finetune-from-model", setup["base"],
           "--lslo-langs", "en:high,fr:high,de:low", "--lslo-rank", "high:2,low:4",
           "--lslo-encoder-positions", "all", "--lslo-decoder-positions", "all",
           "--lslo-encoder-routing", f"{route}*2", "--lslo-decoder-routing", f"{route}*2",
           "--optimizer", "lslo_pruning", "--lr", "0.01", "--lslo-sparsity", sparsity,
           "--lslo-prune-start", "1", "--lslo-prune-end", "5", "--lslo-prune-interval", "2",
           "--criterion", criterion, "--label-smoothing", "0.1", "--max-tokens", "300",
           "--max-update", str(max_update), "--seed", "1", "--num-workers", "0", "--log-format", "json",
           "--log-interval", "1", "--no-epoch-checkpoints", "--save-interval", "1000", "--disable-validation",
           "--save-dir", save_dir,
           *PRECISION_FLAGS[precision]]
    if device == "cpu":
        cmd.append("--cpu")
        if precision == "fp16":  # fairseq's flat fp32 copy (the --fp16 default) needs CUDA
            cmd.append("--fp16-no-flatten-grads")
    return cmd + list(extra)


def env_for(device: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("OMP_NUM_THREADS", "1")
    env["LSLO_TEST_DEVICE"] = device
    return env


# --- what a finished run must show ----------------------------------------------------------
def logged_losses(log: str) -> List[float]:
    return [float(x) for x in re.findall(r'"(?:train_)?loss": "?([-+\w.]+)"?', log)]


def check_losses(log: str) -> Optional[str]:
    losses = logged_losses(log)
    if not losses:
        return "no loss logged"
    bad = [x for x in losses if not math.isfinite(x)]
    return f"non-finite loss in the log: {bad[:3]}" if bad else None


def check_pruned_checkpoint(path: str, max_update: int) -> Optional[str]:
    """None if the saved LSLo weights are pruned as their masks say; else what is wrong."""
    import torch

    from fairseq_lslo.checkpoint_io import load_checkpoint

    state = load_checkpoint(path)
    model = state["model"]
    masks = {k: v for k, v in model.items() if k.endswith("_mask")}
    if not masks:
        return "no pruning masks in the checkpoint"
    pruned = 0
    for key, mask in masks.items():
        weight = model[key[: -len("_mask")]]
        if not torch.isfinite(weight.float()).all():
            return f"{key[:-5]}: non-finite weights"
        if bool((weight[~mask] != 0).any()):
            return f"{key[:-5]}: {int((weight[~mask] != 0).sum())} pruned weights are not zero"
        pruned += int((~mask).sum())
    if pruned == 0:
        return "nothing was pruned"
    updates = state["optimizer_history"][-1]["num_updates"]
    if updates != max_update:
        return f"checkpoint at update {updates}, expected {max_update}"
    return None


DEADLINE = [float("inf")]  # time.time() by which every check must have ended (--budget)


def within_budget(timeout: float) -> float:
    """A subprocess timeout that also respects the whole run's --budget."""
    left = DEADLINE[0] - time.time()
    if left <= 0:
        raise TimeoutError("the --budget of the whole check ran out before this step")
    return min(timeout, left)


def run_logged(cmd: List[str], env: Dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=within_budget(timeout))


def tail(text: str, n: int = 3) -> str:
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return " | ".join(lines[-n:])[-400:]


# --- the checks ----------------------------------------------------------------------------
def device_test_files() -> List[str]:
    """The test files that run on ``LSLO_TEST_DEVICE`` (routing, low-rank ops under autocast/fp16/bf16)."""
    found = []
    for path in sorted(glob.glob(os.path.join(TESTS, "test_*.py"))):
        with open(path, encoding="utf-8") as f:
            if USES_TEST_DEVICE.search(f.read()):
                found.append(path)
    return found


def check_tests(device: str, timeout: float) -> Row:
    files = device_test_files()
    if not files:
        return Row("tests", "FAIL", 0.0, "no test file takes its device from tests/devices.py")
    start = time.time()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files]
    proc = run_logged(cmd, env_for(device), timeout)
    summary = tail(proc.stdout, 1)
    names = ", ".join(os.path.basename(f) for f in files)
    return Row("tests", "PASS" if proc.returncode == 0 else "FAIL", time.time() - start,
               f"LSLO_TEST_DEVICE={device}: {summary} ({names})")


def check_train(setup, work: str, route: str, precision: str, device: str, extra: Sequence[str],
                timeout: float) -> Row:
    name = f"train/{precision}/{route}"
    save = os.path.join(work, name.replace("/", "-"))
    start = time.time()
    proc = run_logged(train_command(setup, save, route, precision, device, MAX_UPDATE, extra), env_for(device), timeout)
    log = proc.stdout + proc.stderr
    problem = (f"exit {proc.returncode}: {tail(log)}" if proc.returncode != 0 else
               check_losses(log) or check_pruned_checkpoint(os.path.join(save, "checkpoint_last.pt"), MAX_UPDATE))
    losses = logged_losses(log)
    detail = problem or f"{len(losses)} losses, last {losses[-1]:.3f}; pruned weights are 0"
    return Row(name, "FAIL" if problem else "PASS", time.time() - start, detail)


def train_until_killed(cmd: List[str], env: Dict[str, str], at_update: int, timeout: float) -> Optional[str]:
    """Start a run and SIGKILL it once it logs update ``at_update``; None, or what went wrong."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    deadline, seen = time.time() + within_budget(timeout), []
    for line in proc.stdout:
        seen.append(line)
        match = re.search(r'"num_updates": "?(\d+)', line)
        if (match and int(match.group(1)) >= at_update) or time.time() > deadline:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    if proc.returncode != -signal.SIGKILL:
        return f"not killed (exit {proc.returncode}): {tail(''.join(seen))}"
    return None


def check_resume(setup, work: str, precision: str, device: str, extra: Sequence[str], timeout: float) -> Row:
    import torch

    from fairseq_lslo.checkpoint_io import load_checkpoint

    name = f"resume/{precision}"
    start = time.time()
    env = env_for(device)
    saves = ["--save-interval-updates", str(SAVE_EVERY)]

    def command(save_dir):
        return train_command(setup, save_dir, "src", precision, device, RESUME_UPDATES, [*saves, *extra])

    straight, killed = os.path.join(work, "resume-straight"), os.path.join(work, "resume-killed")
    problem = None
    proc = run_logged(command(straight), env, timeout)
    if proc.returncode != 0:
        problem = f"uninterrupted run: exit {proc.returncode}: {tail(proc.stdout + proc.stderr)}"
    problem = problem or train_until_killed(command(killed), env, KILL_AT, timeout)
    if not problem:
        proc = run_logged(command(killed), env, timeout)
        log = proc.stdout + proc.stderr
        if proc.returncode != 0:
            problem = f"resumed run: exit {proc.returncode}: {tail(log)}"
        elif "checkpoint_last.pt (epoch" not in log:
            problem = "the second run did not resume from checkpoint_last.pt"
    if not problem:
        a = load_checkpoint(os.path.join(straight, "checkpoint_last.pt"))["model"]
        b = load_checkpoint(os.path.join(killed, "checkpoint_last.pt"))["model"]
        keys = [k for k in a if "lslo_" in k and k != "lslo_config"]
        exact = device == "cpu"
        for key in keys:
            x, y = a[key], b.get(key)
            if y is None or x.shape != y.shape:
                problem = f"{key}: missing or different shape after resume"
            elif exact and not torch.equal(x, y):
                problem = f"{key}: differs from the uninterrupted run (max {(x.float() - y.float()).abs().max():.3g})"
            elif not exact and x.dtype == torch.bool and (x != y).float().mean() > 0.01:
                problem = f"{key}: more than 1% of the mask differs from the uninterrupted run"
            elif not exact and x.dtype != torch.bool and not torch.allclose(x.float(), y.float(), rtol=1e-2, atol=1e-3):
                problem = f"{key}: differs from the uninterrupted run (max {(x.float() - y.float()).abs().max():.3g})"
            if problem:
                break
        problem = problem or check_pruned_checkpoint(os.path.join(killed, "checkpoint_last.pt"), RESUME_UPDATES)
    how = "bit for bit" if device == "cpu" else "within rtol 1e-2 / atol 1e-3"
    detail = problem or f"killed at update {KILL_AT}, resumed: LSLo weights and masks equal ({how})"
    return Row(name, "FAIL" if problem else "PASS", time.time() - start, detail)


def check_bench(device: str, out: str, quick: bool, timeout: float) -> Row:
    start = time.time()
    cmd = [sys.executable, "-m", "bench.speed", "--device", device, "--out", out] + (["--quick"] if quick else [])
    env = env_for(device)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # as `make bench`
    proc = run_logged(cmd, env, timeout)
    ok = proc.returncode == 0 and os.path.isfile(out)
    return Row("bench", "PASS" if ok else "FAIL", time.time() - start,
               f"-> {os.path.relpath(out, ROOT)}" if ok else f"exit {proc.returncode}: {tail(proc.stdout + proc.stderr)}")


def guarded(name: str, fn: Callable[[], Row]) -> Row:
    """A check that raises (or times out) is a FAIL row, not the end of the run."""
    start = time.time()
    try:
        return fn()
    except Exception as e:  # noqa: BLE001  (any error is a failed check, reported in the table)
        return Row(name, "FAIL", time.time() - start, f"{type(e).__name__}: {str(e)[:300]}")


# --- driver --------------------------------------------------------------------------------
def table(rows: Sequence[Row]) -> str:
    width = max(len(r.check) for r in rows)
    lines = [f"{'check':<{width}}  status  seconds  detail", "-" * (width + 40)]
    lines += [f"{r.check:<{width}}  {r.status:<6}  {r.seconds:7.1f}  {r.detail}" for r in rows]
    failed = sum(r.status == "FAIL" for r in rows)
    lines.append(f"{len(rows)} checks: {sum(r.status == 'PASS' for r in rows)} passed, {failed} failed, "
                 f"{sum(r.status == 'SKIP' for r in rows)} skipped")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/gpu_check.py", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated subset of {','.join(CHECKS)}")
    p.add_argument("--precisions", default=None, help="comma-separated, default: fp16,bf16,amp on cuda; "
                                                      "fp32,fp16,bf16 on cpu")
    p.add_argument("--routes", default=",".join(ROUTES), help="comma-separated routes to train")
    p.add_argument("--resume-precision", default=None, help="precision of the kill-and-resume run "
                                                            "(default: amp on cuda, fp32 on cpu)")
    p.add_argument("--quick", action="store_true", help="the bench's --quick")
    p.add_argument("--jobs", type=int, default=None, help="train runs at once (default: 6 on cuda, 1 on cpu)")
    p.add_argument("--timeout", type=float, default=240, help="seconds per subprocess (default: 240)")
    p.add_argument("--budget", type=float, default=None, help="seconds for everything; a step still running "
                                                              "then fails (default: 330 on cuda, none on cpu)")
    p.add_argument("--extra-train-args", default="", help="appended to every fairseq-train command")
    p.add_argument("--out", default=os.path.join(ROOT, "results", "bench", "gpu-check.json"))
    p.add_argument("--work", default=None, help="scratch folder (default: a new temporary one)")
    args = p.parse_args(argv)

    device = args.device.split(":")[0]
    if device not in PRECISIONS:
        p.error(f"--device {args.device}: expected cuda or cpu")
    only = [c for c in args.only.split(",") if c]
    unknown = sorted(set(only) - set(CHECKS))
    if unknown:
        p.error(f"--only: unknown checks {unknown}; expected a subset of {','.join(CHECKS)}")
    precisions = args.precisions.split(",") if args.precisions else list(PRECISIONS[device])
    bad = sorted(set(precisions) - set(PRECISION_FLAGS))
    if bad:
        p.error(f"--precisions: unknown {bad}; expected {','.join(PRECISION_FLAGS)}")
    routes = [r for r in args.routes.split(",") if r]
    extra = args.extra_train_args.split()
    jobs = args.jobs or (6 if device == "cuda" else 1)
    budget = args.budget if args.budget is not None else (330 if device == "cuda" else None)
    if budget:
        DEADLINE[0] = time.time() + budget

    import torch

    rows: List[Row] = []
    if device == "cuda" and not torch.cuda.is_available():
        rows.append(Row("cuda", "FAIL", 0.0, f"torch {torch.__version__} sees no CUDA device"))
        only = []
    elif device == "cuda":
        rows.append(Row("cuda", "PASS", 0.0, f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"))
    work = args.work or tempfile.mkdtemp(prefix="lslo-gpu-check-")
    setup = None
    if {"train", "resume"} & set(only):
        start = time.time()
        try:
            setup = prepare(work)
            rows.append(Row("setup", "PASS", time.time() - start, "tiny data, base checkpoint in the published layout"))
        except Exception as e:  # noqa: BLE001
            rows.append(Row("setup", "FAIL", time.time() - start, f"{type(e).__name__}: {str(e)[:300]}"))
    if "tests" in only:
        rows.append(guarded("tests", lambda: check_tests(device, args.timeout)))
    # the train runs and the kill-and-resume run are independent: on a GPU they share it
    jobs_todo = []  # the resume run (three runs in a row) first: it takes longest
    if setup and "resume" in only:
        precision = args.resume_precision or ("amp" if device == "cuda" else "fp32")
        jobs_todo.append((f"resume/{precision}",
                          lambda: check_resume(setup, work, precision, device, extra, args.timeout)))
    if setup and "train" in only:
        for p_ in precisions:
            for r in routes:
                jobs_todo.append((f"train/{p_}/{r}",
                                  lambda p_=p_, r=r: check_train(setup, work, r, p_, device, extra, args.timeout)))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(guarded, name, fn) for name, fn in jobs_todo]
        rows += [f.result() for f in futures]
    if "bench" in only:
        name = "bench-gpu.json" if device == "cuda" else "bench-check.json"
        out = os.path.join(ROOT, "results", "bench", name)
        rows.append(guarded("bench", lambda: check_bench(device, out, args.quick, 2 * args.timeout)))

    print(table(rows), flush=True)
    report = {"format": "lslo-gpu-check/1", "device": device, "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "rows": [asdict(r) for r in rows]}
    atomic_write_text(args.out, json.dumps(report, indent=1))
    return 1 if any(r.status == "FAIL" for r in rows) or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
