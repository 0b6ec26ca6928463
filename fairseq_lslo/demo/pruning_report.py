"""The pruning study's report: a table (``summary.md``) and a Pareto plot (``pareto.png``)."""
from __future__ import annotations

import os
from statistics import mean
from typing import Dict, List, Sequence

from .commands import Method
from .pruning_study import FAMILIES, family_of, pareto_front
from .report import GROUP_ORDER, _write

MARKERS = {"rank": "o", "prune": "s", "prune_long": "D", "prune_b": "v", "prune_layer": "^", "prune_rank": "P",
           "shared": "x"}


def rows(summary: Dict) -> List[Dict]:
    """One row per study method: mean and range over its seeds of BLEU and non-zero parameters."""
    out = []
    for name, m in summary["study"]["methods"].items():
        runs = m["runs"]
        nz = [r["nonzero"] for r in runs]
        groups = {g: mean(r["nonzero_groups"].get(g, 0) for r in runs) for g in runs[0]["nonzero_groups"]}
        out.append({"name": name, "label": m["label"], "family": family_of(name), "seeds": [r["seed"] for r in runs],
                    "nonzero": mean(nz), "nonzero_range": (min(nz), max(nz)), "nonzero_groups": groups,
                    "nonzero_percent": mean(r["nonzero_percent"] for r in runs),
                    "mean": m["mean"], "min": m["min"], "max": m["max"]})
    return out


def markdown(summary: Dict, methods: Sequence[Method]) -> str:
    groups = [g for g in GROUP_ORDER if g in summary["groups"].values()]
    table = rows(summary)
    fronts = {g: set(pareto_front({r["name"]: (r["nonzero"], r["mean"]["groups"][g] if g else r["mean"]["overall"])
                                   for r in table})) for g in [*groups, None]}
    n = len(summary["study"]["seeds"])
    base = summary["methods"].get("base")
    lines = [f"# LSLo pruning study (`{summary['demo']}` size)", "",
             f"Measured {summary['date']} on {summary['machine']} with `{summary['command']}`; "
             f"the runs' time {summary['wall_seconds']:.0f} s. Every run fine-tunes the `default` size's base model "
             f"for the same updates; seeds {', '.join(map(str, summary['study']['seeds']))}.", "",
             "BLEU: sacrebleu corpus BLEU on the fine-tuning test set averaged over the directions into each resource "
             "group and over all directions; mean over the seeds"
             + (" (min-max) where a row has more than one" if n > 1 else "") + ". Non-zero: LSLo (or shared LoRA) parameters left non-zero at the "
             "end of the run (mean over the seeds), in all and per group of languages (a shared adapter has no "
             "group). `*`: on the Pareto front of that column (no other row has at most as many non-zero "
             "parameters and at least as much BLEU).", ""]
    if base:
        lines += [f"Base model, no fine-tuning: BLEU " + ", ".join(
            f"{g} {base['bleu']['groups'][g]:.1f}" for g in groups) + f", all {base['bleu']['overall']:.1f}.", ""]
    head = ["method", "seeds", "non-zero", *[f"non-zero {g}" for g in groups], *[f"BLEU {g}" for g in groups],
            "BLEU all"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(r, g):
        pick = (lambda d: d["overall"]) if g is None else (lambda d: d["groups"][g])
        star = "*" if r["name"] in fronts[g] else ""
        if len(r["seeds"]) == 1:
            return f"{pick(r['mean']):.1f}{star}"
        return f"{pick(r['mean']):.1f}{star} ({pick(r['min']):.1f}-{pick(r['max']):.1f})"

    for r in table:
        per_group = [f"{r['nonzero_groups'][g]:,.0f}" if g in r["nonzero_groups"] else "-" for g in groups]
        lines.append("| " + " | ".join([r["label"], ",".join(map(str, r["seeds"])), f"{r['nonzero']:,.0f}", *per_group,
                                        *[cell(r, g) for g in groups], cell(r, None)]) + " |")
    lines.append("")
    for note in summary.get("notes", []):
        lines.append(f"- {note}")
    for name, err in summary.get("failures", {}).items():
        lines.append(f"- Run {name} failed: {err.splitlines()[0][:300]}")
    lines += ["", "Plot: `pareto.png` (BLEU against non-zero parameters, one marker per kind of method).", ""]
    return "\n".join(lines)


def plot(path: str, summary: Dict) -> None:
    import logging

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # (before its import, which logs too)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = rows(summary)
    groups = [g for g in GROUP_ORDER if g in summary["groups"].values()]
    panels = [*groups, None]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 3.1), sharex=True)
    for ax, g in zip(axes, panels):
        pick = (lambda d: d["overall"]) if g is None else (lambda d: d["groups"][g])
        for fam, label in FAMILIES.items():
            pts = [r for r in table if r["family"] == fam]
            if not pts:
                continue
            xs = [r["nonzero"] for r in pts]
            ys = [pick(r["mean"]) for r in pts]
            err = [[y - pick(r["min"]) for r, y in zip(pts, ys)], [pick(r["max"]) - y for r, y in zip(pts, ys)]]
            ax.errorbar(xs, ys, yerr=err, fmt=MARKERS[fam], linestyle="-" if fam == "rank" else "none",
                        markersize=5, capsize=2, label=label, markerfacecolor="none" if fam != "rank" else None)
        front = sorted((r["nonzero"], pick(r["mean"])) for r in table
                       if r["name"] in pareto_front({t["name"]: (t["nonzero"], pick(t["mean"])) for t in table}))
        if front:
            ax.step([x for x, _ in front], [y for _, y in front], where="post", color="grey", linewidth=0.8,
                    linestyle=":")
        ax.set_xscale("log")
        ax.set_title(f"into {g}" if g else "all directions", fontsize=9)
        ax.set_xlabel("non-zero adapter parameters", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("BLEU (mean over seeds)", fontsize=8)
    handles, labels = axes[-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.suptitle("pruning study: BLEU against non-zero adapter parameters (dotted: the Pareto front; bars: "
                 "min-max over the seeds)", fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 0.95))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write(out: str, summary: Dict, methods: Sequence[Method]) -> None:
    """``summary.md`` and ``pareto.png`` in ``out``."""
    _write(os.path.join(out, "summary.md"), markdown(summary, methods))
    if summary["study"]["methods"]:
        plot(os.path.join(out, "pareto.png"), summary)
