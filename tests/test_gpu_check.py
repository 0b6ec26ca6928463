"""The CPU-runnable part of `make gpu-check` (bench/gpu_check.py): a short train check in bf16 on
CPU, the summary table, and a non-zero exit when a check fails."""
from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
import gpu_check  # noqa: E402

from fairseq_lslo.checkpoint_io import load_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def passing(tmp_path_factory):
    """bf16 (fairseq casts the model; --bf16 kept off the TPU path) with the learn route and pruning."""
    work = tmp_path_factory.mktemp("gpu-check")
    out = str(work / "report.json")
    status = gpu_check.main(["--device", "cpu", "--only", "train", "--precisions", "bf16", "--routes", "learn",
                             "--work", str(work), "--out", out])
    return status, work, out


@pytest.mark.slow
def test_train_check_passes_on_cpu_and_reports(passing, capsys):
    status, work, out = passing
    report = json.load(open(out))
    rows = {r["check"]: r for r in report["rows"]}
    assert status == 0, report
    assert rows["train/bf16/learn"]["status"] == "PASS" and rows["setup"]["status"] == "PASS"
    assert "pruned weights are 0" in rows["train/bf16/learn"]["detail"]
    saved = load_checkpoint(str(work / "train-bf16-learn" / "checkpoint_last.pt"))
    assert saved["cfg"]["common"]["bf16"] and not saved["cfg"]["common"]["tpu"]
    weight = saved["model"]["encoder.layers.0.fc1.weight"]  # fairseq saves fp32; the values went through bf16
    assert torch.equal(weight.to(torch.bfloat16).float(), weight.float())
    base = load_checkpoint(str(work / "base.pt"))["model"]["encoder.layers.0.fc1.weight"]
    assert not torch.equal(base.to(torch.bfloat16).float(), base)


@pytest.mark.slow
def test_a_pruned_weight_that_is_not_zero_is_found(passing, tmp_path):
    _, work, _ = passing
    path = str(tmp_path / "doctored.pt")
    shutil.copy(work / "train-bf16-learn" / "checkpoint_last.pt", path)
    assert gpu_check.check_pruned_checkpoint(path, gpu_check.MAX_UPDATE) is None
    state = load_checkpoint(path)
    key = next(k for k, v in state["model"].items() if k.endswith("_mask") and not v.all())
    weight = state["model"][key[: -len("_mask")]]
    weight[~state["model"][key]] = 0.5
    torch.save(state, path)
    assert "pruned weights are not zero" in gpu_check.check_pruned_checkpoint(path, gpu_check.MAX_UPDATE)
    assert "expected 99" in gpu_check.check_pruned_checkpoint(str(work / "train-bf16-learn" / "checkpoint_last.pt"), 99)


@pytest.mark.slow
def test_a_failing_check_gives_a_fail_row_and_exit_1(passing, capsys, tmp_path):
    _, work, _ = passing
    capsys.readouterr()
    status = gpu_check.main(["--device", "cpu", "--only", "train", "--precisions", "fp32", "--routes", "src",
                             "--extra-train-args", "--lslo-sparsity 1.5", "--work", str(work),
                             "--out", str(tmp_path / "r.json")])
    table = capsys.readouterr().out
    assert status == 1
    line = next(l for l in table.splitlines() if l.startswith("train/fp32/src"))
    assert " FAIL " in line and "exit 1" in line and "sparsity" in line
    assert "1 failed" in table


def test_losses_are_read_from_fairseq_json_logs():
    log = ('{"epoch": 1, "update": 0.5, "loss": "7.125", "nll_loss": "7.0", "num_updates": "1"}\n'
           '{"epoch": 1, "train_loss": "nan", "train_nll_loss": "6.9"}\n')
    assert gpu_check.logged_losses(log)[0] == 7.125
    assert "non-finite" in gpu_check.check_losses(log)
    assert gpu_check.check_losses("nothing") == "no loss logged"


def test_the_device_tests_are_the_files_that_take_the_test_device():
    names = {os.path.basename(p) for p in gpu_check.device_test_files()}
    assert {"test_precision.py", "test_batched_routing.py"} <= names
    assert "test_gpu_check.py" not in names and "test_base_architecture.py" not in names
