"""The arithmetic of the LSLo layer, as autograd functions with hand-written gradients.

* :class:`MaskedFactors` turns a bank's parameters and pruning masks into the factors the
  routed products use: every slot's ``A`` (r x d_in) and ``B`` transposed (``Bt``: r x d_out),
  zero-padded to the largest rank and stacked, or one slot's pair alone.
* :class:`LowRankAdd` adds the routed update to an existing output in place;
  :class:`LinearLowRank` computes the frozen map and the update together.  A mixed batch
  runs either as batched matmuls over samples, each padded to the largest rank, or (large
  layers on CPU, :func:`_per_sample`) one sample at a time at its own rank.

``B`` is used transposed throughout: with the wide dimension (d_out) last, the batched
products that read or write full-size tensors (the output, its gradient) have them as their
wide operand, which is where BLAS is fastest for ranks this small.

Precision (one home: :func:`precision`).  The products run in one *compute* dtype: the dtype
``F.linear(x, W)`` gives at that point, i.e. the autocast dtype of ``x``'s device while
autocast is on there (``--amp``, ``torch.autocast``: fp16 or bf16, CPU or CUDA), otherwise
``x``'s own dtype (fp32; fp16/bf16 under fairseq's ``--fp16``/``--bf16``, which cast the whole
model, LSLo factors included, to half precision).  Every route and both ways of running a mixed
batch use it; the output is in it.  Factor gradients are *accumulated* in fp32 whenever the
compute dtype is half precision (over the samples of a slot, and over the tokens of a slot
inside one GEMM, whose accumulators BLAS keeps in fp32), then cast once to the factor
parameter's own dtype (fp32 under autocast, fp16/bf16 under ``--fp16``/``--bf16``, where
fairseq's FP16 optimizers copy them to their fp32 master weights).  When everything is already
fp32 (or fp64) no cast or copy happens at all.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

#: one rank bucket of a bank: (A: n x r x d_in, A_mask, B: n x d_out x r, B_mask)
Bucket = Tuple[Tensor, Tensor, Tensor, Tensor]
#: which factors to build: None (every slot, padded and stacked) or (bucket index, row in it)
Selection = Optional[Tuple[int, int]]


class Precision(NamedTuple):
    """The dtypes of the low-rank ops: products in ``compute``, factor-gradient sums in ``accumulate``."""

    compute: torch.dtype
    accumulate: torch.dtype


_HALF = (torch.float16, torch.bfloat16)


def precision(x: Tensor) -> Precision:
    """The one decision of which dtypes the low-rank ops use for input ``x`` (see the module doc).

    ``compute`` follows autocast exactly as ``F.linear`` does: the autocast dtype of ``x``'s
    device while autocast is enabled there and ``x`` is a float autocast may cast (not fp64),
    else ``x.dtype``.  ``accumulate`` is fp32 when ``compute`` is fp16/bf16, else ``compute``.
    """
    dtype = x.dtype
    device = x.device.type
    if x.is_floating_point() and dtype != torch.float64 and torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
    return Precision(dtype, torch.float32 if dtype in _HALF else dtype)


def _mask_into(out: Tensor, mask: Tensor, value: Tensor) -> Tensor:
    """``out[...] = value where mask else 0`` (no float copy of the boolean mask)."""
    return torch.where(mask, value, value.new_zeros(()), out=out)


class MaskedFactors(torch.autograd.Function):
    """(``A``, ``Bt``) of the selected slots with the pruning masks applied.

    Every slot: ``A`` is K x r_max x d_in and ``Bt`` K x r_max x d_out, rows past a slot's own
    rank are zero.  One slot ``(bucket, row)``: 1 x r x d_in and 1 x r x d_out.  Gradients go
    back to the bucket parameters through the same masks, so pruned entries get exact zeros;
    every bucket parameter that requires a gradient gets a tensor on every call, zeros for the
    slots the batch did not use (one-language batches included).  Factors keep the parameters'
    dtype here; :func:`precision` governs the products that use them.
    """

    @staticmethod
    def forward(ctx, selection: Selection, *flat: Tensor):
        buckets = [flat[i:i + 4] for i in range(0, len(flat), 4)]
        ctx.selection = selection
        ctx.save_for_backward(*flat)
        if selection is not None:
            A, A_mask, B, B_mask = buckets[selection[0]]
            i = selection[1]
            return (torch.where(A_mask[i], A[i], 0.0).unsqueeze(0),
                    torch.where(B_mask[i].t(), B[i].t(), 0.0).unsqueeze(0))
        first = buckets[0][0]
        K = sum(b[0].size(0) for b in buckets)
        r_max = max(b[0].size(1) for b in buckets)
        A_all = first.new_empty(K, r_max, first.size(2))
        Bt_all = first.new_empty(K, r_max, buckets[0][2].size(1))
        start = 0
        for A, A_mask, B, B_mask in buckets:
            n, r = A.size(0), A.size(1)
            _mask_into(A_all[start:start + n, :r], A_mask, A)
            _mask_into(Bt_all[start:start + n, :r], B_mask.transpose(1, 2), B.transpose(1, 2))
            if r < r_max:
                A_all[start:start + n, r:].zero_()
                Bt_all[start:start + n, r:].zero_()
            start += n
        return A_all, Bt_all

    @staticmethod
    def backward(ctx, grad_A: Optional[Tensor], grad_Bt: Optional[Tensor]):
        flat = ctx.saved_tensors
        buckets = [flat[i:i + 4] for i in range(0, len(flat), 4)]
        grads: List[Optional[Tensor]] = [None] * len(flat)
        start = 0
        for j, (A, A_mask, B, B_mask) in enumerate(buckets):
            n, r = A.size(0), A.size(1)
            need_A, need_B = ctx.needs_input_grad[1 + 4 * j], ctx.needs_input_grad[3 + 4 * j]
            if ctx.selection is None:
                rows = slice(start, start + n)
                if need_A:
                    grads[4 * j] = _masked_grad(A, A_mask, None if grad_A is None else grad_A[rows, :r])
                if need_B:
                    dB = None if grad_Bt is None else grad_Bt[rows, :r].transpose(1, 2)
                    grads[4 * j + 2] = _masked_grad(B, B_mask, dB)
            else:  # one slot: its row gets the gradient, every other slot and bucket exact zeros
                i = ctx.selection[1] if ctx.selection[0] == j else None
                if need_A:
                    grads[4 * j] = _masked_row_grad(A, A_mask, i, None if grad_A is None else grad_A[0])
                if need_B:
                    grads[4 * j + 2] = _masked_row_grad(B, B_mask, i, None if grad_Bt is None else grad_Bt[0].t())
            start += n
        return (None,) + tuple(grads)


def _masked_grad(param: Tensor, mask: Tensor, grad: Optional[Tensor]) -> Tensor:
    """The gradient of a whole bucket parameter: ``grad`` where kept, else (and without one) zeros."""
    if grad is None:
        return torch.zeros_like(param)
    return _mask_into(torch.empty_like(param), mask, grad)


def _masked_row_grad(param: Tensor, mask: Tensor, row: Optional[int], grad: Optional[Tensor]) -> Tensor:
    """Zeros like a bucket parameter, with the masked ``grad`` in ``row`` (None: all zeros).

    Every bucket gets a gradient tensor on every batch, never None: optimizers and DDP
    backends treat None differently from zero (Adam skips it, fairseq's FP16 optimizers and
    DDP zero-fill it and step), so a None would make training depend on the backend.
    """
    out = torch.zeros_like(param)
    if row is not None and grad is not None:
        _mask_into(out[row], mask[row], grad)
    return out


def masked_factors(buckets: Sequence[Bucket], selection: Selection) -> Tuple[Tensor, Tensor]:
    """(A, Bt) of :class:`MaskedFactors`; without autograd bookkeeping when none is needed."""
    flat = [t for bucket in buckets for t in bucket]
    if torch.is_grad_enabled() and any(t.requires_grad for t in flat):
        return MaskedFactors.apply(selection, *flat)
    with torch.no_grad():
        return MaskedFactors.forward(_NoContext(), selection, *flat)


class _NoContext:
    """Stands in for autograd's ctx when a Function's forward is called directly."""

    def save_for_backward(self, *tensors: Tensor) -> None:
        pass

    def mark_dirty(self, *tensors: Tensor) -> None:
        pass


# --- the routed low-rank update ---------------------------------------------------------------
#: on CPU, a mixed batch whose per-sample output slab (tokens x d_out) has at least this many
#: elements runs the low-rank products sample by sample (see :func:`_per_sample`)
PER_SAMPLE_MIN_SLAB = 1 << 16


def _per_sample(x: Tensor, out_features: int, rows: Optional[Tensor]) -> bool:
    """Whether a mixed batch runs sample by sample instead of as padded batched products.

    On CPU, one sample at a time lets every sample use its own rank (the padded stack runs
    every sample at the largest one), keeps the sample's slab of the output gradient in cache
    between the two products that read it, and sums factor gradients straight into their
    slot (no per-sample gradient tensor, no scatter).  Below :data:`PER_SAMPLE_MIN_SLAB` the
    Python loop costs more than that saves; on GPUs one batched kernel per product is better.
    """
    return rows is not None and x.device.type == "cpu" and x.size(0) * out_features >= PER_SAMPLE_MIN_SLAB


def _own_rank(stack: Tensor, row_ranks: Sequence[int]) -> List[Tensor]:
    """Each row of a padded factor stack cut to its slot's own rank (views)."""
    return [f[:r] for f, r in zip(stack.unbind(0), row_ranks)]


