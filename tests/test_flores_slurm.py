"""SLURM scripts: syntax, what `make flores12 SLURM=1` submits, world size under srun, requeue on SIGUSR1.

sbatch, srun, scontrol and the Python that would run fairseq are fakes on PATH that record
their arguments; nothing here needs SLURM or a GPU.
"""
import glob
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(REPO, "recipes", "*.sh")) + glob.glob(os.path.join(REPO, "recipes", "slurm", "*")))


def write_exe(path, text):
    path.write_text("#!/usr/bin/env bash\n" + text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def fakes(tmp_path):
    """A bin/ folder with fake sbatch/srun/scontrol/python, a log folder, and a minimal data folder."""
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    write_exe(bin_dir / "sbatch", f'''
n=$(( $(cat {log}/count 2>/dev/null || echo 100) + 1 )); echo $n > {log}/count
printf '%s\\n' "$@" > {log}/sbatch.$n
echo "PRESET=$PRESET" > {log}/sbatch.$n.env
echo "$n;cluster"
''')
    write_exe(bin_dir / "scontrol", f'echo "$@" >> {log}/scontrol\n')
    # srun: record the options, then run the command once as task 0
    write_exe(bin_dir / "srun", f'''
printf '%s\\n' "$@" > {log}/srun
while [ $# -gt 0 ] && [ "${{1#-}}" != "$1" ]; do case "$1" in --*=*) shift ;; --kill-on-bad-exit*) shift ;; *) shift 2 ;; esac; done
SLURM_PROCID=0 SLURM_LOCALID=0 "$@"
''')
    # python: record the fairseq command line; with FAKE_TRAIN_SLEEP, run until SIGTERM
    write_exe(bin_dir / "python", f'''
printf '%s\\n' "$@" > {log}/python.$$
echo "DISTRIBUTED_ARGS=$DISTRIBUTED_ARGS" >> {log}/python.$$
if [ -n "${{FAKE_TRAIN_SLEEP:-}}" ]; then
  trap 'echo terminated >> {log}/python.$$; exit 143' TERM
  touch {log}/started
  for i in $(seq 1 200); do sleep 0.1; done
fi
''')
    data = tmp_path / "data"
    data.mkdir()
    (data / "lang_pairs.txt").write_text("en-fr,fr-en\n")
    (data / "lang_dict.txt").write_text("en\nfr\n")
    (data / "langs.tsv").write_text("en\teng\thigh\nfr\tfra\thigh\n")
    (tmp_path / "model.pt").write_bytes(b"x")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LSLO_REPO": REPO,
           "LSLO_PYTHON": str(bin_dir / "python"), "DATA_DIR": str(data), "PRETRAINED": str(tmp_path / "model.pt"),
           "SAVE_DIR": str(tmp_path / "ckpt"), "METHOD": "lslo", "CPU": "1", "OMP_NUM_THREADS": "1"}
    env.pop("MAKEFLAGS", None)
    return {"log": log, "env": env, "tmp": tmp_path}


def test_scripts_parse():
    assert len(SCRIPTS) >= 13
    for script in SCRIPTS:
        r = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
        assert r.returncode == 0, (script, r.stderr)


def test_training_scripts_declare_requeue():
    for name in ("train_1node.sbatch", "train_multinode.sbatch"):
        text = open(os.path.join(REPO, "recipes", "slurm", name)).read()
        assert "#SBATCH --requeue" in text and "#SBATCH --signal=B:USR1@120" in text
        assert "--partition" not in text.replace("--partition=...", "")  # no hard-coded partition
        assert "/home/" not in text and "/scratch" not in text


def read_args(path):
    return open(path).read().splitlines()


