"""Export a cohort as an nnU-Net v2 raw dataset (files only; nnunetv2 is not imported).

Layout written (nnU-Net v2 "dataset format")::

    OUT/Dataset{id:03d}_{name}/
      dataset.json             channel_names {"0": "CT", "1": "PET"}, labels, numTraining, ...
      splits_final.json        the cohort's folds.csv in nnU-Net's format (copied into
                               nnUNet_preprocessed/<dataset>/ by the segmentation stage)
      imagesTr/{pid}_0000.nii.gz   CT (HU, float32) resampled onto the PET grid
      imagesTr/{pid}_0001.nii.gz   PET (SUVbw, float32), the reference grid
      labelsTr/{pid}.nii.gz        lesion mask (lesions > 0), uint8, on the PET grid

The channel name ``"CT"`` selects nnU-Net's CT normalisation (clipping to the foreground
intensity percentiles, then z-scoring with foreground statistics); any other name, here
``"PET"``, selects per-image z-scoring.

The export is resumable per case: a case whose three outputs exist and are newer than
its inputs (pet, ct, lesions) is not rewritten. Each output file is written atomically.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lamp.cohort import (
    CohortError,
    case_path,
    check_patient_id,
    nnunet_splits,
    read_clinical,
    read_folds,
    write_text_atomic,
)
from lamp.images import load_nifti, overlap_fraction, resample_to_grid, same_grid, save_nifti

__all__ = [
    "CHANNEL_NAMES",
    "LABELS",
    "CT_FILL_HU",
    "MIN_CT_PET_OVERLAP",
    "dataset_folder_name",
    "export_nnunet_raw",
]

#: nnU-Net channel index -> name (``"CT"`` switches on nnU-Net's CT normalisation).
CHANNEL_NAMES: dict[str, str] = {"0": "CT", "1": "PET"}
#: nnU-Net label name -> value.
LABELS: dict[str, int] = {"background": 0, "lesion": 1}
#: CT value (HU) of PET voxels outside the CT field of view: air.
CT_FILL_HU = -1024.0
#: Minimum fraction of the PET field of view that the CT must cover.
MIN_CT_PET_OVERLAP = 0.5
_FILE_ENDING = ".nii.gz"
# Affines of the PET and of the lesion map must agree to this (mm) to be "the PET grid".
_GRID_ATOL_MM = 1e-3
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def dataset_folder_name(dataset_id: int, dataset_name: str) -> str:
    """nnU-Net's folder name ``Dataset{id:03d}_{name}``, after checking both parts."""
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int | np.integer):
        raise CohortError(f"nnU-Net dataset_id: expected an integer 1..999, got {dataset_id!r}")
    if not 1 <= int(dataset_id) <= 999:
        raise CohortError(f"nnU-Net dataset_id: expected an integer 1..999, got {dataset_id}")
    if not isinstance(dataset_name, str) or not _NAME_RE.match(dataset_name):
        raise CohortError(
            "nnU-Net dataset_name: expected letters, digits, '_' or '-' (no spaces), "
            f"got {dataset_name!r}"
        )
    return f"Dataset{int(dataset_id):03d}_{dataset_name}"


def _outputs(folder: Path, pid: str) -> tuple[Path, Path, Path]:
    return (
        folder / "imagesTr" / f"{pid}_0000{_FILE_ENDING}",
        folder / "imagesTr" / f"{pid}_0001{_FILE_ENDING}",
        folder / "labelsTr" / f"{pid}{_FILE_ENDING}",
    )


def _up_to_date(outputs: Sequence[Path], inputs: Sequence[Path]) -> bool:
    if not all(p.is_file() for p in outputs):
        return False
    oldest_out = min(p.stat().st_mtime_ns for p in outputs)
    newest_in = max(p.stat().st_mtime_ns for p in inputs)
    return oldest_out > newest_in


