"""The fairseq command lines of the demo, built in one place from the config (no per-method copies)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from .config import DemoConfig, Pruning
from .data import fairseq_bin

USER_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the fairseq_lslo package


@dataclass(frozen=True)
class Method:
    """One way of fine-tuning the base model (or none)."""

    name: str
    label: str
    arch: str  # 'transformer' (full fine-tuning, base) or 'lslo_transformer'
    routing: str  # 'language' (src/tgt per layer), 'shared', or '' for plain transformers
    prune: bool = False
    trains: bool = True
    preset: str = "ours"  # --lslo-preset of the adapter methods: ours or paper (the reference's)
    study: bool = False  # run once per seed of DemoConfig.study_seeds (else once, with DemoConfig.seed)
    ranks: str = ""  # --lslo-rank (empty: the size's LSLoSettings.ranks)
    shared_rank: int = 0  # --lslo-shared-rank of 'shared' routing (0: the sum of the language ranks)
    pruning: Optional[Pruning] = None  # the pruning setting of a pruning method (None: the size's)
    snapshots: bool = False  # keep checkpoints along the run for the sparsity-over-updates plot


METHODS: Dict[str, Method] = {m.name: m for m in (
    Method("base", "no fine-tuning (base)", "transformer", "", trains=False),
    Method("full", "full fine-tuning", "transformer", ""),
    Method("shared_lora", "shared LoRA", "lslo_transformer", "shared"),
    Method("lslo", "LSLo", "lslo_transformer", "language", study=True),
    Method("lslo_pruned", "LSLo + gradual pruning", "lslo_transformer", "language", prune=True, study=True,
           snapshots=True),
    Method("lslo_paper", "LSLo, reference parameterisation", "lslo_transformer", "language", preset="paper",
           study=True),
    Method("lslo_paper_pruned", "LSLo + gradual pruning, reference parameterisation", "lslo_transformer",
           "language", prune=True, preset="paper", study=True, snapshots=True),
)}


@dataclass(frozen=True)
class Run:
    """One training run of a method with one seed; the first seed's run is the method's own."""

    method: Method
    seed: int
    name: str  # directory and log name: the method's name, plus -seedN for further seeds


def runs_of(methods: Sequence[Method], seed: int, study_seeds: Sequence[int], seed_major: bool = False) -> List[Run]:
    """Every run: study methods once per study seed, the others once with ``seed``.  The first
    run of a method carries its name (its results are the method's row of the results table).
    ``seed_major``: every method's first seed before any second seed (a partial study then has
    every method once)."""
    out = []
    for m in methods:
        seeds = list(study_seeds) if m.study else [seed]
        for k, s in enumerate(seeds):
            out.append(Run(m, s, m.name if k == 0 else f"{m.name}-seed{s}"))
    if seed_major:
        rank = {r.name: (0 if r.name == r.method.name else 1 + list(study_seeds).index(r.seed)) for r in out}
        out.sort(key=lambda r: rank[r.name])  # stable: the methods' order within each seed
    return out


def lang_pairs(langs: Sequence[str]) -> str:
    return ",".join(f"{s}-{t}" for s in langs for t in langs if s != t)


def task_args(langs: Sequence[str]) -> List[str]:
    return ["--user-dir", USER_DIR, "--task", "translation_multi_simple_epoch", "--lang-pairs", lang_pairs(langs),
            "--encoder-langtok", "src", "--decoder-langtok"]


def model_args(cfg: DemoConfig) -> List[str]:
    m = cfg.model
    return ["--encoder-layers", str(m.layers), "--decoder-layers", str(m.layers),
            "--encoder-embed-dim", str(m.dim), "--decoder-embed-dim", str(m.dim),
            "--encoder-ffn-embed-dim", str(m.ffn), "--decoder-ffn-embed-dim", str(m.ffn),
            "--encoder-attention-heads", str(m.heads), "--decoder-attention-heads", str(m.heads),
            "--share-all-embeddings", "--dropout", str(m.dropout)]


def lslo_args(cfg: DemoConfig, method: Method) -> List[str]:
    lay = cfg.model.layers
    langs = ",".join(f"{code}:{group}" for code, group in cfg.languages)
    enc_src = max(1, (3 * lay) // 4)
    routing_enc = f"src*{enc_src},tgt*{lay - enc_src}" if lay > enc_src else f"src*{lay}"
    routing_dec = f"tgt*{lay}"
    if method.routing == "shared":
        routing_enc, routing_dec = f"shared*{lay}", f"shared*{lay}"
    args = ["--lslo-langs", langs, "--lslo-rank", method.ranks or cfg.lslo.ranks, "--lslo-alpha", str(cfg.lslo.alpha),
            "--lslo-encoder-positions", cfg.lslo.positions, "--lslo-decoder-positions", cfg.lslo.positions,
            "--lslo-encoder-routing", routing_enc, "--lslo-decoder-routing", routing_dec,
            "--lslo-preset", method.preset]
    if method.shared_rank:
        args += ["--lslo-shared-rank", str(method.shared_rank)]
    return args


def optimizer_args(lr: float, warmup: int, method: Method, cfg: DemoConfig) -> List[str]:
    adam = ["--adam-betas", "(0.9,0.98)", "--lr", str(lr), "--lr-scheduler", "inverse_sqrt",
            "--warmup-updates", str(warmup), "--warmup-init-lr", "1e-07"]
    if not method.prune:
        return ["--optimizer", "adam", *adam]
    p = method.pruning or cfg.pruning
    args = ["--optimizer", "lslo_pruning", "--lslo-inner-optimizer", "adam", *adam,
            "--lslo-sparsity", p.sparsity, "--lslo-prune-start", str(p.start), "--lslo-prune-end", str(p.end),
            "--lslo-prune-unit", "updates", "--lslo-prune-interval", str(p.interval),
            "--lslo-prune-scope", p.scope, "--lslo-prune-factors", p.factors]
    if p.structure:
        args += ["--lslo-prune-structure", p.structure]
    return args


def train_command(cfg: DemoConfig, data: str, save_dir: str, method: Method, base_ckpt: str = "",
                  seed: Optional[int] = None) -> List[str]:
    """fairseq-train for pretraining (method 'base') or one fine-tuning method (``seed``: cfg.seed)."""
    pretrain = not method.trains
    phase = cfg.pretrain if pretrain else cfg.finetune
    cmd = [fairseq_bin("fairseq-train"), data, *task_args(cfg.langs), "--arch", method.arch, *model_args(cfg)]
    if method.arch == "lslo_transformer":
        cmd += lslo_args(cfg, method)
    if not pretrain:
        cmd += ["--finetune-from-model", base_ckpt]
    lr = phase.lr if method.arch == "transformer" else cfg.finetune.lslo_lr
    cmd += ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", str(phase.label_smoothing),
            *optimizer_args(lr, phase.warmup, method, cfg),
            "--max-tokens", str(phase.max_tokens), "--max-update", str(phase.updates),
            "--save-dir", save_dir, "--cpu", "--seed", str(cfg.seed if seed is None else seed), "--num-workers", "0",
            "--no-epoch-checkpoints", "--disable-validation",
            "--log-format", "simple", "--log-interval", str(max(1, phase.updates // 10)),
            "--ddp-backend", "no_c10d", "--skip-invalid-size-inputs-valid-test"]
    if method.snapshots:  # snapshots for the sparsity-over-updates plot
        cmd += ["--save-interval-updates", str(max(1, phase.updates // cfg.snapshots)), "--keep-interval-updates", "-1"]
    return cmd


def generate_args(cfg: DemoConfig, data: str, ckpt: str, src: str, tgt: str, results: str) -> List[str]:
    """Arguments of fairseq's generate (run in-process by :mod:`.decode`) for one direction."""
    return [data, *task_args(cfg.langs), "--source-lang", src, "--target-lang", tgt, "--path", ckpt,
            "--gen-subset", "test", "--beam", str(cfg.beam), "--max-tokens", "4000", "--cpu",
            "--post-process", "sentencepiece", "--results-path", results, "--num-workers", "0",
            "--max-len-a", "1.5", "--max-len-b", "10",  # bounds babbling; references are far shorter
            "--required-batch-size-multiple", "1"]  # the default 8 drops test sentences here
