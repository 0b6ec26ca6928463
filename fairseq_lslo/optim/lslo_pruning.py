"""``--optimizer lslo_pruning``: any fairseq optimizer plus gradual language-specific pruning.

The wrapper builds the inner optimizer (``--lslo-inner-optimizer``, default ``adam``; its own
flags such as ``--adam-betas`` keep working) on the parameters fairseq hands it, and after
every inner step

1. at scheduled updates, recomputes the masks (the model's ``A{r}_mask``/``B{r}_mask``
   buffers) by magnitude with the cubic schedule (:mod:`fairseq_lslo.modules.pruning`);
2. sets every pruned weight to exactly 0 and zeroes its per-element optimizer state (Adam's
   ``exp_avg``/``exp_avg_sq``), so nothing can resurrect it; gradients of pruned weights
   are zeroed before the inner step too.

**Which tensors are these?**  fairseq gives an optimizer only parameters, and with
``--fp16`` they are not even the model's: :class:`~fairseq.optim.FP16Optimizer` hands its
inner optimizer fp32 *copies* (one flat tensor by default; a list of copies in
``model.parameters()`` order with ``--bf16`` or ``--fp16-no-flatten-grads``), while
``--memory-efficient-fp16/bf16`` and ``--amp`` hand over the model's own parameters.  An
LSLo model built by a task is listed for this when the task starts driving its clock
(:mod:`.training_clock`); its trainable parameters are exactly its LSLo parameters, in
``model.parameters()`` order, which is the order fairseq uses.  The wrapper maps its parameter space onto that list: the same objects,
or shaped copies in the same order, or one flat tensor laid out in that order; sizes must
fit and copies must hold the same values as the model (checked once), else it stops with
an error.  Trailing parameters (e.g. a criterion's) are optimized but never pruned.  The
fp16 wrappers copy the zeroed fp32 weights back into the model after the step.

**Which update, which epoch?**  Both come from the model's :class:`~.training_clock.TrainingClock`,
which fairseq-train's task drives (:mod:`.training_clock`, the one channel): before every step the
clock holds ``n``, the updates done, so the step completes update ``n + 1`` (skipped fp16/AMP
steps do not count, exactly as in fairseq); at every epoch start it calls
:meth:`LSLoPruningOptimizer.begin_epoch`, which, with ``--lslo-prune-unit epochs``, recomputes the
masks before the epoch's first batch.  A run resumed in the middle of an epoch does not recompute
them: the epoch whose masks were last computed is part of the saved state.

**Where is the state saved?**  fairseq's wrappers save different things: FP16Optimizer and
MemoryEfficientFP16Optimizer save this wrapper's ``state_dict()``, AMPOptimizer saves the
*torch* optimizer's directly.  So the pruning state (a small dict of numbers) lives in the
torch optimizer's first parameter group (``param_groups[0]["lslo_pruning"]``), which every
one of them saves and torch restores on load; masks live in the model's buffers.
"""
from __future__ import annotations

import argparse
import copy
import logging
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from fairseq.logging import metrics
from fairseq.optim import (
    OPTIMIZER_DATACLASS_REGISTRY,
    OPTIMIZER_REGISTRY,
    LegacyFairseqOptimizer,
    build_optimizer,
    register_optimizer,
)
from omegaconf import OmegaConf

from ..errors import LSLoConfigError
from ..modules.pruning import (
    FACTOR_CHOICES,
    SCOPES,
    SHARED,
    STRUCTURES,
    UNITS,
    PruneReport,
    PruneSchedule,
    PruningPlan,
    parse_sparsity,
    trainable_parameters,
)
from .training_clock import TrainingClock, clock_of, trained_models

logger = logging.getLogger(__name__)

NAME = "lslo_pruning"
#: the key of the pruning state, in the torch optimizer's first parameter group (version 2) or,
#: in checkpoints of version 1, at the top of this wrapper's state dict
STATE_KEY = "lslo_pruning"
STATE_VERSION = 2
#: default --lslo-prune-interval per --lslo-prune-unit
DEFAULT_INTERVAL = {"updates": 100, "epochs": 1}
#: inner optimizers that cannot sit inside this wrapper
NOT_WRAPPABLE = {NAME, "composite"}


