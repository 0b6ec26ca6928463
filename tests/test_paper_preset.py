"""The reference parameterisation (``--lslo-preset paper``) against its formulas, and everything
downstream of it: counts, merge, export/import, checkpoints, old configurations, search, pruning.

The reference (the authors' implementation) for a host linear map of an FFN:
fc1 (d_model -> d_ffn): ``h[..., s:s+d] += x A B``; fc2 (d_ffn -> d_model): ``y += x[..., s:s+d] A B``;
A (d x r) ~ U(+-1/sqrt(r)), B (r x d) = 0, no scaling.  We store A transposed (r x d) and
B transposed (d x r): ``x A B`` is ``x @ A_ours.T @ B_ours.T``.
"""
from __future__ import annotations

import argparse
import math
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import LSLO_FLAGS, build, make_batch, randomize_adapters
from fairseq_lslo.checkpoint_io import load_checkpoint
from fairseq_lslo.reports.stats import compute_stats
from fairseq_lslo.errors import LSLoConfigError
from fairseq_lslo.modules import lowrank_ops
from fairseq_lslo.modules.adapter_file import adapter_tensors, save_adapters
from fairseq_lslo.modules.adapter_state import group_adapters, module_delta
from fairseq_lslo.modules.keys import factor_key, parse_factor_key
from fairseq_lslo.modules.lslo_linear import LowRankBank, LSLoLinear
from fairseq_lslo.modules.routing import BatchLanguages, LanguageRouter
from fairseq_lslo.modules.spec import CONFIG_KEY, LSLoSpec, SideSpec, resolve_preset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D_MODEL, D_FFN, OFFSET = 8, 20, 5
RANKS = [2, 4, 2, 8, 1]
LANGS = [["en", "high"], ["fr", "high"], ["de", "medium"], ["wo", "low"], ["oc", "low"]]
PAPER = ["--lslo-preset", "paper"]


def paper_spec(offset: int = OFFSET, **kw) -> LSLoSpec:
    args = dict(ffn_coverage="slice", ffn_slice_offset=offset, init="rank", scaling="none")
    args.update(kw)
    return LSLoSpec(LANGS, RANKS, 3.0, 6, SideSpec(["fc1", "fc2"], ["src"]), SideSpec(["fc1"], ["tgt"]), **args)


@pytest.fixture(params=["batched", "per_sample"])
def products(request, monkeypatch):
    """Both ways of computing a mixed batch: padded batched matmuls, and one sample at a time."""
    monkeypatch.setattr(lowrank_ops, "PER_SAMPLE_MIN_SLAB", 0 if request.param == "per_sample" else 2**62)
    return request.param


def random_bank(position: str, seed: int) -> LowRankBank:
    torch.manual_seed(seed)
    d_in, d_out = (D_MODEL, D_FFN) if position == "fc1" else (D_FFN, D_MODEL)
    bank = paper_spec().build_bank("src", d_in, d_out, position).double()
    with torch.no_grad():
        for _, _, param, mask in bank.factor_tensors():
            param.normal_()
            mask.copy_(torch.rand(mask.shape) > 0.3)
    return bank


