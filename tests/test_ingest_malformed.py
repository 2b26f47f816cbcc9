"""A catalogue of malformed inputs, each checked for the message it gets.

Every entry builds one broken input in ``tmp_path`` and either raises (checked with
``pytest.raises(match=...)``) or, where one patient's problem must not stop the others,
runs the whole ingest and checks the summary's text. The message must name the thing
(file, DICOM series and tag, column, patient) and say what was expected.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from ingest_helpers import (
    CT_AFFINE,
    PET_AFFINE,
    SHAPE,
    activity,
    clinical_frame,
    grid_affine,
    lesion_mask,
    liver_mask,
    pet_tags,
    write_clinical_csv,
    write_ct,
    write_nifti_patient,
    write_pet,
)
from lamp.errors import LampError
from lamp.images import save_nifti
from lamp.ingest.case import prepare_case
from lamp.ingest.clinical import load_column_map, read_clinical_table
from lamp.ingest.common import Image
from lamp.ingest.dicom import read_pet, read_series, scan_dicom_folder, select_pet_ct
from lamp.ingest.layouts import discover, load_patient
from lamp.ingest.organs import read_organs
from lamp.ingest.run import IngestRequest, ingest_cohort

RAISES: dict[str, tuple[Callable[[Path], object], str]] = {}
SUMMARY: dict[str, tuple[Callable[[Path], str], str]] = {}


def raises(match: str):
    def deco(fn):
        RAISES[fn.__name__] = (fn, match)
        return fn

    return deco


def summary(match: str):
    def deco(fn):
        SUMMARY[fn.__name__] = (fn, match)
        return fn

    return deco


# --------------------------------------------------------------------------------------
# PET DICOM tags
# --------------------------------------------------------------------------------------


def read_one_pet(folder: Path):
    (series,) = scan_dicom_folder(folder).series
    return read_pet(series)


def pet_with(tmp: Path, rp=None, slice_tags=None, private=(), **tags):
    write_pet(tmp / "pet", tags=pet_tags(rp=rp, **tags), slice_tags=slice_tags, private=private)
    return read_one_pet(tmp / "pet")


SERIES = r"PET series [0-9.]+ \('PET WB AC', 12 files in .*pet\)"


@raises(SERIES + r": tag PatientWeight \(0010,1030\) is 0 kg; SUVbw needs the body weight")
def weight_zero(tmp):
    pet_with(tmp, PatientWeight="0")


@raises(r"tag PatientWeight \(0010,1030\) is missing or empty; SUVbw needs the body weight")
def weight_missing(tmp):
    pet_with(tmp, PatientWeight=None)


@raises(r"PatientWeight \(0010,1030\) \(kg\): expected 1 to 400, got 70000 \(grams instead")
def weight_in_grams(tmp):
    pet_with(tmp, PatientWeight="70000")


@raises(
    r"tag RadionuclideTotalDose \(0018,1074\) \(in RadiopharmaceuticalInformationSequence\) is "
    r"missing"
)
def dose_missing(tmp):
    pet_with(tmp, rp={"RadionuclideTotalDose": None})


@raises(
    r"RadionuclideTotalDose \(0018,1074\) \(Bq\): expected 1e\+06 to 2e\+10, got 370 \(MBq "
    r"instead of Bq\?\)"
)
def dose_in_mbq(tmp):
    pet_with(tmp, rp={"RadionuclideTotalDose": "370"})


@raises(
    r"RadionuclideHalfLife \(0018,1075\) \(s\): expected 60 to 1e\+06, got 1.8295 \(minutes instead"
)
def half_life_absurd(tmp):
    pet_with(tmp, rp={"RadionuclideHalfLife": "1.8295"})


@raises(r"RadionuclideHalfLife \(0018,1075\) is 3600 s but the radionuclide is F-18")
def half_life_not_f18(tmp):
    pet_with(tmp, rp={"RadionuclideHalfLife": "3600"})


@raises(SERIES + r": negative decay time -30.0 min: the injection \(2024-01-05T10:30:00")
def negative_decay_time(tmp):
    pet_with(tmp, rp={"RadiopharmaceuticalStartDateTime": "20240105103000"})


@raises(r"implausible decay time 49.0 h from the injection \(2024-01-03T09:00:00\)")
def decay_time_days(tmp):
    pet_with(tmp, rp={"RadiopharmaceuticalStartDateTime": "20240103090000"})


@raises(r"negative decay time .* after the scan start")
def injection_time_only_after_scan(tmp):
    # time only, 10:30 for a scan at 10:00: the day before would be 23.5 h: refused
    pet_with(
        tmp, rp={"RadiopharmaceuticalStartDateTime": None, "RadiopharmaceuticalStartTime": "103000"}
    )


@raises(
    r"RadiopharmaceuticalStartDateTime \(0018,1078\) and RadiopharmaceuticalStartTime "
    r"\(0018,1072\) .* are missing"
)
def injection_time_missing(tmp):
    pet_with(
        tmp, rp={"RadiopharmaceuticalStartDateTime": None, "RadiopharmaceuticalStartTime": None}
    )


@raises(r"RadiopharmaceuticalInformationSequence \(0054,0016\) is missing or empty")
def radiopharmaceutical_sequence_missing(tmp):
    pet_with(tmp, RadiopharmaceuticalInformationSequence=None)


@raises(SERIES + r": tag Units \(0054,1001\) is 'PROPCNTS'; expected one of BQML, CNTS, GML")
def units_unsupported(tmp):
    pet_with(tmp, Units="PROPCNTS")


@raises(r"tag Units \(0054,1001\) is missing or empty")
def units_missing(tmp):
    pet_with(tmp, Units=None)


@raises(r"tag Units \(0054,1001\) differs between slices \(BQML, GML\)")
def units_differ_between_slices(tmp):
    pet_with(tmp, slice_tags=[{"Units": "BQML" if k % 2 else "GML"} for k in range(12)], Units=None)


@raises(
    r"Units \(0054,1001\) is CNTS but the Philips private tags \(7053,1000\) .* and \(7053,1009\)"
)
def cnts_without_philips_factors(tmp):
    pet_with(tmp, Units="CNTS")


@raises(r"the images are not decay-corrected \(tag DecayCorrection \(0054,1102\) 'NONE'")
def decay_correction_none(tmp):
    pet_with(tmp, DecayCorrection="NONE", CorrectedImage=["ATTN"])


@raises(r"tag DecayCorrection \(0054,1102\) is missing or empty; expected START or ADMIN")
def decay_correction_missing(tmp):
    pet_with(tmp, DecayCorrection=None)


@raises(r"tag SeriesTime \(0008,0031\): expected a time HHMMSS")
def series_time_malformed(tmp):
    with warnings.catch_warnings():  # pydicom warns about the invalid TM it is asked to write
        warnings.simplefilter("ignore")
        pet_with(tmp, SeriesTime="10h00")


@raises(r"tag PatientWeight \(0010,1030\): expected a number, got 'seventy'")
def weight_not_a_number(tmp):
    write_pet(tmp / "pet")
    for f in (tmp / "pet").iterdir():
        ds = pydicom.dcmread(f)
        ds["PatientWeight"].VR = "LO"  # DS cannot hold text
        ds.PatientWeight = "seventy"
        ds.save_as(f)
    read_one_pet(tmp / "pet")


# --------------------------------------------------------------------------------------
# DICOM series: files and geometry
# --------------------------------------------------------------------------------------


def read_pet_pixels(folder: Path):
    (series,) = scan_dicom_folder(folder).series
    return read_series(series, rescale_required=True)


@raises(r"PET series .*: expected equally spaced slices \(5.000 mm apart\), got a gap of 10.000 mm")
def missing_slice(tmp):
    files = write_pet(tmp / "pet")
    files[5].unlink()
    read_pet_pixels(tmp / "pet")


@raises(
    r"2 or more slices share a position along the slice normal .*: a 4D \(dynamic or gated\) series"
)
def four_d_series(tmp):
    files = write_pet(tmp / "pet")
    ds = pydicom.dcmread(files[3])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp / "pet" / "frame2.dcm")
    read_pet_pixels(tmp / "pet")


@raises(r"tag ImageOrientationPatient \(0020,0037\) differs between slices \(1 of 12")
def orientation_differs_between_slices(tmp):
    files = write_pet(tmp / "pet")
    ds = pydicom.dcmread(files[4])
    ds.ImageOrientationPatient = ["0", "1", "0", "1", "0", "0"]
    ds.save_as(files[4])
    read_pet_pixels(tmp / "pet")


@raises(r"PET series .*: a single slice \(a 2D image\); expected a 3D stack")
def single_slice_2d(tmp):
    write_pet(tmp / "pet", values=activity()[:, :, :1])
    read_pet_pixels(tmp / "pet")


@raises(r"the slice positions drift .* sideways .* \(gantry tilt or a sheared stack\)")
def gantry_tilt(tmp):
    files = write_pet(tmp / "pet")
    for f in files:
        ds = pydicom.dcmread(f)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [f"{x:.3f}", f"{y + 0.2 * (z + 25):.3f}", f"{z:.3f}"]
        ds.save_as(f)
    read_pet_pixels(tmp / "pet")


@raises(r"file .* is a multi-frame image \(2 frames\); only one slice per file is supported")
def multi_frame(tmp):
    files = write_pet(tmp / "pet")
    ds = pydicom.dcmread(files[0])
    ds.NumberOfFrames = 2
    ds.save_as(files[0])
    read_pet_pixels(tmp / "pet")


@raises(r"file .*: tag ImagePositionPatient \(0020,0032\): expected 3 numbers, got nothing")
def position_missing(tmp):
    files = write_pet(tmp / "pet")
    ds = pydicom.dcmread(files[2])
    del ds.ImagePositionPatient
    ds.save_as(files[2])
    read_pet_pixels(tmp / "pet")


@raises(
    r"unreadable or incomplete DICOM file .*IM0000.dcm: tag SeriesInstanceUID \(0020,000E\) is "
    r"missing \(a truncated file\?\)"
)
def truncated_dicom_header(tmp):
    files = write_pet(tmp / "pet")
    (tmp / "pet" / "IM0000.dcm").write_bytes(files[0].read_bytes()[:400])
    scan_dicom_folder(tmp / "pet")


@raises(
    r"PET series .*: file .*: cannot read the pixel data \(transfer syntax 1.2.840.10008.1.2.1\)"
)
def truncated_pixel_data(tmp):
    files = write_pet(tmp / "pet")
    files[3].write_bytes(files[3].read_bytes()[:-100])
    read_pet_pixels(tmp / "pet")


def patient_folder(tmp: Path, pet=True, ct=True, **pet_kw):
    folder = tmp / "P1"
    if pet:
        write_pet(folder / "pet", **pet_kw)
    if ct:
        write_ct(folder / "ct")
    return folder


@raises(
    r"the folder holds DICOM files of 2 patients \(PatientID 'P1', 'P2'\); expected one patient"
)
def two_patients_in_one_folder(tmp):
    folder = patient_folder(tmp)
    write_ct(folder / "other", tags={"PatientID": "P2"})
    select_pet_ct(scan_dicom_folder(folder), "P1")


@raises(r"2 attenuation-corrected PET series found, expected one: PET series .*; keep the baseline")
def two_pet_series(tmp):
    folder = patient_folder(tmp)
    write_pet(folder / "pet2")
    select_pet_ct(scan_dicom_folder(folder), "P1")


@raises(r"patient 'P1' .*: no CT series \(Modality CT\) found; found series: PT x12")
def no_ct_series(tmp):
    select_pet_ct(scan_dicom_folder(patient_folder(tmp, ct=False)), "P1")


@raises(r"only non-attenuation-corrected PET found \(CorrectedImage without ATTN\)")
def only_nac_pet(tmp):
    folder = patient_folder(tmp, tags=pet_tags(CorrectedImage=["DECY"]))
    select_pet_ct(scan_dicom_folder(folder), "P1")


@raises(r"--input .*: holds DICOM files directly \(12, e.g. .*\); expected one folder per patient")
def dicom_without_patient_folders(tmp):
    write_pet(tmp / "in")
    discover(tmp / "in", "dicom")


# --------------------------------------------------------------------------------------
# NIfTI images and the checks of a case
# --------------------------------------------------------------------------------------


def load_nifti_patient(tmp: Path, **kw):
    write_nifti_patient(tmp / "in", "P1", **kw)
    (source,) = discover(tmp / "in", "nifti")
    loaded = load_patient(source)
    return prepare_case(loaded.pet, loaded.ct, loaded.organs, loaded.lesions)


@raises(
    r"PET: .*pet.nii.gz: expected finite voxel values, got 1 NaN/inf voxel\(s\), first at index "
    r"\(1, 2, 3\)"
)
def nifti_nan(tmp):
    pet = activity() / 3000
    pet[1, 2, 3] = np.nan
    load_nifti_patient(tmp, pet=pet)


@raises(r"PET: .*pet.nii.gz: expected a 3D image, got shape \(16, 16\)")
def nifti_2d(tmp):
    write_nifti_patient(tmp / "in", "P1")
    nib.save(
        nib.Nifti1Image(np.ones((16, 16), np.float32), np.eye(4)), tmp / "in" / "P1" / "pet.nii.gz"
    )
    load_patient(discover(tmp / "in", "nifti")[0])


@raises(r"CT: .*ct.nii.gz: expected a 3D image, got shape \(34, 34, 26, 2\)")
def nifti_4d(tmp):
    write_nifti_patient(tmp / "in", "P1")
    nib.save(
        nib.Nifti1Image(np.zeros((34, 34, 26, 2), np.int16), CT_AFFINE),
        tmp / "in" / "P1" / "ct.nii.gz",
    )
    load_patient(discover(tmp / "in", "nifti")[0])


@raises(r"PET: .*pet.nii.gz: unreadable image \(expected a NIfTI file\)")
def nifti_unreadable(tmp):
    write_nifti_patient(tmp / "in", "P1")
    (tmp / "in" / "P1" / "pet.nii.gz").write_bytes(b"\x1f\x8b" + b"not a gzip stream" * 10)
    load_patient(discover(tmp / "in", "nifti")[0])


@raises(
    r"pet.nii.gz: PET maximum 3.8e\+04 is not an SUV .*looks like activity concentration \(Bq/ml\)"
)
def pet_in_bqml(tmp):
    load_nifti_patient(tmp, pet=activity())


@raises(r"ct.nii.gz: CT minimum 24 HU; expected air .*\(stored values without RescaleIntercept")
def ct_not_in_hu(tmp):
    from ingest_helpers import ct_volume

    load_nifti_patient(tmp, ct=ct_volume() + 1024)


@raises(r"CT .*ct.nii.gz: covers 0% of the PET's field of view .*: the two scans do not overlap")
def scans_do_not_overlap(tmp):
    load_nifti_patient(tmp, ct_affine=grid_affine((2.0, 2.0, 2.5), (32.0, 32.0, 900.0)))


@raises(r"CT .*: its axes are 30.0 degrees off the PET's")
def ct_rotated(tmp):
    t = np.radians(30)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    aff = CT_AFFINE.copy()
    aff[:3, :3] = rot @ aff[:3, :3]
    load_nifti_patient(tmp, ct_affine=aff)


@raises(r"PET .*pet.nii.gz: expected orthogonal voxel axes, got axes .* degrees off orthogonal")
def sheared_grid(tmp):
    aff = PET_AFFINE.copy()
    aff[0, 2] = 1.0  # x moves with k: a sheared (tilted) stack
    load_nifti_patient(tmp, pet_affine=aff)


@raises(r"PET .*: expected voxel sizes of 0.05-50 mm, got \[0.004, 0.004, 0.005\] mm")
def voxel_size_in_metres(tmp):
    aff = grid_affine((0.004, 0.004, 0.005), (0.03, 0.03, -0.025))
    prepare_case(
        Image(activity() / 3000, aff, "pet.nii.gz"), Image(np.full(SHAPE, -1000.0), aff, "ct")
    )


@raises(
    r"lesion mask .*lesions.nii.gz: its grid \(shape \(8, 8, 6\)\) is neither the PET's \(shape "
    r"\(16, 16, 12\)\) nor the CT's"
)
def lesion_mask_on_another_grid(tmp):
    folder = write_nifti_patient(tmp / "in", "P1")
    save_nifti(
        folder / "lesions.nii.gz",
        np.ones((8, 8, 6), np.uint8),
        grid_affine((8.0, 8.0, 10.0)),
        np.uint8,
    )
    (source,) = discover(tmp / "in", "nifti")
    loaded = load_patient(source)
    prepare_case(loaded.pet, loaded.ct, loaded.organs, loaded.lesions)


@raises(r"lesion mask .*: expected integer labels, got fractional values")
def lesion_mask_fractional(tmp):
    folder = write_nifti_patient(tmp / "in", "P1")
    save_nifti(folder / "lesions.nii.gz", lesion_mask() * 0.5, PET_AFFINE, np.float32)
    (source,) = discover(tmp / "in", "nifti")
    loaded = load_patient(source)
    prepare_case(loaded.pet, loaded.ct, loaded.organs, loaded.lesions)


# --------------------------------------------------------------------------------------
# Organ masks that are not TotalSegmentator's 'total' map
# --------------------------------------------------------------------------------------


@raises(
    r"organ mask .*organs.nii.gz: ids \[130\] above 117: not TotalSegmentator's 'total' label map"
)
def organ_ids_above_117(tmp):
    m = liver_mask()
    m[0, 0, 0] = 130
    save_nifti(tmp / "organs.nii.gz", m, PET_AFFINE, np.uint8)
    read_organs(tmp / "organs.nii.gz")


@raises(
    r"mask file names 'kidney_rigth' \(did you mean 'kidney_right'\?\) are not TotalSegmentator "
    r"'total' class names"
)
def organ_folder_unknown_class(tmp):
    for name in ("liver", "kidney_rigth"):
        save_nifti(tmp / "organs" / f"{name}.nii.gz", liver_mask() > 0, PET_AFFINE, np.uint8)
    read_organs(tmp / "organs")


@raises(r"class names 'tumour' in the file's label table are not TotalSegmentator 'total' classes")
def organ_label_table_unknown_name(tmp):
    img = nib.Nifti1Image(liver_mask(), PET_AFFINE)
    xml = '<?xml version="1.0"?><CaretExtension><VolumeInformation><LabelTable>'
    xml += (
        '<Label Key="5"><![CDATA[tumour]]></Label><Label Key="2"><![CDATA[kidney_right]]></Label>'
    )
    xml += "</LabelTable></VolumeInformation></CaretExtension>"
    img.header.extensions.append(nib.nifti1.Nifti1Extension(0, xml.encode()))
    nib.save(img, tmp / "organs.nii.gz")
    read_organs(tmp / "organs.nii.gz")


@raises(r"organ mask .*liver.nii.gz: expected a binary mask \(0/1\), got values \[0, 1, 5\]")
def organ_folder_not_binary(tmp):
    m = (liver_mask() > 0).astype(np.uint8)
    m[0, 0, 0] = 5
    save_nifti(tmp / "organs" / "liver.nii.gz", m, PET_AFFINE, np.uint8)
    read_organs(tmp / "organs")


# --------------------------------------------------------------------------------------
# Clinical tables and column maps
# --------------------------------------------------------------------------------------


def table(tmp: Path, df, name="clinical.csv"):
    path = tmp / name
    df.to_csv(path, index=False)
    return path


@raises(
    r"line 3 \(patient 'A'\), column 'patient_id': expected unique ids, got 'A' again \(first on "
    r"line 2\)"
)
def duplicate_ids(tmp):
    read_clinical_table(table(tmp, clinical_frame(["A", "A", "B"])))


@raises(
    r"line 2 \(patient 'A'\), column 'pfs_months': expected a time > 0 months, got 0(.|\n)*line 3 "
    r"\(patient 'B'\), column 'os_months': expected os_months >= pfs_months"
)
def bad_times(tmp):
    df = clinical_frame(["A", "B"])
    df.loc[0, "pfs_months"] = 0
    df.loc[1, "os_months"] = 5
    read_clinical_table(table(tmp, df))


@raises(r"column 'os_event': expected 0 \(censored\) or 1 \(event\), got 2")
def event_not_binary(tmp):
    df = clinical_frame(["A", "B"])
    df.loc[1, "os_event"] = 2
    read_clinical_table(table(tmp, df))


@raises(
    r"clinical table .*clinical.csv: 1 problem\(s\):\n  - missing column\(s\) "
    r"\['ecog'\](.|\n)*hint: map the table's column names with --column-map"
)
def missing_column(tmp):
    read_clinical_table(table(tmp, clinical_frame(["A"]).drop(columns="ecog")))


@raises(
    r"column 'Age \(y\)' \(mapped to 'age' by the column map .*map.yaml\) not found; the table has"
)
def column_map_names_absent_column(tmp):
    (tmp / "map.yaml").write_text("columns:\n  age: 'Age (y)'\n")
    read_clinical_table(table(tmp, clinical_frame(["A"])), tmp / "map.yaml")


@raises(r"values: 'pfs_event': key True is a YAML boolean; write the table's value in quotes")
def column_map_yaml_boolean(tmp):
    (tmp / "map.yaml").write_text("values:\n  pfs_event: {yes: 1, no: 0}\n")
    load_column_map(tmp / "map.yaml")


@raises(
    r"column map .*map.yaml: 2 problem\(s\):\n  - unknown key\(s\) \['colums'\](.|\n)*time_unit: "
    r"expected one of"
)
def column_map_typos(tmp):
    (tmp / "map.yaml").write_text("colums: {}\ntime_unit: fortnights\n")
    load_column_map(tmp / "map.yaml")


@raises(
    r"clinical table .*clinical.xls: expected a table ending in .csv, .tsv, .xlsx, .xlsm, got "
    r"'.xls' \(save it as .xlsx\)"
)
def table_old_excel(tmp):
    (tmp / "clinical.xls").write_bytes(b"\xd0\xcf\x11\xe0")
    read_clinical_table(tmp / "clinical.xls")


@raises(r"clinical table .*clinical.xlsx: unreadable table")
def table_unreadable_excel(tmp):
    (tmp / "clinical.xlsx").write_bytes(b"PK\x03\x04 not really a zip")
    read_clinical_table(tmp / "clinical.xlsx")


# --------------------------------------------------------------------------------------
# Layouts and the run (one patient's problem is reported, the others go on)
# --------------------------------------------------------------------------------------


def run_nifti(tmp: Path, table_ids, make) -> str:
    inp = tmp / "in"
    make(inp)
    write_clinical_csv(tmp / "clinical.csv", table_ids)
    s = ingest_cohort(
        IngestRequest(inp, "nifti", tmp / "clinical.csv", tmp / "out"), progress=False
    )
    assert not s.ok or "warnings" in s.to_text()
    return s.to_text()


@summary(r"  P2: images found \(.*P2\) but no row with patient_id 'P2' in the clinical table")
def image_without_table_row(tmp):
    def make(inp):
        write_nifti_patient(inp, "P1")
        write_nifti_patient(inp, "P2")

    return run_nifti(tmp, ["P1"], make)


@summary(r"  P3: in the clinical table but no images found under .*in \(layout nifti")
def table_row_without_images(tmp):
    return run_nifti(tmp, ["P1", "P3"], lambda inp: write_nifti_patient(inp, "P1"))


@summary(r"warnings by patient:\n  P1: lesion mask .*lesions.nii.gz is empty \(no lesion voxel\)")
def empty_lesion_mask(tmp):
    return run_nifti(
        tmp, ["P1"], lambda inp: write_nifti_patient(inp, "P1", lesions=np.zeros(SHAPE, np.uint8))
    )


@summary(
    r"  P1: mean liver SUV 3.62 is outside the expected 1.3-3.0 for FDG at about 60 min: check "
    r"the patient's weight"
)
def liver_suv_implausible(tmp):
    return run_nifti(
        tmp,
        ["P1"],
        lambda inp: write_nifti_patient(inp, "P1", pet=activity() / 1500, organs=liver_mask()),
    )


@summary(r"  P1: .*P1: missing ct.nii.gz \(the nifti layout needs both\)")
def nifti_missing_ct(tmp):
    def make(inp):
        write_nifti_patient(inp, "P1")
        (inp / "P1" / "ct.nii.gz").unlink()
        write_nifti_patient(inp, "P2")

    return run_nifti(tmp, ["P1", "P2"], make)


@summary(r"  bad_name\.: folder name 'bad_name\.' is not a valid patient id")
def invalid_patient_folder_name(tmp):
    def make(inp):
        write_nifti_patient(inp, "P1")
        write_nifti_patient(inp, "bad_name.")

    return run_nifti(tmp, ["P1"], make)


@summary(r"  P1: .*P1: 2 studies \(s1, s2\); expected one baseline study per patient")
def autopet_two_studies(tmp):
    inp = tmp / "in"
    for study in ("s1", "s2"):
        save_nifti(inp / "P1" / study / "SUV.nii.gz", activity() / 3000, PET_AFFINE, np.float32)
    write_clinical_csv(tmp / "clinical.csv", ["P1"])
    return ingest_cohort(
        IngestRequest(inp, "autopet", tmp / "clinical.csv", tmp / "out"), progress=False
    ).to_text()


@summary(r"  P1: .*imagesTr: missing P1_0001 \(CT is 0000, PET is 0001\)")
def nnunet_missing_pet_channel(tmp):
    inp = tmp / "in"
    save_nifti(inp / "imagesTr" / "P1_0000.nii.gz", np.full(SHAPE, -1000.0), PET_AFFINE, np.float32)
    write_clinical_csv(tmp / "clinical.csv", ["P1"])
    return ingest_cohort(
        IngestRequest(inp, "nnunet", tmp / "clinical.csv", tmp / "out"), progress=False
    ).to_text()


@summary(r"  P1: PET series .*: tag PatientWeight \(0010,1030\) is 0 kg")
def dicom_patient_weight_zero_in_run(tmp):
    inp = tmp / "in"
    write_pet(inp / "P1" / "pet", tags=pet_tags(PatientWeight="0"))
    write_ct(inp / "P1" / "ct")
    write_clinical_csv(tmp / "clinical.csv", ["P1"])
    return ingest_cohort(
        IngestRequest(inp, "dicom", tmp / "clinical.csv", tmp / "out"), progress=False
    ).to_text()


@raises(r"--out .*: the folder is not empty and holds no ingest.json; refusing to write a cohort")
def output_folder_not_empty(tmp):
    write_nifti_patient(tmp / "in", "P1")
    write_clinical_csv(tmp / "clinical.csv", ["P1"])
    (tmp / "out").mkdir()
    (tmp / "out" / "notes.txt").write_text("mine")
    ingest_cohort(
        IngestRequest(tmp / "in", "nifti", tmp / "clinical.csv", tmp / "out"), progress=False
    )


@raises(r"--out .*: holds a cohort ingested with other settings \(sul: False")
def output_folder_of_another_run(tmp):
    write_nifti_patient(tmp / "in", "P1")
    write_clinical_csv(tmp / "clinical.csv", ["P1"], weight_kg=[70], height_cm=[175])
    req = IngestRequest(tmp / "in", "nifti", tmp / "clinical.csv", tmp / "out")
    ingest_cohort(req, progress=False)
    ingest_cohort(
        IngestRequest(tmp / "in", "nifti", tmp / "clinical.csv", tmp / "out", sul=True),
        progress=False,
    )


# --------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------


def test_catalogue_is_large_enough():
    assert len(RAISES) + len(SUMMARY) >= 20


@pytest.mark.parametrize("name", sorted(RAISES))
def test_malformed_input_raises_a_named_error(name, tmp_path):
    build, match = RAISES[name]
    with pytest.raises(LampError, match=match):
        build(tmp_path)


@pytest.mark.parametrize("name", sorted(SUMMARY))
def test_malformed_patient_is_named_in_the_summary(name, tmp_path):
    build, match = SUMMARY[name]
    text = build(tmp_path)
    assert re.search(match, text), text


def test_a_failing_patient_does_not_stop_the_others(tmp_path):
    inp = tmp_path / "in"
    write_nifti_patient(inp, "P1")
    write_nifti_patient(inp, "P2", pet=activity())  # Bq/ml: fails
    write_clinical_csv(tmp_path / "clinical.csv", ["P1", "P2"])
    s = ingest_cohort(
        IngestRequest(inp, "nifti", tmp_path / "clinical.csv", tmp_path / "out"), progress=False
    )
    assert [r.status for r in s.results] == ["ready", "failed"]
    assert not s.ok
    assert (tmp_path / "out" / "cases" / "P1" / "pet.nii.gz").is_file()
    assert not (tmp_path / "out" / "cases" / "P2").exists()
    kept = read_clinical_table(tmp_path / "out" / "clinical.csv")
    assert kept["patient_id"].tolist() == ["P1"]
