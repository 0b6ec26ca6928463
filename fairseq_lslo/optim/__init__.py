"""Optimizers: ``lslo_pruning`` (gradual language-specific pruning around any fairseq optimizer)."""
from .lslo_pruning import LSLoPruningOptimizer  # noqa: F401  (registers --optimizer lslo_pruning)