@dataclass
class Region:
    """Where one model tensor lives in the optimizer's parameter space."""

    param: Tensor  # an optimizer parameter (the model's own, a copy, or a flat copy)
    offset: int
    shape: torch.Size

    def of(self, t: Tensor) -> Tensor:
        """The same region of ``t``, a tensor shaped like ``param`` (its data, grad or state)."""
        if self.offset == 0 and t.shape == self.shape:
            return t
        n = self.shape.numel()
        return t.view(-1)[self.offset:self.offset + n].view(self.shape)


def map_parameter_space(opt_params: Sequence[Tensor], model_params: Sequence[Tensor]) -> List[Region]:
    """Locate each model parameter in the optimizer's parameters; raise ValueError if impossible."""
    opt_params, model_params = list(opt_params), list(model_params)
    n = len(model_params)
    if len(opt_params) >= n and all(a is b for a, b in zip(opt_params, model_params)):
        return [Region(p, 0, p.shape) for p in model_params]
    if len(opt_params) >= n and all(a.shape == b.shape for a, b in zip(opt_params, model_params)):
        regions = [Region(a, 0, a.shape) for a in opt_params[:n]]
    else:
        total = sum(p.numel() for p in model_params)
        flat = opt_params[0] if opt_params else None
        if flat is None or flat.dim() != 1 or flat.numel() < total:
            raise ValueError(
                f"the optimizer holds {len(opt_params)} tensors of shapes "
                f"{[tuple(p.shape) for p in opt_params[:4]]}{' ...' if len(opt_params) > 4 else ''}, "
                f"which are neither the model's {n} trainable parameters ({total} values) nor copies "
                f"of them in order nor one flat tensor of at least {total} values"
            )
        regions, offset = [], 0
        for p in model_params:
            regions.append(Region(flat, offset, p.shape))
            offset += p.numel()
    with torch.no_grad():
        for region, p in zip(regions, model_params):
            if not torch.equal(region.of(region.param.data), p.data.to(region.param.dtype)):
                raise ValueError("the optimizer's copies do not hold the model's values in model.parameters() order")
    return regions