def _routed_update(out: Tensor, x: Tensor, A: Tensor, Bt: Tensor, scale: Tensor, rows: Optional[Tensor],
                   row_ranks: Sequence[int], prec: Precision) -> Tuple[List[Tensor], Optional[List[Tensor]]]:
    """``out += scale * (x A^T) Bt`` per sample, in place; returns what the backward needs.

    ``rows is None``: one pair for all positions (``A``: 1 x r x d_in, ``x``: ... x d_in).
    Otherwise ``x``/``out`` are time-major (T x N x d) and sample ``b`` uses row ``rows[b]``
    of the stacks, whose own rank is ``row_ranks[rows[b]]``.  Everything is computed in
    ``prec.compute`` (the caller's :func:`precision` of ``x``), which ``out`` must have (under
    autocast the factors stay fp32 and are cast here).  Returns (tensors to save, the
    per-sample ``h^T`` list or None).
    """
    dtype = prec.compute
    if out.dtype != dtype:
        raise TypeError(f"the LSLo update is computed in {dtype} (lowrank_ops.precision of the input) but the "
                        f"output it is added to is {out.dtype}")
    x, A, Bt, scale = x.to(dtype), A.to(dtype), Bt.to(dtype), scale.to(dtype)  # no-ops when already there
    out = out.view(x.shape[:-1] + (out.size(-1),))
    if _per_sample(x, out.size(-1), rows):
        As, Bts = _own_rank(A, row_ranks), _own_rank(Bt, row_ranks)
        outs, xs, hs = out.unbind(1), x.unbind(1), []
        for b, (k, s) in enumerate(zip(rows.tolist(), scale.tolist())):
            # h transposed (r x T): BLAS runs these skinny products about twice as fast this way round
            h_t = torch.mm(As[k], xs[b].t())  # before scaling
            outs[b].addmm_(h_t.t(), Bts[k], alpha=s)
            hs.append(h_t)
        return [x, A, Bt, scale], hs
    if rows is None:
        A_s, Bt_s = A, Bt
        x_b, out_b = x.reshape(1, -1, x.size(-1)), out.view(1, -1, out.size(-1))
    else:
        A_s, Bt_s = A.index_select(0, rows), Bt.index_select(0, rows)
        x_b, out_b = x.transpose(0, 1), out.transpose(0, 1)
    h = torch.bmm(x_b, A_s.transpose(1, 2))  # N x T x r, before scaling
    out_b.baddbmm_(h * scale[:, None, None], Bt_s)
    return [x, A_s, Bt_s, scale, h], None


