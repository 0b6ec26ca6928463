"""Reading and writing checkpoints safely.

torch >= 2.6 loads with ``weights_only=True``: only tensors and allow-listed classes are
unpickled.  fairseq checkpoints also hold an ``argparse.Namespace`` (``args``) and, when
saved by older fairseq versions, omegaconf containers.  Importing this package
allow-lists exactly those classes, so ``fairseq-generate --user-dir fairseq_lslo --path``
works with no environment variable and without turning the safety check off.
"""
from __future__ import annotations

import argparse
import collections
import functools
import os
import pickle
import re
import shutil
import typing
import zipfile
from typing import Any, Dict, List

import torch

from lslo_common.atomic import atomic_write

from .errors import LSLoError


def fairseq_checkpoint_globals() -> List[Any]:
    """Classes a fairseq checkpoint may hold besides tensors and plain containers."""
    allowed: List[Any] = [argparse.Namespace, collections.defaultdict, collections.OrderedDict, typing.Any,
                          dict, list, tuple, set, int, float, bool, str]
    try:
        from omegaconf import DictConfig, ListConfig, nodes
        from omegaconf.base import ContainerMetadata, Metadata

        allowed += [DictConfig, ListConfig, ContainerMetadata, Metadata]
        allowed += [getattr(nodes, n) for n in ("AnyNode", "StringNode", "IntegerNode", "FloatNode",
                                                "BooleanNode", "BytesNode", "PathNode") if hasattr(nodes, n)]
    except ImportError:  # omegaconf comes with fairseq; without it there are no such objects
        pass
    return allowed


def allow_fairseq_checkpoints() -> None:
    """Allow-list :func:`fairseq_checkpoint_globals` for ``torch.load(weights_only=True)``."""
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch < 2.4 has no allow-list (and loads with full pickle)
        add(fairseq_checkpoint_globals())


class CheckpointError(LSLoError, RuntimeError):
    """A file given as a checkpoint cannot be used as one."""


def load_checkpoint(path: str, map_location="cpu", mmap: bool = False) -> Dict[str, Any]:
    """Load a fairseq checkpoint (weights_only) with errors that name the file.

    ``mmap``: map the tensors' storage instead of reading it (zip-format files; a legacy-format
    file is read whole), for callers that only need the stored configuration.
    """
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file (e.g. checkpoint_best.pt)")
    allow_fairseq_checkpoints()
    try:
        extra = {"mmap": True} if mmap and zipfile.is_zipfile(path) else {}  # torch >= 2.1
        state = torch.load(path, map_location=map_location, weights_only=True, **extra)
    except Exception as e:  # torch.load on arbitrary bytes raises anything (IndexError, KeyError, ...)
        raise _unreadable(path, e) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: a torch file, but not a fairseq checkpoint (no 'model' entry)")
    return state


def looks_like_torch_file(path: str) -> bool:
    """A zip archive (torch >= 1.6) or a legacy pickle-format torch file."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"  # pickle protocol marker that legacy torch.save writes first


def _unreadable(path: str, error: BaseException) -> CheckpointError:
    """A precise message for a file torch could not load (never advice to disable safe loading)."""
    text = str(error)
    blocked = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if blocked:
        return CheckpointError(
            f"{path}: holds a pickled {blocked.group(1)}, which safe loading (weights_only) does not allow; "
            f"fairseq_lslo allow-lists only what fairseq checkpoints contain"
        )
    if os.path.isfile(path) and not looks_like_torch_file(path):
        return CheckpointError(
            f"{path}: not a readable torch checkpoint (not a complete zip archive as torch.save writes: "
            f"truncated, corrupt, or another kind of file)"
        )
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return CheckpointError(f"{path}: not a readable torch checkpoint (truncated, corrupt, or not a checkpoint): {first}")


def name_unreadable_checkpoints_in_fairseq() -> None:
    """Wrap fairseq's ``load_checkpoint_to_cpu`` so that a damaged file is named in the error.

    Without it a truncated checkpoint ends fairseq-train / fairseq-generate with a bare
    ``OSError: [Errno 22] Invalid argument`` from torch's zip reader.
    """
    from fairseq import checkpoint_utils

    original = checkpoint_utils.load_checkpoint_to_cpu
    if getattr(original, "lslo_wrapped", False):
        return

    @functools.wraps(original)
    def load_checkpoint_to_cpu(path, *args, **kwargs):
        if os.path.isfile(path) and not looks_like_torch_file(path):
            raise _unreadable(path, ValueError("unknown format"))
        try:
            return original(path, *args, **kwargs)
        except FileNotFoundError:
            raise
        except (OSError, RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile) as e:
            raise _unreadable(path, e) from e

    load_checkpoint_to_cpu.lslo_wrapped = True
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu


def make_fairseq_checkpoint_copies_atomic() -> None:
    """Wrap fairseq's ``PathManager.copy`` (local files) to copy into a temp file, then rename.

    fairseq writes the first checkpoint of a save atomically but *copies* it to the others
    (``checkpoint_last.pt``, ``checkpoint_best.pt``) with a plain file copy: a job killed
    during that copy leaves a truncated ``checkpoint_last.pt`` and cannot resume.
    """
    from fairseq.file_io import PathManager

    original = PathManager.copy
    if getattr(original, "lslo_wrapped", False):
        return

    def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if "://" in str(src_path) or "://" in str(dst_path):  # remote storage: fairseq's own way
            return original(src_path, dst_path, overwrite)
        if os.path.exists(dst_path) and not overwrite:
            return False
        with open(src_path, "rb") as src:
            atomic_write(dst_path, lambda f: shutil.copyfileobj(src, f, 1 << 20))
        return True

    copy.lslo_wrapped = True
    PathManager.copy = staticmethod(copy)


def atomic_torch_save(obj: Any, path: str) -> None:
    """Write ``obj`` to a temporary file next to ``path``, then rename it into place."""
    atomic_write(path, lambda f: torch.save(obj, f))
