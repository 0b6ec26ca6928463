"""Pruning through the real fairseq-train CLI: resume == uninterrupted; lslo-stats counts."""
import json
import os
import subprocess
import sys

import pytest
import torch

from fairseq_lslo.checkpoint_io import load_checkpoint
from fairseq_lslo.cli import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
PAIRS = ["en-fr", "fr-en", "en-de", "de-en", "fr-de", "de-fr"]
DIMS = ["--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
        "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2",
        "--decoder-attention-heads", "2", "--share-all-embeddings"]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def train(data, *extra):
    cmd = [os.path.join(BIN, "fairseq-train"), data, "--user-dir", os.path.join(ROOT, "fairseq_lslo"),
           "--task", "translation_multi_simple_epoch", "--lang-pairs", ",".join(PAIRS), "--encoder-langtok", "src",
           "--decoder-langtok", *DIMS, "--cpu", "--num-workers", "0", "--max-tokens", "400", "--seed", "3",
           "--criterion", "label_smoothed_cross_entropy", "--no-progress-bar", "--log-interval", "1",
           "--no-epoch-checkpoints", "--disable-validation", *extra]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)


def pruning_flags(base, save_dir, max_update):
    return ["--arch", "lslo_transformer", "--lslo-langs", "en:high,fr:high,de:low", "--lslo-rank", "high:2,low:4",
            "--lslo-encoder-routing", "src,tgt", "--lslo-decoder-routing", "tgt*2", "--finetune-from-model", base,
            "--optimizer", "lslo_pruning", "--adam-betas", "(0.9,0.98)", "--lr", "0.01",
            "--lslo-sparsity", "high:0.9,low:0.5", "--lslo-prune-start", "2", "--lslo-prune-end", "8",
            "--lslo-prune-interval", "2", "--update-freq", "2", "--clip-norm", "0.5",
            "--max-update", str(max_update), "--save-dir", save_dir]


def ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def runs(trained, tmp_path_factory):
    """Pruning runs from the session's tiny data and plain-transformer base (conftest.trained)."""
    root = tmp_path_factory.mktemp("prune")
    data = trained.data
    base = os.path.join(trained.base_dir, "checkpoint_best.pt")
    whole = ok(train(data, *pruning_flags(base, str(root / "whole"), 10)))
    first = ok(train(data, *pruning_flags(base, str(root / "split"), 5)))
    second = ok(train(data, *pruning_flags(base, str(root / "split"), 10)))
    # fairseq's FP16Optimizer hands lslo_pruning fp32 copies of the (fp16) model weights
    fp16 = ok(train(data, *pruning_flags(base, str(root / "fp16"), 10), "--fp16", "--fp16-no-flatten-grads"))
    return {"data": data, "base": base, "root": root, "whole": whole, "first": first, "second": second,
            "fp16": fp16}


def lslo_state(path):
    model = load_checkpoint(path)["model"]
    return {k: v for k, v in model.items() if "lslo_" in k}


def test_resume_mid_schedule_equals_uninterrupted(runs):
    assert "checkpoint_last.pt (epoch 1 @ 5 updates)" in runs["second"].stderr + runs["second"].stdout
    log = runs["whole"].stderr + runs["whole"].stdout
    assert "LSLo pruning at update 8: high target 0.9000 achieved 0.8997" in log
    assert "lslo_sparsity_high" in log  # progress also as a fairseq metric
    whole = lslo_state(str(runs["root"] / "whole" / "checkpoint_last.pt"))
    split = lslo_state(str(runs["root"] / "split" / "checkpoint_last.pt"))
    assert whole.keys() == split.keys()
    masks = [k for k in whole if k.endswith("_mask")]
    assert masks and any(not whole[k].all() for k in masks)
    for key in whole:
        assert torch.equal(whole[key], split[key]), key
        if key.endswith("_mask"):  # pruned weights are exactly zero in the saved model
            assert torch.all(whole[key[: -len("_mask")]][~whole[key]] == 0), key


