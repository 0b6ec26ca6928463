"""LSLo adapters read straight from a state dict, without building the model.

A wrapped linear map ``P`` keeps its base ``P.weight``/``P.bias`` and adds banks
``P.lslo_{src,tgt,shared}.{A,B}{r}[_mask]`` (and ``P.lslo_mix`` in ``learn`` layers).
These helpers group such keys per module and rebuild a :class:`LowRankBank` from them,
so merging and exporting use exactly the arithmetic of the forward pass.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional

import torch
from torch import Tensor

from .lslo_linear import LowRankBank, is_lslo_key
from .spec import CONFIG_KEY, LSLoSpec
BANK_KINDS = ("src", "tgt", "shared")
_BANK_KEY = re.compile(r"^(?P<module>.+)\.lslo_(?P<kind>src|tgt|shared)\.(?P<name>[AB]\d+(?:_mask)?)$")
_MIX_KEY = re.compile(r"^(?P<module>.+)\.lslo_mix$")


@dataclass
class ModuleAdapters:
    """The LSLo tensors of one wrapped linear map, by bank kind."""

    banks: Dict[str, Dict[str, Tensor]] = field(default_factory=dict)  # kind -> {A2: .., A2_mask: ..}
    mix: Optional[Tensor] = None

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
        m = _BANK_KEY.match(key)
        if m:
            out.setdefault(m["module"], ModuleAdapters()).banks.setdefault(m["kind"], {})[m["name"]] = value
            continue
        m = _MIX_KEY.match(key)
        if m:
            out.setdefault(m["module"], ModuleAdapters()).mix = value
            continue
        raise ValueError(f"unrecognised LSLo key {key!r}")
    return out


def load_bank(spec: LSLoSpec, kind: str, tensors: Dict[str, Tensor], where: str) -> LowRankBank:
    """A bank of the spec's ranks holding ``tensors`` (its A/B/mask entries); shapes are checked."""
    a_keys = sorted(k for k in tensors if re.fullmatch(r"A\d+", k))
    if not a_keys:
        raise ValueError(f"{where}: no A factor found")
    d_in = tensors[a_keys[0]].shape[-1]
    b_keys = sorted(k for k in tensors if re.fullmatch(r"B\d+", k))
    d_out = tensors[b_keys[0]].shape[-2] if b_keys else None
    if d_out is None:
        raise ValueError(f"{where}: no B factor found")
    bank = spec.build_bank(kind, d_in, d_out)
    try:
        bank.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in tensors.items()})
    except RuntimeError as e:
        raise ValueError(f"{where}: the adapter tensors do not fit the LSLo configuration: {e}") from None
    return bank


def module_delta(spec: LSLoSpec, module: str, adapters: ModuleAdapters, src: Optional[int], tgt: Optional[int]) -> Tensor:
    """Dense float32 weight update of one module for the direction (src, tgt), as in LSLoLinear."""
    route = adapters.route
    if route == "shared":
        return load_bank(spec, "shared", adapters.banks["shared"], module).delta_weight(0)
    if route in ("src", "tgt"):
        slot = src if route == "src" else tgt
        return load_bank(spec, route, adapters.banks[route], module).delta_weight(slot)
    w = torch.softmax(adapters.mix.float(), dim=0)
    d_src = load_bank(spec, "src", adapters.banks["src"], module).delta_weight(src)
    d_tgt = load_bank(spec, "tgt", adapters.banks["tgt"], module).delta_weight(tgt)
    return w[0] * d_src + w[1] * d_tgt
