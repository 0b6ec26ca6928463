"""The one channel from fairseq-train to pruning: the task's begin_epoch and optimizer_step drive the model's clock."""

import pytest
import torch

from conftest import LSLO_FLAGS, build as build_task_and_model
from test_pruning import args_for
from fairseq import optim
from fairseq_lslo.errors import LSLoConfigError
from fairseq_lslo.modules.pruning import trainable_parameters
from fairseq_lslo.optim.lslo_pruning import LSLoPruningOptimizer
from fairseq_lslo.optim.training_clock import clock_of, follow_task, trained_models


class Task:
    """The two methods fairseq-train calls on a task, as FairseqTask defines them."""

    def __init__(self):
        self.epochs = []

    def begin_epoch(self, epoch, model):
        self.epochs.append(epoch)

    def optimizer_step(self, optimizer, model, update_num):
        optimizer.step()


class Recorder:
    def __init__(self, clock):
        self.clock, self.seen = clock, []

    def step(self):
        self.seen.append(self.clock.updates_done)

    def on_epoch(self, epoch):
        self.seen.append(("epoch", epoch))


def test_the_task_hooks_drive_the_clock_before_the_task_acts():
    task, model = Task(), torch.nn.Linear(2, 2)
    clock = follow_task(task, model)
    assert follow_task(task, model) is clock and clock_of(model) is clock  # building twice: one clock, one wrap
    recorder = Recorder(clock)
    clock.on_epoch(recorder.on_epoch)
    task.begin_epoch(3, model)
    task.optimizer_step(recorder, model=model, update_num=41)  # fairseq's Trainer passes these by keyword
    assert task.epochs == [3] and clock.epoch == 3
    assert recorder.seen == [("epoch", 3), 41]  # the listener heard the epoch; the step saw its update number
    Task().begin_epoch(9, model)  # another instance of the class is left alone
    assert clock.epoch == 3
    assert trained_models()[0] is model


def test_listeners_are_weak_and_replaced_per_owner():
    clock = clock_of(torch.nn.Linear(1, 1))
    first = Recorder(clock)
    clock.on_epoch(first.on_epoch)
    clock.on_epoch(first.on_epoch)  # the same owner again: still one call per epoch
    clock.begin_epoch(1)
    assert first.seen == [("epoch", 1)]
    del first
    clock.begin_epoch(2)  # a freed listener is gone, not an error


def prune_args(**kw):
    """test_pruning's optimizer flags, with a short schedule (0.5 by update 4, masks every 2) and a small lr."""
    return args_for(**{**dict(lslo_sparsity="0.5", lslo_prune_end=4, lslo_prune_interval=2, lr=[0.01]), **kw})


def test_a_real_task_built_model_is_found_and_told_by_its_task(dict_dir):
    """translation_multi_simple_epoch (unchanged) builds the model; its hooks reach the pruning optimizer."""
    task, model = build_task_and_model(dict_dir, "lslo_transformer", LSLO_FLAGS)
    assert type(task).__name__ == "TranslationMultiSimpleEpochTask"  # the user's task, not one of ours
    assert {"begin_epoch", "optimizer_step"} <= set(vars(task))  # wrapped on this instance; the class untouched
    opt = optim.build_optimizer(prune_args(), trainable_parameters(model))  # parameters only, as fairseq does
    assert isinstance(opt, LSLoPruningOptimizer) and opt.model is model
    for p in trainable_parameters(model):
        p.grad = torch.randn_like(p)
    task.optimizer_step(opt, model=model, update_num=1)  # completes update 2: a mask update
    assert opt.last_report is not None and opt.last_report.update == 2
    assert opt.pruning_state["steps"] == 1

    epochs = optim.build_optimizer(prune_args(lslo_prune_unit="epochs", lslo_prune_start=1, lslo_prune_end=3,
                                              lslo_prune_interval=None), trainable_parameters(model))
    task.begin_epoch(2, model)  # before the epoch's first batch
    assert epochs.last_report is not None and epochs.last_report.update == 2
    assert epochs.pruning_state["epoch"] == 2


def test_without_an_update_number_the_step_is_a_clear_error():
    from test_pruning import TinyLSLo

    model = TinyLSLo()
    model.lslo_clock.updates_done = None
    opt = optim.build_optimizer(prune_args(), trainable_parameters(model))
    for p in trainable_parameters(model):
        p.grad = torch.zeros_like(p)
    with pytest.raises(LSLoConfigError, match="the update number was never told.*before_step"):
        opt.step()