def test_stats_match_hand_count(runs, capsys):
    path = str(runs["root"] / "whole" / "checkpoint_last.pt")
    assert stats.main([path, "--json"]) == 0  # in-process: a subprocess would re-import fairseq (seconds)
    record = json.loads(capsys.readouterr().out)
    vocab = load_checkpoint(path)["model"]["encoder.embed_tokens.weight"].shape[0]
    d, f = 32, 64
    attn = 4 * (d * d + d)
    ffn = (f * d + f) + (d * f + d)
    base = vocab * d + 2 * (attn + ffn + 2 * 2 * d) + 2 * (2 * attn + ffn + 3 * 2 * d)  # tied embeddings once
    per_rank = 4 * (2 * (d + f))  # 4 layers x (fc1 + fc2), each r * (d_in + d_out)
    lslo = {"en": 2 * per_rank, "fr": 2 * per_rank, "de": 4 * per_rank}
    kept = {c: n - round(s * n) for (c, n), s in zip(lslo.items(), (0.9, 0.9, 0.5))}
    total = base + sum(lslo.values())
    assert record["format"] == "lslo-stats/1" and record["model_parameters"] == total
    for code, group, rank in (("en", "high", 2), ("fr", "high", 2), ("de", "low", 4)):
        entry = record["languages"][code]
        assert (entry["group"], entry["rank"]) == (group, rank)
        assert entry["lslo_parameters"] == lslo[code] and entry["nonzero_parameters"] == kept[code]
        assert entry["lslo_percent"] == pytest.approx(100 * lslo[code] / total)
        assert entry["nonzero_percent"] == pytest.approx(100 * kept[code] / total)
    assert record["groups"]["high"]["nonzero_parameters"] == kept["en"] + kept["fr"]
    assert record["groups"]["low"]["lslo_parameters"] == lslo["de"]
    assert record["total"]["lslo_parameters"] == sum(lslo.values())
    assert record["total"]["nonzero_parameters"] == sum(kept.values())
    assert "shared" not in record


def test_stats_errors_and_table(runs, capsys):
    assert stats.main([str(runs["root"] / "whole" / "checkpoint_last.pt")]) == 0
    table = capsys.readouterr().out
    assert "[total]" in table and "en" in table
    assert stats.main([runs["base"]]) == 2  # the runner: prog: error: ..., exit 2 like every tool
    assert "not an LSLo checkpoint" in capsys.readouterr().err
    not_ckpt = runs["root"] / "notes.txt"
    not_ckpt.write_text("hello")
    assert stats.main([str(not_ckpt)]) == 2
    assert str(not_ckpt) in capsys.readouterr().err


def test_fp16_run_through_fairseq_fp16_optimizer(runs):
    log = runs["fp16"].stderr + runs["fp16"].stdout
    assert "LSLo pruning at update 8: high target 0.9000 achieved 0.8997" in log
    state = lslo_state(str(runs["root"] / "fp16" / "checkpoint_last.pt"))
    masks = [k for k in state if k.endswith("_mask")]
    assert "loss_scale=" in log  # fp16 training (fairseq saves the weights as fp32)
    for key in masks:
        weights = state[key[: -len("_mask")]]
        assert torch.all(weights[~state[key]] == 0), key
    kept = sum(int(state[k].sum()) for k in masks)
    assert kept == 2 * (1536 - 1382) + (3072 - 1536)


# --- the reference schedule: fairseq's real epochs, B only, masks at each epoch start ---------
P, T1, T2, EPOCHS = 0.9, 2, 3, 5


def reference_sparsity(epoch):
    """The reference implementation's schedule, from its formula (t2 is a duration)."""
    if epoch < T1:
        return 0.0
    if epoch > T1 + T2:
        return P
    return P - P * (1 - (epoch - T1) / T2) ** 3


def epoch_flags(base, save_dir, *extra):
    return ["--arch", "lslo_transformer", "--lslo-langs", "en:high,fr:high,de:low", "--lslo-rank", "high:2,low:4",
            "--lslo-encoder-routing", "src,tgt", "--lslo-decoder-routing", "tgt*2", "--finetune-from-model", base,
            "--optimizer", "lslo_pruning", "--adam-betas", "(0.9,0.98)", "--lr", "0.01", "--clip-norm", "0.5",
            "--lslo-sparsity", str(P), "--lslo-prune-factors", "B", "--lslo-prune-unit", "epochs",
            "--lslo-prune-start", str(T1), "--lslo-prune-duration", str(T2), "--max-epoch", str(EPOCHS),
            "--train-subset", "valid", "--max-tokens", "150",  # a small split: short epochs, several updates each
            "--save-dir", save_dir, *extra]


