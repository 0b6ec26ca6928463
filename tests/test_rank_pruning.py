"""--lslo-prune-structure rank: whole components go, and the export is a smaller model with the same output."""
import json

import pytest
import torch

from conftest import LSLO_FLAGS, PAIRS, build, make_batch, randomize_adapters
from fairseq_lslo.cli import export, stats
from fairseq_lslo.deploy.merge import merge_model_state
from fairseq_lslo.modules.adapter_file import load_adapters
from fairseq_lslo.modules.adapter_state import compact_ranks
from fairseq_lslo.modules.lslo_linear import LowRankBank, live_components
from fairseq_lslo.modules.pruning import PruneSchedule, PruningPlan
from fairseq_lslo.optim.training_clock import clock_of

FLAGS = LSLO_FLAGS + ["--lslo-encoder-positions", "fc1,fc2,q", "--lslo-decoder-positions", "fc1,fc2,cross_v"]


def rank_prune(model, sparsity=0.75, scope="language"):
    """One-shot rank pruning of every language to ``sparsity``; pruned weights set to exactly 0."""
    plan = PruningPlan(model, PruneSchedule(final={"high": sparsity, "low": sparsity}, start=0, end=0,
                                            scope=scope, structure="rank"))
    report = plan.update_masks([t.param.data for t in plan.tensors], 0)
    with torch.no_grad():
        for t in plan.tensors:
            t.param.mul_(t.mask)
    return plan, report


@pytest.fixture(scope="module")
def pruned(dict_dir, tmp_path_factory):
    task, model = build(dict_dir, "lslo_transformer", FLAGS)
    randomize_adapters(model, seed=3)
    plan, report = rank_prune(model)
    root = tmp_path_factory.mktemp("rank")
    ckpt = root / "checkpoint.pt"
    torch.save({"model": model.state_dict()}, ckpt)
    return task, model, plan, report, root, str(ckpt)


def test_rank_structure_removes_whole_components_to_the_budget(pruned):
    _, _, plan, report, _, _ = pruned
    for b in plan.buckets:
        for i in range(len(b.owners)):
            rows_kept = b.A_mask[i].all(dim=1)
            assert torch.equal(rows_kept, b.A_mask[i].any(dim=1))  # a row of A is kept whole or not at all
            assert torch.equal(rows_kept, b.B_mask[i].all(dim=0))  # ... with the matching column of B
    for group in ("high", "low"):
        assert report.achieved[group] == pytest.approx(0.75, abs=0.05)


def test_rank_scores_pick_the_weakest_components():
    from test_pruning import TinyLSLo

    model = TinyLSLo()
    plan = PruningPlan(model, PruneSchedule(final={"high": 0.5, "low": 0.5}, start=0, end=0, structure="rank"))
    values = [t.param.data.clone() for t in plan.tensors]
    scores = {(b, i): plan.component_scores(values, b, i) for b, bucket in enumerate(plan.buckets)
              for i in range(len(bucket.owners))}
    plan.update_masks(values, 0)
    for code in ("en", "fr", "de"):
        kept, gone = [], []
        for (b, i), s in scores.items():
            if plan.buckets[b].owners[i] != code:
                continue
            live = plan.buckets[b].live_components(i)
            kept += s[live].tolist()
            gone += s[~live].tolist()
        assert kept and gone and min(kept) >= max(gone), code


def test_rank_structure_needs_both_factors():
    from fairseq_lslo.errors import LSLoConfigError

    with pytest.raises(LSLoConfigError, match="--lslo-prune-structure rank .* --lslo-prune-factors AB"):
        PruneSchedule(final={"high": 0.5}, start=0, end=0, factors="B", structure="rank")
    with pytest.raises(LSLoConfigError, match="--lslo-prune-structure must be one of element, rank"):
        PruneSchedule(final={"high": 0.5}, start=0, end=0, structure="rows")