def reference_update(bank: LowRankBank, position: str, x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """The reference's loop over languages: boolean masks, ``x A B`` on the d_model slice, no scaling."""
    d_out = D_FFN if position == "fc1" else D_MODEL
    out = torch.zeros(x.shape[:-1] + (d_out,), dtype=x.dtype)
    s, e = OFFSET, OFFSET + D_MODEL
    for lang, rank in enumerate(RANKS):
        sel = slots == lang
        if not sel.any():
            continue
        i = sum(1 for r in RANKS[:lang] if r == rank)  # the language's index in its rank bucket
        A = (getattr(bank, f"A{rank}")[i] * getattr(bank, f"A{rank}_mask")[i]).t()  # d x r
        B = (getattr(bank, f"B{rank}")[i] * getattr(bank, f"B{rank}_mask")[i]).t()  # r x d
        if position == "fc1":
            upd = torch.zeros_like(out[:, sel])
            upd[..., s:e] = x[:, sel] @ A @ B
            out[:, sel] = upd
        else:
            out[:, sel] = x[:, sel][..., s:e] @ A @ B
    return out


def run(bank, fn, x, grad, extra=()):
    bank.zero_grad(set_to_none=True)
    for t in (x,) + tuple(extra):
        t.grad = None
    fn().backward(grad)
    return [x.grad.clone()] + [t.grad.clone() for t in extra] + [
        p.grad.clone() if p.grad is not None else torch.zeros_like(p) for _, _, p, _ in bank.factor_tensors()]


# --- the forward pass and its gradients against the formulas --------------------------------
@pytest.mark.parametrize("position", ["fc1", "fc2"])
@pytest.mark.parametrize("seed", [0, 1])
def test_slice_adapters_match_the_reference_loop(products, position, seed):
    bank = random_bank(position, seed)
    d_in, d_out = bank.in_features, bank.out_features
    g = torch.Generator().manual_seed(50 + seed)
    T, N = 6, 9
    present = [0, 1, 3, 4]  # language 2 is absent
    slots = torch.tensor(present)[torch.randint(len(present), (N,), generator=g)]
    slots[:4] = torch.tensor(present)
    x = torch.randn(T, N, d_in, generator=g, dtype=torch.double, requires_grad=True)
    weight = torch.randn(d_out, d_in, generator=g, dtype=torch.double, requires_grad=True)
    bias = torch.randn(d_out, generator=g, dtype=torch.double, requires_grad=True)
    grad = torch.randn(T, N, d_out, generator=g, dtype=torch.double)
    ref = run(bank, lambda: F.linear(x, weight, bias) + reference_update(bank, position, x, slots), x, grad, (weight, bias))
    fused = run(bank, lambda: bank.linear_with_delta(x, weight, bias, slots, None), x, grad, (weight, bias))
    added = run(bank, lambda: F.linear(x, weight, bias) + bank.delta(x, slots, None), x, grad, (weight, bias))
    for a, b, c in zip(ref, fused, added):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(c, a, rtol=1e-10, atol=1e-10)
    # the parameters are the square factors; the absent language gets no gradient, the others do
    for f, r, p, _ in bank.factor_tensors():
        assert p.shape[1:] == ((r, D_MODEL) if f == "A" else (D_MODEL, r))
    for lang, rank in enumerate(RANKS):
        i = sum(1 for r in RANKS[:lang] if r == rank)
        got = getattr(bank, f"B{rank}").grad
        assert (got is None or got[i].abs().sum() == 0) == (lang not in present)
    with torch.no_grad():  # inference (memoised factors, in-place add)
        torch.testing.assert_close(bank.delta(x, slots, None), reference_update(bank, position, x, slots))


@pytest.mark.parametrize("position", ["fc1", "fc2"])
def test_uniform_batch_and_lslo_linear_match_the_reference(products, position):
    bank = random_bank(position, 7)
    base = torch.nn.Linear(bank.in_features, bank.out_features).double()
    router = LanguageRouter()
    layer = LSLoLinear(base, "src", {"src": bank}, router)
    x = torch.randn(4, 5, bank.in_features, dtype=torch.double, requires_grad=True)
    grad = torch.randn(4, 5, bank.out_features, dtype=torch.double)
    for src in (torch.tensor([3, 3, 3, 3, 3]), torch.tensor([4, 0, 1, 4, 3])):
        router.set(BatchLanguages(src, None, None, None))
        ref = run(bank, lambda: base(x) + reference_update(bank, position, x, src), x, grad)
        ours = run(bank, lambda: layer(x), x, grad)
        for a, b in zip(ref, ours):
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


def test_gradcheck_of_a_sliced_bank():
    bank = random_bank("fc2", 3)
    slots = torch.tensor([3, 0, 3, 4])
    params = tuple(p.detach().clone().requires_grad_() for _, _, p, _ in bank.factor_tensors())
    x = torch.randn(2, 4, D_FFN, dtype=torch.double)

    def delta(*ps):
        names = [f"{f}{r}" for f, r, _, _ in bank.factor_tensors()]
        saved = {n: bank._parameters.pop(n) for n in names}
        try:
            for n, p in zip(names, ps):
                setattr(bank, n, p)
            return bank.delta(x, slots, None)
        finally:
            for n, p in saved.items():
                delattr(bank, n)
                bank.register_parameter(n, p)

    assert torch.autograd.gradcheck(delta, params)


# --- initialisation --------------------------------------------------------------------------
def test_initial_A_fills_plus_minus_one_over_sqrt_rank():
    torch.manual_seed(0)
    ranks = [1, 2, 8, 32]
    spec = LSLoSpec([[f"l{i}", "g"] for i in range(4)], ranks, 1.0, 4, SideSpec(["q"], ["src"]), SideSpec([], ["tgt"]),
                    init="rank")
    bank = spec.build_bank("src", 512, 512, "q")
    for r in ranks:
        A, B = getattr(bank, f"A{r}"), getattr(bank, f"B{r}")
        bound = 1 / math.sqrt(r)
        assert A.abs().max() <= bound
        assert A.max() > 0.99 * bound and A.min() < -0.99 * bound  # fills the range (512 * r draws)
        assert A.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)  # uniform, not clustered
        assert torch.count_nonzero(B) == 0
    ours = LSLoSpec([[f"l{i}", "g"] for i in range(4)], ranks, 1.0, 4, SideSpec(["q"], ["src"]),
                    SideSpec([], ["tgt"])).build_bank("src", 512, 512, "q")
    assert ours.A1.abs().max() <= 1 / math.sqrt(512) and ours.A1.abs().max() > 0.9 / math.sqrt(512)


