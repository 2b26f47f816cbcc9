"""lamp.segmentation.dataset: the nnU-Net v2 raw dataset written from a cohort folder."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from lamp.cohort import (
    CLINICAL_COLUMNS,
    CohortError,
    case_path,
    make_folds,
    nnunet_splits,
    pfs_strata,
    read_clinical,
    read_folds,
    write_folds,
)
from lamp.images import load_nifti, save_nifti, voxel_centers_world
from lamp.segmentation.dataset import export_nnunet_raw

PIDS = ["LAMP001", "LAMP002", "LAMP003"]
PET_SHAPE = (12, 10, 14)


def affine(spacing, origin, signs) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = np.diag(np.asarray(signs, float) * np.asarray(spacing, float))
    a[:3, 3] = origin
    return a


# PET: 10 mm voxels, DICOM-like orientation (i to the left, j posterior, k superior);
# field of view x -55..65, y -45..55, z -75..65 mm
PET_AFFINE = affine((10.0, 10.0, 10.0), (60.0, 50.0, -70.0), (-1, -1, 1))
# CT grids: finer, own orientation and offset; both cover the PET in x and y, and only
# part of it in z, so that some PET voxels lie outside the CT (-1024 HU there)
CT_GRIDS = {
    # spacing, origin, signs, shape: x -60..68, y 60..-50 (j flipped), z -40..68
    "LAMP001": ((4.0, 5.0, 3.0), (-60.0, 60.0, -40.0), (1, -1, 1), (33, 23, 37)),
    # x 70..-58 (i flipped), y -50..60, z 65..-40 (k flipped)
    "LAMP002": ((8.0, 5.0, 5.0), (70.0, -50.0, 65.0), (-1, 1, -1), (17, 23, 22)),
}


def analytic_ct(world: np.ndarray) -> np.ndarray:
    """HU as a linear function of world position (mm): trilinear resampling is exact."""
    return 0.5 * world[..., 0] - 0.3 * world[..., 1] + 0.2 * world[..., 2] + 10.0


def lesion_map() -> np.ndarray:
    les = np.zeros(PET_SHAPE, np.uint16)
    les[3:6, 2:5, 4:7] = 1  # a cube
    les[8:10, 6:8, 9:11] = 2  # a second instance
    return les


def write_case(cohort: Path, pid: str, rng: np.random.Generator) -> None:
    pet = rng.gamma(2.0, 0.8, size=PET_SHAPE).astype(np.float32)
    save_nifti(case_path(cohort, pid, "pet"), pet, PET_AFFINE, np.float32)
    if pid in CT_GRIDS:
        spacing, origin, signs, shape = CT_GRIDS[pid]
        ct_aff = affine(spacing, origin, signs)
        ct = analytic_ct(voxel_centers_world(shape, ct_aff))
        save_nifti(case_path(cohort, pid, "ct"), ct, ct_aff, np.float32)
    else:  # already on the PET grid, stored as int16 the way scanners do
        ct = rng.integers(-1000, 1500, size=PET_SHAPE)
        save_nifti(case_path(cohort, pid, "ct"), ct, PET_AFFINE, np.int16)
    save_nifti(case_path(cohort, pid, "lesions"), lesion_map(), PET_AFFINE, np.uint16)
    save_nifti(case_path(cohort, pid, "organs"), np.zeros(PET_SHAPE), PET_AFFINE, np.uint8)


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    root = tmp_path / "cohort"
    rng = np.random.default_rng(0)
    for pid in PIDS:
        write_case(root, pid, rng)
    rows = [
        [PIDS[0], 64, "M", 1, 1.4, 3, 1, 3, 12.5, 1, 20.0, 1],
        [PIDS[1], 51, "F", 0, 0.8, 1, 0, 0, 40.0, 0, 40.0, 0],
        [PIDS[2], 77, "F", 2, 2.1, 4, 2, 5, 6.0, 1, 6.0, 1],
    ]
    pd.DataFrame(rows, columns=list(CLINICAL_COLUMNS)).to_csv(root / "clinical.csv", index=False)
    clinical = read_clinical(root / "clinical.csv")
    folds = make_folds(clinical["patient_id"].tolist(), pfs_strata(clinical), n_folds=3)
    write_folds(root / "folds.csv", folds)
    return root


def outputs(folder: Path, pid: str) -> list[Path]:
    return [
        folder / "imagesTr" / f"{pid}_0000.nii.gz",
        folder / "imagesTr" / f"{pid}_0001.nii.gz",
        folder / "labelsTr" / f"{pid}.nii.gz",
    ]


def test_export_layout_json_and_grids(cohort):
    folder = export_nnunet_raw(cohort)
    assert folder == cohort / "nnunet_raw" / "Dataset501_LAMPSynth"
    ds = json.loads((folder / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "CT", "1": "PET"}
    assert ds["labels"] == {"background": 0, "lesion": 1}
    assert ds["numTraining"] == 3
    assert ds["file_ending"] == ".nii.gz"
    assert ds["description"]
    splits = json.loads((folder / "splits_final.json").read_text())
    assert splits == nnunet_splits(read_folds(cohort / "folds.csv"))
    assert len(splits) == 3 and all(len(s["val"]) == 1 for s in splits)
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == sorted(
        f"{pid}_000{c}.nii.gz" for pid in PIDS for c in (0, 1)
    )
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == sorted(
        f"{pid}.nii.gz" for pid in PIDS
    )
    for pid in PIDS:
        ct, pet, label = outputs(folder, pid)
        for path in (ct, pet, label):
            arr, aff = load_nifti(path)
            assert arr.shape == PET_SHAPE
            np.testing.assert_allclose(aff, PET_AFFINE)
        assert load_nifti(ct)[0].dtype == np.float32
        pet_in = load_nifti(case_path(cohort, pid, "pet"))[0]
        np.testing.assert_array_equal(load_nifti(pet)[0], pet_in)
        lab = load_nifti(label)[0]
        assert lab.dtype == np.uint8
        np.testing.assert_array_equal(lab, (lesion_map() > 0).astype(np.uint8))


@pytest.mark.parametrize("pid", ["LAMP001", "LAMP002"])
def test_ct_resampled_through_world_space(cohort, pid):
    folder = export_nnunet_raw(cohort)
    ct = load_nifti(outputs(folder, pid)[0])[0]
    spacing, origin, signs, shape = CT_GRIDS[pid]
    ct_aff = affine(spacing, origin, signs)
    world = voxel_centers_world(PET_SHAPE, PET_AFFINE)
    inv = np.linalg.inv(ct_aff)
    src = world @ inv[:3, :3].T + inv[:3, 3]  # CT index of each PET voxel centre
    n = np.array(shape)
    inside = np.all((src >= 0) & (src <= n - 1), axis=-1)
    outside = np.any((src < -0.5) | (src > n - 0.5), axis=-1)
    assert inside.sum() > 500 and outside.sum() > 100
    np.testing.assert_allclose(ct[inside], analytic_ct(world)[inside], atol=1e-3)
    assert np.all(ct[outside] == -1024.0)
    # a few voxels by hand: PET voxel (0, 0, 7) is at world (60, 50, 0) mm
    assert ct[0, 0, 7] == pytest.approx(0.5 * 60 - 0.3 * 50 + 10.0, abs=1e-3)
    # PET voxel (11, 9, 13) at (-50, -40, 60) mm
    assert ct[11, 9, 13] == pytest.approx(0.5 * -50 - 0.3 * -40 + 0.2 * 60 + 10.0, abs=1e-3)
    # PET voxel (5, 5, 0) at z = -70 mm: below both CTs
    assert ct[5, 5, 0] == -1024.0


def test_ct_on_pet_grid_is_copied(cohort):
    folder = export_nnunet_raw(cohort)
    original = load_nifti(case_path(cohort, "LAMP003", "ct"))[0]
    exported = load_nifti(outputs(folder, "LAMP003")[0])[0]
    np.testing.assert_array_equal(exported, original.astype(np.float32))


def test_export_is_resumable(cohort):
    folder = export_nnunet_raw(cohort)
    stamps = {p: p.stat().st_mtime_ns for pid in PIDS for p in outputs(folder, pid)}
    export_nnunet_raw(cohort)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing rewritten
    # an input newer than its outputs: only that case is redone
    pet = case_path(cohort, "LAMP002", "pet")
    newest = max(stamps.values())
    os.utime(pet, ns=(newest + 10**9, newest + 10**9))
    export_nnunet_raw(cohort)
    for pid in PIDS:
        for p in outputs(folder, pid):
            assert (p.stat().st_mtime_ns == stamps[p]) == (pid != "LAMP002")
    # a missing output is redone
    outputs(folder, "LAMP001")[2].unlink()
    export_nnunet_raw(cohort)
    assert outputs(folder, "LAMP001")[2].is_file()
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_subset_and_stale_cases(cohort, tmp_path):
    out = tmp_path / "raw"
    folder = export_nnunet_raw(cohort, out, dataset_id=7, dataset_name="Sub")
    assert folder == out / "Dataset007_Sub"
    clinical = read_clinical(cohort / "clinical.csv")
    # three folds of three patients: dropping one leaves a fold without patients
    with pytest.raises(CohortError, match=r"empty fold"):
        export_nnunet_raw(cohort, out, 7, "Sub", patient_ids=["LAMP001", "LAMP002"])
    # with two folds, a two-patient subset keeps both folds non-empty
    folds = pd.DataFrame({"patient_id": PIDS, "fold": [0, 1, 1]})
    write_folds(cohort / "folds.csv", folds)
    export_nnunet_raw(cohort, out, 7, "Sub", patient_ids=["LAMP002", "LAMP001"])
    names = sorted(p.name for p in (folder / "labelsTr").iterdir())
    assert names == ["LAMP001.nii.gz", "LAMP002.nii.gz"]  # LAMP003's files are gone
    assert len(list((folder / "imagesTr").iterdir())) == 4
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 2
    splits = json.loads((folder / "splits_final.json").read_text())
    assert splits == [{"train": ["LAMP002"], "val": ["LAMP001"]},
                      {"train": ["LAMP001"], "val": ["LAMP002"]}]  # fmt: skip
    assert len(clinical) == 3
    # the default (every patient of clinical.csv) needs every patient in the split
    write_folds(cohort / "folds.csv", folds.iloc[:2].assign(fold=[0, 1]))
    with pytest.raises(CohortError, match=r"expected every exported patient in the split, "):
        export_nnunet_raw(cohort, out, 7, "Sub")


def test_missing_lesions_names_the_file(cohort):
    les = case_path(cohort, "LAMP002", "lesions")
    les.unlink()
    with pytest.raises(CohortError, match=r"1 case file\(s\) not found") as info:
        export_nnunet_raw(cohort)
    assert str(les) in str(info.value)
    assert not (cohort / "nnunet_raw").exists()


def test_ct_pet_overlap_too_small(cohort):
    ct_aff = affine((5.0, 5.0, 5.0), (-55.0, -45.0, 40.0), (1, 1, 1))  # z 37.5..117.5
    save_nifti(case_path(cohort, "LAMP001", "ct"), np.zeros((24, 20, 16)), ct_aff)
    with pytest.raises(CohortError, match=r"patient 'LAMP001': expected the CT .* to cover"):
        export_nnunet_raw(cohort)


def test_lesions_off_the_pet_grid(cohort):
    path = case_path(cohort, "LAMP003", "lesions")
    save_nifti(path, lesion_map(), affine((10, 10, 10), (61.0, 50.0, -70.0), (-1, -1, 1)))
    with pytest.raises(CohortError, match=r"lesions\.nii\.gz: expected the lesion map on the PET"):
        export_nnunet_raw(cohort)


def test_bad_dataset_id_and_name(cohort):
    with pytest.raises(CohortError, match=r"dataset_id: expected an integer 1\.\.999, got 1000"):
        export_nnunet_raw(cohort, dataset_id=1000)
    with pytest.raises(CohortError, match=r"dataset_name: .*got 'my data'"):
        export_nnunet_raw(cohort, dataset_name="my data")


def test_missing_folds_file(cohort):
    (cohort / "folds.csv").unlink()
    with pytest.raises(CohortError, match=r"folds\.csv: file not found"):
        export_nnunet_raw(cohort)


def test_module_does_not_import_nnunet():
    code = "import sys, lamp.segmentation.dataset; print('nnunetv2' in sys.modules)"
    import subprocess

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


@pytest.mark.slow  # about 15 s: nnU-Net checks in a spawned process that imports torch
def test_nnunet_verifies_the_export(cohort, tmp_path, monkeypatch, capfd):
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / var).mkdir()
        monkeypatch.setenv(var, str(tmp_path / var))
    folder = export_nnunet_raw(cohort, tmp_path / "nnUNet_raw")
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(folder), num_processes=1)
    out = capfd.readouterr().out
    assert "verify_dataset_integrity Done" in out
    assert "Error" not in out and "Warning" not in out, out
    # nnU-Net's own reader sees two channels on the label's grid
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    images, props = SimpleITKIO().read_images([str(p) for p in outputs(folder, "LAMP001")[:2]])
    assert images.shape == (2, *PET_SHAPE[::-1])  # SimpleITK order (z, y, x)
    np.testing.assert_allclose(props["spacing"], [10.0, 10.0, 10.0])
    assert nib.load(outputs(folder, "LAMP001")[2]).get_data_dtype() == np.uint8
