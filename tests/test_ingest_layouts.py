"""One test per input layout (dicom, nifti, autopet, nnunet), and the organ mask readers."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from ingest_helpers import (
    CT_AFFINE,
    CT_SHAPE,
    PET_AFFINE,
    SHAPE,
    activity,
    ct_volume,
    lesion_mask,
    liver_mask,
    pet_tags,
    write_clinical_csv,
    write_ct,
    write_nifti_patient,
    write_pet,
)
from lamp.anatomy import TOTAL_IDS
from lamp.cohort import read_clinical
from lamp.images import load_nifti, resample_to_grid, save_nifti
from lamp.ingest.common import grid_alias
from lamp.ingest.organs import read_label_table, read_organs
from lamp.ingest.run import IngestRequest, ingest_cohort

FACTOR_60MIN = 2.7633668171764324e-4  # see test_ingest_suv


def run(tmp_path, layout, ids, **kw):
    write_clinical_csv(tmp_path / "clinical.csv", ids, **kw.pop("extra", {}))
    req = IngestRequest(tmp_path / "in", layout, tmp_path / "clinical.csv", tmp_path / "out", **kw)
    return ingest_cohort(req, progress=False)


def case(tmp_path, pid, kind):
    return load_nifti(tmp_path / "out" / "cases" / pid / f"{kind}.nii.gz")


def ct_on_pet(ct=None, affine=CT_AFFINE):
    values = ct_volume() if ct is None else ct
    out = resample_to_grid(
        values.astype(np.float32), affine, SHAPE, PET_AFFINE, order=1, fill=-1024
    )
    return np.rint(out)


def test_nifti_layout(tmp_path):
    write_nifti_patient(tmp_path / "in", "P1", organs=liver_mask(), lesions=lesion_mask())
    write_nifti_patient(tmp_path / "in", "P2")
    s = run(tmp_path, "nifti", ["P1", "P2"])
    assert s.ok, s.to_text()
    assert [r.status for r in s.results] == ["ready", "ready"]

    pet, aff = case(tmp_path, "P1", "pet")
    np.testing.assert_allclose(aff, PET_AFFINE)
    np.testing.assert_allclose(pet, activity() / 3000.0, rtol=1e-6)
    ct, ct_aff = case(tmp_path, "P1", "ct")
    assert ct.dtype == np.int16 and ct.shape == SHAPE
    np.testing.assert_allclose(ct_aff, PET_AFFINE)
    np.testing.assert_array_equal(ct, ct_on_pet())
    organs, _ = case(tmp_path, "P1", "organs")
    np.testing.assert_array_equal(organs, liver_mask())
    lesions, _ = case(tmp_path, "P1", "lesions")
    assert lesions.dtype == np.uint16
    assert sorted(np.unique(lesions)) == [0, 1, 2]  # two separate lesions -> two instances
    np.testing.assert_array_equal(lesions > 0, lesion_mask() > 0)
    assert not (tmp_path / "out" / "cases" / "P2" / "organs.nii.gz").exists()

    record = json.loads((tmp_path / "out" / "ingest_log" / "P1.json").read_text())
    assert record["n_lesions"] == 2
    assert 1.3 < record["liver_suv_mean"] < 3.0  # ~1.8: no warning
    assert record["warnings"] == []
    p2 = json.loads((tmp_path / "out" / "ingest_log" / "P2.json").read_text())
    assert "liver SUV check skipped: no organ mask" in p2["notes"]
    assert "liver SUV check    skipped for 1 patient(s)" in s.to_text()
    table = read_clinical(tmp_path / "out" / "clinical.csv")
    assert table["patient_id"].tolist() == ["P1", "P2"]


def test_autopet_layout(tmp_path):
    study = tmp_path / "in" / "PETCT_0af7ffe12a" / "08-12-2002-NA-PET-CT Ganzkoerper-10445"
    ctres = ct_on_pet()
    save_nifti(study / "CTres.nii.gz", ctres, PET_AFFINE, np.float32)
    save_nifti(study / "SUV.nii.gz", activity() / 3000.0, PET_AFFINE, np.float32)
    save_nifti(study / "SEG.nii.gz", lesion_mask().astype(np.float64), PET_AFFINE, np.float64)
    save_nifti(study / "CT.nii.gz", ct_volume(), CT_AFFINE, np.int16)  # ignored: CTres is used
    s = run(tmp_path, "autopet", ["PETCT_0af7ffe12a"])
    assert s.ok, s.to_text()
    ct, _ = case(tmp_path, "PETCT_0af7ffe12a", "ct")
    np.testing.assert_array_equal(ct, ctres)
    pet, _ = case(tmp_path, "PETCT_0af7ffe12a", "pet")
    np.testing.assert_allclose(pet, activity() / 3000.0, rtol=1e-6)
    lesions, _ = case(tmp_path, "PETCT_0af7ffe12a", "lesions")
    assert lesions.max() == 2
    np.testing.assert_array_equal(lesions > 0, lesion_mask() > 0)


@pytest.mark.parametrize("dataset_json", [None, {"0": "PET", "1": "CT"}])
def test_nnunet_layout(tmp_path, dataset_json):
    root = tmp_path / "in"
    ct_ch, pet_ch = ("0000", "0001") if dataset_json is None else ("0001", "0000")
    if dataset_json is not None:
        meta = {"channel_names": dataset_json, "labels": {"background": 0, "lesion": 1}}
        meta["file_ending"] = ".nii.gz"
        (root).mkdir(parents=True)
        (root / "dataset.json").write_text(json.dumps(meta))
    for pid, folder in (("P1", "imagesTr"), ("P2", "imagesTs")):
        save_nifti(root / folder / f"{pid}_{ct_ch}.nii.gz", ct_on_pet(), PET_AFFINE, np.float32)
        save_nifti(
            root / folder / f"{pid}_{pet_ch}.nii.gz", activity() / 3000, PET_AFFINE, np.float32
        )
    save_nifti(root / "labelsTr" / "P1.nii.gz", lesion_mask(), PET_AFFINE, np.uint8)
    save_nifti(root / "organs" / "P1.nii.gz", liver_mask(), PET_AFFINE, np.uint8)
    s = run(tmp_path, "nnunet", ["P1", "P2"])
    assert s.ok, s.to_text()
    pet, _ = case(tmp_path, "P1", "pet")
    np.testing.assert_allclose(pet, activity() / 3000.0, rtol=1e-6)  # the right channel
    lesions, _ = case(tmp_path, "P1", "lesions")
    assert lesions.max() == 2
    organs, _ = case(tmp_path, "P1", "organs")
    np.testing.assert_array_equal(organs, liver_mask())
    assert not (tmp_path / "out" / "cases" / "P2" / "lesions.nii.gz").exists()


def test_dicom_layout(tmp_path):
    folder = tmp_path / "in" / "P1"
    write_pet(folder / "PT" / "AC")
    write_pet(folder / "PT" / "NAC", tags=pet_tags(CorrectedImage=["DECY"]))  # skipped
    write_ct(folder / "CT")
    write_ct(folder / "SCOUT", values=ct_volume()[:, :, :1], tags={"ImageType": ["LOCALIZER"]})
    (folder / "README.txt").write_text("exported from the PACS")
    # organs from TotalSegmentator run on the CT, stored with the i axis flipped
    organs_ct = resample_to_grid(liver_mask(), PET_AFFINE, CT_SHAPE, CT_AFFINE, order=0)
    flip = CT_AFFINE @ np.array(
        [[-1, 0, 0, CT_SHAPE[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]
    )
    save_nifti(folder / "organs.nii.gz", organs_ct[::-1], flip, np.uint8)
    assert grid_alias(CT_SHAPE, flip, CT_SHAPE, CT_AFFINE)
    s = run(tmp_path, "dicom", ["P1"])
    assert s.ok, s.to_text()

    pet, aff = case(tmp_path, "P1", "pet")
    np.testing.assert_allclose(aff, PET_AFFINE, atol=1e-6)
    np.testing.assert_allclose(pet, activity() * FACTOR_60MIN, rtol=0, atol=1e-3)
    ct, _ = case(tmp_path, "P1", "ct")
    np.testing.assert_allclose(ct, ct_on_pet(), atol=1)
    organs, _ = case(tmp_path, "P1", "organs")
    np.testing.assert_array_equal(
        organs, resample_to_grid(organs_ct, CT_AFFINE, SHAPE, PET_AFFINE, order=0)
    )
    record = json.loads((tmp_path / "out" / "ingest_log" / "P1.json").read_text())
    assert record["suv"]["decay_time_s"] == 3600.0
    assert record["suv"]["scan_reference_rule"] == "SeriesDate/SeriesTime"
    notes = " | ".join(record["notes"])
    assert "1 non-attenuation-corrected PET series skipped" in notes
    assert "1 CT localizer/single-image series skipped" in notes
    assert "1 non-DICOM file(s) skipped" in notes


def test_dicom_layout_sul(tmp_path):
    folder = tmp_path / "in" / "P1"
    write_pet(folder / "pet", tags=pet_tags(PatientSex="F", PatientSize="1.65", PatientWeight="60"))
    write_ct(folder / "ct")
    s = run(tmp_path, "dicom", ["P1"], sul=True)
    assert s.ok, s.to_text()
    pet, _ = case(tmp_path, "P1", "pet")
    # woman 60 kg, 1.65 m: LBM 39.2868 kg; SUL = C * LBM[g] / decayed dose
    factor = 39286.85 / (370e6 * 2 ** (-3600 / 6586.2))
    np.testing.assert_allclose(pet, activity() * factor, rtol=0, atol=2e-3)
    assert "SUL" in s.to_text()


def test_nifti_layout_sul_from_the_table(tmp_path):
    write_nifti_patient(tmp_path / "in", "P1")
    s = run(tmp_path, "nifti", ["P1"], sul=True, extra={"weight_kg": [80.0], "height_cm": [180.0]})
    assert s.ok, s.to_text()
    pet, _ = case(tmp_path, "P1", "pet")
    np.testing.assert_allclose(pet, activity() / 3000.0 * 61.73141 / 80.0, rtol=1e-5)


def test_nifti_layout_sul_without_height_fails_that_patient(tmp_path):
    write_nifti_patient(tmp_path / "in", "P1")
    s = run(tmp_path, "nifti", ["P1"], sul=True)
    assert not s.ok
    assert (
        "SUL (--sul) needs the patient's weight, height and sex; missing weight, height"
        in s.to_text()
    )


# --------------------------------------------------------------------------------------
# TotalSegmentator organ masks
# --------------------------------------------------------------------------------------


def test_multilabel_without_table_is_total_ids(tmp_path):
    save_nifti(tmp_path / "organs.nii.gz", liver_mask(), PET_AFFINE, np.uint8)
    image, notes = read_organs(tmp_path / "organs.nii.gz")
    np.testing.assert_array_equal(image.array, liver_mask())
    assert read_label_table(tmp_path / "organs.nii.gz") is None
    assert "no label table" in notes[0]


def test_multilabel_label_table_is_renumbered_by_name(tmp_path):
    # another numbering (as TotalSegmentator v1 or a subset task writes): 1 liver, 2 spleen
    data = np.zeros(SHAPE, np.uint8)
    data[liver_mask() == TOTAL_IDS["liver"]] = 1
    data[liver_mask() == TOTAL_IDS["spleen"]] = 2
    img = nib.Nifti1Image(data, PET_AFFINE)
    xml = '<?xml version="1.0" encoding="UTF-8"?> <CaretExtension> <VolumeInformation Index="0">'
    xml += "<LabelTable>\n"
    xml += '<Label Key="1" Red="1" Green="0" Blue="0" Alpha="1"><![CDATA[liver]]></Label>\n'
    xml += '<Label Key="2" Red="0" Green="1" Blue="0" Alpha="1"><![CDATA[spleen]]></Label>\n'
    xml += "</LabelTable> </VolumeInformation></CaretExtension>\n   "
    img.header.extensions.append(nib.nifti1.Nifti1Extension(0, xml.encode()))
    nib.save(img, tmp_path / "organs.nii.gz")
    assert read_label_table(tmp_path / "organs.nii.gz") == {1: "liver", 2: "spleen"}
    image, notes = read_organs(tmp_path / "organs.nii.gz")
    np.testing.assert_array_equal(image.array, liver_mask())
    assert "2 class id(s) renumbered" in notes[0]


def test_per_class_folder(tmp_path):
    for name in ("liver", "spleen", "kidney_left"):
        mask = liver_mask() == TOTAL_IDS.get(name, -1)
        save_nifti(tmp_path / "organs" / f"{name}.nii.gz", mask, PET_AFFINE, np.uint8)
    image, notes = read_organs(tmp_path / "organs")
    np.testing.assert_array_equal(image.array, liver_mask())
    assert image.array.dtype == np.uint8
    assert "3 per-class masks merged" in notes


def test_per_class_folder_overlap_keeps_the_lower_id(tmp_path):
    liver = liver_mask() == TOTAL_IDS["liver"]
    save_nifti(tmp_path / "organs" / "liver.nii.gz", liver, PET_AFFINE, np.uint8)
    save_nifti(tmp_path / "organs" / "spleen.nii.gz", liver, PET_AFFINE, np.uint8)
    image, notes = read_organs(tmp_path / "organs")
    low = min(TOTAL_IDS["liver"], TOTAL_IDS["spleen"])
    assert set(np.unique(image.array)) == {0, low}
    assert any("in two masks" in n for n in notes)


def test_grid_alias():
    assert grid_alias(SHAPE, PET_AFFINE, SHAPE, PET_AFFINE)
    # transposed axes i <-> j: same voxel centres
    swap = PET_AFFINE[:, [1, 0, 2, 3]]
    assert grid_alias((16, 16, 12), swap, SHAPE, PET_AFFINE)
    shifted = PET_AFFINE.copy()
    shifted[0, 3] += 2.0  # half a voxel
    assert not grid_alias(SHAPE, shifted, SHAPE, PET_AFFINE)
    assert not grid_alias((16, 16, 11), PET_AFFINE, SHAPE, PET_AFFINE)
