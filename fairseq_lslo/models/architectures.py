"""The named architectures of ``lslo_transformer`` and the defaults every one of them fills in.

``lslo_base_architecture`` fills the LSLo flags not given (from ``--lslo-adapters FILE`` first,
then the defaults and ``--lslo-preset``) and fairseq's transformer defaults; the named ones
(:data:`ARCHITECTURES`, registered by :mod:`.lslo_transformer`) take every dimension from the
base checkpoint when there is one, else the values below.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict

from fairseq.models.transformer import base_architecture

from ..modules.adapter_file import load_adapters
from ..modules.placement import compact_routing
from ..modules.spec import PARAMETERISATION, resolve_preset
from .base_architecture import inherit_base_architecture
from .bf16_device import keep_bf16_off_tpu


def lslo_base_architecture(args):
    if getattr(args, "lslo_adapters", None) and os.path.exists(args.lslo_adapters):
        fill_args_from_adapters(args, args.lslo_adapters)
    args.lslo_rank = getattr(args, "lslo_rank", None) or "2"
    if getattr(args, "lslo_alpha", None) is None:
        args.lslo_alpha = 1.0
    args.lslo_encoder_positions = getattr(args, "lslo_encoder_positions", None) or "fc1,fc2"
    args.lslo_decoder_positions = getattr(args, "lslo_decoder_positions", None) or "fc1,fc2"
    args.lslo_encoder_routing = getattr(args, "lslo_encoder_routing", None) or "auto"
    args.lslo_decoder_routing = getattr(args, "lslo_decoder_routing", None) or "auto"
    resolve_preset(args)
    base_architecture(args)


def fill_args_from_adapters(args, path: str) -> None:
    """LSLo flags the user did not give are taken from the adapter file's configuration."""
    spec, _ = load_adapters(path)
    ranks = {}
    for (code, group), rank in zip(spec.languages, spec.ranks):
        ranks.setdefault(group, rank)
    values = {
        "lslo_langs": ",".join(f"{code}:{group}" for code, group in spec.languages),
        "lslo_rank": ",".join(f"{g}:{r}" for g, r in ranks.items()),
        "lslo_alpha": spec.alpha,
        "lslo_shared_rank": spec.shared_rank,
        "lslo_encoder_positions": ",".join(spec.encoder.positions) or "none",
        "lslo_decoder_positions": ",".join(spec.decoder.positions) or "none",
        "lslo_encoder_routing": compact_routing(spec.encoder.routing),
        "lslo_decoder_routing": compact_routing(spec.decoder.routing),
    }
    if getattr(args, "lslo_preset", None) in (None, ""):
        # with a preset given, the preset and the flags decide the parameterisation (a mismatch
        # with the file is then reported by load_lslo_adapters)
        values.update({dest: getattr(spec, name) for dest, (name, _) in PARAMETERISATION.items()})
        values["lslo_ffn_slice_offset"] = spec.ffn_slice_offset
    for name, value in values.items():
        if getattr(args, name, None) in (None, ""):
            setattr(args, name, value)
    # the kept ranks of a rank-pruned export are part of the file's shapes, never a flag
    args.lslo_bank_ranks = json.dumps(spec.bank_ranks, sort_keys=True) if spec.bank_ranks else None


def lslo_transformer(args):
    """Any fairseq transformer: with a base checkpoint, every dimension comes from it."""
    keep_bf16_off_tpu(args)
    inherit_base_architecture(args)
    lslo_base_architecture(args)


def m2m100_values(dim: int, ffn: int, layers: int) -> Dict[str, Any]:
    """The FLORES-101 M2M-100 checkpoints as their converted configurations describe them:
    pre-norm, shared embeddings, relu, dropout 0.1, 16 heads.  A base checkpoint's own stored
    values win over these (``inherit_base_architecture``)."""
    values: Dict[str, Any] = {}
    for side in ("encoder", "decoder"):
        values.update({
            f"{side}_embed_dim": dim, f"{side}_ffn_embed_dim": ffn, f"{side}_layers": layers,
            f"{side}_attention_heads": 16, f"{side}_normalize_before": True,
        })
    values.update({
        "share_all_embeddings": True, "share_decoder_input_output_embed": True, "activation_fn": "relu",
        "dropout": 0.1, "attention_dropout": 0.1, "max_source_positions": 1024, "max_target_positions": 1024,
    })
    return values


def _m2m100(args, values: Dict[str, Any]) -> None:
    keep_bf16_off_tpu(args)
    inherit_base_architecture(args, values)
    for key, value in values.items():
        setattr(args, key, getattr(args, key, value))
    lslo_base_architecture(args)


def lslo_m2m100_615m(args):
    _m2m100(args, m2m100_values(dim=1024, ffn=4096, layers=12))


def lslo_m2m100_175m(args):
    _m2m100(args, m2m100_values(dim=512, ffn=2048, layers=6))


#: architecture name -> the function that fills its arguments
ARCHITECTURES: Dict[str, Callable[[Any], None]] = {
    "lslo_transformer": lslo_transformer,
    "lslo_m2m100_615m": lslo_m2m100_615m,
    "lslo_m2m100_175m": lslo_m2m100_175m,
}
