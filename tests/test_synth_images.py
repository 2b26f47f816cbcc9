"""The synthetic images: geometry, label ids, intensities, lesions, determinism, resume."""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from lamp.anatomy import TOTAL_IDS
from lamp.synth.config import SynthConfig
from lamp.synth.disease import simulate_patient
from lamp.synth.generate import SynthError, SynthRequest, generate_cohort
from lamp.synth.render import render_patient, scan_grids

N = 5


def _load(path):
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "cohort"
    generate_cohort(SynthRequest(out=out, n_patients=N, seed=1, size="tiny", export_nnunet=False))
    return out


def test_layout_and_geometry(tiny_cohort):
    clin = pd.read_csv(tiny_cohort / "clinical.csv")
    assert len(clin) == N
    for pid in clin["patient_id"]:
        case = tiny_cohort / "cases" / pid
        pet, a_pet = _load(case / "pet.nii.gz")
        ct, a_ct = _load(case / "ct.nii.gz")
        org, a_org = _load(case / "organs.nii.gz")
        les, a_les = _load(case / "lesions.nii.gz")
        assert pet.ndim == 3 and pet.dtype == np.float32
        assert ct.dtype == np.int16 and org.dtype == np.uint8 and les.dtype == np.uint16
        assert org.shape == les.shape == pet.shape
        np.testing.assert_allclose(a_org, a_pet)
        np.testing.assert_allclose(a_les, a_pet)
        # the CT has its own grid: finer voxels, another origin
        assert not np.allclose(a_ct, a_pet)
        assert abs(a_pet[0, 0]) == pytest.approx(12.0) and abs(a_ct[0, 0]) == pytest.approx(10.0)
        # vertex to mid-thigh: about 1.15 m of a 1.4-2.05 m patient
        extent_z = pet.shape[2] * 12.0
        assert 900.0 <= extent_z <= 1500.0


def test_organ_labels_are_totalsegmentator_ids(tiny_cohort):
    ids = set(TOTAL_IDS.values())
    for case in sorted((tiny_cohort / "cases").iterdir()):
        org, _ = _load(case / "organs.nii.gz")
        present = set(np.unique(org).tolist()) - {0}
        assert present <= ids
        assert len(present) >= 30
        for name in (
            "brain",
            "liver",
            "spleen",
            "heart",
            "urinary_bladder",
            "aorta",
            "lung_upper_lobe_left",
            "lung_lower_lobe_right",
            "vertebrae_L3",
            "kidney_left",
            "femur_right",
            "hip_left",
            "sacrum",
        ):
            assert TOTAL_IDS[name] in present, name


def _organ_mean(pet, org, name):
    return float(pet[org == TOTAL_IDS[name]].mean())


def test_pet_and_ct_intensities_are_physiological(tmp_path):
    cfg = SynthConfig()
    p = simulate_patient(cfg, 0, 4)
    case = render_patient(p, cfg, "small", 0)
    pet, org = case.pet, case.organs
    away = case.lesions == 0
    liver = float(pet[(org == TOTAL_IDS["liver"]) & away].mean())
    assert 1.3 <= liver <= 2.6
    assert _organ_mean(pet, org, "brain") > 4.0
    assert _organ_mean(pet, org, "urinary_bladder") > 5.0
    assert _organ_mean(pet, org, "brain") > 2 * liver
    fat_muscle = pet[(org == 0) & away & (pet > 0.05)]
    assert np.median(fat_muscle) < 1.0
    # CT on its own grid: paint labels there to check HU by tissue
    from lamp.synth.phantom import ORGAN_OF_CODE, build_shapes, paint

    codes = np.zeros(case.ct_grid.shape, np.uint8)
    for shape, code in build_shapes(p.body):
        paint(codes, case.ct_grid, shape, code)
    ct_org = ORGAN_OF_CODE[codes]
    lung = case.ct[ct_org == TOTAL_IDS["lung_lower_lobe_left"]]
    assert np.median(lung) < -600
    assert 30 <= np.median(case.ct[ct_org == TOTAL_IDS["liver"]]) <= 90
    assert np.median(case.ct[ct_org == TOTAL_IDS["vertebrae_L2"]]) > 150
    assert np.median(case.ct[codes == 0]) < -900  # air outside the body


def test_lesions_match_the_lesion_table(tiny_cohort):
    les_tab = pd.read_csv(tiny_cohort / "lesions.csv")
    for pid, rows in les_tab.groupby("patient_id"):
        les, _ = _load(tiny_cohort / "cases" / pid / "lesions.nii.gz")
        counts = np.bincount(les.ravel().astype(int), minlength=len(rows) + 1)
        assert les.max() <= len(rows)
        np.testing.assert_array_equal(counts[1:], rows.sort_values("lesion_id")["voxels"])


