"""Metabolic parameters, their Cox baseline and ICC agreement (`lamp.baselines.metabolic`)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from lamp.baselines.common import BaselineError, read_oof
from lamp.baselines.metabolic import (
    PARAMETER_COLUMNS,
    PARAMETERS,
    cohort_metabolic_parameters,
    du_bois_bsa,
    fit_metabolic_cox,
    icc,
    metabolic_agreement,
    metabolic_parameters,
    parameter_agreement,
    run_metabolic,
)
from lamp.cohort import read_folds
from lamp.features import LESION_TABLE_COLUMNS
from lamp.images import save_nifti
from test_baselines_clinical import write_cohort

# --------------------------------------------------------------------------------------
# a NIfTI phantom with three cubic lesions on a 2 mm grid
# --------------------------------------------------------------------------------------

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])  # 2 mm voxels, 0.008 ml each, origin at 0


def phantom() -> tuple[np.ndarray, np.ndarray]:
    pet = np.ones((20, 20, 20), dtype=np.float32)
    les = np.zeros((20, 20, 20), dtype=np.uint16)
    les[2:5, 2:5, 2:5] = 1  # 27 voxels at SUV 4, one at 10: the bulkiest
    pet[2:5, 2:5, 2:5] = 4.0
    pet[3, 3, 3] = 10.0
    les[12:14, 2:4, 2:4] = 2  # 8 voxels at SUV 6
    pet[12:14, 2:4, 2:4] = 6.0
    les[3, 15, 16] = 3  # one voxel at SUV 8
    pet[3, 15, 16] = 8.0
    return pet, les


def write_phantom_cohort(root, with_body: bool = True):
    cohort, work = write_cohort(root, n=5, n_without_outcome=0, body=with_body)
    pet, les = phantom()
    for i in range(5):
        case = cohort / "cases" / f"P{i:03d}"
        save_nifti(case / "pet.nii.gz", pet, AFFINE)
        # P000 has the three lesions, the others none
        save_nifti(case / "lesions.nii.gz", les if i == 0 else np.zeros_like(les), AFFINE)
    return cohort, work


def test_du_bois_bsa_by_hand():
    # 0.007184 * 70^0.425 * 175^0.725 = 0.007184 * 6.0836 * 42.288 = 1.8481 m²
    assert float(du_bois_bsa(70.0, 175.0)) == pytest.approx(1.8481, abs=1e-4)
    assert np.isnan(du_bois_bsa(np.nan, 175.0))


def test_phantom_parameters_by_hand(tmp_path):
    cohort, work = write_phantom_cohort(tmp_path)
    params, notes = cohort_metabolic_parameters(cohort, work, "manual")
    assert notes == [] and list(params.columns) == list(PARAMETER_COLUMNS)
    p = params.set_index("patient_id").loc["P000"]
    assert p["n_lesions"] == 3
    assert p["tmtv_ml"] == pytest.approx((27 + 8 + 1) * 0.008)
    # TLG = sum of volume x SUVmean = sum over voxels of SUV x 0.008 ml
    assert p["tlg_g"] == pytest.approx((26 * 4 + 10 + 8 * 6 + 8) * 0.008)
    assert p["suvmax"] == pytest.approx(10.0)
    # centroids (mm): (6, 6, 6), (25, 5, 5), (6, 30, 32)
    assert p["dmax_mm"] == pytest.approx(math.sqrt(19**2 + 25**2 + 27**2))  # lesions 2-3
    assert p["dmaxbulk_mm"] == pytest.approx(math.sqrt(24**2 + 26**2))  # from lesion 1
    bsa = 0.007184 * 60.0**0.425 * 150.0**0.725  # P000: 150 cm, 60 kg
    assert p["bsa_m2"] == pytest.approx(bsa)
    assert p["sdmax_per_m"] == pytest.approx(math.sqrt(1715) / 1000 / bsa)
    table = pd.read_csv(work / "baselines" / "lesions_manual.csv")
    assert p["suvpeak"] == pytest.approx(table["suvpeak"].max()) and p["suvpeak"] <= 10.0
    empty = params.set_index("patient_id").loc["P001", list(PARAMETERS)]
    assert (empty == 0.0).all()
    on_disk = pd.read_csv(work / "baselines" / "metabolic_manual" / "parameters.csv")
    assert len(on_disk) == 5 and on_disk.loc[0, "n_lesions"] == 3


def test_lesion_table_cache_follows_a_changed_pet(tmp_path):
    import os

    from lamp.baselines.lesions import cohort_lesion_tables

    cohort, work = write_phantom_cohort(tmp_path)
    first = cohort_lesion_tables(cohort, work, "manual")
    assert first["suvmax"].max() == pytest.approx(10.0)
    cache = work / "baselines" / "lesions_manual.csv"
    old = cache.stat().st_mtime_ns - 10**9
    for f in cache.parent.glob("lesions_manual.*"):
        os.utime(f, ns=(old, old))
    for f in (cohort / "cases").glob("*/lesions.nii.gz"):  # masks older than the cache
        os.utime(f, ns=(old - 10**10, old - 10**10))
    # the masks are unchanged but the PET is rewritten (e.g. re-ingested with another
    # SUV normalisation): the table must follow it, not reuse the cached SUVs
    pet, _ = phantom()
    save_nifti(cohort / "cases" / "P000" / "pet.nii.gz", 2.0 * pet, AFFINE)
    again = cohort_lesion_tables(cohort, work, "manual")
    assert again["suvmax"].max() == pytest.approx(20.0)


def test_without_height_and_weight_sdmax_is_left_out(tmp_path):
    cohort, work = write_phantom_cohort(tmp_path, with_body=False)
    params, notes = cohort_metabolic_parameters(cohort, work, "manual")
    assert params["sdmax_per_m"].isna().all() and params["dmax_mm"].notna().all()
    assert len(notes) == 1 and "height_cm" in notes[0] and "SDmax" in notes[0]


def test_implausible_height_names_the_column():
    clinical = pd.DataFrame({"patient_id": ["A"], "height_cm": [1.75], "weight_kg": [70.0]})
    empty = pd.DataFrame(columns=list(LESION_TABLE_COLUMNS))
    with pytest.raises(BaselineError, match=r"patient A, column 'height_cm'.*got 1.75"):
        metabolic_parameters(empty, clinical)
    with pytest.raises(BaselineError, match="missing.*'tlg'"):
        metabolic_parameters(pd.DataFrame({"patient_id": ["A"]}), clinical)


def test_missing_automatic_masks_say_what_to_run(tmp_path):
    cohort, work = write_phantom_cohort(tmp_path)
    with pytest.raises(BaselineError, match=r"automatic.*5 of 5.*lamp segment predict"):
        cohort_metabolic_parameters(cohort, work, "automatic")
    with pytest.raises(BaselineError, match="lamp segment predict"):
        metabolic_agreement(cohort, work)
    with pytest.raises(BaselineError, match="expected one of"):
        cohort_metabolic_parameters(cohort, work, "predicted")


# --------------------------------------------------------------------------------------
# agreement
# --------------------------------------------------------------------------------------


def test_icc_on_shrout_fleiss_table_2():
    # Shrout & Fleiss 1979, Table 2: 6 targets x 4 judges; published ICC(2,1) = .29,
    # ICC(3,1) = .71
    y = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
    assert round(icc(y, "2,1"), 2) == 0.29
    assert round(icc(y, "3,1"), 2) == 0.71


def test_icc_hand_checked_two_raters():
    # B = A + 1: perfect consistency, imperfect absolute agreement.
    # n = 3, k = 2, ratings (1, 2), (2, 3), (3, 4): grand mean 2.5, BMS = 2 * 2 / 2 = 2,
    # JMS = 3 * 0.5 / 1 = 1.5, EMS = 0 -> ICC(3,1) = 1, ICC(2,1) = 2 / (2 + 2 * 1.5 / 3) = 2/3
    y = np.array([[1.0, 2.0], [2.0, 3.0], [3.0, 4.0]])
    assert icc(y, "3,1") == pytest.approx(1.0)
    assert icc(y, "2,1") == pytest.approx(2.0 / 3.0)
    assert math.isnan(icc(np.ones((3, 2))))
    with pytest.raises(BaselineError, match="shape"):
        icc(np.ones(3))
    with pytest.raises(BaselineError, match="form"):
        icc(y, "1,1")


def test_parameter_agreement_and_its_file(tmp_path):
    cohort, work = write_phantom_cohort(tmp_path)
    manual, _ = cohort_metabolic_parameters(cohort, work, "manual")
    same = parameter_agreement(manual, manual)
    assert same["n_patients"] == 5
    assert same["parameters"]["n_lesions"]["icc_2_1"] == pytest.approx(1.0)
    assert same["parameters"]["tmtv_ml"]["mean_difference"] == 0.0
    # 4 patients without lesions and one with: a correlation is defined (not constant)
    assert same["parameters"]["suvmax"]["pearson_r"] == pytest.approx(1.0)
    # the "automatic" lesions: lesion 3 missed
    lesions = pd.read_csv(work / "baselines" / "lesions_manual.csv", dtype={"patient_id": str})
    auto = lesions[lesions["lesion_id"] != 3]
    result = metabolic_agreement(cohort, work, manual=lesions, automatic=auto)
    n = result["parameters"]["n_lesions"]
    assert n["mean_difference"] == pytest.approx(-1 / 5) and n["icc_3_1"] < 1.0
    saved = json.loads((work / "baselines" / "metabolic_agreement.json").read_text())
    assert saved["parameters"]["dmax_mm"]["n"] == 5


# --------------------------------------------------------------------------------------
# the Cox baseline
# --------------------------------------------------------------------------------------


def lesion_table_for(ids: list[str], tmtv: np.ndarray, rng) -> pd.DataFrame:
    """One to four lesions per patient whose volumes add up to ``tmtv`` (ml)."""
    rows = []
    for pid, total in zip(ids, tmtv, strict=True):
        k = int(rng.integers(1, 5))
        vols = total * rng.dirichlet(np.ones(k))
        for j, v in enumerate(vols, start=1):
            suv = float(rng.uniform(5, 30))
            c = rng.normal(0, 150, 3)
            rows.append(
                {
                    "patient_id": pid,
                    "lesion_id": j,
                    "voxels": 1,
                    "volume_ml": v,
                    "suvmax": suv,
                    "suvmean": suv / 2,
                    "suvpeak": suv * 0.8,
                    "tlg": v * suv / 2,
                    "centroid_x_mm": c[0],
                    "centroid_y_mm": c[1],
                    "centroid_z_mm": c[2],
                    "organ": "none",
                    "organ_fraction": 0.0,
                    "nodal_region": "",
                }  # fmt: skip
            )
    return pd.DataFrame(rows, columns=list(LESION_TABLE_COLUMNS))


@pytest.fixture
def cox_cohort(tmp_path):
    rng = np.random.default_rng(7)
    n = 40
    tmtv = np.exp(rng.normal(np.log(300), 1.0, n))
    cohort, work = write_cohort(tmp_path, n=n, n_without_outcome=3, risk=np.log(tmtv / 300))
    ids = [f"P{i:03d}" for i in range(n)]
    return cohort, work, lesion_table_for(ids, tmtv, rng)


def test_cox_baseline_trains_and_scores_every_patient_out_of_fold(cox_cohort):
    cohort, work, table = cox_cohort
    oof = run_metabolic(work, cohort, "manual", endpoints=("pfs", "os"), lesions=table)
    assert len(oof) == 37 * 2 and np.isfinite(oof["risk"]).all()
    assert {"P037", "P038", "P039"}.isdisjoint(oof["patient_id"])
    folds = read_folds(cohort / "folds.csv")
    m = oof.merge(folds, on="patient_id", suffixes=("", "_cohort"))
    assert (m["fold"] == m["fold_cohort"]).all()
    back = read_oof(work / "baselines" / "Metabolic (manual)" / "oof_risk.csv")
    assert len(back) == len(oof)
    config = json.loads((work / "baselines" / "Metabolic (manual)" / "config.json").read_text())
    assert config["settings"]["parameters"] == list(PARAMETERS)
    # the outcome was drawn from log TMTV: the out-of-fold risk follows it
    params = pd.read_csv(work / "baselines" / "metabolic_manual" / "parameters.csv")
    pfs = oof[oof["endpoint"] == "pfs"].merge(params, on="patient_id")
    assert np.corrcoef(pfs["risk"], np.log(pfs["tmtv_ml"]))[0, 1] > 0.5


def test_a_fold_risk_does_not_see_its_own_outcomes(cox_cohort):
    cohort, work, table = cox_cohort
    first = run_metabolic(work, cohort, "manual", endpoints=("pfs",), lesions=table)
    clinical = pd.read_csv(cohort / "clinical.csv", dtype={"patient_id": str})
    folds = read_folds(cohort / "folds.csv")
    in_fold0 = clinical["patient_id"].isin(folds.loc[folds["fold"] == 0, "patient_id"])
    outcome = in_fold0 & clinical["pfs_months"].notna()
    # reverse the fold-0 patients' times: only the models that trained on them change
    clinical.loc[outcome, ["pfs_months", "os_months"]] = 100.0 - clinical.loc[
        outcome, ["pfs_months"]
    ].to_numpy().repeat(2, axis=1)
    clinical.to_csv(cohort / "clinical.csv", index=False)
    second = run_metabolic(work, cohort, "manual", endpoints=("pfs",), lesions=table)
    a, b = first.set_index("patient_id")["risk"], second.set_index("patient_id")["risk"]
    fold = first.set_index("patient_id")["fold"]
    np.testing.assert_allclose(a[fold == 0], b[fold == 0])
    assert not np.allclose(a[fold != 0], b[fold != 0])


def test_cox_fit_errors_and_direction():
    rng = np.random.default_rng(0)
    params = pd.DataFrame({"tmtv_ml": np.exp(rng.normal(5, 1, 30)), "suvmax": np.full(30, 9.0)})
    time = 100.0 / params["tmtv_ml"].to_numpy()
    event = np.ones(30)
    model = fit_metabolic_cox(params, time, event, ["tmtv_ml", "suvmax"])
    # the constant SUVmax is dropped; a larger TMTV (shorter time) is a higher risk
    assert model.columns == ("tmtv_ml",) and model.coef[0] > 0
    with pytest.raises(BaselineError, match="no event"):
        fit_metabolic_cox(params, time, np.zeros(30), ["tmtv_ml"])
    with pytest.raises(BaselineError, match="finite parameters"):
        fit_metabolic_cox(params.assign(tmtv_ml=np.nan), time, event, ["tmtv_ml"])
