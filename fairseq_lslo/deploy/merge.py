"""``lslo-merge``: fold a direction's adapters into the base weights -> a plain fairseq transformer.

    lslo-merge CHECKPOINT --source-lang en --target-lang de -o en-de.pt
    lslo-merge CHECKPOINT --all-directions -o merged/        # merged/en-de.pt, merged/de-en.pt, ...

Source-routed layers take the source language's adapter, target-routed layers the target
language's, shared layers the shared one, ``learn`` layers their softmax mixture.  The
output is an ordinary ``transformer`` checkpoint in the layout fairseq itself writes
(see :func:`fairseq_layout_checkpoint`): ``fairseq-generate`` loads it without
``--user-dir`` on torch >= 2.6 (safe loading), CTranslate2's ``ct2-fairseq-converter``
converts it, and it translates that one direction exactly as the LSLo model does.
"""
from __future__ import annotations

import os
import tempfile
from argparse import Namespace
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ..checkpoint_io import CheckpointError, atomic_torch_save
from ..errors import LSLoConfigError
from ..modules.adapter_state import ModuleAdapters, group_adapters, module_delta
from ..modules.keys import is_lslo_key
from ..modules.spec import LSLoSpec

PLAIN_ARCH = "transformer"
#: the key of a merged checkpoint's model section that names the direction it was made for ("en-de");
#: not ``lslo_``-prefixed: the plain model section carries no LSLo flag
MERGED_KEY = "merged_direction"
Direction = Tuple[str, str]


def language_id(spec: LSLoSpec, code: str, flag: str) -> int:
    if code not in spec.codes:
        raise LSLoConfigError(f"{flag} {code!r} is not a language of this checkpoint ({', '.join(spec.codes)})")
    return spec.codes.index(code)


class DirectionMerger:
    """An LSLo model state read once; :meth:`merged_state` folds any direction's adapters into it."""

    def __init__(self, model: Mapping[str, torch.Tensor], where: str = "the checkpoint"):
        self.spec = LSLoSpec.from_state(model, where)
        self.base = {k: v for k, v in model.items() if not is_lslo_key(k)}
        self.adapters: Dict[str, ModuleAdapters] = group_adapters(model)
        for module in self.adapters:
            if f"{module}.weight" not in self.base:
                raise LSLoConfigError(f"{where}: LSLo adapters for {module} but no base weight {module}.weight")

    def check(self, src: str, tgt: str, what: str = "") -> Tuple[int, int]:
        """Language ids of the direction; an error naming it when a language is not the checkpoint's."""
        try:
            return language_id(self.spec, src, "--source-lang"), language_id(self.spec, tgt, "--target-lang")
        except LSLoConfigError as e:
            raise LSLoConfigError(f"direction {src}-{tgt}{what}: {e}") from None

    @torch.no_grad()
    def merged_state(self, src: str, tgt: str) -> Dict[str, torch.Tensor]:
        """A new state dict: every LSLo module's direction delta added to its base weight (base tensors shared)."""
        src_id, tgt_id = self.check(src, tgt)
        merged = dict(self.base)
        for module, adapters in self.adapters.items():
            key = f"{module}.weight"
            base = self.base[key]
            delta = module_delta(self.spec, module, adapters, src_id, tgt_id)
            if delta.shape != base.shape:
                raise LSLoConfigError(f"{module}: adapter shape {tuple(delta.shape)} != base weight {tuple(base.shape)}")
            merged[key] = (base.double() + delta.double()).to(base.dtype)
        return merged


def merge_model_state(
    model: Dict[str, torch.Tensor], src: str, tgt: str, where: str = "the checkpoint"
) -> Dict[str, torch.Tensor]:
    """A new state dict: every LSLo module's direction delta added to its base weight, LSLo keys gone."""
    return DirectionMerger(model, where).merged_state(src, tgt)


