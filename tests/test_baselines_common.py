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
        assert set(split.train["fold"]) & set(split.test["fold"]) == set()
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


def test_cross_validate_rejects_bad_output(tmp_path):
    cohort, work, _ = write_synthetic(tmp_path, n=20)
    with pytest.raises(BaselineError, match="expected .* risks"):
        cross_validate("bad", lambda s: [0.0], work, cohort, ["pfs"])
    with pytest.raises(BaselineError, match="non-finite"):
        cross_validate("bad", lambda s: np.full(len(s.test), np.nan), work, cohort, ["pfs"])
    with pytest.raises(BaselineError, match="endpoints"):
        cross_validate("bad", lambda s: np.zeros(len(s.test)), work, cohort, ["dfs"])
    assert not (work / "baselines" / "bad" / "oof_risk.csv").exists()
