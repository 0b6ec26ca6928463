"""The exported adapter file: LSLo weights, masks and configuration as safetensors (no pickle).

Format ``lslo-adapters/1``.  The safetensors header metadata (strings) holds

* ``format``: ``lslo-adapters/1``;
* ``lslo_config``: the model's LSLo configuration (the JSON of :class:`LSLoSpec`);
* ``shapes``: JSON ``{key: shape}`` of every factor tensor.

For every factor ``K`` (a state-dict key such as ``encoder.layers.0.fc1.lslo_src.A2``):

* ``K.bits``: uint8, the mask ``K_mask`` flattened in C order and packed 8 per byte
  (bit ``i % 8`` of byte ``i // 8``, least significant first; True = kept);
* ``K.values``: the kept entries of ``K`` in C order (its own dtype), one per set bit.

So a factor with ``n`` entries of which ``k`` are kept takes ``n / 8 + k * itemsize`` bytes:
the file shrinks with the sparsity.  Other LSLo tensors (``lslo_mix``) are stored densely
under their own key.  Pruned entries are read back as zeros with mask False.
"""
from __future__ import annotations

import json
import math
import os
from typing import Dict, Mapping, Tuple

import torch
from torch import Tensor

from lslo_common.atomic import atomic_write

from ..errors import LSLoConfigError
from .keys import MASK_SUFFIX, is_lslo_key
from .spec import CONFIG_KEY, LSLoSpec

FORMAT = "lslo-adapters/1"
_BIT_WEIGHTS = torch.tensor([1 << i for i in range(8)], dtype=torch.uint8)


def pack_bits(mask: Tensor) -> Tensor:
    """Boolean tensor -> uint8 (8 entries per byte, C order, least significant bit first)."""
    flat = mask.reshape(-1).to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros((-flat.numel()) % 8)])
    return (flat.view(-1, 8) * _BIT_WEIGHTS).sum(dim=1, dtype=torch.uint8)


def unpack_bits(bits: Tensor, shape) -> Tensor:
    """Inverse of :func:`pack_bits`."""
    n = math.prod(shape)
    flat = (bits[:, None] & _BIT_WEIGHTS).ne(0).reshape(-1)[:n]
    return flat.view(shape)


def adapter_tensors(state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """The LSLo tensors of a model state dict that an adapter file carries (config aside)."""
    return {k: v for k, v in state.items() if is_lslo_key(k) and k != CONFIG_KEY}


def encode(lslo: Mapping[str, Tensor]) -> Tuple[Dict[str, Tensor], Dict[str, list]]:
    """LSLo tensors -> (safetensors entries, shapes of the sparse factors)."""
    out: Dict[str, Tensor] = {}
    shapes: Dict[str, list] = {}
    for key, value in lslo.items():
        if key.endswith(MASK_SUFFIX):
            continue
        mask = lslo.get(key + MASK_SUFFIX)
        value = value.detach().cpu()
        if mask is None:
            out[key] = value.contiguous()
            continue
        mask = mask.cpu().bool()
        if mask.shape != value.shape:
            raise ValueError(f"{key}: mask shape {tuple(mask.shape)} differs from the tensor's {tuple(value.shape)}")
        out[f"{key}.bits"] = pack_bits(mask)
        out[f"{key}.values"] = value[mask].contiguous()
        shapes[key] = list(value.shape)
    orphans = [k for k in lslo if k.endswith(MASK_SUFFIX) and k[: -len(MASK_SUFFIX)] not in lslo]
    if orphans:
        raise ValueError(f"masks without their tensor: {', '.join(orphans[:4])}")
    return out, shapes


def decode(entries: Mapping[str, Tensor], shapes: Mapping[str, list], path: str) -> Dict[str, Tensor]:
    """Inverse of :func:`encode`: dense tensors (zeros where pruned) and their boolean masks."""
    out: Dict[str, Tensor] = {}
    for key, shape in shapes.items():
        bits, values = entries.get(f"{key}.bits"), entries.get(f"{key}.values")
        if bits is None or values is None:
            raise LSLoConfigError(f"{path}: {key} is listed but its .bits/.values entries are missing")
        mask = unpack_bits(bits, shape)
        if int(mask.sum()) != values.numel():
            raise LSLoConfigError(f"{path}: {key} has {values.numel()} values for {int(mask.sum())} kept entries")
        dense = values.new_zeros(shape)
        dense[mask] = values
        out[key] = dense
        out[key + MASK_SUFFIX] = mask
    for key, value in entries.items():
        if not (key.endswith(".bits") or key.endswith(".values")):
            out[key] = value
    return out


def save_adapters(path: str, spec: LSLoSpec, lslo: Mapping[str, Tensor]) -> int:
    """Write the adapter file atomically; returns its size in bytes."""
    from safetensors.torch import save

    entries, shapes = encode(lslo)
    metadata = {"format": FORMAT, "lslo_config": json.dumps(spec.to_dict()), "shapes": json.dumps(shapes)}
    blob = save(entries, metadata=metadata)
    atomic_write(path, lambda f: f.write(blob))
    return os.path.getsize(path)


def load_adapters(path: str) -> Tuple[LSLoSpec, Dict[str, Tensor]]:
    """(configuration, LSLo state-dict entries incl. masks) from an adapter file; clear errors."""
    from safetensors import SafetensorError, safe_open

    if not os.path.isfile(path):
        raise LSLoConfigError(f"--lslo-adapters {path}: no such file (expected an lslo-export .safetensors file)")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            entries = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise LSLoConfigError(f"--lslo-adapters {path}: not a readable safetensors file: {e}") from None
    if metadata.get("format") != FORMAT:
        raise LSLoConfigError(
            f"--lslo-adapters {path}: not an lslo-export adapter file (format {metadata.get('format')!r}, "
            f"expected {FORMAT!r})"
        )
    try:
        spec = LSLoSpec.from_dict(json.loads(metadata["lslo_config"]))
        shapes = json.loads(metadata["shapes"])
    except (KeyError, ValueError, TypeError) as e:
        raise LSLoConfigError(f"--lslo-adapters {path}: damaged configuration metadata ({e})") from None
    return spec, decode(entries, shapes, path)
