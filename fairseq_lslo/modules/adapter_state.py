"""LSLo adapters read straight from a state dict, without building the model.

A wrapped linear map ``P`` keeps its base ``P.weight``/``P.bias`` and adds banks
``P.lslo_{src,tgt,shared}.{A,B}{r}[_mask]`` (and ``P.lslo_mix`` in ``learn`` layers).
These helpers group such keys per module (the grammar is :mod:`.keys`) and rebuild a
:class:`LowRankBank` from them, so merging and exporting use exactly the arithmetic of
the forward pass, sliced fc1/fc2 adapters included.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .keys import (bank_attr, bucket_rows, entry_name, is_lslo_key, join, parse_entry, parse_factor_key,
                   parse_layer_path, parse_mix_key)
from .lslo_linear import LowRankBank, live_components, route_delta
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
    bank = spec.build_bank(kind, d_in, d_out, position, bank=join(where, bank_attr(kind)))
    try:
        bank.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in tensors.items()})
    except RuntimeError as e:
        raise ValueError(f"{where}: the adapter tensors do not fit the LSLo configuration: {e}") from None
    return bank


def module_delta(spec: LSLoSpec, module: str, adapters: ModuleAdapters, src: Optional[int], tgt: Optional[int]) -> Tensor:
    """Dense float32 weight update of one module for the direction (src, tgt), as in LSLoLinear."""
    banks = {kind: load_bank(spec, kind, tensors, module, adapters) for kind, tensors in adapters.banks.items()}
    return route_delta(adapters.route, banks, adapters.mix, src, tgt)


def compact_ranks(spec: LSLoSpec, lslo: Mapping[str, Tensor]) -> Tuple[LSLoSpec, Dict[str, Tensor]]:
    """Drop every rank component that carries nothing (its row of A or its column of B fully pruned).

    Returns a configuration whose ``bank_ranks`` lists each bank's kept ranks (where they
    differ from the configured ones) and the LSLo tensors in that smaller layout: a model
    built from them computes only the kept ranks, with the same output (the scale ``c_k``
    stays that of the configured rank).  Banks with nothing to drop keep their tensors as they
    are; a configuration without dead components comes back unchanged.
    """
    out: Dict[str, Tensor] = {k: v for k, v in lslo.items()}
    bank_ranks = dict(spec.bank_ranks)
    for module, adapters in group_adapters(lslo).items():
        for kind, tensors in adapters.banks.items():
            bank = join(module, bank_attr(kind))
            ranks = spec.slot_ranks(kind, bank)
            kept = []
            for r, row in bucket_rows(ranks):
                if r == 0:
                    kept.append(None)
                    continue
                masks = [tensors.get(entry_name(f, r, mask=True)) for f in ("A", "B")]
                if masks[0] is None or masks[1] is None:
                    kept.append(torch.ones(r, dtype=torch.bool))
                    continue
                kept.append(live_components(masks[0][row].bool(), masks[1][row].bool()))
            new_ranks = [0 if k is None else int(k.sum()) for k in kept]
            if new_ranks == ranks:
                continue
            for r in set(ranks) - {0}:
                for name in (entry_name(f, r, m) for f in ("A", "B") for m in (False, True)):
                    out.pop(join(bank, name), None)
            for r, new_rows in _group_rows(new_ranks).items():
                for f, mask in ((f, m) for f in ("A", "B") for m in (False, True)):
                    parts = []
                    for slot in new_rows:
                        old_r, old_row = bucket_rows(ranks)[slot]
                        source = tensors.get(entry_name(f, old_r, mask))
                        if source is None:
                            source = torch.ones_like(tensors[entry_name(f, old_r)], dtype=torch.bool)
                        t = source[old_row]
                        parts.append(t[kept[slot]] if f == "A" else t[:, kept[slot]])
                    out[join(bank, entry_name(f, r, mask))] = torch.stack(parts).contiguous()
            bank_ranks[bank] = new_ranks
    if bank_ranks == spec.bank_ranks:
        return spec, out
    compacted = LSLoSpec.from_dict({**spec.to_dict(), "bank_ranks": bank_ranks})
    return compacted, out


def _group_rows(ranks: Sequence[int]) -> Dict[int, List[int]]:
    """Rank -> slots (rank > 0 only), in slot order."""
    groups: Dict[int, List[int]] = {}
    for slot, r in enumerate(ranks):
        if r > 0:
            groups.setdefault(r, []).append(slot)
    return groups
