"""The dtype contract of the low-rank ops (lowrank_ops.precision) and the zero-gradient guarantee.

Under autocast (``--amp``) and with half-precision weights (``--fp16``/``--bf16``, factors
half too) every route, one-language and mixed batches, on both CPU ways of running a mixed
batch: forward and backward agree with fp32 within the tolerance below; factor gradients are
summed in fp32; every rank bucket gets a gradient tensor on every batch.
Device: ``LSLO_TEST_DEVICE=cuda`` runs the same tests on a GPU (see tests/devices.py).
"""
from __future__ import annotations

import copy
import warnings
from contextlib import nullcontext
from typing import Dict, Optional, Tuple

import pytest
import torch
import torch.nn as nn

from devices import TEST_DEVICE, autocast_computes_in, autocast_dtypes
from fairseq_lslo.modules import lowrank_ops
from fairseq_lslo.modules.lowrank_ops import Precision, precision
from fairseq_lslo.modules.lslo_linear import LowRankBank, LSLoLinear
from fairseq_lslo.modules.routing import BatchLanguages, LanguageRouter

DEV = TEST_DEVICE
D_IN, D_OUT, T, N = 16, 24, 5, 6
RANKS = [2, 8, 2, 4]  # four languages in three rank buckets
ROUTES = ["src", "tgt", "shared", "learn"]
AUTOCAST = autocast_dtypes()
HALF = [torch.float16, torch.bfloat16]
#: unit roundoff of each dtype; a result whose inputs and output are rounded to it (a few
#: roundings, errors adding up like random ones) is within TOL_UNITS of them, norm-wise
UNIT = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}
TOL_UNITS = 4  # bf16: 0.016, fp16: 0.002 relative (Frobenius) error against fp32


@pytest.fixture(autouse=True, params=["batched", "per_sample"])
def products(request, monkeypatch):
    """Both ways of computing a mixed batch (on CUDA both are the batched kernels)."""
    monkeypatch.setattr(lowrank_ops, "PER_SAMPLE_MIN_SLAB", 0 if request.param == "per_sample" else 2**62)
    return request.param


def make_layer(route: str, seed: int) -> LSLoLinear:
    """A frozen linear map with random (pruned) adapters on ``route``, fp32, on the test device."""
    torch.manual_seed(seed)
    kinds = {"learn": ["src", "tgt"]}.get(route, [route])
    banks = {k: LowRankBank(D_IN, D_OUT, [6] if k == "shared" else RANKS, alpha=2.0) for k in kinds}
    layer = LSLoLinear(nn.Linear(D_IN, D_OUT), route, banks, LanguageRouter())
    with torch.no_grad():
        for bank in banks.values():
            for _, _, param, mask in bank.factor_tensors():
                param.normal_().mul_(0.5)
                mask.copy_(torch.rand(mask.shape) > 0.3)
        if route == "learn":
            layer.lslo_mix.copy_(torch.tensor([0.3, -0.2]))
    layer.weight.requires_grad_(False)
    layer.bias.requires_grad_(False)
    return layer.to(DEV)


def set_languages(layer: LSLoLinear, batch: str) -> None:
    """``one``: every sample the same source and target language; ``mixed``: several of each."""
    if batch == "one":
        src, tgt = torch.full((N,), 1), torch.full((N,), 3)
    else:
        src, tgt = torch.tensor([0, 1, 3, 0, 2, 1]), torch.tensor([3, 3, 1, 2, 0, 1])
    uniform = [int(t[0]) if bool((t == t[0]).all()) else None for t in (src, tgt)]
    layer.router.set(BatchLanguages(src.to(DEV), tgt.to(DEV), *uniform))


def inputs(seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, N, D_IN, generator=g).to(DEV), torch.randn(T, N, D_OUT, generator=g).to(DEV)


def run(layer: LSLoLinear, x: torch.Tensor, grad: torch.Tensor, autocast: Optional[torch.dtype] = None):
    """(output, input gradient, {trainable parameter: gradient}); backward outside autocast, as fairseq does."""
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    with torch.autocast(DEV.type, dtype=autocast) if autocast else nullcontext():
        y = layer(x)
    y.backward(grad.to(y.dtype))
    return y.detach(), x.grad, {n: p.grad for n, p in layer.named_parameters() if p.requires_grad}


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref.double()).norm() / ref.double().norm())


