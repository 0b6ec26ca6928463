"""A real fairseq-train search run (tiny data, CPU) -> metrics in the log -> lslo-arch -> hard flags."""
import json
import os
import subprocess
import sys

import pytest

import search_helpers as H

PAIRS = "en-fr,fr-en"


def run(cmd, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=H.ROOT, env=env, capture_output=True, text=True, timeout=300, **kw)


def log_records(output: str, tag: str):
    """The JSON stats fairseq's json progress bar logs under ``| tag |``."""
    return [json.loads(line.split(f"| {tag} | ", 1)[1]) for line in output.splitlines() if f"| {tag} | {{" in line]


@pytest.mark.slow
def test_search_run_logs_metrics_and_lslo_arch_reads_its_checkpoint(tmp_path):
    data = H.binarized_corpus(str(tmp_path), ["en", "fr"], PAIRS.split(","))
    save = str(tmp_path / "ckpt")
    train = os.path.join(os.path.dirname(sys.executable), "fairseq-train")
    proc = run([
        train, data, "--user-dir", H.USER_DIR, "--task", "translation_multi_simple_epoch", "--lang-pairs", PAIRS,
        "--encoder-langtok", "src", "--decoder-langtok", "--arch", "lslo_transformer", "--cpu", *H.TINY,
        "--lslo-langs", "en:high,fr:low", "--lslo-rank", "high:2,low:4",
        "--lslo-encoder-positions", "fc1,fc2,q", "--lslo-decoder-positions", "fc1,fc2",
        "--lslo-encoder-routing", "learn*2", "--lslo-decoder-routing", "learn",
        "--criterion", "lslo_label_smoothed_cross_entropy", "--label-smoothing", "0.1",
        "--lslo-routing-entropy-weight", "0.01",
        "--optimizer", "adam", "--lr", "0.03", "--max-tokens", "400", "--max-update", "8",
        "--save-dir", save, "--no-epoch-checkpoints", "--num-workers", "0", "--seed", "3",
        "--log-format", "json", "--log-interval", "4",
    ])
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    inner = log_records(out, "train_inner")
    valid = log_records(out, "valid")
    assert inner and valid
    for key in ("loss/en", "loss/fr", "nll_loss/fr", "loss/group_high", "loss/group_low", "routing_entropy",
                "mix_tgt/enc01", "mix_tgt/enc02", "mix_tgt/dec01", "mix_tgt/dec02"):
        assert key in inner[0], key
    assert "valid_loss/en" in valid[-1] and "valid_mix_tgt/dec02" in valid[-1]
    assert 0 < float(inner[-1]["routing_entropy"]) <= 0.694

    ck = os.path.join(save, "checkpoint_last.pt")
    arch = run([sys.executable, "-m", "fairseq_lslo.cli.arch", ck, "--json", "--plot", str(tmp_path / "w.png")])
    assert arch.returncode == 0, arch.stderr[-2000:]
    doc = json.loads(arch.stdout)
    weights = [w["tgt"] for side in ("encoder", "decoder") for layer in doc[side]["layers"]
               for w in layer["weights"].values()]
    assert len(weights) == 2 * 3 + 2 * 2
    assert any(abs(w - 0.5) > 1e-3 for w in weights)  # the mixing weights trained
    assert (tmp_path / "w.png").stat().st_size > 1000

    # the printed flags build the hard-routed model lslo-arch chose
    dicts = H.make_dict_dir(str(tmp_path / "dicts"))
    expected = {side: [layer["route"] for layer in doc[side]["layers"]] for side in ("encoder", "decoder")}
    args = ["--lslo-langs", "en:high,fr:high,de:low", "--lslo-rank", "2", *doc["flags"]]
    _, _, model = H.build(dicts, args)
    assert model.lslo_spec.encoder.routing == expected["encoder"]
    assert model.lslo_spec.decoder.routing == expected["decoder"]
    assert set(expected["encoder"] + expected["decoder"]) <= {"src", "tgt"}
    assert model.lslo_spec.encoder.positions == ["fc1", "fc2", "q"]
