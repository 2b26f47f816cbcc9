"""Evaluation of prognosis models (paper §3): C-index, time-dependent AUC, tables."""

from lamp.evaluation.metrics import (
    MetricError,
    concordance_index,
    format_table,
    survival_array,
    time_dependent_auc,
)

__all__ = [
    "MetricError",
    "concordance_index",
    "format_table",
    "survival_array",
    "time_dependent_auc",
]
