"""Architecture hyper-parameters from the base checkpoint fairseq will load.

fairseq builds the model from the command line (``--arch`` and its defaults) *before* it
loads ``--finetune-from-model``.  A hyper-parameter that changes no tensor shape (attention
heads, pre/post-norm, activation, embedding scaling, ...) then loads without an error and
computes something else.  :func:`inherit_base_architecture`, called by the ``lslo_*``
architecture functions while fairseq parses the command line, fixes that:

* every transformer hyper-parameter the user did not give is taken from the base
  checkpoint's own stored configuration (``args`` of older fairseq, ``cfg.model`` of newer);
* one given on the command line that differs from the checkpoint is an error naming the flag
  and both values (dropout rates may differ: a training choice; layerdrop and other choices of
  the run are never inherited, see ``RUN_CHOICES``).

Which flags the user gave: fairseq adds model flags with ``argument_default=SUPPRESS``, so
when the architecture function runs at the end of ``parse_args_and_arch`` only the model
flags on the command line are attributes of ``args``.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Tuple

from ..checkpoint_io import CheckpointError, load_checkpoint
from ..errors import LSLoConfigError

logger = logging.getLogger(__name__)

# Dropout rates: taken from the checkpoint when not given, but free to differ (a training choice
# that does not change what the trained weights compute).
REGULARISATION: FrozenSet[str] = frozenset({
    "dropout", "attention_dropout", "activation_dropout", "relu_dropout", "adaptive_softmax_dropout",
})
# Never taken from the checkpoint, free to differ: choices of the run, not of the model.
# Layerdrop: the pretraining run's (0.05 in the 615M's args) would skip whole layers, whose
# adapters then get no gradient in that batch; the authors fine-tune with 0 (the default here).
# Embedding paths: files of the machine the checkpoint was trained on (its weights replace them).
RUN_CHOICES: FrozenSet[str] = frozenset({
    "encoder_layerdrop", "decoder_layerdrop", "checkpoint_activations", "offload_activations",
    "min_params_to_wrap", "quant_noise_pq", "quant_noise_pq_block_size", "quant_noise_scalar",
    "base_shuffle", "export", "encoder_xformers_att_config", "decoder_xformers_att_config",
    "encoder_embed_path", "decoder_embed_path",
})
# Hyper-parameters that change what the weights compute but no tensor shape or key: a mismatch
# would load silently.  (Used to word the error; every other mismatch is an error too, though
# fairseq's strict loading would also catch it: pre-norm adds a final layer norm, learned
# positions a table, ...)
SHAPE_NEUTRAL: FrozenSet[str] = frozenset({
    "encoder_attention_heads", "decoder_attention_heads", "activation_fn", "no_scale_embedding",
    "cross_self_attention", "encoder_layers_to_keep", "decoder_layers_to_keep",
})
# Length limits: they matter to the weights only with learned positional embeddings (the
# table's size); with sinusoidal ones a given value that differs is just a length limit.
POSITION_LIMITS: Dict[str, str] = {"max_source_positions": "encoder_learned_pos",
                                   "max_target_positions": "decoder_learned_pos"}


@functools.lru_cache(maxsize=1)
def transformer_keys() -> FrozenSet[str]:
    """Every hyper-parameter of fairseq's transformer: its model flags and what its base arch fills."""
    from fairseq.models.transformer import TransformerModel, base_architecture

    parser = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    TransformerModel.add_args(parser)
    filled = argparse.Namespace()
    base_architecture(filled)
    return frozenset({a.dest for a in parser._actions} | set(vars(filled)))


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


# --- which checkpoint ----------------------------------------------------------------------
def base_checkpoint_path(args) -> Tuple[Optional[str], str]:
    """(path, flag) of the checkpoint fairseq-train will load into the model, as fairseq decides it.

    Resuming (``checkpoint_last.pt`` in ``--save-dir`` exists) wins over
    ``--finetune-from-model``, exactly as in fairseq's ``checkpoint_utils.load_checkpoint``.
    """
    restore = getattr(args, "restore_file", None)
    finetune = getattr(args, "finetune_from_model", None)
    if restore == "checkpoint_last.pt":
        last = os.path.join(getattr(args, "save_dir", None) or "checkpoints", restore)
        if os.path.isfile(last):
            return last, "--restore-file (checkpoint_last.pt in --save-dir)"
        if finetune:
            return finetune, "--finetune-from-model"
        return None, ""
    if restore and os.path.isfile(restore):
        return restore, "--restore-file"
    return None, ""


# --- what the checkpoint stores ------------------------------------------------------------
def stored_model_args(state: Mapping[str, Any], path: str) -> argparse.Namespace:
    """A copy of the model's configuration as stored: ``args`` (older fairseq) or ``cfg.model``."""
    args = state.get("args")
    if args is not None:  # fairseq uses args when both are there (checkpoint_utils._upgrade_state_dict)
        stored = argparse.Namespace(**vars(args))
        if hasattr(stored, "max_positions") and not hasattr(stored, "max_source_positions"):
            stored.max_source_positions = stored.max_target_positions = stored.max_positions
        return stored
    cfg = state.get("cfg")
    model = _get(cfg, "model") if cfg is not None else None
    if model is None:
        raise CheckpointError(f"{path}: stores neither 'args' nor 'cfg.model': its architecture cannot be read")
    return argparse.Namespace(**_as_dict(model))


def _get(container, key):
    try:
        return container[key]
    except (KeyError, TypeError):
        return getattr(container, key, None)


def _as_dict(model) -> Dict[str, Any]:
    if isinstance(model, argparse.Namespace):
        return dict(vars(model))
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(model, DictConfig):
            return dict(OmegaConf.to_container(model, resolve=True))
    except ImportError:
        pass
    return dict(model)


