"""Architecture search helpers: where the learnable src/tgt mixing weights live, and the rule
that turns learned weights into a hard per-layer routing.

In search mode (routing ``learn``) every LSLo position of a layer holds a source-routed and a
target-routed adapter mixed by ``softmax(lslo_mix)``: ``w = (w_src, w_tgt)``.  These helpers
read the weights either from a live model (training-time logging, the entropy regulariser)
or from a checkpoint's state dict (``lslo-arch``), so no model has to be built for the latter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from .keys import MIX_NAME, parse_layer_path, parse_mix_key
from .lslo_linear import LSLoLinear, mix_weights
from .placement import position_at


@dataclass(frozen=True)
class MixSite:
    """One searched LSLo position: side, layer (0-based, as in fairseq's module names), position."""

    side: str
    layer: int
    position: str

    @property
    def label(self) -> str:
        """Short 1-based name for logs: ``enc03.fc1``."""
        return f"{self.side[:3]}{self.layer + 1:02d}.{self.position}"


def parse_site(module_name: str) -> Optional[MixSite]:
    """``encoder.layers.3.fc1`` (any wrapper prefix such as ``module.``) -> MixSite, else None."""
    parsed = parse_layer_path(module_name)
    if parsed is None:
        return None
    side, layer, path = parsed
    position = position_at(side, path)
    return None if position is None else MixSite(side, layer, position)


def mix_modules(model: nn.Module) -> List[Tuple[MixSite, LSLoLinear]]:
    """Every LSLo module of ``model`` in search mode, in module order (works through DDP wrappers)."""
    out = []
    for name, module in model.named_modules():
        if isinstance(module, LSLoLinear) and module.route == "learn":
            site = parse_site(name)
            if site is None:
                raise RuntimeError(f"LSLo module {name!r} in search mode is not at a known encoder/decoder position")
            out.append((site, module))
    return out


def mix_logits_from_state(state: Mapping[str, Tensor]) -> Dict[MixSite, Tensor]:
    """The raw ``lslo_mix`` logits (2,) of every searched position in a model state dict."""
    out: Dict[MixSite, Tensor] = {}
    for key, value in state.items():
        module = parse_mix_key(key)
        if module is not None:
            site = parse_site(module)
            if site is None:
                raise ValueError(f"state-dict key {key!r} is not at a known encoder/decoder position")
            if value.numel() != 2:
                raise ValueError(f"state-dict key {key!r} has shape {tuple(value.shape)}; expected (2,)")
            out[site] = value.detach().float().reshape(2).cpu()
    return out


def mean_entropy(logits: Sequence[Tensor]) -> Tensor:
    """Mean (over positions) entropy, in nats, of the softmax mixing weights; differentiable.

    0 when every position has made a hard choice, ln 2 = 0.693 when every one is undecided.
    """
    stacked = torch.stack([t.float() for t in logits])  # n x 2
    log_w = torch.log_softmax(stacked, dim=-1)
    return -(log_w.exp() * log_w).sum(-1).mean()


@dataclass
class LayerChoice:
    """The decision for one layer: its mean target weight over the searched positions."""

    layer: int  # 0-based
    weights: Dict[str, Tuple[float, float]]  # position -> (w_src, w_tgt)
    mean_tgt: Optional[float]  # None: the layer was not searched
    route: str  # the routing to use in a hard-routed run

    @property
    def unanimous(self) -> bool:
        """True when every position prefers the same side as the layer."""
        if self.mean_tgt is None:
            return True
        return all((w_tgt > 0.5) == (self.route == "tgt") for _, w_tgt in self.weights.values())


def choose_routing(configured: Sequence[str], logits: Mapping[MixSite, Tensor], side: str) -> List[LayerChoice]:
    """One hard route per layer of ``side``.

    Rule: a layer in search mode is target-routed when the mean of ``w_tgt`` over its
    positions is above 0.5, otherwise source-routed (a tie, e.g. an untrained layer,
    goes to ``src``).  Averaging the softmax weights treats every position of the layer
    alike, whatever the magnitude of its logits.  Layers not in search mode keep their
    configured route (src, tgt, shared or none).
    """
    per_layer: Dict[int, Dict[str, Tuple[float, float]]] = {}
    for site, value in logits.items():
        if site.side == side:
            w = mix_weights(value).tolist()
            per_layer.setdefault(site.layer, {})[site.position] = (w[0], w[1])
    choices = []
    for layer, route in enumerate(configured):
        weights = per_layer.get(layer, {})
        if route != "learn":
            choices.append(LayerChoice(layer, weights, None, route))
            continue
        if not weights:
            raise ValueError(f"{side} layer {layer + 1} is configured 'learn' but has no {MIX_NAME} weights")
        mean_tgt = sum(w for _, w in weights.values()) / len(weights)
        choices.append(LayerChoice(layer, weights, mean_tgt, "tgt" if mean_tgt > 0.5 else "src"))
    extra = sorted(layer for layer in per_layer if layer >= len(configured) or configured[layer] != "learn")
    if extra:
        raise ValueError(f"{side} layer {extra[0] + 1} has {MIX_NAME} weights but is not configured 'learn'")
    return choices

