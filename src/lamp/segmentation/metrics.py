"""Lesion segmentation metrics of the autoPET challenge, per patient and per cohort.

The metrics follow the autoPET challenge evaluation (Gatidis et al. [1]_, [2]_), which the
paper reports for its network (§2.1: Dice, FPV, FNV, lesion precision and recall):

* **Dice** of the foreground (all lesions together): ``2 |P ∩ R| / (|P| + |R|)``.
* **False positive volume (FPV)**, ml: the volume of the connected components of the
  prediction that do not overlap the reference at all.
* **False negative volume (FNV)**, ml: the volume of the connected components of the
  reference that do not overlap the prediction at all.
* **Lesion-level detection** (the paper's addition, with autoPET's overlap rule): a
  reference lesion (component) is *detected* when at least one predicted voxel lies in it;
  a predicted component is a *true positive* when at least one of its voxels lies in a
  reference lesion. Lesion precision = TP predicted components / predicted components;
  lesion recall = detected reference lesions / reference lesions.

Components use 18-connectivity (faces and edges, not corners), as the autoPET evaluation
script does; "overlap" means sharing at least one voxel - a component that only *touches*
the other mask (adjacent voxels, no shared voxel) does not overlap it.

Conventions for empty masks (never a silent 0 or 1):

* Reference empty (a patient without lesions; autoPET's "negative case"): Dice and lesion
  recall are undefined - autoPET uses only the FPV for such cases. They are NaN, the row
  carries ``ref_empty = True``, and `cohort_metrics` leaves the patient out of the Dice,
  FNV and recall means. FPV is defined (every predicted component is false), FNV is 0.
* Prediction empty but reference not: Dice is 0 (well defined: nothing overlaps),
  lesion precision is NaN with ``pred_empty = True``, recall is 0, FNV the whole reference.

References
----------
.. [1] Gatidis S, Früh M, Fabritius MP, et al. Results from the autoPET challenge on
   fully automated lesion segmentation in oncologic PET/CT imaging. Nature Machine
   Intelligence 2024;6:1396-1405.
.. [2] autoPET challenge, evaluation criteria: https://autopet.grand-challenge.org/Evaluation/
   and the evaluation script at https://github.com/lab-midas/autoPET (18-connectivity,
   one-voxel overlap).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

from lamp.cohort import atomic_output
from lamp.errors import LampError
from lamp.segmentation.instances import (
    AUTOPET_CONNECTIVITY,
    check_binary_mask,
    connected_components,
    voxel_volume_ml,
)

__all__ = [
    "MetricsError",
    "METRIC_COLUMNS",
    "HEADLINE_METRICS",
    "segmentation_metrics",
    "metrics_frame",
    "cohort_metrics",
    "compare_networks",
    "write_metrics_csv",
]

#: Keys of `segmentation_metrics`, in order: the columns of the per-patient table.
METRIC_COLUMNS: tuple[str, ...] = (
    "dice",
    "ref_empty",
    "pred_empty",
    "false_positive_volume_ml",
    "false_negative_volume_ml",
    "n_ref",
    "n_pred",
    "tp_pred",
    "detected_ref",
    "lesion_precision",
    "lesion_recall",
    "ref_volume_ml",
    "pred_volume_ml",
)

#: The cohort numbers to report first (see `cohort_metrics` for why these).
HEADLINE_METRICS: tuple[str, ...] = (
    "dice_mean",
    "fpv_mean_ml",
    "fnv_mean_ml",
    "lesion_precision_pooled",
    "lesion_recall_pooled",
)

# Columns cohort_metrics reads from a per-patient table.
_REQUIRED = (
    "dice",
    "ref_empty",
    "false_positive_volume_ml",
    "false_negative_volume_ml",
    "n_ref",
    "n_pred",
    "tp_pred",
    "detected_ref",
    "lesion_precision",
    "lesion_recall",
)
# Rows of compare_networks: cohort key -> (per-patient column for a paired test, or None;
# which patients pair up: "all", "ref" (reference lesion present), "both" (both values
# defined); higher is better: True / False / None for counts).
_COMPARED: dict[str, tuple[str | None, str, bool | None]] = {
    "n_patients": (None, "all", None),
    "n_ref_positive": (None, "all", None),
    "dice_mean": ("dice", "ref", True),
    "dice_median": (None, "ref", True),
    "fpv_mean_ml": ("false_positive_volume_ml", "all", False),
    "fnv_mean_ml": ("false_negative_volume_ml", "ref", False),
    "lesion_precision_pooled": (None, "all", True),
    "lesion_recall_pooled": (None, "all", True),
    "lesion_precision_mean": ("lesion_precision", "both", True),
    "lesion_recall_mean": ("lesion_recall", "ref", True),
    "n_ref_lesions": (None, "all", None),
    "n_pred_lesions": (None, "all", None),
}
# Patient ids an error message lists.
_MAX_SHOWN = 10


class MetricsError(LampError):
    """Inputs of a segmentation metric or a metrics table are invalid."""


# --------------------------------------------------------------------------------------
# Per patient
# --------------------------------------------------------------------------------------


def _component_hits(
    labels: np.ndarray, n: int, own: np.ndarray, other: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Voxel count of each component and whether it shares a voxel with ``other``.

    Only foreground voxels are counted: ``bincount`` over a whole-body volume would cast
    every voxel to an 8-byte index.
    """
    sizes = np.bincount(labels[own], minlength=n + 1)[1:]
    hit = np.zeros(n, dtype=bool)
    touched = labels[other]
    touched = touched[touched != 0]
    hit[np.unique(touched) - 1] = True
    return sizes, hit