def mix_grad_scale(layer: LSLoLinear, x: torch.Tensor, grad: torch.Tensor) -> float:
    """``||d_src|| ||g|| + ||d_tgt|| ||g||``: the size of the terms whose sum (with cancellation)
    is the gradient of ``lslo_mix``; its rounding error is measured against this, not against
    the (possibly much smaller) sum itself."""
    with torch.no_grad():
        deltas = [layer.lslo_src.delta(x, *layer.router.lookup("src")),
                  layer.lslo_tgt.delta(x, *layer.router.lookup("tgt"))]
    return float(sum(d.double().norm() * grad.double().norm() for d in deltas))


def assert_close_to(ours, ref, dtype: torch.dtype, what: str, mix_scale: Optional[float] = None) -> None:
    """Output, input gradient and every parameter gradient within the stated tolerance; where the
    reference gradient is exactly zero (slots the batch did not use, pruned entries) ours is too."""
    tol = TOL_UNITS * UNIT[dtype]
    for name, a, b in [("output", ours[0], ref[0]), ("grad x", ours[1], ref[1])] + [
            (n, ours[2][n], ref[2][n]) for n in ref[2]]:
        assert a is not None, f"{what}: {name} has no gradient"
        if name == "lslo_mix":
            err = float((a.double() - b.double()).abs().max()) / mix_scale
            assert err <= tol, f"{what}: {name} error {err:.2e} of its terms' size > {tol:.2e}"
            continue
        if name.startswith("lslo_"):
            zero = b == 0
            assert torch.equal(a[zero], torch.zeros_like(a[zero])), f"{what}: {name} not exactly zero where fp32 is"
        if b.abs().sum() > 0:
            err = rel_err(a, b)
            assert err <= tol, f"{what}: {name} relative error {err:.2e} > {tol:.2e}"


def test_fp16_autocast_support_is_detected_not_skipped():
    """fp16 autocast is tested wherever it works; where it does not, that is a stated fact here."""
    supported = autocast_computes_in(DEV, torch.float16)
    assert autocast_computes_in(DEV, torch.bfloat16)
    assert (torch.float16 in AUTOCAST) == supported
    if DEV.type == "cuda":
        assert supported
    if not supported:  # torch disables autocast for it: a matmul stays fp32
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.autocast(DEV.type, dtype=torch.float16):
                assert torch.mm(torch.ones(2, 2, device=DEV), torch.ones(2, 2, device=DEV)).dtype == torch.float32


def test_precision_is_the_one_rule():
    x32, x64 = torch.ones(2, device=DEV), torch.ones(2, device=DEV, dtype=torch.float64)
    assert precision(x32) == Precision(torch.float32, torch.float32)
    for dtype in HALF:  # --fp16 / --bf16: the activations' dtype, fp32 sums
        assert precision(x32.to(dtype)) == Precision(dtype, torch.float32)
    for dtype in AUTOCAST:  # --amp / torch.autocast: the autocast dtype, whatever x's float dtype
        with torch.autocast(DEV.type, dtype=dtype):
            assert precision(x32) == Precision(dtype, torch.float32)
            for other in HALF:
                assert precision(x32.to(other)) == Precision(dtype, torch.float32)
            assert precision(x64) == Precision(torch.float64, torch.float64)  # autocast leaves fp64 alone


def test_an_output_in_another_dtype_is_a_clear_error():
    """add_delta writes in place, so its output must already be in the compute dtype."""
    bank = LowRankBank(D_IN, D_OUT, RANKS, 1.0).to(DEV)
    x = torch.randn(T, N, D_IN, device=DEV)
    with torch.autocast(DEV.type, dtype=torch.bfloat16), pytest.raises(TypeError, match="computed in torch.bfloat16"):
        bank.add_delta(torch.zeros(T, N, D_OUT, device=DEV), x, None, 0)