# --- flags, presets and the stored configuration -----------------------------------------------
def test_preset_and_explicit_flags(dict_dir):
    _, paper = build(dict_dir, "lslo_transformer", LSLO_FLAGS + PAPER)
    spec = paper.lslo_spec
    assert (spec.ffn_coverage, spec.ffn_slice_offset, spec.init, spec.scaling) == ("slice", 0, "rank", "none")
    _, mixed = build(dict_dir, "lslo_transformer", LSLO_FLAGS + PAPER + ["--lslo-scaling", "alpha",
                                                                         "--lslo-ffn-slice-offset", "16"])
    spec = mixed.lslo_spec
    assert (spec.ffn_coverage, spec.ffn_slice_offset, spec.init, spec.scaling) == ("slice", 16, "rank", "alpha")
    _, ours = build(dict_dir, "lslo_transformer", LSLO_FLAGS + ["--lslo-init", "rank"])
    spec = ours.lslo_spec
    assert (spec.ffn_coverage, spec.init, spec.scaling) == ("full", "rank", "alpha")
    fc1 = mixed.encoder.layers[0].fc1.lslo_src
    assert (fc1.in_span, fc1.out_span, fc1.A2.shape[-1], fc1.B2.shape[-2]) == ((0, 16), (16, 16), 16, 16)
    assert float(fc1.slot_scale[0]) == pytest.approx(1.0 / 2)  # alpha 1 / rank 2: the flag won over the preset


def test_slice_offset_must_fit_the_ffn(dict_dir):
    with pytest.raises(LSLoConfigError, match=r"--lslo-ffn-slice-offset 17.*\[17, 33\).*32"):
        build(dict_dir, "lslo_transformer", LSLO_FLAGS + PAPER + ["--lslo-ffn-slice-offset", "17"])
    with pytest.raises(LSLoConfigError, match="needs --lslo-ffn-coverage slice"):
        build(dict_dir, "lslo_transformer", LSLO_FLAGS + ["--lslo-ffn-slice-offset", "4"])


def test_configuration_round_trips_through_a_checkpoint(dict_dir, tmp_path):
    _, model = build(dict_dir, "lslo_transformer", LSLO_FLAGS + PAPER + ["--lslo-ffn-slice-offset", "8"])
    randomize_adapters(model)
    path = str(tmp_path / "ckpt.pt")
    torch.save({"model": model.state_dict()}, path)
    state = torch.load(path, weights_only=True)["model"]
    assert LSLoSpec.from_state(state, path) == model.lslo_spec
    _, again = build(dict_dir, "lslo_transformer", LSLO_FLAGS + PAPER + ["--lslo-ffn-slice-offset", "8"])
    again.load_state_dict(state)
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    _, other = build(dict_dir, "lslo_transformer", LSLO_FLAGS + PAPER)
    with pytest.raises(LSLoConfigError, match="ffn_slice_offset: 0 vs 8"):
        other.load_state_dict(state)