def _plain(value: Any) -> Any:
    """Namespaces and dicts (of any kind) -> plain dicts, recursively."""
    if isinstance(value, Namespace):
        value = vars(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def namespace_dict(values: Mapping[str, Any]) -> "OrderedDict[str, Any]":
    """An OrderedDict whose entries are also its attributes.

    fairseq stores a legacy model's configuration as an ``argparse.Namespace``, which torch's
    safe loader (``weights_only``, the default since torch 2.6) refuses without an allow-list.
    An OrderedDict's attributes survive safe loading (torch restores them, as it does the
    ``_metadata`` of state dicts), so this one object reads as a dict config to fairseq
    (``OmegaConf.create`` takes its entries) and as a Namespace to readers that use attribute
    access, such as CTranslate2's converter (``cfg["model"].arch``, ``args.data = ...``).
    """
    out: "OrderedDict[str, Any]" = OrderedDict(values)
    out.__dict__.update(values)
    return out


def plain_model_args(model_args: Any, src: Optional[str] = None, tgt: Optional[str] = None) -> Dict[str, Any]:
    """The model section of a config, rewritten for fairseq's own ``transformer`` architecture."""
    from fairseq.models.transformer import base_architecture

    args = Namespace(**{k: v for k, v in _plain(model_args).items() if not k.startswith("lslo_")})
    args.arch = args._name = PLAIN_ARCH
    base_architecture(args)  # every dimension explicit (fills only what is missing)
    args.user_dir = None
    if src is not None:  # readers that set up the task from the model section (CTranslate2) need no flags
        args.source_lang, args.target_lang = src, tgt
    return vars(args)


def config_of(state: Mapping[str, Any]) -> Dict[str, Any]:
    """The checkpoint's configuration as plain dicts (from ``cfg``, or converted from legacy ``args``)."""
    cfg = state.get("cfg")
    if cfg is None and isinstance(state.get("args"), Namespace):
        from fairseq.dataclass.utils import convert_namespace_to_omegaconf
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(convert_namespace_to_omegaconf(state["args"]), resolve=True)
    if cfg is None:
        raise CheckpointError("the checkpoint has neither 'cfg' nor 'args': cannot tell the model's dimensions")
    return _plain(dict(cfg))


def merged_direction(state: Mapping[str, Any]) -> Optional[str]:
    """``"en-de"`` for a checkpoint written by lslo-merge (the model section's ``merged_direction``, or the
    top-level entry older merged files carry alone), else None."""
    model_cfg = (state.get("cfg") or {}).get("model") if isinstance(state.get("cfg"), Mapping) else None
    made_for = getattr(model_cfg, MERGED_KEY, None) or (model_cfg.get(MERGED_KEY) if isinstance(model_cfg, Mapping) else None)
    if made_for:
        return str(made_for)
    merged = state.get("lslo_merged") or {}
    if merged.get("source_lang") and merged.get("target_lang"):
        return f"{merged['source_lang']}-{merged['target_lang']}"
    return None


def fairseq_layout_checkpoint(state: Mapping[str, Any], model: Dict[str, torch.Tensor], src: str, tgt: str) -> Dict[str, Any]:
    """A checkpoint laid out as fairseq's trainer writes one (``args: None``, ``cfg`` with the model and
    task sections readable by attribute), holding ``model`` as a plain ``transformer`` for ``src``-``tgt``."""
    cfg = config_of(state)
    # the direction it was made for: with the plugin, fairseq's tools and the Translator refuse any other
    cfg["model"] = namespace_dict({**plain_model_args(cfg["model"], src, tgt), MERGED_KEY: f"{src}-{tgt}"})
    if isinstance(cfg.get("task"), dict):
        task = {k: v for k, v in cfg["task"].items() if not k.startswith("lslo_")}
        task.update(arch=PLAIN_ARCH, user_dir=None, source_lang=src, target_lang=tgt)
        cfg["task"] = namespace_dict(task)
    if isinstance(cfg.get("common"), dict):
        cfg["common"]["user_dir"] = None
    history = _plain(state.get("optimizer_history") or [])
    for h in history:
        h.pop("optimizer", None)
    return {
        "args": None,
        "cfg": cfg,
        "model": model,
        "criterion": None,
        "optimizer_history": history or [
            {"criterion_name": "CrossEntropyCriterion", "optimizer_name": "none",
             "lr_scheduler_state": {"best": None}, "num_updates": 0}
        ],
        "task_state": _plain(state.get("task_state") or {}),
        "extra_state": _plain({k: v for k, v in (state.get("extra_state") or {}).items() if k != "train_iterator"}),
        "last_optimizer_state": None,
        "lslo_merged": {"source_lang": src, "target_lang": tgt},
    }


def plain_checkpoint(state: Dict[str, Any], src: str, tgt: str, where: str = "the checkpoint") -> Dict[str, Any]:
    """A fairseq ``transformer`` checkpoint for one direction of the LSLo checkpoint ``state``."""
    return fairseq_layout_checkpoint(state, merge_model_state(state["model"], src, tgt, where), src, tgt)


def trained_directions(state: Mapping[str, Any], spec: LSLoSpec) -> List[Direction]:
    """The checkpoint's ``--lang-pairs`` (its task configuration), else every ordered pair of its languages."""
    try:
        pairs = (config_of(state).get("task") or {}).get("lang_pairs")
    except CheckpointError:
        pairs = None
    if isinstance(pairs, str):
        pairs = pairs.split(",")
    if pairs:
        return [parse_direction(p, "the checkpoint's --lang-pairs") for p in pairs]
    return [(s, t) for s in spec.codes for t in spec.codes if s != t]


def parse_direction(text: str, where: str) -> Direction:
    parts = text.strip().split("-")
    if len(parts) != 2 or not all(parts):
        raise LSLoConfigError(f"{where}: {text!r} is not a direction SRC-TGT (e.g. en-de)")
    return parts[0], parts[1]


def writable_directory(path: str, flag: str) -> str:
    """``path`` as a directory this process can create files in, or an error naming it."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise CheckpointError(f"{flag} {path}: exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise CheckpointError(f"{flag} {path}: cannot write there ({e.strerror or e})") from None
    return path


def write_directions(state: Dict[str, Any], directions: Sequence[Direction], out_dir: str,
                     where: str = "the checkpoint") -> List[str]:
    """One merged checkpoint per direction in ``out_dir`` (``SRC-TGT.pt``), the LSLo state read once.

    Every direction is checked before anything is written; each file is written atomically.
    """
    merger = DirectionMerger(state["model"], where)
    for src, tgt in directions:
        merger.check(src, tgt)
    writable_directory(out_dir, "-o/--output")
    written = []
    for src, tgt in directions:
        path = os.path.join(out_dir, f"{src}-{tgt}.pt")
        atomic_torch_save(fairseq_layout_checkpoint(state, merger.merged_state(src, tgt), src, tgt), path)
        written.append(path)
    return written
