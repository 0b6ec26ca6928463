"""The demo's two sizes: ``default`` (at most 15 minutes on 2 CPU cores without the second seed of
the parameterisation study, ``--seeds 1``) and ``tiny`` (tests)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, List, Sequence, Tuple

from .benchmark import GRAMMARS, SIZES, Sizes


@dataclass(frozen=True)
class ModelDims:
    layers: int
    dim: int
    ffn: int
    heads: int
    dropout: float = 0.0  # synthetic, noise-free data: no dropout learns fastest


@dataclass(frozen=True)
class Phase:
    """Optimisation settings of one training phase."""

    updates: int
    lr: float
    warmup: int
    max_tokens: int
    label_smoothing: float = 0.1
    lslo_lr: float = 0.0  # fine-tuning only: learning rate of the adapter methods


@dataclass(frozen=True)
class LSLoSettings:
    ranks: str = "high:1,medium:1,low:4"
    alpha: float = 4.0
    positions: str = "fc1,fc2"


@dataclass(frozen=True)
class Pruning:
    sparsity: str
    start: int
    end: int
    interval: int


@dataclass(frozen=True)
class DemoConfig:
    name: str
    sizes: Sizes
    spm_vocab: int
    model: ModelDims
    pretrain: Phase
    finetune: Phase
    pruning: Pruning
    lslo: LSLoSettings = field(default_factory=LSLoSettings)
    beam: int = 2
    seed: int = 1
    #: seeds of the parameterisation study (LSLo and LSLo + pruning, ours and the reference's)
    study_seeds: Sequence[int] = (1, 2)
    snapshots: int = 5  # pruning-run checkpoints read for the sparsity-over-updates plot

    @property
    def languages(self) -> List[Tuple[str, str]]:
        return [(g.code, g.group) for g in GRAMMARS]

    @property
    def langs(self) -> List[str]:
        return [g.code for g in GRAMMARS]

    def group_of(self) -> Dict[str, str]:
        return dict(self.languages)


def _config(name: str, model: ModelDims, spm_vocab: int, pre_updates: int, ft_updates: int, max_tokens: int) -> DemoConfig:
    return DemoConfig(
        name=name,
        sizes=SIZES[name],
        spm_vocab=spm_vocab,
        model=model,
        pretrain=Phase(updates=pre_updates, lr=5e-3, warmup=max(1, pre_updates // 10), max_tokens=max_tokens),
        finetune=Phase(updates=ft_updates, lr=1e-3, warmup=max(1, ft_updates // 10), max_tokens=max_tokens,
                       lslo_lr=1e-2),
        # prune from 10% to 60% of the run; the last 40% train the kept weights only
        pruning=Pruning(sparsity="high:0.9,medium:0.9,low:0.5", start=ft_updates // 10,
                        end=(3 * ft_updates) // 5, interval=max(1, ft_updates // 20)),
    )


CONFIGS: Dict[str, DemoConfig] = {
    "default": _config("default", ModelDims(layers=2, dim=128, ffn=256, heads=4), spm_vocab=800,
                       pre_updates=2000, ft_updates=400, max_tokens=2000),
    "tiny": replace(_config("tiny", ModelDims(layers=2, dim=64, ffn=128, heads=2), spm_vocab=400,
                            pre_updates=800, ft_updates=250, max_tokens=1500), study_seeds=(1,)),
}
