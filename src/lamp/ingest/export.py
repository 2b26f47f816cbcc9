"""Write a cohort back out as DICOM PET/CT series or in the autoPET layout.

For trying ``lamp ingest`` as a new user would, and for tests: a synthetic cohort
(``lamp synth``) exported here and ingested again must give back its images within
resampling tolerance and the same table.

DICOM series are written with pydicom as single-frame files, uncompressed (explicit VR
little endian unless asked otherwise), one file per slice, named by a hash of the
instance UID so that file order says nothing about slice order. PET pixel values are
stored as int16 with a per-slice ``RescaleSlope`` (as GE does), CT as unsigned stored
values with ``RescaleIntercept -1024``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from lamp.cohort import case_path, read_clinical
from lamp.images import load_nifti, resample_to_grid, save_nifti
from lamp.ingest.case import CT_FILL_HU
from lamp.ingest.common import IngestError, axis_spacing
from lamp.ingest.suv import F18_HALF_LIFE_S, decay_factor

__all__ = [
    "PET_IMAGE_STORAGE",
    "CT_IMAGE_STORAGE",
    "PrivateTag",
    "PetAcquisition",
    "write_dicom_series",
    "export_patient_dicom",
    "export_cohort",
]

#: SOP Class UIDs (DICOM PS3.4 B.5).
PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_INT16_MAX = 32767


@dataclass(frozen=True)
class PrivateTag:
    """A private element: ``group``, the private creator, element offset, VR and value.

    E.g. Philips' SUV scale factor (7053,1000):
    ``PrivateTag(0x7053, "Philips PET Private Group", 0x00, "DS", "0.000123")``.
    """

    group: int
    creator: str
    offset: int
    vr: str
    value: Any


def _ds(x: float) -> str:
    """A DS value (at most 16 characters) holding ``x`` as precisely as fits."""
    return format_number_as_ds(float(x))


def _to_dataset(value: Mapping[str, Any]) -> Dataset:
    item = Dataset()
    for kw, v in value.items():
        _set(item, kw, v)
    return item


def _set(ds: Dataset, keyword: str, value: Any) -> None:
    if isinstance(value, list | tuple) and value and isinstance(value[0], Mapping):
        setattr(ds, keyword, DicomSequence([_to_dataset(v) for v in value]))
    elif value is None:
        if keyword in ds:
            delattr(ds, keyword)
    else:
        setattr(ds, keyword, value)


def write_dicom_series(
    folder: str | Path,
    values: np.ndarray,
    affine: np.ndarray,
    *,
    modality: str,
    tags: Mapping[str, Any] | None = None,
    slice_tags: Sequence[Mapping[str, Any]] | None = None,
    private: Sequence[PrivateTag] = (),
    rescale_intercept: float | None = None,
    implicit_vr: bool = False,
    uid_seed: str = "lamp",
) -> list[Path]:
    """Write a 3D image as a DICOM series, one file per slice.

    Parameters
    ----------
    folder : str or Path
        Output folder (created).
    values : ndarray, shape (i, j, k)
        Voxel values in the series' output units (PET: Bq/ml, counts or SUV as ``Units``
        says; CT: HU), NIfTI storage order.
    affine : ndarray, shape (4, 4)
        Voxel -> RAS+ mm. Its third axis must be perpendicular to the first two (DICOM
        slices are planes); any orientation otherwise.
    modality : str
        ``"PT"`` or ``"CT"``.
    tags : mapping, optional
        Keyword -> value set on every slice (overriding the defaults); a list of
        mappings becomes a sequence; None removes the element.
    slice_tags : sequence of mapping, optional
        Per-slice keyword -> value, one mapping per slice ``k`` (e.g. AcquisitionTime).
    private : sequence of PrivateTag
        Private elements set on every slice.
    rescale_intercept : float, optional
        PET: stored = (value - intercept) / slope with a per-slice slope that uses the
        int16 range (default intercept 0). CT: slope 1 and this intercept (default -1024).
    implicit_vr : bool
        Write implicit VR little endian (private elements then carry no VR).
    uid_seed : str
        Makes the UIDs reproducible: the same seed and inputs give the same files.

    Returns
    -------
    list of Path
        The files written, in slice order ``k`` (their names are not in that order).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vol = np.asarray(values, dtype=np.float64)
    if vol.ndim != 3:
        raise IngestError(f"write_dicom_series: expected a 3D array, got shape {vol.shape}")
    if modality not in ("PT", "CT"):
        raise IngestError(f"write_dicom_series: modality must be PT or CT, got {modality!r}")
    if slice_tags is not None and len(slice_tags) != vol.shape[2]:
        raise IngestError(
            f"write_dicom_series: expected {vol.shape[2]} slice_tags (one per slice), "
            f"got {len(slice_tags)}"
        )
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
    spacing = axis_spacing(lps)
    row_dir, col_dir = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    normal = np.cross(row_dir, col_dir)
    if abs(abs(normal @ (lps[:3, 2] / spacing[2])) - 1.0) > 1e-6:
        raise IngestError(
            "write_dicom_series: the affine's third axis must be perpendicular to the slices"
        )

    def uid(*parts: object) -> str:
        return generate_uid(entropy_srcs=[uid_seed, *map(str, parts)])

    study_uid, series_uid, frame_uid = uid("study"), uid("series", modality), uid("frame")
    sop_class = PET_IMAGE_STORAGE if modality == "PT" else CT_IMAGE_STORAGE
    base: dict[str, Any] = {
        "PatientID": "LAMP0001",
        "PatientName": "LAMP^Synthetic",
        "StudyInstanceUID": study_uid,
        "SeriesInstanceUID": series_uid,
        "FrameOfReferenceUID": frame_uid,
        "Modality": modality,
        "SeriesNumber": 1 if modality == "CT" else 2,
        "SeriesDescription": "PET WB AC" if modality == "PT" else "CT WB",
        "ImageOrientationPatient": [_ds(v) for v in (*row_dir, *col_dir)],
        "PixelSpacing": [_ds(spacing[1]), _ds(spacing[0])],
        "SliceThickness": _ds(spacing[2]),
        "Rows": vol.shape[1],
        "Columns": vol.shape[0],
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "BitsAllocated": 16,
        "BitsStored": 16,
        "HighBit": 15,
    }
    if modality == "CT":
        base.update({"ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"], "RescaleType": "HU"})
    else:
        base.update({"ImageType": ["ORIGINAL", "PRIMARY"]})
    base.update(dict(tags or {}))
    paths = []
    for k in range(vol.shape[2]):
        plane = vol[:, :, k].T  # (rows j, columns i)
        if modality == "PT":
            intercept = 0.0 if rescale_intercept is None else float(rescale_intercept)
            peak = float(np.max(np.abs(plane - intercept)))
            slope = peak / _INT16_MAX if peak > 0 else 1.0
            # the DS string of the slope is what a reader gets: quantise with that value
            slope = float(_ds(slope))
            stored = np.clip(np.rint((plane - intercept) / slope), -_INT16_MAX - 1, _INT16_MAX)
            pixels, signed = stored.astype(np.int16), 1
        else:
            intercept = -1024.0 if rescale_intercept is None else float(rescale_intercept)
            slope = 1.0
            stored = np.clip(np.rint(plane - intercept), 0, 65535)
            pixels, signed = stored.astype(np.uint16), 0
        ds = Dataset()
        sop_uid = uid("sop", modality, k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit_vr else ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        for kw, v in base.items():
            _set(ds, kw, v)
        position = lps[:3, 3] + k * lps[:3, 2]
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.InstanceNumber = vol.shape[2] - k  # reversed on purpose: readers must not trust it
        ds.PixelRepresentation = signed
        ds.RescaleSlope = _ds(slope)
        ds.RescaleIntercept = _ds(intercept)
        for kw, v in (slice_tags[k] if slice_tags is not None else {}).items():
            _set(ds, kw, v)
        for p in private:
            block = ds.private_block(p.group, p.creator, create=True)
            block.add_new(p.offset, p.vr, p.value)
        ds.PixelData = pixels.tobytes()
        name = hashlib.sha1(sop_uid.encode()).hexdigest()[:16] + ".dcm"
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@dataclass(frozen=True)
class PetAcquisition:
    """The scan a synthetic PET is written as (BQML, decay-corrected to the scan start).

    Attributes
    ----------
    injected_dose_bq : float
        RadionuclideTotalDose, Bq.
    half_life_s : float
        RadionuclideHalfLife, s (F-18).
    injection : datetime
        RadiopharmaceuticalStartDateTime.
    scan_start : datetime
        SeriesDate/SeriesTime; later bed positions get later AcquisitionTimes.
    seconds_per_bed : float
        AcquisitionTime step between bed positions.
    slices_per_bed : int
    """

    injected_dose_bq: float = 3.0e8
    half_life_s: float = F18_HALF_LIFE_S
    injection: datetime = datetime(2024, 3, 1, 23, 10, 0)
    scan_start: datetime = datetime(2024, 3, 2, 0, 12, 30)
    seconds_per_bed: float = 120.0
    slices_per_bed: int = 20


def _da(t: datetime) -> str:
    return t.strftime("%Y%m%d")


def _tm(t: datetime) -> str:
    return t.strftime("%H%M%S.%f")


def export_patient_dicom(
    cohort: str | Path,
    patient_id: str,
    out: str | Path,
    weight_kg: float,
    height_m: float | None = None,
    sex: str | None = None,
    scan: PetAcquisition | None = None,
) -> Path:
    """Write one case of a cohort as DICOM: ``out/<id>/{CT,PET}/*.dcm`` plus its masks.

    The PET (SUVbw) becomes activity concentration (Bq/ml, ``Units BQML``,
    ``DecayCorrection START``): ``C = SUV * D * 2**(-t / T) / (W * 1000)`` with the dose,
    half-life, injection and scan start of ``scan`` (by default injected the day before
    the scan, across midnight). ``organs.nii.gz`` and ``lesions.nii.gz`` are copied into
    the patient folder, as the dicom layout reads them.

    Returns
    -------
    Path
        The patient folder.
    """
    scan = scan or PetAcquisition()
    pet, pet_aff = load_nifti(case_path(cohort, patient_id, "pet"))
    ct, ct_aff = load_nifti(case_path(cohort, patient_id, "ct"))
    folder = Path(out) / patient_id
    seconds = (scan.scan_start - scan.injection).total_seconds()
    decayed = scan.injected_dose_bq * decay_factor(seconds, scan.half_life_s)
    bqml = pet.astype(np.float64) * decayed / (weight_kg * 1000.0)
    patient = {
        "PatientID": patient_id,
        "PatientName": f"LAMP^{patient_id}",
        "PatientWeight": _ds(weight_kg),
        "PatientSize": _ds(height_m) if height_m else None,
        "PatientSex": sex,
        "StudyDate": _da(scan.scan_start),
        "StudyInstanceUID": generate_uid(entropy_srcs=[patient_id, "study"]),
        "FrameOfReferenceUID": generate_uid(entropy_srcs=[patient_id, "frame"]),
        "SeriesDate": _da(scan.scan_start),
        "SeriesTime": _tm(scan.scan_start),
    }
    write_dicom_series(
        folder / "CT", ct, ct_aff, modality="CT", tags=patient, uid_seed=f"{patient_id}-ct"
    )
    n = pet.shape[2]
    beds = [
        scan.scan_start + timedelta(seconds=scan.seconds_per_bed * (k // scan.slices_per_bed))
        for k in range(n)
    ]
    pet_tags = {
        **patient,
        "Units": "BQML",
        "DecayCorrection": "START",
        "CorrectedImage": ["ATTN", "DECY", "SCAT", "RAN"],
        "RadiopharmaceuticalInformationSequence": [
            {
                "Radiopharmaceutical": "Fluorodeoxyglucose",
                "RadionuclideTotalDose": _ds(scan.injected_dose_bq),
                "RadionuclideHalfLife": _ds(scan.half_life_s),
                "RadiopharmaceuticalStartDateTime": scan.injection.strftime("%Y%m%d%H%M%S.%f"),
                "RadiopharmaceuticalStartTime": _tm(scan.injection),
            }
        ],
    }
    write_dicom_series(
        folder / "PET",
        bqml,
        pet_aff,
        modality="PT",
        tags=pet_tags,
        slice_tags=[{"AcquisitionDate": _da(t), "AcquisitionTime": _tm(t)} for t in beds],
        uid_seed=f"{patient_id}-pet",
    )
    for kind in ("organs", "lesions"):
        src = case_path(cohort, patient_id, kind)
        if src.is_file():
            data, aff = load_nifti(src)
            save_nifti(folder / f"{kind}.nii.gz", data, aff, data.dtype)
    return folder


def export_cohort(
    cohort: str | Path,
    out: str | Path,
    layout: str,
    patient_ids: Sequence[str] | None = None,
) -> Path:
    """Write a cohort's images in an input layout of ``lamp ingest``.

    Parameters
    ----------
    cohort : str or Path
        A cohort folder (e.g. from ``lamp synth``).
    out : str or Path
        The folder to write (the ``--input`` of a later ``lamp ingest``).
    layout : str
        ``"dicom"`` (`export_patient_dicom`, weight/height/sex from ``clinical.csv``'s
        ``weight_kg``/``height_cm``/``sex``, 70 kg where absent) or ``"autopet"``
        (``out/<id>/study/{CTres,SUV,SEG}.nii.gz``: the CT resampled onto the PET grid,
        the PET, the binary lesion mask).
    patient_ids : sequence of str, optional
        Default: every patient of ``clinical.csv``.

    Returns
    -------
    Path
        ``out``.
    """
    cohort, out = Path(cohort), Path(out)
    table = read_clinical(cohort / "clinical.csv")
    ids = list(patient_ids) if patient_ids is not None else table["patient_id"].tolist()
    rows = table.set_index("patient_id")
    if layout not in ("dicom", "autopet"):
        raise IngestError(f"export_cohort: layout must be dicom or autopet, got {layout!r}")
    for pid in ids:
        if layout == "dicom":
            row = rows.loc[pid]
            weight = float(row["weight_kg"]) if "weight_kg" in rows.columns else 70.0
            height = float(row["height_cm"]) / 100.0 if "height_cm" in rows.columns else None
            export_patient_dicom(cohort, pid, out, weight, height, str(row["sex"]))
            continue
        study = out / pid / "study"
        pet, pet_aff = load_nifti(case_path(cohort, pid, "pet"))
        ct, ct_aff = load_nifti(case_path(cohort, pid, "ct"))
        ct_res = resample_to_grid(
            ct.astype(np.float32), ct_aff, pet.shape, pet_aff, order=1, fill=CT_FILL_HU
        )
        save_nifti(study / "CTres.nii.gz", ct_res, pet_aff, np.float32)
        save_nifti(study / "SUV.nii.gz", pet, pet_aff, np.float32)
        les_path = case_path(cohort, pid, "lesions")
        if les_path.is_file():
            les, les_aff = load_nifti(les_path)
            save_nifti(study / "SEG.nii.gz", les > 0, les_aff, np.uint8)
    return out