def epoch_train(data, *flags):
    """train() with per-epoch checkpoints (checkpointN.pt) kept."""
    cmd = [os.path.join(BIN, "fairseq-train"), data, "--user-dir", os.path.join(ROOT, "fairseq_lslo"),
           "--task", "translation_multi_simple_epoch", "--lang-pairs", ",".join(PAIRS), "--encoder-langtok", "src",
           "--decoder-langtok", *DIMS, "--cpu", "--num-workers", "0", "--seed", "3",
           "--criterion", "label_smoothed_cross_entropy", "--no-progress-bar", "--log-interval", "1",
           "--disable-validation", *flags]
    return ok(subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True))


def updates_in(path):
    return load_checkpoint(path)["optimizer_history"][-1]["num_updates"]


@pytest.fixture(scope="module")
def epoch_runs(trained, tmp_path_factory):
    root = tmp_path_factory.mktemp("prune_epochs")
    base = os.path.join(trained.base_dir, "checkpoint_best.pt")
    whole = epoch_train(trained.data, *epoch_flags(base, str(root / "whole")))
    stop = updates_in(str(root / "whole" / "checkpoint2.pt")) + 2  # inside epoch 3
    first = epoch_train(trained.data, *epoch_flags(base, str(root / "split"), "--max-update", str(stop)))
    second = epoch_train(trained.data, *epoch_flags(base, str(root / "split")))
    return {"root": root, "whole": whole, "first": first, "second": second, "stop": stop}


def test_reference_schedule_prunes_B_at_epoch_starts(epoch_runs):
    root, log = epoch_runs["root"], epoch_runs["whole"].stdout + epoch_runs["whole"].stderr
    for epoch in range(T1, EPOCHS + 1):
        done = updates_in(str(root / "whole" / f"checkpoint{epoch - 1}.pt"))
        assert f"LSLo pruning at the start of epoch {epoch} ({done} updates done)" in log
    assert "LSLo pruning at the start of epoch 1 " not in log and "LSLo pruning at update" not in log
    previous_updates = 0
    for epoch in range(1, EPOCHS + 1):
        path = str(root / "whole" / f"checkpoint{epoch}.pt")
        state = lslo_state(path)
        updates = updates_in(path)
        assert updates > previous_updates + 2  # several updates per epoch: masks are not per update
        previous_updates = updates
        a_masks = [k for k in state if k.endswith("_mask") and k.split(".")[-1].startswith("A")]
        assert a_masks and all(state[k].all() for k in a_masks)  # A is never pruned
        per_language = {}  # language -> (B weights, pruned B weights)
        for key in (k for k in state if k.endswith("_mask") and k.split(".")[-1].startswith("B")):
            bucket, mask = key.split(".")[-1], state[key]
            codes = ["en", "fr"] if bucket == "B2_mask" else ["de"]  # slots per rank bucket, in inventory order
            for code, slot in zip(codes, mask):
                n, p = per_language.get(code, (0, 0))
                per_language[code] = (n + slot.numel(), p + int((~slot).sum()))
                assert torch.all(state[key[: -len("_mask")]][list(codes).index(code)][~slot] == 0)
        for code, (n, pruned) in per_language.items():  # one threshold per language, one P for all
            assert pruned == round(reference_sparsity(epoch) * n), (epoch, code, pruned, n)


def test_reference_schedule_resumed_mid_epoch_equals_uninterrupted(epoch_runs):
    root = epoch_runs["root"]
    first = epoch_runs["first"].stdout + epoch_runs["first"].stderr
    second = epoch_runs["second"].stdout + epoch_runs["second"].stderr
    saved = [line for line in first.splitlines() if "Saved checkpoint" in line]
    assert f"checkpoint_last.pt (epoch 3 @ {epoch_runs['stop']} updates" in "\n".join(saved), saved
    assert "LSLo pruning at the start of epoch 3 (" in first
    assert "LSLo pruning at the start of epoch 3 (" not in second  # resumed inside epoch 3: masks kept
    assert "LSLo pruning at the start of epoch 4 (" in second
    whole = lslo_state(str(root / "whole" / "checkpoint_last.pt"))
    split = lslo_state(str(root / "split" / "checkpoint_last.pt"))
    assert whole.keys() == split.keys()
    for key in whole:
        assert torch.equal(whole[key], split[key]), key
    saved = load_checkpoint(str(root / "split" / "checkpoint_last.pt"))["last_optimizer_state"]
    assert saved["param_groups"][0]["lslo_pruning"]["epoch"] == EPOCHS
