"""Does rank pruning make the layer faster?  ``rank_pruned_module_vs_unpruned``.

Forward + backward time (training: the base frozen, gradients for the input and the factors)
of one LSLo layer on a mixed-language batch (the batched routing path), three ways:

* ``unpruned``: every language at its configured rank;
* ``rank_pruned``: the same layer after ``--lslo-prune-structure rank`` kept a quarter of each
  language's components, as a model loaded from ``lslo-export`` builds it (the compacted
  banks of :func:`fairseq_lslo.modules.adapter_state.compact_ranks`);
* ``base``: the frozen linear map alone, the limit no pruning can beat;
* ``adapter_*``: the adapters' routed delta alone (no frozen map), unpruned and rank-pruned.

The figure is ``rank_pruned / unpruned`` (target <= 0.6 on CPU); ``base / unpruned`` is printed
beside it (when the frozen map dominates, it bounds the figure from below), and the ratio of the
adapters alone, which is what follows the kept rank.  Rounds alternate the three layers so that a change in the machine's load hits all of
them; the median of the rounds is reported.  Writes ``results/bench/rank_pruning.json``.

usage: python bench/rank_pruning.py [--d-in 512] [--d-out 2048] [--languages 12] [--rank 8]
                                    [--tokens 32] [--batch 32] [--rounds 15] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict

import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from lslo_common.atomic import atomic_write  # noqa: E402
from fairseq_lslo.modules.adapter_state import compact_ranks  # noqa: E402
from fairseq_lslo.modules.lslo_linear import LSLoLinear  # noqa: E402
from fairseq_lslo.modules.pruning import PruneSchedule, PruningPlan  # noqa: E402
from fairseq_lslo.modules.routing import BatchLanguages, LanguageRouter  # noqa: E402
from fairseq_lslo.modules.spec import LSLoSpec, SideSpec  # noqa: E402

MODULE = "encoder.layers.0.fc1"
OUT = os.path.join(ROOT, "results", "bench", "rank_pruning.json")


class OneLayer(nn.Module):
    """The smallest model a PruningPlan accepts: one LSLo fc1 with a language spec."""

    def __init__(self, spec: LSLoSpec, d_in: int, d_out: int, base: nn.Linear):
        super().__init__()
        self.lslo_spec = spec
        self.router = LanguageRouter()
        bank = spec.build_bank("src", d_in, d_out, "fc1", bank=f"{MODULE}.lslo_src")
        layer = nn.Module()
        layer.fc1 = LSLoLinear(base, "src", {"src": bank}, self.router)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList([layer])

    @property
    def layer(self) -> LSLoLinear:
        return self.encoder.layers[0].fc1


def build_layers(args) -> Dict[str, nn.Module]:
    codes = [f"l{i:02d}" for i in range(args.languages)]
    spec = LSLoSpec([[c, "high"] for c in codes], [args.rank] * args.languages, 1.0, args.rank,
                    SideSpec(["fc1"], ["src"]), SideSpec([], []))
    torch.manual_seed(0)
    base = nn.Linear(args.d_in, args.d_out)
    base.weight.requires_grad_(False)
    base.bias.requires_grad_(False)
    full = OneLayer(spec, args.d_in, args.d_out, base)
    with torch.no_grad():
        for name, p in full.named_parameters():
            if "lslo_" in name:
                p.normal_()
    keep = 1.0 - 1.0 / args.keep_fraction_inverse
    plan = PruningPlan(full, PruneSchedule(final={"high": keep}, start=0, end=0, structure="rank"))
    plan.update_masks([t.param.data for t in plan.tensors], 0)
    lslo = {f"{MODULE}.{k}": v for k, v in full.layer.state_dict().items() if "lslo_" in k}
    small_spec, small_state = compact_ranks(spec, lslo)
    small = OneLayer(small_spec, args.d_in, args.d_out, base)
    small.layer.load_state_dict({k[len(MODULE) + 1:]: v for k, v in small_state.items()}, strict=False)
    kept = small_spec.bank_ranks[f"{MODULE}.lslo_src"]
    return {"unpruned": full, "rank_pruned": small, "base": base, "kept_ranks": kept}


class AdapterOnly(nn.Module):
    """A bank's routed delta alone, for a fixed batch of languages."""

    def __init__(self, bank: nn.Module, langs: torch.Tensor):
        super().__init__()
        self.bank, self.langs = bank, langs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bank.delta(x, self.langs, None)


def timer(layer: nn.Module, x: torch.Tensor, router=None, langs=None) -> Callable[[], float]:
    def run() -> float:
        if router is not None:
            router.set(langs)
        xi = x.detach().requires_grad_(True)
        start = time.perf_counter()
        out = layer(xi)
        out.backward(torch.ones_like(out))
        return time.perf_counter() - start
    return run


def main(argv=None) -> Dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--d-in", type=int, default=512)
    p.add_argument("--d-out", type=int, default=2048)
    p.add_argument("--languages", type=int, default=12)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--keep-fraction-inverse", type=int, default=4, help="keep 1/N of the ranks (default 4)")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=OUT)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    layers = build_layers(args)
    x = torch.randn(args.tokens, args.batch, args.d_in)
    langs = torch.arange(args.batch) % args.languages  # every language in the batch: the batched path
    batch = BatchLanguages(langs, None)
    runs = {
        "unpruned": timer(layers["unpruned"].layer, x, layers["unpruned"].router, batch),
        "rank_pruned": timer(layers["rank_pruned"].layer, x, layers["rank_pruned"].router, batch),
        "base": timer(layers["base"], x),
        # the adapters alone (their delta, forward + backward), without the frozen map
        "adapter_unpruned": timer(AdapterOnly(layers["unpruned"].layer.lslo_src, langs), x),
        "adapter_rank_pruned": timer(AdapterOnly(layers["rank_pruned"].layer.lslo_src, langs), x),
    }
    with torch.no_grad():  # the compacted layer computes what the pruned one does
        layers["unpruned"].router.set(batch)
        layers["rank_pruned"].router.set(batch)
        same = torch.allclose(layers["unpruned"].layer(x), layers["rank_pruned"].layer(x), atol=1e-4)
    for run in runs.values():  # warm-up
        run(), run()
    times: Dict[str, list] = {k: [] for k in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            times[name].append(run())
    median = {k: statistics.median(v) for k, v in times.items()}
    record = {
        "figure": "rank_pruned_module_vs_unpruned",
        "value": median["rank_pruned"] / median["unpruned"],
        "target": 0.6,
        "limit_base_vs_unpruned": median["base"] / median["unpruned"],
        "adapter_only_rank_pruned_vs_unpruned": median["adapter_rank_pruned"] / median["adapter_unpruned"],
        "median_seconds": median,
        "rounds": times,
        "same_output": same,
        "kept_ranks": layers["kept_ranks"],
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "command": "python bench/rank_pruning.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    text = json.dumps(record, indent=2) + "\n"
    atomic_write(args.out, lambda f: f.write(text.encode()))
    print(f"rank_pruned_module_vs_unpruned = {record['value']:.3f} (target <= 0.6; limit, base alone: "
          f"{record['limit_base_vs_unpruned']:.3f}); adapters alone: "
          f"{record['adapter_only_rank_pruned_vs_unpruned']:.3f}; median ms: "
          + ", ".join(f"{k} {1000 * v:.2f}" for k, v in median.items()) + f"; same output: {same}")
    return record


if __name__ == "__main__":
    main()
