"""Where LSLo goes: position names and the per-layer routing specification."""
from __future__ import annotations

from typing import Dict, List, Optional

from ..errors import LSLoConfigError

#: position name -> attribute path inside a fairseq encoder layer
ENCODER_POSITIONS: Dict[str, str] = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "out": "self_attn.out_proj",
    "fc1": "fc1",
    "fc2": "fc2",
}
#: decoder layers have the same, plus the encoder-decoder (cross) attention projections
DECODER_POSITIONS: Dict[str, str] = {
    **ENCODER_POSITIONS,
    "cross_q": "encoder_attn.q_proj",
    "cross_k": "encoder_attn.k_proj",
    "cross_v": "encoder_attn.v_proj",
    "cross_out": "encoder_attn.out_proj",
}

#: routing values of one layer:
#:   src / tgt  one adapter per language, chosen by the sample's source / target language
#:   shared     one adapter for every sample (plain LoRA, the shared-LoRA baseline)
#:   learn      architecture search: a src- and a tgt-routed adapter mixed by learnable weights
#:   none       no adapter in this layer
ROUTES = ("src", "tgt", "shared", "learn", "none")


def parse_positions(spec: str, side: str) -> List[str]:
    """``fc1,fc2`` -> ["fc1", "fc2"], checked against the positions of ``side``."""
    table = ENCODER_POSITIONS if side == "encoder" else DECODER_POSITIONS
    flag = f"--lslo-{side}-positions"
    text = (spec or "").strip()
    if text in ("", "none"):
        return []
    if text == "all":
        return list(table)
    names = [p.strip() for p in text.split(",") if p.strip()]
    for name in names:
        if name not in table:
            raise LSLoConfigError(
                f"{flag}: unknown position {name!r}; the {side} has {', '.join(table)} (or 'all')"
            )
    if len(set(names)) != len(names):
        raise LSLoConfigError(f"{flag}: a position is listed twice in {text!r}")
    return names


def parse_routing(spec: str, num_layers: int, side: str) -> List[str]:
    """``src*9,tgt*3`` -> one route per layer; a single value applies to every layer."""
    flag = f"--lslo-{side}-routing"
    text = (spec or "").strip()
    routes: List[str] = []
    for item in text.split(","):
        item = item.strip()
        name, _, count = item.partition("*")
        name = name.strip()
        if name not in ROUTES:
            raise LSLoConfigError(f"{flag}: unknown routing {name!r} in {text!r}; expected one of {', '.join(ROUTES)}")
        try:
            n = int(count) if count else 1
        except ValueError:
            raise LSLoConfigError(f"{flag}: bad repeat count in {item!r}; write e.g. src*9") from None
        if n <= 0:
            raise LSLoConfigError(f"{flag}: repeat count must be positive in {item!r}")
        routes.extend([name] * n)
    if len(routes) == 1 and "*" not in text:
        routes = routes * num_layers
    if len(routes) != num_layers:
        raise LSLoConfigError(
            f"{flag}: {text!r} gives {len(routes)} layers but the {side} has {num_layers}; "
            f"e.g. {default_routing(num_layers, side)}"
        )
    return routes


def default_routing(num_layers: int, side: str) -> str:
    """The paper's architecture-learning result scaled to ``num_layers``.

    Encoder: the first three quarters of the layers source-routed, the rest target-routed
    (12 layers: src*9,tgt*3); decoder: every layer target-routed.
    """
    if side == "decoder":
        return f"tgt*{num_layers}"
    n_tgt = num_layers // 4
    return f"src*{num_layers - n_tgt}" + (f",tgt*{n_tgt}" if n_tgt else "")


def compact_routing(routes: List[str]) -> str:
    """Inverse of :func:`parse_routing`: ["src","src","tgt"] -> "src*2,tgt*1"."""
    out: List[str] = []
    i = 0
    while i < len(routes):
        j = i
        while j < len(routes) and routes[j] == routes[i]:
            j += 1
        out.append(f"{routes[i]}*{j - i}")
        i = j
    return ",".join(out)


_POSITION_AT = {
    "encoder": {path: name for name, path in ENCODER_POSITIONS.items()},
    "decoder": {path: name for name, path in DECODER_POSITIONS.items()},
}


def position_at(side: str, path: str) -> Optional[str]:
    """Inverse of the position tables: ("decoder", "encoder_attn.q_proj") -> "cross_q"; else None."""
    return _POSITION_AT.get(side, {}).get(path)