@register_optimizer(NAME)
class LSLoPruningOptimizer(LegacyFairseqOptimizer):
    """Wraps ``--lslo-inner-optimizer``; prunes LSLo weights gradually per language."""

    @staticmethod
    def add_args(parser):
        parser.add_argument("--lslo-inner-optimizer", default="adam", metavar="NAME",
                            help="the fairseq optimizer that does the updates (default: adam); its own "
                                 "flags, e.g. --adam-betas, work as usual")
        parser.add_argument("--lslo-sparsity", default="0.9", metavar="SPEC",
                            help="final sparsity per resource group, e.g. high:0.9,medium:0.9,low:0.5 (add "
                                 "shared:S for 'shared' layers), or one value for all; each in [0, 1)")
        parser.add_argument("--lslo-prune-unit", choices=list(UNITS), default="updates",
                            help="unit of --lslo-prune-start/-end/-duration/-interval: 'updates' (masks are "
                                 "recomputed after updates), or 'epochs': fairseq-train's own (1-based) epoch "
                                 "numbers, masks recomputed at the start of an epoch, before its first batch "
                                 "(default: updates)")
        parser.add_argument("--lslo-prune-start", type=float, default=0, metavar="T",
                            help="start t1 of the cubic schedule (sparsity 0 until then), in --lslo-prune-unit")
        parser.add_argument("--lslo-prune-end", type=float, default=None, metavar="T",
                            help="end of the cubic schedule (final sparsity from then on), in --lslo-prune-unit; "
                                 "this or --lslo-prune-duration is required")
        parser.add_argument("--lslo-prune-duration", type=float, default=None, metavar="T",
                            help="length t2 of the cubic schedule, instead of --lslo-prune-end (end = start + "
                                 "duration), as the reference implementation gives it: sparsity at t is "
                                 "P - P * (1 - (t - t1) / t2)^3")
        parser.add_argument("--lslo-prune-interval", type=int, default=None, metavar="N",
                            help="masks are recomputed every N units from the start (and at the end): default "
                                 "100 updates, or 1 epoch (every epoch start) with --lslo-prune-unit epochs")
        parser.add_argument("--lslo-updates-per-epoch", type=int, default=None, metavar="N",
                            help=argparse.SUPPRESS)  # removed: kept only to explain (see schedule_from_args)
        parser.add_argument("--lslo-prune-scope", choices=list(SCOPES), default="language",
                            help="one magnitude threshold per language over all its layers (language, the "
                                 "default) or per transformer layer over all languages (layer)")
        parser.add_argument("--lslo-prune-factors", choices=list(FACTOR_CHOICES), default="AB",
                            help="which LoRA factors are pruned: A, B or both (AB, the default: an entry's score is "
                                 "the norm of the part of the update it carries, |A[k,j]| ||B[:,k]|| or |B[o,k]| "
                                 "||A[k,:]||, so neither factor is pruned first for its scale); A or B alone: by "
                                 "magnitude. The reference implementation prunes B only")
        parser.add_argument("--lslo-prune-structure", choices=list(STRUCTURES), default="element",
                            help="what one pruning decision removes: one weight (element, the default) or a "
                                 "whole rank component of a language, a row of A with its column of B (rank, "
                                 "scored by ||A[k,:]|| ||B[:,k]||; needs --lslo-prune-factors AB): the kept "
                                 "ranks shrink, and lslo-export writes the smaller adapters")
        add_inner_optimizer_args(parser)

    def __init__(self, args, params, model: Optional[nn.Module] = None):
        super().__init__(args)
        params = list(params)
        inner_name = getattr(args, "lslo_inner_optimizer", "adam")
        self.inner = build_inner_optimizer(args, inner_name, params)
        self.model, self.regions = bind_model(params, model)
        self.plan = PruningPlan(self.model, schedule_from_args(args, self.model))
        model_params = trainable_parameters(self.model)
        index = {id(p): i for i, p in enumerate(model_params)}
        self.tensor_regions = [self.regions[index[id(t.param)]] for t in self.plan.tensors]
        self._written: Optional[dict] = None
        self._write_state(version=STATE_VERSION, steps=0, epoch=None, schedule=self.plan.schedule.to_dict())
        self._first_step = True
        self._has_pruned: Optional[bool] = None
        self.last_report: Optional[PruneReport] = None
        s = self.plan.schedule
        self.clock: TrainingClock = clock_of(self.model)
        self.clock.on_epoch(self.begin_epoch)
        logger.info(
            "LSLo pruning: %s around %s on %d tensors (%d units, scope %s, factors %s, structure %s); "
            "sparsity %s from %s %d to %d, masks every %d %s%s",
            NAME, inner_name, len(self.plan.tensors), len(self.plan.units), s.scope, s.factors, s.structure,
            ",".join(f"{g}:{v:g}" for g, v in s.final.items()), s.unit[:-1], s.start, s.end, s.interval, s.unit,
            " (at the start of the epoch)" if s.unit == "epochs" else "",
        )

    # --- delegation to the inner optimizer ----------------------------------------------
    @property
    def optimizer(self):
        return self.inner.optimizer

    @optimizer.setter
    def optimizer(self, optimizer):
        self.inner.optimizer = optimizer

    @property
    def optimizer_config(self):
        return self.inner.optimizer_config

    @property
    def param_groups(self):
        return self.inner.param_groups

    def __getstate__(self):
        return self.inner.__getstate__()

    def get_lr(self):
        return self.inner.get_lr()

    def set_lr(self, lr):
        self.inner.set_lr(lr)

    def backward(self, loss):
        self.inner.backward(loss)

    def all_reduce_grads(self, module):
        self.inner.all_reduce_grads(module)

    def multiply_grads(self, c):
        self.inner.multiply_grads(c)

    def clip_grad_norm(self, max_norm, aggregate_norm_fn=None):
        return self.inner.clip_grad_norm(max_norm, aggregate_norm_fn)

    def zero_grad(self):
        self.inner.zero_grad()

    def average_params(self):
        self.inner.average_params()

    def broadcast_global_state_dict(self, state_dict):
        return self.inner.broadcast_global_state_dict(state_dict)

    @property
    def supports_memory_efficient_fp16(self):
        return self.inner.supports_memory_efficient_fp16

    @property
    def supports_step_with_scale(self):
        return self.inner.supports_step_with_scale

    @property
    def supports_groups(self):
        return self.inner.supports_groups

    @property
    def supports_flat_params(self):
        return self.inner.supports_flat_params

    # --- state: in the torch optimizer's first parameter group (see the module docstring) ----
    @property
    def pruning_state(self) -> dict:
        """``{"version", "steps", "epoch", "schedule"}``: updates stepped, epoch whose masks are computed."""
        group = self.inner.optimizer.param_groups[0]
        state = group.get(STATE_KEY)
        if state is not self._written:  # replaced by a load_state_dict (ours or one that bypasses us)
            state = self._adopt_loaded(state)
        return state

    def _write_state(self, **changes) -> None:
        state = dict(self.pruning_state) if self._written is not None else {}
        state.update(changes)
        # a new dict each time: a state_dict() taken earlier keeps the values of its moment
        self._written = state
        self.inner.optimizer.param_groups[0][STATE_KEY] = state

    def _adopt_loaded(self, state: Optional[dict]) -> dict:
        fresh = {"version": STATE_VERSION, "steps": 0, "epoch": None, "schedule": self.plan.schedule.to_dict()}
        if not isinstance(state, dict):
            logger.warning("LSLo pruning: the loaded optimizer state has no pruning entry (saved by another "
                           "optimizer?); the masks in the model are kept and the schedule continues from them")
            state = fresh
        else:
            saved, now = state.get("schedule", {}), self.plan.schedule.to_dict()
            changed = [f"{k}: {saved.get(k)} -> {v}" for k, v in now.items() if saved.get(k, v) != v]
            if changed:
                logger.warning("LSLo pruning: the schedule differs from the checkpoint's (%s); masks already "
                               "pruned stay pruned", "; ".join(changed))
            state = {**fresh, "steps": int(state.get("steps", 0)), "epoch": state.get("epoch")}
        self._written = None
        self._write_state(**state)
        return self._written

    def state_dict(self):
        self.pruning_state  # noqa: B018  (adopts a state loaded behind our back before saving it again)
        return self.inner.state_dict()

    def load_state_dict(self, state_dict, optimizer_overrides=None):
        state_dict = dict(state_dict)
        legacy = state_dict.pop(STATE_KEY, None)  # version 1 kept it at the top of this dict
        self.inner.load_state_dict(state_dict, optimizer_overrides)
        if legacy is not None and STATE_KEY not in self.inner.optimizer.param_groups[0]:
            self.inner.optimizer.param_groups[0][STATE_KEY] = {"steps": legacy.get("steps", 0), "epoch": None,
                                                              "schedule": legacy.get("schedule", {})}
        self.pruning_state  # noqa: B018  (compares the schedules now, while loading)

    # --- the step -----------------------------------------------------------------------
    def current_update(self) -> int:
        """The update this step completes (1-based), from the clock fairseq's task drives."""
        if self.clock.updates_done is None:
            raise LSLoConfigError(
                f"--optimizer {NAME}: the update number was never told. fairseq-train tells it through the task "
                "that built the model (task.optimizer_step); elsewhere call clock_of(model).before_step(updates_done) "
                "before each optimizer step (fairseq_lslo/optim/training_clock.py)"
            )
        return self.clock.updates_done + 1

    @torch.no_grad()
    def begin_epoch(self, epoch: int) -> None:
        """At the start of fairseq epoch ``epoch`` (before its first batch): masks of the epoch schedule."""
        schedule = self.plan.schedule
        if schedule.unit != "epochs":
            return
        if self.pruning_state.get("epoch") == epoch:  # resumed inside this epoch: its masks exist
            if epoch >= schedule.start:
                self.last_report = self.plan.report(epoch)
            return
        if epoch >= schedule.start and (schedule.is_mask_update(epoch) or epoch > schedule.end):
            values = [r.of(r.param.data) for r in self.tensor_regions]
            self.last_report = self.plan.update_masks(values, epoch)
            self._has_pruned = None
            # (the model's update count is the one before the last update's forward: one behind here)
            log_report(self.last_report, int(self.pruning_state["steps"]))
            if self.has_pruned():
                self._apply_masks(grads=False)
        self._write_state(epoch=int(epoch))

    def _catch_up_epoch(self) -> None:
        epoch = self.clock.epoch
        if epoch is None:
            raise LSLoConfigError(
                "--lslo-prune-unit epochs: the model was never told the epoch. fairseq-train tells it through "
                "the task that built it (task.begin_epoch); elsewhere call clock_of(model).begin_epoch(epoch) at "
                "each epoch start, or give the schedule in updates (--lslo-prune-unit updates)"
            )
        if self.pruning_state.get("epoch") != epoch:  # the epoch began before this optimizer was built
            self.begin_epoch(epoch)

    def step(self, closure=None, scale=1.0, groups=None):
        schedule = self.plan.schedule
        if schedule.unit == "epochs":
            self._catch_up_epoch()
        t = self.current_update()
        if self.has_pruned():
            self._apply_masks(grads=True)
        self.inner.step(closure, scale=scale, groups=groups)
        self._write_state(steps=int(self.pruning_state["steps"]) + 1)
        if schedule.unit == "updates":
            if schedule.is_mask_update(t) or (self._first_step and t > schedule.end):
                values = [r.of(r.param.data) for r in self.tensor_regions]
                self.last_report = self.plan.update_masks(values, t)
                self._has_pruned = None
                log_report(self.last_report, t)
            elif self._first_step and t > schedule.start:  # resumed: report the masks it continues with
                self.last_report = self.plan.report(t)
        self._first_step = False
        if self.has_pruned():
            self._apply_masks(grads=False)
        if self.last_report is not None:
            log_metrics(self.last_report)

    def has_pruned(self) -> bool:
        if self._has_pruned is None:
            self._has_pruned = any(not bool(t.mask.all()) for t in self.plan.tensors)
        return self._has_pruned

    @torch.no_grad()
    def _apply_masks(self, grads: bool) -> None:
        """Zero pruned gradients (before the step) or weights and optimizer state (after it)."""
        state = self.inner.optimizer.state
        for tensor, region in zip(self.plan.tensors, self.tensor_regions):
            mask = tensor.mask
            if grads:
                if region.param.grad is not None:
                    region.of(region.param.grad).mul_(mask)
                continue
            region.of(region.param.data).mul_(mask)
            if region.param is not tensor.param:  # an fp32 copy: the model's own weights too
                tensor.param.data.mul_(mask)
            for value in state.get(region.param, {}).values():
                if torch.is_tensor(value) and value.shape == region.param.shape:
                    region.of(value).mul_(mask)


