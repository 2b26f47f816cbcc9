"""Kaplan–Meier curves and the log-rank test of high- vs low-risk groups (paper Fig. 2A-B).

The paper splits the patients at "the training-fold median risk" and compares the two
groups' Kaplan–Meier curves with a log-rank test. This module holds the statistics
(written here, checked against lifelines in the tests) and the grouping rule.

The grouping rule
-----------------
For fold k the rule is: threshold = median of the risks that fold k's *model* gives to
its *training* patients. ``lamp train`` and ``lamp baselines`` store these in-sample
risks (``train_risk.csv``, one row per training patient of each fold, scored by that
fold's model); pass them as ``train_risk`` and this exact rule is used.

An out-of-fold file alone (``oof_risk.csv`` written by hand or by an older version) holds
only held-out risks. For it `risk_groups` falls back to the approximation

    threshold_k = median of the out-of-fold risks of the patients not in fold k
                  (same endpoint, method and seed),

i.e. the training patients' risks as scored by the models that held them out. It uses no
risk of fold k's own patients, but it is not wholly blind to fold k: those four other
fold models were trained on folds that include fold k, outcomes and all, so fold k's
outcomes reach its threshold through them (weakly: one median of a score); and those
risks come from four other fold models, whose scales may differ from fold k's model. For
methods that fit nothing (IPI, Ann Arbor, a computed stage) the two rules coincide. Each
result says which rule made it.
The held-out patients of all folds are then pooled into one high- and one low-risk group.

References
----------
Kaplan EL, Meier P. Nonparametric estimation from incomplete observations. J Am Stat
Assoc 1958;53:457-481.
Mantel N. Evaluation of survival data and two new rank order statistics arising in its
consideration. Cancer Chemother Rep 1966;50:163-170.
Peto R, Peto J. Asymptotically efficient rank invariant test procedures. J R Stat Soc A
1972;135:185-207.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy.stats import chi2 as chi2_dist

from lamp.errors import LampError

__all__ = [
    "SurvivalError",
    "KaplanMeier",
    "LogRankResult",
    "kaplan_meier",
    "number_at_risk",
    "logrank_test",
    "RULE_EXACT",
    "RULE_OTHER_FOLDS",
    "risk_groups",
]

RULE_EXACT = "training-fold median (in-sample risks of fold k's model)"
RULE_OTHER_FOLDS = "median of the out-of-fold risks of the patients not in fold k"


class SurvivalError(LampError):
    """Survival data a Kaplan–Meier estimate or a log-rank test cannot use."""


def _check_survival(
    times: ArrayLike, events: ArrayLike, where: str
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    t = np.asarray(times, dtype=np.float64)
    e = np.asarray(events)
    if t.ndim != 1 or t.shape != e.shape or t.size == 0:
        raise SurvivalError(
            f"{where}: expected non-empty 1-D times and events of one length, got shapes "
            f"{t.shape} and {e.shape}"
        )
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise SurvivalError(f"{where}: expected finite times >= 0")
    ef = e.astype(np.float64)
    if not np.all(np.isin(ef, [0.0, 1.0])):
        raise SurvivalError(f"{where}: expected events of 0/1 or bool")
    return t, ef.astype(bool)


@dataclass(frozen=True)
class KaplanMeier:
    """A Kaplan–Meier estimate: a right-continuous step function.

    Attributes
    ----------
    time : ndarray, shape (m,)
        The distinct observed times (events or censorings), ascending, months.
    survival : ndarray, shape (m,)
        S(t) just after each ``time`` (constant until the next one); S = 1 before the
        first event.
    at_risk : ndarray, shape (m,)
        Patients still under observation just before each time, n_i = #{T >= t_i}.
    events, censored : ndarray, shape (m,)
        Events d_i and censorings c_i at each time.
    """

    time: NDArray[np.float64]
    survival: NDArray[np.float64]
    at_risk: NDArray[np.int64]
    events: NDArray[np.int64]
    censored: NDArray[np.int64]

    def __call__(self, t: ArrayLike) -> NDArray[np.float64]:
        """S(t) at the given times (1 before the first observed time)."""
        tt = np.asarray(t, dtype=np.float64)
        idx = np.searchsorted(self.time, tt, side="right") - 1
        return np.where(idx >= 0, self.survival[np.clip(idx, 0, None)], 1.0)

    def median(self) -> float:
        """Median survival time: the first time with S(t) <= 0.5 (inf if never reached)."""
        hit = np.flatnonzero(self.survival <= 0.5)
        return float(self.time[hit[0]]) if hit.size else float("inf")


def kaplan_meier(times: ArrayLike, events: ArrayLike) -> KaplanMeier:
    """Kaplan–Meier product-limit estimate (Kaplan & Meier 1958).

    S(t) = prod_{t_i <= t} (1 - d_i / n_i), with d_i the events at the distinct time
    t_i and n_i the number at risk just before t_i. Censorings tied with events are
    counted at risk at that time (the usual convention, as in lifelines and R).

    Parameters
    ----------
    times : array-like, shape (n,), months, >= 0
    events : array-like, shape (n,), 1 = event, 0 = censored

    Returns
    -------
    KaplanMeier
    """
    t, e = _check_survival(times, events, "kaplan_meier")
    uniq, inv = np.unique(t, return_inverse=True)
    d = np.bincount(inv, weights=e, minlength=uniq.size).astype(np.int64)
    total = np.bincount(inv, minlength=uniq.size).astype(np.int64)
    c = total - d
    # n_i = everyone observed at or after t_i: the reverse cumulative count
    n = np.cumsum(total[::-1])[::-1].astype(np.int64)
    s = np.cumprod(1.0 - d / n)
    return KaplanMeier(uniq, s, n, d, c)


def number_at_risk(times: ArrayLike, at: Sequence[float]) -> NDArray[np.int64]:
    """Numbers at risk at the given times: #{i : T_i >= tau} for each tau.

    The convention of KM-plot risk tables (a patient censored or with an event exactly at
    tau still counts at tau).
    """
    t = np.asarray(times, dtype=np.float64)
    tau = np.asarray(at, dtype=np.float64)
    return (t[None, :] >= tau[:, None]).sum(axis=1).astype(np.int64)


@dataclass(frozen=True)
class LogRankResult:
    """A two-group log-rank test.

    Attributes
    ----------
    chi2 : float
        Test statistic, chi-square with 1 degree of freedom under H0.
    p_value : float
    observed, expected : tuple of float, (group 1, group 2)
        Observed events and events expected under H0 in each group.
    """

    chi2: float
    p_value: float
    observed: tuple[float, float]
    expected: tuple[float, float]


def logrank_test(
    times_1: ArrayLike, events_1: ArrayLike, times_2: ArrayLike, events_2: ArrayLike
) -> LogRankResult:
    """Two-group log-rank (Mantel–Cox) test, chi-square with 1 df.

    At each distinct event time t_j of the pooled sample, with n_j at risk (n_1j in
    group 1) and d_j events (d_1j in group 1) (Mantel 1966; Peto & Peto 1972):

        E_1j = d_j n_1j / n_j
        V_j  = d_j (n_1j / n_j) (1 - n_1j / n_j) (n_j - d_j) / (n_j - 1)   (hypergeometric)
        chi2 = (sum_j (d_1j - E_1j))^2 / sum_j V_j,  p = P(chi2_1 > chi2)

    Parameters
    ----------
    times_1, events_1 : array-like, shape (n1,)
    times_2, events_2 : array-like, shape (n2,)

    Raises
    ------
    SurvivalError
        Empty group, bad values, or no event at all (the statistic is 0/0).
    """
    t1, e1 = _check_survival(times_1, events_1, "logrank_test group 1")
    t2, e2 = _check_survival(times_2, events_2, "logrank_test group 2")
    t = np.concatenate([t1, t2])
    e = np.concatenate([e1, e2])
    g1 = np.concatenate([np.ones(t1.size, bool), np.zeros(t2.size, bool)])
    if not e.any():
        raise SurvivalError(
            f"logrank_test: no event among the {t.size} patients; the test is undefined"
        )
    tj = np.unique(t[e])
    # at risk just before t_j, and events at t_j, overall and in group 1
    n = (t[None, :] >= tj[:, None]).sum(axis=1).astype(np.float64)
    n1 = (t[None, g1] >= tj[:, None]).sum(axis=1).astype(np.float64)
    d = ((t[None, :] == tj[:, None]) & e[None, :]).sum(axis=1).astype(np.float64)
    d1 = ((t[None, g1] == tj[:, None]) & e[None, g1]).sum(axis=1).astype(np.float64)
    exp1 = d * n1 / n
    with np.errstate(invalid="ignore", divide="ignore"):
        v = np.where(n > 1, d * (n1 / n) * (1.0 - n1 / n) * (n - d) / (n - 1.0), 0.0)
    var = float(v.sum())
    if var <= 0:
        raise SurvivalError(
            "logrank_test: zero variance (one group has no patient at risk at any event "
            "time); the test is undefined"
        )
    o1, e1_sum = float(d1.sum()), float(exp1.sum())
    o2, e2_sum = float(d.sum()) - o1, float(d.sum()) - e1_sum
    stat = (o1 - e1_sum) ** 2 / var
    return LogRankResult(float(stat), float(chi2_dist.sf(stat, 1)), (o1, o2), (e1_sum, e2_sum))


def risk_groups(oof: pd.DataFrame, train_risk: pd.DataFrame | None = None) -> pd.DataFrame:
    """High/low risk group of every held-out patient, split per fold (see module doc).

    Parameters
    ----------
    oof : DataFrame
        Out-of-fold risks of *one* endpoint, method and seed: columns ``patient_id``,
        ``fold``, ``risk`` (one row per patient).
    train_risk : DataFrame, optional
        In-sample risks of the training patients of each fold under that fold's model:
        columns ``fold`` (the held-out fold whose model scored them) and ``risk``. When
        given, threshold_k is their median (the exact "training-fold median" rule).

    Returns
    -------
    DataFrame
        ``oof`` with ``threshold`` (the fold's), ``high`` (bool: risk > threshold; or
        risk >= threshold where no reference risk exceeds the median) and
        ``rule`` (`RULE_EXACT` or `RULE_OTHER_FOLDS`).

    Raises
    ------
    SurvivalError
        Missing columns, a patient listed twice, a single fold (no "other folds"), or a
        fold without training risks.
    """
    need = ["patient_id", "fold", "risk"]
    missing = [c for c in need if c not in oof.columns]
    if missing:
        raise SurvivalError(f"risk_groups: expected columns {need}, missing {missing}")
    dup = oof["patient_id"][oof["patient_id"].duplicated()]
    if len(dup):
        raise SurvivalError(
            f"risk_groups: expected one risk per patient, got duplicates {dup.tolist()[:5]}"
        )
    folds = sorted(oof["fold"].unique())
    if train_risk is None and len(folds) < 2:
        raise SurvivalError(
            f"risk_groups: expected at least 2 folds to take the other folds' median, got {folds}"
        )
    out = oof.copy()
    out["threshold"] = np.nan
    out["at_threshold_high"] = False
    for k in folds:
        if train_risk is not None:
            ref = train_risk.loc[train_risk["fold"] == k, "risk"]
        else:
            ref = oof.loc[oof["fold"] != k, "risk"]
        if ref.empty:
            raise SurvivalError(f"risk_groups: no training risks for fold {k}")
        ref_values = ref.to_numpy(np.float64)
        median = float(np.median(ref_values))
        out.loc[out["fold"] == k, "threshold"] = median
        # Ties at the threshold go to the low-risk group ("high" = strictly above the
        # median), unless no reference risk lies above the median: then a discrete score
        # (a stage, an index) would put everyone in the low group, and the median's own
        # value counts as high instead (decided from the reference risks only).
        if not np.any(ref_values > median):
            out.loc[out["fold"] == k, "at_threshold_high"] = True
    r = out["risk"].to_numpy(np.float64)
    t = out["threshold"].to_numpy(np.float64)
    out["high"] = (r > t) | (out["at_threshold_high"].to_numpy(bool) & (r == t))
    out = out.drop(columns="at_threshold_high")
    out["rule"] = RULE_EXACT if train_risk is not None else RULE_OTHER_FOLDS
    return out
