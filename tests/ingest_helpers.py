"""Builders shared by the ingest tests: tiny volumes, PET/CT DICOM series, NIfTI patients.

Every volume is tiny (16 x 16 x 12 voxels) and written to a pytest ``tmp_path``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lamp.anatomy import TOTAL_IDS
from lamp.images import save_nifti
from lamp.ingest.export import PrivateTag, write_dicom_series

SHAPE = (16, 16, 12)
PET_SPACING = (4.0, 4.0, 5.0)
CT_SPACING = (2.0, 2.0, 2.5)
# DICOM-derived NIfTI orientation: i to the patient's left (-x), j posterior (-y), k up
SIGNS = (-1.0, -1.0, 1.0)

WEIGHT_KG = 70.0
DOSE_BQ = 370e6
F18_S = 6586.2


def grid_affine(spacing=PET_SPACING, origin=(30.0, 30.0, -25.0), signs=SIGNS) -> np.ndarray:
    """RAS+ affine of an axis-aligned grid."""
    a = np.eye(4)
    a[:3, :3] = np.diag(np.asarray(signs) * np.asarray(spacing))
    a[:3, 3] = origin
    return a


PET_AFFINE = grid_affine()
# the CT: finer voxels, covering the PET's field of view and a little more
CT_SHAPE = (34, 34, 26)
CT_AFFINE = grid_affine(CT_SPACING, origin=(32.0, 32.0, -27.5))


# the hot spot (a lesion) lies outside the liver and the spleen
HOT = (slice(10, 13), slice(11, 14), slice(4, 7))


def activity(shape=SHAPE) -> np.ndarray:
    """A known activity concentration (Bq/ml): a ramp that differs in every voxel and slice
    (so that a wrong slice order or per-slice slope shows), plus a hot spot."""
    i, j, k = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    a = 4000.0 + 37.0 * i + 53.0 * j + 211.0 * k
    a[HOT] = 38000.0
    return a


def liver_mask(shape=SHAPE) -> np.ndarray:
    """'total' ids: a liver block and a spleen block."""
    m = np.zeros(shape, dtype=np.uint8)
    m[2:9, 2:10, 2:8] = TOTAL_IDS["liver"]
    m[10:14, 2:6, 3:7] = TOTAL_IDS["spleen"]
    return m


def ct_volume(shape=CT_SHAPE) -> np.ndarray:
    """HU: air around a water body with a bone block."""
    hu = np.full(shape, -1000.0)
    hu[3:-3, 3:-3, :] = 20.0
    hu[12:20, 12:20, 5:20] = 700.0
    return hu


def rp_item(**over: Any) -> dict[str, Any]:
    """A RadiopharmaceuticalInformationSequence item: FDG, 370 MBq at 09:00 on 2024-01-05."""
    item = {
        "Radiopharmaceutical": "Fluorodeoxyglucose",
        "RadionuclideTotalDose": "370000000",
        "RadionuclideHalfLife": "6586.2",
        "RadiopharmaceuticalStartDateTime": "20240105090000.000000",
        "RadiopharmaceuticalStartTime": "090000.000000",
        "RadionuclideCodeSequence": [
            {"CodeValue": "C-111A1", "CodingSchemeDesignator": "SRT", "CodeMeaning": "^18^Fluorine"}
        ],
    }
    item.update(over)
    return {k: v for k, v in item.items() if v is not None}


def pet_tags(rp: Mapping[str, Any] | None = None, **over: Any) -> dict[str, Any]:
    """PET header: BQML, START, weight 70 kg, series at 10:00 (one hour after injection)."""
    tags = {
        "PatientID": "P1",
        "PatientWeight": "70",
        "PatientSize": "1.8",
        "PatientSex": "M",
        "Units": "BQML",
        "DecayCorrection": "START",
        "CorrectedImage": ["ATTN", "DECY", "SCAT"],
        "SeriesDate": "20240105",
        "SeriesTime": "100000",
        "AcquisitionDate": "20240105",
        "AcquisitionTime": "100000",
        "RadiopharmaceuticalInformationSequence": [rp_item(**dict(rp or {}))],
    }
    tags.update(over)
    return tags


def write_pet(
    folder: Path,
    values: np.ndarray | None = None,
    affine: np.ndarray = PET_AFFINE,
    tags: Mapping[str, Any] | None = None,
    slice_tags: Sequence[Mapping[str, Any]] | None = None,
    private: Sequence[PrivateTag] = (),
    **kw: Any,
) -> list[Path]:
    """A PET series of ``values`` (default `activity`) with `pet_tags` (or ``tags``)."""
    return write_dicom_series(
        folder,
        activity() if values is None else values,
        affine,
        modality="PT",
        tags=pet_tags() if tags is None else tags,
        slice_tags=slice_tags,
        private=private,
        uid_seed=str(folder),
        **kw,
    )


def write_ct(folder: Path, values=None, affine=CT_AFFINE, tags=None, **kw: Any) -> list[Path]:
    """A CT series (HU) of the same patient and frame as `write_pet`'s default."""
    return write_dicom_series(
        folder,
        ct_volume() if values is None else values,
        affine,
        modality="CT",
        tags={"PatientID": "P1", **(tags or {})},
        uid_seed=str(folder),
        **kw,
    )


