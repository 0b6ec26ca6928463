"""How the epoch and the update number of fairseq-train reach LSLo pruning: the one channel.

fairseq tells the *task* both, through two methods it calls on it:

* ``task.begin_epoch(epoch, model)``: before the first batch of every epoch (1-based), the epoch a
  run resumes in included, mid-epoch or not;
* ``task.optimizer_step(optimizer, model, update_num)``: for every update, ``update_num`` being the
  number of updates done before it (the step completes update ``update_num + 1``; a step skipped
  for an fp16/AMP overflow does not count, and the next one is told the same number).

When a task builds an LSLo model, :func:`follow_task` wraps these two methods *of that task
instance* (its class, e.g. ``translation_multi_simple_epoch``, stays as it is, so every command line
keeps working) so that each call first tells the model's :class:`TrainingClock`, then does what the
task does.  The clock is the model's attribute ``lslo_clock``; the pruning optimizer reads the
update number from it and subscribes to its epochs.  Nothing else carries either number.

Which model does a pruning optimizer prune?  fairseq builds optimizers from parameters alone, and
with ``--fp16``/``--bf16`` these are fp32 *copies* (one flat tensor by default), so the optimizer
cannot reach the model through them.  :func:`trained_models` lists (weakly) the models whose clock a
task drives, most recent first; the optimizer picks the one whose parameters it holds.  That list is
the only state of this module, and it is read only while an optimizer is built.

Outside fairseq-train (a loop of your own), tell the clock yourself, as the task would::

    clock = clock_of(model)
    for epoch in ...:
        clock.begin_epoch(epoch)
        for batch in ...:
            ...; clock.before_step(updates_done); optimizer.step(); updates_done += 1
"""
from __future__ import annotations

import weakref
from typing import Callable, List, Optional

import torch.nn as nn

#: the attribute of an LSLo model that holds its clock
CLOCK_ATTR = "lslo_clock"


class TrainingClock:
    """The epoch and the number of updates done of one model's training, as its task reports them."""

    def __init__(self) -> None:
        self.epoch: Optional[int] = None  # the epoch begun last (None: none yet)
        self.updates_done: Optional[int] = None  # before the step being taken (None: no step yet)
        self._epoch_listeners: List["weakref.WeakMethod"] = []

    def begin_epoch(self, epoch: int) -> None:
        """An epoch begins (before its first batch): remember it and tell every listener."""
        self.epoch = int(epoch)
        for listener in self._live_listeners():
            listener(self.epoch)

    def before_step(self, updates_done: int) -> None:
        """The optimizer is about to take the step that completes update ``updates_done + 1``."""
        self.updates_done = int(updates_done)

    def on_epoch(self, method: Callable[[int], None]) -> None:
        """Call ``method(epoch)`` (a bound method, weakly held) at every epoch start from now on."""
        owner = getattr(method, "__self__", None)
        self._epoch_listeners = [r for r in self._epoch_listeners
                                 if r() is not None and getattr(r(), "__self__", None) is not owner]
        self._epoch_listeners.append(weakref.WeakMethod(method))

    def _live_listeners(self) -> List[Callable[[int], None]]:
        live = [r() for r in self._epoch_listeners]
        return [m for m in live if m is not None]


_TRAINED: List["weakref.ReferenceType[nn.Module]"] = []


def clock_of(model: nn.Module) -> TrainingClock:
    """The model's clock (made on first use), and the model listed for pruning optimizers to find."""
    clock = getattr(model, CLOCK_ATTR, None)
    if clock is None:
        clock = TrainingClock()
        object.__setattr__(model, CLOCK_ATTR, clock)  # a plain attribute, not a submodule or buffer
    _TRAINED[:] = [r for r in _TRAINED if r() is not None and r() is not model]
    _TRAINED.append(weakref.ref(model))
    return clock


def trained_models() -> List[nn.Module]:
    """Live models with a clock, most recent first (what a pruning optimizer may bind to)."""
    live = [r() for r in reversed(_TRAINED)]
    return [m for m in live if m is not None]


def follow_task(task, model: nn.Module) -> TrainingClock:
    """Make ``task.begin_epoch`` and ``task.optimizer_step`` (this instance's) drive the model's clock."""
    clock = clock_of(model)
    if task is None or not hasattr(task, "begin_epoch") or not hasattr(task, "optimizer_step"):
        return clock
    following = task.__dict__.setdefault("_lslo_clocks", [])
    if not following:  # wrap once per task instance; later models of the same task join the list
        begin_epoch, optimizer_step = task.begin_epoch, task.optimizer_step

        def begin_epoch_with_clock(epoch, model, *args, **kwargs):
            for clock in _clocks(following):
                clock.begin_epoch(epoch)
            return begin_epoch(epoch, model, *args, **kwargs)

        def optimizer_step_with_clock(optimizer, model, update_num, *args, **kwargs):
            for clock in _clocks(following):
                clock.before_step(update_num)
            return optimizer_step(optimizer, model, update_num, *args, **kwargs)

        task.begin_epoch = begin_epoch_with_clock
        task.optimizer_step = optimizer_step_with_clock
    following[:] = [r for r in following if r() is not None and r() is not clock]
    following.append(weakref.ref(clock))
    return clock


def _clocks(refs: List["weakref.ReferenceType[TrainingClock]"]) -> List[TrainingClock]:
    return [c for c in (r() for r in refs) if c is not None]
