"""``lslo-merge``: fold one direction's adapters into the base weights -> a plain fairseq transformer.

    lslo-merge CHECKPOINT --source-lang en --target-lang de -o en-de.pt

Source-routed layers take the source language's adapter, target-routed layers the target
language's, shared layers the shared one, ``learn`` layers their softmax mixture.  The
output is an ordinary ``transformer`` checkpoint: ``fairseq-generate`` loads it without
``--user-dir`` (its configuration holds only plain types, so torch's safe loader accepts it),
and it translates that one direction exactly as the LSLo model does.
"""
from __future__ import annotations

import argparse
import sys
from argparse import Namespace
from typing import Any, Dict, List, Optional

import torch

from ..checkpoint_io import CheckpointError, atomic_torch_save, load_checkpoint
from ..languages import LSLoConfigError
from ..modules.adapter_state import group_adapters, module_delta
from ..modules.lslo_linear import is_lslo_key
from ..modules.spec import LSLoSpec

PLAIN_ARCH = "transformer"


def language_id(spec: LSLoSpec, code: str, flag: str) -> int:
    if code not in spec.codes:
        raise LSLoConfigError(f"{flag} {code!r} is not a language of this checkpoint ({', '.join(spec.codes)})")
    return spec.codes.index(code)


@torch.no_grad()
def merge_model_state(
    model: Dict[str, torch.Tensor], src: str, tgt: str, where: str = "the checkpoint"
) -> Dict[str, torch.Tensor]:
    """A new state dict: every LSLo module's direction delta added to its base weight, LSLo keys gone."""
    spec = LSLoSpec.from_state(model, where)
    src_id = language_id(spec, src, "--source-lang")
    tgt_id = language_id(spec, tgt, "--target-lang")
    merged = {k: v for k, v in model.items() if not is_lslo_key(k)}
    for module, adapters in group_adapters(model).items():
        key = f"{module}.weight"
        if key not in merged:
            raise LSLoConfigError(f"LSLo adapters for {module} but no base weight {key} in the checkpoint")
        base = merged[key]
        delta = module_delta(spec, module, adapters, src_id, tgt_id)
        if delta.shape != base.shape:
            raise LSLoConfigError(f"{module}: adapter shape {tuple(delta.shape)} != base weight {tuple(base.shape)}")
        merged[key] = (base.double() + delta.double()).to(base.dtype)
    return merged


def _plain(value: Any) -> Any:
    """Namespaces (not loadable by torch's safe loader without the plugin) -> dicts, recursively."""
    if isinstance(value, Namespace):
        value = vars(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def plain_model_args(model_args: Any) -> Dict[str, Any]:
    """The model section of a config, rewritten for fairseq's own ``transformer`` architecture."""
    from fairseq.models.transformer import base_architecture

    args = Namespace(**{k: v for k, v in _plain(model_args).items() if not k.startswith("lslo_")})
    args.arch = args._name = PLAIN_ARCH
    base_architecture(args)  # every dimension explicit (fills only what is missing)
    args.user_dir = None
    return vars(args)


def plain_checkpoint(state: Dict[str, Any], src: str, tgt: str, where: str = "the checkpoint") -> Dict[str, Any]:
    """A fairseq ``transformer`` checkpoint for one direction of the LSLo checkpoint ``state``."""
    cfg = state.get("cfg")
    if cfg is None and isinstance(state.get("args"), Namespace):
        from fairseq.dataclass.utils import convert_namespace_to_omegaconf
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(convert_namespace_to_omegaconf(state["args"]), resolve=True)
    if cfg is None:
        raise CheckpointError("the checkpoint has neither 'cfg' nor 'args': cannot tell the model's dimensions")
    cfg = _plain(dict(cfg))
    cfg["model"] = plain_model_args(cfg["model"])
    if isinstance(cfg.get("task"), dict):
        cfg["task"] = {k: v for k, v in cfg["task"].items() if not k.startswith("lslo_")}
        cfg["task"]["arch"] = PLAIN_ARCH
        cfg["task"]["user_dir"] = None
    if isinstance(cfg.get("common"), dict):
        cfg["common"]["user_dir"] = None
    history = _plain(state.get("optimizer_history") or [])
    for h in history:
        h.pop("optimizer", None)
    return {
        "args": None,
        "cfg": cfg,
        "model": merge_model_state(state["model"], src, tgt, where),
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lslo-merge",
        description="Merge one direction's LSLo adapters into the base weights and write a plain fairseq "
                    "'transformer' checkpoint (fairseq-generate loads it without --user-dir).",
    )
    p.add_argument("checkpoint", help="LSLo checkpoint (e.g. checkpoints/checkpoint_best.pt)")
    p.add_argument("--source-lang", "-s", required=True, help="source language code of the direction")
    p.add_argument("--target-lang", "-t", required=True, help="target language code of the direction")
    p.add_argument("-o", "--output", required=True, help="where to write the merged checkpoint (.pt)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        state = load_checkpoint(args.checkpoint)
        merged = plain_checkpoint(state, args.source_lang, args.target_lang, args.checkpoint)
        atomic_torch_save(merged, args.output)
    except (CheckpointError, LSLoConfigError, ValueError) as e:
        print(f"lslo-merge: error: {e}", file=sys.stderr)
        return 2
    print(f"lslo-merge: wrote {args.output} ({args.source_lang}->{args.target_lang}, plain '{PLAIN_ARCH}' checkpoint)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
