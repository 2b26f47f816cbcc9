"""C-index and time-dependent AUC against lifelines and scikit-survival references."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifelines.datasets import load_regression_dataset, load_rossi
from lifelines.utils import concordance_index as lifelines_cindex
from sksurv.datasets import load_veterans_lung_cancer, load_whas500
from sksurv.metrics import concordance_index_censored, cumulative_dynamic_auc

from lamp.evaluation.metrics import (
    MetricError,
    concordance_index,
    format_table,
    time_dependent_auc,
)


def test_cindex_hand_case() -> None:
    # times 1,2,3 all events, risks 3,1,2: comparable pairs (1,2),(1,3),(2,3);
    # concordant: (1,2) yes, (1,3) yes, (2,3) no -> 2/3.
    assert concordance_index([1, 1, 1], [1.0, 2.0, 3.0], [3.0, 1.0, 2.0]) == pytest.approx(2 / 3)
    # A tie in risk counts 1/2: risks 2,2,1 -> (1,2) tie, (1,3) yes, (2,3) yes -> 2.5/3.
    assert concordance_index([1, 1, 1], [1.0, 2.0, 3.0], [2.0, 2.0, 1.0]) == pytest.approx(2.5 / 3)


def test_cindex_matches_lifelines_on_rossi() -> None:
    df = load_rossi()
    # Integer risks: scikit-survival counts risks within 1e-8 as tied (tied_tol) while
    # lifelines needs exact equality, so float round-off would differ in the 4th decimal.
    risk = 10 * df["prio"] - df["age"] + 3 * df["race"]
    ours = concordance_index(df["arrest"], df["week"], risk)
    # lifelines ranks predicted survival times: higher = longer, so give it -risk.
    assert ours == pytest.approx(lifelines_cindex(df["week"], -risk, df["arrest"]), abs=1e-9)


def test_cindex_matches_lifelines_on_regression_dataset() -> None:
    df = load_regression_dataset()
    risk = np.round(df["var1"] + 0.2 * df["var2"], 6)  # exact ties only (see rossi)
    ours = concordance_index(df["E"], df["T"], risk)
    assert ours == pytest.approx(lifelines_cindex(df["T"], -risk, df["E"]), abs=1e-9)


def test_cindex_matches_sksurv_on_whas500() -> None:
    x, y = load_whas500()
    risk = x["age"].to_numpy(float) + 0.1 * x["bmi"].to_numpy(float)
    ours = concordance_index(y["fstat"], y["lenfol"], risk)
    assert ours == pytest.approx(concordance_index_censored(y["fstat"], y["lenfol"], risk)[0])
    assert 0.6 < ours < 0.8  # age is prognostic after a heart attack


def test_time_auc_matches_sksurv_with_training_weights() -> None:
    x, y = load_veterans_lung_cancer()
    rng = np.random.default_rng(0)
    train = rng.random(len(y)) < 0.6
    risk = -x["Karnofsky_score"].to_numpy(float)
    yt, ye = y[train], y[~train]
    times = [60.0, 120.0]
    ours = time_dependent_auc(
        yt["Status"],
        yt["Survival_in_days"],
        ye["Status"],
        ye["Survival_in_days"],
        risk[~train],
        times,
    )
    ref, _ = cumulative_dynamic_auc(yt, ye, risk[~train], times)
    np.testing.assert_allclose(ours, ref)
    assert np.all(ours > 0.6)


def test_time_auc_with_a_test_event_beyond_the_training_follow_up() -> None:
    # Training follow-up ends at 40 months; a held-out patient has an event at 45. It is
    # a control at 12 months and its weight does not enter the AUC there, so the AUC at 12
    # is defined (scikit-survival alone fails: it weighs every test event time).
    rng = np.random.default_rng(0)
    train_t, train_e = rng.uniform(1.0, 40.0, 50), rng.random(50) < 0.6
    t = np.array([3.0, 5.0, 8.0, 15.0, 20.0, 30.0, 45.0])
    e = np.array([1, 1, 0, 1, 0, 1, 1], bool)
    risk = np.array([7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    from sksurv.util import Surv

    with pytest.raises(ValueError):
        cumulative_dynamic_auc(
            Surv.from_arrays(train_e, train_t), Surv.from_arrays(e, t), risk, [12]
        )
    # cases (events by 12): risks 7, 6; controls (beyond 12): 4, 3, 2, 1: all ranked right
    assert time_dependent_auc(train_e, train_t, e, t, risk, [12.0])[0] == pytest.approx(1.0)
    # the same value as scikit-survival's once the late event is censored
    e_cut = e & (t <= 12.0)
    ref = cumulative_dynamic_auc(
        Surv.from_arrays(train_e, train_t), Surv.from_arrays(e_cut, t), risk, [12]
    )[0]
    assert time_dependent_auc(train_e, train_t, e, t, risk, [12.0]) == pytest.approx(ref)


def test_time_auc_hand_case_without_censoring() -> None:
    # No censoring: weights are uniform, AUC(t) = share of (case, control) pairs ranked right.
    times = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    events = np.ones(5, bool)
    risk = np.array([5.0, 3.0, 4.0, 2.0, 1.0])
    # t = 2.5: cases {1, 2} (risks 5, 3), controls {3, 4, 5} (risks 4, 2, 1): 5/6 right.
    auc = time_dependent_auc(events, times + 10, events, times, risk, [2.5])
    assert auc[0] == pytest.approx(5 / 6)


def test_undefined_cases_raise() -> None:
    with pytest.raises(MetricError, match="all 3 patients are censored"):
        concordance_index([0, 0, 0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    with pytest.raises(MetricError, match="at least 2 comparable pairs, got 1"):
        concordance_index([0, 1, 0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    with pytest.raises(MetricError, match="finite risk"):
        concordance_index([1, 1], [1.0, 2.0], [np.nan, 1.0])
    ev, t = np.array([1, 0, 1, 0]), np.array([3.0, 6.0, 9.0, 20.0])
    with pytest.raises(MetricError, match="outside the test follow-up"):
        time_dependent_auc(ev, t * 2, ev, t, [1.0, 2.0, 3.0, 4.0], [24.0])
    with pytest.raises(MetricError, match="training follow-up"):
        time_dependent_auc(ev, t / 4, ev, t, [1.0, 2.0, 3.0, 4.0], [12.0])
    late = np.array([0, 1, 1, 0])  # no event by 4 months: no case there
    with pytest.raises(MetricError, match="at least one case"):
        time_dependent_auc(late, t * 2, late, t, [1.0, 2.0, 3.0, 4.0], [4.0])


def test_format_table_mean_over_folds_sd_over_seeds() -> None:
    rows = []
    for seed, offset in ((0, 0.0), (1, 0.02)):
        for fold, c in enumerate([0.7, 0.8]):
            rows.append(("full", "pfs", seed, fold, c + offset, 0.8, 0.9))
    df = pd.DataFrame(
        rows, columns=["variant", "endpoint", "seed", "fold", "c_index", "auc_12", "auc_24"]
    )
    table = format_table(df)
    # seed means 0.75 and 0.77 -> mean 0.760, sd (ddof 1) 0.01414
    assert table.loc["full", ("pfs", "c_index")] == "0.760 ± 0.014"
    assert table.loc["full", ("pfs", "auc_24")] == "0.900 ± 0.000"
    one = format_table(df[df["seed"] == 0])
    assert one.loc["full", ("pfs", "c_index")] == "0.750 ± n/a"
    # an undefined fold is left out of the mean and the cell says so
    df.loc[(df["seed"] == 1) & (df["fold"] == 0), "auc_12"] = np.nan
    df.loc[:, "auc_24"] = np.nan
    table = format_table(df)
    assert table.loc["full", ("pfs", "auc_12")] == "0.800 ± 0.000 (3/4 folds)"
    assert table.loc["full", ("pfs", "auc_24")] == "n/a (0/4 folds)"
    assert table.loc["full", ("pfs", "c_index")] == "0.760 ± 0.014"
