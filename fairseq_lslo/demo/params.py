"""Parameter counts of a demo checkpoint: model size, trainable and non-zero LSLo parameters.

For LSLo checkpoints the numbers come from ``python -m fairseq_lslo.cli.stats CKPT --json``
(the project's stats tool, schema ``lslo-stats/1``); plain transformer checkpoints (the base
and full fine-tuning) have no adapters: every parameter is trainable in full fine-tuning.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from typing import Dict

import torch

from ..checkpoint_io import load_checkpoint
from ..modules.keys import parse_factor_key
from ..modules.spec import LSLoSpec


def model_parameter_count(ckpt: str) -> int:
    """Parameters of a plain fairseq checkpoint (tied embeddings counted once)."""
    state = load_checkpoint(ckpt)["model"]
    seen, total = set(), 0
    for name, t in state.items():
        if not torch.is_floating_point(t) or name.endswith("_float_tensor") or name.endswith(".version"):
            continue
        key = (t.data_ptr(), t.shape) if t.numel() else name
        if key in seen:
            continue
        seen.add(key)
        total += t.numel()
    return total


def group_counts(ckpt: str) -> Dict[str, Dict[str, int]]:
    """{group or 'shared': {lslo_parameters, nonzero_parameters}} read straight from the state dict.

    An independent count (it does not run the stats tool), fast enough for every snapshot
    of the pruning run; a weight is non-zero when pruning kept it (its mask entry is True).
    """
    state = load_checkpoint(ckpt)["model"]
    spec = LSLoSpec.from_state(state, ckpt)
    group_of = dict(spec.languages, shared="shared")
    out: Dict[str, Dict[str, int]] = {}
    for name, t in state.items():
        m = parse_factor_key(name)
        if m is None or m.mask:
            continue
        kind, rank = m.kind, m.rank
        kept = state[name + "_mask"]  # True = kept by pruning (what lslo-stats counts as non-zero)
        slot_groups = [group_of[owner] for owner in spec.bucket_owners(kind, m.bank)[rank]]
        for i, group in enumerate(slot_groups):
            c = out.setdefault(group, {"lslo_parameters": 0, "nonzero_parameters": 0})
            c["lslo_parameters"] += kept[i].numel()
            c["nonzero_parameters"] += int(kept[i].sum())
    return out


def lslo_stats(ckpt: str) -> Dict:
    """The ``lslo-stats/1`` JSON of an LSLo checkpoint."""
    done = subprocess.run([sys.executable, "-m", "fairseq_lslo.cli.stats", ckpt, "--json"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"fairseq_lslo.cli.stats {ckpt} failed:\n{done.stderr[-2000:]}")
    stats = json.loads(done.stdout)
    if stats.get("format") != "lslo-stats/1":
        raise RuntimeError(f"fairseq_lslo.cli.stats {ckpt}: unexpected format {stats.get('format')!r}")
    return stats


def stats_tool_available() -> bool:
    """The stats tool comes with gradual pruning (issue 3); the demo runs without it too."""
    return importlib.util.find_spec("fairseq_lslo.cli.stats") is not None


def method_counts(ckpt: str, kind: str) -> Dict:
    """{model_parameters, trainable, nonzero, *_percent, groups?, stats_tool?} of one method.

    ``kind`` is 'base' (nothing trained), 'full' (everything trained) or 'lslo'.  For LSLo
    checkpoints the counts come from the state dict; when the stats tool is installed its
    totals are recorded beside them (``stats_tool``) so the two counts can be compared.
    """
    total = model_parameter_count(ckpt)
    if kind == "lslo":
        groups = group_counts(ckpt)
        out = {"model_parameters": total,
               "trainable": sum(g["lslo_parameters"] for g in groups.values()),
               "nonzero": sum(g["nonzero_parameters"] for g in groups.values()),
               "groups": groups}
        if stats_tool_available():
            s = lslo_stats(ckpt)
            out["stats_tool"] = {"model_parameters": s["model_parameters"],
                                 "lslo_parameters": s["total"]["lslo_parameters"],
                                 "nonzero_parameters": s["total"]["nonzero_parameters"]}
    else:
        trained = total if kind == "full" else 0
        out = {"model_parameters": total, "trainable": trained, "nonzero": trained}
    out["trainable_percent"] = 100.0 * out["trainable"] / total
    out["nonzero_percent"] = 100.0 * out["nonzero"] / total
    return out
