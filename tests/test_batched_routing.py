"""The batched routing of LowRankBank equals a plain per-language loop (forward and gradients).

Device: CPU, or ``LSLO_TEST_DEVICE=cuda`` (tests/devices.py) for the same tests on a GPU.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from devices import TEST_DEVICE as DEV
from fairseq_lslo.modules import lowrank_ops
from fairseq_lslo.modules.lslo_linear import LowRankBank, LSLoLinear
from fairseq_lslo.modules.routing import BatchLanguages, LanguageRouter

D_IN, D_OUT = 12, 20
RANKS = [2, 4, 2, 8, 4, 1]  # languages with different ranks, several per rank bucket


@pytest.fixture(autouse=True, params=["batched", "per_sample"])
def products(request, monkeypatch):
    """Every test runs on both ways of computing a mixed batch (padded batched matmuls, and
    one sample at a time at its own rank, which CPU uses for large layers; on CUDA both are
    the batched kernels)."""
    monkeypatch.setattr(lowrank_ops, "PER_SAMPLE_MIN_SLAB", 0 if request.param == "per_sample" else 2**62)
    return request.param


def random_bank(seed: int, alpha: float = 2.0) -> LowRankBank:
    torch.manual_seed(seed)
    bank = LowRankBank(D_IN, D_OUT, RANKS, alpha).double().to(DEV)
    with torch.no_grad():
        for _, _, param, mask in bank.factor_tensors():
            param.normal_()
            mask.copy_(torch.rand(mask.shape) > 0.3)  # pruned entries must not contribute
    return bank


def reference_loop(bank: LowRankBank, x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """The naive implementation: one boolean mask and one masked update per language."""
    out = torch.zeros(x.shape[:-1] + (D_OUT,), dtype=x.dtype, device=x.device)
    for k, (r, i) in enumerate(bank.slot_place):
        sel = slots == k
        if not sel.any():
            continue
        A = getattr(bank, f"A{r}")[i] * getattr(bank, f"A{r}_mask")[i]
        B = getattr(bank, f"B{r}")[i] * getattr(bank, f"B{r}_mask")[i]
        out[:, sel] = (x[:, sel] @ A.t() @ B.t()) * (bank.alpha / bank.ranks[k])
    return out


def outputs_and_grads(bank, x, fn, grad):
    bank.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    y = fn(x)
    y.backward(grad)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for _, _, p, _ in bank.factor_tensors()]
    return [y.detach(), x.grad] + grads


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixed_batch_matches_reference_loop(seed):
    bank = random_bank(seed)
    g = torch.Generator().manual_seed(100 + seed)
    T, N = 7, 11
    present = [0, 1, 3, 5]  # languages 2 and 4 are absent from the batch
    slots = torch.tensor(present)[torch.randint(len(present), (N,), generator=g)]
    slots[:4] = torch.tensor(present)  # every listed language really occurs
    x = torch.randn(T, N, D_IN, generator=g, dtype=torch.double).to(DEV)
    base = torch.randn(T, N, D_OUT, generator=g, dtype=torch.double).to(DEV)
    grad = torch.randn(T, N, D_OUT, generator=g, dtype=torch.double).to(DEV)
    slots = slots.to(DEV)

    ref = outputs_and_grads(bank, x, lambda x: base + reference_loop(bank, x, slots), grad)
    ours = outputs_and_grads(bank, x, lambda x: bank.add_delta(base.clone(), x, slots, None), grad)
    plain = outputs_and_grads(bank, x, lambda x: base + bank.delta(x, slots, None), grad)
    for a, b, c in zip(ref, ours, plain):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(c, a, rtol=1e-10, atol=1e-10)
    # absent languages get zero gradients; present ones non-zero
    for k, (r, i) in enumerate(bank.slot_place):
        gA = getattr(bank, f"A{r}").grad[i]
        assert (gA.abs().sum() == 0) == (k not in present)


def test_uniform_batch_matches_reference_loop():
    bank = random_bank(3)
    x = torch.randn(5, 4, D_IN, dtype=torch.double, device=DEV)
    grad = torch.randn(5, 4, D_OUT, dtype=torch.double, device=DEV)
    for slot in range(len(RANKS)):
        slots = torch.full((4,), slot, device=DEV)
        ref = outputs_and_grads(bank, x, lambda x: reference_loop(bank, x, slots), grad)
        ours = outputs_and_grads(
            bank, x, lambda x: bank.add_delta(torch.zeros(5, 4, D_OUT, dtype=torch.double, device=DEV), x, None, slot), grad)
        for a, b in zip(ref, ours):
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


def test_gradcheck_of_the_batched_path():
    """Hand-written gradients of the in-place batched update against finite differences."""
    bank = random_bank(4)
    slots = torch.tensor([3, 0, 3, 5, 1], device=DEV)
    x = torch.randn(3, 5, D_IN, dtype=torch.double, device=DEV, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: bank.delta(x, slots, None), (x,))
    params = tuple(p.detach().clone().requires_grad_() for _, _, p, _ in bank.factor_tensors())
    assert torch.autograd.gradcheck(lambda *ps: _delta_with(bank, ps, x.detach(), slots), params)


def _delta_with(bank: LowRankBank, params, x, slots):
    """bank.delta with its factor parameters replaced by ``params`` (for gradcheck)."""
    saved = {}
    for (f, r, p, _), new in zip(list(bank.factor_tensors()), params):
        saved[f"{f}{r}"] = p
        del bank._parameters[f"{f}{r}"]
        setattr(bank, f"{f}{r}", new)
    try:
        return bank.delta(x, slots, None)
    finally:
        for name, p in saved.items():
            delattr(bank, name)
            bank.register_parameter(name, p)


def test_lslo_linear_routes_each_sample_like_the_loop():
    """Through LSLoLinear and the router: base output plus each sample's own adapter."""
    torch.manual_seed(5)
    base = torch.nn.Linear(D_IN, D_OUT).double().to(DEV)
    router = LanguageRouter()
    bank = random_bank(5)
    layer = LSLoLinear(base, "tgt", {"tgt": bank}, router)
    tgt = torch.tensor([5, 0, 0, 3, 1, 5], device=DEV)
    router.set(BatchLanguages(None, tgt, None, None))
    x = torch.randn(4, 6, D_IN, dtype=torch.double, device=DEV, requires_grad=True)
    y = layer(x)
    expected = F.linear(x, base.weight, base.bias) + reference_loop(bank, x, tgt)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)
    (gx,) = torch.autograd.grad(y.sum(), x)
    (gx_ref,) = torch.autograd.grad(expected.sum(), x)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-10, atol=1e-10)