def test_make_slurm_submits_dependent_jobs(fakes):
    env = {**fakes["env"], "SLURM": "1", "NODES": "2", "GPUS_PER_NODE": "4", "STEPS": "prepare,train,evaluate",
           "SBATCH_ARGS": "--partition=gpuq --time=2:00:00", "EVAL_SHARDS": "5",
           "DATA_ROOT": str(fakes["tmp"] / "root"), "LSLO_PYTHON": sys.executable}
    del env["DATA_DIR"]  # the chain derives it; evaluation pairs come from the language set (132 for lang12)
    r = subprocess.run(["make", "-s", "flores12"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    log = fakes["log"]
    prep, train, ev, score = (read_args(log / f"sbatch.{i}") for i in (101, 102, 103, 104))
    assert prep[-1].endswith("recipes/slurm/prepare.sbatch") and "--dependency" not in prep
    assert "--partition=gpuq" in prep and "--parsable" in prep
    assert train[-1].endswith("recipes/slurm/train_multinode.sbatch")
    assert train[train.index("--dependency") + 1] == "afterok:101"
    assert train[train.index("--nodes") + 1] == "2" and train[train.index("--ntasks-per-node") + 1] == "4"
    assert ev[-1].endswith("recipes/slurm/eval_array.sbatch")
    assert ev[ev.index("--dependency") + 1] == "afterok:102"
    assert ev[ev.index("--array") + 1] == "0-4%32"  # 5 tasks (GPUs), each one model load for ~132/5 directions
    assert score[-1].endswith("recipes/slurm/score.sbatch") and score[score.index("--dependency") + 1] == "afterok:103"
    assert not os.path.exists(log / "sbatch.105")

    r = subprocess.run(["make", "-s", "flores12"], cwd=REPO, env={**env, "NODES": "1", "DRY_RUN": "1"},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "train_1node.sbatch" in r.stdout and "afterok:\\$JOB_PREPARE" in r.stdout
    assert not os.path.exists(log / "sbatch.105")  # a dry run submits nothing


def test_multinode_world_size_and_port(fakes):
    env = {**fakes["env"], "SLURM_NNODES": "2", "SLURM_JOB_ID": "1234", "GPUS_PER_NODE": "4"}
    script = os.path.join(REPO, "recipes", "slurm", "train_multinode.sbatch")
    r = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    srun = read_args(fakes["log"] / "srun")
    assert srun[srun.index("--nodes") + 1] == "2" and srun[srun.index("--ntasks-per-node") + 1] == "4"
    calls = [read_args(p) for p in glob.glob(str(fakes["log"] / "python.*"))]
    # besides training, train.sh sizes the run (the warmup) with the epoch estimate, run once
    trains = [a for a in calls if a[:2] == ["-m", "fairseq_cli.train"]]
    assert len(trains) == 1, calls
    assert all(a[:2] == ["-m", "lslo_data_prep.epoch_size"] for a in calls if a not in trains), calls
    args = trains[0]
    assert args[args.index("--distributed-world-size") + 1] == "8"
    assert args[args.index("--distributed-port") + 1] == str(20000 + 1234)
    assert args[args.index("--save-dir") + 1] == str(fakes["tmp"] / "ckpt")  # resumes from its checkpoint_last.pt


def test_sigusr1_stops_training_and_requeues(fakes):
    env = {**fakes["env"], "SLURM_JOB_ID": "77", "GPUS_PER_NODE": "2", "FAKE_TRAIN_SLEEP": "1"}
    script = os.path.join(REPO, "recipes", "slurm", "train_1node.sbatch")
    proc = subprocess.Popen(["bash", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 30
        while not (fakes["log"] / "started").exists():
            assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else "timeout"
            time.sleep(0.05)
        proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@120 delivers to the batch shell
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert (fakes["log"] / "scontrol").read_text().split() == ["requeue", "77"]
    (py,) = glob.glob(str(fakes["log"] / "python.*"))
    text = open(py).read()
    assert "terminated" in text  # training was stopped before the requeue
    assert "DISTRIBUTED_ARGS=--distributed-world-size 2" in text
    assert "requeueing job 77" in err


def test_eval_array_task_decodes_its_share_and_score_job_checks_the_checkpoint(fakes):
    env = {**fakes["env"], "SLURM_ARRAY_TASK_ID": "1", "EVAL_SHARDS": "2", "EVAL_DIR": str(fakes["tmp"] / "eval")}
    (fakes["tmp"] / "ckpt").mkdir()
    (fakes["tmp"] / "ckpt" / "checkpoint_best.pt").write_bytes(b"x")
    r = subprocess.run(["bash", os.path.join(REPO, "recipes", "slurm", "eval_array.sbatch")], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    (py,) = glob.glob(str(fakes["log"] / "python.*"))
    args = read_args(py)
    assert args[:2] == ["-m", "fairseq_lslo.cli.evaluate"]
    assert args[args.index("--shard") + 1] == "1/2" and "--no-score" in args
    assert args[args.index("--lang-pairs") + 1] == "en-fr,fr-en" and args[args.index("--directions") + 1] == "en-fr,fr-en"
    assert args[args.index("--path") + 1] == str(fakes["tmp"] / "ckpt" / "checkpoint_best.pt")
    os.remove(py)

    r = subprocess.run(["bash", os.path.join(REPO, "recipes", "slurm", "score.sbatch")], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    (py,) = glob.glob(str(fakes["log"] / "python.*"))
    args = read_args(py)
    assert args[:2] == ["-m", "lslo_data_prep.score"]
    assert args[args.index("--checkpoint") + 1] == str(fakes["tmp"] / "ckpt" / "checkpoint_best.pt")
    assert args[args.index("--gen-dir") + 1] == str(fakes["tmp"] / "eval" / "gen")

    del env["EVAL_SHARDS"]
    r = subprocess.run(["bash", os.path.join(REPO, "recipes", "slurm", "eval_array.sbatch")], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "EVAL_SHARDS" in r.stderr


def test_paper_preset_reaches_the_slurm_jobs(fakes):
    env = {**fakes["env"], "SLURM": "1", "STEPS": "prepare,train,evaluate", "PRESET": "paper",
           "DATA_ROOT": str(fakes["tmp"] / "root"), "LSLO_PYTHON": sys.executable}
    del env["DATA_DIR"]
    r = subprocess.run(["make", "-s", "flores12"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for i in (101, 102, 103, 104):  # sbatch passes the submitting environment on (--export=ALL)
        assert (fakes["log"] / f"sbatch.{i}.env").read_text().strip() == "PRESET=paper"
    # the training job itself, on a GPU node (not CPU=1): the reference recipe, epochs read from fairseq
    env = {**fakes["env"], "PRESET": "paper", "METHOD": "lslo_prune", "CPU": "0", "GPUS_PER_NODE": "2"}
    script = os.path.join(REPO, "recipes", "slurm", "train_1node.sbatch")
    r = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    (py,) = glob.glob(str(fakes["log"] / "python.*"))  # one Python call: no updates-per-epoch estimate
    args = read_args(py)
    for flag, value in (("--lslo-preset", "paper"), ("--warmup-updates", "1"), ("--seed", "2"),
                        ("--lslo-prune-unit", "epochs"), ("--lslo-prune-start", "2"), ("--lslo-prune-duration", "10"),
                        ("--lslo-prune-factors", "B"), ("--distributed-world-size", "2")):
        assert args[args.index(flag) + 1] == value, flag
    assert "--amp" in args and "--fp16" not in args and "--lslo-prune-end" not in args
