"""The grammar of LSLo state-dict keys: the one place that parses and writes them.

A wrapped linear map ``MODULE`` (e.g. ``encoder.layers.3.fc1``) keeps its base
``MODULE.weight``/``MODULE.bias`` and adds

* ``MODULE.lslo_{src,tgt,shared}.{A,B}{r}``: the factors of rank ``r`` of one bank,
* ``MODULE.lslo_{src,tgt,shared}.{A,B}{r}_mask``: their pruning masks (True = kept),
* ``MODULE.lslo_mix``: the src/tgt mixing logits of a ``learn`` (search mode) layer.

Module paths of transformer layers read ``[PREFIX.](encoder|decoder).layers.N.PATH``.
Pure string handling: no torch, no other module of the plugin.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, TypeVar

Owner = TypeVar("Owner")

#: every parameter or buffer whose name contains this belongs to LSLo (and trains)
LSLO_MARK = "lslo_"
BANK_KINDS = ("src", "tgt", "shared")
FACTORS = ("A", "B")
MASK_SUFFIX = "_mask"
#: attribute (and key suffix) of the mixing logits of a search-mode layer
MIX_NAME = "lslo_mix"

_ENTRY = re.compile(r"^(?P<factor>[AB])(?P<rank>[1-9]\d*)(?P<mask>_mask)?$")
_FACTOR_KEY = re.compile(r"^(?:(?P<module>.+)\.)?lslo_(?P<kind>src|tgt|shared)\.(?P<entry>[^.]+)$")
_SITE = re.compile(r"(?:^|\.)(?P<side>encoder|decoder)\.layers\.(?P<layer>\d+)(?:\.(?P<path>.+))?$")
_LAYER = re.compile(r"^(.*?\blayers\.\d+)(\.|$)")


def is_lslo_key(name: str) -> bool:
    """True for state-dict keys and parameter names that belong to LSLo, not to the base model."""
    return name.startswith(LSLO_MARK) or f".{LSLO_MARK}" in name


def bank_attr(kind: str) -> str:
    """``src`` -> ``lslo_src``: the attribute of a bank inside its LSLoLinear."""
    if kind not in BANK_KINDS:
        raise ValueError(f"unknown LSLo bank kind {kind!r}; expected one of {', '.join(BANK_KINDS)}")
    return f"{LSLO_MARK}{kind}"


def entry_name(factor: str, rank: int, mask: bool = False) -> str:
    """``("A", 2)`` -> ``A2`` (``A2_mask`` for the mask): a tensor's name inside its bank."""
    if factor not in FACTORS or int(rank) <= 0:
        raise ValueError(f"bad LSLo factor {factor!r} of rank {rank!r}")
    return f"{factor}{int(rank)}{MASK_SUFFIX if mask else ''}"


def parse_entry(name: str) -> Optional[Tuple[str, int, bool]]:
    """``A2_mask`` -> ("A", 2, True); None for anything that is not a factor or mask name."""
    m = _ENTRY.match(name)
    return None if m is None else (m["factor"], int(m["rank"]), m["mask"] is not None)


@dataclass(frozen=True)
class FactorKey:
    """One factor (or mask) of one bank of one module, as named in a state dict."""

    module: str  # "" for a bank that is the root of the state dict
    kind: str  # src / tgt / shared
    factor: str  # A / B
    rank: int
    mask: bool = False

    @property
    def entry(self) -> str:
        return entry_name(self.factor, self.rank, self.mask)

    @property
    def bank(self) -> str:
        """The bank's module path, e.g. ``encoder.layers.0.fc1.lslo_src``."""
        return join(self.module, bank_attr(self.kind))

    def format(self) -> str:
        return f"{self.bank}.{self.entry}"

    def tensor_key(self) -> str:
        """The key of the factor itself (for a mask: of the factor it masks)."""
        return f"{self.bank}.{entry_name(self.factor, self.rank)}"


def factor_key(module: str, kind: str, factor: str, rank: int, mask: bool = False) -> str:
    """``MODULE.lslo_KIND.{A,B}R[_mask]``."""
    return FactorKey(module, kind, factor, int(rank), mask).format()


def parse_factor_key(key: str) -> Optional[FactorKey]:
    """The parts of ``MODULE.lslo_KIND.{A,B}R[_mask]``; None for any other key."""
    m = _FACTOR_KEY.match(key)
    if m is None:
        return None
    entry = parse_entry(m["entry"])
    if entry is None:
        return None
    return FactorKey(m["module"] or "", m["kind"], *entry)


def parse_bank_path(path: str) -> Optional[Tuple[str, str]]:
    """``MODULE.lslo_KIND`` (a bank's module path) -> (MODULE, KIND); None for any other path."""
    module, _, attr = path.rpartition(".")
    kind = attr[len(LSLO_MARK):] if attr.startswith(LSLO_MARK) else None
    return (module, kind) if kind in BANK_KINDS else None


def mix_key(module: str) -> str:
    return join(module, MIX_NAME)


def parse_mix_key(key: str) -> Optional[str]:
    """``MODULE.lslo_mix`` -> ``MODULE`` ("" for a bare ``lslo_mix``); None for any other key."""
    if key == MIX_NAME:
        return ""
    suffix = "." + MIX_NAME
    return key[: -len(suffix)] if key.endswith(suffix) else None


def bucket_rows(ranks: Sequence[int]) -> List[Tuple[int, int]]:
    """Slot -> (rank, row): where a bank keeps each slot's factors.

    The slots of one rank share the tensors ``A{rank}``/``B{rank}`` (a bucket), in slot order:
    ranks ``[2, 2, 8]`` place slot 0 at ``(2, 0)``, slot 1 at ``(2, 1)`` and slot 2 at ``(8, 0)``.
    """
    seen: Dict[int, int] = {}
    rows = []
    for r in ranks:
        rows.append((int(r), seen.get(int(r), 0)))
        seen[int(r)] = seen.get(int(r), 0) + 1
    return rows


def bucket_owners(owners: Sequence[Owner], ranks: Sequence[int]) -> Dict[int, List[Owner]]:
    """Rank -> the owners (e.g. language codes) of the rows of ``A{rank}``/``B{rank}``, in row order."""
    out: Dict[int, List[Owner]] = {}
    for owner, (r, _) in zip(owners, bucket_rows(ranks)):
        out.setdefault(r, []).append(owner)
    return out


def join(module: str, name: str) -> str:
    return f"{module}.{name}" if module else name


def parse_layer_path(module: str) -> Optional[Tuple[str, int, str]]:
    """``[module.]encoder.layers.3.self_attn.q_proj`` -> ("encoder", 3, "self_attn.q_proj"); else None.

    The layer index is fairseq's (0-based); the path is "" for the layer module itself.
    """
    m = _SITE.search(module)
    if m is None:
        return None
    return m["side"], int(m["layer"]), m["path"] or ""


def layer_of(module: str) -> str:
    """``encoder.layers.3.self_attn.q_proj`` -> ``encoder.layers.3`` (else the module itself)."""
    m = _LAYER.match(module)
    return m.group(1) if m else module