def test_mixed_batch_needs_time_major_input():
    bank = random_bank(6)
    with pytest.raises(RuntimeError, match="time-major"):
        bank.delta(torch.randn(3, D_IN, dtype=torch.double, device=DEV), torch.tensor([0, 1, 2], device=DEV), None)


def test_inference_cache_follows_parameter_and_mask_updates():
    """Without gradients the masked factors are memoised; in-place changes must invalidate them."""
    bank = random_bank(7)
    x = torch.randn(2, 3, D_IN, dtype=torch.double, device=DEV)
    slots = torch.tensor([0, 3, 5], device=DEV)
    for uniform, ids in ((None, slots), (3, None)):
        want_slots = slots if uniform is None else torch.full((3,), uniform, device=DEV)
        with torch.no_grad():
            first = bank.delta(x, ids, uniform)
            torch.testing.assert_close(first, reference_loop(bank, x, want_slots))
            bank.B8.mul_(2.0)  # optimizer-style in-place update
            bank.A2_mask.zero_()  # pruning-style mask update
            second = bank.delta(x, ids, uniform)
            torch.testing.assert_close(second, reference_loop(bank, x, want_slots))
        assert not torch.equal(first, second)


@pytest.mark.parametrize("uniform", [None, 3])
def test_fused_linear_matches_reference_and_gradcheck(uniform):
    """linear_with_delta (the path LSLoLinear takes) against F.linear + the loop, incl. weight/bias grads."""
    bank = random_bank(8)
    torch.manual_seed(8)
    weight = torch.randn(D_OUT, D_IN, dtype=torch.double, device=DEV, requires_grad=True)
    bias = torch.randn(D_OUT, dtype=torch.double, device=DEV, requires_grad=True)
    slots = torch.tensor([1, 4, 4, 0, 2], device=DEV)
    ids = slots if uniform is None else None
    want_slots = slots if uniform is None else torch.full((5,), uniform, device=DEV)
    x = torch.randn(3, 5, D_IN, dtype=torch.double, device=DEV, requires_grad=True)
    grad = torch.randn(3, 5, D_OUT, dtype=torch.double, device=DEV)
    results = []
    for fn in (lambda: F.linear(x, weight, bias) + reference_loop(bank, x, want_slots),
               lambda: bank.linear_with_delta(x, weight, bias, ids, uniform)):
        bank.zero_grad(set_to_none=True)
        for t in (x, weight, bias):
            t.grad = None
        fn().backward(grad)
        results.append([x.grad, weight.grad, bias.grad] + [
            p.grad if p.grad is not None else torch.zeros_like(p) for _, _, p, _ in bank.factor_tensors()])
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(lambda x, w, b: bank.linear_with_delta(x, w, b, ids, uniform), (x, weight, bias))


