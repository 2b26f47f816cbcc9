"""Lesion tables of a cohort from its lesion masks, for the baselines that need them.

The metabolic parameters, the automatic staging, the radiomics and the Thiery2025
lesion graph all start from the lesions of each patient. "manual" lesions are the
cohort's reference masks (``cases/<id>/lesions.nii.gz``), "automatic" lesions are the
segmentation network's instances (``WORK/segmentation/lamp/instances/<id>.nii.gz``,
written by ``lamp segment predict``), so that a baseline uses the same lesion masks as
LAMP. The table is `lamp.features.lesion_table` (one row per lesion: volume, SUVmax,
SUVmean, SUVpeak, TLG, centroid in mm, organ group, nodal region) computed on the PET
grid, cached in ``WORK/baselines/lesions_<masks>.csv`` (rebuilt when a mask is newer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lamp.anatomy import merge_to_groups
from lamp.baselines.common import BaselineError
from lamp.cohort import CohortError, case_path, read_clinical, write_text_atomic
from lamp.features import LESION_TABLE_COLUMNS, lesion_table
from lamp.images import load_nifti, same_grid

__all__ = ["MASKS", "mask_path", "case_lesion_table", "cohort_lesion_tables"]

MASKS = ("manual", "automatic")


def mask_path(cohort: str | Path, work: str | Path, patient_id: str, masks: str) -> Path:
    """Where the lesion instances of one patient are, for ``masks`` "manual"/"automatic"."""
    if masks == "manual":
        return case_path(cohort, patient_id, "lesions")
    if masks == "automatic":
        return Path(work) / "segmentation" / "lamp" / "instances" / f"{patient_id}.nii.gz"
    raise BaselineError(f"lesion masks: expected one of {MASKS}, got {masks!r}")


def case_lesion_table(
    cohort: str | Path, work: str | Path, patient_id: str, masks: str
) -> pd.DataFrame:
    """The lesion table of one patient (`lamp.features.lesion_table`), organs if present.

    Raises
    ------
    BaselineError
        A missing or unreadable mask or PET, or grids that differ; names patient and file.
    """
    les_path = mask_path(cohort, work, patient_id, masks)
    if not les_path.is_file():
        hint = (
            "run `lamp segment predict` first"
            if masks == "automatic"
            else "the cohort has no reference lesion masks"
        )
        raise BaselineError(f"patient {patient_id}: {les_path}: no such file ({hint})")
    pet_path = case_path(cohort, patient_id, "pet")
    org_path = case_path(cohort, patient_id, "organs")
    try:
        pet, pet_aff = load_nifti(pet_path)
        les, les_aff = load_nifti(les_path)
        organs = load_nifti(org_path) if org_path.is_file() else None
    except CohortError as exc:
        raise BaselineError(f"patient {patient_id}: {exc}") from None
    checks = [("lesion mask", les, les_aff, les_path)]
    if organs is not None:
        checks.append(("organ mask", organs[0], organs[1], org_path))
    for name, arr, aff, path in checks:
        if not same_grid(arr.shape, aff, pet.shape, pet_aff):
            raise BaselineError(
                f"patient {patient_id}: {path}: the {name} is not on the PET grid "
                f"({pet_path}: shape {pet.shape})"
            )
    groups = merge_to_groups(np.rint(organs[0]).astype(np.int64)) if organs is not None else None
    return lesion_table(pet, np.rint(les).astype(np.int64), pet_aff, groups, patient_id=patient_id)


def cohort_lesion_tables(
    cohort: str | Path,
    work: str | Path,
    masks: str = "manual",
    patient_ids: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """The lesion tables of the cohort's patients (all, or ``patient_ids``), concatenated.

    Cached in ``WORK/baselines/lesions_<masks>.csv``: a patient is recomputed only when
    it is missing from the cache or one of its mask files is newer than the cache.
    A patient without lesions contributes no row (its TMTV is 0, etc.).

    Returns
    -------
    DataFrame with `lamp.features.LESION_TABLE_COLUMNS`.
    """
    if masks not in MASKS:
        raise BaselineError(f"lesion masks: expected one of {MASKS}, got {masks!r}")
    cohort, work = Path(cohort), Path(work)
    if patient_ids is None:
        patient_ids = read_clinical(cohort / "clinical.csv")["patient_id"].tolist()
    cache = work / "baselines" / f"lesions_{masks}.csv"
    cached = pd.DataFrame(columns=list(LESION_TABLE_COLUMNS))
    done: set[str] = set()
    if cache.is_file():
        cached = pd.read_csv(cache, dtype={"patient_id": str, "organ": str, "nodal_region": str})
        cached[["organ", "nodal_region"]] = cached[["organ", "nodal_region"]].fillna("")
        done_file = cache.with_suffix(".patients")
        if done_file.is_file():
            stamp = cache.stat().st_mtime
            # a patient's rows are reused only while its mask, PET and organ map (what
            # its table is computed from) are older than the cache
            done = {
                p
                for p in done_file.read_text().split()
                if mask_path(cohort, work, p, masks).is_file()
                and all(
                    not f.is_file() or f.stat().st_mtime <= stamp
                    for f in (
                        mask_path(cohort, work, p, masks),
                        case_path(cohort, p, "pet"),
                        case_path(cohort, p, "organs"),
                    )
                )
            }
    parts = [cached[cached["patient_id"].isin(done)]]
    todo = [p for p in patient_ids if p not in done]
    for i, pid in enumerate(todo):
        parts.append(case_lesion_table(cohort, work, pid, masks))
        if progress is not None:
            progress(f"lesion table ({masks}) {i + 1}/{len(todo)}: {pid}")
    nonempty = [p for p in parts if len(p)]
    table = (
        pd.concat(nonempty, ignore_index=True)
        if nonempty
        else pd.DataFrame(columns=list(LESION_TABLE_COLUMNS))
    )
    if todo:
        known = sorted(done | set(todo))
        write_text_atomic(cache, table.to_csv(index=False, lineterminator="\n"))
        write_text_atomic(cache.with_suffix(".patients"), "\n".join(known) + "\n")
    return table[table["patient_id"].isin(list(patient_ids))].reset_index(drop=True)