def completed_architecture(stored: argparse.Namespace, path: str) -> Dict[str, Any]:
    """The stored values plus what the checkpoint's own architecture function fills (as fairseq
    does when it loads the checkpoint): older checkpoints lack flags added to fairseq later."""
    from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY
    from fairseq.models.transformer import TransformerModel

    arch = getattr(stored, "arch", None) or getattr(stored, "_name", None)
    model_class = ARCH_MODEL_REGISTRY.get(arch)
    if model_class is not None and not issubclass(model_class, TransformerModel):
        raise LSLoConfigError(
            f"{path}: architecture {arch!r} ({model_class.__name__}) is not a fairseq transformer; "
            f"lslo_transformer needs a transformer-family base checkpoint"
        )
    completed = argparse.Namespace(**vars(stored))
    if arch in ARCH_CONFIG_REGISTRY:
        completed._name = arch  # marks a stored configuration (see is_command_line)
        ARCH_CONFIG_REGISTRY[arch](completed)
    else:
        logger.warning("LSLo: %s: architecture %r is not registered in this fairseq; using its stored "
                       "values as they are", path, arch)
    keys = transformer_keys()
    return {k: v for k, v in vars(completed).items() if k in keys}


@functools.lru_cache(maxsize=8)
def _read(path: str, mtime: float, size: int) -> Tuple[Tuple[str, Any], ...]:
    # mmap: the weights are mapped, not read; only the configuration is touched
    state = load_checkpoint(path, mmap=True)
    arch = completed_architecture(stored_model_args(state, path), path)
    return tuple(sorted(arch.items()))


def read_base_architecture(path: str) -> Dict[str, Any]:
    """The transformer hyper-parameters a fairseq checkpoint was built with (cached per file)."""
    try:
        st = os.stat(path)
    except OSError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    return dict(_read(os.path.abspath(path), st.st_mtime, st.st_size))


# --- the rule ------------------------------------------------------------------------------
def is_command_line(args) -> bool:
    """True while fairseq parses a command line; False for a configuration stored in a checkpoint
    (fairseq's own conversion gives those ``_name``), where every value is already the model's."""
    return isinstance(args, argparse.Namespace) and not hasattr(args, "_name")


def inherit_base_architecture(args, arch_defaults: Optional[Mapping[str, Any]] = None) -> Optional[str]:
    """Fill args from the base checkpoint (see the module docstring); returns its path or None.

    ``arch_defaults``: the values the chosen ``--arch`` would set; where the checkpoint differs
    the checkpoint wins and a warning says so.
    """
    if not is_command_line(args):
        return None
    path, source = base_checkpoint_path(args)
    if path is None:
        return None
    if not os.path.isfile(path):
        raise LSLoConfigError(f"{source} {path}: no such checkpoint file (its architecture is read from it)")
    base = read_base_architecture(path)
    conflicts = given_conflicts(args, base)
    if conflicts:
        raise LSLoConfigError(
            f"architecture flags differ from the base checkpoint {path} ({source}); leave them out to take "
            f"the checkpoint's values: " + "; ".join(conflicts)
        )
    overridden = []
    for key, value in base.items():
        if key in RUN_CHOICES or key in POSITION_LIMITS:
            continue
        if not hasattr(args, key):
            setattr(args, key, value)
            if arch_defaults and key in arch_defaults and arch_defaults[key] != value:
                overridden.append(f"{key}={value} (--arch {getattr(args, 'arch', '?')}: {arch_defaults[key]})")
    inherit_position_limits(args, base)
    dropped = [f"{k}={base[k]}" for k in ("encoder_layerdrop", "decoder_layerdrop")
               if base.get(k) and not hasattr(args, k)]
    if dropped:
        logger.info("LSLo: the base checkpoint was trained with %s; fine-tuning uses 0 unless the flag is "
                    "given", ", ".join(dropped))
    if overridden:
        logger.warning("LSLo: the base checkpoint %s sets %s", path, ", ".join(overridden))
    logger.info("LSLo: architecture from %s (%s)", path, describe(base))
    return path


def given_conflicts(args, base: Mapping[str, Any]) -> List[str]:
    """'--flag: command line X, checkpoint Y' for each given flag that does not match the base."""
    out = []
    for key in sorted(transformer_keys()):
        if key in REGULARISATION or key in RUN_CHOICES or key in POSITION_LIMITS:
            continue
        if not hasattr(args, key) or key not in base or same(getattr(args, key), base[key]):
            continue
        why = ("it changes no tensor shape, so the weights would load and compute something else"
               if key in SHAPE_NEUTRAL else "the model would not match the checkpoint's weights")
        out.append(f"{flag(key)}: command line {getattr(args, key)!r}, checkpoint {base[key]!r} ({why})")
    return out


def inherit_position_limits(args, base: Mapping[str, Any]) -> None:
    """Not given: the checkpoint's.  Given and different: an error only for learned positions."""
    for key, learned in POSITION_LIMITS.items():
        if key not in base:
            continue
        if not hasattr(args, key):
            setattr(args, key, base[key])
        elif not same(getattr(args, key), base[key]) and base.get(learned) and not base.get(
                "no_token_positional_embeddings"):
            raise LSLoConfigError(
                f"{flag(key)}: command line {getattr(args, key)!r}, checkpoint {base[key]!r} (the "
                f"checkpoint's learned positional embeddings have {base[key]} positions)"
            )


def same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b or str(a) == str(b)


def describe(base: Mapping[str, Any]) -> str:
    names = ("encoder_layers", "decoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim",
             "encoder_attention_heads", "encoder_normalize_before", "activation_fn")
    return ", ".join(f"{k}={base[k]}" for k in names if k in base)
