"""Gradual magnitude pruning of LSLo factors: the cubic schedule and mask computation.

Model side only (no optimizer code).  Masks are the boolean ``A{r}_mask`` / ``B{r}_mask``
buffers of every :class:`LowRankBank` (True = kept), so they are saved in every checkpoint
and applied by the forward pass at training and inference.  The optimizer wrapper
(``fairseq_lslo.optim.lslo_pruning``) decides *when* masks change and keeps pruned weights
and their optimizer state at exactly zero.

Units of pruning (one magnitude threshold each):

* scope ``language`` (default, the paper's): one unit per language, over all its LSLo
  weights in every layer and position (both banks of ``learn`` layers), plus one unit
  ``shared`` for the adapters of ``shared`` layers;
* scope ``layer``: one unit per transformer layer (e.g. ``encoder.layers.3``), over all
  languages' weights in that layer; its target count is the sum of what each language's
  (and the shared slot's) own target sparsity would remove in that layer.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import LSLoConfigError
from ..languages import parse_group_values
from .keys import bank_attr, entry_name, join, layer_of
from .lslo_linear import LowRankBank, LSLoLinear

SCOPES = ("language", "layer")
FACTOR_CHOICES = ("A", "B", "AB")
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
                "scope": self.scope, "factors": self.factors, "unit": self.unit}


@dataclass
class PrunableTensor:
    """One factor tensor ``A{r}`` or ``B{r}`` of one bank, with its mask buffer."""

    name: str  # e.g. encoder.layers.0.fc1.lslo_src.A2
    layer: str  # e.g. encoder.layers.0
    factor: str  # "A" or "B"
    param: nn.Parameter
    mask: Tensor  # bool buffer, same shape as param
    owners: List[str]  # per index along dim 0: language code or SHARED


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
        for module_name, module in model.named_modules():
            if not isinstance(module, LSLoLinear):
                continue
            for kind, bank in module.banks().items():
                self._add_bank(join(module_name, bank_attr(kind)), layer_of(module_name), kind, bank)
        self.units = self._build_units()

    def _add_bank(self, prefix: str, layer: str, kind: str, bank: LowRankBank) -> None:
        owners_by_rank: Dict[int, List[str]] = {r: [] for r in bank.rank_buckets}
        for slot, (r, _) in enumerate(bank.slot_place):
            owners_by_rank[r].append(SHARED if kind == SHARED else self.codes[slot])
        for factor, r, param, mask in bank.factor_tensors():
            if factor in self.schedule.factors:
                self.tensors.append(PrunableTensor(join(prefix, entry_name(factor, r)), layer, factor, param, mask,
                                                   owners_by_rank[r]))

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

    @torch.no_grad()
    def update_masks(self, values: Sequence[Tensor], t: int) -> PruneReport:
        """Prune every unit to its target at time ``t``, by magnitude of ``values``.

        ``values[j]`` holds the current weights of ``tensors[j]`` (same shape; e.g. the
        optimizer's fp32 master copy).  Masks only shrink: already pruned weights stay
        pruned and count towards the target.  Exactly the target number of weights ends up
        pruned; ties in magnitude are broken by position (first in plan order goes first).
        """
        for unit in self.units:
            k = self.target_count(unit, t)
            masks = [self.tensors[j].mask[i] for j, i in unit.pieces]
            kept = torch.cat([m.reshape(-1) for m in masks])
            if k <= int((~kept).sum()):
                continue
            scores = torch.cat([values[j][i].detach().reshape(-1).abs().float() for j, i in unit.pieces])
            scores = scores.to(kept.device).masked_fill(~kept, -1.0)  # pruned first, as they must stay
            order = torch.sort(scores, stable=True).indices
            new_kept = torch.ones_like(kept)
            new_kept[order[:k]] = False
            offset = 0
            for mask in masks:
                n = mask.numel()
                mask.copy_(new_kept[offset:offset + n].view_as(mask))
                offset += n
        return self.report(t)

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


# --- publication: how an optimizer finds the model whose weights it prunes ---------------
_PUBLISHED: List["weakref.ReferenceType[nn.Module]"] = []


def publish_prunable(model: nn.Module) -> None:
    """Announce an LSLo model to pruning optimizers (weakly: it can still be freed)."""
    _PUBLISHED[:] = [r for r in _PUBLISHED if r() is not None and r() is not model]
    _PUBLISHED.append(weakref.ref(model))


def published_models() -> List[nn.Module]:
    """Live published models, most recently published first."""
    live = [r() for r in reversed(_PUBLISHED)]
    return [m for m in live if m is not None]


def trainable_parameters(model: nn.Module) -> List[nn.Parameter]:
    """The parameters fairseq hands to the optimizer, in the same order (model.parameters())."""
    return [p for p in model.parameters() if p.requires_grad]
