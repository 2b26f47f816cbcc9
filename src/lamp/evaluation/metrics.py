"""Prognosis metrics of the paper (§3, Tables 1-2): Harrell's C-index and time-AUC.

Both wrap scikit-survival after checking their inputs here, so that the cases where a
metric is undefined (no event, no comparable pair, a time point outside the follow-up)
raise `MetricError` with the reason instead of returning NaN or a library's terse error.
`format_table` lays out results as the paper's Table 2: the mean over folds, with the
standard deviation over repeated runs (seeds) of those means.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from sksurv.metrics import concordance_index_censored, cumulative_dynamic_auc
from sksurv.util import Surv

from lamp.errors import LampError

__all__ = [
    "MetricError",
    "survival_array",
    "concordance_index",
    "time_dependent_auc",
    "format_table",
]


class MetricError(LampError):
    """A metric that is undefined for the data given; the message says why."""


def survival_array(events: ArrayLike, times: ArrayLike, where: str = "survival") -> np.ndarray:
    """Checked structured array ``(event: bool, time: float)`` for scikit-survival.

    Parameters
    ----------
    events : array-like, shape (n,), bool or 0/1
    times : array-like, shape (n,), months, finite and > 0
    """
    e = np.asarray(events)
    t = np.asarray(times, dtype=np.float64)
    if e.ndim != 1 or e.shape != t.shape or e.size == 0:
        raise MetricError(
            f"{where}: expected non-empty 1-D events and times of one length, got shapes "
            f"{e.shape} and {t.shape}"
        )
    if not np.all(np.isin(e.astype(np.float64), [0.0, 1.0])):
        raise MetricError(f"{where}: expected events of 0/1 or bool")
    if not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise MetricError(f"{where}: expected finite times > 0")
    return Surv.from_arrays(event=e.astype(bool), time=t)


def _check_risk(risk: ArrayLike, n: int, where: str) -> NDArray[np.float64]:
    r = np.asarray(risk, dtype=np.float64)
    if r.shape != (n,):
        raise MetricError(f"{where}: expected {n} risk scores, got shape {r.shape}")
    if not np.all(np.isfinite(r)):
        raise MetricError(f"{where}: expected finite risk scores, got NaN or inf")
    return r


def _comparable_pairs(event: NDArray[np.bool_], time: NDArray[np.float64]) -> int:
    # Harrell: (i, j) is comparable when i has an event and t_i < t_j, or t_i == t_j and
    # j is censored (scikit-survival's rule).
    ti = time[event][:, None]
    later = time[None, :] > ti
    tied_censored = (time[None, :] == ti) & ~event[None, :]
    return int((later | tied_censored).sum())


def concordance_index(events: ArrayLike, times: ArrayLike, risk: ArrayLike) -> float:
    """Harrell's C-index (ties in risk count 1/2), higher risk = earlier event.

    Parameters
    ----------
    events : array-like, shape (n,), 1 = event
    times : array-like, shape (n,), months
    risk : array-like, shape (n,)
        Predicted risk (e.g. ``-Σ S`` of `lamp.model.loss.risk_from_logits`).

    Returns
    -------
    float in [0, 1]

    Raises
    ------
    MetricError
        All patients censored, fewer than 2 comparable pairs, bad shapes or values.
    """
    y = survival_array(events, times, "concordance_index")
    r = _check_risk(risk, y.shape[0], "concordance_index")
    event, time = y["event"], y["time"]
    if not event.any():
        raise MetricError(
            f"concordance_index: all {event.size} patients are censored; the C-index needs "
            "at least one event"
        )
    pairs = _comparable_pairs(event, time)
    if pairs < 2:
        raise MetricError(
            f"concordance_index: expected at least 2 comparable pairs, got {pairs} "
            f"({int(event.sum())} events among {event.size} patients)"
        )
    return float(concordance_index_censored(event, time, r)[0])


def time_dependent_auc(
    train_events: ArrayLike,
    train_times: ArrayLike,
    test_events: ArrayLike,
    test_times: ArrayLike,
    risk: ArrayLike,
    time_points: Sequence[float] = (12.0, 24.0),
) -> NDArray[np.float64]:
    """Cumulative/dynamic AUC at given times, censoring weights from the training fold.

    Cases at t are the test patients with an event at or before t, controls those still
    event-free after t (Uno et al. 2007 weights from the Kaplan-Meier estimate of the
    censoring distribution of the *training* patients).

    Parameters
    ----------
    train_events, train_times : array-like, shape (n_train,)
        Outcomes of the training fold (for the censoring weights).
    test_events, test_times : array-like, shape (n_test,)
    risk : array-like, shape (n_test,)
    time_points : sequence of float, months, default (12, 24)

    Returns
    -------
    ndarray, shape (len(time_points),)

    Raises
    ------
    MetricError
        A time point outside the test follow-up ``[min, max)``, or at or beyond the
        training follow-up (no censoring weight), or with no case or no control.
    """
    y_train = survival_array(train_events, train_times, "time_dependent_auc train")
    y_test = survival_array(test_events, test_times, "time_dependent_auc test")
    r = _check_risk(risk, y_test.shape[0], "time_dependent_auc")
    tp = np.asarray(time_points, dtype=np.float64).reshape(-1)
    if tp.size == 0:
        raise MetricError("time_dependent_auc: expected at least one time point")
    t_test, e_test = y_test["time"], y_test["event"]
    t_lo, t_hi = float(t_test.min()), float(t_test.max())
    train_hi = float(y_train["time"].max())
    for t in tp:
        if not t_lo <= t < t_hi:
            raise MetricError(
                f"time_dependent_auc: time point {t:g} months is outside the test follow-up "
                f"[{t_lo:g}, {t_hi:g}); the AUC is undefined there"
            )
        if t >= train_hi:
            raise MetricError(
                f"time_dependent_auc: time point {t:g} months is at or beyond the training "
                f"follow-up ({train_hi:g}); no censoring weight can be estimated"
            )
        cases = int(np.sum(e_test & (t_test <= t)))
        controls = int(np.sum(t_test > t))
        if cases == 0 or controls == 0:
            raise MetricError(
                f"time_dependent_auc: at {t:g} months expected at least one case (event by "
                f"then) and one control (event-free after), got {cases} and {controls}"
            )
    auc = np.empty(tp.size, dtype=np.float64)
    for i, t in enumerate(tp):
        # One time point at a time, with the test events after t marked censored: they
        # are controls at t either way and their weights do not enter the AUC at t, but
        # scikit-survival evaluates the censoring weight at every test event time, and
        # an event later than the training follow-up would otherwise fail the fold.
        y_t = y_test.copy()
        y_t["event"] = e_test & (t_test <= t)
        try:
            auc[i] = cumulative_dynamic_auc(y_train, y_t, r, [t])[0][0]
        except ValueError as exc:
            raise MetricError(f"time_dependent_auc: at {t:g} months: {exc}") from exc
    return auc


def format_table(
    results: pd.DataFrame,
    metrics: Sequence[str] = ("c_index", "auc_12", "auc_24"),
    row: str = "variant",
    column: str = "endpoint",
    digits: int = 3,
) -> pd.DataFrame:
    """Paper Table 2 layout: "mean ± sd", mean over folds, sd over seeds.

    For each (row, column, seed) the metric is averaged over folds; the cell shows the
    mean of these seed means and their standard deviation (ddof = 1; "n/a" with one
    seed). Folds where a metric was undefined (NaN) are left out of that mean, and the
    cell then says how many (seed, fold) runs it used, as `lamp evaluate` does:
    ``"0.712 ± 0.010 (9/10 folds)"``; ``"n/a (0/10 folds)"`` when none.

    Parameters
    ----------
    results : DataFrame
        One row per fold and run, with columns ``row``, ``column``, ``seed``, ``fold``
        and the ``metrics``.

    Returns
    -------
    DataFrame of str, indexed by ``row`` values, columns ``(column value, metric)``.
    """
    need = [row, column, "seed", "fold", *metrics]
    missing = [c for c in need if c not in results.columns]
    if missing:
        raise MetricError(f"format_table: expected columns {need}, missing {missing}")
    per_seed = results.groupby([row, column, "seed"], sort=False)[list(metrics)].mean()
    grouped = per_seed.groupby(level=[0, 1], sort=False)
    mean, sd = grouped.mean(), grouped.std(ddof=1)
    runs = results.groupby([row, column], sort=False)[list(metrics)]
    used, total = runs.count(), runs.size()
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for (r, c), m in mean.iterrows():
        for metric in metrics:
            s = sd.loc[(r, c), metric]
            k, n = int(used.loc[(r, c), metric]), int(total.loc[(r, c)])
            if k == 0:
                text = "n/a"
            else:
                text = f"{m[metric]:.{digits}f} ± " + ("n/a" if np.isnan(s) else f"{s:.{digits}f}")
            if k < n:
                text += f" ({k}/{n} folds)"
            cells.setdefault((str(c), metric), {})[str(r)] = text
    table = pd.DataFrame(cells)
    table.index.name = row
    return table
