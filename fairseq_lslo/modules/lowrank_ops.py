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
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

#: one rank bucket of a bank: (A: n x r x d_in, A_mask, B: n x d_out x r, B_mask)
Bucket = Tuple[Tensor, Tensor, Tensor, Tensor]
#: which factors to build: None (every slot, padded and stacked) or (bucket index, row in it)
Selection = Optional[Tuple[int, int]]


def _mask_into(out: Tensor, mask: Tensor, value: Tensor) -> Tensor:
    """``out[...] = value where mask else 0`` (no float copy of the boolean mask)."""
    return torch.where(mask, value, value.new_zeros(()), out=out)


class MaskedFactors(torch.autograd.Function):
    """(``A``, ``Bt``) of the selected slots with the pruning masks applied.

    Every slot: ``A`` is K x r_max x d_in and ``Bt`` K x r_max x d_out, rows past a slot's own
    rank are zero.  One slot ``(bucket, row)``: 1 x r x d_in and 1 x r x d_out.  Gradients go
    back to the bucket parameters through the same masks, so pruned entries get none.
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
            if ctx.selection is None:
                rows = slice(start, start + n)
                dA = None if grad_A is None else grad_A[rows, :r]
                dBt = None if grad_Bt is None else grad_Bt[rows, :r]
                if dA is not None and ctx.needs_input_grad[1 + 4 * j]:
                    grads[4 * j] = _mask_into(torch.empty_like(A), A_mask, dA)
                if dBt is not None and ctx.needs_input_grad[3 + 4 * j]:
                    grads[4 * j + 2] = _mask_into(torch.empty_like(B), B_mask, dBt.transpose(1, 2))
            elif ctx.selection[0] == j:
                i = ctx.selection[1]
                if grad_A is not None and ctx.needs_input_grad[1 + 4 * j]:
                    grads[4 * j] = torch.zeros_like(A)
                    _mask_into(grads[4 * j][i], A_mask[i], grad_A[0])
                if grad_Bt is not None and ctx.needs_input_grad[3 + 4 * j]:
                    grads[4 * j + 2] = torch.zeros_like(B)
                    _mask_into(grads[4 * j + 2][i], B_mask[i], grad_Bt[0].t())
            start += n
        return (None,) + tuple(grads)


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
                   row_ranks: Sequence[int]) -> Tuple[List[Tensor], Optional[List[Tensor]]]:
    """``out += scale * (x A^T) Bt`` per sample, in place; returns what the backward needs.

    ``rows is None``: one pair for all positions (``A``: 1 x r x d_in, ``x``: ... x d_in).
    Otherwise ``x``/``out`` are time-major (T x N x d) and sample ``b`` uses row ``rows[b]``
    of the stacks, whose own rank is ``row_ranks[rows[b]]``.  Everything is computed in
    ``out``'s dtype (under autocast the frozen map's output may be half precision while the
    factors are fp32).  Returns (tensors to save, the per-sample ``h^T`` list or None).
    """
    dtype = out.dtype
    x, A, Bt, scale = x.to(dtype), A.to(dtype), Bt.to(dtype), scale.to(dtype)
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
    _routed_update(out, x, A, Bt, scale, rows, row_ranks)
    return out


def _save(ctx, saved: List[Tensor], hs: Optional[List[Tensor]], rows: Optional[Tensor], row_ranks: Sequence[int],
          num_slots: int, need_factors: Tuple[bool, bool], *more: Optional[Tensor]) -> None:
    """Keep on ``ctx`` what :func:`_routed_backward` reads (``more``: the caller's own tensors, last)."""
    ctx.save_for_backward(*saved, rows, *more)
    ctx.hs, ctx.row_ranks, ctx.num_slots, ctx.need_factors = hs, row_ranks, num_slots, need_factors


def _routed_backward(ctx, grad_out: Tensor, grad_x: Optional[Tensor], need_x: bool):
    """Gradients of the routed update: (grad_x, grad_A, grad_Bt).  ``scale`` (alpha / rank, a
    buffer) gets none.

    ``grad_x``, when given, is the input gradient of the frozen map (shaped like ``x``): the
    low-rank part is accumulated into it in place instead of into a new tensor.
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
        if grad_A is not None:
            grad_A = grad_A.new_zeros((ctx.num_slots,) + grad_A.shape[1:]).index_add_(0, rows, grad_A)
        if grad_Bt is not None:
            grad_Bt = grad_Bt.new_zeros((ctx.num_slots,) + grad_Bt.shape[1:]).index_add_(0, rows, grad_Bt)
    return grad_x, grad_A, grad_Bt


def _per_sample_backward(ctx, grad_out: Tensor, grad_x: Optional[Tensor], need_x: bool):
    """:func:`_routed_backward` one sample at a time, each at its own rank, summing into the slots."""
    x, A, Bt, scale, rows = ctx.saved_tensors[:5]
    need_A, need_B = ctx.need_factors
    grad_out = grad_out.to(x.dtype).reshape(x.shape[:-1] + (grad_out.size(-1),))
    As, Bts = _own_rank(A, ctx.row_ranks), _own_rank(Bt, ctx.row_ranks)
    grad_A = torch.zeros_like(A) if need_A else None
    grad_Bt = torch.zeros_like(Bt) if need_B else None
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
            gBts[k].addmm_(h_t, g, alpha=s)
        if need_A:
            gAs[k].addmm_(g_ht, xs[b], alpha=s)
        if need_x:
            gxs[b].addmm_(g_ht.t(), As[k], alpha=s)
    return grad_x, grad_A, grad_Bt


class LowRankAdd(torch.autograd.Function):
    """``out[t, b] += scale[b] * Bt[row b]^T A[row b] x[t, b]`` in place, with hand-written gradients.

    Writing into ``out`` (the frozen layer's output) avoids a full-size temporary and the
    extra pass of adding it; the backward reads the incoming gradient in place (strided
    batched matmuls) and scatters the per-sample factor gradients back to the K slots.
    """

    @staticmethod
    def forward(ctx, out: Tensor, x: Tensor, A: Tensor, Bt: Tensor, scale: Tensor, rows: Optional[Tensor],
                row_ranks: Sequence[int]):
        saved, hs = _routed_update(out, x, A, Bt, scale, rows, row_ranks)
        ctx.mark_dirty(out)
        _save(ctx, saved, hs, rows, row_ranks, A.size(0), ctx.needs_input_grad[2:4])
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
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor], A: Tensor, Bt: Tensor, scale: Tensor,
                rows: Optional[Tensor], row_ranks: Sequence[int]):
        x2 = x.reshape(-1, x.size(-1))
        out = torch.addmm(bias, x2, weight.t()) if bias is not None else torch.mm(x2, weight.t())
        saved, hs = _routed_update(out, x, A, Bt, scale, rows, row_ranks)
        _save(ctx, saved, hs, rows, row_ranks, A.size(0), ctx.needs_input_grad[3:5], weight)
        # the 2-D result itself, not a view of it: callers (fairseq's attention: q *= scaling)
        # modify it in place, which autograd forbids on a view made inside a custom Function
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors[0], ctx.saved_tensors[-1]
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        g2 = grad_out.to(x.dtype).reshape(-1, grad_out.size(-1))
        grad_x = torch.mm(g2, weight.to(x.dtype)).view(x.shape) if need_x else None
        grad_x, grad_A, grad_Bt = _routed_backward(ctx, grad_out, grad_x, need_x)
        grad_w = torch.mm(g2.t(), x.reshape(-1, x.size(-1))) if need_w else None
        grad_b = g2.sum(0) if need_b else None
        return grad_x, grad_w, grad_b, grad_A, grad_Bt, None, None, None
