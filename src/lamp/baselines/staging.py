"""Ann Arbor stage and extranodal sites computed automatically from the lesion masks.

The paper's Table 1 compares LAMP with the Ann Arbor stage. Here the stage is also read
*automatically* from the lesion instances and the organ masks, with the Lugano rules of
`lamp.clinical` (the same `ann_arbor_stage` and `count_extranodal_sites` that derive
``ann_arbor`` and ``extranodal_sites`` of a synthetic ``clinical.csv``), so that:

* the automatic stage can be checked against the stage of the clinical table
  (``WORK/baselines/staging_<masks>_agreement.json``: exact agreement, linearly weighted
  Cohen's kappa, confusion matrix);
* the automatic stage is one more cross-validated baseline, method
  ``"Ann Arbor (automatic)"`` (from the network's masks) or
  ``"Ann Arbor (manual masks)"`` (the same rules on the reference masks).

From lesion to site (`stage_patient`), one lesion of the lesion table
(`lamp.features.lesion_table`: organ group, share of the lesion in it, approximate nodal
region, centroid) at a time:

1. ``organ == "spleen"``: the nodal region ``"spleen"`` (lymphatic tissue, below the
   diaphragm, as in `lamp.clinical`).
2. An organ group of `EXTRANODAL_OF_GROUP` holding at least ``min_extranodal_fraction``
   of the lesion's voxels: that extranodal site (bones with red marrow -> ``bone_marrow``;
   small bowel, duodenum, colon -> ``bowel``; brain, spinal cord -> ``cns``; ...).
3. Otherwise the lesion is nodal. Its region is the lesion table's ``nodal_region``
   (organ ``"none"``); for a lesion lying mostly in another structure (a node against
   the aorta, a muscle, or less than ``min_extranodal_fraction`` inside an organ) the
   region whose landmark structures (`lamp.features.NODAL_LANDMARKS`) include that
   structure, if exactly one does on the lesion's side of the diaphragm.
4. A nodal lesion still without a region is *unassigned* on its side of the diaphragm
   (centroid above or below the top of the liver, else of the spleen, in the organ
   mask: the rule of `lamp.features.lesion_table`). It counts as one more region only
   when no assigned region lies on that side (so it can raise stage I to III, but never
   turns one involved region into two on the same side: it may lie in the same region).
   Without an organ mask to place the diaphragm it is left out.

A patient without lesions (or only with lesions left out) gets stage 0, "no disease
detected", a valid lowest risk.

Why the automatic stage differs from the table's stage, even on the reference masks of a
synthetic cohort (expected, and the reason the agreement is reported):

* **diffuse involvement has no mask**: the generator's diffuse bone-marrow and diffuse
  splenic involvement raise the uptake of the whole organ and count in the table's stage
  (marrow -> stage IV, spleen -> a region below the diaphragm) but draw no lesion;
* **lesions too small for the grid**: a lesion rendered with no voxel (small nodes on a
  coarse grid) is missing from the mask, so its region or site is missing too;
* **approximate nodal regions**: the lesion table's nearest-landmark rule can put a
  node in a neighbouring region (e.g. a low cervical node as mediastinal), which changes
  stage I/II, or the side of the diaphragm near it;
* **organ overlap**: a node touching a bone or an organ can be read as extranodal when
  most of its voxels lie in it (on coarse grids especially).

Stage IIE (limited contiguous extranodal extension) is not recognised, as in
`lamp.clinical.ann_arbor_stage`: nodal disease with any extranodal site is stage IV.

References
----------
.. [1] Cheson BD, Fisher RI, Barrington SF, et al. Recommendations for initial evaluation,
   staging, and response assessment of Hodgkin and non-Hodgkin lymphoma: the Lugano
   classification. J Clin Oncol 2014;32(27):3059-3068.
.. [2] Cohen J. Weighted kappa: nominal scale agreement with provision for scaled
   disagreement or partial credit. Psychol Bull 1968;70(4):213-220.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score, confusion_matrix

from lamp.anatomy import MARROW_GROUPS, TOTAL_IDS
from lamp.baselines.common import BaselineError, Split, cross_validate
from lamp.baselines.lesions import MASKS, cohort_lesion_tables, mask_path
from lamp.clinical import (
    EXTRANODAL_SITES,
    NODAL_REGIONS,
    ann_arbor_stage,
    count_extranodal_sites,
)
from lamp.cohort import CohortError, case_path, read_clinical, write_text_atomic
from lamp.features import LESION_TABLE_COLUMNS, NODAL_LANDMARKS
from lamp.images import load_nifti

__all__ = [
    "EXTRANODAL_OF_GROUP",
    "STAGING_COLUMNS",
    "Staging",
    "stage_patient",
    "diaphragm_z_mm",
    "require_lesion_masks",
    "staging_method_name",
    "stage_cohort",
    "run_automatic_staging",
]

#: Organ groups (`lamp.anatomy.GROUPS`) -> extranodal site (`lamp.clinical.EXTRANODAL_SITES`).
#: Every bone that carries red marrow (`lamp.anatomy.MARROW_GROUPS`) is ``bone_marrow``.
#: Groups not listed (vessels, heart, airways, oesophagus, muscles, pancreas, thyroid,
#: bladder, prostate, gallbladder, cartilage) have no site in the staging vocabulary: a
#: lesion in them is treated as a node lying against them.
EXTRANODAL_OF_GROUP: dict[str, str] = {
    **{g: "bone_marrow" for g in MARROW_GROUPS},
    "liver": "liver",
    "stomach": "stomach",
    "small_bowel": "bowel",
    "duodenum": "bowel",
    "colon": "bowel",
    "lung_left": "lung",
    "lung_right": "lung",
    "kidney_left": "kidney",
    "kidney_right": "kidney",
    "kidney_cyst_left": "kidney",
    "kidney_cyst_right": "kidney",
    "adrenal_gland_left": "adrenal",
    "adrenal_gland_right": "adrenal",
    "brain": "cns",
    "spinal_cord": "cns",
}

#: Columns of ``WORK/baselines/staging_<masks>.csv``.
STAGING_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "ann_arbor_auto",
    "extranodal_auto",
    "ann_arbor",
    "extranodal_sites",
    "regions",
    "sites",
)

# Lesion table columns the staging reads.
_NEEDED = ("organ", "organ_fraction", "nodal_region", "centroid_z_mm")
# Side -> the label of an unassigned nodal lesion in `Staging.regions`.
_UNASSIGNED = {"above": "unassigned_above", "below": "unassigned_below"}
# Stand-in region per side, so that an unassigned side counts as one region in
# lamp.clinical.ann_arbor_stage (used only when no assigned region lies on that side).
_STAND_IN = {
    side: next(r for r, s in NODAL_REGIONS.items() if s == side) for side in ("above", "below")
}

if set(EXTRANODAL_OF_GROUP.values()) - set(EXTRANODAL_SITES):  # pragma: no cover - guard
    raise BaselineError("EXTRANODAL_OF_GROUP names a site outside lamp.clinical")


class Staging(NamedTuple):
    """The automatic stage of one patient.

    Attributes
    ----------
    stage : int
        Ann Arbor stage 1-4 by `lamp.clinical.ann_arbor_stage`; 0 when no lesion could be
        staged (no disease detected).
    extranodal_count : int
        Distinct extranodal sites (`lamp.clinical.count_extranodal_sites`).
    regions : tuple of str
        Involved nodal regions (`lamp.clinical.NODAL_REGIONS`), sorted, plus
        ``"unassigned_above"`` / ``"unassigned_below"`` for nodal lesions without a region.
    sites : tuple of str
        Involved extranodal sites (`lamp.clinical.EXTRANODAL_SITES`), sorted.
    """

    stage: int
    extranodal_count: int
    regions: tuple[str, ...]
    sites: tuple[str, ...]


def _check_columns(table: pd.DataFrame, needed: Iterable[str], what: str) -> None:
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise BaselineError(
            f"{what}: expected the lesion-table columns {list(needed)}, missing {missing} "
            f"(see lamp.features.LESION_TABLE_COLUMNS)"
        )


def _side(z: float, diaphragm: float | None) -> str | None:
    if diaphragm is None or not np.isfinite(z):
        return None
    return "above" if z > diaphragm else "below"


def _region_of_structure(organ: str, side: str | None) -> str:
    """The one nodal region that has ``organ`` among its landmarks on ``side``, or ""."""
    cands = [
        r
        for r, names in NODAL_LANDMARKS.items()
        if organ in names and (side is None or NODAL_REGIONS[r] == side)
    ]
    return cands[0] if len(cands) == 1 else ""


def stage_patient(
    lesion_rows: pd.DataFrame,
    *,
    diaphragm_z_mm: float | None = None,
    min_extranodal_fraction: float = 0.1,
) -> Staging:
    """Ann Arbor stage (Lugano) and extranodal sites of one patient from its lesions.

    Parameters
    ----------
    lesion_rows : DataFrame
        The patient's rows of a lesion table (`lamp.features.lesion_table`), with at
        least ``organ``, ``organ_fraction``, ``nodal_region`` and ``centroid_z_mm`` (world
        RAS+ mm). No rows (whatever the columns): stage 0.
    diaphragm_z_mm : float, optional
        World z (mm) of the diaphragm (top of the liver), to place nodal lesions that
        have no region; see `diaphragm_z_mm`. Without it such lesions are left out.
    min_extranodal_fraction : float, default 0.1
        Smallest share of a lesion's voxels inside an organ of `EXTRANODAL_OF_GROUP` for
        the lesion to count as extranodal there; below it the lesion is a node touching
        the organ. The organ group is the one holding most of the lesion (lesion table),
        so this only matters for lesions partly in an organ. Chosen on a 30-patient
        synthetic cohort at the ``tiny`` grid (12 mm): lesions of thin organ masks
        (small-bowel loops) lie only 12-46 % inside them, nodes there touch no organ;
        0.05-0.1 agreed best with the table. On real 4 mm masks, where a node's rim can
        touch an organ, a higher value may suit better.

    Returns
    -------
    Staging
        ``(stage, extranodal_count, regions, sites)``; the rules are in the module
        docstring.

    Raises
    ------
    BaselineError
        Missing columns, an empty ``organ`` (the lesion table was made without an organ
        mask: automatic staging needs ``organs.nii.gz``), an unknown nodal region, or a
        fraction outside [0, 1].

    Examples
    --------
    >>> rows = pd.DataFrame({"organ": ["none", "none"], "organ_fraction": [0.0, 0.0],
    ...                      "nodal_region": ["cervical_left", "mediastinal"],
    ...                      "centroid_z_mm": [-250.0, -380.0]})
    >>> stage_patient(rows)
    Staging(stage=2, extranodal_count=0, regions=('cervical_left', 'mediastinal'), sites=())
    """
    if len(lesion_rows) == 0:
        return Staging(0, 0, (), ())
    _check_columns(lesion_rows, _NEEDED, "stage_patient")
    if not 0.0 <= min_extranodal_fraction <= 1.0:
        raise BaselineError(
            f"min_extranodal_fraction: expected a share in [0, 1], got {min_extranodal_fraction}"
        )
    regions: set[str] = set()
    sites: set[str] = set()
    unassigned: set[str] = set()
    for row in lesion_rows.itertuples(index=False):
        organ = "" if pd.isna(row.organ) else str(row.organ)
        region = "" if pd.isna(row.nodal_region) else str(row.nodal_region)
        pid = getattr(row, "patient_id", "?")
        if organ == "":
            raise BaselineError(
                f"patient {pid}: lesion table column 'organ': expected an organ group or "
                f"'none', got an empty cell (the table was made without organs.nii.gz; "
                f"automatic staging needs the organ masks)"
            )
        if region and region not in NODAL_REGIONS:
            raise BaselineError(
                f"patient {pid}: lesion table column 'nodal_region': expected one of "
                f"{list(NODAL_REGIONS)} or empty, got {region!r}"
            )
        fraction = float(row.organ_fraction)
        if organ == "spleen":
            regions.add("spleen")
            continue
        if organ in EXTRANODAL_OF_GROUP and fraction >= min_extranodal_fraction:
            sites.add(EXTRANODAL_OF_GROUP[organ])
            continue
        side = _side(float(row.centroid_z_mm), diaphragm_z_mm)
        if not region and organ != "none":
            region = _region_of_structure(organ, side)
        if region:
            regions.add(region)
        elif side is not None:
            unassigned.add(side)
    staged = set(regions)
    for side in sorted(unassigned):
        if not any(NODAL_REGIONS[r] == side for r in regions):
            staged.add(_STAND_IN[side])
    stage = ann_arbor_stage(staged, sites) if staged or sites else 0
    shown = sorted(regions) + [_UNASSIGNED[s] for s in sorted(unassigned)]
    return Staging(stage, count_extranodal_sites(sites), tuple(shown), tuple(sorted(sites)))


def diaphragm_z_mm(organs: np.ndarray, affine: np.ndarray) -> float | None:
    """World z (mm) of the top of the liver (else of the spleen) in a 'total' label map.

    Parameters
    ----------
    organs : ndarray, shape (X, Y, Z), int
        TotalSegmentator 'total' ids on the PET grid.
    affine : ndarray, shape (4, 4)
        Voxel index -> RAS+ world mm.

    Returns
    -------
    float or None
        None when the map holds neither liver nor spleen.
    """
    for name in ("liver", "spleen"):
        idx = np.argwhere(organs == TOTAL_IDS[name])
        if len(idx):
            z = idx.astype(np.float64) @ np.asarray(affine)[2, :3] + float(affine[2, 3])
            return float(z.max())
    return None


def _needs_diaphragm(rows: pd.DataFrame, min_extranodal_fraction: float) -> bool:
    """Whether some nodal lesion of ``rows`` has no region (the side decides then)."""
    organ = rows["organ"].fillna("").astype(str)
    extranodal = organ.isin(list(EXTRANODAL_OF_GROUP)) & (
        rows["organ_fraction"].astype(float) >= min_extranodal_fraction
    )
    nodal = ~extranodal & (organ != "spleen")
    return bool((nodal & (rows["nodal_region"].fillna("").astype(str) == "")).any())


def _case_diaphragm(cohort: Path, patient_id: str) -> float | None:
    path = case_path(cohort, patient_id, "organs")
    if not path.is_file():
        return None
    try:
        organs, aff = load_nifti(path)
    except CohortError as exc:
        raise BaselineError(f"patient {patient_id}: {exc}") from None
    return diaphragm_z_mm(np.rint(organs).astype(np.int64), aff)


def staging_method_name(masks: str) -> str:
    """Method name of the automatic-stage baseline for ``masks`` "automatic" / "manual"."""
    if masks not in MASKS:
        raise BaselineError(f"lesion masks: expected one of {MASKS}, got {masks!r}")
    return "Ann Arbor (automatic)" if masks == "automatic" else "Ann Arbor (manual masks)"


def require_lesion_masks(
    cohort: str | Path, work: str | Path, ids: Sequence[str], masks: str
) -> None:
    """Check that every patient of ``ids`` has its ``masks`` lesion file, before any work.

    Raises
    ------
    BaselineError
        Naming how many are missing, the first missing file and what to do (for
        "automatic": run ``lamp segment predict``).
    """
    missing = [p for p in ids if not mask_path(cohort, work, p, masks).is_file()]
    if not missing:
        return
    where = mask_path(cohort, work, missing[0], masks)
    hint = (
        "run `lamp segment predict` first"
        if masks == "automatic"
        else "the cohort needs reference lesion masks cases/<id>/lesions.nii.gz"
    )
    raise BaselineError(
        f"{masks} lesion masks missing for {len(missing)} of {len(ids)} patients "
        f"(first: {where}; patients {missing[:5]}): {hint}"
    )


def _agreement(table: pd.DataFrame) -> dict[str, Any]:
    auto = table["ann_arbor_auto"].to_numpy(dtype=int)
    ref = table["ann_arbor"].to_numpy(dtype=int)
    en_auto = table["extranodal_auto"].to_numpy(dtype=int)
    en_ref = table["extranodal_sites"].to_numpy(dtype=int)
    labels = list(range(0, 5))
    # linear weights (Cohen 1968 [2]_): a I-vs-II disagreement costs less than I-vs-IV;
    # kappa is undefined (NaN, with a sklearn warning) when both raters use one category
    if len(set(auto) | set(ref)) > 1:
        kappa: float | None = float(cohen_kappa_score(ref, auto, labels=labels, weights="linear"))
    else:
        kappa = None
    cm = confusion_matrix(ref, auto, labels=labels)
    return {
        "n_patients": len(table),
        "stage_exact_agreement_percent": float(100.0 * np.mean(auto == ref)) if len(ref) else None,
        "stage_weighted_kappa_linear": kappa,
        "stage_within_one_percent": float(100.0 * np.mean(np.abs(auto - ref) <= 1))
        if len(ref)
        else None,
        "advanced_stage_agreement_percent": float(100.0 * np.mean((auto >= 3) == (ref >= 3)))
        if len(ref)
        else None,
        "extranodal_exact_agreement_percent": float(100.0 * np.mean(en_auto == en_ref))
        if len(ref)
        else None,
        "extranodal_more_than_one_agreement_percent": float(
            100.0 * np.mean((en_auto > 1) == (en_ref > 1))
        )
        if len(ref)
        else None,
        "confusion_matrix": {
            "rows": "clinical table ann_arbor (0 = none, 1-4)",
            "columns": "automatic ann_arbor_auto (0 = no lesion staged, 1-4)",
            "labels": labels,
            "counts": cm.tolist(),
        },
        "note": (
            "Disagreement is expected even on reference masks of a synthetic cohort: diffuse "
            "marrow/spleen involvement has no lesion mask, lesions too small for the grid "
            "are not drawn, nodal regions are approximate (see lamp.baselines.staging)."
        ),
    }


def stage_cohort(
    cohort: str | Path,
    work: str | Path,
    masks: str = "automatic",
    lesions: pd.DataFrame | None = None,
    *,
    min_extranodal_fraction: float = 0.1,
    progress: Callable[[str], None] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Stage every patient of the cohort from its lesions; write the table and agreement.

    Parameters
    ----------
    cohort, work : str or Path
    masks : {"automatic", "manual"}
        Lesions of the segmentation network (``lamp segment predict``) or the reference.
    lesions : DataFrame, optional
        A precomputed lesion table (`lamp.features.LESION_TABLE_COLUMNS`) to use instead
        of `lamp.baselines.lesions.cohort_lesion_tables`.
    min_extranodal_fraction : float, default 0.1
        See `stage_patient`.
    progress : callable, optional

    Returns
    -------
    table : DataFrame
        `STAGING_COLUMNS`, one row per patient of ``clinical.csv`` (file order);
        ``regions``/``sites`` joined by ``;``. Written to
        ``WORK/baselines/staging_<masks>.csv``.
    agreement : dict
        Automatic vs clinical table: exact agreement %, linearly weighted Cohen's kappa,
        agreement within one stage, on advanced stage (III-IV) and on the extranodal
        count, the confusion matrix. Written to
        ``WORK/baselines/staging_<masks>_agreement.json``.

    Raises
    ------
    BaselineError
        Unknown ``masks``, missing mask files (for "automatic": run ``lamp segment
        predict``), a lesion table without organ groups.
    """
    if masks not in MASKS:
        raise BaselineError(f"lesion masks: expected one of {MASKS}, got {masks!r}")
    cohort, work = Path(cohort), Path(work)
    try:
        clinical = read_clinical(cohort / "clinical.csv")
    except CohortError as exc:
        raise BaselineError(str(exc)) from None
    ids = clinical["patient_id"].tolist()
    if lesions is None:
        require_lesion_masks(cohort, work, ids, masks)
        lesions = cohort_lesion_tables(cohort, work, masks, ids, progress=progress)
    _check_columns(lesions, ("patient_id", *_NEEDED), "lesion table")
    by_patient = {pid: rows for pid, rows in lesions.groupby("patient_id", sort=False)}
    rows = []
    for pid, stage_ref, en_ref in zip(
        ids, clinical["ann_arbor"], clinical["extranodal_sites"], strict=True
    ):
        les = by_patient.get(pid, pd.DataFrame(columns=list(LESION_TABLE_COLUMNS)))
        needs = _needs_diaphragm(les, min_extranodal_fraction)
        diaphragm = _case_diaphragm(cohort, pid) if needs else None
        st = stage_patient(
            les, diaphragm_z_mm=diaphragm, min_extranodal_fraction=min_extranodal_fraction
        )
        rows.append(
            {
                "patient_id": pid,
                "ann_arbor_auto": st.stage,
                "extranodal_auto": st.extranodal_count,
                "ann_arbor": int(stage_ref),
                "extranodal_sites": int(en_ref),
                "regions": ";".join(st.regions),
                "sites": ";".join(st.sites),
            }
        )
    table = pd.DataFrame(rows, columns=list(STAGING_COLUMNS))
    agreement = {"masks": masks, **_agreement(table)}
    out = work / "baselines"
    write_text_atomic(out / f"staging_{masks}.csv", table.to_csv(index=False, lineterminator="\n"))
    write_text_atomic(
        out / f"staging_{masks}_agreement.json", json.dumps(agreement, indent=2) + "\n"
    )
    return table, agreement


