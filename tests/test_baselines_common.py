"""The shared cross-validation contract of the baselines (`lamp.baselines.common`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lamp.baselines.common import BaselineError, cross_validate, read_oof
from lamp.cohort import read_folds
from test_model_train import write_synthetic


def test_cross_validate_respects_folds_and_outcome(tmp_path):
    cohort, work, _ = write_synthetic(tmp_path, n=30, n_without_outcome=4)
    seen = []

    def fit_predict(split):
        assert "pfs_months" not in split.test.columns and "event" not in split.test.columns
        held = split.test.iloc[: split.n_heldout]
        assert set(split.train["fold"]) & set(held["fold"]) == set()
        assert split.train["time"].notna().all()
        seen.append((split.endpoint, split.fold, split.seed))
        return split.test["age"].to_numpy(dtype=float) + split.fold

    oof = cross_validate("toy", fit_predict, work, cohort, ["pfs", "os"], [0, 2])
    folds = read_folds(cohort / "folds.csv")
    # every patient with outcome exactly once per endpoint and seed, scored by its own fold
    assert len(oof) == 26 * 2 * 2
    merged = oof.merge(folds, on="patient_id", suffixes=("", "_cohort"))
    assert (merged["fold"] == merged["fold_cohort"]).all()
    assert np.allclose(merged["risk"], 60 + merged["fold"])
    assert {"P026", "P027", "P028", "P029"}.isdisjoint(oof["patient_id"])
    assert (2, 2002) in {(f, s) for _, f, s in seen}
    back = read_oof(work / "baselines" / "toy" / "oof_risk.csv")
    pd.testing.assert_frame_equal(back, oof, check_dtype=False)


def test_training_patients_scored_by_their_folds_model(tmp_path):
    # The Kaplan-Meier split needs each fold model's in-sample risks of its own training
    # patients: cross_validate passes them after the held-out rows and stores them apart.
    cohort, work, _ = write_synthetic(tmp_path, n=30, n_without_outcome=4)
    folds = read_folds(cohort / "folds.csv").set_index("patient_id")["fold"]

    def fit_predict(split):
        held = split.test.iloc[: split.n_heldout]
        again = split.test.iloc[split.n_heldout :]
        assert set(held["fold"]) == {split.fold}
        assert again["patient_id"].tolist() == split.train["patient_id"].tolist()
        assert "pfs_months" not in again.columns and "time" not in again.columns
        # a risk that says which fold model scored the row
        return 100.0 * split.fold + split.test["age"].to_numpy(dtype=float)

    oof = cross_validate("toy", fit_predict, work, cohort, ["pfs", "os"], [0, 3])
    tr = pd.read_csv(work / "baselines" / "toy" / "train_risk.csv", dtype={"patient_id": str})
    assert list(tr.columns) == list(oof.columns)
    for (endpoint, seed, k), group in tr.groupby(["endpoint", "seed", "fold"]):
        # fold k's model scored exactly the patients with outcome outside fold k
        expect = oof[(oof["endpoint"] == endpoint) & (oof["seed"] == seed) & (oof["fold"] != k)]
        assert sorted(group["patient_id"]) == sorted(expect["patient_id"])
        assert (folds[group["patient_id"]] != k).all()
        assert np.allclose(group["risk"], 100.0 * k + 60)
    assert len(tr) == 26 * 4 * 2 * 2  # each patient in four training folds, 2 endpoints, 2 seeds
    # the held-out risks are unchanged by the extra rows
    assert np.allclose(oof["risk"], 100.0 * oof["fold"] + 60)


def test_cross_validate_rejects_bad_output(tmp_path):
    cohort, work, _ = write_synthetic(tmp_path, n=20)
    with pytest.raises(BaselineError, match="expected .* risks"):
        cross_validate("bad", lambda s: [0.0], work, cohort, ["pfs"])
    with pytest.raises(BaselineError, match="non-finite"):
        cross_validate("bad", lambda s: np.full(len(s.test), np.nan), work, cohort, ["pfs"])
    with pytest.raises(BaselineError, match="endpoints"):
        cross_validate("bad", lambda s: np.zeros(len(s.test)), work, cohort, ["dfs"])
    assert not (work / "baselines" / "bad" / "oof_risk.csv").exists()