def test_old_configurations_read_with_the_old_defaults(dict_dir):
    _, model = build(dict_dir, "lslo_transformer", LSLO_FLAGS)
    old = model.lslo_spec.to_dict()
    for key in ("ffn_coverage", "ffn_slice_offset", "init", "scaling"):
        del old[key]
    old["version"] = 1
    spec = LSLoSpec.from_dict(old)
    assert (spec.ffn_coverage, spec.ffn_slice_offset, spec.init, spec.scaling) == ("full", 0, "linear", "alpha")
    assert spec == model.lslo_spec
    state = dict(model.state_dict())
    state[CONFIG_KEY] = torch.tensor(list(__import__("json").dumps(old).encode()), dtype=torch.uint8)
    model.load_state_dict(state)  # an old checkpoint loads into a model built with today's defaults
    newer = dict(model.lslo_spec.to_dict(), version=99)
    with pytest.raises(LSLoConfigError, match="version 99 is newer"):
        LSLoSpec.from_dict(newer)


# --- parameter counts ------------------------------------------------------------------------
def hand_count(rank: int, maps_attn: int, maps_ffn: int, d_model: int, d_ffn: int, sliced: bool) -> int:
    ffn_width = d_model + (d_model if sliced else d_ffn)
    return rank * (maps_attn * 2 * d_model + maps_ffn * ffn_width)


@pytest.mark.parametrize("preset", ["paper", "ours"])
def test_parameter_counts_equal_a_hand_count(dict_dir, preset):
    positions = ["--lslo-encoder-positions", "q,k,v,fc1,fc2", "--lslo-decoder-positions",
                 "q,k,v,cross_q,cross_k,cross_v,fc1,fc2"]
    _, model = build(dict_dir, "lslo_transformer", LSLO_FLAGS + positions + ["--lslo-preset", preset])
    # 2 encoder + 2 decoder layers (d_model 16, d_ffn 32): 6 + 12 attention maps, 4 + 4 FFN maps
    state = {k: v for k, v in model.state_dict().items()}
    stats = compute_stats("tiny", {"model": state})
    for code, rank in (("en", 2), ("fr", 2), ("de", 4)):
        want = hand_count(rank, 18, 8, 16, 32, sliced=preset == "paper")
        assert stats["languages"][code]["lslo_parameters"] == want
    total = sum(hand_count(r, 18, 8, 16, 32, preset == "paper") for r in (2, 2, 4))
    assert stats["total"]["lslo_parameters"] == total
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == total
    bank = model.encoder.layers[0].fc1.lslo_src
    assert bank.num_parameters(0) == 2 * (16 + (16 if preset == "paper" else 32))


def lang12_615m_stats(preset: str) -> dict:
    """lslo-stats of Lang12 (ranks 2/2/8) on the reference's 156 linear maps of the 615M model
    (d_model 1024, d_ffn 4096).  The banks are built from the configuration as the model builds
    them and counted by lslo-stats' own arithmetic; the 615M base model is not built."""
    args = argparse.Namespace(
        lslo_langs=os.path.join(ROOT, "lslo_data_prep", "langs", "lang12.tsv"), lslo_rank="high:2,medium:2,low:8",
        lslo_encoder_positions="q,k,v,fc1,fc2", lslo_decoder_positions="q,k,v,cross_q,cross_k,cross_v,fc1,fc2",
        lslo_encoder_routing="src*9,tgt*3", lslo_decoder_routing="tgt*12", lslo_preset=preset)
    resolve_preset(args)
    spec = LSLoSpec.from_args(args, 12, 12)
    dims = {"q": (1024, 1024), "k": (1024, 1024), "v": (1024, 1024), "cross_q": (1024, 1024),
            "cross_k": (1024, 1024), "cross_v": (1024, 1024), "fc1": (1024, 4096), "fc2": (4096, 1024)}
    state = {CONFIG_KEY: spec.to_tensor()}
    maps = 0
    for side in ("encoder", "decoder"):
        side_spec = getattr(spec, side)
        for layer, route in enumerate(side_spec.routing):
            for position in side_spec.positions:
                bank = spec.build_bank(route, *dims[position], position)
                for name, t in bank.state_dict().items():
                    state[f"{side}.layers.{layer}.{position}.lslo_{route}.{name}"] = t
                maps += 1
    assert maps == 156
    return compute_stats(f"lang12-615m-{preset}", {"model": state})