def test_lesion_uptake_volume_and_necrotic_core():
    """At small size a large lesion's PET peak approaches its SUVmax, its rendered volume
    approaches its nominal volume, and a necrotic core is photopenic."""
    base = SynthConfig()
    cfg = dataclasses.replace(
        base, disease=dataclasses.replace(base.disease, necrosis_log_odds=20.0)
    )
    for idx in range(40):
        p = simulate_patient(cfg, 0, idx)
        big = [
            j
            for j, les in enumerate(p.lesions)
            if les.necrotic_fraction > 0.2 and les.volume_ml > 60 and les.site_type == "nodal"
        ]
        if big:
            break
    else:
        pytest.fail("no patient with a large necrotic nodal lesion in 40 draws")
    case = render_patient(p, cfg, "small", 0)
    j = big[0]
    les = p.lesions[j]
    mask = case.lesions == j + 1
    rendered_ml = mask.sum() * case.pet_grid.voxel_ml
    assert rendered_ml == pytest.approx(les.volume_ml, rel=0.35)
    inside = case.pet[mask]
    assert inside.max() > 0.5 * les.suvmax
    # the photopenic core: the voxel nearest the centre is far below the lesion's peak
    ijk = np.round(np.linalg.solve(case.pet_grid.affine, np.r_[les.center, 1.0])[:3]).astype(int)
    assert case.pet[tuple(ijk)] < 0.5 * inside.max()


def test_diffuse_spleen_involvement_raises_uptake_without_a_lesion():
    base = SynthConfig()
    on = dataclasses.replace(
        base, disease=dataclasses.replace(base.disease, diffuse_spleen_probability=1.0)
    )
    off = dataclasses.replace(
        base, disease=dataclasses.replace(base.disease, diffuse_spleen_probability=0.0)
    )
    ratios = {}
    for name, cfg in (("on", on), ("off", off)):
        p = simulate_patient(cfg, 0, 2)
        case = render_patient(p, cfg, "tiny", 0)
        spleen = (case.organs == TOTAL_IDS["spleen"]) & (case.lesions == 0)
        liver = (case.organs == TOTAL_IDS["liver"]) & (case.lesions == 0)
        ratios[name] = case.pet[spleen].mean() / case.pet[liver].mean()
        assert (p.diffuse_spleen is True) == (name == "on")
    assert ratios["on"] > 1.4 and ratios["off"] < 1.2


def test_full_size_grids_are_clinical():
    p = simulate_patient(SynthConfig(), 0, 0)
    pet, ct = scan_grids(p, "full", np.random.default_rng(0))
    assert pet.spacing == (4.0, 4.0, 4.0)
    assert ct.spacing == (3.0, 3.0, 3.0)
    assert ct.shape != pet.shape


def test_same_seed_same_voxels_and_resume(tiny_cohort, tmp_path):
    other = tmp_path / "again"
    generate_cohort(SynthRequest(out=other, n_patients=N, seed=1, size="tiny", export_nnunet=False))
    pid = sorted(p.name for p in (tiny_cohort / "cases").iterdir())[0]
    for name in ("pet", "ct", "organs", "lesions"):
        a, _ = _load(tiny_cohort / "cases" / pid / f"{name}.nii.gz")
        b, _ = _load(other / "cases" / pid / f"{name}.nii.gz")
        np.testing.assert_array_equal(a, b)
    # an interrupted case (one file missing) is rendered again on rerun, the rest kept
    victim = other / "cases" / pid / "pet.nii.gz"
    victim.unlink()
    keep = other / "cases" / sorted(p.name for p in (other / "cases").iterdir())[1] / "ct.nii.gz"
    mtime = keep.stat().st_mtime_ns
    generate_cohort(SynthRequest(out=other, n_patients=N, seed=1, size="tiny", export_nnunet=False))
    assert victim.is_file()
    assert keep.stat().st_mtime_ns == mtime
    a, _ = _load(tiny_cohort / "cases" / pid / "pet.nii.gz")
    b, _ = _load(victim)
    np.testing.assert_array_equal(a, b)


def test_rerun_with_other_settings_is_refused(tiny_cohort):
    with pytest.raises(SynthError, match="holds a cohort made with other settings"):
        generate_cohort(
            SynthRequest(out=tiny_cohort, n_patients=N, seed=2, size="tiny", export_nnunet=False)
        )


def test_foreign_non_empty_folder_is_refused(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(SynthError, match="not empty and holds no synth_config.json"):
        generate_cohort(SynthRequest(out=tmp_path, n_patients=N, size="tiny"))
