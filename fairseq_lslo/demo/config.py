"""The demo's sizes.

* ``default`` (``make demo``): the methods comparison (base, full fine-tuning, shared LoRA, LSLo,
  LSLo + pruning), one seed; at most 15 minutes on 2 CPU cores.
* ``study`` (``make demo DEMO=study``): the parameterisation study (ours against the reference's,
  with and without pruning), two seeds; it reuses the ``default`` size's data and base model.
* ``pruning`` (``make demo DEMO=pruning``): the pruning study (:mod:`.pruning_study`), two seeds;
  it reuses the ``default`` size's data and base model too.
* ``tiny``: a small model on a small corpus, every method of ``default`` and ``study`` with one
  seed (the test suite runs it).
"""
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
    """One gradual-pruning setting (``--optimizer lslo_pruning``), schedule in updates."""

    sparsity: str
    start: int
    end: int
    interval: int
    factors: str = "AB"  # --lslo-prune-factors
    scope: str = "language"  # --lslo-prune-scope
    structure: str = ""  # --lslo-prune-structure (rank | element); empty: the flag is not passed


#: the methods comparison of ``make demo``
COMPARISON = ("base", "full", "shared_lora", "lslo", "lslo_pruned")
#: the parameterisation study of ``make demo DEMO=study`` (plus the base model for reference)
PARAMETERISATION = ("base", "lslo", "lslo_pruned", "lslo_paper", "lslo_paper_pruned")


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
    #: names of the methods this size runs (commands.METHODS; the pruning size has its own grid)
    methods: Tuple[str, ...] = COMPARISON
    #: seeds of the study methods (Method.study): one run per seed
    study_seeds: Sequence[int] = (1,)
    snapshots: int = 5  # pruning-run checkpoints read for the sparsity-over-updates plot
    #: the size whose data and pretrained base model this one reuses ("" = its own)
    shares_base_of: str = ""

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


_DEFAULT = _config("default", ModelDims(layers=2, dim=128, ffn=256, heads=4), spm_vocab=800,
                   pre_updates=2000, ft_updates=400, max_tokens=2000)

CONFIGS: Dict[str, DemoConfig] = {
    "default": _DEFAULT,
    "study": replace(_DEFAULT, name="study", methods=PARAMETERISATION, study_seeds=(1, 2), shares_base_of="default"),
    "pruning": replace(_DEFAULT, name="pruning", methods=(), study_seeds=(1, 2), shares_base_of="default"),
    "tiny": replace(_config("tiny", ModelDims(layers=2, dim=64, ffn=128, heads=2), spm_vocab=400,
                            pre_updates=800, ft_updates=250, max_tokens=1500),
                    methods=tuple(dict.fromkeys(COMPARISON + PARAMETERISATION)), study_seeds=(1,)),
}


def data_key(cfg: DemoConfig) -> Dict:
    """What the generated text, SentencePiece model and binaries depend on."""
    from dataclasses import asdict

    return {"sizes": asdict(cfg.sizes), "spm_vocab": cfg.spm_vocab, "seed": cfg.seed,
            "grammars": [asdict(g) for g in GRAMMARS]}


def base_key(cfg: DemoConfig) -> Dict:
    """What the pretrained base model depends on (data, model dimensions, pretraining)."""
    from dataclasses import asdict

    return {**data_key(cfg), "model": asdict(cfg.model), "pretrain": asdict(cfg.pretrain)}
