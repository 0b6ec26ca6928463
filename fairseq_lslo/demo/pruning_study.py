"""The pruning study (``make demo DEMO=pruning``): does gradual pruning beat a smaller rank?

Every run fine-tunes the ``default`` size's base model for the same 400 updates.  The grid:

* LSLo without pruning at three rank settings: halved (1/1/2 for high/medium/low; a rank
  cannot go below 1), today's (1/1/4) and doubled (2/2/8);
* LSLo with the doubled ranks pruned to 0.5, 0.75 and 0.9 sparsity (every group alike), so that
  0.5 lands on the parameter count of today's ranks: pruning must beat training that rank from
  the start to be worth anything; at 0.75 also a longer recovery, pruning ``B`` only, the
  ``layer`` scope and structured rank pruning (also at 0.5);
* shared LoRA (one adapter for every language) at the parameter counts of today's ranks, of the
  0.75 prunes and of the 0.9 prunes.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Dict, List, Sequence

from .commands import Method
from .config import DemoConfig, Pruning

RANKS_HALF, RANKS_TODAY, RANKS_DOUBLE = "high:1,medium:1,low:2", "high:1,medium:1,low:4", "high:2,medium:2,low:8"

#: families of the Pareto plot: one marker each
FAMILIES = {
    "rank": "LSLo, no pruning (ranks)",
    "prune": "LSLo pruned (element, AB, language)",
    "prune_long": "LSLo pruned, longer recovery",
    "prune_b": "LSLo pruned, B only",
    "prune_layer": "LSLo pruned, scope layer",
    "prune_rank": "LSLo pruned, structure rank",
    "shared": "shared LoRA",
}


def _method(name: str, label: str, family: str, **kw) -> Method:
    routing = "shared" if family == "shared" else "language"
    return Method(name, label, "lslo_transformer", routing, study=True, **kw)


def study_methods(cfg: DemoConfig, with_structure: bool) -> List[Method]:
    """The grid (``with_structure``: whether ``--lslo-prune-structure`` exists in this install)."""
    n = cfg.finetune.updates
    today = cfg.pruning  # prune from 10% to 60% of the run
    longer = replace(today, start=n // 20, end=(3 * n) // 10)  # from 5% to 30%: 70% of the run to recover

    def prune(s: str, **kw) -> Pruning:
        return replace(today, sparsity=s, **kw)

    out = [
        _method("rank_half", "LSLo, ranks 1/1/2", "rank", ranks=RANKS_HALF),
        _method("rank_today", "LSLo, ranks 1/1/4 (today's)", "rank", ranks=RANKS_TODAY),
        _method("rank_double", "LSLo, ranks 2/2/8", "rank", ranks=RANKS_DOUBLE),
        _method("prune50", "LSLo 2/2/8 pruned to 0.5", "prune", ranks=RANKS_DOUBLE, prune=True, pruning=prune("0.5")),
        _method("prune75", "LSLo 2/2/8 pruned to 0.75", "prune", ranks=RANKS_DOUBLE, prune=True, pruning=prune("0.75")),
        _method("prune90", "LSLo 2/2/8 pruned to 0.9", "prune", ranks=RANKS_DOUBLE, prune=True, pruning=prune("0.9")),
        _method("prune75_long", "LSLo 2/2/8 pruned to 0.75, longer recovery", "prune_long", ranks=RANKS_DOUBLE,
                prune=True, pruning=replace(longer, sparsity="0.75")),
        _method("prune75_b", "LSLo 2/2/8 pruned to 0.75, B only", "prune_b", ranks=RANKS_DOUBLE, prune=True,
                pruning=prune("0.75", factors="B")),
        _method("prune75_layer", "LSLo 2/2/8 pruned to 0.75, scope layer", "prune_layer", ranks=RANKS_DOUBLE,
                prune=True, pruning=prune("0.75", scope="layer")),
        # shared LoRA: today's ranks sum to 3*1 + 2*1 + 3*4 = 17 per layer (as many parameters as LSLo 1/1/4)
        _method("shared17", "shared LoRA, rank 17", "shared", ranks=RANKS_TODAY),
        _method("shared8", "shared LoRA, rank 8", "shared", ranks=RANKS_TODAY, shared_rank=8),
        _method("shared3", "shared LoRA, rank 3", "shared", ranks=RANKS_TODAY, shared_rank=3),
    ]
    if with_structure:
        out += [
            _method("prune50_rank", "LSLo 2/2/8 rank-pruned to 0.5", "prune_rank", ranks=RANKS_DOUBLE, prune=True,
                    pruning=prune("0.5", structure="rank")),
            _method("prune75_rank", "LSLo 2/2/8 rank-pruned to 0.75", "prune_rank", ranks=RANKS_DOUBLE, prune=True,
                    pruning=prune("0.75", structure="rank")),
        ]
    by_name = {m.name: m for m in out}
    # the order the runs start in (each seed in turn): the core comparison first, so that a study cut
    # short by the clock still answers the main question
    return [by_name[n] for n in PRIORITY if n in by_name]


PRIORITY = ("rank_today", "shared17", "prune50", "rank_half", "prune75", "prune50_rank", "prune75_rank", "prune90",
            "rank_double", "prune75_b", "prune75_long", "prune75_layer", "shared8", "shared3")
#: the second seeds that start early (right after the first seed's core runs): the core comparison
#: (today's ranks against pruning to the same count) gets its spread before the rest of the grid
EARLY_SECOND_SEEDS = ("rank_today", "prune50", "prune50_rank")


def run_order(name: str, method: str, seed_index: int) -> tuple:
    """Sort key of a run (``seed_index``: 0 for the method's first seed)."""
    pos = PRIORITY.index(method) if method in PRIORITY else -1
    if seed_index == 0:
        return (0 if pos < PRIORITY.index("prune75_rank") else 2, pos)
    if method in EARLY_SECOND_SEEDS:
        return (1, pos)
    return (3 + seed_index, pos)


def family_of(name: str) -> str:
    if name.startswith("rank_"):
        return "rank"
    if name.startswith("shared"):
        return "shared"
    for suffix, fam in (("_long", "prune_long"), ("_b", "prune_b"), ("_layer", "prune_layer"), ("_rank", "prune_rank")):
        if name.endswith(suffix):
            return fam
    return "prune"


def pareto_front(points: Dict[str, Sequence[float]]) -> List[str]:
    """Names of the points (non-zero parameters, BLEU) that no other point dominates: none has at
    most as many parameters and at least as much BLEU, one of the two strictly."""
    front = []
    for a, (pa, ba) in points.items():
        if not any((pb <= pa and bb >= ba) and (pb < pa or bb > ba) for b, (pb, bb) in points.items() if b != a):
            front.append(a)
    return front