def suv_expected(act: np.ndarray, factor: float) -> np.ndarray:
    return act * factor


def clinical_frame(ids: Sequence[str], **extra: Sequence[Any]) -> pd.DataFrame:
    """A valid clinical table for ``ids`` (outcomes for all)."""
    n = len(ids)
    df = pd.DataFrame(
        {
            "patient_id": list(ids),
            "age": [60 + i for i in range(n)],
            "sex": ["M" if i % 2 == 0 else "F" for i in range(n)],
            "ecog": [1] * n,
            "ldh_ratio": [1.2] * n,
            "ann_arbor": [3] * n,
            "extranodal_sites": [1] * n,
            "ipi": [2] * n,
            "pfs_months": [12.0 + i for i in range(n)],
            "pfs_event": [i % 2 for i in range(n)],
            "os_months": [20.0 + i for i in range(n)],
            "os_event": [0] * n,
        }
    )
    for k, v in extra.items():
        df[k] = list(v)
    return df


def write_clinical_csv(path: Path, ids: Sequence[str], **extra: Sequence[Any]) -> Path:
    clinical_frame(ids, **extra).to_csv(path, index=False)
    return path


def write_nifti_patient(
    root: Path,
    pid: str,
    pet: np.ndarray | None = None,
    ct: np.ndarray | None = None,
    organs: np.ndarray | None = None,
    lesions: np.ndarray | None = None,
    pet_affine: np.ndarray = PET_AFFINE,
    ct_affine: np.ndarray = CT_AFFINE,
) -> Path:
    """A patient of the nifti layout: SUV = activity / 3000 (liver ~1.8, hot spot 12.7)."""
    folder = root / pid
    suv = activity() / 3000.0 if pet is None else pet
    save_nifti(folder / "pet.nii.gz", suv, pet_affine, np.float32)
    save_nifti(folder / "ct.nii.gz", ct_volume() if ct is None else ct, ct_affine, np.int16)
    if organs is not None:
        save_nifti(folder / "organs.nii.gz", organs, pet_affine, np.uint8)
    if lesions is not None:
        save_nifti(folder / "lesions.nii.gz", lesions, pet_affine, np.uint8)
    return folder


def lesion_mask(shape=SHAPE) -> np.ndarray:
    """Binary: two separate lesions (the hot spot and another block)."""
    m = np.zeros(shape, dtype=np.uint8)
    m[HOT] = 1
    m[13:15, 2:4, 9:11] = 1
    return m