# --- construction helpers ------------------------------------------------------------------
def _optimizer_flags(name: str) -> List[argparse.Action]:
    cls = OPTIMIZER_REGISTRY[name]
    tmp = argparse.ArgumentParser(add_help=False)
    cls.add_args(tmp)
    return list(tmp._actions)


def add_inner_optimizer_args(parser) -> None:
    """Accept the flags of every wrappable fairseq optimizer, without defaults.

    Each flag only appears in the arguments when given, so the inner optimizer's own
    defaults apply; a flag the chosen inner optimizer does not know is an error at build.
    """
    group = parser.add_argument_group("options of the optimizer inside lslo_pruning (--lslo-inner-optimizer)")
    known = parser._option_string_actions
    for name in sorted(OPTIMIZER_REGISTRY):
        if name in NOT_WRAPPABLE:
            continue
        try:
            actions = _optimizer_flags(name)
        except Exception:  # an optimizer whose flags cannot be generated cannot be wrapped either
            continue
        for action in actions:
            if not action.option_strings or any(o in known for o in action.option_strings):
                continue
            action = copy.copy(action)
            action.default = argparse.SUPPRESS
            group._add_action(action)


def build_inner_optimizer(args, name: str, params: List[Tensor]):
    if name in NOT_WRAPPABLE or name not in OPTIMIZER_REGISTRY:
        choices = ", ".join(sorted(set(OPTIMIZER_REGISTRY) - NOT_WRAPPABLE))
        raise LSLoConfigError(f"--lslo-inner-optimizer: {name!r} cannot be used; choose one of {choices}")
    own = {a.dest for a in _optimizer_flags(name)}
    for other in sorted(set(OPTIMIZER_REGISTRY) - NOT_WRAPPABLE - {name}):
        try:
            flags = _optimizer_flags(other)
        except Exception:
            continue
        for action in flags:
            if action.dest not in own and action.dest in vars(args) and action.option_strings:
                raise LSLoConfigError(
                    f"{action.option_strings[0]} is an option of --optimizer {other}, not of "
                    f"--lslo-inner-optimizer {name}"
                )
    inner_args = argparse.Namespace(**vars(args))
    inner_args.optimizer = name
    for action in _optimizer_flags(name):  # flags not given take the inner optimizer's defaults
        if action.option_strings and not hasattr(inner_args, action.dest):
            setattr(inner_args, action.dest, action.default)
    dataclass = OPTIMIZER_DATACLASS_REGISTRY.get(name)
    if dataclass is None:  # a legacy optimizer reads the flat namespace
        return build_optimizer(inner_args, params)
    # as fairseq does for a top-level --optimizer: a structured config (defaults such as
    # adam's betas tuple become omegaconf lists, which the optimizer expects)
    cfg = OmegaConf.structured(dataclass.from_namespace(inner_args))
    cfg._name = name
    return build_optimizer(cfg, params)


