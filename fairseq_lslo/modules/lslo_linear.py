"""The LSLo layer: a frozen linear map plus one low-rank pair per language, routed per sample."""
from __future__ import annotations

import math
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .lowrank_ops import LinearLowRank, LowRankAdd, low_rank_add_, masked_factors, precision
from .keys import BANK_KINDS, bank_attr, bucket_owners, bucket_rows, entry_name, is_lslo_key
from .routing import LanguageRouter

#: how A is initialised: ``linear`` U(+-1/sqrt(d_in)) like a fresh nn.Linear(d_in -> r);
#: ``rank`` U(+-1/sqrt(r)) (the reference implementation's: kaiming_uniform(a=sqrt 5) of A
#: stored d_in x r, whose fan-in is r).  B = 0 either way.
INITS = ("linear", "rank")
#: the factor applied to the update: ``alpha`` alpha / r (LoRA's), ``none`` 1 (the reference's)
SCALINGS = ("alpha", "none")
#: (offset, width) of the part of a host linear map's input or output an adapter reads or writes
Span = Tuple[int, int]


class LowRankBank(nn.Module):
    """One pair ``(A_k, B_k)`` of rank ``r_k`` per slot (a language, or the one shared slot).

    ``delta(x) = c_k * B_k A_k x`` for the slot of each sample, ``c_k = alpha / r_k`` (scaling
    ``alpha``) or 1 (``none``).  Slots of equal rank share one parameter tensor (``A{r}``:
    n x r x a_in, ``B{r}``: n x a_out x r), so a bank has two parameters per distinct rank, not
    per language.  ``A{r}_mask`` and ``B{r}_mask`` are boolean buffers (True = kept): pruning
    state travels with the weights.

    The host linear map is ``in_features -> out_features``.  By default the adapter covers it
    whole (a_in = in_features, a_out = out_features).  ``in_span`` / ``out_span`` (offset,
    width) restrict it to a slice: the adapter then reads only input features
    ``[offset, offset + width)`` or adds only to those outputs.  The factors keep their own
    (slice) shape; :meth:`_masked` places them into the host's full width with zeros around,
    so every routed path, merging and export treat the bank like a full-width one.
    """

    def __init__(self, in_features: int, out_features: int, ranks: Sequence[int], alpha: float,
                 in_span: Optional[Span] = None, out_span: Optional[Span] = None,
                 init: str = "linear", scaling: str = "alpha", scale_ranks: Optional[Sequence[int]] = None):
        super().__init__()
        if not ranks or min(ranks) < 0:
            raise ValueError(f"every rank must be >= 0, got {list(ranks)}")
        scale_ranks = list(ranks) if scale_ranks is None else list(scale_ranks)
        if len(scale_ranks) != len(ranks) or any(s <= 0 and r > 0 for r, s in zip(ranks, scale_ranks)):
            raise ValueError(f"scale_ranks {scale_ranks} do not fit ranks {list(ranks)}")
        if init not in INITS or scaling not in SCALINGS:
            raise ValueError(f"init must be one of {INITS} and scaling one of {SCALINGS}; got {init!r}, {scaling!r}")
        self.in_features, self.out_features = in_features, out_features
        self.in_span: Span = _check_span(in_span, in_features, "input")
        self.out_span: Span = _check_span(out_span, out_features, "output")
        self.ranks: List[int] = [int(r) for r in ranks]
        self.alpha = float(alpha)
        self.init, self.scaling = init, scaling
        # a slot of rank 0 (an adapter that rank pruning removed, see adapter_state.compact_ranks) has no
        # factors: its samples get no update; in the padded stack it reads one extra row of zeros
        self.rank_buckets: List[int] = sorted(set(r for r in self.ranks if r > 0))
        # slot -> (rank, index inside its bucket); slot -> row in the padded stack
        self.slot_place: List[Tuple[int, int]] = bucket_rows(self.ranks)
        bucket_start, start = {}, 0
        for r in self.rank_buckets:
            bucket_start[r] = start
            start += self.ranks.count(r)
        bucket_start[0] = start  # the zero row, shared by every slot of rank 0
        rows = [bucket_start[r] + (i if r else 0) for r, i in self.slot_place]
        a_in, a_out = self.adapter_in, self.adapter_out
        for r in self.rank_buckets:
            n = self.ranks.count(r)
            self.register_parameter(entry_name("A", r), nn.Parameter(torch.empty(n, r, a_in)))
            self.register_parameter(entry_name("B", r), nn.Parameter(torch.zeros(n, a_out, r)))
            self.register_buffer(entry_name("A", r, mask=True), torch.ones(n, r, a_in, dtype=torch.bool))
            self.register_buffer(entry_name("B", r, mask=True), torch.ones(n, a_out, r, dtype=torch.bool))
        self.register_buffer("slot_row", torch.tensor(rows, dtype=torch.long), persistent=False)
        #: the rank of each row of the padded stack (slots in stack order)
        self.row_ranks: Tuple[int, ...] = tuple(r for r in self.rank_buckets for _ in range(self.ranks.count(r)))
        if 0 in self.ranks:
            self.row_ranks += (0,)
        #: c_k = alpha / r_k with the rank the slot was trained at (a compacted slot keeps its scale)
        scales = [self.alpha / s if scaling == "alpha" else 1.0 for s in scale_ranks]
        self.register_buffer("slot_scale", torch.tensor(scales), persistent=False)
        self.reset_parameters()

    @property
    def adapter_in(self) -> int:
        """Input width of the factors (``A``: r x adapter_in)."""
        return self.in_span[1]

    @property
    def adapter_out(self) -> int:
        """Output width of the factors (``B``: adapter_out x r)."""
        return self.out_span[1]

    @property
    def is_sliced(self) -> bool:
        return (self.adapter_in, self.adapter_out) != (self.in_features, self.out_features)

    def reset_parameters(self) -> None:
        """A uniform in +-1/sqrt(a_in) (init ``linear``) or +-1/sqrt(r) (init ``rank``); B = 0."""
        with torch.no_grad():
            for r in self.rank_buckets:
                bound = 1.0 / math.sqrt(self.adapter_in if self.init == "linear" else r)
                getattr(self, entry_name("A", r)).uniform_(-bound, bound)
                getattr(self, entry_name("B", r)).zero_()

    @property
    def num_slots(self) -> int:
        return len(self.ranks)

    def bucket_slots(self) -> Dict[int, List[int]]:
        """Rank -> the slots whose factors are the rows of ``A{rank}``/``B{rank}``, in row order."""
        return bucket_owners(range(self.num_slots), self.ranks)

    def factor_tensors(self) -> Iterator[Tuple[str, int, nn.Parameter, Tensor]]:
        """(factor 'A'/'B', rank, parameter, mask) for every bucket."""
        for r in self.rank_buckets:
            for f in ("A", "B"):
                yield f, r, getattr(self, entry_name(f, r)), getattr(self, entry_name(f, r, mask=True))

    def factors(self, slot: int) -> Tuple[Tensor, Tensor]:
        """Masked ``(A_k, B_k)`` of one slot in their own shape: (r_k x a_in), (a_out x r_k)."""
        r, i = self.slot_place[slot]
        if r == 0:
            return self.slot_scale.new_zeros(0, self.adapter_in), self.slot_scale.new_zeros(self.adapter_out, 0)
        A = getattr(self, entry_name("A", r))[i] * getattr(self, entry_name("A", r, mask=True))[i]
        B = getattr(self, entry_name("B", r))[i] * getattr(self, entry_name("B", r, mask=True))[i]
        return A, B

    def buckets(self) -> List[Tuple[Tensor, Tensor, Tensor, Tensor]]:
        """``(A, A_mask, B, B_mask)`` of every rank bucket, smallest rank first."""
        return [tuple(getattr(self, entry_name(f, r, m)) for f in ("A", "B") for m in (False, True))
                for r in self.rank_buckets]

    def _masked(self, slot: Optional[int]) -> Tuple[Tensor, Tensor]:
        """Masked ``(A, Bt)`` of one slot (1 x r x ...) or of all slots, padded (K x r_max x ...),
        in the host's full width (d_in, d_out): a sliced adapter is zero outside its span."""
        if slot is None:
            A, Bt = masked_factors(self.buckets(), None)
            if 0 in self.ranks:  # the zero row read by slots of rank 0
                A = torch.cat([A, A.new_zeros((1,) + A.shape[1:])])
                Bt = torch.cat([Bt, Bt.new_zeros((1,) + Bt.shape[1:])])
        else:
            r, i = self.slot_place[slot]
            A, Bt = masked_factors(self.buckets(), (self.rank_buckets.index(r), i))
        return _place(A, self.in_span, self.in_features), _place(Bt, self.out_span, self.out_features)

    def delta(self, x: Tensor, slots: Optional[Tensor], uniform: Optional[int]) -> Tensor:
        """Adapter output for time-major ``x`` (T x batch x d_in); ``slots`` holds one id per sample.

        ``uniform`` is the slot shared by the whole batch when there is one (then ``x`` may have
        any shape ``... x d_in``).  To add the adapter to an existing output, :meth:`add_delta`
        is cheaper: it writes into that output instead of allocating this one.  The result is in
        the compute dtype of ``lowrank_ops.precision`` (e.g. bf16 under bf16 autocast).
        """
        out = x.new_zeros(x.shape[:-1] + (self.out_features,), dtype=precision(x).compute)
        return self.add_delta(out, x, slots, uniform)

    def add_delta(self, out: Tensor, x: Tensor, slots: Optional[Tensor], uniform: Optional[int]) -> Tensor:
        """``out + delta(x)``, computed in place in ``out`` (autograd-safe: gradients are hand-written).

        A uniform batch is two plain matrix products.  A mixed batch never loops over
        languages: it gathers each sample's (zero-padded) pair and runs the low-rank products
        as batched matmuls over samples, gradients scattered back to the slots with one
        ``index_add_`` per factor; on CPU, large enough samples instead run one at a time at
        their own rank (see ``lowrank_ops._per_sample``).  Either way the result is
        accumulated straight into the time-major ``out``: no full-size temporary.
        """
        shape = out.shape
        if self.carries_nothing(uniform):
            return out
        out = _storage_owner(out)
        apply = LowRankAdd.apply if torch.is_grad_enabled() else low_rank_add_
        if uniform is not None:
            A, Bt = self._cached(("slot", uniform), lambda: self._masked(uniform))
            scale = self.slot_scale[uniform : uniform + 1]
            return apply(out, x, A, Bt, scale, None, self.row_ranks).view(shape)
        self._check_time_major(x, slots)
        A_all, Bt_all = self._cached(("stack",), lambda: self._masked(None))
        rows = self.slot_row.index_select(0, slots)
        scale = self.slot_scale.index_select(0, slots)
        return apply(out, x, A_all, Bt_all, scale, rows, self.row_ranks).view(shape)

    def linear_with_delta(
        self, x: Tensor, weight: Tensor, bias: Optional[Tensor], slots: Optional[Tensor], uniform: Optional[int]
    ) -> Tensor:
        """``F.linear(x, weight, bias) + delta(x)``, fused (see :class:`LinearLowRank`)."""
        if not torch.is_grad_enabled() or self.carries_nothing(uniform):
            return self.add_delta(F.linear(x, weight, bias), x, slots, uniform)
        if uniform is not None:
            A, Bt = self._masked(uniform)
            scale = self.slot_scale[uniform : uniform + 1]
            rows = None
        else:
            self._check_time_major(x, slots)
            A, Bt = self._masked(None)
            rows = self.slot_row.index_select(0, slots)
            scale = self.slot_scale.index_select(0, slots)
        out = LinearLowRank.apply(x, weight, bias, A, Bt, scale, rows, self.row_ranks)
        return out.view(x.shape[:-1] + (weight.size(0),))

    def carries_nothing(self, uniform: Optional[int]) -> bool:
        """True when the batch's update is zero by construction: no factors, or one slot of rank 0."""
        return not self.rank_buckets or (uniform is not None and self.ranks[uniform] == 0)

    @staticmethod
    def _check_time_major(x: Tensor, slots: Optional[Tensor]) -> None:
        if slots is None or x.dim() != 3 or x.size(1) != slots.numel():
            raise RuntimeError(
                f"LSLo expects time-major input (T x batch x dim) with one language per sample; "
                f"got input {tuple(x.shape)} for {None if slots is None else slots.numel()} samples"
            )

    def train(self, mode: bool = True):
        """Also forget the memoised factors: fairseq's optimizers update weights through
        ``p.data``, which the version-counter stamp of :meth:`_cached` cannot see, and fairseq
        switches modes around every training step, validation and generation."""
        self.__dict__.pop("_masked_cache", None)
        return super().train(mode)

    def _cached(self, key: tuple, compute):
        """``compute()`` (masked factors), memoised while gradients are off (decoding steps).

        An entry is reused only while no factor or mask changed (same storage, same version
        counter) and the module's mode was not set since: in-place updates through autograd-
        visible ops, loading, dtype/device moves and every train()/eval() invalidate it.
        """
        if torch.is_grad_enabled():
            return compute()
        stamp = tuple((t.data_ptr(), t._version) for _, _, p, m in self.factor_tensors() for t in (p, m))
        cache = self.__dict__.setdefault("_masked_cache", {})
        hit = cache.get(key)
        if hit is None or hit[0] != stamp:
            hit = cache[key] = (stamp, compute())
        return hit[1]

    def delta_weight(self, slot: int) -> Tensor:
        """Dense ``c_k B_k A_k`` (d_out x d_in, the host's shape) of one slot, for merging."""
        if self.ranks[slot] == 0:
            return self.slot_scale.new_zeros(self.out_features, self.in_features)
        A, B = self.factors(slot)
        dense = (B @ A) * self.slot_scale[slot]
        (i0, wi), (o0, wo) = self.in_span, self.out_span
        return F.pad(dense, (i0, self.in_features - i0 - wi, o0, self.out_features - o0 - wo))

    def num_parameters(self, slot: int) -> int:
        """Parameters of one slot's own factors (a sliced adapter: the slice's, not the host's)."""
        return self.ranks[slot] * (self.adapter_in + self.adapter_out)

    def num_kept(self, slot: int) -> int:
        """Parameters of the slot not removed by pruning."""
        r, i = self.slot_place[slot]
        if r == 0:
            return 0
        return (int(getattr(self, entry_name("A", r, mask=True))[i].sum())
                + int(getattr(self, entry_name("B", r, mask=True))[i].sum()))

    def extra_repr(self) -> str:
        text = f"{self.in_features} -> {self.out_features}, ranks={self.ranks}, init={self.init}, scaling={self.scaling}"
        if self.is_sliced:
            text += f", in_span={self.in_span}, out_span={self.out_span}"
        return text