def low_rank_add_(out: Tensor, x: Tensor, A: Tensor, Bt: Tensor, scale: Tensor, rows: Optional[Tensor],
                  row_ranks: Sequence[int]) -> Tensor:
    """:class:`LowRankAdd` without autograd bookkeeping (inference)."""
    _routed_update(out, x, A, Bt, scale, rows, row_ranks, precision(x))
    return out


def _save(ctx, saved: List[Tensor], hs: Optional[List[Tensor]], prec: Precision, factor_dtype: torch.dtype,
          rows: Optional[Tensor], row_ranks: Sequence[int], num_slots: int, need_factors: Tuple[bool, bool],
          *more: Optional[Tensor]) -> None:
    """Keep on ``ctx`` what :func:`_routed_backward` reads (``more``: the caller's own tensors, last)."""
    ctx.save_for_backward(*saved, rows, *more)
    ctx.hs, ctx.row_ranks, ctx.num_slots, ctx.need_factors = hs, row_ranks, num_slots, need_factors
    ctx.precision, ctx.factor_dtype = prec, factor_dtype


def _to(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return None if t is None else t.to(dtype)


def _sum_into_slots(per_sample: Tensor, rows: Tensor, num_slots: int, dtype: torch.dtype) -> Tensor:
    """Per-sample factor gradients (N x ...) summed into their slots (K x ...), in ``dtype``."""
    return per_sample.new_zeros((num_slots,) + per_sample.shape[1:], dtype=dtype).index_add_(
        0, rows, per_sample.to(dtype))


def _routed_backward(ctx, grad_out: Tensor, grad_x: Optional[Tensor], need_x: bool):
    """Gradients of the routed update: (grad_x, grad_A, grad_Bt).  ``scale`` (alpha / rank, a
    buffer) gets none.

    ``grad_x``, when given, is the input gradient of the frozen map (shaped like ``x``): the
    low-rank part is accumulated into it in place instead of into a new tensor.  Products run
    in the compute dtype, factor gradients are summed over samples in the accumulation dtype
    and returned in the factors' own dtype (see :func:`precision`).
    """
    if ctx.hs is not None:
        return _per_sample_backward(ctx, grad_out, grad_x, need_x)
    x, A_s, Bt_s, scale, h, rows = ctx.saved_tensors[:6]
    need_A, need_B = ctx.need_factors
    grad_out = grad_out.to(h.dtype).reshape(x.shape[:-1] + (grad_out.size(-1),))
    if rows is None:
        g_b, x_b = grad_out.reshape(1, -1, grad_out.size(-1)), x.reshape(1, -1, x.size(-1))
    else:
        g_b, x_b = grad_out.transpose(0, 1), x.transpose(0, 1)
    grad_A = grad_Bt = None
    g_hT = torch.bmm(Bt_s, g_b.transpose(1, 2))  # N x r x T: gradient of the scaled h, transposed
    if need_B:
        grad_Bt = torch.bmm((h * scale[:, None, None]).transpose(1, 2), g_b)  # N x r x d_out
    g_hT.mul_(scale[:, None, None])  # gradient of h before scaling
    if need_A:
        grad_A = torch.bmm(g_hT, x_b)  # N x r x d_in
    if need_x:
        if grad_x is None:
            grad_x = torch.bmm(g_hT.transpose(1, 2), A_s)
            grad_x = grad_x.view(x.shape) if rows is None else grad_x.transpose(0, 1)
        else:
            target = grad_x.view(1, -1, x.size(-1)) if rows is None else grad_x.transpose(0, 1)
            target.baddbmm_(g_hT.transpose(1, 2), A_s)
    if rows is not None:  # per-sample factor gradients summed into their slots
        acc = ctx.precision.accumulate
        if grad_A is not None:
            grad_A = _sum_into_slots(grad_A, rows, ctx.num_slots, acc)
        if grad_Bt is not None:
            grad_Bt = _sum_into_slots(grad_Bt, rows, ctx.num_slots, acc)
    return grad_x, _to(grad_A, ctx.factor_dtype), _to(grad_Bt, ctx.factor_dtype)


def _addmm_into(target: Tensor, a: Tensor, b: Tensor, alpha: float) -> None:
    """``target += alpha * a @ b`` where ``target`` has the operands' dtype."""
    target.addmm_(a, b, alpha=alpha)


def _add_mm_widening(target: Tensor, a: Tensor, b: Tensor, alpha: float) -> None:
    """``target += alpha * a @ b`` for a wider (fp32) ``target`` than the (half) operands."""
    target.add_(torch.mm(a, b), alpha=alpha)


def _per_sample_backward(ctx, grad_out: Tensor, grad_x: Optional[Tensor], need_x: bool):
    """:func:`_routed_backward` one sample at a time, each at its own rank, summing into the slots
    (in the accumulation dtype of :func:`precision`)."""
    x, A, Bt, scale, rows = ctx.saved_tensors[:5]
    need_A, need_B = ctx.need_factors
    acc = ctx.precision.accumulate
    add_into = _addmm_into if acc == x.dtype else _add_mm_widening
    grad_out = grad_out.to(x.dtype).reshape(x.shape[:-1] + (grad_out.size(-1),))
    As, Bts = _own_rank(A, ctx.row_ranks), _own_rank(Bt, ctx.row_ranks)
    grad_A = torch.zeros_like(A, dtype=acc) if need_A else None
    grad_Bt = torch.zeros_like(Bt, dtype=acc) if need_B else None
    if need_x and grad_x is None:
        grad_x = torch.zeros_like(x)
    gAs = _own_rank(grad_A, ctx.row_ranks) if need_A else None
    gBts = _own_rank(grad_Bt, ctx.row_ranks) if need_B else None
    gxs = grad_x.unbind(1) if need_x else None
    gs, xs = grad_out.unbind(1), x.unbind(1)
    for b, (k, s) in enumerate(zip(rows.tolist(), scale.tolist())):
        g, h_t = gs[b], ctx.hs[b]
        g_ht = torch.mm(Bts[k], g.t())  # r x T: gradient of the scaled h, transposed
        if need_B:
            add_into(gBts[k], h_t, g, s)
        if need_A:
            add_into(gAs[k], g_ht, xs[b], s)
        if need_x:
            gxs[b].addmm_(g_ht.t(), As[k], alpha=s)
    return grad_x, _to(grad_A, ctx.factor_dtype), _to(grad_Bt, ctx.factor_dtype)


class LowRankAdd(torch.autograd.Function):
    """``out[t, b] += scale[b] * Bt[row b]^T A[row b] x[t, b]`` in place, with hand-written gradients.

    Writing into ``out`` (the frozen layer's output) avoids a full-size temporary and the
    extra pass of adding it; the backward reads the incoming gradient in place (strided
    batched matmuls) and scatters the per-sample factor gradients back to the K slots.

    Dtypes (:func:`precision` of ``x``): the products run in the compute dtype, which ``out``
    must have (``x``, ``A``, ``Bt`` are cast to it when they differ, e.g. fp32 factors under
    autocast); the gradient of ``x`` is in the compute dtype (autograd casts it to ``x``'s);
    the factor gradients are summed over samples in fp32 when computing in half precision
    and returned in ``A``'s/``Bt``'s own dtype.
    """

    @staticmethod
    def forward(ctx, out: Tensor, x: Tensor, A: Tensor, Bt: Tensor, scale: Tensor, rows: Optional[Tensor],
                row_ranks: Sequence[int]):
        prec = precision(x)
        saved, hs = _routed_update(out, x, A, Bt, scale, rows, row_ranks, prec)
        ctx.mark_dirty(out)
        _save(ctx, saved, hs, prec, A.dtype, rows, row_ranks, A.size(0), ctx.needs_input_grad[2:4])
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grads = _routed_backward(ctx, grad_out, None, ctx.needs_input_grad[1])
        return (grad_out,) + grads + (None, None, None)


class LinearLowRank(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` plus the routed low-rank update, fused.

    The same arithmetic as :class:`LowRankAdd` on top of the frozen map, but owning the frozen
    map's backward too: the low-rank input gradient is accumulated in place into
    ``grad_out @ weight`` instead of being a second full-size tensor that autograd adds.

    Dtypes: as :class:`LowRankAdd`; the frozen map runs in the same compute dtype (as
    ``F.linear`` does under autocast: ``x``, ``weight`` and ``bias`` cast to it), and so does
    the output.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor], A: Tensor, Bt: Tensor, scale: Tensor,
                rows: Optional[Tensor], row_ranks: Sequence[int]):
        prec = precision(x)
        dtype = prec.compute
        x, weight, bias = x.to(dtype), weight.to(dtype), _to(bias, dtype)  # no-ops when already there
        x2 = x.reshape(-1, x.size(-1))
        out = torch.addmm(bias, x2, weight.t()) if bias is not None else torch.mm(x2, weight.t())
        saved, hs = _routed_update(out, x, A, Bt, scale, rows, row_ranks, prec)
        _save(ctx, saved, hs, prec, A.dtype, rows, row_ranks, A.size(0), ctx.needs_input_grad[3:5], weight)
        # the 2-D result itself, not a view of it: callers (fairseq's attention: q *= scaling)
        # modify it in place, which autograd forbids on a view made inside a custom Function
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors[0], ctx.saved_tensors[-1]
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        g2 = grad_out.to(x.dtype).reshape(-1, grad_out.size(-1))
        grad_x = torch.mm(g2, weight).view(x.shape) if need_x else None
        grad_x, grad_A, grad_Bt = _routed_backward(ctx, grad_out, grad_x, need_x)
        grad_w = torch.mm(g2.t(), x.reshape(-1, x.size(-1))) if need_w else None
        grad_b = g2.sum(0) if need_b else None
        return grad_x, grad_w, grad_b, grad_A, grad_Bt, None, None, None
