"""Pruning by fairseq's real epochs (the reference schedule) and its state under every optimizer wrapper."""
import io
import warnings

import pytest
import torch

from fairseq_lslo.errors import LSLoConfigError
from fairseq_lslo.optim.training_clock import clock_of
from fairseq_lslo.modules.pruning import PruneSchedule, trainable_parameters
from test_pruning import DTYPES, TinyLSLo, build, find_pruner

P = 0.9
EPOCHS = dict(lslo_prune_unit="epochs", lslo_prune_start=2, lslo_prune_end=None, lslo_prune_duration=4,
              lslo_prune_interval=None, lslo_prune_factors="B", lslo_sparsity=str(P))


def reference(e, t1, t2, p):
    """The reference implementation's schedule, written from its formula."""
    if e < t1:
        return 0.0
    if e > t1 + t2:
        return p
    return p - p * (1 - (e - t1) / t2) ** 3


def test_epoch_schedule_equals_the_reference_formula():
    s = PruneSchedule(final={"high": P, "low": 0.5}, start=2, end=12, interval=1, unit="epochs")
    for e in range(1, 20):
        assert s.sparsity("high", e) == pytest.approx(reference(e, 2, 10, P), abs=1e-12), e
        assert s.sparsity("low", e) == pytest.approx(reference(e, 2, 10, 0.5), abs=1e-12), e
    assert [e for e in range(1, 20) if s.is_mask_update(e)] == list(range(2, 13))
    assert s.to_dict()["unit"] == "epochs"


def sparsity_of_B(pruner, group):
    """Pruned fraction of the B factors of ``group``'s languages; and whether any A is pruned."""
    pruned = total = 0
    for tensor in pruner.plan.tensors:
        assert tensor.factor == "B"
        for i, owner in enumerate(tensor.owners):
            if pruner.plan.group_of[owner] == group:
                total += tensor.mask[i].numel()
                pruned += int((~tensor.mask[i]).sum())
    return pruned / total, total


def train_steps(model, opt, n, first_update):
    params = trainable_parameters(model)
    for k in range(n):
        clock_of(model).before_step(first_update + k)
        opt.zero_grad()
        loss = sum((p.float() * torch.randn(p.shape)).sum() for p in params)
        opt.backward(loss)
        opt.step()


def test_masks_at_each_epoch_start_B_only_to_the_reference_schedule(monkeypatch):
    torch.manual_seed(0)
    model = TinyLSLo()
    opt = build("plain", model, monkeypatch, **EPOCHS)
    pruner = find_pruner(opt)
    a_masks = [m for n, m in model.named_buffers() if n.split(".")[-1].startswith("A")]
    updates = 0
    for epoch in range(1, 9):
        clock_of(model).begin_epoch(epoch)  # what fairseq-train's begin_epoch does, before the first batch
        for group, p in (("high", P), ("low", P)):  # one P for all
            achieved, n = sparsity_of_B(pruner, group)
            assert achieved == pytest.approx(round(reference(epoch, 2, 4, p) * n) / n), (epoch, group)
        weights_zero = all(torch.all(t.param[~t.mask] == 0) for t in pruner.plan.tensors)
        assert weights_zero  # pruned at the epoch start, before any batch of the epoch
        at_start = [t.mask.clone() for t in pruner.plan.tensors]
        train_steps(model, opt, 3, updates)
        updates += 3
        assert all(torch.equal(m, t.mask) for m, t in zip(at_start, pruner.plan.tensors))  # not within an epoch
        assert pruner.pruning_state["epoch"] == epoch
    assert all(bool(m.all()) for m in a_masks)  # A is never pruned


