"""The clinical indices of Table 1, IPI and Ann Arbor stage, used directly as risk scores.

Known (paper §3, Table 1): the International Prognostic Index [1]_ and the Ann Arbor
stage [2]_ are the clinical comparators. Choice: as in most prognostic-model papers, each
index is taken as it stands from ``clinical.csv`` (``ipi`` 0-5, ``ann_arbor`` 1-4) and
used as the risk score of every held-out patient. Nothing is fitted, so the folds only
decide which patients are scored together; the many ties are handled by the C-index and
the time-dependent AUC of ``lamp evaluate`` (a tie counts one half in Harrell's C).
Both run through `lamp.baselines.common.cross_validate`, hence on the same folds and the
same patients (those with outcome data) as every other row of Table 1.

References
----------
.. [1] The International Non-Hodgkin's Lymphoma Prognostic Factors Project (Shipp MA et
   al.). A predictive model for aggressive non-Hodgkin's lymphoma. N Engl J Med
   1993;329(14):987-994.
.. [2] Cheson BD, Fisher RI, Barrington SF, et al. Recommendations for initial
   evaluation, staging, and response assessment of Hodgkin and non-Hodgkin lymphoma:
   the Lugano classification. J Clin Oncol 2014;32(27):3059-3068.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lamp.baselines.common import BaselineError, Split, cross_validate
from lamp.cohort import CohortError

__all__ = ["CLINICAL_INDICES", "index_risk", "run_clinical_indices"]

#: Method name (Table 1 row, folder ``WORK/baselines/<method>/``) -> ``clinical.csv`` column.
CLINICAL_INDICES: dict[str, str] = {"IPI": "ipi", "Ann Arbor": "ann_arbor"}


def index_risk(column: str) -> Callable[[Split], np.ndarray]:
    """A ``fit_predict`` that returns the held-out patients' ``column`` as their risk.

    Parameters
    ----------
    column : str
        A numeric column of ``clinical.csv`` where higher means worse prognosis.

    Returns
    -------
    callable
        ``fit_predict(split) -> ndarray, shape (len(split.test),)``.

    Raises
    ------
    BaselineError
        (When called) the column is missing or has empty or non-numeric cells.
    """

    def fit_predict(split: Split) -> np.ndarray:
        if column not in split.test.columns:
            raise BaselineError(
                f"clinical.csv: expected a column {column!r}, got columns "
                f"{list(split.test.columns)}"
            )
        values = pd.to_numeric(split.test[column], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            raise BaselineError(
                f"clinical.csv column {column!r}: expected a number for every patient, got "
                f"empty or non-numeric cells for {split.test['patient_id'][bad].tolist()[:10]}"
            )
        return values

    return fit_predict


def run_clinical_indices(
    work: str | Path,
    cohort: str | Path,
    endpoints: Sequence[str] = ("pfs", "os"),
    seeds: Sequence[int] = (0,),
    methods: Sequence[str] = tuple(CLINICAL_INDICES),
    progress: Callable[[str], None] | None = None,
) -> dict[str, pd.DataFrame]:
    """Cross-validate the IPI and the Ann Arbor stage as risk scores.

    Parameters
    ----------
    work, cohort : str or Path
    endpoints : sequence of {"pfs", "os"}
    seeds : sequence of int
        The indices are deterministic; one seed is enough (more only repeat the rows).
    methods : sequence of str
        Names from `CLINICAL_INDICES` ("IPI", "Ann Arbor").
    progress : callable, optional

    Returns
    -------
    dict
        Method name -> out-of-fold risks (`lamp.baselines.common.OOF_COLUMNS`), also
        written to ``WORK/baselines/<method>/oof_risk.csv``.

    Raises
    ------
    BaselineError
        An unknown method, a bad endpoint or seed, an unreadable ``clinical.csv`` or
        ``folds.csv``.
    """
    unknown = [m for m in methods if m not in CLINICAL_INDICES]
    if unknown or not methods:
        raise BaselineError(
            f"clinical indices: expected methods among {list(CLINICAL_INDICES)}, "
            f"got {list(methods)}"
        )
    out: dict[str, pd.DataFrame] = {}
    for method in methods:
        column = CLINICAL_INDICES[method]
        settings = {"risk": f"clinical.csv column {column!r} as it stands", "fitted": False}
        try:
            out[method] = cross_validate(
                method, index_risk(column), work, cohort, endpoints, seeds, settings, progress
            )
        except CohortError as exc:
            raise BaselineError(f"{method}: {exc}") from None
    return out