def segmentation_metrics(
    pred_mask: ArrayLike,
    ref_mask: ArrayLike,
    voxel_ml: float,
    *,
    connectivity: int = AUTOPET_CONNECTIVITY,
) -> dict[str, Any]:
    """autoPET metrics and lesion-level detection of one patient.

    Parameters
    ----------
    pred_mask : array_like, shape (i, j, k)
        Predicted lesion mask: bool or 0/1.
    ref_mask : array_like, shape (i, j, k)
        Reference lesion mask on the same grid: bool or 0/1. A reference *instance* map
        (``lesions.nii.gz``, ids 1..J) is passed as ``lesions > 0``: lesions are the
        connected components of the mask, as in autoPET, not the stored ids.
    voxel_ml : float
        Volume of one voxel in ml (``prod(spacing_mm) / 1000``).
    connectivity : {6, 18, 26}, default 18
        Component neighbourhood; 18 is the autoPET choice, the others are for
        sensitivity analyses.

    Returns
    -------
    dict
        Keys `METRIC_COLUMNS`, in that order:

        ``dice`` : float in [0, 1], NaN when the reference is empty.
        ``ref_empty``, ``pred_empty`` : bool, the masks have no voxel.
        ``false_positive_volume_ml``, ``false_negative_volume_ml`` : float, ml.
        ``n_ref``, ``n_pred`` : int, reference lesions / predicted components.
        ``tp_pred`` : int, predicted components overlapping a reference lesion.
        ``detected_ref`` : int, reference lesions overlapped by the prediction.
        ``lesion_precision`` : float, ``tp_pred / n_pred``; NaN when ``pred_empty``.
        ``lesion_recall`` : float, ``detected_ref / n_ref``; NaN when ``ref_empty``.
        ``ref_volume_ml``, ``pred_volume_ml`` : float, ml, total mask volumes.

    Raises
    ------
    MetricsError
        Masks of different shapes, or a bad voxel volume.
    InstanceError
        A mask that is not 3D or not binary, or a connectivity other than 6/18/26.

    Examples
    --------
    >>> ref = np.zeros((8, 8, 8), bool); ref[1:3, 1:3, 1:3] = True
    >>> pred = np.zeros_like(ref); pred[2:4, 1:3, 1:3] = True
    >>> segmentation_metrics(pred, ref, voxel_ml=0.1)["dice"]
    0.5
    """
    pred = check_binary_mask(pred_mask, "pred_mask")
    ref = check_binary_mask(ref_mask, "ref_mask")
    if pred.shape != ref.shape:
        raise MetricsError(
            f"pred_mask and ref_mask must be on the same grid; got shapes {pred.shape} "
            f"and {ref.shape}"
        )
    if voxel_ml is None:
        raise MetricsError("voxel_ml: expected the voxel volume in ml, got None")
    try:
        vox = voxel_volume_ml(voxel_ml)
    except LampError as exc:
        raise MetricsError(str(exc)) from None
    assert vox is not None

    n_pred_vox = int(np.count_nonzero(pred))
    n_ref_vox = int(np.count_nonzero(ref))
    inter = int(np.count_nonzero(pred & ref))
    ref_empty = n_ref_vox == 0
    pred_empty = n_pred_vox == 0
    dice = math.nan if ref_empty else 2.0 * inter / (n_pred_vox + n_ref_vox)

    pred_lab, n_pred = connected_components(pred, connectivity)
    ref_lab, n_ref = connected_components(ref, connectivity)
    pred_sizes, pred_hit = _component_hits(pred_lab, n_pred, pred, ref)
    ref_sizes, ref_hit = _component_hits(ref_lab, n_ref, ref, pred)
    tp_pred = int(pred_hit.sum())
    detected_ref = int(ref_hit.sum())

    return {
        "dice": float(dice),
        "ref_empty": bool(ref_empty),
        "pred_empty": bool(pred_empty),
        "false_positive_volume_ml": float(pred_sizes[~pred_hit].sum()) * vox,
        "false_negative_volume_ml": float(ref_sizes[~ref_hit].sum()) * vox,
        "n_ref": int(n_ref),
        "n_pred": int(n_pred),
        "tp_pred": tp_pred,
        "detected_ref": detected_ref,
        "lesion_precision": tp_pred / n_pred if n_pred else math.nan,
        "lesion_recall": detected_ref / n_ref if n_ref else math.nan,
        "ref_volume_ml": n_ref_vox * vox,
        "pred_volume_ml": n_pred_vox * vox,
    }