def _export_case(cohort: Path, pid: str, folder: Path) -> None:
    """Write one case's two channels and label (see the module docstring)."""
    les_path = case_path(cohort, pid, "lesions")
    les, les_aff = load_nifti(les_path)
    out_ct, out_pet, out_label = _outputs(folder, pid)
    pet_aff = write_channels(
        case_path(cohort, pid, "pet"),
        case_path(cohort, pid, "ct"),
        pid,
        out_ct,
        out_pet,
        check_label=(les_path, les.shape, les_aff),
    )
    # the label last: a case counts as exported only when all three are newer than inputs
    save_nifti(out_label, les > 0, pet_aff, np.uint8)


def write_channels(
    pet_path: Path,
    ct_path: Path,
    pid: str,
    out_ct: Path,
    out_pet: Path,
    check_label: tuple[Path, tuple[int, ...], np.ndarray] | None = None,
) -> np.ndarray:
    """Write a case's two nnU-Net input channels: the CT resampled onto the PET grid
    (``out_ct``) and the PET (``out_pet``); returns the PET affine.

    ``check_label`` = (path, shape, affine) of a label map that must lie on the PET grid
    (checked before anything is written).
    """
    pet, pet_aff = load_nifti(pet_path)
    ct, ct_aff = load_nifti(ct_path)
    if check_label is not None:
        les_path, les_shape, les_aff = check_label
        if not same_grid(les_shape, les_aff, pet.shape, pet_aff, atol_mm=_GRID_ATOL_MM):
            raise CohortError(
                f"{les_path}: expected the lesion map on the PET grid (shape {pet.shape}, "
                f"affine\n{pet_aff}), got shape {les_shape}, affine\n{les_aff}"
            )
    if same_grid(ct.shape, ct_aff, pet.shape, pet_aff, atol_mm=_GRID_ATOL_MM):
        ct_on_pet = ct.astype(np.float32)
    else:
        frac = overlap_fraction(ct.shape, ct_aff, pet.shape, pet_aff)
        if frac < MIN_CT_PET_OVERLAP:
            raise CohortError(
                f"patient {pid!r}: expected the CT ({ct_path}) to cover at least "
                f"{MIN_CT_PET_OVERLAP:.0%} of the PET field of view ({pet_path}), got "
                f"{frac:.1%}; check the two images belong to the same study"
            )
        ct_on_pet = resample_to_grid(
            ct.astype(np.float32, copy=False), ct_aff, pet.shape, pet_aff, order=1, fill=CT_FILL_HU
        )

    save_nifti(out_ct, ct_on_pet, pet_aff, np.float32)
    save_nifti(out_pet, pet, pet_aff, np.float32)
    return pet_aff


def _remove_stale(folder: Path, keep: set[str]) -> None:
    """Delete case files of patients no longer exported (nnU-Net counts every file)."""
    wanted = set()
    for pid in keep:
        wanted.update(p.name for p in _outputs(folder, pid))
    for sub in ("imagesTr", "labelsTr"):
        d = folder / sub
        if d.is_dir():
            for p in d.iterdir():
                if p.is_file() and p.name.endswith(_FILE_ENDING) and p.name not in wanted:
                    p.unlink()


