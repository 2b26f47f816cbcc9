"""Evaluation of prognosis models (paper §3): C-index, time-dependent AUC, tables.

The names below are imported on first use (PEP 562), so that importing a submodule such
as `lamp.evaluation.cli` does not load scikit-survival (``lamp --help`` stays fast).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "MetricError",
    "concordance_index",
    "format_table",
    "survival_array",
    "time_dependent_auc",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("lamp.evaluation.metrics"), name)
    raise AttributeError(f"module 'lamp.evaluation' has no attribute {name!r}")
