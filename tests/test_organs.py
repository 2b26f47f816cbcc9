"""Tests of lamp.organs: TotalSegmentator 'total' masks, the 71 groups, the optional runner."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from lamp import organs
from lamp.anatomy import GROUPS, TOTAL_IDS, AnatomyError, group_id
from lamp.cohort import CohortError
from lamp.images import load_nifti, save_nifti
from lamp.organs import (
    OrganError,
    load_organs,
    organ_groups,
    read_totalseg_folder,
    run_totalsegmentator,
    totalseg_home_dir,
    totalseg_weights_dir,
)
from lamp.synth.generate import SynthRequest, generate_cohort

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
SHAPE = (6, 5, 4)


@pytest.fixture
def hand_made() -> np.ndarray:
    """A small 'total' map: liver, two left ribs, two left lung lobes, one right lobe."""
    t = np.zeros(SHAPE, dtype=np.uint8)
    t[0:2, 0:2, 0:2] = TOTAL_IDS["liver"]  # 8 voxels
    t[3, 0, 0] = TOTAL_IDS["rib_left_1"]
    t[3, 0, 1] = TOTAL_IDS["rib_left_5"]
    t[4, 4, 0:2] = TOTAL_IDS["lung_upper_lobe_left"]
    t[4, 4, 2] = TOTAL_IDS["lung_lower_lobe_left"]
    t[5, 4, 3] = TOTAL_IDS["lung_middle_lobe_right"]
    return t


# --------------------------------------------------------------------------------------
# Groups and presence
# --------------------------------------------------------------------------------------


def test_merge_and_presence_on_a_hand_made_volume(hand_made):
    groups, present = organ_groups(hand_made)
    assert groups.dtype == np.uint8 and groups.shape == SHAPE
    assert present.dtype == np.bool_ and present.shape == (71,)
    liver, rib_l, lung_l, lung_r = (
        group_id(n) for n in ("liver", "rib_left", "lung_left", "lung_right")
    )
    assert groups[0, 0, 0] == liver
    assert groups[3, 0, 0] == groups[3, 0, 1] == rib_l  # ribs 1 and 5 merge
    assert groups[4, 4, 0] == groups[4, 4, 2] == lung_l  # lobes of one side merge
    assert groups[5, 4, 3] == lung_r
    assert np.count_nonzero(groups == lung_l) == 3
    assert {GROUPS[g] for g in np.flatnonzero(present)} == {
        "liver",
        "rib_left",
        "lung_left",
        "lung_right",
    }


def test_absent_groups_are_flagged_and_have_no_voxels(hand_made):
    groups, present = organ_groups(hand_made)
    spleen = group_id("spleen")
    assert not present[spleen - 1]
    assert not np.any(groups == spleen)
    assert present.sum() == 4


def test_min_voxels_marks_small_groups_absent_and_clears_them(hand_made):
    groups, present = organ_groups(hand_made, min_voxels=3)
    lung_r = group_id("lung_right")
    rib_l = group_id("rib_left")
    assert not present[lung_r - 1] and not present[rib_l - 1]  # 1 and 2 voxels
    assert not np.any(groups == lung_r) and not np.any(groups == rib_l)
    assert present[group_id("liver") - 1] and present[group_id("lung_left") - 1]
    # the map and the flags agree
    assert np.array_equal(np.unique(groups[groups > 0]), np.flatnonzero(present) + 1)


def test_organ_groups_rejects_ids_above_117():
    t = np.zeros((2, 2, 2), dtype=np.uint8)
    t[0, 0, 0] = 118
    with pytest.raises(AnatomyError, match="118"):
        organ_groups(t)


# --------------------------------------------------------------------------------------
# load_organs
# --------------------------------------------------------------------------------------


def test_load_organs_on_its_grid(tmp_path, hand_made):
    path = save_nifti(tmp_path / "organs.nii.gz", hand_made, AFFINE, dtype=np.uint8)
    labels = load_organs(path, (SHAPE, AFFINE))
    assert labels.dtype == np.uint8
    assert np.array_equal(labels, hand_made)
    assert np.array_equal(load_organs(path), hand_made)


def test_bad_ids_name_the_file_and_the_ids(tmp_path, hand_made):
    bad = hand_made.astype(np.int16)
    bad[0, 4, 3] = 118
    bad[1, 4, 3] = 200
    path = save_nifti(tmp_path / "not_total.nii.gz", bad, AFFINE, dtype=np.int16)
    with pytest.raises(OrganError, match=r"not_total\.nii\.gz.*'total'.*\[118, 200\]"):
        load_organs(path)


def test_negative_and_fractional_ids_are_errors(tmp_path):
    neg = np.zeros(SHAPE, dtype=np.int16)
    neg[0, 0, 0] = -3
    with pytest.raises(OrganError, match=r"\[-3\]"):
        load_organs(save_nifti(tmp_path / "neg.nii.gz", neg, AFFINE, dtype=np.int16))
    frac = np.zeros(SHAPE, dtype=np.float32)
    frac[0, 0, 0] = 2.5
    with pytest.raises(OrganError, match="whole-number"):
        load_organs(save_nifti(tmp_path / "frac.nii.gz", frac, AFFINE))


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(CohortError, match="not found"):
        load_organs(tmp_path / "nothing.nii.gz")


def test_wrong_grid_is_an_error(tmp_path, hand_made):
    path = save_nifti(tmp_path / "organs.nii.gz", hand_made, AFFINE, dtype=np.uint8)
    shifted = AFFINE.copy()
    shifted[0, 3] = 10.0
    with pytest.raises(OrganError, match=r"organs\.nii\.gz.*not on the reference.*resample=True"):
        load_organs(path, (SHAPE, shifted))
    with pytest.raises(OrganError, match="not on the reference"):
        load_organs(path, ((12, 10, 8), np.diag([1.0, 1.0, 1.0, 1.0])))


def test_wrong_grid_is_resampled_with_nearest_neighbour_on_request(tmp_path, hand_made):
    path = save_nifti(tmp_path / "organs.nii.gz", hand_made, AFFINE, dtype=np.uint8)
    # 1 mm grid over the same field of view: voxel centres -0.5, 0.5, ... mm
    fine = np.diag([1.0, 1.0, 1.0, 1.0])
    fine[:3, 3] = -0.5
    out = load_organs(path, ((12, 10, 8), fine), resample=True)
    assert out.shape == (12, 10, 8) and out.dtype == np.uint8
    assert np.array_equal(out, hand_made.repeat(2, 0).repeat(2, 1).repeat(2, 2))
    assert set(np.unique(out)) == set(np.unique(hand_made))  # labels stay labels


def test_bad_reference_grid_is_an_error(tmp_path, hand_made):
    path = save_nifti(tmp_path / "organs.nii.gz", hand_made, AFFINE, dtype=np.uint8)
    with pytest.raises(OrganError, match="reference_grid"):
        load_organs(path, (SHAPE, np.eye(3)))
    with pytest.raises(OrganError, match="reference_grid"):
        load_organs(path, SHAPE)


# --------------------------------------------------------------------------------------
# Per-class folders
# --------------------------------------------------------------------------------------


def _write_masks(folder: Path, total: np.ndarray, affine=AFFINE) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for tid in np.unique(total[total > 0]):
        name = next(n for n, i in TOTAL_IDS.items() if i == tid)
        save_nifti(folder / f"{name}.nii.gz", total == tid, affine, dtype=np.uint8)


def test_per_class_folder_is_combined(tmp_path, hand_made):
    folder = tmp_path / "seg"
    _write_masks(folder, hand_made)
    (folder / "statistics.json").write_text("{}")  # not a mask: ignored
    labels = read_totalseg_folder(folder)
    assert labels.dtype == np.uint8
    assert np.array_equal(labels, hand_made)
    # load_organs takes the folder too, with the grid check
    assert np.array_equal(load_organs(folder, (SHAPE, AFFINE)), hand_made)
    with pytest.raises(OrganError, match="not on the reference"):
        load_organs(folder, ((3, 3, 3), AFFINE))


def test_unknown_class_names_are_listed(tmp_path, hand_made):
    folder = tmp_path / "seg"
    _write_masks(folder, hand_made)
    save_nifti(folder / "livr.nii.gz", hand_made == 0, AFFINE, dtype=np.uint8)
    save_nifti(folder / "tumour.nii.gz", hand_made == 0, AFFINE, dtype=np.uint8)
    with pytest.raises(
        OrganError, match=r"2 file\(s\).*livr\.nii\.gz \(did you mean 'liver'\?\).*tumour"
    ):
        read_totalseg_folder(folder)


def test_folder_errors(tmp_path, hand_made):
    with pytest.raises(OrganError, match="not found"):
        read_totalseg_folder(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OrganError, match="no NIfTI masks"):
        read_totalseg_folder(tmp_path / "empty")

    twice = tmp_path / "twice"
    _write_masks(twice, hand_made)
    save_nifti(twice / "liver.nii", hand_made == TOTAL_IDS["liver"], AFFINE, dtype=np.uint8)
    with pytest.raises(OrganError, match="'liver' is given twice"):
        read_totalseg_folder(twice)

    nonbinary = tmp_path / "nonbinary"
    nonbinary.mkdir()
    save_nifti(nonbinary / "spleen.nii.gz", hand_made, AFFINE, dtype=np.uint8)
    with pytest.raises(OrganError, match=r"spleen\.nii\.gz.*binary"):
        read_totalseg_folder(nonbinary)

    grids = tmp_path / "grids"
    _write_masks(grids, hand_made)
    save_nifti(grids / "spleen.nii.gz", np.ones((3, 3, 3), bool), AFFINE, dtype=np.uint8)
    with pytest.raises(OrganError, match="not on the grid"):
        read_totalseg_folder(grids)


def test_overlapping_masks_warn_and_the_higher_id_wins(tmp_path, hand_made):
    folder = tmp_path / "seg"
    _write_masks(folder, hand_made)
    spleen = np.zeros(SHAPE, dtype=bool)
    spleen[0, 0, 0] = True  # also liver
    save_nifti(folder / "spleen.nii.gz", spleen, AFFINE, dtype=np.uint8)
    with pytest.warns(UserWarning, match="1 voxel"):
        labels = read_totalseg_folder(folder)
    winner = max(TOTAL_IDS["spleen"], TOTAL_IDS["liver"])
    assert labels[0, 0, 0] == winner


# --------------------------------------------------------------------------------------
# The optional runner
# --------------------------------------------------------------------------------------


@pytest.fixture
def ct(tmp_path) -> Path:
    return save_nifti(tmp_path / "ct.nii.gz", np.zeros(SHAPE, dtype=np.int16), AFFINE)


def test_runner_without_totalsegmentator_says_how_to_supply_masks(monkeypatch, ct, tmp_path):
    # None in sys.modules makes `import totalsegmentator` raise ImportError
    monkeypatch.setitem(sys.modules, "totalsegmentator", None)
    with pytest.raises(OrganError) as info:
        run_totalsegmentator(ct, tmp_path / "organs.nii.gz")
    message = str(info.value)
    assert "TotalSegmentator is not installed" in message
    assert "--ml" in message and "per-class masks" in message
    assert "cases/<patient_id>/organs.nii.gz" in message
    assert not (tmp_path / "organs.nii.gz").exists()


@pytest.fixture
def fake_totalseg(monkeypatch, tmp_path):
    """A stand-in ``totalsegmentator`` package that records its call and writes a map."""
    home = tmp_path / "tshome"
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(home))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    calls: list[dict] = []

    def fake_run(**kwargs):
        calls.append(kwargs)
        save_nifti(kwargs["output"], np.full(SHAPE, TOTAL_IDS["liver"]), AFFINE, dtype=np.uint8)

    package = types.ModuleType("totalsegmentator")
    api = types.ModuleType("totalsegmentator.python_api")
    api.totalsegmentator = fake_run  # type: ignore[attr-defined]
    package.python_api = api  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "totalsegmentator", package)
    monkeypatch.setitem(sys.modules, "totalsegmentator.python_api", api)
    monkeypatch.setattr(organs, "_totalseg_version", lambda: "2.4.0")
    return home, calls


def _install_weights(weights: Path, dataset_ids) -> None:
    for d in dataset_ids:
        fold = weights / f"Dataset{d}_TotalSegmentator_x" / "trainer__plans__3d" / "fold_0"
        fold.mkdir(parents=True)
        (fold / "checkpoint_final.pth").write_bytes(b"weights")


def test_runner_lookup_follows_totalsegmentator(monkeypatch, tmp_path):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "h"))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    assert totalseg_home_dir() == tmp_path / "h"
    assert totalseg_weights_dir() == tmp_path / "h" / "nnunet" / "results"
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path / "w"))
    assert totalseg_weights_dir() == tmp_path / "w"
    monkeypatch.delenv("TOTALSEG_HOME_DIR")
    assert totalseg_home_dir().name == ".totalsegmentator"


def test_runner_without_weights_never_runs(fake_totalseg, ct, tmp_path):
    home, calls = fake_totalseg
    _install_weights(home / "nnunet" / "results", [291, 292])  # parts 3-5 missing
    with pytest.raises(OrganError, match=r"weights.*Dataset293_\*.*never downloads.*--ml"):
        run_totalsegmentator(ct, tmp_path / "organs.nii.gz")
    assert calls == []


def test_runner_with_weights_switches_statistics_off(fake_totalseg, ct, tmp_path):
    home, calls = fake_totalseg
    _install_weights(home / "nnunet" / "results", [297])
    # an existing config with statistics on, as TotalSegmentator writes it
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.json").write_text(
        json.dumps(
            {"totalseg_id": "totalseg_ABC", "send_usage_stats": True, "prediction_counter": 4}
        )
    )
    out = run_totalsegmentator(ct, tmp_path / "out" / "organs.nii.gz", device="cuda", fast=True)
    assert out == tmp_path / "out" / "organs.nii.gz"
    assert [p.name for p in out.parent.iterdir()] == ["organs.nii.gz"]  # no temp left
    config = json.loads((home / "config.json").read_text())
    assert config["send_usage_stats"] is False
    assert config["totalseg_id"] == "totalseg_ABC" and config["prediction_counter"] == 4
    (call,) = calls
    assert call["ml"] is True and call["fast"] is True and call["task"] == "total"
    assert call["device"] == "gpu"
    assert Path(call["input"]) == ct
    labels, _ = load_nifti(out)
    assert np.all(labels == TOTAL_IDS["liver"])


def test_runner_creates_a_config_with_statistics_off(fake_totalseg, ct, tmp_path):
    home, calls = fake_totalseg
    weights = tmp_path / "elsewhere"
    _install_weights(weights, [291, 292, 293, 294, 295])
    run_totalsegmentator(ct, tmp_path / "organs.nii.gz", weights_dir=weights)
    config = json.loads((home / "config.json").read_text())
    assert config["send_usage_stats"] is False and "prediction_counter" in config
    assert calls[0]["fast"] is False


def test_runner_rejects_totalsegmentator_v1(fake_totalseg, monkeypatch, ct, tmp_path):
    monkeypatch.setattr(organs, "_totalseg_version", lambda: "1.5.7")
    with pytest.raises(OrganError, match="1.5.7.*v2"):
        run_totalsegmentator(ct, tmp_path / "organs.nii.gz")


def test_runner_failure_leaves_no_output(fake_totalseg, monkeypatch, ct, tmp_path):
    home, _ = fake_totalseg
    _install_weights(home / "nnunet" / "results", [297])

    def crash(**kwargs):
        raise SystemExit(1)

    monkeypatch.setattr(sys.modules["totalsegmentator.python_api"], "totalsegmentator", crash)
    with pytest.raises(OrganError, match="TotalSegmentator failed.*SystemExit"):
        run_totalsegmentator(ct, tmp_path / "o" / "organs.nii.gz", fast=True)
    assert list((tmp_path / "o").iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"device": "tpu"}, "device"),
        ({"out_path": "organs.nii"}, ".nii.gz"),
        ({"ct_path": "missing.nii.gz"}, "CT image not found"),
    ],
)
def test_runner_argument_checks(ct, tmp_path, kwargs, match):
    args = {"ct_path": ct, "out_path": tmp_path / "organs.nii.gz", **kwargs}
    with pytest.raises(OrganError, match=match):
        run_totalsegmentator(**args)


# --------------------------------------------------------------------------------------
# On a synthetic cohort
# --------------------------------------------------------------------------------------


def test_synthetic_organs_on_the_pet_grid(tmp_path):
    cohort = tmp_path / "c"
    generate_cohort(SynthRequest(out=cohort, n_patients=5, size="tiny", export_nnunet=False))
    case = sorted((cohort / "cases").iterdir())[0]
    pet, pet_affine = load_nifti(case / "pet.nii.gz")
    labels = load_organs(case / "organs.nii.gz", (pet.shape, pet_affine))
    groups, present = organ_groups(labels)
    assert groups.shape == pet.shape
    assert present[group_id("liver") - 1] and present[group_id("spleen") - 1]
    assert np.array_equal(np.unique(groups[groups > 0]), np.flatnonzero(present) + 1)
    # the CT is on its own grid: reading the organs against it needs resampling
    ct, ct_affine = load_nifti(case / "ct.nii.gz")
    with pytest.raises(OrganError, match="not on the reference"):
        load_organs(case / "organs.nii.gz", (ct.shape, ct_affine))
    on_ct = load_organs(case / "organs.nii.gz", (ct.shape, ct_affine), resample=True)
    assert on_ct.shape == ct.shape
    assert set(np.unique(on_ct)) <= set(np.unique(labels))
