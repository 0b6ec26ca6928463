"""fairseq-preprocess -> fairseq-train (plain) -> fairseq-train --user-dir LSLo -> fairseq-generate -> sacrebleu."""
import os
import re

import torch

from conftest import BIN, ROOT, TASK, run, valid_losses


def test_lslo_training_logs_parameters_and_loss_goes_down(trained):
    log = trained.log
    assert re.search(r"LSLo: [\d,]+ trainable parameters of [\d,]+ \(\d+\.\d+%\)", log)
    losses = valid_losses(log)
    assert len(losses) >= 2 and losses[-1] < losses[0], losses


def test_base_weights_in_lslo_checkpoint_are_the_pretrained_ones(trained):
    from fairseq_lslo.checkpoint_io import load_checkpoint

    base_dir, lslo_dir = trained.base_dir, trained.lslo_dir
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
    data, lslo_dir = trained.data, trained.lslo_dir
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