def test_autocast_mixes_dtypes_like_fairseq_amp():
    """Under autocast the frozen output is low precision and the factors fp32: gradients keep their dtypes."""
    torch.manual_seed(9)
    bank = LowRankBank(D_IN, D_OUT, RANKS, 1.0).to(DEV)
    with torch.no_grad():
        for _, _, p, _ in bank.factor_tensors():
            p.normal_()
    weight = torch.randn(D_OUT, D_IN, device=DEV)
    x = torch.randn(3, 4, D_IN, device=DEV, requires_grad=True)
    slots = torch.tensor([0, 3, 5, 3], device=DEV)
    with torch.autocast(DEV.type, dtype=torch.bfloat16):
        y = bank.linear_with_delta(x, weight, None, slots, None)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and bank.A8.grad.dtype == torch.float32
    with torch.no_grad():
        ref = F.linear(x, weight) + reference_loop(bank, x, slots)
    torch.testing.assert_close(y.float(), ref, rtol=0.05, atol=0.5)


def test_eval_after_an_optimizer_step_sees_the_new_weights():
    """fairseq's optimizers write through p.data (no version bump): validation must not reuse
    factors memoised before the step."""
    bank = random_bank(5)
    x = torch.randn(4, 3, D_IN, dtype=torch.double, device=DEV)
    slots = torch.tensor([0, 3, 1], device=DEV)
    bank.eval()
    with torch.no_grad():
        before = bank.delta(x, slots, None).clone()
    bank.train()
    for p in bank.parameters():
        p.data.add_(0.5)  # what fairseq's Adam does
    bank.eval()
    with torch.no_grad():
        after = bank.delta(x, slots, None)
        expected = reference_loop(bank, x, slots)
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, expected)


def test_cpu_runs_large_mixed_batches_sample_by_sample(monkeypatch):
    """The rule that picks the way: mixed batches on CPU whose sample slab is large enough."""
    monkeypatch.setattr(lowrank_ops, "PER_SAMPLE_MIN_SLAB", 1 << 16)
    rows = torch.zeros(4, dtype=torch.long)
    x = torch.empty(32, 4, 8)
    assert lowrank_ops._per_sample(x, 2048, rows)  # 32 tokens x 2048 outputs
    assert not lowrank_ops._per_sample(x, 1024, rows)  # slab below the threshold
    assert not lowrank_ops._per_sample(x, 2048, None)  # one language: two plain products
    assert not lowrank_ops._per_sample(x.to("meta"), 2048, rows)  # not CPU: batched kernels
