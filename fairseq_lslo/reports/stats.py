"""The ``lslo-stats/1`` record of a checkpoint: LSLo parameters and what pruning kept, per language.

Counts come from the checkpoint's state dict and its ``lslo_config`` buffer; the model is
not built.  A weight counts as kept (``nonzero_parameters``) when its pruning mask is True:
pruned weights are exactly zero.  Percentages are of ``model_parameters``, every parameter
of the model (frozen base + LSLo; tied embeddings counted once; buffers not counted).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from ..checkpoint_io import CheckpointError, load_checkpoint
from ..modules.keys import parse_bank_path, parse_factor_key, parse_mix_key
from ..modules.lslo_linear import live_components
from ..modules.spec import CONFIG_KEY, LSLoSpec

FORMAT = "lslo-stats/1"
#: state-dict entries that are buffers, not parameters
_BUFFER_SUFFIXES = ("_mask", ".version", "._float_tensor")


class Counter:
    """LSLo parameters and kept parameters of one language, group, the shared slot or the total."""

    def __init__(self):
        self.lslo = 0
        self.kept = 0
        self.adapters = 0  # (module, bank) adapters of a language or the shared slot
        self.dead = 0  # of which carry no update (no rank component with both A row and B column kept)
        self.live = 0  # live rank components, summed over its adapters

    def add_adapter(self, live: int) -> None:
        self.adapters += 1
        self.live += live
        self.dead += int(live == 0)

    def adapter_fields(self) -> dict:
        """``kept_rank``: live rank components per adapter (mean); ``dead_adapters`` of ``adapters``."""
        return {"kept_rank": round(self.live / self.adapters, 4) if self.adapters else 0.0,
                "adapters": self.adapters, "dead_adapters": self.dead}

    def add(self, lslo: int, kept: int) -> None:
        self.lslo += lslo
        self.kept += kept

    def to_dict(self, model_parameters: int, **extra) -> dict:
        out = dict(extra)
        out.update({
            "lslo_parameters": self.lslo,
            "nonzero_parameters": self.kept,
            "lslo_percent": 100.0 * self.lslo / model_parameters if model_parameters else 0.0,
            "nonzero_percent": 100.0 * self.kept / model_parameters if model_parameters else 0.0,
        })
        return out


def count_model_parameters(state: Dict[str, torch.Tensor]) -> int:
    """Floating-point parameters of a state dict, each storage counted once (tied embeddings)."""
    seen = set()
    total = 0
    for key, t in state.items():
        if key == CONFIG_KEY or key.endswith(_BUFFER_SUFFIXES) or not torch.is_tensor(t):
            continue
        if not t.is_floating_point():
            continue
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else (key,)
        if ident in seen:
            continue
        seen.add(ident)
        total += t.numel()
    return total


def compute_stats(path: str, state: Optional[dict] = None) -> dict:
    """The ``lslo-stats/1`` record of a checkpoint (the schema: docs/pruning.md, "Counting the subspace")."""
    if state is None:
        try:
            state = load_checkpoint(path)
        except CheckpointError:
            raise
        except Exception as e:  # torch.load fails in many ways on files that are not checkpoints
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    model = state["model"]
    spec = LSLoSpec.from_state(model, path)
    codes = spec.codes
    per_lang = {code: Counter() for code in codes}
    shared, total = Counter(), Counter()
    any_shared = False
    masks: Dict[tuple, Dict[str, torch.Tensor]] = {}  # (bank, rank) -> {"A": mask, "B": mask, "owners": ...}
    for key, value in model.items():
        if parse_mix_key(key) is not None:
            total.add(value.numel(), value.numel())  # routing weights of architecture search
            continue
        m = parse_factor_key(key)
        if m is None or m.mask:
            continue
        rank = m.rank
        mask = model.get(f"{key}_mask")
        if mask is not None and mask.shape != value.shape:
            raise CheckpointError(f"{path}: {key}_mask has shape {tuple(mask.shape)}, {key} has {tuple(value.shape)}")
        any_shared = any_shared or m.kind == "shared"
        owners = spec.bucket_owners(m.kind, m.bank).get(rank, [])  # the slots of this rank bucket
        if len(owners) != value.shape[0]:
            raise CheckpointError(
                f"{path}: {key} holds {value.shape[0]} adapters of rank {rank}, but lslo_config has "
                f"{len(owners)} ({', '.join(owners) or 'none'})"
            )
        pair = masks.setdefault((m.bank, rank), {"owners": owners})
        pair[m.factor] = mask.bool() if mask is not None else torch.ones(value.shape, dtype=torch.bool)
        for i, owner in enumerate(owners):
            n = value[i].numel()
            kept = int(mask[i].sum()) if mask is not None else n
            (shared if owner == "shared" else per_lang[owner]).add(n, kept)
            total.add(n, kept)
    counter = {**per_lang, "shared": shared}
    for bank, ranks in spec.bank_ranks.items():  # slots whose every component rank pruning removed
        for owner, r in zip(spec.slot_owners(parse_bank_path(bank)[1]), ranks):
            if r == 0:
                counter[owner].add_adapter(0)
    for pair in masks.values():
        if "A" not in pair or "B" not in pair:
            continue
        live = live_components(pair["A"], pair["B"]).sum(dim=-1).tolist()
        for owner, n_live in zip(pair["owners"], live):
            counter[owner].add_adapter(int(n_live))
    n_model = count_model_parameters(model)
    groups: Dict[str, Counter] = {}
    languages = {}
    for (code, group), rank in zip(spec.languages, spec.ranks):
        languages[code] = per_lang[code].to_dict(n_model, group=group, rank=rank, **per_lang[code].adapter_fields())
        groups.setdefault(group, Counter()).add(per_lang[code].lslo, per_lang[code].kept)
    record = {
        "format": FORMAT,
        "checkpoint": path,
        "model_parameters": n_model,
        "parameterisation": {"ffn_coverage": spec.ffn_coverage, "ffn_slice_offset": spec.ffn_slice_offset,
                             "init": spec.init, "scaling": spec.scaling},
        "languages": languages,
        "groups": {g: c.to_dict(n_model) for g, c in groups.items()},
        # languages whose adapters carry no update at all (pruned to nothing: they decode like the base)
        "dead_languages": [c for c in codes if per_lang[c].adapters and per_lang[c].dead == per_lang[c].adapters],
    }
    if any_shared:
        record["shared"] = shared.to_dict(n_model, rank=spec.shared_rank, **shared.adapter_fields())
    record["total"] = total.to_dict(n_model)
    return record


def format_table(record: dict) -> str:
    rows = [("language", "group", "rank", "LSLo params", "% model", "kept", "% model", "kept rank", "dead adapters")]

    def row(name, group, rank, d):
        adapters = (f"{d['kept_rank']:.2f}", f"{d['dead_adapters']}/{d['adapters']}") if "adapters" in d else ("", "")
        return (name, group, str(rank), f"{d['lslo_parameters']:,}", f"{d['lslo_percent']:.3f}",
                f"{d['nonzero_parameters']:,}", f"{d['nonzero_percent']:.3f}", *adapters)

    for code, d in record["languages"].items():
        rows.append(row(code, d["group"], d["rank"], d))
    for group, d in record["groups"].items():
        rows.append(row(f"[{group}]", group, "", d))
    if "shared" in record:
        rows.append(row("[shared]", "", record["shared"]["rank"], record["shared"]))
    rows.append(row("[total]", "", "", record["total"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"{record['checkpoint']}: {record['model_parameters']:,} model parameters"]
    if "parameterisation" in record:
        p = record["parameterisation"]
        coverage = p["ffn_coverage"] + (f" (offset {p['ffn_slice_offset']})" if p["ffn_coverage"] == "slice" else "")
        lines.append(f"fc1/fc2 coverage {coverage}, init of A {p['init']}, scaling {p['scaling']}")
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    for code in record.get("dead_languages", []):
        lines.append(f"WARNING: {code} carries no update: every one of its adapters is pruned to nothing "
                     "(all of B or all of A); it translates like the base model")
    return "\n".join(lines)
