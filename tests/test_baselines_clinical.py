"""The clinical-index baselines (`lamp.baselines.clinical_indices`): IPI and Ann Arbor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lamp.baselines.clinical_indices import index_risk, run_clinical_indices
from lamp.baselines.common import BaselineError, Split, read_oof
from lamp.cohort import make_folds, read_folds, write_folds


def write_cohort(
    root: Path,
    n: int = 20,
    n_without_outcome: int = 2,
    seed: int = 0,
    risk: np.ndarray | None = None,
    body: bool = True,
) -> tuple[Path, Path]:
    """A cohort folder (clinical.csv, folds.csv) without images; returns (cohort, work).

    Outcomes follow an exponential model with log-hazard ``risk`` (default: the IPI), so
    a baseline that reads the risk well ranks the patients well. The last
    ``n_without_outcome`` patients have no outcome.
    """
    rng = np.random.default_rng(seed)
    cohort, work = root / "cohort", root / "work"
    cohort.mkdir(parents=True)
    work.mkdir()
    stage = rng.integers(1, 5, n)
    extranodal = np.where(stage == 4, rng.integers(1, 4, n), 0)
    ipi = np.clip(stage // 2 + rng.integers(0, 3, n), 0, 5)
    lp = ipi * 0.6 if risk is None else np.asarray(risk, dtype=float)
    t_event = rng.exponential(30.0 * np.exp(-lp))
    t_cens = rng.uniform(12.0, 60.0, n)
    rows = []
    for i in range(n):
        pfs = round(float(min(t_event[i], t_cens[i])) + 0.1, 2)
        ev = int(t_event[i] <= t_cens[i])
        row = {
            "patient_id": f"P{i:03d}", "age": 62, "sex": "F", "ecog": 1, "ldh_ratio": 1.1,
            "ann_arbor": int(stage[i]), "extranodal_sites": int(extranodal[i]),
            "ipi": int(ipi[i]), "pfs_months": pfs, "pfs_event": ev,
            "os_months": round(pfs + (0.5 if ev else 3.0), 2), "os_event": ev,
        }  # fmt: skip
        if body:
            row |= {"height_cm": 150.0 + i, "weight_kg": 60.0 + i}
        if i >= n - n_without_outcome:
            for c in ("pfs_months", "pfs_event", "os_months", "os_event"):
                row[c] = None
        rows.append(row)
    clinical = pd.DataFrame(rows)
    clinical.to_csv(cohort / "clinical.csv", index=False)
    strata = clinical["pfs_event"].fillna(-1).astype(int)
    write_folds(cohort / "folds.csv", make_folds(clinical["patient_id"].tolist(), strata, 5, seed))
    return cohort, work


def test_indices_are_the_clinical_columns_on_the_cohort_folds(tmp_path):
    cohort, work = write_cohort(tmp_path, n=20, n_without_outcome=2)
    out = run_clinical_indices(work, cohort, endpoints=("pfs", "os"), seeds=(0,))
    assert set(out) == {"IPI", "Ann Arbor"}
    clinical = pd.read_csv(cohort / "clinical.csv", dtype={"patient_id": str})
    folds = read_folds(cohort / "folds.csv")
    for method, column in (("IPI", "ipi"), ("Ann Arbor", "ann_arbor")):
        oof = read_oof(work / "baselines" / method / "oof_risk.csv")
        # 18 patients with outcome, once per endpoint; the two without are not scored
        assert len(oof) == 18 * 2
        assert {"P018", "P019"}.isdisjoint(oof["patient_id"])
        m = oof.merge(clinical, on="patient_id").merge(
            folds, on="patient_id", suffixes=("", "_cohort")
        )
        np.testing.assert_array_equal(m["risk"].to_numpy(), m[column].to_numpy(dtype=float))
        assert (m["fold"] == m["fold_cohort"]).all()
        assert (m["method"] == method).all()
        assert (work / "baselines" / method / "config.json").is_file()


def test_index_risk_reports_missing_and_empty_columns():
    test = pd.DataFrame({"patient_id": ["A", "B"], "ipi": [2, np.nan]})
    split = Split("pfs", 0, 0, pd.DataFrame(), test)
    with pytest.raises(BaselineError, match=r"column 'ipi'.*\['B'\]"):
        index_risk("ipi")(split)
    with pytest.raises(BaselineError, match="expected a column 'stage'"):
        index_risk("stage")(split)


def test_run_clinical_indices_rejects_bad_input(tmp_path):
    cohort, work = write_cohort(tmp_path, n=10)
    with pytest.raises(BaselineError, match="expected methods among"):
        run_clinical_indices(work, cohort, methods=["R-IPI"])
    with pytest.raises(BaselineError, match="endpoints"):
        run_clinical_indices(work, cohort, endpoints=["dfs"])
    (cohort / "clinical.csv").unlink()
    with pytest.raises(BaselineError, match="clinical.csv.*not found"):
        run_clinical_indices(work, cohort)