def test_stats_report_each_languages_kept_rank(pruned, capsys):
    _, _, plan, _, _, ckpt = pruned
    assert stats.main([ckpt, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    for code in ("en", "fr", "de"):
        live = [int(b.live_components(i).sum()) for b in plan.buckets for i, o in enumerate(b.owners) if o == code]
        entry = record["languages"][code]
        assert entry["adapters"] == len(live) and entry["kept_rank"] == pytest.approx(sum(live) / len(live), abs=1e-4)
        assert entry["dead_adapters"] == live.count(0)
        assert entry["kept_rank"] < entry["rank"]


def batch_logits(task, model, seed=0):
    directions = PAIRS
    sample, _ = make_batch(task, directions, [5, 3, 6, 4, 2, 5], [4, 6, 3, 5, 2, 4], seed=seed)
    with torch.no_grad():
        return model(**sample)[0]


def test_export_carries_the_kept_ranks_and_the_loaded_model_computes_only_them(pruned, dict_dir):
    task, model, plan, _, root, ckpt = pruned
    out = str(root / "adapters.safetensors")
    assert export.main([ckpt, "-o", out]) == 0
    spec, tensors = load_adapters(out)
    assert spec.bank_ranks and spec.to_dict()["version"] == 3
    for b in plan.buckets:
        kept = [int(b.live_components(i).sum()) for i in range(len(b.owners))]
        ranks = spec.slot_ranks(b.name.rsplit("lslo_", 1)[1], b.name)
        slots = [s for s, r in enumerate(spec.configured_ranks("src")) if r == b.rank]
        assert [ranks[s] for s in slots] == kept, b.name

    _, small = build(dict_dir, "lslo_transformer", ["--lslo-adapters", out])
    lslo = lambda m: sum(p.numel() for n, p in m.named_parameters() if "lslo_" in n)  # noqa: E731
    assert lslo(small) < 0.4 * lslo(model)  # a quarter of the ranks kept, give or take a component
    for name, module in small.named_modules():
        if isinstance(module, LowRankBank):
            for _, A_mask, _, B_mask in module.buckets():  # nothing but kept components left
                assert bool(live_components(A_mask, B_mask).all()), name
    for seed in (0, 1):
        assert torch.allclose(batch_logits(task, small, seed), batch_logits(task, model, seed), atol=1e-5)

    # the compacted model's own checkpoint: same stats, merges to the same weights as the original
    small_ckpt = root / "small.pt"
    torch.save({"model": small.state_dict()}, small_ckpt)
    before, after = stats.compute_stats(ckpt)["languages"], stats.compute_stats(str(small_ckpt))["languages"]
    for code, entry in before.items():
        for key in ("kept_rank", "adapters", "dead_adapters", "nonzero_parameters", "rank"):
            assert after[code][key] == entry[key], (code, key)
        assert after[code]["lslo_parameters"] == entry["nonzero_parameters"]  # nothing but kept weights left
    original = torch.load(ckpt)["model"]
    for src, tgt in (("en", "de"), ("de", "fr")):
        a = merge_model_state(original, src, tgt)
        b = merge_model_state(small.state_dict(), src, tgt)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key

    # --keep-ranks writes the layout of the checkpoint
    full = str(root / "full.safetensors")
    assert export.main([ckpt, "-o", full, "--keep-ranks"]) == 0
    spec_full, tensors_full = load_adapters(full)
    assert not spec_full.bank_ranks and tensors_full.keys() == {
        k for k in original if "lslo_" in k and k != "lslo_config"}


def test_compaction_is_the_identity_without_dead_components(dict_dir):
    _, model = build(dict_dir, "lslo_transformer", LSLO_FLAGS)
    state = {k: v for k, v in model.state_dict().items() if "lslo_" in k and k != "lslo_config"}
    spec = model.lslo_spec
    same_spec, same = compact_ranks(spec, state)
    assert same_spec is spec and same.keys() == state.keys()


def test_a_slot_of_rank_zero_adds_nothing_in_every_path():
    torch.manual_seed(0)
    bank = LowRankBank(6, 10, [2, 0, 3], 1.0, scale_ranks=[2, 2, 3])
    with torch.no_grad():
        for _, _, p, _ in bank.factor_tensors():
            p.normal_()
    x = torch.randn(4, 3, 6)
    slots = torch.tensor([0, 1, 2])
    mixed = bank.delta(x, slots, None)
    assert torch.equal(mixed[:, 1], torch.zeros(4, 10))
    for s in (0, 2):
        assert torch.allclose(mixed[:, s], bank.delta(x[:, s:s + 1], slots[s:s + 1], s)[:, 0], atol=1e-6)
    assert torch.equal(bank.delta(x, None, 1), torch.zeros(4, 3, 10))
    assert torch.equal(bank.delta_weight(1), torch.zeros(10, 6))
    x.requires_grad_(True)
    bank.delta(x, slots, None).sum().backward()  # gradients flow to the kept slots
    assert bank.A2.grad is not None and bank.A2.grad.abs().sum() > 0


@pytest.mark.parametrize("wrapper", ["plain", "fp16-flat", "fp16-list", "bf16", "memory-efficient-bf16", "amp"])
def test_rank_pruning_through_every_optimizer_wrapper(wrapper, monkeypatch):
    """Whole components stay pruned, at exactly zero, in the model, the fp32 copies and Adam's state."""
    import warnings

    from test_pruning import DTYPES, TinyLSLo, build as build_optimizer, find_pruner
    from fairseq_lslo.modules.pruning import trainable_parameters

    model = TinyLSLo().to(DTYPES[wrapper])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = build_optimizer(wrapper, model, monkeypatch, lslo_prune_structure="rank", lslo_sparsity="0.75")
    pruner = find_pruner(opt)
    params = trainable_parameters(model)
    for update in range(14):
        clock_of(model).before_step(update)
        opt.zero_grad()
        opt.backward(sum((p.float() * torch.randn(p.shape) * 100).sum() for p in params))
        opt.step()
    state = pruner.state_dict()
    assert state["param_groups"][0]["lslo_pruning"]["schedule"]["structure"] == "rank"
    assert pruner.last_report.achieved["high"] == pytest.approx(0.75, abs=0.1)
    for b in pruner.plan.buckets:
        for i in range(len(b.owners)):
            assert torch.equal(b.A_mask[i].all(dim=1), b.A_mask[i].any(dim=1))
            assert torch.equal(b.A_mask[i].all(dim=1), b.B_mask[i].all(dim=0))
    for x, region in zip(pruner.plan.tensors, pruner.tensor_regions):
        assert torch.all(x.param.data[~x.mask] == 0) and torch.all(region.of(region.param.data)[~x.mask] == 0)
        for value in pruner.inner.optimizer.state[region.param].values():
            if torch.is_tensor(value) and value.shape == region.param.shape:
                assert torch.all(region.of(value)[~x.mask] == 0)


def test_rank_pruning_per_layer_scope():
    from test_pruning import TinyLSLo

    model = TinyLSLo()
    plan = PruningPlan(model, PruneSchedule(final={"high": 0.5, "low": 0.5}, start=0, end=0, scope="layer",
                                            structure="rank"))
    plan.update_masks([t.param.data for t in plan.tensors], 0)
    for unit in plan.units:
        n = sum(plan.tensors[j].mask[i].numel() for j, i in unit.pieces)
        pruned = sum(int((~plan.tensors[j].mask[i]).sum()) for j, i in unit.pieces)
        assert abs(pruned - n / 2) <= 12, unit.name  # nearest whole component (12 or 24 weights)
    for b in plan.buckets:
        for i in range(len(b.owners)):
            assert torch.equal(b.A_mask[i].all(dim=1), b.B_mask[i].all(dim=0))


def test_rank_pruning_resumed_equals_uninterrupted(monkeypatch):
    """Masks in the model, the schedule's state in the optimizer's: a restart mid-schedule changes nothing."""
    from test_pruning import TinyLSLo, build as build_optimizer
    from fairseq_lslo.modules.pruning import trainable_parameters

    def steps(model, opt, first, last):
        for update in range(first, last):
            clock_of(model).before_step(update)
            g = torch.Generator().manual_seed(update)
            for p in trainable_parameters(model):
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()

    flags = dict(lslo_prune_structure="rank", lslo_sparsity="0.75")
    whole = TinyLSLo()
    opt = build_optimizer("plain", whole, monkeypatch, **flags)
    steps(whole, opt, 0, 14)

    split = TinyLSLo()
    opt = build_optimizer("plain", split, monkeypatch, **flags)
    steps(split, opt, 0, 7)
    saved_model = {k: v.clone() for k, v in split.state_dict().items()}
    saved_opt = opt.state_dict()
    restarted = TinyLSLo()  # a new process: the model loaded from the checkpoint, a new optimizer
    restarted.load_state_dict(saved_model)
    opt = build_optimizer("plain", restarted, monkeypatch, **flags)
    opt.load_state_dict(saved_opt)
    steps(restarted, opt, 7, 14)
    for (name, a), b in zip(whole.state_dict().items(), restarted.state_dict().values()):
        assert torch.equal(a, b), name
