"""How an LSLo model learns the epoch fairseq-train is in, and tells whoever listens (pruning).

fairseq tells the *task*, not the model or the optimizer, that an epoch begins:
``Trainer.begin_epoch(epoch)`` (called by ``fairseq_cli.train`` before the first batch of every
epoch, including the epoch a run resumes in, mid-epoch or not) calls
``task.begin_epoch(epoch, model)``.  The task that builds an LSLo model is therefore asked, at
build time, to pass that call on to the model (:func:`follow_task_epochs`); the model keeps the
number (``lslo_epoch``) and calls its epoch listener, if any (:func:`listen_to_epochs`).  This
path involves no optimizer, so it is the same under every optimizer wrapper fairseq uses.
"""
from __future__ import annotations

import weakref
from typing import Callable, List, Optional

import torch.nn as nn

#: task -> the models it built that follow its epochs
_FOLLOWERS: "weakref.WeakKeyDictionary[object, List[weakref.ReferenceType]]" = weakref.WeakKeyDictionary()
#: model -> its epoch listener (a weak bound method: the listener's owner may be freed)
_LISTENERS: "weakref.WeakKeyDictionary[nn.Module, weakref.WeakMethod]" = weakref.WeakKeyDictionary()


def follow_task_epochs(task, model: nn.Module) -> None:
    """After ``task.begin_epoch(epoch, ...)``, call ``model.set_epoch(epoch)`` (weakly held)."""
    if task is None or not hasattr(task, "begin_epoch"):
        return
    try:
        followers = _FOLLOWERS.get(task)
    except TypeError:  # an unhashable task cannot be followed; nothing to announce then
        return
    if followers is None:
        followers = _FOLLOWERS[task] = []
        original = task.begin_epoch

        def begin_epoch(epoch, *args, **kwargs):
            result = original(epoch, *args, **kwargs)
            for ref in list(followers):
                follower = ref()
                if follower is not None:
                    follower.set_epoch(epoch)
            return result

        task.begin_epoch = begin_epoch  # this task instance only; its class stays as it is
    followers[:] = [r for r in followers if r() is not None and r() is not model]
    followers.append(weakref.ref(model))


def listen_to_epochs(model: nn.Module, method: Callable[[int], None]) -> None:
    """``method(epoch)`` (a bound method) is called at each epoch start; replaces earlier listeners."""
    _LISTENERS[model] = weakref.WeakMethod(method)


def announce_epoch(model: nn.Module, epoch: int) -> None:
    """Record ``epoch`` as ``model.lslo_epoch`` and call the model's epoch listener."""
    model.lslo_epoch = int(epoch)
    ref = _LISTENERS.get(model)
    listener = ref() if ref is not None else None
    if listener is not None:
        listener(int(epoch))


def current_epoch(model: nn.Module) -> Optional[int]:
    """The epoch fairseq last announced to ``model`` (None: none yet)."""
    epoch = getattr(model, "lslo_epoch", None)
    return int(epoch) if epoch is not None else None
