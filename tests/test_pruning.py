"""Gradual pruning: schedule, masks, and the lslo_pruning optimizer inside fairseq's wrappers."""
import argparse

import pytest
import torch
import torch.nn as nn

import fairseq_lslo  # noqa: F401  (registers the optimizer)
from fairseq import optim
from fairseq_lslo.errors import LSLoConfigError
from fairseq_lslo.modules.lslo_linear import LSLoLinear
from fairseq_lslo.modules.pruning import (
    PruneSchedule,
    PruningPlan,
    cubic_sparsity,
    parse_sparsity,
    trainable_parameters,
)
from fairseq_lslo.modules.routing import LanguageRouter
from fairseq_lslo.modules.spec import LSLoSpec, SideSpec
from fairseq_lslo.optim.lslo_pruning import LSLoPruningOptimizer, map_parameter_space, schedule_from_args
from fairseq_lslo.optim.training_clock import clock_of

LANGS = [["en", "high"], ["fr", "high"], ["de", "low"]]


class TinyLSLo(nn.Module):
    """Two 'encoder' and two 'decoder' layers of LSLo-wrapped fc1/fc2 and a frozen embedding."""

    def __init__(self, enc_routing=("src", "tgt"), dec_routing=("tgt", "tgt"), seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.lslo_spec = LSLoSpec(LANGS, [2, 2, 4], 1.0, 8, SideSpec(["fc1", "fc2"], list(enc_routing)),
                                  SideSpec(["fc1", "fc2"], list(dec_routing)))
        router = LanguageRouter()
        self.embed = nn.Embedding(10, 8)
        for side, routing in (("encoder", enc_routing), ("decoder", dec_routing)):
            layers = nn.ModuleList()
            for route in routing:
                layer = nn.Module()
                for name, (d_in, d_out) in (("fc1", (8, 16)), ("fc2", (16, 8))):
                    kinds = ["src", "tgt"] if route == "learn" else [route]
                    banks = {k: self.lslo_spec.build_bank(k, d_in, d_out) for k in kinds}
                    setattr(layer, name, LSLoLinear(nn.Linear(d_in, d_out), route, banks, router))
                layers.append(layer)
            side_module = nn.Module()
            side_module.layers = layers
            setattr(self, side, side_module)
        for name, p in self.named_parameters():
            p.requires_grad = "lslo_" in name
        with torch.no_grad():  # B = 0 at init; give it values so magnitudes differ
            for name, p in self.named_parameters():
                if p.requires_grad:
                    p.normal_()
        clock_of(self)  # what follow_task does for a model a task builds: pruning optimizers can find it


def schedule(**kw):
    args = dict(final={"high": 0.9, "low": 0.5, "shared": 0.7}, start=0, end=10, interval=1)
    args.update(kw)
    return PruneSchedule(**args)


def pruned_by_owner(plan):
    return {o: p for o, (n, p) in plan.language_counts().items()}


# --- schedule ---------------------------------------------------------------------------
def test_cubic_schedule_start_middle_end_and_monotone():
    assert cubic_sparsity(0, 10, 30, 0.9) == 0.0
    assert cubic_sparsity(10, 10, 30, 0.9) == 0.0
    assert cubic_sparsity(20, 10, 30, 0.9) == pytest.approx(0.9 * (1 - 0.5 ** 3))
    assert cubic_sparsity(15, 10, 30, 0.9) == pytest.approx(0.9 * (1 - 0.75 ** 3))
    assert cubic_sparsity(30, 10, 30, 0.9) == pytest.approx(0.9)
    assert cubic_sparsity(1000, 10, 30, 0.9) == pytest.approx(0.9)
    values = [cubic_sparsity(t, 10, 30, 0.9) for t in range(0, 40)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    s = schedule(start=4, end=10, interval=3)
    assert [t for t in range(15) if s.is_mask_update(t)] == [4, 7, 10]


def test_final_sparsity_per_language_within_one_weight_and_monotone_masks():
    model = TinyLSLo()
    plan = PruningPlan(model, schedule(start=0, end=6, interval=2))
    previous = {n: t.mask.clone() for n, t in zip(range(len(plan.tensors)), plan.tensors)}
    for t in range(0, 9):
        if plan.schedule.is_mask_update(t):
            plan.update_masks([x.param.data for x in plan.tensors], t)
            with torch.no_grad():  # weights move between updates; pruned stays pruned
                for x in plan.tensors:
                    x.param.add_(torch.randn_like(x.param) * 3)
            for j, x in enumerate(plan.tensors):
                assert not (x.mask & ~previous[j]).any(), "a pruned weight came back"
                previous[j] = x.mask.clone()
    counts = plan.language_counts()
    finals = {"en": 0.9, "fr": 0.9, "de": 0.5}
    for code, (n, pruned) in counts.items():
        assert abs(pruned - finals[code] * n) <= 1, (code, pruned, n)
    assert set(counts) == {"en", "fr", "de"}


def test_ties_pick_exactly_k_deterministically():
    def run():
        model = TinyLSLo()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.requires_grad:
                    p.zero_()  # every magnitude ties (B is all zero at the start of training)
        plan = PruningPlan(model, schedule(factors="B", start=0, end=4))
        plan.update_masks([x.param.data for x in plan.tensors], 2)
        return plan, [x.mask.clone() for x in plan.tensors]

    plan, masks = run()
    _, again = run()
    assert all(torch.equal(a, b) for a, b in zip(masks, again))
    for code, (n, pruned) in plan.language_counts().items():
        target = plan.schedule.sparsity(plan.group_of[code], 2) * n
        assert pruned == int(round(target)), (code, pruned, target)
    assert all(x.factor == "B" for x in plan.tensors)


def test_language_scope_prunes_smallest_across_layers():
    model = TinyLSLo()
    plan = PruningPlan(model, schedule(final={"high": 0.25, "low": 0.5}, start=0, end=0, factors="A"))
    with torch.no_grad():  # en: encoder layer 0 holds exactly 1/4 of its A weights; make them tiny
        for x in plan.tensors:
            for i, owner in enumerate(x.owners):
                if owner == "en":
                    x.param[i].mul_(1e-3 if x.layer == "encoder.layers.0" else 1e3)
    plan.update_masks([x.param.data for x in plan.tensors], 0)
    for x in plan.tensors:
        for i, owner in enumerate(x.owners):
            if owner == "en":
                assert not x.mask[i].any() if x.layer == "encoder.layers.0" else x.mask[i].all()


def test_layer_scope_one_threshold_per_layer():
    model = TinyLSLo()
    plan = PruningPlan(model, schedule(scope="layer", start=0, end=0))
    assert sorted(u.name for u in plan.units) == [
        "decoder.layers.0", "decoder.layers.1", "encoder.layers.0", "encoder.layers.1"]
    plan.update_masks([x.param.data for x in plan.tensors], 0)
    for unit in plan.units:
        n = {g: 0 for g in ("high", "low")}
        pruned = 0
        for j, i in unit.pieces:
            x = plan.tensors[j]
            n[plan.group_of[x.owners[i]]] += x.mask[i].numel()
            pruned += int((~x.mask[i]).sum())
        assert pruned == round(0.9 * n["high"] + 0.5 * n["low"])


def test_shared_layers_are_their_own_unit():
    model = TinyLSLo(dec_routing=("tgt", "shared"))
    plan = PruningPlan(model, schedule(start=0, end=0))
    assert "shared" in [u.name for u in plan.units]
    plan.update_masks([x.param.data for x in plan.tensors], 0)
    n, pruned = plan.language_counts()["shared"]
    assert abs(pruned - 0.7 * n) <= 1
    with pytest.raises(LSLoConfigError, match="--lslo-sparsity.*shared"):
        parse_sparsity("high:0.9,low:0.5", ["high", "low"], has_shared=True)
    assert parse_sparsity("0.8", ["high", "low"], has_shared=True) == {"high": 0.8, "low": 0.8, "shared": 0.8}


# --- bad flags ------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["1.0", "-0.1", "high:0.9,low:1.5", "high:0.9,low:x", "high:0.9,mid:0.5"])
def test_bad_sparsity_names_the_flag(spec):
    with pytest.raises(LSLoConfigError, match="--lslo-sparsity"):
        parse_sparsity(spec, ["high", "low"], has_shared=False)


def args_for(**kw):
    base = dict(lslo_sparsity="0.9", lslo_prune_start=0, lslo_prune_end=10, lslo_prune_unit="updates",
                lslo_prune_duration=None, lslo_updates_per_epoch=None, lslo_prune_interval=1, lslo_prune_scope="language",
                lslo_prune_factors="AB", lslo_inner_optimizer="adam", optimizer="lslo_pruning",
                lr=[0.5], adam_betas="(0.9, 0.98)", adam_eps=1e-8, weight_decay=0.0, tpu=False)
    base.update(kw)
    return argparse.Namespace(**base)


def test_bad_schedule_flags_name_the_flag():
    model = TinyLSLo()
    with pytest.raises(LSLoConfigError, match="--lslo-prune-end"):
        schedule_from_args(args_for(lslo_prune_start=10, lslo_prune_end=5), model)
    with pytest.raises(LSLoConfigError, match="needs the end of the schedule: --lslo-prune-end T, or --lslo-prune-dur"):
        schedule_from_args(args_for(lslo_prune_end=None), model)
    with pytest.raises(LSLoConfigError, match="either --lslo-prune-end .* or --lslo-prune-duration"):
        schedule_from_args(args_for(lslo_prune_end=12, lslo_prune_duration=10), model)
    with pytest.raises(LSLoConfigError, match="--lslo-prune-duration must be >= 0"):
        schedule_from_args(args_for(lslo_prune_end=None, lslo_prune_duration=-1), model)
    with pytest.raises(LSLoConfigError, match="--lslo-prune-interval must be a positive number of updates"):
        schedule_from_args(args_for(lslo_prune_interval=0), model)
    with pytest.raises(LSLoConfigError, match="--lslo-prune-interval must be a positive number of epochs"):
        schedule_from_args(args_for(lslo_prune_unit="epochs", lslo_prune_interval=0), model)
    with pytest.raises(LSLoConfigError, match="--lslo-updates-per-epoch is no longer used"):
        schedule_from_args(args_for(lslo_prune_unit="epochs", lslo_updates_per_epoch=40), model)
    with pytest.raises(LSLoConfigError, match="--lslo-prune-end must be a whole number of epochs"):
        schedule_from_args(args_for(lslo_prune_unit="epochs", lslo_prune_start=1, lslo_prune_end=2.5), model)
    with pytest.raises(LSLoConfigError, match="--lslo-prune-duration must be a whole number of updates"):
        schedule_from_args(args_for(lslo_prune_end=None, lslo_prune_duration=0.5), model)
    with pytest.raises(LSLoConfigError, match="--lslo-prune-unit must be one of updates, epochs"):
        schedule_from_args(args_for(lslo_prune_unit="steps"), model)
    s = schedule_from_args(args_for(lslo_prune_unit="epochs", lslo_prune_start=2, lslo_prune_end=None,
                                    lslo_prune_duration=10, lslo_prune_interval=None), model)
    assert (s.unit, s.start, s.end, s.interval) == ("epochs", 2, 12, 1)  # t2 is a duration; every epoch
    s = schedule_from_args(args_for(lslo_prune_start=50, lslo_prune_end=None, lslo_prune_duration=100,
                                    lslo_prune_interval=None), model)
    assert (s.unit, s.start, s.end, s.interval) == ("updates", 50, 150, 100)
    with pytest.raises(LSLoConfigError, match="--lslo-inner-optimizer"):
        LSLoPruningOptimizer(args_for(lslo_inner_optimizer="nope"), trainable_parameters(model), model=model)
    with pytest.raises(LSLoConfigError, match="--momentum is an option of"):
        LSLoPruningOptimizer(args_for(momentum=0.9), trainable_parameters(model), model=model)


# --- the optimizer, alone and inside fairseq's mixed-precision wrappers ----------------------
def fairseq_cfg(opt_args, bf16=False, no_flatten=False):
    common = argparse.Namespace(bf16=bf16, fp16=not bf16, fp16_no_flatten_grads=no_flatten, fp16_scale_window=None,
                                fp16_init_scale=4, fp16_scale_tolerance=0.0, threshold_loss_scale=None,
                                min_loss_scale=1e-4, model_parallel_size=1, amp_scale_window=None)
    return argparse.Namespace(common=common, optimizer=opt_args,
                              optimization=argparse.Namespace(update_freq=[1]),
                              distributed_training=argparse.Namespace(distributed_world_size=1))


def build(wrapper, model, monkeypatch, **kw):
    args = args_for(**{"lslo_prune_start": 2, "lslo_prune_end": 12, "lslo_prune_interval": 2, **kw})
    params = trainable_parameters(model)
    if wrapper == "plain":
        return optim.build_optimizer(args, params)
    if wrapper == "fp16-flat":  # FP16Optimizer's default: one flat fp32 copy (it asks CUDA for the device)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: None)
        return optim.FP16Optimizer.build_optimizer(fairseq_cfg(args), params)
    if wrapper == "fp16-list":
        return optim.FP16Optimizer.build_optimizer(fairseq_cfg(args, no_flatten=True), params)
    if wrapper == "bf16":
        return optim.FP16Optimizer.build_optimizer(fairseq_cfg(args, bf16=True), params)
    if wrapper == "memory-efficient-fp16":
        return optim.MemoryEfficientFP16Optimizer.build_optimizer(fairseq_cfg(args), params)
    if wrapper == "memory-efficient-bf16":
        return optim.MemoryEfficientFP16Optimizer.build_optimizer(fairseq_cfg(args, bf16=True), params)
    if wrapper == "amp":
        return optim.AMPOptimizer.build_optimizer(fairseq_cfg(args), params)
    raise ValueError(wrapper)


DTYPES = {"plain": torch.float32, "fp16-flat": torch.float16, "fp16-list": torch.float16,
          "bf16": torch.bfloat16, "memory-efficient-bf16": torch.bfloat16, "amp": torch.float32}


def find_pruner(opt):
    while not isinstance(opt, LSLoPruningOptimizer):
        opt = getattr(opt, "fp32_optimizer", None) or getattr(opt, "wrapped_optimizer")
    return opt


@pytest.mark.parametrize("wrapper", list(DTYPES))
def test_masked_weights_stay_exactly_zero_under_large_lr(wrapper, monkeypatch):
    import warnings

    model = TinyLSLo().to(DTYPES[wrapper])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # AMP's GradScaler warns that CUDA is absent (and disables itself)
        opt = build(wrapper, model, monkeypatch)
    pruner = find_pruner(opt)
    assert pruner.model is model
    params = trainable_parameters(model)
    held = list(pruner.params)
    if wrapper == "fp16-flat":  # one flat fp32 tensor holding all LSLo weights in order
        assert len(held) == 1 and held[0].numel() == sum(p.numel() for p in params)
    elif wrapper in ("fp16-list", "bf16"):  # fp32 copies, not the model's tensors
        assert len(held) == len(params) and all(h is not p and h.dtype == torch.float32 for h, p in zip(held, params))
    else:  # the model's own parameters
        assert all(h is p for h, p in zip(held, params))
    for update in range(20):
        clock_of(model).before_step(update)  # what fairseq-train's task.optimizer_step tells the clock
        opt.zero_grad()
        loss = sum((p.float() * torch.randn(p.shape) * 100).sum() for p in params)  # grads everywhere
        opt.backward(loss)
        opt.clip_grad_norm(1e6)
        opt.step()
    report = pruner.last_report
    assert report.update == 12 and report.achieved["high"] == pytest.approx(0.9, abs=0.005)
    n_pruned = n_kept_nonzero = 0
    for x, region in zip(pruner.plan.tensors, pruner.tensor_regions):
        pruned = ~x.mask
        n_pruned += int(pruned.sum())
        assert torch.all(x.param.data[pruned] == 0), x.name  # the model's own weights
        assert torch.all(region.of(region.param.data)[pruned] == 0)  # the optimizer's (fp32 copy)
        for key, value in pruner.inner.optimizer.state[region.param].items():
            if torch.is_tensor(value) and value.shape == region.param.shape:
                assert torch.all(region.of(value)[pruned] == 0), key
        n_kept_nonzero += int((x.param.data[x.mask] != 0).sum())
    assert n_pruned > 0 and n_kept_nonzero > 0


def test_state_dict_round_trip_and_mapping_errors(monkeypatch):
    model = TinyLSLo()
    opt = build("plain", model, monkeypatch)
    for update in range(3):
        clock_of(model).before_step(update)
        for p in trainable_parameters(model):
            p.grad = torch.randn_like(p)
        opt.step()
    state = opt.state_dict()
    assert state["param_groups"][0]["lslo_pruning"]["steps"] == 3  # inside the torch optimizer's state
    fresh = build("plain", model, monkeypatch)
    fresh.load_state_dict(state)
    assert fresh.pruning_state["steps"] == 3 and len(fresh.optimizer.state) == len(opt.optimizer.state)
    legacy = dict(state, param_groups=[{k: v for k, v in g.items() if k != "lslo_pruning"}
                                       for g in state["param_groups"]])
    legacy["lslo_pruning"] = {"version": 1, "steps": 7, "schedule": opt.plan.schedule.to_dict()}
    fresh.load_state_dict(legacy)  # a version-1 checkpoint kept it at the top
    assert fresh.pruning_state["steps"] == 7 and fresh.pruning_state["epoch"] is None
    with pytest.raises(ValueError, match="neither"):
        map_parameter_space([torch.zeros(3, 3)], trainable_parameters(model))
    copies = [p.detach().clone() + 1 for p in trainable_parameters(model)]
    with pytest.raises(ValueError, match="do not hold the model's values"):
        map_parameter_space(copies, trainable_parameters(model))
    with pytest.raises(LSLoConfigError, match="cannot find the LSLo weights"):
        LSLoPruningOptimizer(args_for(), [torch.nn.Parameter(torch.zeros(5))], model=model)


def test_learn_and_shared_layers_with_the_optimizer(monkeypatch):
    model = TinyLSLo(enc_routing=("learn", "tgt"), dec_routing=("tgt", "shared"))
    mix = [p for n, p in model.named_parameters() if n.endswith("lslo_mix")]
    opt = build("plain", model, monkeypatch, lslo_sparsity="high:0.9,low:0.5,shared:0.6")
    assert {u.name for u in opt.plan.units} == {"en", "fr", "de", "shared"}
    learn_tensors = [x for x in opt.plan.tensors if x.layer == "encoder.layers.0"]
    assert {x.name.split(".")[-2] for x in learn_tensors} == {"lslo_src", "lslo_tgt"}  # both banks of 'learn'
    for update in range(14):
        clock_of(model).before_step(update)
        for p in trainable_parameters(model):
            p.grad = torch.randn_like(p)
        opt.step()
    counts = opt.plan.language_counts()
    for owner, final in (("en", 0.9), ("de", 0.5), ("shared", 0.6)):
        n, pruned = counts[owner]
        assert abs(pruned - final * n) <= 1
    assert all(torch.any(p != 0) for p in mix)  # trained, never pruned
