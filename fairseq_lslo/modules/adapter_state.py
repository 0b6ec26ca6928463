"""LSLo adapters read straight from a state dict, without building the model.

A wrapped linear map ``P`` keeps its base ``P.weight``/``P.bias`` and adds banks
``P.lslo_{src,tgt,shared}.{A,B}{r}[_mask]`` (and ``P.lslo_mix`` in ``learn`` layers).
These helpers group such keys per module (the grammar is :mod:`.keys`) and rebuild a
:class:`LowRankBank` from them, so merging and exporting use exactly the arithmetic of
the forward pass, sliced fc1/fc2 adapters included.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor

from .keys import BANK_KINDS, join, parse_entry, parse_factor_key, parse_layer_path, parse_mix_key  # noqa: F401
from .lslo_linear import LowRankBank, is_lslo_key
from .placement import position_at
from .spec import CONFIG_KEY, LSLoSpec


@dataclass
class ModuleAdapters:
    """The LSLo tensors of one wrapped linear map, by bank kind."""

    banks: Dict[str, Dict[str, Tensor]] = field(default_factory=dict)  # kind -> {A2: .., A2_mask: ..}
    mix: Optional[Tensor] = None
    #: (out_features, in_features) of the host linear map, when its weight is in the state dict
    host_shape: Optional[Tuple[int, int]] = None
    #: the LSLo position (fc1, q, cross_k, ...) read from the module path, if it is a known one
    position: Optional[str] = None

    @property
    def route(self) -> str:
        if self.mix is not None:
            return "learn"
        if len(self.banks) != 1:
            raise ValueError(f"a module without lslo_mix must have one bank, found {sorted(self.banks)}")
        return next(iter(self.banks))


def group_adapters(state: Mapping[str, Tensor]) -> Dict[str, ModuleAdapters]:
    """module path -> its adapters, for every LSLo key of ``state`` (the config buffer aside)."""
    out: Dict[str, ModuleAdapters] = {}
    for key, value in state.items():
        if key == CONFIG_KEY or not is_lslo_key(key):
            continue
        parsed = parse_factor_key(key)
        if parsed is not None:
            out.setdefault(parsed.module, ModuleAdapters()).banks.setdefault(parsed.kind, {})[parsed.entry] = value
            continue
        module = parse_mix_key(key)
        if module is not None:
            out.setdefault(module, ModuleAdapters()).mix = value
            continue
        raise ValueError(f"unrecognised LSLo key {key!r}")
    for module, adapters in out.items():
        weight = state.get(join(module, "weight"))
        if weight is not None and weight.dim() == 2:
            adapters.host_shape = (int(weight.shape[0]), int(weight.shape[1]))
        site = parse_layer_path(module)
        adapters.position = position_at(site[0], site[2]) if site else None
    return out


def load_bank(spec: LSLoSpec, kind: str, tensors: Dict[str, Tensor], where: str,
              adapters: Optional[ModuleAdapters] = None) -> LowRankBank:
    """A bank of the spec's ranks holding ``tensors`` (its A/B/mask entries); shapes are checked.

    The host map's shape comes from ``adapters.host_shape`` (its base weight) when known, else
    from the factors (full coverage only: a sliced adapter cannot tell the FFN width).
    """
    entries = {name: parse_entry(name) for name in tensors}
    a_keys = sorted(k for k, e in entries.items() if e and e[0] == "A" and not e[2])
    b_keys = sorted(k for k, e in entries.items() if e and e[0] == "B" and not e[2])
    if not a_keys:
        raise ValueError(f"{where}: no A factor found")
    if not b_keys:
        raise ValueError(f"{where}: no B factor found")
    position = adapters.position if adapters is not None else None
    host = adapters.host_shape if adapters is not None else None
    if host is not None:
        d_out, d_in = host
    else:
        d_in, d_out = tensors[a_keys[0]].shape[-1], tensors[b_keys[0]].shape[-2]
        if spec.spans(position, d_in, d_out) != ((0, d_in), (0, d_out)):
            raise ValueError(
                f"{where}: a {spec.ffn_coverage}-coverage {position} adapter needs its host linear map's "
                f"shape ({where}.weight is not in the state dict)"
            )
    bank = spec.build_bank(kind, d_in, d_out, position)
    try:
        bank.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in tensors.items()})
    except RuntimeError as e:
        raise ValueError(f"{where}: the adapter tensors do not fit the LSLo configuration: {e}") from None
    return bank


def module_delta(spec: LSLoSpec, module: str, adapters: ModuleAdapters, src: Optional[int], tgt: Optional[int]) -> Tensor:
    """Dense float32 weight update of one module for the direction (src, tgt), as in LSLoLinear."""
    route = adapters.route
    if route == "shared":
        return load_bank(spec, "shared", adapters.banks["shared"], module, adapters).delta_weight(0)
    if route in ("src", "tgt"):
        slot = src if route == "src" else tgt
        return load_bank(spec, route, adapters.banks[route], module, adapters).delta_weight(slot)
    w = torch.softmax(adapters.mix.float(), dim=0)
    d_src = load_bank(spec, "src", adapters.banks["src"], module, adapters).delta_weight(src)
    d_tgt = load_bank(spec, "tgt", adapters.banks["tgt"], module, adapters).delta_weight(tgt)
    return w[0] * d_src + w[1] * d_tgt
