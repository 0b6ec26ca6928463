"""The routing a search run learned (``lslo-arch``'s report): weights, chosen routes, flags, a heatmap.

For every layer and LSLo position of a checkpoint trained with ``--lslo-{encoder,decoder}-routing
learn``, print the learned mixing weights ``w_src/w_tgt`` (softmax of ``lslo_mix``), the routing
chosen per layer, and the flags to paste into a hard-routed run.  No model is built: the
configuration comes from the checkpoint's ``lslo_config`` buffer.

Rule: a searched layer is target-routed when the mean of ``w_tgt`` over its positions is
above 0.5, otherwise source-routed (a tie goes to src).  Layers not searched keep their route.
"""
from __future__ import annotations

import io
import logging
import os
from typing import Dict, List

from lslo_common.atomic import atomic_write

from ..checkpoint_io import load_checkpoint
from ..errors import LSLoError
from ..modules.placement import compact_routing
from ..modules.search import LayerChoice, choose_routing, mix_logits_from_state
from ..modules.spec import LSLoSpec

FORMAT = "lslo-arch/1"
RULE = ("a searched layer is target-routed when the mean of w_tgt over its positions is > 0.5, "
        "otherwise source-routed (ties go to src); other layers keep their configured route")
PLOT_FORMATS = ("png", "pdf", "svg")


class ArchError(LSLoError, ValueError):
    """Input lslo-arch cannot use; the message names the file or flag."""


def analyse(path: str) -> dict:
    """The learned weights and chosen routing of a checkpoint, as the JSON document of ``--json``."""
    state = load_checkpoint(path)
    model_state = state["model"]
    spec = LSLoSpec.from_state(model_state, path)
    try:
        logits = mix_logits_from_state(model_state)
    except ValueError as e:
        raise ArchError(f"{path}: {e}") from None
    doc: Dict[str, object] = {"format": FORMAT, "checkpoint": path, "rule": RULE}
    flags: List[str] = []
    for side in ("encoder", "decoder"):
        side_spec = getattr(spec, side)
        configured = compact_routing(side_spec.routing)
        if side_spec.positions:
            try:
                choices = choose_routing(side_spec.routing, logits, side)
            except ValueError as e:
                raise ArchError(f"{path}: {e}") from None
            routes = [c.route for c in choices]
        else:  # no LSLo on this side: the routing is irrelevant
            choices, routes = [], ["none"] * len(side_spec.routing)
        routing = compact_routing(routes)
        positions = ",".join(side_spec.positions) or "none"
        doc[side] = {
            "positions": side_spec.positions,
            "configured_routing": configured,
            "searched": any(r == "learn" for r in side_spec.routing) and bool(side_spec.positions),
            "layers": [_layer_doc(c, side_spec.routing[c.layer], side_spec.positions) for c in choices],
            "routing": routing,
        }
        flags += [f"--lslo-{side}-positions", positions, f"--lslo-{side}-routing", routing]
    doc["flags"] = flags
    doc["command_line"] = " ".join(flags)
    return doc


def _layer_doc(choice: LayerChoice, configured: str, positions: List[str]) -> dict:
    return {
        "layer": choice.layer + 1,
        "configured": configured,
        "weights": {p: {"src": choice.weights[p][0], "tgt": choice.weights[p][1]} for p in positions
                    if p in choice.weights},
        "mean_tgt": choice.mean_tgt,
        "route": choice.route,
        "unanimous": choice.unanimous,
    }


def format_text(doc: dict) -> str:
    lines = [f"lslo-arch: {doc['checkpoint']}", f"rule: {doc['rule']}", ""]
    for side in ("encoder", "decoder"):
        s = doc[side]
        if not s["positions"]:
            lines += [f"{side}: no LSLo positions", ""]
            continue
        lines.append(f"{side}: positions {','.join(s['positions'])}; weights shown as w_src/w_tgt; "
                     f"configured routing {s['configured_routing']}")
        width = 13
        header = "layer " + "".join(p.rjust(width) for p in s["positions"]) + "  mean w_tgt  route"
        lines.append(header)
        for layer in s["layers"]:
            cells = []
            for pos in s["positions"]:
                w = layer["weights"].get(pos)
                cells.append((f"{w['src']:.3f}/{w['tgt']:.3f}" if w else "-").rjust(width))
            mean = "-" if layer["mean_tgt"] is None else f"{layer['mean_tgt']:.3f}"
            note = "" if layer["configured"] == "learn" else "  (not searched)"
            if not layer["unanimous"]:
                note = "  (positions disagree)"
            lines.append(f"{layer['layer']:5d} " + "".join(cells) + f"  {mean:>10}  {layer['route']}{note}")
        lines += [f"{side} routing: {s['routing']}", ""]
    lines += ["flags for a hard-routed run:", "  " + doc["command_line"]]
    return "\n".join(lines)


def plot(doc: dict, path: str) -> None:
    """Heatmap of w_tgt (positions x layers) for encoder and decoder, written atomically."""
    fmt = plot_format(path)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # fairseq sets the root logger to DEBUG
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sides = [s for s in ("encoder", "decoder") if doc[s]["positions"]]
    if not sides:
        raise ArchError(f"{doc['checkpoint']}: the model has no LSLo positions to plot")
    fig, axes = plt.subplots(len(sides), 1, squeeze=False, constrained_layout=True,
                             figsize=(max(6.0, 0.5 * max(len(doc[s]["layers"]) for s in sides) + 2.5),
                                      sum(1.2 + 0.35 * len(doc[s]["positions"]) for s in sides) + 0.6))
    image = None
    for ax, side in zip(axes[:, 0], sides):
        s = doc[side]
        grid = np.full((len(s["positions"]), len(s["layers"])), np.nan)
        for j, layer in enumerate(s["layers"]):
            for i, pos in enumerate(s["positions"]):
                if pos in layer["weights"]:
                    grid[i, j] = layer["weights"][pos]["tgt"]
        image = ax.imshow(np.ma.masked_invalid(grid), cmap="coolwarm", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_facecolor("white")  # layers not searched: hatched, outside the colour scale
        ax.patch.set_hatch("//")
        ax.patch.set_edgecolor("#999999")
        if grid.size <= 400:
            for (i, j), v in np.ndenumerate(grid):
                if not np.isnan(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6)
        ax.set_yticks(range(len(s["positions"])), s["positions"])
        ax.set_xticks(range(len(s["layers"])), [f"{layer['layer']}\n{layer['route']}" for layer in s["layers"]],
                      fontsize=7)
        ax.set_title(f"{side}: w_tgt per layer and position (chosen: {s['routing']})", fontsize=9)
    fig.colorbar(image, ax=axes[:, 0].tolist(), label="w_tgt (0 = source-routed, 1 = target-routed)")
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=120)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def plot_format(path: str) -> str:
    fmt = os.path.splitext(path)[1].lower().lstrip(".")
    if fmt not in PLOT_FORMATS:
        raise ArchError(f"--plot {path}: expected a file name ending in .{', .'.join(PLOT_FORMATS)}")
    return fmt