@pytest.mark.parametrize("dtype", AUTOCAST, ids=str)
@pytest.mark.parametrize("batch", ["one", "mixed"])
@pytest.mark.parametrize("route", ROUTES)
def test_autocast_matches_fp32(route, batch, dtype):
    layer = make_layer(route, seed=ROUTES.index(route))
    set_languages(layer, batch)
    x, grad = inputs(seed=7)
    ref = run(layer, x, grad)
    ours = run(layer, x, grad, autocast=dtype)
    assert ours[0].dtype == dtype  # the output is in the compute dtype, like F.linear's under autocast
    for n, p in layer.named_parameters():
        if p.requires_grad:
            assert ours[2][n].dtype == p.dtype == torch.float32, n  # fp32 factors keep fp32 gradients
    mix_scale = mix_grad_scale(layer, x, grad) if route == "learn" else None
    assert_close_to(ours, ref, dtype, f"{route}/{batch}/{dtype}", mix_scale)
    with torch.no_grad(), torch.autocast(DEV.type, dtype=dtype):  # inference (decoding) path
        y = layer(x)
    assert y.dtype == dtype and rel_err(y, ref[0]) <= TOL_UNITS * UNIT[dtype]


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("batch", ["one", "mixed"])
@pytest.mark.parametrize("route", ROUTES)
def test_half_precision_weights_match_fp64(route, batch, dtype):
    """fairseq --fp16/--bf16 (and the memory-efficient variants): the whole model, LSLo factors
    included, is half precision and so are the gradients it hands to the optimizer."""
    layer = make_layer(route, seed=10 + ROUTES.index(route))
    set_languages(layer, batch)
    x, grad = inputs(seed=8)
    half = copy.deepcopy(layer).to(dtype)
    exact = copy.deepcopy(half).double()  # the same (rounded) weights, computed exactly
    ours = run(half, x.to(dtype), grad.to(dtype))
    ref = run(exact, x.to(dtype).double(), grad.to(dtype).double())
    assert ours[0].dtype == dtype
    for n, g in ours[2].items():
        assert g.dtype == dtype, n
    mix_scale = mix_grad_scale(exact, x.double(), grad.double()) if route == "learn" else None
    assert_close_to(ours, ref, dtype, f"{route}/{batch}/{dtype} weights", mix_scale)


def positive_bank(dtype: torch.dtype) -> LowRankBank:
    """Two slots of rank 4, scale 1, positive factors: gradients of many samples pile up."""
    torch.manual_seed(3)
    bank = LowRankBank(D_IN, D_OUT, [4, 4], alpha=4.0)
    with torch.no_grad():
        for _, _, p, _ in bank.factor_tensors():
            p.uniform_(0.5, 1.0)
    return bank.to(DEV, dtype)


@pytest.mark.parametrize("batch", ["mixed", "one"])
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_factor_gradients_are_summed_in_fp32(dtype, batch):
    """Under --fp16/--bf16, slot 0's gradient over many samples (mixed batch: per-sample
    products summed into the slot; one language: one long GEMM) is about as exact as one
    rounding of the fp64 sum, far better than summing the per-sample gradients in ``dtype``."""
    samples = 1200  # the slot sums (about 22000) stay below the fp16 maximum (65504)
    bank = positive_bank(dtype)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(1, samples, D_IN, generator=g).add(0.5).to(DEV, dtype)
    grad = torch.rand(1, samples, D_OUT, generator=g).add(0.5).to(DEV, dtype)
    slots = torch.zeros(samples, dtype=torch.long, device=DEV)
    slots[-1] = 1  # the last sample is another language (mixed batch)
    if batch == "one":
        slots, uniform, used = None, 0, samples
    else:
        uniform, used = None, samples - 1
    bank.delta(x, slots, uniform).backward(grad)
    exact = copy.deepcopy(bank).double()
    exact.zero_grad(set_to_none=True)
    exact.delta(x.double(), slots, uniform).backward(grad.double())
    # what fp16/bf16 accumulation would give: each sample's exact gradient rounded, summed in dtype
    A, B = exact.A4[0], exact.B4[0]  # r x d_in, d_out x r; scale alpha / r = 1
    xs, gs = x[0, :used].double(), grad[0, :used].double()
    naive = torch.zeros_like(bank.A4[0])
    for xb, gb in zip(xs, gs):
        naive += torch.outer(B.t() @ gb, xb).to(dtype)
    ref = exact.A4.grad[0]
    torch.testing.assert_close((B.t() @ gs.t()) @ xs, ref)  # the formula the naive sum uses is right
    ours_err, naive_err = rel_err(bank.A4.grad[0], ref), rel_err(naive, ref)
    assert bank.A4.grad.dtype == dtype
    # about one rounding of the exact sum (measured on CPU: 0.34-0.45 units; naive: 14 for fp16,
    # 157 for bf16); 2 units leave room for GPU GEMMs that may reduce split-K partial sums in half
    assert ours_err <= 2 * UNIT[dtype], (ours_err, naive_err)
    assert ours_err * 8 < naive_err, (ours_err, naive_err)
    assert rel_err(bank.B4.grad[0], exact.B4.grad[0]) <= 2 * UNIT[dtype]