def metrics_frame(per_patient: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """The per-patient table: one row per patient, ``patient_id`` then `METRIC_COLUMNS`.

    Parameters
    ----------
    per_patient : mapping of str to dict
        Patient id -> the dict of `segmentation_metrics`.

    Returns
    -------
    pandas.DataFrame
        Rows in the mapping's order, a default RangeIndex.

    Raises
    ------
    MetricsError
        A patient's dict lacks some of `METRIC_COLUMNS`.
    """
    rows = []
    for pid, metrics in per_patient.items():
        missing = [c for c in METRIC_COLUMNS if c not in metrics]
        if missing:
            raise MetricsError(f"patient {pid!r}: metrics lack the key(s) {missing}")
        rows.append({"patient_id": str(pid), **{c: metrics[c] for c in METRIC_COLUMNS}})
    return pd.DataFrame(rows, columns=["patient_id", *METRIC_COLUMNS])


# --------------------------------------------------------------------------------------
# Per cohort
# --------------------------------------------------------------------------------------


def _who(df: pd.DataFrame, rows: np.ndarray) -> str:
    """Patient ids (or row numbers) of the flagged rows, for error messages."""
    if "patient_id" in df.columns:
        names = [str(v) for v in df["patient_id"].to_numpy()[rows][:_MAX_SHOWN]]
    else:
        names = [f"row {i}" for i in np.flatnonzero(rows)[:_MAX_SHOWN]]
    more = f" and {int(rows.sum()) - _MAX_SHOWN} more" if rows.sum() > _MAX_SHOWN else ""
    return ", ".join(names) + more


def _bool_column(df: pd.DataFrame, column: str) -> np.ndarray:
    values = df[column]
    if values.dtype == np.bool_:
        return values.to_numpy()
    arr = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isin(arr, (0.0, 1.0))
    if bad.any():
        raise MetricsError(
            f"per-patient metrics column {column!r}: expected True/False, got "
            f"{sorted({str(v) for v in values[bad]})[:_MAX_SHOWN]} for {_who(df, bad)}"
        )
    return arr == 1.0


def _numeric_column(df: pd.DataFrame, column: str, allow_nan: bool) -> np.ndarray:
    arr = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isinf(arr) | (arr < 0)
    if not allow_nan:
        bad |= np.isnan(arr)
    if bad.any():
        raise MetricsError(
            f"per-patient metrics column {column!r}: expected finite numbers >= 0"
            f"{' (or NaN)' if allow_nan else ''}; bad value(s) for {_who(df, bad)}"
        )
    return arr


def _checked_table(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """The columns `cohort_metrics` needs, checked for type and consistency."""
    if not isinstance(df, pd.DataFrame):
        raise MetricsError(f"per-patient metrics: expected a pandas DataFrame, got {type(df)}")
    missing = [c for c in _REQUIRED if c not in df.columns]
    if missing:
        raise MetricsError(
            f"per-patient metrics: missing column(s) {missing}; expected the columns of "
            "segmentation_metrics (see metrics_frame)"
        )
    if len(df) == 0:
        raise MetricsError("per-patient metrics: the table has no rows")
    cols = {"ref_empty": _bool_column(df, "ref_empty")}
    for c in ("dice", "lesion_precision", "lesion_recall"):
        cols[c] = _numeric_column(df, c, allow_nan=True)
    for c in _REQUIRED:
        if c not in cols:
            cols[c] = _numeric_column(df, c, allow_nan=False)
    ref_empty = cols["ref_empty"]
    # The NaN convention must hold, or the means below would silently change meaning.
    for column, undefined in (
        ("dice", ref_empty),
        ("lesion_recall", ref_empty),
        ("lesion_precision", cols["n_pred"] == 0),
    ):
        wrong = np.isnan(cols[column]) != undefined
        if wrong.any():
            raise MetricsError(
                f"per-patient metrics column {column!r}: must be NaN exactly where it is "
                f"undefined (empty reference for Dice and recall, no predicted component "
                f"for precision); inconsistent for {_who(df, wrong)}"
            )
    wrong = (cols["n_ref"] == 0) != ref_empty
    if wrong.any():
        raise MetricsError(
            f"per-patient metrics: 'ref_empty' must be True exactly where 'n_ref' is 0; "
            f"inconsistent for {_who(df, wrong)}"
        )
    return cols


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else math.nan


def cohort_metrics(per_patient: pd.DataFrame) -> dict[str, float | int]:
    """Summarise per-patient metrics over a cohort.

    Which patients enter which number follows autoPET, where a patient without reference
    lesions (a negative case) contributes only its false positive volume:

    * ``dice_mean`` / ``dice_median`` / ``dice_std``: over patients with a reference
      lesion (``ref_empty`` False); ``dice_std`` with ddof=1.
    * ``fpv_mean_ml``: over all patients (a false positive is possible in every scan).
    * ``fnv_mean_ml``: over patients with a reference lesion (a miss needs a lesion;
      averaging in the structural zeros of negative cases would flatter a network).
    * ``lesion_precision_pooled`` = Σ tp_pred / Σ n_pred and ``lesion_recall_pooled`` =
      Σ detected_ref / Σ n_ref over all patients (every lesion counts once);
      ``lesion_precision_mean`` over patients with a predicted component and
      ``lesion_recall_mean`` over patients with a reference lesion (every patient
      counts once).

    The **headline** (`HEADLINE_METRICS`) is Dice mean, FPV mean, FNV mean and the
    *pooled* lesion precision and recall. Lesion detection asks "how many lesions were
    found", so each lesion should count once; in DLBCL the lesion count ranges from one to
    dozens, and a per-patient mean would weigh a patient's single lesion like another's
    forty, and would drop (NaN) exactly the patients with an empty prediction. The
    per-patient means are reported beside them.

    Parameters
    ----------
    per_patient : pandas.DataFrame
        One row per patient with the columns of `segmentation_metrics` (as built by
        `metrics_frame`, or read back from its CSV); other columns are ignored.

    Returns
    -------
    dict
        ``n_patients``, ``n_ref_positive``, ``n_ref_negative``, ``dice_mean``,
        ``dice_median``, ``dice_std``, ``fpv_mean_ml``, ``fnv_mean_ml``,
        ``lesion_precision_pooled``, ``lesion_recall_pooled``, ``lesion_precision_mean``,
        ``lesion_recall_mean``, ``n_ref_lesions``, ``n_pred_lesions``. A number without
        any patient to average over (e.g. Dice when no patient has a reference lesion)
        is NaN.

    Raises
    ------
    MetricsError
        Missing columns, no rows, bad values, or rows that break the NaN convention
        (e.g. a Dice of 0 for an empty reference).
    """
    c = _checked_table(per_patient)
    positive = ~c["ref_empty"]
    dice = c["dice"][positive]
    has_pred = c["n_pred"] > 0
    return {
        "n_patients": len(per_patient),
        "n_ref_positive": int(positive.sum()),
        "n_ref_negative": int((~positive).sum()),
        "dice_mean": _mean(dice),
        "dice_median": float(np.median(dice)) if dice.size else math.nan,
        "dice_std": float(dice.std(ddof=1)) if dice.size > 1 else math.nan,
        "fpv_mean_ml": _mean(c["false_positive_volume_ml"]),
        "fnv_mean_ml": _mean(c["false_negative_volume_ml"][positive]),
        "lesion_precision_pooled": _ratio(c["tp_pred"].sum(), c["n_pred"].sum()),
        "lesion_recall_pooled": _ratio(c["detected_ref"].sum(), c["n_ref"].sum()),
        "lesion_precision_mean": _mean(c["lesion_precision"][has_pred]),
        "lesion_recall_mean": _mean(c["lesion_recall"][positive]),
        "n_ref_lesions": int(c["n_ref"].sum()),
        "n_pred_lesions": int(c["n_pred"].sum()),
    }


# --------------------------------------------------------------------------------------
# Two networks side by side
# --------------------------------------------------------------------------------------


def _by_patient(df: pd.DataFrame, name: str) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame) or "patient_id" not in df.columns:
        raise MetricsError(
            f"{name}: expected a per-patient DataFrame with a 'patient_id' column "
            "(a paired comparison needs to know which rows are the same patient)"
        )
    ids = df["patient_id"].astype(str)
    dup = ids.duplicated(keep=False).to_numpy()
    if dup.any():
        raise MetricsError(f"{name}: patient ids listed more than once: {_who(df, dup)}")
    return df.assign(patient_id=ids).set_index("patient_id", drop=False)


def _paired_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of paired values; NaN when all pairs are equal."""
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if not np.any(a != b):
        return math.nan
    return float(stats.wilcoxon(a, b, zero_method="wilcox").pvalue)


def compare_networks(
    df_a: pd.DataFrame, df_b: pd.DataFrame, names: Sequence[str] = ("a", "b")
) -> pd.DataFrame:
    """Cohort metrics of two networks on the same patients, side by side.

    Parameters
    ----------
    df_a, df_b : pandas.DataFrame
        Per-patient tables (`metrics_frame`) of the two networks, each with a
        ``patient_id`` column; both must hold the same patients (any row order).
    names : pair of str, default ("a", "b")
        Column names of the two networks, e.g. ``("lamp", "nnunet_plain")``.

    Returns
    -------
    pandas.DataFrame
        Index ``metric`` (the keys of `cohort_metrics`, headline first); columns
        ``names[0]``, ``names[1]``, ``"<a> - <b>"`` (difference), ``p_wilcoxon`` (two-sided
        Wilcoxon signed-rank test of the per-patient values, pairs with zero difference
        dropped; NaN for pooled numbers and counts, which have no per-patient pairs, and
        when every pair is equal) and ``higher_is_better`` (True, False, or None for
        counts).

    Raises
    ------
    MetricsError
        Names that are not two distinct non-empty strings, tables without
        ``patient_id``, duplicate or different patients, or what `cohort_metrics` rejects.
    """
    if (
        isinstance(names, str)
        or len(names) != 2
        or not all(isinstance(n, str) and n for n in names)
        or names[0] == names[1]
    ):
        raise MetricsError(f"names: expected two distinct non-empty strings, got {names!r}")
    name_a, name_b = names
    a = _by_patient(df_a, name_a)
    b = _by_patient(df_b, name_b)
    only_a = sorted(set(a.index) - set(b.index))
    only_b = sorted(set(b.index) - set(a.index))
    if only_a or only_b:
        raise MetricsError(
            f"compare_networks: both tables must hold the same patients; only in "
            f"{name_a!r}: {only_a[:_MAX_SHOWN]}, only in {name_b!r}: {only_b[:_MAX_SHOWN]}"
        )
    b = b.loc[a.index]
    summary_a, summary_b = cohort_metrics(a), cohort_metrics(b)
    cols_a, cols_b = _checked_table(a), _checked_table(b)
    # a reference lesion is a property of the patient, not of the network
    if np.any(cols_a["ref_empty"] != cols_b["ref_empty"]):
        wrong = cols_a["ref_empty"] != cols_b["ref_empty"]
        raise MetricsError(
            "compare_networks: the two tables disagree on which patients have a reference "
            f"lesion ('ref_empty'), so they were not scored on the same reference: "
            f"{_who(a, wrong)}"
        )
    positive = ~cols_a["ref_empty"]

    order = list(HEADLINE_METRICS) + [k for k in _COMPARED if k not in HEADLINE_METRICS]
    rows = []
    for key in order:
        column, pairs, higher = _COMPARED[key]
        p = math.nan
        if column is not None:
            va, vb = cols_a[column], cols_b[column]
            if pairs == "ref":
                va, vb = va[positive], vb[positive]
            p = _paired_p(va, vb)
        rows.append(
            {
                "metric": key,
                name_a: summary_a[key],
                name_b: summary_b[key],
                f"{name_a} - {name_b}": summary_a[key] - summary_b[key],
                "p_wilcoxon": p,
                "higher_is_better": higher,
            }
        )
    return pd.DataFrame(rows).set_index("metric")


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


def write_metrics_csv(path: str | Path, df: pd.DataFrame) -> Path:
    """Write a metrics table as CSV, atomically.

    Parameters
    ----------
    path : str or Path
        Output file (e.g. ``WORK/segmentation/metrics.csv``); its folder is created.
    df : pandas.DataFrame
        A per-patient table (`metrics_frame`, written without its RangeIndex) or a
        `compare_networks` table (written with its ``metric`` index). NaN is written as
        an empty cell, which `pandas.read_csv` reads back as NaN; floats keep full
        precision.

    Returns
    -------
    Path
        ``path``; the file appears complete or not at all.
    """
    if not isinstance(df, pd.DataFrame):
        raise MetricsError(f"write_metrics_csv: expected a pandas DataFrame, got {type(df)}")
    path = Path(path)
    index = not isinstance(df.index, pd.RangeIndex)
    with atomic_output(path) as tmp:
        df.to_csv(tmp, index=index)
    return path