def test_lang12_on_the_615m_placement_counts_the_papers_figures():
    """The paper preset: 156 x 48 x 2 x 1024 = 15,335,424 LSLo parameters, 638,976 for a rank-2 language."""
    stats = lang12_615m_stats("paper")
    assert stats["total"]["lslo_parameters"] == 15_335_424
    assert stats["languages"]["en"]["lslo_parameters"] == 638_976
    assert stats["languages"]["wo"]["lslo_parameters"] == 4 * 638_976
    assert stats["parameterisation"] == {"ffn_coverage": "slice", "ffn_slice_offset": 0, "init": "rank",
                                         "scaling": "none"}


def test_lang12_on_the_615m_placement_with_our_full_width_adapters():
    """Ours: the 48 fc1/fc2 maps cost r x (1024 + 4096) each, the 108 attention maps r x 2048."""
    stats = lang12_615m_stats("ours")
    per_rank = 48 * (1024 + 4096) + 108 * 2 * 1024
    assert stats["languages"]["en"]["lslo_parameters"] == 2 * per_rank
    assert stats["total"]["lslo_parameters"] == 48 * per_rank


# --- merge, export/import ------------------------------------------------------------------------
def test_merging_a_slice_adapter_is_exact(dict_dir):
    _, model = build(dict_dir, "lslo_transformer", LSLO_FLAGS + PAPER + ["--lslo-ffn-slice-offset", "8"])
    model = model.double()
    randomize_adapters(model, seed=3)
    state = model.state_dict()
    groups = group_adapters(state)
    for name, module in model.lslo_modules().items():
        got = module_delta(model.lslo_spec, name, groups[name], 0, 2)
        # module_delta computes in float32 (as lslo-merge does)
        torch.testing.assert_close(got.double(), module.delta_weight(0, 2), rtol=1e-6, atol=1e-6)
        assert got.shape == module.weight.shape
    fc1 = model.decoder.layers[1].fc1
    router = fc1.router
    x = torch.randn(3, 4, 16, dtype=torch.double)
    router.set(BatchLanguages(None, torch.full((4,), 2), None, 2))
    unmerged = fc1(x)
    fc1.merge(None, 2)
    merged = fc1(x)
    torch.testing.assert_close(merged, unmerged, rtol=1e-12, atol=1e-12)
    delta = fc1.delta_weight(None, 2)
    assert torch.count_nonzero(delta[:8]) == 0 and torch.count_nonzero(delta[24:]) == 0  # outside the slice
    assert torch.count_nonzero(delta[8:24]) == 16 * 16


def test_merge_cli_arithmetic_on_a_paper_model(dict_dir):
    from fairseq_lslo.deploy.merge import merge_model_state

    task, model = build(dict_dir, "lslo_transformer", LSLO_FLAGS + PAPER)
    model = model.double()
    randomize_adapters(model, seed=4)
    merged_state = merge_model_state(model.state_dict(), "fr", "de")
    _, plain = build(dict_dir, "transformer", [])
    plain = plain.double()
    plain.load_state_dict(merged_state)
    batch, _ = make_batch(task, ["fr-de", "fr-de"], [4, 6], [5, 3])
    with torch.no_grad():
        want = model(**batch)[0]
        got = plain(**batch)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # the merge adds a float32 delta


def test_export_and_import_keep_the_parameterisation(dict_dir, tmp_path):
    task, model = build(dict_dir, "lslo_transformer", LSLO_FLAGS + PAPER + ["--lslo-ffn-slice-offset", "4"])
    randomize_adapters(model, seed=5)
    path = str(tmp_path / "adapters.safetensors")
    save_adapters(path, model.lslo_spec, adapter_tensors(model.state_dict()))
    _, loaded = build(dict_dir, "lslo_transformer", ["--lslo-adapters", path])  # no flags: all from the file
    assert loaded.lslo_spec == model.lslo_spec
    batch, _ = make_batch(task, ["en-fr", "de-en", "fr-de"], [3, 5, 4], [4, 2, 5])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch)[0], model(**batch)[0])
    with pytest.raises(LSLoConfigError, match="ffn_coverage: full vs slice"):
        build(dict_dir, "lslo_transformer", ["--lslo-adapters", path, "--lslo-preset", "ours"])


