"""``summary.json``, ``summary.md`` and the PNG plots of a demo run."""
from __future__ import annotations

import json
import os
from typing import Dict, List

GROUP_ORDER = ("high", "medium", "low")


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def markdown_table(summary: Dict) -> str:
    """The results table (also pasted into the README)."""
    groups = [g for g in GROUP_ORDER if g in summary["groups"].values()]
    head = ["method", *[f"BLEU {g}" for g in groups], "BLEU all", "trainable %", "non-zero %", "fine-tune time"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in summary["methods"].items():
        p = m["parameters"]
        cells = [m["label"], *[f"{m['bleu']['groups'][g]:.1f}" for g in groups], f"{m['bleu']['overall']:.1f}",
                 f"{p['trainable_percent']:.2f}", f"{p['nonzero_percent']:.2f}",
                 f"{m['train_seconds']:.0f} s" if m.get("train_seconds") is not None else "-"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def study_summary(runs, bleu: Dict, counts: Dict, train_seconds: Dict) -> Dict:
    """The parameterisation study: per method (ours / the reference's, with and without pruning)
    every seed's BLEU and parameters, and the mean, min and max over the seeds."""
    methods: Dict[str, Dict] = {}
    for r in runs:
        m = methods.setdefault(r.method.name, {"label": r.method.label, "preset": r.method.preset,
                                               "prune": r.method.prune, "runs": []})
        m["runs"].append({"seed": r.seed, "run": r.name,
                          "bleu": {"overall": bleu[r.name]["overall"], "groups": bleu[r.name]["groups"]},
                          "trainable_percent": counts[r.name]["trainable_percent"],
                          "nonzero_percent": counts[r.name]["nonzero_percent"],
                          "nonzero": counts[r.name].get("nonzero"),
                          "nonzero_groups": {g: c["nonzero_parameters"]
                                             for g, c in (counts[r.name].get("groups") or {}).items()},
                          "train_seconds": train_seconds.get(r.name)})
    for m in methods.values():
        for stat, fn in (("mean", lambda v: sum(v) / len(v)), ("min", min), ("max", max)):
            groups = m["runs"][0]["bleu"]["groups"]
            m[stat] = {"overall": fn([x["bleu"]["overall"] for x in m["runs"]]),
                       "groups": {g: fn([x["bleu"]["groups"][g] for x in m["runs"]]) for g in groups}}
    seeds = sorted({r.seed for r in runs})
    return {"seeds": seeds, "methods": methods}


def study_markdown(study: Dict, groups: List[str]) -> List[str]:
    """The study's table (mean and min-max over the seeds) and the reference-minus-ours differences."""
    methods = study["methods"]
    if not any(m["preset"] == "paper" for m in methods.values()):
        return []  # no reference-parameterisation run: nothing to compare
    n = len(study["seeds"])
    lines = [f"Parameterisation study: our parameterisation (`--lslo-preset ours`) and the reference's "
             f"(`--lslo-preset paper`), same data, updates and learning rate, {n} seed(s) each "
             f"({', '.join(map(str, study['seeds']))})"
             + ("; BLEU as mean (min-max over the seeds)." if n > 1 else "; one seed: no spread to report."), ""]
    head = ["method", "preset", *[f"BLEU {g}" for g in groups], "BLEU all", "trainable %", "non-zero %"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(m, g=None):
        pick = (lambda d: d["overall"]) if g is None else (lambda d: d["groups"][g])
        if n == 1:
            return f"{pick(m['mean']):.1f}"
        return f"{pick(m['mean']):.1f} ({pick(m['min']):.1f}-{pick(m['max']):.1f})"

    for m in methods.values():
        trainable = sum(x["trainable_percent"] for x in m["runs"]) / len(m["runs"])
        nonzero = sum(x["nonzero_percent"] for x in m["runs"]) / len(m["runs"])
        lines.append("| " + " | ".join([m["label"], m["preset"], *[cell(m, g) for g in groups], cell(m),
                                        f"{trainable:.2f}", f"{nonzero:.2f}"]) + " |")
    lines.append("")
    for ours, ref in (("lslo", "lslo_paper"), ("lslo_pruned", "lslo_paper_pruned")):
        if ours not in methods or ref not in methods:
            continue
        a, b = methods[ours], methods[ref]
        parts = []
        for g in [*groups, None]:
            pick = (lambda d: d["overall"]) if g is None else (lambda d: d["groups"][g])
            diff = pick(b["mean"]) - pick(a["mean"])
            overlap = n > 1 and pick(a["min"]) <= pick(b["max"]) and pick(b["min"]) <= pick(a["max"])
            parts.append(f"{g or 'all'} {diff:+.1f}" + (" (seed ranges overlap)" if overlap else ""))
        lines.append(f"- {b['label']} minus {a['label']} (mean BLEU): " + ", ".join(parts) + ".")
    lines.append("")
    return lines


def write_markdown(path: str, summary: Dict) -> None:
    lines = [f"# LSLo demo (`{summary['demo']}`)", "",
             f"Measured {summary['date']} on {summary['machine']} with `{summary['command']}`; "
             f"total wall time of the stages {summary['wall_seconds']:.0f} s.", "",
             "BLEU: sacrebleu corpus BLEU on the fine-tuning test set (shifted distribution: negation and "
             "possessors), averaged over the directions into each resource group and over all "
             f"{summary['directions']} directions. Trainable and non-zero parameters are % of the whole model "
             f"({_fmt_int(summary['model_parameters'])} parameters).", "",
             markdown_table(summary), ""]
    pruned = summary["methods"].get("lslo_pruned")
    if pruned and "groups" in pruned["parameters"]:
        lines += ["Non-zero LSLo parameters after pruning, per resource group:", "",
                  "| group | LSLo parameters | non-zero | sparsity |", "|---|---|---|---|"]
        for g, c in pruned["parameters"]["groups"].items():
            sp = 1 - c["nonzero_parameters"] / max(1, c["lslo_parameters"])
            lines.append(f"| {g} | {_fmt_int(c['lslo_parameters'])} | {_fmt_int(c['nonzero_parameters'])} | {sp:.2f} |")
        lines.append("")
    groups = [g for g in GROUP_ORDER if g in summary["groups"].values()]
    lines += study_markdown(summary.get("study") or {"seeds": [], "methods": {}}, groups)
    for note in summary.get("notes", []):
        lines.append(f"- {note}")
    lines += ["", "BLEU per target language:", "",
              "| method | " + " | ".join(summary["languages"]) + " |", "|---|" + "---|" * len(summary["languages"])]
    for m in summary["methods"].values():
        lines.append(f"| {m['label']} | " + " | ".join(f"{m['bleu']['languages'][l]:.1f}" for l in summary["languages"]) + " |")
    lines += ["", "Plots: `bleu_per_language.png`, `sparsity.png`.", ""]
    _write(path, "\n".join(lines))


def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str, summary: Dict) -> None:
    _write(path, json.dumps(summary, indent=2) + "\n")


def plot_bleu(path: str, summary: Dict) -> None:
    import logging

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # (before its import, which logs too)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    langs: List[str] = summary["languages"]
    methods = summary["methods"]
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(langs)), 3.6))
    for k, m in enumerate(methods.values()):
        xs = [i + (k - (len(methods) - 1) / 2) * width for i in range(len(langs))]
        ax.bar(xs, [m["bleu"]["languages"][l] for l in langs], width, label=m["label"])
    ax.set_xticks(range(len(langs)))
    ax.set_xticklabels([f"{l}\n({summary['groups'][l]})" for l in langs])
    ax.set_ylabel("BLEU (into language)")
    ax.set_title(f"demo `{summary['demo']}`: BLEU per target language on the fine-tuning test set")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sparsity(path: str, curve: List[Dict]) -> None:
    """``curve``: [{'update': n, 'groups': {group: sparsity}}, ...] of the pruning run."""
    import logging

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # (before its import, which logs too)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    groups = [g for g in GROUP_ORDER if curve and g in curve[0]["groups"]]
    styles = {"high": ("o", "-"), "medium": ("s", "--"), "low": ("^", "-")}  # high and medium may coincide
    for g in groups:
        marker, line = styles.get(g, ("o", "-"))
        ax.plot([p["update"] for p in curve], [p["groups"][g] for p in curve], marker=marker, linestyle=line,
                label=g, markerfacecolor="none" if g == "medium" else None)
    ax.set_xlabel("update")
    ax.set_ylabel("sparsity of LSLo weights")
    ax.set_ylim(-0.02, 1.0)
    ax.set_title("gradual pruning: sparsity per resource group")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