def bind_model(params: List[Tensor], model: Optional[nn.Module]):
    """The LSLo model (one a task trains, see training_clock) whose trainable parameters ``params`` are (or copy)."""
    candidates = [model] if model is not None else trained_models()
    if not candidates:
        raise LSLoConfigError(f"--optimizer {NAME} prunes LSLo weights: use it with --arch lslo_* models")
    found, reasons = [], []
    for candidate in candidates:
        try:
            found.append((candidate, map_parameter_space(params, trainable_parameters(candidate))))
        except ValueError as e:
            reasons.append(str(e))
    if not found:
        raise LSLoConfigError(
            f"--optimizer {NAME}: cannot find the LSLo weights among the optimizer's parameters ("
            + "; ".join(reasons) + "). Only fairseq's plain, --fp16/--bf16 (flat or not), "
            "--memory-efficient-fp16/bf16 and --amp optimizer wrappers are supported"
        )
    identical = [f for f in found if all(r.param is p for r, p in zip(f[1], trainable_parameters(f[0])))]
    if len(found) > 1 and len(identical) != 1:
        raise LSLoConfigError(
            f"--optimizer {NAME}: several LSLo models match the optimizer's parameters; pass model= explicitly"
        )
    return identical[0] if identical else found[0]


def schedule_from_args(args, model: nn.Module) -> PruneSchedule:
    spec = model.lslo_spec
    has_shared = SHARED in spec.routes_used()
    groups = list(dict.fromkeys(group for _, group in spec.languages))
    final = parse_sparsity(getattr(args, "lslo_sparsity", "0.9"), groups, has_shared)
    unit = getattr(args, "lslo_prune_unit", "updates")
    if unit not in UNITS:
        raise LSLoConfigError(f"--lslo-prune-unit must be one of {', '.join(UNITS)}, got {unit!r}")
    if getattr(args, "lslo_updates_per_epoch", None) is not None:
        raise LSLoConfigError(
            "--lslo-updates-per-epoch is no longer used: --lslo-prune-unit epochs now follows fairseq-train's "
            "real epochs (masks at the start of each epoch). Drop the flag, or give the schedule in updates "
            "(--lslo-prune-unit updates) to recompute masks within epochs"
        )
    start = getattr(args, "lslo_prune_start", 0)
    end = getattr(args, "lslo_prune_end", None)
    duration = getattr(args, "lslo_prune_duration", None)
    if end is not None and duration is not None:
        raise LSLoConfigError(
            f"give either --lslo-prune-end ({end:g}) or --lslo-prune-duration ({duration:g}), not both "
            "(end = start + duration)"
        )
    if end is None and duration is None:
        raise LSLoConfigError(
            "--optimizer lslo_pruning needs the end of the schedule: --lslo-prune-end T, or "
            "--lslo-prune-duration T (end = --lslo-prune-start + T)"
        )
    if duration is not None and float(duration) < 0:
        raise LSLoConfigError(f"--lslo-prune-duration must be >= 0, got {duration:g}")
    times = {"--lslo-prune-start": start}
    times["--lslo-prune-end" if duration is None else "--lslo-prune-duration"] = end if duration is None else duration
    for flag, value in times.items():
        if float(value) != int(float(value)):
            raise LSLoConfigError(f"{flag} must be a whole number of {unit} with --lslo-prune-unit {unit}, got {value}")
    start = int(float(start))
    end = int(float(end)) if duration is None else start + int(float(duration))
    interval = getattr(args, "lslo_prune_interval", None)
    return PruneSchedule(
        final=final, start=start, end=end,
        interval=DEFAULT_INTERVAL[unit] if interval is None else int(interval),
        scope=getattr(args, "lslo_prune_scope", "language"),
        factors=getattr(args, "lslo_prune_factors", "AB"),
        unit=unit,
        structure=getattr(args, "lslo_prune_structure", None) or "element",
    )


