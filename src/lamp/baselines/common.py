"""What every baseline of Table 1 shares: the folds, the outcome rule and the output.

A row of Table 1 must differ from another only by the method (paper §3, DESIGN.md
"Evaluation protocol"). So every baseline runs through `cross_validate` here:

* the cohort's one split (``COHORT/folds.csv``) — for fold k the method is fitted on the
  other folds' patients and scores fold k's patients;
* patients without outcome data are neither trained on nor scored (as for LAMP);
* the same endpoints (``pfs``, ``os``) and seeds as the prognosis model;
* one output format, ``WORK/baselines/<method>/oof_risk.csv`` with the columns
  `OOF_COLUMNS` (higher risk = worse prognosis), written atomically, plus a
  ``config.json`` with the method's settings. ``lamp evaluate`` computes every metric
  from these files with the same code as for LAMP;
* ``train_risk.csv`` beside it, same columns: each fold model's in-sample risks of its
  own training patients (``fold`` = the held-out fold of the model that scored them), so
  that ``lamp evaluate`` splits the Kaplan–Meier groups of fold k at the median risk of
  fold k's training patients under fold k's model (paper Fig. 2), the same rule as for
  LAMP's rows.

A method is a function ``fit_predict(split) -> risks`` that sees only `Split`: the
training rows (with ``time``/``event`` of the endpoint) and the rows to score (whose
outcome columns are removed, so a method cannot read them by accident). The rows to
score are the held-out patients followed by the training patients again; a method
scores every row the same way and fits nothing on them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lamp.cohort import (
    ENDPOINTS,
    SURVIVAL_COLUMNS,
    has_outcome,
    read_clinical,
    read_folds,
    write_text_atomic,
)
from lamp.errors import LampError

__all__ = [
    "ENDPOINTS",
    "OOF_COLUMNS",
    "BaselineError",
    "Split",
    "outcome_table",
    "cross_validate",
    "read_oof",
]

OOF_COLUMNS = ["patient_id", "endpoint", "method", "seed", "fold", "risk"]


class BaselineError(LampError):
    """A baseline that cannot run on the data given; the message says why."""


@dataclass(frozen=True)
class Split:
    """One fold of one endpoint, as a method sees it.

    Attributes
    ----------
    endpoint : {"pfs", "os"}
    fold : int
        The held-out fold.
    seed : int
        Seed for everything random in the method (already combined with the fold).
    train : DataFrame
        Clinical rows of the training patients (with outcome) plus ``time`` (months)
        and ``event`` (0/1) of the endpoint.
    test : DataFrame
        The rows to score, outcome columns removed: the ``n_heldout`` held-out patients
        first, then the training patients again (their in-sample risks give the
        Kaplan–Meier threshold; see the module doc). A method must score each row on its
        own and fit nothing on these rows.
    n_heldout : int or None
        How many of the first rows of ``test`` are the held-out fold (None: all of them).
    """

    endpoint: str
    fold: int
    seed: int
    train: pd.DataFrame
    test: pd.DataFrame
    n_heldout: int | None = None


def outcome_table(cohort: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """The cohort's patients with outcome data, with their fold; and those without.

    Returns
    -------
    table : DataFrame
        ``clinical.csv`` rows of the patients with outcome data plus a ``fold`` column.
    excluded : list of str
        Ids of the patients without outcome data (not trained on, not scored).
    """
    cohort = Path(cohort)
    clinical = read_clinical(cohort / "clinical.csv")
    folds = read_folds(cohort / "folds.csv", clinical["patient_id"].tolist())
    ok = has_outcome(clinical)
    excluded = clinical.loc[~ok, "patient_id"].tolist()
    table = clinical[ok].merge(folds, on="patient_id", how="left").reset_index(drop=True)
    return table, excluded


def _splits(table: pd.DataFrame, endpoint: str, seed: int) -> list[Split]:
    tcol, ecol = ENDPOINTS[endpoint]
    data = table.copy()
    data["time"] = data[tcol].astype(np.float64)
    data["event"] = data[ecol].astype(int)
    hidden = [*SURVIVAL_COLUMNS, "time", "event"]
    out = []
    for fold in sorted(int(f) for f in data["fold"].unique()):
        train = data[data["fold"] != fold].reset_index(drop=True)
        heldout = data[data["fold"] == fold].drop(columns=hidden)
        test = pd.concat([heldout, train.drop(columns=hidden)], ignore_index=True)
        out.append(Split(endpoint, fold, seed * 1000 + fold, train, test, len(heldout)))
    return out


def cross_validate(
    method: str,
    fit_predict: Callable[[Split], Sequence[float] | np.ndarray],
    work: str | Path,
    cohort: str | Path,
    endpoints: Sequence[str] = ("pfs", "os"),
    seeds: Sequence[int] = (0,),
    settings: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Run one baseline over the cohort's folds; write and return its out-of-fold risks.

    Parameters
    ----------
    method : str
        The method's name in the tables (also its folder: ``WORK/baselines/<method>/``).
    fit_predict : callable
        ``fit_predict(split)`` fits on ``split.train`` and returns one finite risk per
        row of ``split.test`` (higher = worse prognosis).
    work, cohort : str or Path
    endpoints : sequence of {"pfs", "os"}
    seeds : sequence of int
        A deterministic method needs only one seed (its risks would not change).
    settings : dict, optional
        The method's settings, saved in ``config.json``.
    progress : callable, optional
        Called with one line per fold.

    Returns
    -------
    DataFrame with `OOF_COLUMNS`: the held-out risks (also written as ``oof_risk.csv``;
    the training patients' in-sample risks go to ``train_risk.csv``).

    Raises
    ------
    BaselineError
        A bad endpoint, or a method returning the wrong number of risks or non-finite ones.
    """
    bad = [e for e in endpoints if e not in ENDPOINTS]
    if bad or not endpoints:
        raise BaselineError(
            f"{method}: expected endpoints among {sorted(ENDPOINTS)}, got {list(endpoints)}"
        )
    if not seeds or any(int(s) < 0 for s in seeds):
        raise BaselineError(f"{method}: expected seeds >= 0, got {list(seeds)}")
    table, excluded = outcome_table(cohort)
    rows: list[dict[str, Any]] = []
    train_rows: list[dict[str, Any]] = []
    for endpoint in endpoints:
        for seed in seeds:
            for split in _splits(table, endpoint, int(seed)):
                risk = np.asarray(fit_predict(split), dtype=np.float64)
                if risk.shape != (len(split.test),):
                    raise BaselineError(
                        f"{method} ({endpoint}, fold {split.fold}): expected "
                        f"{len(split.test)} risks, got shape {risk.shape}"
                    )
                if not np.all(np.isfinite(risk)):
                    raise BaselineError(
                        f"{method} ({endpoint}, fold {split.fold}): non-finite risks for "
                        f"{split.test['patient_id'][~np.isfinite(risk)].tolist()[:10]}"
                    )
                n_heldout = len(split.test) if split.n_heldout is None else split.n_heldout
                for i, (pid, r) in enumerate(zip(split.test["patient_id"], risk, strict=True)):
                    (rows if i < n_heldout else train_rows).append(
                        {
                            "patient_id": pid,
                            "endpoint": endpoint,
                            "method": method,
                            "seed": int(seed),
                            "fold": split.fold,
                            "risk": float(r),
                        }
                    )
                if progress is not None:
                    progress(f"{method} {endpoint} seed {seed} fold {split.fold}: done")
    oof = pd.DataFrame(rows, columns=OOF_COLUMNS)
    out = Path(work) / "baselines" / method
    train_risk = pd.DataFrame(train_rows, columns=OOF_COLUMNS)
    # The oof file last, after removing the old one: a run cut short here leaves no
    # oof_risk.csv (so the method counts as not run), never one paired with the
    # config.json or train_risk.csv of another run.
    (out / "oof_risk.csv").unlink(missing_ok=True)
    write_text_atomic(
        out / "config.json",
        json.dumps(
            {
                "method": method,
                "cohort": str(cohort),
                "endpoints": list(endpoints),
                "seeds": [int(s) for s in seeds],
                "settings": settings or {},
                "excluded_without_outcome": excluded,
            },
            indent=2,
            default=str,
        )
        + "\n",
    )
    write_text_atomic(out / "train_risk.csv", train_risk.to_csv(index=False, lineterminator="\n"))
    write_text_atomic(out / "oof_risk.csv", oof.to_csv(index=False, lineterminator="\n"))
    return oof


def read_oof(path: str | Path) -> pd.DataFrame:
    """Read an ``oof_risk.csv`` of a baseline, checking its columns and values."""
    path = Path(path)
    if not path.is_file():
        raise BaselineError(f"{path}: no such file (run the baseline first)")
    df = pd.read_csv(path, dtype={"patient_id": str})
    missing = [c for c in OOF_COLUMNS if c not in df.columns]
    if missing:
        raise BaselineError(f"{path}: expected columns {OOF_COLUMNS}, missing {missing}")
    bad = ~np.isfinite(pd.to_numeric(df["risk"], errors="coerce"))
    if bad.any():
        raise BaselineError(f"{path}: non-finite risk in rows {list(df.index[bad])[:10]}")
    bad_e = ~df["endpoint"].isin(list(ENDPOINTS))
    if bad_e.any():
        raise BaselineError(
            f"{path}: column endpoint: expected pfs or os, got {sorted(set(df['endpoint'][bad_e]))}"
        )
    return df
