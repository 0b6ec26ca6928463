"""lslo-merge and lslo-export / --lslo-adapters on a tiny model, through the real fairseq CLIs."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from fairseq_lslo.checkpoint_io import load_checkpoint
from fairseq_lslo.modules.adapter_file import load_adapters, save_adapters
from fairseq_lslo.modules.adapter_state import group_adapters, module_delta
from fairseq_lslo.modules.keys import is_lslo_key
from fairseq_lslo.modules.lslo_linear import LowRankBank, LSLoLinear
from fairseq_lslo.modules.routing import LanguageRouter
from fairseq_lslo.modules.spec import LSLoSpec, SideSpec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_DIR = os.path.join(REPO, "fairseq_lslo")
BIN = os.path.dirname(sys.executable)
LANGS = ["en", "fr", "de"]
PAIRS = ["en-fr", "fr-en", "en-de", "de-en", "fr-de", "de-fr"]
TASK = ["--task", "translation_multi_simple_epoch", "--lang-pairs", ",".join(PAIRS),
        "--encoder-langtok", "src", "--decoder-langtok"]
DIMS = ["--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
        "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2",
        "--decoder-attention-heads", "2", "--share-all-embeddings"]
TRAIN = ["--cpu", "--optimizer", "adam", "--lr", "0.01", "--max-tokens", "400", "--criterion",
         "label_smoothed_cross_entropy", "--no-progress-bar", "--no-epoch-checkpoints", "--no-save-optimizer-state",
         "--disable-validation", "--seed", "3"]
LSLO = ["--lslo-langs", "en:high,fr:high,de:low", "--lslo-rank", "high:2,low:4", "--lslo-alpha", "2",
        "--lslo-encoder-positions", "fc1,fc2,v", "--lslo-encoder-routing", "src,tgt", "--lslo-decoder-routing", "tgt*2"]


def env():
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def run(cmd, check=True):
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def generate(data, path, src, tgt, user_dir=True, extra=()):
    cmd = [os.path.join(BIN, "fairseq-generate"), data, *TASK, "-s", src, "-t", tgt, "--path", path, "--cpu",
           "--beam", "3", "--gen-subset", "test", "--batch-size", "16",
           "--required-batch-size-multiple", "1", *extra]  # every sentence, with or without the plugin
    if user_dir:
        cmd += ["--user-dir", USER_DIR]
    out = run(cmd).stdout
    hyps = sorted(line for line in out.splitlines() if line.startswith(("H-", "D-")))
    assert len(hyps) >= 10, out[-2000:]
    return hyps


@pytest.fixture(scope="module")
def models(trained, tmp_path_factory):
    """The session's trained plain base (conftest.trained), an LSLo model on it with random (non-zero)
    adapters and hand-set masks."""
    root = tmp_path_factory.mktemp("deploy")
    data = trained.data
    train = os.path.join(BIN, "fairseq-train")
    base = os.path.join(trained.base_dir, "checkpoint_best.pt")
    run([train, data, *TASK, *DIMS, *TRAIN, *LSLO, "--user-dir", USER_DIR, "--arch", "lslo_transformer",
         "--finetune-from-model", base, "--max-update", "2", "--save-dir", str(root / "lslo")])
    state = load_checkpoint(str(root / "lslo" / "checkpoint_last.pt"))
    gen = torch.Generator().manual_seed(0)
    for key, value in state["model"].items():
        if is_lslo_key(key) and key.endswith("_mask"):
            value.copy_(torch.rand(value.shape, generator=gen) > 0.5)
        elif is_lslo_key(key) and value.is_floating_point() and "lslo_config" not in key:
            value.copy_(torch.randn(value.shape, generator=gen) * 0.5)
    lslo = str(root / "lslo_random.pt")
    torch.save(state, lslo)
    return {"root": root, "data": data, "base": base, "lslo": lslo}


def unmerged_hypotheses(models):
    """en->de hypotheses of the LSLo model itself (computed once)."""
    if "unmerged" not in models:
        models["unmerged"] = generate(models["data"], models["lslo"], "en", "de")
    return models["unmerged"]


def exported(models):
    """The lslo-export file of the LSLo model (written once)."""
    path = str(models["root"] / "adapters.safetensors")
    if not os.path.exists(path):
        proc = run([sys.executable, "-m", "fairseq_lslo.cli.export", models["lslo"], "-o", path])
        assert "kept of" in proc.stdout
    return path


def test_merged_checkpoint_gives_the_same_hypotheses_without_user_dir(models):
    out = str(models["root"] / "en-de.pt")
    proc = run([sys.executable, "-m", "fairseq_lslo.cli.merge", models["lslo"], "--source-lang", "en",
                "--target-lang", "de", "-o", out])
    assert "en->de" in proc.stdout
    merged = torch.load(out, weights_only=True)  # no allow-list needed: fairseq loads it without the plugin
    assert not any("lslo" in k for k in merged["model"])
    assert merged["args"] is None  # fairseq's own layout: the configuration in cfg ...
    model_cfg = merged["cfg"]["model"]  # ... whose model section reads as a dict and by attribute
    assert model_cfg["arch"] == model_cfg.arch == "transformer" and model_cfg.encoder_embed_dim == 32
    assert (model_cfg.source_lang, model_cfg.target_lang) == ("en", "de")
    assert not any(k.startswith("lslo_") for k in merged["cfg"]["model"])
    base = load_checkpoint(models["base"])["model"]
    changed = [k for k in base if not torch.equal(base[k], merged["model"][k])]
    assert "encoder.layers.0.fc1.weight" in changed and "decoder.layers.1.fc2.weight" in changed
    assert "encoder.layers.0.self_attn.v_proj.weight" in changed
    assert all(k.endswith(("fc1.weight", "fc2.weight", "v_proj.weight")) for k in changed)

    unmerged = unmerged_hypotheses(models)
    plain = generate(models["data"], out, "en", "de", user_dir=False)
    strip = lambda lines: [ln.split("\t")[0] + "\t" + ln.split("\t")[2] for ln in lines]  # noqa: E731
    assert strip(plain) == strip(unmerged)  # same hypotheses (scores agree up to rounding)
    for a, b in zip(plain, unmerged):
        assert abs(float(a.split("\t")[1]) - float(b.split("\t")[1])) < 1e-4


def test_merge_rejects_unknown_language(models, capsys):
    from fairseq_lslo.cli.merge import main

    assert main([models["lslo"], "-s", "en", "-t", "xx", "-o", str(models["root"] / "bad.pt")]) == 2
    assert "--target-lang 'xx' is not a language of this checkpoint" in capsys.readouterr().err
    assert not os.path.exists(models["root"] / "bad.pt")


def test_all_directions_reads_the_checkpoint_once_and_writes_each_direction(models, tmp_path, monkeypatch):
    from fairseq_lslo.cli import merge

    loads = []
    real_load = merge.load_checkpoint
    monkeypatch.setattr(merge, "load_checkpoint", lambda path: loads.append(path) or real_load(path))
    out = tmp_path / "merged"
    assert merge.main([models["lslo"], "--all-directions", "-o", str(out)]) == 0
    assert loads == [models["lslo"]]
    assert sorted(os.listdir(out)) == sorted(f"{p}.pt" for p in PAIRS)  # the checkpoint's --lang-pairs
    state = load_checkpoint(models["lslo"])
    for pair in ("en-de", "de-fr"):
        src, tgt = pair.split("-")
        written = torch.load(str(out / f"{pair}.pt"), weights_only=True)
        expected = merge.plain_checkpoint(state, src, tgt)
        assert written["model"].keys() == expected["model"].keys()
        assert all(torch.equal(written["model"][k], v) for k, v in expected["model"].items())
        assert written["lslo_merged"] == {"source_lang": src, "target_lang": tgt}
    en_de, de_fr = (torch.load(str(out / f"{p}.pt"), weights_only=True)["model"] for p in ("en-de", "de-fr"))
    assert not torch.equal(en_de["encoder.layers.0.fc1.weight"], de_fr["encoder.layers.0.fc1.weight"])

    # --directions picks some; one unknown direction -> nothing written at all, the error names it
    some = tmp_path / "some"
    assert merge.main([models["lslo"], "--all-directions", "--directions", "fr-en", "-o", str(some)]) == 0
    assert os.listdir(some) == ["fr-en.pt"]
    bad = tmp_path / "bad"
    assert merge.main([models["lslo"], "--all-directions", "--directions", "en-de,en-xx", "-o", str(bad)]) == 2
    assert not bad.exists() or not os.listdir(bad)


def test_merge_bad_output_names_it_and_keeps_what_exists(models, tmp_path, capsys):
    from fairseq_lslo.cli.merge import main

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert main([models["lslo"], "-s", "en", "-t", "de", "-o", str(blocker / "en-de.pt")]) == 2
    assert f"-o/--output (its directory) {blocker}: exists and is not a directory" in capsys.readouterr().err
    assert main([models["lslo"], "--all-directions", "-o", str(blocker)]) == 2
    assert f"-o/--output {blocker}: exists and is not a directory" in capsys.readouterr().err
    assert blocker.read_text() == "not a directory"
    existing = tmp_path / "en-de.pt"
    existing.write_bytes(b"an earlier merge")
    assert main([models["lslo"], "-s", "en", "-t", "xx", "-o", str(existing)]) == 2
    assert "direction en-xx" in capsys.readouterr().err
    assert existing.read_bytes() == b"an earlier merge"
    with pytest.raises(SystemExit):  # half a direction is a usage error
        main([models["lslo"], "-s", "en", "-o", str(existing)])
    assert "give either --source-lang and --target-lang, or --all-directions" in capsys.readouterr().err


def test_export_import_round_trip_gives_identical_outputs(models):
    adapters = exported(models)
    with open(adapters, "rb") as f:
        assert b"lslo-adapters/1" in f.read(4096)
    spec, tensors = load_adapters(adapters)
    state = load_checkpoint(models["lslo"])["model"]
    assert spec.to_dict() == LSLoSpec.from_tensor(state["lslo_config"]).to_dict()
    for key, value in state.items():
        if is_lslo_key(key) and key != "lslo_config":
            mask = state.get(key + "_mask")
            expected = value * mask if mask is not None else value
            assert torch.equal(tensors[key], expected), key

    # a plain base checkpoint + the adapter file: the same translations, bit for bit
    overrides = ("{'arch': 'lslo_transformer', '_name': 'lslo_transformer', "
                 f"'lslo_adapters': '{adapters}'}}")
    imported = generate(models["data"], models["base"], "en", "de", extra=["--model-overrides", overrides])
    assert imported == unmerged_hypotheses(models)


def test_adapters_flag_rejects_a_different_configuration(models, tmp_path):
    adapters = exported(models)
    proc = run([os.path.join(BIN, "fairseq-train"), models["data"], *TASK, *DIMS, *TRAIN, *LSLO[:2],
                "--lslo-rank", "8", "--user-dir", USER_DIR, "--arch", "lslo_transformer", "--lslo-adapters",
                adapters, "--max-update", "1", "--save-dir", str(tmp_path / "x")], check=False)
    assert proc.returncode != 0
    assert "--lslo-adapters" in proc.stderr and "ranks" in proc.stderr


def test_sparse_export_shrinks_with_sparsity(tmp_path):
    spec = LSLoSpec([["en", "high"], ["wo", "low"]], [8, 8], 1.0, 16, SideSpec(["fc1"], ["src"]), SideSpec([], ["none"]))
    gen = torch.Generator().manual_seed(0)
    sizes = {}
    for sparsity in (0.0, 0.5, 0.9):
        bank = LowRankBank(512, 2048, [8, 8], 1.0)
        with torch.no_grad():
            for _, _, param, mask in bank.factor_tensors():
                param.normal_(generator=gen)
                mask.copy_(torch.rand(mask.shape, generator=gen) >= sparsity)
        lslo = {f"encoder.layers.0.fc1.lslo_src.{k}": v for k, v in bank.state_dict().items()}
        sizes[sparsity] = save_adapters(str(tmp_path / f"{sparsity}.safetensors"), spec, lslo)
        _, back = load_adapters(str(tmp_path / f"{sparsity}.safetensors"))
        for k, v in lslo.items():
            mask = lslo.get(k + "_mask")
            assert torch.equal(back[k], v * mask if mask is not None else v)
    dense = sizes[0.0]
    for sparsity in (0.5, 0.9):
        kept = 1 - sparsity
        # values of the kept entries + one bit per entry (1/32 of a float32) + the header
        assert sizes[sparsity] / dense == pytest.approx((kept + 1 / 32) / (1 + 1 / 32), abs=0.02)


def test_merge_delta_matches_the_layer_for_shared_and_learn_routes():
    torch.manual_seed(0)
    spec = LSLoSpec([["en", "high"], ["fr", "high"], ["wo", "low"]], [2, 2, 4], 3.0, 6,
                    SideSpec(["fc1"], ["learn"]), SideSpec(["fc1"], ["shared"]))
    for route, kinds in (("learn", ["src", "tgt"]), ("shared", ["shared"])):
        banks = {k: spec.build_bank(k, 6, 10).double() for k in kinds}
        for bank in banks.values():
            with torch.no_grad():
                for _, _, p, m in bank.factor_tensors():
                    p.normal_()
                    m.copy_(torch.rand(m.shape) > 0.4)
        layer = LSLoLinear(torch.nn.Linear(6, 10).double(), route, banks, LanguageRouter())
        if route == "learn":
            with torch.no_grad():
                layer.lslo_mix.copy_(torch.tensor([0.3, -0.8]))
        state = {f"m.{k}": v.detach() for k, v in layer.state_dict().items()}
        (adapters,) = group_adapters(state).values()
        with torch.no_grad():
            got = module_delta(spec, "m", adapters, 2, 1)
            want = layer.delta_weight(2, 1)
        torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
