"""kill -9 of fairseq-train at an arbitrary update, then resume: the same final weights and masks."""
import json
import os
import signal
import subprocess

import pytest
import torch

from conftest import BIN, CLI_DIMS, CLI_LSLO, TASK, cli_env, run
from fairseq_lslo.checkpoint_io import load_checkpoint

MAX_UPDATE, KILL_AT = 16, 11  # checkpoints every 4 updates: the kill lands between two saves
TRAIN = ["--cpu", "--optimizer", "adam", "--lr", "0.01", "--max-tokens", "300", "--sampling-method", "temperature",
         "--sampling-temperature", "5", "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
         "--seed", "3", "--dropout", "0.1", "--num-workers", "0", "--log-format", "json", "--log-interval", "1",
         "--save-interval-updates", "4", "--no-epoch-checkpoints", "--disable-validation",
         "--max-update", str(MAX_UPDATE)]
#: gradual pruning from update 4 to 14, masks recomputed every 2 updates: the kill at 11 is mid-schedule
PRUNE = ["--optimizer", "lslo_pruning", "--lslo-sparsity", "high:0.8,low:0.5", "--lslo-prune-start", "4",
         "--lslo-prune-end", "14", "--lslo-prune-interval", "2"]
SCENARIOS = {"pruning": PRUNE, "pruning_update_freq_2": PRUNE + ["--update-freq", "2"]}


def command(trained, save_dir, extra):
    return [os.path.join(BIN, "fairseq-train"), trained.data, *TASK, *CLI_LSLO, *CLI_DIMS, *TRAIN, *extra,
            "--finetune-from-model", os.path.join(trained.base_dir, "checkpoint_best.pt"), "--save-dir", save_dir]


def train_and_kill(cmd, at_update: int) -> None:
    """Start fairseq-train and SIGKILL it as soon as it logs update ``at_update``."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env())
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if '"num_updates"' in line:
            stats = json.loads(line[line.index("{"):])
            if int(stats["num_updates"]) >= at_update:
                os.kill(proc.pid, signal.SIGKILL)
                break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-30:])


def lslo_state(save_dir):
    model = load_checkpoint(os.path.join(save_dir, "checkpoint_last.pt"))["model"]
    return {k: v for k, v in model.items() if "lslo_" in k}


@pytest.mark.slow
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_kill_and_resume_equals_uninterrupted(trained, tmp_path, scenario):
    check_kill_and_resume(trained, tmp_path, SCENARIOS[scenario])


def check_kill_and_resume(trained, tmp_path, extra):
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    run(command(trained, straight, extra))
    train_and_kill(command(trained, killed, extra), KILL_AT)
    resumed_log = run(command(trained, killed, extra))  # same command: resumes from checkpoint_last.pt
    assert "checkpoint_last.pt (epoch" in resumed_log and f"@ {KILL_AT // 4 * 4} updates)" in resumed_log
    a, b = lslo_state(straight), lslo_state(killed)
    masks = [k for k in a if k.endswith("_mask")]
    assert set(a) == set(b) and masks
    assert sum(int((~a[k]).sum()) for k in masks) > 0  # the run did prune
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert load_checkpoint(os.path.join(killed, "checkpoint_last.pt"))["optimizer_history"][-1]["num_updates"] == MAX_UPDATE