def log_report(report: PruneReport, updates_done: int) -> None:
    """One INFO line per mask update: target and achieved sparsity (pruned/prunable) per group."""
    parts = [
        f"{g} target {report.target[g]:.4f} achieved {report.achieved[g]:.4f} "
        f"({report.pruned[g]}/{report.prunable[g]})"
        for g in report.target
    ]
    if report.unit == "epochs":
        when = f"at the start of epoch {report.update} ({updates_done} updates done)"
    else:
        when = f"at update {report.update}"
    logger.info("LSLo pruning %s: %s", when, "; ".join(parts))
    log_dead_adapters(report, when)


def log_dead_adapters(report: PruneReport, when: str) -> None:
    """A WARNING for every language this mask update left without an update in some (or all) adapters."""
    for owner, (names, total) in report.newly_dead.items():
        dead = report.dead.get(owner, len(names))
        who = "the shared adapter" if owner == SHARED else f"language {owner}"
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        if dead >= total:
            logger.warning(
                "LSLo pruning %s: %s carries no update any more: in every one of its %d adapters all of B or "
                "all of A (every rank component) is pruned, so it translates like the base model "
                "(now: %s). Lower its --lslo-sparsity, or see docs/pruning.md", when, who, total, shown)
        else:
            logger.warning(
                "LSLo pruning %s: %s carries no update any more in %d of its %d adapters (all of B or all of A "
                "pruned there): %s", when, who, dead, total, shown)


def log_metrics(report: PruneReport) -> None:
    """Latest achieved and target sparsity per group as fairseq metrics (shown in train logs)."""
    for g in report.target:
        metrics.log_scalar(f"lslo_sparsity_{g}", report.achieved[g], weight=0, round=4, priority=900)
        metrics.log_scalar(f"lslo_target_{g}", report.target[g], weight=0, round=4, priority=900)
