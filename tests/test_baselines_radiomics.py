"""The radiomics baseline (`lamp.baselines.radiomics`): extraction, cache, in-fold model."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from sksurv.metrics import concordance_index_censored

from lamp.baselines.common import BaselineError
from lamp.baselines.radiomics import (
    METHODS,
    TEXTURE_CLASSES,
    RadiomicsConfig,
    RadiomicsSurvivalModel,
    TextureGuardWarning,
    cohort_radiomics,
    extract_case_features,
    feature_columns,
    region_masks,
    run_radiomics,
    univariate_concordance,
)
from lamp.cohort import make_folds, read_folds, write_folds
from lamp.images import save_nifti

SPACING = 6.0
SHAPE = (20, 20, 24)
# no resampling: the hand checks compare with numpy on the PET grid, and it is faster
NATIVE = RadiomicsConfig(resampled_spacing_mm=None)


def _ball(center, radius_vox):
    ii, jj, kk = np.indices(SHAPE)
    return (ii - center[0]) ** 2 + (jj - center[1]) ** 2 + (kk - center[2]) ** 2 <= radius_vox**2


def _case(rng, n_lesions):
    """A PET (liver-like background + noisy spheres) and its lesion instances."""
    pet = (1.5 + 0.2 * rng.random(SHAPE)).astype(np.float32)
    les = np.zeros(SHAPE, np.uint16)
    for j in range(n_lesions):
        center = (5 + 9 * (j % 2), 5 + 9 * (j // 2 % 2), 6 + 10 * (j // 4))
        ball = _ball(center, rng.uniform(1.5, 3.5))
        pet[ball] = rng.uniform(5.0, 20.0) * (0.7 + 0.3 * rng.random(int(ball.sum())))
        les[ball] = j + 1
    return pet, les


def _write_cohort(root, n=10, seed=0):
    """Sphere cases, patient P000 without lesions; outcome driven by the tumour volume."""
    rng = np.random.default_rng(seed)
    cohort, work = root / "cohort", root / "work"
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    rows = []
    for i in range(n):
        pid = f"P{i:03d}"
        pet, les = _case(rng, 0 if i == 0 else 1 + i % 4)
        save_nifti(cohort / "cases" / pid / "pet.nii.gz", pet, affine)
        save_nifti(cohort / "cases" / pid / "lesions.nii.gz", les, affine)
        months = 60.0 / (1.0 + (les > 0).sum() / 100.0) + rng.uniform(0, 2)
        event = int(i % 3 != 2)
        rows.append(
            {
                "patient_id": pid, "age": 60, "sex": "M", "ecog": 1, "ldh_ratio": 1.0,
                "ann_arbor": 3, "extranodal_sites": 0, "ipi": 2,
                "pfs_months": months, "pfs_event": event,
                "os_months": months + 1.0, "os_event": event,
            }
        )  # fmt: skip
    clinical = pd.DataFrame(rows)
    clinical.to_csv(cohort / "clinical.csv", index=False)
    write_folds(
        cohort / "folds.csv",
        make_folds(clinical["patient_id"].tolist(), clinical["pfs_event"], 5, seed),
    )
    return cohort, work


@pytest.fixture(scope="module")
def sphere_cohort(tmp_path_factory):
    return _write_cohort(tmp_path_factory.mktemp("radiomics"))


def _two_balls(seed, small_suv):
    """A PET with a big (label 2, SUV 4-12) and a small (label 1) ball, and its lesions."""
    rng = np.random.default_rng(seed)
    pet = (1.0 + rng.random(SHAPE)).astype(np.float32)
    les = np.zeros(SHAPE, np.int64)
    big, small = _ball((6, 6, 8), 3.2), _ball((14, 14, 16), 2.2)
    pet[big] = rng.uniform(4.0, 12.0, int(big.sum()))
    pet[small] = rng.uniform(*small_suv, int(small.sum()))
    les[small], les[big] = 1, 2  # the dominant lesion is label 2 (the larger)
    return pet, les, big, small


def test_firstorder_and_shape_match_numpy_on_spheres():
    pet, les, big, small = _two_balls(3, (10.0, 30.0))
    f = extract_case_features(pet, les, (SPACING,) * 3, NATIVE)
    assert f["n_lesions"] == 2 and f["dominant_label"] == 2
    union = big | small
    voxel_ml = SPACING**3
    for region, mask in (("wtv", union), ("dom", big)):
        values = pet[mask].astype(np.float64)
        assert f[f"{region}_original_firstorder_Mean"] == pytest.approx(values.mean(), rel=1e-5)
        assert f[f"{region}_original_firstorder_Maximum"] == pytest.approx(values.max(), rel=1e-6)
        assert f[f"{region}_original_firstorder_Minimum"] == pytest.approx(values.min(), rel=1e-6)
        assert f[f"{region}_original_shape_VoxelVolume"] == pytest.approx(mask.sum() * voxel_ml)
    # the dominant lesion's hottest voxel is not the patient's
    assert f["dom_original_firstorder_Maximum"] < f["wtv_original_firstorder_Maximum"]
    assert set(f) == {
        "n_lesions",
        "dominant_label",
        "texture_skipped_wtv",
        "texture_skipped_dom",
        *feature_columns(NATIVE),
    }
    assert f["texture_skipped_wtv"] == f["texture_skipped_dom"] == 0


def test_no_lesion_and_degenerate_regions_give_nan_not_errors():
    pet = np.ones(SHAPE, np.float32)
    none = extract_case_features(pet, np.zeros(SHAPE, np.int64), (SPACING,) * 3, NATIVE)
    assert none["n_lesions"] == 0 and none["dominant_label"] == 0
    assert all(np.isnan(v) for k, v in none.items() if k.startswith(("wtv_", "dom_")))
    one_voxel = np.zeros(SHAPE, np.int64)
    one_voxel[3, 3, 3] = 1
    f = extract_case_features(pet, one_voxel, (SPACING,) * 3, NATIVE)
    assert f["n_lesions"] == 1 and np.isnan(f["wtv_original_firstorder_Mean"])
    masks, n, dominant = region_masks(np.zeros((2, 2, 2), np.int64))
    assert n == 0 and dominant == 0 and not masks["wtv"].any()


def _is_texture(column):
    return column.split("_")[2] in TEXTURE_CLASSES  # <region>_original_<class>_<name>


def test_texture_guard_skips_large_regions_and_says_so():
    pet, les, big, small = _two_balls(4, (4.0, 12.0))
    full = extract_case_features(pet, les, (SPACING,) * 3, NATIVE)  # the defaults: no guard
    # a limit between the dominant lesion and the union: only the union loses its texture
    limit = int(big.sum())
    small_limit = replace(NATIVE, max_texture_voxels=limit)
    with pytest.warns(TextureGuardWarning) as caught:
        f = extract_case_features(pet, les, (SPACING,) * 3, small_limit, patient_id="P9")
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith(f"radiomics: patient P9: region wtv: {int((big | small).sum())} ")
    assert f"voxels > max_texture_voxels {limit}" in message
    assert f["texture_skipped_wtv"] == 1 and f["texture_skipped_dom"] == 0
    columns = feature_columns(NATIVE)
    assert any(_is_texture(c) for c in columns) and not all(_is_texture(c) for c in columns)
    for c in columns:
        if c.startswith("wtv_") and _is_texture(c):
            assert np.isnan(f[c]), c
        else:  # firstorder, shape and the dominant lesion's texture: as without the guard
            assert f[c] == full[c] or (np.isnan(f[c]) and np.isnan(full[c])), c
    assert np.isfinite(f["wtv_original_shape_VoxelVolume"])
    # SUV 1-12 spans 40 bins of 0.3: over a 10-level limit, both regions are skipped
    with pytest.warns(TextureGuardWarning, match="grey levels .* > max_texture_grey_levels 10"):
        g = extract_case_features(
            pet, les, (SPACING,) * 3, replace(NATIVE, max_texture_grey_levels=10)
        )
    assert g["texture_skipped_wtv"] == g["texture_skipped_dom"] == 1
    assert all(np.isnan(g[c]) for c in columns if _is_texture(c))
    with pytest.raises(BaselineError, match="max_texture_voxels"):
        RadiomicsConfig(max_texture_voxels=0).check()


def test_texture_guard_is_recorded_in_the_table_and_the_config(tmp_path):
    cohort, work = _write_cohort(tmp_path)
    cfg = RadiomicsConfig(resampled_spacing_mm=None, n_select=3, max_texture_voxels=60)
    with pytest.warns(TextureGuardWarning, match="patient P0") as caught:
        feats = cohort_radiomics(cohort, work, "manual", config=cfg)
    skipped = feats.set_index("patient_id")[["texture_skipped_wtv", "texture_skipped_dom"]]
    assert skipped.dtypes.eq(int).all()
    assert skipped.loc["P000"].tolist() == [0, 0]  # no lesion
    n_wtv = [round(n) for n in feats["wtv_original_shape_VoxelVolume"] / SPACING**3 if n == n]
    assert skipped["texture_skipped_wtv"].sum() == sum(n > 60 for n in n_wtv) > 0
    assert len(caught) == int(skipped.to_numpy().sum())  # one warning per skipped region
    texture = [c for c in feats.columns if c.startswith("wtv_") and _is_texture(c)]
    hit = feats["texture_skipped_wtv"] == 1
    assert feats.loc[hit, texture].isna().all().all()
    assert feats.loc[hit, "wtv_original_firstorder_Mean"].notna().all()
    again = cohort_radiomics(cohort, work, "manual", config=cfg)  # from the cache
    pd.testing.assert_frame_equal(again, feats)
    oof = run_radiomics(work, cohort, "manual", endpoints=["pfs"], config=cfg, features=feats)
    assert np.isfinite(oof["risk"]).all()
    config = json.loads((work / "baselines" / METHODS["manual"] / "config.json").read_text())
    settings = config["settings"]
    assert settings["max_texture_voxels"] == 60
    assert settings["texture_skipped"]["wtv"] == feats.loc[hit, "patient_id"].tolist()


def test_univariate_concordance_matches_scikit_survival():
    rng = np.random.default_rng(0)
    time = np.round(rng.exponential(20.0, 40), 0)  # ties in time
    event = rng.random(40) < 0.6
    x = np.column_stack([rng.normal(size=40), rng.integers(0, 3, 40), -time])
    ours = univariate_concordance(x, time, event)
    for j in range(x.shape[1]):
        ref = concordance_index_censored(event, time, x[:, j])[0]
        assert ours[j] == pytest.approx(ref)
    assert ours[2] > 0.95  # -time ranks every strictly ordered pair right
    assert np.all(univariate_concordance(x, time, np.zeros(40, bool)) == 0.5)


def test_model_filters_in_fold_and_ranks_the_prognostic_feature():
    rng = np.random.default_rng(1)
    n = 120
    signal = rng.normal(size=n)
    x = pd.DataFrame(
        {
            "wtv_signal": signal,
            "wtv_copy": 3.0 * signal + 0.01 * rng.normal(size=n),  # |rho| > 0.9: dropped
            "dom_constant": np.ones(n),
            "dom_noise": rng.normal(size=n),
            "dom_sometimes_nan": np.where(rng.random(n) < 0.3, np.nan, rng.normal(size=n)),
            "no_lesion": (rng.random(n) < 0.1).astype(float),
        }
    )
    t_event = rng.exponential(30.0 * np.exp(-1.5 * signal))
    t_cens = rng.uniform(10.0, 60.0, n)
    time, event = np.minimum(t_event, t_cens), (t_event <= t_cens).astype(int)
    for model in ("coxnet", "rsf"):
        cfg = RadiomicsConfig(model=model, n_select=3, rsf_trees=50)
        fitted = RadiomicsSurvivalModel(cfg, seed=0).fit(x[:80], time[:80], event[:80])
        assert fitted.selected_[0] in ("wtv_signal", "wtv_copy")
        assert not {"wtv_signal", "wtv_copy"} <= set(fitted.selected_)
        assert "dom_constant" not in fitted.selected_ and len(fitted.selected_) == 3
        risk = fitted.predict(x[80:])
        assert risk.shape == (40,) and np.all(np.isfinite(risk))
        c = concordance_index_censored(event[80:].astype(bool), time[80:], risk)[0]
        assert c > 0.7, (model, c)
    with pytest.raises(BaselineError, match="no event"):
        RadiomicsSurvivalModel().fit(x, time, np.zeros(n))


def test_cohort_features_are_cached_and_resumed(sphere_cohort):
    cohort, work = sphere_cohort
    lines = []
    feats = cohort_radiomics(cohort, work, "manual", config=NATIVE, progress=lines.append)
    assert len(lines) == 10 and list(feats["patient_id"]) == [f"P{i:03d}" for i in range(10)]
    assert feats.loc[0, "n_lesions"] == 0 and feats.loc[1:, "n_lesions"].ge(1).all()
    assert feats.loc[1:, "wtv_original_firstorder_Mean"].notna().all()
    cache = work / "baselines" / "radiomics_manual" / "features.csv"
    assert cache.is_file()
    lines.clear()
    again = cohort_radiomics(cohort, work, "manual", config=NATIVE, progress=lines.append)
    assert lines == []  # nothing recomputed
    pd.testing.assert_frame_equal(again, feats)
    # a rewritten mask is redone, and only that patient
    les = cohort / "cases" / "P003" / "lesions.nii.gz"
    les.write_bytes(les.read_bytes())
    cohort_radiomics(cohort, work, "manual", config=NATIVE, progress=lines.append)
    assert len(lines) == 1 and lines[0].endswith("P003")
    # other extraction settings: everything is redone, the old rows are not kept
    lines.clear()
    coarse = RadiomicsConfig(resampled_spacing_mm=None, bin_width=1.0)
    cohort_radiomics(cohort, work, "manual", ["P001", "P002"], coarse, lines.append)
    assert len(lines) == 2 and len(pd.read_csv(cache)) == 2


def test_run_radiomics_respects_folds(sphere_cohort):
    cohort, work = sphere_cohort
    cfg = RadiomicsConfig(resampled_spacing_mm=None, n_select=3)
    oof = run_radiomics(work, cohort, "manual", endpoints=["pfs"], config=cfg)
    folds = read_folds(cohort / "folds.csv")
    assert len(oof) == 10 and set(oof["method"]) == {METHODS["manual"]}
    merged = oof.merge(folds, on="patient_id", suffixes=("", "_cohort"))
    assert (merged["fold"] == merged["fold_cohort"]).all()
    assert np.isfinite(oof["risk"]).all()
    assert (work / "baselines" / "Radiomics (manual)" / "oof_risk.csv").is_file()


def test_missing_files_name_patient_and_file(sphere_cohort, tmp_path):
    cohort, _ = sphere_cohort
    with pytest.raises(BaselineError, match=r"patient P001: .*P001\.nii\.gz: no such file"):
        cohort_radiomics(cohort, tmp_path, "automatic", ["P001"], NATIVE)
    with pytest.raises(BaselineError, match="expected one of"):
        cohort_radiomics(cohort, tmp_path, "hand", ["P001"], NATIVE)
    broken = tmp_path / "cohort"
    (broken / "cases" / "P001").mkdir(parents=True)
    (broken / "cases" / "P001" / "lesions.nii.gz").write_bytes(
        (cohort / "cases" / "P001" / "lesions.nii.gz").read_bytes()
    )
    with pytest.raises(BaselineError, match=r"patient P001: .*pet\.nii\.gz: no such file"):
        cohort_radiomics(broken, tmp_path / "work", "manual", ["P001"], NATIVE)
    with pytest.raises(BaselineError, match="bin_width"):
        RadiomicsConfig(bin_width=0.0).check()