def _stage_risk(stages: Mapping[str, int]) -> Callable[[Split], np.ndarray]:
    def fit_predict(split: Split) -> np.ndarray:
        # nothing to fit: the stage itself is the risk (ties are handled by the C-index)
        return np.array([float(stages[p]) for p in split.test["patient_id"]])

    return fit_predict


def run_automatic_staging(
    work: str | Path,
    cohort: str | Path,
    endpoints: Sequence[str] = ("pfs", "os"),
    seeds: Sequence[int] = (0,),
    masks: str = "automatic",
    lesions: pd.DataFrame | None = None,
    *,
    min_extranodal_fraction: float = 0.1,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Stage the cohort (`stage_cohort`) and cross-validate the stage as a risk score.

    The method (`staging_method_name`: ``"Ann Arbor (automatic)"`` for the network's
    masks, ``"Ann Arbor (manual masks)"`` for the reference) has nothing to fit: the
    automatic stage 0-4 is the risk of every held-out patient. It goes through
    `lamp.baselines.common.cross_validate`, so it is scored on the same folds and
    patients as every other row of Table 1.

    Returns
    -------
    DataFrame
        The out-of-fold risks (`lamp.baselines.common.OOF_COLUMNS`), also in
        ``WORK/baselines/<method>/oof_risk.csv``.
    """
    table, agreement = stage_cohort(
        cohort,
        work,
        masks,
        lesions,
        min_extranodal_fraction=min_extranodal_fraction,
        progress=progress,
    )
    stages = dict(zip(table["patient_id"], table["ann_arbor_auto"].astype(int), strict=True))
    settings = {
        "risk": "automatic Ann Arbor stage 0-4 (0 = no lesion staged), no fitting",
        "masks": masks,
        "min_extranodal_fraction": min_extranodal_fraction,
        "stage_exact_agreement_percent": agreement["stage_exact_agreement_percent"],
        "stage_weighted_kappa_linear": agreement["stage_weighted_kappa_linear"],
    }
    try:
        return cross_validate(
            staging_method_name(masks),
            _stage_risk(stages),
            work,
            cohort,
            endpoints,
            seeds,
            settings,
            progress,
        )
    except CohortError as exc:
        raise BaselineError(str(exc)) from None