@pytest.mark.parametrize("route", ROUTES)
def test_every_bucket_gets_a_gradient_on_a_one_language_batch(route):
    """Never None (Adam skips None, FP16 optimizers and DDP zero-fill it): exact zeros for the
    slots and buckets the batch did not use, the used slot's gradient where it is not pruned."""
    layer = make_layer(route, seed=20)
    set_languages(layer, "one")  # source language 1 (rank 8), target language 3 (rank 4)
    x, grad = inputs(seed=9)
    _, _, grads = run(layer, x, grad)
    used = {"src": 1, "tgt": 3, "shared": 0}
    for kind, bank in layer.banks().items():
        slot = used[kind]
        for f, r, p, mask in bank.factor_tensors():
            gr = grads[f"lslo_{kind}.{f}{r}"]
            assert gr is not None and gr.shape == p.shape, f"{kind}.{f}{r}"
            for i in range(p.size(0)):
                mine = bank.slot_place[slot] == (r, i)
                assert bool(gr[i].ne(0).any()) == mine, f"{kind}.{f}{r}[{i}]"
                assert torch.equal(gr[i][~mask[i]], torch.zeros_like(gr[i][~mask[i]]))  # pruned: zero


# --- a whole (tiny) LSLo model: every route in one network ------------------------------------
MODEL_FLAGS = ["--lslo-encoder-routing", "src,learn", "--lslo-decoder-routing", "tgt,shared",
               "--lslo-encoder-positions", "fc1,q", "--lslo-decoder-positions", "fc2,cross_v"]
BATCHES = {"one": (["en-fr", "en-fr", "en-fr"], 1), "mixed": (["de-en", "fr-de", "en-fr"], 2)}
#: relative errors against fp32, bf16 and fp16 alike (measured on CPU: loss <= 3.4e-4, gradient
#: vector <= 0.04; single gradients of a 16-dim model differ more where a ReLU or attention flips)
MODEL_LOSS_TOL = 2e-3
MODEL_GRAD_TOL = 0.10


def model_step(task, model, batch: str,
               autocast: Optional[torch.dtype] = None) -> Tuple[float, Dict[str, torch.Tensor]]:
    from conftest import make_batch

    directions, seed = BATCHES[batch]
    net_input, target = make_batch(task, directions, [4, 3, 5], [3, 5, 2], seed=seed)
    net_input = {k: v.to(DEV) for k, v in net_input.items()}
    model.zero_grad(set_to_none=True)
    with torch.autocast(DEV.type, dtype=autocast) if autocast else nullcontext():
        logits = model(**net_input)[0]
    pad = task.source_dictionary.pad()
    loss = nn.functional.cross_entropy(logits.float().transpose(1, 2), target.to(DEV), ignore_index=pad,
                                       reduction="sum")
    loss.backward()
    return float(loss), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def tiny_model(dict_dir):
    from conftest import LSLO_FLAGS, build, randomize_adapters

    task, model = build(dict_dir, "lslo_transformer", LSLO_FLAGS + MODEL_FLAGS)
    randomize_adapters(model, seed=3, scale=0.3)
    model.train()
    return task, model.to(DEV)


@pytest.mark.parametrize("mode", ["autocast", "weights"])
@pytest.mark.parametrize("batch", ["one", "mixed"])
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_whole_model_in_half_precision(tiny_model, products, dtype, batch, mode):
    """src, tgt, shared and learn layers in one model, under autocast (--amp) or with the
    model cast to half (--fp16/--bf16): the loss agrees with fp32, every LSLo parameter gets a
    finite gradient tensor of its own dtype, the gradients agree with fp32 as a whole."""
    if mode == "autocast" and dtype not in AUTOCAST:
        assert not autocast_computes_in(DEV, dtype)  # stated, not skipped: see the support test
        return
    task, fp32_model = tiny_model
    routes = {m.route for m in fp32_model.modules() if isinstance(m, LSLoLinear)}
    assert routes == set(ROUTES)
    ref_loss, ref = model_step(task, fp32_model, batch)
    model = fp32_model if mode == "autocast" else copy.deepcopy(fp32_model).to(dtype)
    loss, grads = model_step(task, model, batch, autocast=dtype if mode == "autocast" else None)
    assert abs(loss - ref_loss) <= MODEL_LOSS_TOL * abs(ref_loss), (loss, ref_loss)
    want = torch.float32 if mode == "autocast" else dtype
    for n, g in grads.items():
        assert g is not None and g.dtype == want and bool(torch.isfinite(g).all()), n
    flat = torch.cat([grads[n].double().flatten() for n in ref])
    flat_ref = torch.cat([ref[n].double().flatten() for n in ref])
    err = rel_err(flat, flat_ref)
    assert err <= MODEL_GRAD_TOL, err