class LSLoLinear(nn.Linear):
    """A frozen ``nn.Linear`` (same ``weight``/``bias`` keys) with language-routed LSLo adapters.

    ``route`` is ``src`` / ``tgt`` (one adapter per language), ``shared`` (one adapter for
    all samples) or ``learn`` (a src- and a tgt-routed bank mixed by ``softmax(lslo_mix)``).
    The language of every sample is read from the model's :class:`LanguageRouter`.
    """

    def __init__(
        self,
        base: nn.Linear,
        route: str,
        banks: Dict[str, LowRankBank],
        router: LanguageRouter,
    ):
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight = base.weight
        self.bias = base.bias
        self.route = route
        expected = {"learn": ["src", "tgt"]}.get(route, [route])
        if sorted(banks) != sorted(expected):
            raise ValueError(f"route {route!r} needs banks {expected}, got {sorted(banks)}")
        for kind, bank in banks.items():
            self.add_module(bank_attr(kind), bank)
        if route == "learn":
            self.lslo_mix = nn.Parameter(torch.zeros(2))
        self.router = router
        self.merged: Optional[Tuple[Optional[int], Optional[int]]] = None

    def banks(self) -> Dict[str, LowRankBank]:
        return {kind: getattr(self, bank_attr(kind)) for kind in BANK_KINDS if hasattr(self, bank_attr(kind))}

    def mix_weights(self) -> Optional[Tensor]:
        """softmax over (src, tgt) in search mode, else None."""
        return mix_weights(self.lslo_mix) if self.route == "learn" else None

    def forward(self, x: Tensor) -> Tensor:
        if self.merged is None and self.route != "learn":
            bank = getattr(self, bank_attr(self.route))
            return bank.linear_with_delta(x, self.weight, self.bias, *self.router.lookup(self.route))
        out = F.linear(x, self.weight, self.bias)
        if self.merged is not None:
            self._check_merged_routing()
            return out
        if self.route == "learn":  # the mix, like both deltas, in the low-rank ops' compute dtype (= out's)
            w = self.mix_weights().to(precision(x).compute)
            d_src = self.lslo_src.delta(x, *self.router.lookup("src"))
            d_tgt = self.lslo_tgt.delta(x, *self.router.lookup("tgt"))
            return out + w[0] * d_src + w[1] * d_tgt

    # --- merging (deployment) -------------------------------------------------------
    def delta_weight(self, src: Optional[int], tgt: Optional[int]) -> Tensor:
        """The dense weight update this module applies for one direction (src, tgt ids)."""
        return route_delta(self.route, self.banks(), getattr(self, "lslo_mix", None), src, tgt)

    @torch.no_grad()
    def merge(self, src: Optional[int] = None, tgt: Optional[int] = None) -> None:
        """Add the adapter of direction (src, tgt) into ``weight``; the module then serves only it."""
        if self.merged is not None:
            raise RuntimeError("already merged; unmerge() first")
        self.weight.data += self.delta_weight(src, tgt).to(self.weight.dtype)
        self.merged = (src, tgt)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the merged adapter again (exact up to floating-point rounding)."""
        if self.merged is None:
            return
        self.weight.data -= self.delta_weight(*self.merged).to(self.weight.dtype)
        self.merged = None

    def _check_merged_routing(self) -> None:
        src, tgt = self.merged
        for kind, want in (("src", src), ("tgt", tgt)):
            if self.route in (kind, "learn"):
                _, uniform = self.router.lookup(kind)
                if uniform != want:
                    raise RuntimeError(
                        f"this LSLo module is merged for {kind} language id {want} but the batch routes "
                        f"to {'several languages' if uniform is None else uniform}; unmerge() first"
                    )

    def num_lslo_parameters(self) -> int:
        return sum(p.numel() for n, p in self.named_parameters() if is_lslo_key(n))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, route={self.route}"


def mix_weights(logits: Tensor) -> Tensor:
    """The mixing weights ``(w_src, w_tgt)`` of search-mode logits ``lslo_mix`` (..., 2): softmax in float32."""
    return torch.softmax(logits.float(), dim=-1)


def route_delta(route: str, banks: Dict[str, "LowRankBank"], mix_logits: Optional[Tensor],
                src: Optional[int], tgt: Optional[int]) -> Tensor:
    """The dense weight update of one linear map for the direction (src, tgt language ids).

    ``shared``: the one adapter; ``src``/``tgt``: the slot of that side's language; ``learn``:
    both banks mixed by :func:`mix_weights` of ``mix_logits``.  Used by the live layer
    (:meth:`LSLoLinear.delta_weight`) and by merging straight from a state dict alike.
    """
    if route == "shared":
        return banks["shared"].delta_weight(0)
    if route == "learn":
        w = mix_weights(mix_logits)
        return w[0] * banks["src"].delta_weight(_need(src, "src")) + w[1] * banks["tgt"].delta_weight(_need(tgt, "tgt"))
    return banks[route].delta_weight(_need(src if route == "src" else tgt, route))


def live_components(A_mask: Tensor, B_mask: Tensor) -> Tensor:
    """Bool (..., r): the rank components that can still carry an update: their row of A
    (``A_mask``: ... x r x a_in) and their column of B (``B_mask``: ... x a_out x r) both keep
    at least one entry.  An adapter with none carries no update (its language's delta there is 0)."""
    return A_mask.any(dim=-1) & B_mask.any(dim=-2)


def _check_span(span: Optional[Span], size: int, what: str) -> Span:
    """``span`` checked against the host's ``size`` (None: the whole width)."""
    if span is None:
        return (0, size)
    offset, width = int(span[0]), int(span[1])
    if offset < 0 or width <= 0 or offset + width > size:
        raise ValueError(f"adapter {what} slice [{offset}, {offset + width}) does not fit the host's {what} width {size}")
    return (offset, width)


def _place(t: Tensor, span: Span, size: int) -> Tensor:
    """``t`` (... x width) zero-padded on its last dim into ``size`` columns at ``span``'s offset.

    Differentiable (F.pad): the gradient of the padding is dropped, the slice's goes back.
    """
    offset, width = span
    if width == size:
        return t
    return F.pad(t, (offset, size - offset - width))


def _need(value: Optional[int], kind: str) -> int:
    if value is None:
        raise ValueError(f"a {kind} language id is needed for this module")
    return value


def _storage_owner(out: Tensor) -> Tensor:
    """``out``, or the tensor it merely reshapes (e.g. F.linear's 2-D result for 3-D input).

    Writing in place into a view makes autograd copy the whole gradient in the backward;
    writing into the tensor that owns the memory does not.
    """
    base = out._base
    if (
        base is not None
        and out.is_contiguous()
        and base.is_contiguous()
        and base.numel() == out.numel()
        and base.data_ptr() == out.data_ptr()
        and base.dtype == out.dtype
    ):
        return base
    return out