def test_masks_do_not_change_within_an_epoch_and_mid_epoch_resume_keeps_them(monkeypatch):
    torch.manual_seed(1)
    model = TinyLSLo()
    opt = build("plain", model, monkeypatch, **EPOCHS)
    clock_of(model).begin_epoch(3)
    masks = [t.mask.clone() for t in find_pruner(opt).plan.tensors]
    train_steps(model, opt, 4, 0)
    assert all(torch.equal(m, t.mask) for m, t in zip(masks, find_pruner(opt).plan.tensors))
    state = opt.state_dict()
    # resume in the middle of epoch 3: fairseq-train calls begin_epoch(3) again; the masks stay
    fresh = build("plain", model, monkeypatch, **EPOCHS)
    fresh.load_state_dict(state)
    clock_of(model).begin_epoch(3)
    assert find_pruner(fresh).last_report is not None and find_pruner(fresh).last_report.update == 3
    assert all(torch.equal(m, t.mask) for m, t in zip(masks, find_pruner(fresh).plan.tensors))
    clock_of(model).begin_epoch(4)
    assert any(not torch.equal(m, t.mask) for m, t in zip(masks, find_pruner(fresh).plan.tensors))


def test_epoch_schedule_without_epochs_is_a_clear_error(monkeypatch):
    model = TinyLSLo()
    opt = build("plain", model, monkeypatch, **EPOCHS)
    for p in trainable_parameters(model):
        p.grad = torch.zeros_like(p)
    with pytest.raises(LSLoConfigError, match="--lslo-prune-unit epochs: the model was never told the epoch"):
        opt.step()


def test_an_epoch_announced_before_the_optimizer_existed_is_caught_up(monkeypatch):
    model = TinyLSLo()
    clock_of(model).begin_epoch(4)
    opt = build("plain", model, monkeypatch, **EPOCHS)
    train_steps(model, opt, 1, 0)
    achieved, n = sparsity_of_B(find_pruner(opt), "high")
    assert achieved == pytest.approx(round(reference(4, 2, 4, P) * n) / n)


def test_an_update_schedule_ignores_epochs(monkeypatch):
    tiny = TinyLSLo()
    opt = build("plain", tiny, monkeypatch)
    clock_of(tiny).begin_epoch(7)
    assert all(bool(t.mask.all()) for t in find_pruner(opt).plan.tensors)


WRAPPERS = list(DTYPES) + ["memory-efficient-fp16"]


def save_load_bytes(state):
    """Through torch.save/torch.load, as a checkpoint goes."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_pruning_state_round_trips_through_every_wrapper(wrapper, monkeypatch):
    dtype = DTYPES.get(wrapper, torch.float16)
    torch.manual_seed(2)
    model = TinyLSLo().to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # AMP's GradScaler warns that CUDA is absent (and disables itself)
        opt = build(wrapper, model, monkeypatch, **EPOCHS)
    pruner = find_pruner(opt)
    for epoch in (1, 2, 3):
        clock_of(model).begin_epoch(epoch)
        train_steps(model, opt, 2, 2 * (epoch - 1))
    saved_state = dict(pruner.pruning_state)
    assert saved_state["epoch"] == 3 and saved_state["steps"] == 6
    state = save_load_bytes(opt.state_dict())  # what fairseq puts in checkpoint["last_optimizer_state"]
    masks = [t.mask.clone() for t in pruner.plan.tensors]
    # a fresh process: the model restored from the checkpoint (same weights and masks), a new optimizer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fresh = build(wrapper, model, monkeypatch, **EPOCHS)
    fresh_pruner = find_pruner(fresh)
    assert fresh_pruner.pruning_state["steps"] == 0
    fresh.load_state_dict(state)
    assert fresh_pruner.pruning_state == saved_state
    inner_old, inner_new = pruner.inner.optimizer.state, fresh_pruner.inner.optimizer.state
    for old_param, new_param in zip(pruner.params, fresh_pruner.params):
        assert torch.equal(inner_old[old_param]["exp_avg"], inner_new[new_param]["exp_avg"])
    clock_of(model).begin_epoch(3)  # resumed inside epoch 3: nothing recomputed
    assert all(torch.equal(m, t.mask) for m, t in zip(masks, fresh_pruner.plan.tensors))
    clock_of(model).begin_epoch(4)
    achieved, n = sparsity_of_B(fresh_pruner, "high")
    assert achieved == pytest.approx(round(reference(4, 2, 4, P) * n) / n)
    assert fresh_pruner.pruning_state["epoch"] == 4
    again = save_load_bytes(fresh.state_dict())
    assert again["param_groups"][0]["lslo_pruning"]["epoch"] == 4
