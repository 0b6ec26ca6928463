"""fairseq-preprocess -> fairseq-train (plain) -> fairseq-train --user-dir LSLo -> fairseq-generate -> sacrebleu."""
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from tinydata import bin_dir_for

BIN = os.path.dirname(sys.executable)
LANGS = ["en", "fr", "de"]
PAIRS = ["en-fr", "fr-en", "en-de", "de-en", "fr-de", "de-fr"]
TASK = ["--task", "translation_multi_simple_epoch", "--lang-pairs", ",".join(PAIRS),
        "--encoder-langtok", "src", "--decoder-langtok"]
DIMS = ["--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
        "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2",
        "--decoder-attention-heads", "2", "--share-all-embeddings"]
TRAIN = ["--cpu", "--optimizer", "adam", "--max-tokens", "500", "--sampling-method", "temperature",
         "--sampling-temperature", "5", "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
         "--seed", "1", "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "5", "--num-workers", "0"]


def run(cmd, **kw):
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, **kw)
    assert proc.returncode == 0, f"{cmd[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def valid_losses(log: str):
    return [float(x) for x in re.findall(r"\| valid on 'valid' subset \| loss ([\d.]+)", log)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("e2e"))
    data = bin_dir_for(root, LANGS, PAIRS)
    base_dir, lslo_dir = os.path.join(root, "base"), os.path.join(root, "lslo")
    run([os.path.join(BIN, "fairseq-train"), data, *TASK, "--arch", "transformer", *DIMS, *TRAIN,
         "--lr", "0.005", "--max-update", "60", "--save-dir", base_dir])
    log = run([os.path.join(BIN, "fairseq-train"), data, "--user-dir", os.path.join(ROOT, "fairseq_lslo"), *TASK,
               "--arch", "lslo_transformer", *DIMS, *TRAIN, "--lr", "0.01", "--max-update", "60",
               "--lslo-langs", "en:high,fr:high,de:low", "--lslo-rank", "high:2,low:4",
               "--lslo-encoder-routing", "src*1,tgt*1", "--lslo-decoder-routing", "tgt*2",
               "--finetune-from-model", os.path.join(base_dir, "checkpoint_best.pt"), "--save-dir", lslo_dir])
    return data, base_dir, lslo_dir, log


def test_lslo_training_logs_parameters_and_loss_goes_down(trained):
    _, _, _, log = trained
    assert re.search(r"LSLo: [\d,]+ trainable parameters of [\d,]+ \(\d+\.\d+%\)", log)
    losses = valid_losses(log)
    assert len(losses) >= 2 and losses[-1] < losses[0], losses


def test_base_weights_in_lslo_checkpoint_are_the_pretrained_ones(trained):
    from fairseq_lslo.checkpoint_io import load_checkpoint

    _, base_dir, lslo_dir, _ = trained
    base = load_checkpoint(os.path.join(base_dir, "checkpoint_best.pt"))["model"]
    lslo = load_checkpoint(os.path.join(lslo_dir, "checkpoint_last.pt"))["model"]
    assert set(base) <= set(lslo)
    for key, value in base.items():
        assert torch.equal(value, lslo[key]), key
    extra = set(lslo) - set(base)
    assert extra and all("lslo_" in k for k in extra)
    trained_b = [v for k, v in lslo.items() if k.endswith(".B2") or k.endswith(".B4")]
    assert any(v.abs().sum() > 0 for v in trained_b)  # the adapters did move


def test_generate_and_score(trained):
    data, _, lslo_dir, _ = trained
    out = run([os.path.join(BIN, "fairseq-generate"), data, "--user-dir", os.path.join(ROOT, "fairseq_lslo"), *TASK,
               "-s", "en", "-t", "de", "--path", os.path.join(lslo_dir, "checkpoint_best.pt"), "--gen-subset", "test",
               "--beam", "4", "--cpu", "--batch-size", "16", "--required-batch-size-multiple", "1"])
    hyps = {int(m.group(1)): m.group(2) for m in re.finditer(r"^H-(\d+)\t\S+\t(.*)$", out, re.M)}
    refs = {int(m.group(1)): m.group(2) for m in re.finditer(r"^T-(\d+)\t(.*)$", out, re.M)}
    assert len(hyps) == 12 and set(hyps) == set(refs)
    ids = sorted(hyps)
    hyp_file, ref_file = os.path.join(lslo_dir, "hyp.de"), os.path.join(lslo_dir, "ref.de")
    with open(hyp_file, "w") as f:
        f.write("\n".join(hyps[i] for i in ids) + "\n")
    with open(ref_file, "w") as f:
        f.write("\n".join(refs[i] for i in ids) + "\n")
    score = run([os.path.join(BIN, "sacrebleu"), ref_file, "-i", hyp_file, "-b", "-w", "2"])
    assert 0.0 <= float(score.strip().splitlines()[-1]) <= 100.0
    # every hypothesis is in the target language: words of language "de" only
    assert all(w.startswith("de") for i in ids for w in hyps[i].split()), hyps