# --- search mode and pruning -------------------------------------------------------------------
def test_search_mode_with_the_preset(dict_dir, tmp_path):
    from fairseq_lslo.reports.arch import analyse

    task, model = build(dict_dir, "lslo_transformer", LSLO_FLAGS + PAPER + [
        "--lslo-encoder-routing", "learn", "--lslo-decoder-routing", "learn"])
    model.train()
    batch, _ = make_batch(task, ["en-fr", "de-en", "fr-de"], [3, 5, 4], [4, 2, 5])
    model(**batch)[0].sum().backward()
    fc2 = model.encoder.layers[1].fc2
    assert fc2.lslo_src.A2.shape == fc2.lslo_tgt.A2.shape == (2, 2, 16)
    assert fc2.lslo_mix.grad is not None
    assert fc2.lslo_src.A2.grad.abs().sum() == 0  # B = 0 at init: A gets no gradient yet, B does
    assert fc2.lslo_src.B2.grad.abs().sum() > 0 and fc2.lslo_tgt.B4.grad.abs().sum() > 0
    path = str(tmp_path / "search.pt")
    torch.save({"model": model.state_dict()}, path)
    doc = analyse(path)
    assert doc["encoder"]["searched"] and len(doc["encoder"]["layers"]) == 2


def test_pruning_masks_the_square_factors(dict_dir):
    from fairseq_lslo.modules.pruning import PruneSchedule, PruningPlan

    _, model = build(dict_dir, "lslo_transformer", LSLO_FLAGS + PAPER)
    randomize_adapters(model, seed=6)
    plan = PruningPlan(model, PruneSchedule(final={"high": 0.9, "low": 0.9, "shared": 0.9}, start=0, end=0,
                                            factors="B"))
    assert plan.tensors and all(t.factor == "B" and t.param.shape[-2] == 16 for t in plan.tensors)
    report = plan.update_masks([t.param for t in plan.tensors], 0)
    assert report.achieved["high"] == pytest.approx(0.9, abs=0.01)
    stats = compute_stats("pruned", {"model": model.state_dict()})
    en = stats["languages"]["en"]
    n_b = hand_count(2, 0, 8, 16, 32, sliced=True) // 2  # B of en: half its fc1/fc2 parameters
    assert en["lslo_parameters"] - en["nonzero_parameters"] == round(0.9 * n_b)


def test_key_grammar_round_trips():
    key = factor_key("module.encoder.layers.3.fc1", "tgt", "B", 8, mask=True)
    assert key == "module.encoder.layers.3.fc1.lslo_tgt.B8_mask"
    parsed = parse_factor_key(key)
    assert (parsed.module, parsed.kind, parsed.factor, parsed.rank, parsed.mask) == (
        "module.encoder.layers.3.fc1", "tgt", "B", 8, True)
    assert parsed.format() == key and parsed.tensor_key() == key[: -len("_mask")]
    for bad in ("encoder.layers.3.fc1.lslo_mix", "encoder.layers.3.fc1.weight", "x.lslo_src.C2", "x.lslo_src.A0"):
        assert parse_factor_key(bad) is None


def test_kill_and_resume_with_the_preset(trained, tmp_path):
    """Resume (real fairseq-train, killed mid-pruning) reproduces the uninterrupted run with the preset."""
    from test_resume import PRUNE, check_kill_and_resume

    check_kill_and_resume(trained, tmp_path, PRUNE + PAPER + ["--lslo-ffn-slice-offset", "16"])
    path = str(tmp_path / "killed" / "checkpoint_last.pt")
    spec = LSLoSpec.from_state(load_checkpoint(path)["model"], path)
    assert (spec.ffn_coverage, spec.ffn_slice_offset, spec.init, spec.scaling) == ("slice", 16, "rank", "none")
