"""Gradual magnitude pruning of LSLo factors: the cubic schedule and mask computation.

Model side only (no optimizer code).  Masks are the boolean ``A{r}_mask`` / ``B{r}_mask``
buffers of every :class:`LowRankBank` (True = kept), so they are saved in every checkpoint
and applied by the forward pass at training and inference.  The optimizer wrapper
(``fairseq_lslo.optim.lslo_pruning``) decides *when* masks change and keeps pruned weights
and their optimizer state at exactly zero.

What one decision removes (``structure``) and by which score: single weights (``element``; by
magnitude when one factor is pruned, by the part of the update a weight carries when both are,
see :meth:`PruningPlan.element_scores`), or whole rank components of a language (``rank``: a row
of A with its column of B, see :meth:`PruningPlan.component_scores`).

Units of pruning (one threshold each):

* scope ``language`` (default, the paper's): one unit per language, over all its LSLo
  weights in every layer and position (both banks of ``learn`` layers), plus one unit
  ``shared`` for the adapters of ``shared`` layers;
* scope ``layer``: one unit per transformer layer (e.g. ``encoder.layers.3``), over all
  languages' weights in that layer; its target count is the sum of what each language's
  (and the shared slot's) own target sparsity would remove in that layer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import LSLoConfigError
from ..languages import parse_group_values
from .keys import bank_attr, entry_name, join, layer_of
from .lslo_linear import LowRankBank, LSLoLinear, live_components

SCOPES = ("language", "layer")
FACTOR_CHOICES = ("A", "B", "AB")
#: what one pruning decision removes: one weight, or one rank component (a row of A and its column of B)
STRUCTURES = ("element", "rank")
#: schedule units: optimizer updates, or fairseq's real epochs (masks at each epoch's start)
UNITS = ("updates", "epochs")
#: the pseudo-group of the single adapter of ``shared`` layers
SHARED = "shared"


def cubic_sparsity(t: float, start: float, end: float, final: float) -> float:
    """Zhu & Gupta (2017): 0 before ``start``, ``final`` from ``end`` on, cubic in between."""
    if t < start:
        return 0.0
    if t >= end:
        return float(final)
    progress = (t - start) / (end - start)
    return float(final) * (1.0 - (1.0 - progress) ** 3)


def parse_sparsity(spec, groups: Sequence[str], has_shared: bool) -> Dict[str, float]:
    """``--lslo-sparsity``: one value, or ``high:0.9,low:0.5[,shared:0.8]``; each in [0, 1)."""
    text = str(spec).strip()
    named = [item.partition(":")[0].strip() for item in text.split(",")] if ":" in text else []
    allowed = list(groups) + ([SHARED] if SHARED in named and SHARED not in groups else [])
    values = parse_group_values(text, "--lslo-sparsity", float, allowed)
    for group, value in values.items():
        if not 0.0 <= value < 1.0:
            raise LSLoConfigError(
                f"--lslo-sparsity: the final sparsity of {group!r} must be in [0, 1), got {value}"
            )
    if SHARED not in values:
        if has_shared and named:
            raise LSLoConfigError(
                "--lslo-sparsity: the model has 'shared' layers; give their final sparsity too, "
                f"e.g. {text},{SHARED}:0.9 (or one value for everything)"
            )
        if not named:
            values[SHARED] = values[groups[0]] if groups else float(text)
    return values


@dataclass
class PruneSchedule:
    """When and how far to prune; times in ``unit``: optimizer updates, or fairseq's epochs.

    With ``updates``, time ``t`` is the update just completed (masks are recomputed after it);
    with ``epochs``, ``t`` is the (1-based) fairseq epoch about to begin (masks are recomputed
    at its start, before its first batch).  The target sparsity at ``t`` is the cubic schedule
    of :func:`cubic_sparsity` from ``start`` to ``end``; with ``end = t1 + t2`` this is the
    reference implementation's ``P - P (1 - (t - t1) / t2)^3``.
    """

    final: Dict[str, float]  # final sparsity per group (and 'shared')
    start: int
    end: int
    interval: int = 1
    scope: str = "language"
    factors: str = "AB"
    unit: str = "updates"
    structure: str = "element"

    def __post_init__(self):
        if self.unit not in UNITS:
            raise LSLoConfigError(f"--lslo-prune-unit must be one of {', '.join(UNITS)}, got {self.unit!r}")
        if self.start < 0:
            raise LSLoConfigError(f"--lslo-prune-start must be >= 0, got {self.start}")
        if self.end < self.start:
            raise LSLoConfigError(
                f"--lslo-prune-end ({self.end}) must not come before --lslo-prune-start ({self.start})"
            )
        if self.interval <= 0:
            raise LSLoConfigError(
                f"--lslo-prune-interval must be a positive number of {self.unit}, got {self.interval}"
            )
        if self.scope not in SCOPES:
            raise LSLoConfigError(f"--lslo-prune-scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        if self.factors not in FACTOR_CHOICES:
            raise LSLoConfigError(
                f"--lslo-prune-factors must be one of {', '.join(FACTOR_CHOICES)}, got {self.factors!r}"
            )
        if self.structure not in STRUCTURES:
            raise LSLoConfigError(
                f"--lslo-prune-structure must be one of {', '.join(STRUCTURES)}, got {self.structure!r}"
            )
        if self.structure == "rank" and self.factors != "AB":
            raise LSLoConfigError(
                f"--lslo-prune-structure rank removes a row of A with its column of B: it needs "
                f"--lslo-prune-factors AB, got {self.factors}"
            )

    def sparsity(self, group: str, t: int) -> float:
        """Target sparsity of ``group`` at time ``t``."""
        if self.end == self.start:  # one-shot pruning at ``start``
            return self.final[group] if t >= self.start else 0.0
        return cubic_sparsity(t, self.start, self.end, self.final[group])

    def is_mask_update(self, t: int) -> bool:
        """Masks are recomputed at times start + k * interval (<= end), and at ``end``."""
        if t < self.start or t > self.end:
            return False
        return t == self.end or (t - self.start) % self.interval == 0

    def to_dict(self) -> dict:
        return {"final": dict(self.final), "start": self.start, "end": self.end, "interval": self.interval,
                "scope": self.scope, "factors": self.factors, "unit": self.unit, "structure": self.structure}


@dataclass
class AdapterBucket:
    """One rank bucket of one bank: ``A`` (n x r x a_in), ``B`` (n x a_out x r), their masks, owners.

    Row ``i`` of each tensor is one adapter: the slot of ``owners[i]`` (a language code or
    SHARED) in this bank, whose update is ``scales[i] * B[i] @ A[i]``.
    """

    name: str  # the bank, e.g. encoder.layers.0.fc1.lslo_src
    layer: str
    rank: int
    A: nn.Parameter
    A_mask: Tensor
    B: nn.Parameter
    B_mask: Tensor
    owners: List[str]
    scales: List[float]
    #: factor -> index of its PrunableTensor in the plan (factors pruned by the schedule only)
    tensor_index: Dict[str, int] = field(default_factory=dict)

    def live_components(self, i: int) -> Tensor:
        """Bool (r,): rank components of adapter ``i`` whose A row and B column both keep an entry."""
        return live_components(self.A_mask[i], self.B_mask[i])


@dataclass
class PrunableTensor:
    """One factor tensor ``A{r}`` or ``B{r}`` of one bank, with its mask buffer."""

    name: str  # e.g. encoder.layers.0.fc1.lslo_src.A2
    layer: str  # e.g. encoder.layers.0
    factor: str  # "A" or "B"
    param: nn.Parameter
    mask: Tensor  # bool buffer, same shape as param
    owners: List[str]  # per index along dim 0: language code or SHARED
    bucket: int = -1  # index of its AdapterBucket in the plan


@dataclass
class PruneUnit:
    """Slices ``(tensor index, index along dim 0)`` that share one magnitude threshold."""

    name: str
    pieces: List[Tuple[int, int]] = field(default_factory=list)


@dataclass
class PruneReport:
    """What one mask update did: per group target and achieved sparsity of the prunable weights."""

    update: int  # the schedule's time t, in ``unit``
    target: Dict[str, float]
    achieved: Dict[str, float]
    pruned: Dict[str, int]
    prunable: Dict[str, int]
    unit: str = "updates"
    #: per language (or 'shared') whose adapters this mask update left without any update:
    #: (names of those adapters, how many adapters the language has in all)
    newly_dead: Dict[str, Tuple[List[str], int]] = field(default_factory=dict)
    #: per language: adapters that carry no update (all of them, not only the new ones)
    dead: Dict[str, int] = field(default_factory=dict)


class PruningPlan:
    """The prunable tensors of an LSLo model, grouped into units, and how to update their masks."""

    def __init__(self, model: nn.Module, schedule: PruneSchedule):
        spec = getattr(model, "lslo_spec", None)
        if spec is None:
            raise LSLoConfigError("pruning needs an lslo_transformer model (it has no LSLo configuration)")
        self.schedule = schedule
        self.codes: List[str] = spec.codes
        self.group_of: Dict[str, str] = {code: group for code, group in spec.languages}
        self.group_of[SHARED] = SHARED
        self.tensors: List[PrunableTensor] = []
        self.buckets: List[AdapterBucket] = []
        for module_name, module in model.named_modules():
            if not isinstance(module, LSLoLinear):
                continue
            for kind, bank in module.banks().items():
                self._add_bank(join(module_name, bank_attr(kind)), layer_of(module_name), kind, bank)
        self.units = self._build_units()
        self._dead_seen: set = set()  # (bucket, row) already reported as carrying no update

    def _add_bank(self, prefix: str, layer: str, kind: str, bank: LowRankBank) -> None:
        owners = [SHARED] * bank.num_slots if kind == SHARED else self.codes
        for r, slots in bank.bucket_slots().items():
            bucket = AdapterBucket(
                prefix, layer, r,
                A=getattr(bank, entry_name("A", r)), A_mask=getattr(bank, entry_name("A", r, mask=True)),
                B=getattr(bank, entry_name("B", r)), B_mask=getattr(bank, entry_name("B", r, mask=True)),
                owners=[owners[s] for s in slots], scales=[float(bank.slot_scale[s]) for s in slots],
            )
            b = len(self.buckets)
            self.buckets.append(bucket)
            for factor in ("A", "B"):
                if factor in self.schedule.factors:
                    bucket.tensor_index[factor] = len(self.tensors)
                    self.tensors.append(PrunableTensor(
                        join(prefix, entry_name(factor, r)), layer, factor, getattr(bucket, factor),
                        getattr(bucket, factor + "_mask"), bucket.owners, b))

    def _build_units(self) -> List[PruneUnit]:
        units: Dict[str, PruneUnit] = {}
        for j, tensor in enumerate(self.tensors):
            for i, owner in enumerate(tensor.owners):
                key = owner if self.schedule.scope == "language" else tensor.layer
                units.setdefault(key, PruneUnit(key)).pieces.append((j, i))
        return list(units.values())

    @property
    def groups(self) -> List[str]:
        """Groups that own prunable weights, in inventory order (then 'shared')."""
        present = {self.group_of[o] for t in self.tensors for o in t.owners}
        ordered = [g for g in dict.fromkeys(self.group_of[c] for c in self.codes)] + [SHARED]
        return [g for g in ordered if g in present]

    def _owner(self, piece: Tuple[int, int]) -> str:
        j, i = piece
        return self.tensors[j].owners[i]

    def target_count(self, unit: PruneUnit, t: int) -> int:
        """How many weights of ``unit`` are pruned at time ``t``."""
        if self.schedule.scope == "language":
            n = sum(self.tensors[j].mask[i].numel() for j, i in unit.pieces)
            return int(round(self.schedule.sparsity(self.group_of[unit.name], t) * n))
        total = 0.0
        for j, i in unit.pieces:
            group = self.group_of[self.tensors[j].owners[i]]
            total += self.schedule.sparsity(group, t) * self.tensors[j].mask[i].numel()
        return int(round(total))

    # --- scores ---------------------------------------------------------------------------
    def _partner(self, values: Sequence[Tensor], j: int, i: int) -> Tensor:
        """The masked other factor of adapter ``i`` of tensor ``j`` (B for an A, A for a B), as float."""
        tensor = self.tensors[j]
        k = self.buckets[tensor.bucket].tensor_index["B" if tensor.factor == "A" else "A"]
        return values[k][i].detach().float() * self.tensors[k].mask[i].to(values[k].device)

    def element_scores(self, values: Sequence[Tensor], j: int, i: int) -> Tensor:
        """The score of every entry of adapter ``i`` of tensor ``j``: what pruning it would remove.

        One factor pruned (``A`` or ``B``, the reference's ``B``): the L1 magnitude ``|w|``.
        Both (``AB``): the norm of the part of the adapter's update ``c B A`` that the entry
        carries, ``c |A[k, j]| ||B[:, k]||`` for an entry of A and ``c |B[o, k]| ||A[k, :]||``
        for an entry of B (exactly ``||c B A - c B' A'||_F`` when the entry alone is zeroed).
        Unlike a joint magnitude it does not depend on how the update is split between the
        factors, so B (zero at the start) is not pruned first only for being smaller.
        """
        v = values[j][i].detach().float().abs()
        if self.schedule.factors != "AB":
            return v
        tensor = self.tensors[j]
        partner = self._partner(values, j, i)
        scale = self.buckets[tensor.bucket].scales[i]
        if tensor.factor == "A":  # A: r x a_in; partner B: a_out x r
            return v * (partner.norm(dim=0) * scale).unsqueeze(1)
        return v * (partner.norm(dim=1) * scale).unsqueeze(0)  # B: a_out x r; partner A: r x a_in

    def component_scores(self, values: Sequence[Tensor], b: int, i: int) -> Tensor:
        """(r,): ``c ||A[k, :]|| ||B[:, k]||``, the norm of the rank-one update of each component."""
        bucket = self.buckets[b]
        jA, jB = bucket.tensor_index["A"], bucket.tensor_index["B"]
        A = values[jA][i].detach().float() * bucket.A_mask[i].to(values[jA].device)
        B = values[jB][i].detach().float() * bucket.B_mask[i].to(values[jB].device)
        return A.norm(dim=1) * B.norm(dim=0) * bucket.scales[i]

    # --- mask updates -----------------------------------------------------------------------
    @torch.no_grad()
    def update_masks(self, values: Sequence[Tensor], t: int) -> PruneReport:
        """Prune every unit to its target at time ``t``, by the score of ``values``.

        ``values[j]`` holds the current weights of ``tensors[j]`` (same shape; e.g. the
        optimizer's fp32 master copy).  Masks only shrink: already pruned weights stay
        pruned and count towards the target.  Structure ``element``: exactly the target number
        of weights ends up pruned, lowest :meth:`element_scores` first; ties in score are
        broken by position (first in plan order goes first).  Structure ``rank``: whole rank
        components (a row of A and the matching column of B), lowest :meth:`component_scores`
        first, as many as bring the pruned weights nearest to the target.
        """
        for unit in self.units:
            k = self.target_count(unit, t)
            masks = [self.tensors[j].mask[i] for j, i in unit.pieces]
            kept = torch.cat([m.reshape(-1) for m in masks])
            if k <= int((~kept).sum()):
                continue
            if self.schedule.structure == "rank":
                self._prune_components(unit, values, k)
                continue
            scores = torch.cat([self.element_scores(values, j, i).reshape(-1) for j, i in unit.pieces])
            scores = scores.to(kept.device).masked_fill(~kept, -1.0)  # pruned first, as they must stay
            order = torch.sort(scores, stable=True).indices
            new_kept = torch.ones_like(kept)
            new_kept[order[:k]] = False
            offset = 0
            for mask in masks:
                n = mask.numel()
                mask.copy_(new_kept[offset:offset + n].view_as(mask))
                offset += n
        report = self.report(t)
        report.newly_dead = self._newly_dead()
        return report

    def _prune_components(self, unit: PruneUnit, values: Sequence[Tensor], k: int) -> None:
        """Structure ``rank``: remove the weakest whole components of ``unit`` until about ``k`` weights are pruned."""
        adapters = [(self.tensors[j].bucket, i) for j, i in unit.pieces if self.tensors[j].factor == "A"]
        scores, sizes, where = [], [], []
        for b, i in adapters:
            bucket = self.buckets[b]
            score = self.component_scores(values, b, i).to(bucket.A_mask.device)
            live = bucket.A_mask[i].all(dim=1) & bucket.B_mask[i].all(dim=0)
            scores.append(score.masked_fill(~live, -1.0))  # anything pruned in a component prunes it all
            sizes.append(torch.full_like(score, bucket.A.shape[2] + bucket.B.shape[1]))
            where.extend((b, i, c) for c in range(bucket.rank))
        score = torch.cat(scores).cpu()
        size = torch.cat(sizes).cpu()
        pruned = 0.0
        for index in torch.sort(score, stable=True).indices.tolist():
            if score[index] >= 0 and pruned + size[index] / 2 > k:  # the nearest count to the target
                break
            b, i, c = where[index]
            bucket = self.buckets[b]
            bucket.A_mask[i, c, :] = False
            bucket.B_mask[i, :, c] = False
            pruned += float(size[index])

    def _newly_dead(self) -> Dict[str, Tuple[List[str], int]]:
        """Adapters that carry no update any more (no live component) and were not reported yet."""
        out: Dict[str, Tuple[List[str], int]] = {}
        totals: Dict[str, int] = {}
        for b, bucket in enumerate(self.buckets):
            for i, owner in enumerate(bucket.owners):
                totals[owner] = totals.get(owner, 0) + 1
                if (b, i) in self._dead_seen or bool(bucket.live_components(i).any()):
                    continue
                self._dead_seen.add((b, i))
                out.setdefault(owner, ([], 0))[0].append(bucket.name)
        return {owner: (names, totals[owner]) for owner, (names, _) in out.items()}

    def dead_adapters(self) -> Dict[str, Tuple[int, int]]:
        """Per language (and 'shared'): (adapters carrying no update, adapters in all)."""
        out: Dict[str, Tuple[int, int]] = {}
        for bucket in self.buckets:
            for i, owner in enumerate(bucket.owners):
                dead, n = out.get(owner, (0, 0))
                out[owner] = (dead + int(not bool(bucket.live_components(i).any())), n + 1)
        return out

    @torch.no_grad()
    def report(self, t: int) -> PruneReport:
        pruned: Dict[str, int] = {}
        prunable: Dict[str, int] = {}
        for tensor in self.tensors:
            for i, owner in enumerate(tensor.owners):
                group = self.group_of[owner]
                m = tensor.mask[i]
                prunable[group] = prunable.get(group, 0) + m.numel()
                pruned[group] = pruned.get(group, 0) + int(m.numel() - m.sum())
        groups = self.groups
        return PruneReport(
            update=t,
            target={g: self.schedule.sparsity(g, t) for g in groups},
            achieved={g: pruned[g] / max(prunable[g], 1) for g in groups},
            pruned={g: pruned[g] for g in groups},
            prunable={g: prunable[g] for g in groups},
            unit=self.schedule.unit,
            dead={o: d for o, (d, _) in self.dead_adapters().items() if d},
        )

    def language_counts(self) -> Dict[str, Tuple[int, int]]:
        """Per language (and 'shared'): (prunable weights, pruned weights)."""
        out: Dict[str, Tuple[int, int]] = {}
        for tensor in self.tensors:
            for i, owner in enumerate(tensor.owners):
                m = tensor.mask[i]
                n, p = out.get(owner, (0, 0))
                out[owner] = (n + m.numel(), p + int(m.numel() - m.sum()))
        return out


def trainable_parameters(model: nn.Module) -> List[nn.Parameter]:
    """The parameters fairseq hands to the optimizer, in the same order (model.parameters())."""
    return [p for p in model.parameters() if p.requires_grad]