def export_nnunet_raw(
    cohort: str | Path,
    out_dir: str | Path | None = None,
    dataset_id: int = 501,
    dataset_name: str = "LAMPSynth",
    patient_ids: list[str] | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the cohort's CT/PET cases and reference lesion masks as an nnU-Net v2 dataset.

    Parameters
    ----------
    cohort : str or Path
        A cohort folder (DESIGN.md): ``clinical.csv``, ``folds.csv`` and
        ``cases/<pid>/{pet,ct,lesions}.nii.gz`` for every exported patient.
    out_dir : str or Path, optional
        Parent folder of the dataset folder; default ``cohort / "nnunet_raw"`` (pass
        nnU-Net's ``nnUNet_raw`` to export straight into it).
    dataset_id : int, default 501
        nnU-Net dataset id, 1..999.
    dataset_name : str, default "LAMPSynth"
        nnU-Net dataset name (letters, digits, ``_``, ``-``).
    patient_ids : list of str, optional
        Patients to export, in this order; default every patient of ``clinical.csv``.
        Each must be in ``folds.csv``; a subset keeps its folds, which must all stay
        non-empty.
    progress : callable(done, total), optional
        Called after each case (e.g. to advance a progress bar).

    Returns
    -------
    Path
        The dataset folder ``out_dir / f"Dataset{dataset_id:03d}_{dataset_name}"``.

    Raises
    ------
    CohortError
        Missing case files (all listed at once, each path named), a lesion map not on the
        PET grid, a CT covering less than half of the PET field of view (names the
        patient), an invalid ``clinical.csv`` or ``folds.csv``.

    Notes
    -----
    The CT is resampled onto the PET grid through world space (trilinear, -1024 HU
    outside the CT field of view) with `lamp.images.resample_to_grid`; a CT already on
    the PET grid is copied. Files of other patients left in ``imagesTr``/``labelsTr`` by
    an earlier export are deleted, so that nnU-Net finds exactly ``numTraining`` cases.
    """
    cohort = Path(cohort)
    folder = Path(out_dir if out_dir is not None else cohort / "nnunet_raw") / (
        dataset_folder_name(dataset_id, dataset_name)
    )
    if patient_ids is None:
        pids = read_clinical(cohort / "clinical.csv")["patient_id"].tolist()
    else:
        pids = [check_patient_id(p, "export_nnunet_raw patient_ids") for p in patient_ids]
        if len(set(pids)) != len(pids):
            raise CohortError(f"export_nnunet_raw patient_ids: expected unique ids, got {pids}")
    if not pids:
        raise CohortError("export_nnunet_raw: expected at least one patient, got none")

    folds = read_folds(cohort / "folds.csv")
    in_split = set(folds["patient_id"])
    not_in_split = [p for p in pids if p not in in_split]
    if not_in_split:
        raise CohortError(
            f"{cohort / 'folds.csv'}: expected every exported patient in the split, "
            f"missing {not_in_split}"
        )
    folds = folds[folds["patient_id"].isin(set(pids))].reset_index(drop=True)
    splits = nnunet_splits(folds)  # also checks that no fold became empty

    missing = [
        str(case_path(cohort, pid, kind))
        for pid in pids
        for kind in ("pet", "ct", "lesions")
        if not case_path(cohort, pid, kind).is_file()
    ]
    if missing:
        raise CohortError(
            f"cohort {cohort}: {len(missing)} case file(s) not found (expected PET, CT and "
            "reference lesions for every exported patient):\n  - " + "\n  - ".join(missing)
        )

    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    _remove_stale(folder, set(pids))
    for n, pid in enumerate(pids, start=1):
        inputs = [case_path(cohort, pid, k) for k in ("pet", "ct", "lesions")]
        if not _up_to_date(_outputs(folder, pid), inputs):
            _export_case(cohort, pid, folder)
        if progress is not None:
            progress(n, len(pids))

    dataset_json = {
        "name": dataset_name,
        "description": (
            "LAMP lesion segmentation: baseline FDG PET/CT of DLBCL, exported from cohort "
            f"{cohort.resolve().name}. Channel 0: CT in HU resampled onto the PET grid "
            f"(trilinear, {CT_FILL_HU:g} HU outside the CT); channel 1: PET in SUVbw; "
            "label: reference lesions (all instances merged)."
        ),
        "channel_names": CHANNEL_NAMES,
        "labels": LABELS,
        "numTraining": len(pids),
        "file_ending": _FILE_ENDING,
    }
    write_text_atomic(folder / "splits_final.json", json.dumps(splits, indent=1) + "\n")
    write_text_atomic(folder / "dataset.json", json.dumps(dataset_json, indent=1) + "\n")
    return folder
