"""Criteria: label-smoothed cross entropy with per-language metrics and routing-search extras."""
from .lslo_label_smoothed_cross_entropy import LSLoLabelSmoothedCrossEntropyCriterion  # noqa: F401
