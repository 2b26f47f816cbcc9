"""Metabolic PET parameters per patient, their Cox baseline, and automatic-vs-manual agreement.

Known (paper Table 1, its reference 34 and the Frood et al. 2021 review [1]_): the
baseline metabolic parameters of DLBCL are the total metabolic tumour volume (TMTV), the
total lesion glycolysis (TLG), SUVmax, SUVpeak, the number of lesions and the
dissemination features Dmax, Dmaxbulk and SDmax [2]_ [3]_; "manual" uses the reference
lesion masks, "automatic" the segmentation network's masks.

Choices (documented here as reference/baselines.md asks):

* the parameters come from the lesion table (`lamp.features.lesion_table`) of
  `lamp.baselines.lesions.cohort_lesion_tables`, so the lesions are exactly LAMP's;
* a patient without lesions has TMTV = TLG = 0, SUVmax = SUVpeak = 0 (no measurable
  disease), 0 lesions and Dmax = Dmaxbulk = SDmax = 0;
* one Cox proportional-hazards model per training fold on all parameters (lifelines
  ``CoxPHFitter``, ridge penalty 0.1, because the parameters are strongly collinear:
  TMTV/TLG, SUVmax/SUVpeak, Dmax/SDmax); every parameter is log1p-transformed (all are
  >= 0 and right-skewed) and standardised with the training fold's mean and standard
  deviation only; the risk is the log partial hazard ``x·beta``. Methods
  ``"Metabolic (manual)"`` and ``"Metabolic (automatic)"``;
* SDmax needs the body surface area, from ``height_cm`` and ``weight_kg`` of
  ``clinical.csv`` (Du Bois [4]_); when a patient lacks them SDmax is NaN in
  ``parameters.csv`` and left out of the Cox model (the ``config.json`` says so);
* agreement of automatic with manual parameters: Pearson and Spearman correlation,
  ICC(2,1) (absolute agreement) and ICC(3,1) (consistency) [5]_ [6]_, and the mean
  difference (automatic - manual), in ``WORK/baselines/metabolic_agreement.json``.

References
----------
.. [1] Frood R, Burton C, Tsoumpas C, et al. Baseline PET/CT imaging parameters for
   prediction of treatment outcome in Hodgkin and diffuse large B cell lymphoma: a
   systematic review. Eur J Nucl Med Mol Imaging 2021;48(10):3198-3220.
.. [2] Cottereau AS, Nioche C, Dirand AS, et al. 18F-FDG PET dissemination features in
   diffuse large B-cell lymphoma are predictive of outcome. J Nucl Med 2020;61(1):40-45.
   (Dmax, Dmaxbulk: largest distance between lesion centroids, and from the bulkiest
   lesion.)
.. [3] Cottereau AS, Meignan M, Nioche C, et al. Risk stratification in diffuse large
   B-cell lymphoma using lesion dissemination and metabolic tumor burden calculated from
   baseline PET/CT. Ann Oncol 2021;32(3):404-411. (SDmax = Dmax / BSA, in m^-1.)
.. [4] Du Bois D, Du Bois EF. A formula to estimate the approximate surface area if
   height and weight be known. Arch Intern Med 1916;17:863-871.
.. [5] Shrout PE, Fleiss JL. Intraclass correlations: uses in assessing rater
   reliability. Psychol Bull 1979;86(2):420-428.
.. [6] McGraw KO, Wong SP. Forming inferences about some intraclass correlation
   coefficients. Psychol Methods 1996;1(1):30-46.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

from lamp.baselines.common import BaselineError, Split, cross_validate
from lamp.baselines.lesions import MASKS, cohort_lesion_tables
from lamp.baselines.staging import require_lesion_masks
from lamp.cohort import CohortError, read_clinical, write_text_atomic

__all__ = [
    "PARAMETERS",
    "PARAMETER_COLUMNS",
    "du_bois_bsa",
    "patient_parameters",
    "metabolic_parameters",
    "cohort_metabolic_parameters",
    "icc",
    "parameter_agreement",
    "metabolic_agreement",
    "MetabolicCox",
    "fit_metabolic_cox",
    "metabolic_method_name",
    "run_metabolic",
]

#: The per-patient parameters, in ``parameters.csv`` order (units in the names).
PARAMETERS: tuple[str, ...] = (
    "tmtv_ml",
    "tlg_g",
    "suvmax",
    "suvpeak",
    "n_lesions",
    "dmax_mm",
    "dmaxbulk_mm",
    "sdmax_per_m",
)
#: Columns of ``WORK/baselines/metabolic_<masks>/parameters.csv``.
PARAMETER_COLUMNS: tuple[str, ...] = ("patient_id", *PARAMETERS, "bsa_m2")

# Lesion-table columns the parameters need.
_NEEDED = (
    "patient_id",
    "volume_ml",
    "tlg",
    "suvmax",
    "suvpeak",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
)
_CENTROID = ["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]
# Plausible adult ranges, to catch metres for centimetres or pounds for kilograms.
_HEIGHT_CM = (100.0, 250.0)
_WEIGHT_KG = (25.0, 350.0)
# Ridge penalty of the Cox model (lifelines ``penalizer``, l1_ratio 0).
_PENALIZER = 0.1


# --------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------


def du_bois_bsa(weight_kg: ArrayLike, height_cm: ArrayLike) -> np.ndarray:
    """Body surface area by Du Bois and Du Bois (1916) [4]_.

    ``BSA = 0.007184 * W^0.425 * H^0.725`` with W in kg and H in cm.

    Parameters
    ----------
    weight_kg, height_cm : array_like
        NaN stays NaN.

    Returns
    -------
    ndarray of float64, m²
    """
    w = np.asarray(weight_kg, dtype=np.float64)
    h = np.asarray(height_cm, dtype=np.float64)
    return 0.007184 * w**0.425 * h**0.725


def _distances(c: np.ndarray) -> np.ndarray:
    return np.linalg.norm(c[:, None, :] - c[None, :, :], axis=-1)


def patient_parameters(lesion_rows: pd.DataFrame, bsa_m2: float = math.nan) -> dict[str, float]:
    """The metabolic parameters of one patient from its lesion-table rows.

    Parameters
    ----------
    lesion_rows : DataFrame
        One row per lesion with ``volume_ml``, ``tlg`` (g), ``suvmax``, ``suvpeak`` and
        the centroid ``centroid_{x,y,z}_mm`` (`lamp.features.lesion_table`).
    bsa_m2 : float, optional
        Body surface area (m²) for SDmax; NaN gives SDmax NaN.

    Returns
    -------
    dict
        `PARAMETERS`: ``tmtv_ml`` = Σ volume; ``tlg_g`` = Σ TLG (Σ MTV x SUVmean);
        ``suvmax``, ``suvpeak`` = their maxima over the lesions; ``n_lesions``;
        ``dmax_mm`` = largest distance between two lesion centroids [2]_ (0 with fewer
        than 2 lesions); ``dmaxbulk_mm`` = largest distance from the centroid of the
        bulkiest lesion (largest volume; the first in table order on ties) to another
        lesion's centroid [2]_; ``sdmax_per_m`` = Dmax (m) / BSA (m²) [3]_.
    """
    n = len(lesion_rows)
    if n == 0:
        dmax, dmaxbulk = 0.0, 0.0
        out = {"tmtv_ml": 0.0, "tlg_g": 0.0, "suvmax": 0.0, "suvpeak": 0.0}
    else:
        c = lesion_rows[_CENTROID].to_numpy(dtype=np.float64)
        d = _distances(c)
        bulk = int(np.argmax(lesion_rows["volume_ml"].to_numpy(dtype=np.float64)))
        dmax, dmaxbulk = float(d.max()), float(d[bulk].max())
        out = {
            "tmtv_ml": float(lesion_rows["volume_ml"].sum()),
            "tlg_g": float(lesion_rows["tlg"].sum()),
            "suvmax": float(lesion_rows["suvmax"].max()),
            "suvpeak": float(lesion_rows["suvpeak"].max()),
        }
    out |= {
        "n_lesions": float(n),
        "dmax_mm": dmax,
        "dmaxbulk_mm": dmaxbulk,
        # Cottereau 2021 [3]_ report SDmax in m^-1: Dmax in metres over BSA in m²
        "sdmax_per_m": dmax / 1000.0 / bsa_m2 if bsa_m2 > 0 else math.nan,
    }
    return out


def _check_body(clinical: pd.DataFrame, source: str) -> tuple[np.ndarray, list[str]]:
    """BSA (m²) per row of ``clinical`` (NaN where unknown) and notes on what is missing."""
    notes: list[str] = []
    absent = [c for c in ("height_cm", "weight_kg") if c not in clinical.columns]
    if absent:
        notes.append(
            f"{source}: no column(s) {absent}: BSA unknown, SDmax is NaN and left out of the "
            "Cox model"
        )
        return np.full(len(clinical), np.nan), notes
    problems = []
    values = {}
    for col, (lo, hi), unit in (
        ("height_cm", _HEIGHT_CM, "cm"),
        ("weight_kg", _WEIGHT_KG, "kg"),
    ):
        v = pd.to_numeric(clinical[col], errors="coerce").to_numpy(dtype=np.float64)
        text = clinical[col].notna().to_numpy() & np.isnan(v)
        out = ~np.isnan(v) & ((v < lo) | (v > hi))
        for r in np.flatnonzero(text | out):
            cell = clinical[col].iloc[r]
            got = repr(cell) if isinstance(cell, str) else f"{float(cell):g}"
            problems.append(
                f"patient {clinical['patient_id'].iloc[r]}, column {col!r}: expected {unit} in "
                f"[{lo:g}, {hi:g}], got {got}"
            )
        values[col] = v
    if problems:
        raise BaselineError(f"{source}: " + "; ".join(problems[:10]))
    bsa = du_bois_bsa(values["weight_kg"], values["height_cm"])
    unknown = clinical["patient_id"][np.isnan(bsa)].tolist()
    if unknown:
        notes.append(
            f"{source}: height_cm or weight_kg empty for {len(unknown)} patient(s) "
            f"{unknown[:10]}: SDmax is NaN for them and left out of the Cox model"
        )
    return bsa, notes


def metabolic_parameters(
    lesions: pd.DataFrame, clinical: pd.DataFrame, source: str = "clinical.csv"
) -> tuple[pd.DataFrame, list[str]]:
    """The parameters of every patient of ``clinical`` from a cohort's lesion table.

    Parameters
    ----------
    lesions : DataFrame
        Lesion table (`lamp.features.LESION_TABLE_COLUMNS`) of the cohort; a patient
        without rows has no lesion.
    clinical : DataFrame
        ``patient_id`` and, when known, ``height_cm`` and ``weight_kg`` (for SDmax).
    source : str
        Named in messages.

    Returns
    -------
    parameters : DataFrame
        `PARAMETER_COLUMNS`, one row per patient of ``clinical``, in its order.
    notes : list of str
        What could not be computed (missing height/weight).

    Raises
    ------
    BaselineError
        Missing lesion-table columns; implausible height/weight (e.g. metres for cm).
    """
    missing = [c for c in _NEEDED if c not in lesions.columns]
    if missing:
        raise BaselineError(
            f"lesion table: expected columns {list(_NEEDED)}, missing {missing} "
            "(see lamp.features.LESION_TABLE_COLUMNS)"
        )
    bsa, notes = _check_body(clinical, source)
    groups = {str(pid): rows for pid, rows in lesions.groupby("patient_id", sort=False)}
    empty = lesions.iloc[:0]
    rows = []
    for pid, b in zip(clinical["patient_id"].astype(str), bsa, strict=True):
        rows.append(
            {"patient_id": pid, **patient_parameters(groups.get(pid, empty), b), "bsa_m2": b}
        )
    return pd.DataFrame(rows, columns=list(PARAMETER_COLUMNS)), notes


def _read_clinical(cohort: Path) -> pd.DataFrame:
    try:
        return read_clinical(cohort / "clinical.csv")
    except CohortError as exc:
        raise BaselineError(str(exc)) from None


def cohort_metabolic_parameters(
    cohort: str | Path,
    work: str | Path,
    masks: str = "manual",
    lesions: pd.DataFrame | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """Parameters of the cohort's patients; written to ``WORK/baselines/metabolic_<masks>/``.

    Parameters
    ----------
    cohort, work : str or Path
    masks : {"manual", "automatic"}
        Reference lesion masks or the segmentation network's (``lamp segment predict``).
    lesions : DataFrame, optional
        A precomputed lesion table instead of
        `lamp.baselines.lesions.cohort_lesion_tables`.
    progress : callable, optional

    Returns
    -------
    parameters : DataFrame
        `PARAMETER_COLUMNS`, one row per patient of ``clinical.csv``; also
        ``parameters.csv``.
    notes : list of str

    Raises
    ------
    BaselineError
        Unknown ``masks``; missing mask files (listing how many, the first, and for
        "automatic" that ``lamp segment predict`` makes them); a bad clinical table.
    """
    if masks not in MASKS:
        raise BaselineError(f"lesion masks: expected one of {MASKS}, got {masks!r}")
    cohort, work = Path(cohort), Path(work)
    clinical = _read_clinical(cohort)
    if lesions is None:
        ids = clinical["patient_id"].tolist()
        require_lesion_masks(cohort, work, ids, masks)
        lesions = cohort_lesion_tables(cohort, work, masks, ids, progress=progress)
    params, notes = metabolic_parameters(lesions, clinical, str(cohort / "clinical.csv"))
    out = work / "baselines" / f"metabolic_{masks}" / "parameters.csv"
    write_text_atomic(out, params.to_csv(index=False, lineterminator="\n"))
    return params, notes


# --------------------------------------------------------------------------------------
# Agreement of automatic with manual parameters
# --------------------------------------------------------------------------------------


def icc(ratings: ArrayLike, form: str = "2,1") -> float:
    """Intraclass correlation of n subjects rated by the same k raters (methods).

    Two-way ANOVA mean squares (Shrout & Fleiss 1979 [5]_, Table 1; McGraw & Wong 1996
    [6]_, cases 2A and 3A), with ``Y`` the n x k ratings and ``M`` its grand mean:

    * ``BMS = k Σ_i (mean_i. - M)² / (n - 1)`` (between subjects),
    * ``JMS = n Σ_j (mean_.j - M)² / (k - 1)`` (between raters),
    * ``EMS = (Σ (Y - M)² - SS_subjects - SS_raters) / ((n - 1)(k - 1))`` (residual),
    * ICC(2,1) = (BMS - EMS) / (BMS + (k - 1) EMS + k (JMS - EMS) / n): two-way random
      effects, absolute agreement, single rater (McGraw & Wong ICC(A,1));
    * ICC(3,1) = (BMS - EMS) / (BMS + (k - 1) EMS): two-way mixed, consistency, single
      rater (McGraw & Wong ICC(C,1)).

    Parameters
    ----------
    ratings : array_like, shape (n, k)
        n >= 2 subjects, k >= 2 raters, finite.
    form : {"2,1", "3,1"}

    Returns
    -------
    float
        NaN when the denominator is 0 (all ratings equal).

    Raises
    ------
    BaselineError
        A bad shape, non-finite values or an unknown form.
    """
    y = np.asarray(ratings, dtype=np.float64)
    if y.ndim != 2 or y.shape[0] < 2 or y.shape[1] < 2:
        raise BaselineError(f"icc: expected ratings of shape (n >= 2, k >= 2), got {y.shape}")
    if not np.all(np.isfinite(y)):
        raise BaselineError("icc: expected finite ratings, got NaN/inf")
    if form not in ("2,1", "3,1"):
        raise BaselineError(f"icc: expected form '2,1' or '3,1', got {form!r}")
    n, k = y.shape
    grand = y.mean()
    ss_rows = k * float(((y.mean(axis=1) - grand) ** 2).sum())
    ss_cols = n * float(((y.mean(axis=0) - grand) ** 2).sum())
    ss_err = float(((y - grand) ** 2).sum()) - ss_rows - ss_cols
    bms = ss_rows / (n - 1)
    jms = ss_cols / (k - 1)
    ems = ss_err / ((n - 1) * (k - 1))
    if form == "2,1":
        den = bms + (k - 1) * ems + k * (jms - ems) / n
    else:
        den = bms + (k - 1) * ems
    return float((bms - ems) / den) if den > 0 else math.nan


def _finite_or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def parameter_agreement(manual: pd.DataFrame, automatic: pd.DataFrame) -> dict[str, Any]:
    """Per parameter: correlation, ICC and mean difference of automatic vs manual.

    Parameters
    ----------
    manual, automatic : DataFrame
        `PARAMETER_COLUMNS` tables (`metabolic_parameters`); matched on ``patient_id``,
        patients with a NaN value of a parameter left out of that parameter.

    Returns
    -------
    dict
        ``{"n_patients": n, "parameters": {name: {"n", "pearson_r", "spearman_rho",
        "icc_2_1", "icc_3_1", "mean_difference", "manual_mean", "automatic_mean"}}}``;
        a statistic that is undefined (fewer than 3 patients, a constant column) is
        None.
    """
    both = manual.merge(automatic, on="patient_id", suffixes=("_manual", "_automatic"))
    out: dict[str, Any] = {"n_patients": len(both), "parameters": {}}
    for name in PARAMETERS:
        a = both[f"{name}_automatic"].to_numpy(dtype=np.float64)
        m = both[f"{name}_manual"].to_numpy(dtype=np.float64)
        ok = np.isfinite(a) & np.isfinite(m)
        a, m = a[ok], m[ok]
        entry: dict[str, Any] = {
            "n": int(ok.sum()),
            "pearson_r": None,
            "spearman_rho": None,
            "icc_2_1": None,
            "icc_3_1": None,
            "mean_difference": _finite_or_none(float(np.mean(a - m))) if len(a) else None,
            "manual_mean": _finite_or_none(float(np.mean(m))) if len(m) else None,
            "automatic_mean": _finite_or_none(float(np.mean(a))) if len(a) else None,
        }
        # correlations of a constant column are undefined (scipy warns): leave them None
        if len(a) >= 3 and np.ptp(a) > 0 and np.ptp(m) > 0:
            entry["pearson_r"] = _finite_or_none(stats.pearsonr(m, a)[0])
            entry["spearman_rho"] = _finite_or_none(stats.spearmanr(m, a)[0])
        if len(a) >= 2:
            pair = np.column_stack([m, a])
            entry["icc_2_1"] = _finite_or_none(icc(pair, "2,1"))
            entry["icc_3_1"] = _finite_or_none(icc(pair, "3,1"))
        out["parameters"][name] = entry
    return out


def metabolic_agreement(
    cohort: str | Path,
    work: str | Path,
    manual: pd.DataFrame | None = None,
    automatic: pd.DataFrame | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Agreement of the automatic with the manual parameters, written to JSON.

    Parameters
    ----------
    cohort, work : str or Path
    manual, automatic : DataFrame, optional
        Precomputed lesion tables; by default `cohort_lesion_tables` for each masks.
    progress : callable, optional

    Returns
    -------
    dict
        `parameter_agreement`'s result, also in ``WORK/baselines/metabolic_agreement.json``.

    Raises
    ------
    BaselineError
        Missing automatic masks ("run `lamp segment predict`") or reference masks.
    """
    params = {}
    for masks, table in (("manual", manual), ("automatic", automatic)):
        params[masks], _ = cohort_metabolic_parameters(cohort, work, masks, table, progress)
    result = {
        "reference": "manual (cases/<id>/lesions.nii.gz)",
        "compared": "automatic (WORK/segmentation/lamp/instances/<id>.nii.gz)",
        **parameter_agreement(params["manual"], params["automatic"]),
    }
    write_text_atomic(
        Path(work) / "baselines" / "metabolic_agreement.json", json.dumps(result, indent=2) + "\n"
    )
    return result


# --------------------------------------------------------------------------------------
# The Cox baseline
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetabolicCox:
    """A Cox model on log1p-transformed, standardised metabolic parameters.

    Attributes
    ----------
    columns : tuple of str
        The parameters used (constant ones in the training fold are dropped).
    mean, scale : ndarray, shape (p,)
        Of log1p(parameter) over the training fold.
    coef : ndarray, shape (p,)
        Cox coefficients on the standardised scale.
    """

    columns: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray

    def risk(self, parameters: pd.DataFrame) -> np.ndarray:
        """Log partial hazard ``z·beta`` (higher = worse) of each row of ``parameters``."""
        x = np.log1p(parameters[list(self.columns)].to_numpy(dtype=np.float64))
        return ((x - self.mean) / self.scale) @ self.coef


def fit_metabolic_cox(
    parameters: pd.DataFrame,
    time: ArrayLike,
    event: ArrayLike,
    columns: Sequence[str] = PARAMETERS,
    penalizer: float = _PENALIZER,
) -> MetabolicCox:
    """Fit the Cox baseline on one training fold.

    Parameters
    ----------
    parameters : DataFrame
        The training patients' parameters (`PARAMETERS` columns), finite and >= 0.
    time : array_like, months
    event : array_like, 0/1
    columns : sequence of str
        Parameters to use.
    penalizer : float, default 0.1
        lifelines ridge penalty on the standardised coefficients.

    Returns
    -------
    MetabolicCox

    Raises
    ------
    BaselineError
        Non-finite or negative parameters, no event in the fold, lifelines failing to
        converge.
    """
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError, ConvergenceWarning

    raw = parameters[list(columns)].to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(raw)) or (raw < 0).any():
        raise BaselineError(
            f"metabolic Cox: expected finite parameters >= 0 in {list(columns)}, got NaN, inf "
            "or negative values"
        )
    event = np.asarray(event, dtype=np.float64)
    if event.sum() == 0:
        raise BaselineError(
            "metabolic Cox: the training fold has no event; a Cox model cannot be fitted"
        )
    x = np.log1p(raw)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    keep = scale > 1e-12  # a parameter constant over the fold carries no information
    cols = tuple(c for c, k in zip(columns, keep, strict=True) if k)
    if not cols:
        raise BaselineError("metabolic Cox: every parameter is constant in the training fold")
    z = (x[:, keep] - mean[keep]) / scale[keep]
    df = pd.DataFrame(z, columns=list(cols))
    df["time"] = np.asarray(time, dtype=np.float64)
    df["event"] = event
    cph = CoxPHFitter(penalizer=penalizer)
    try:
        with warnings.catch_warnings():
            # a small fold can make lifelines warn about near-separation; the ridge
            # penalty keeps the fit finite, and the risks are checked downstream
            warnings.simplefilter("ignore", ConvergenceWarning)
            cph.fit(df, duration_col="time", event_col="event")
    except ConvergenceError as exc:
        raise BaselineError(f"metabolic Cox: lifelines did not converge: {exc}") from None
    coef = cph.params_.reindex(list(cols)).to_numpy(dtype=np.float64)
    return MetabolicCox(cols, mean[keep], scale[keep], coef)


def metabolic_method_name(masks: str) -> str:
    """``"Metabolic (manual)"`` or ``"Metabolic (automatic)"``."""
    if masks not in MASKS:
        raise BaselineError(f"lesion masks: expected one of {MASKS}, got {masks!r}")
    return f"Metabolic ({masks})"


def run_metabolic(
    work: str | Path,
    cohort: str | Path,
    masks: str = "manual",
    endpoints: Sequence[str] = ("pfs", "os"),
    seeds: Sequence[int] = (0,),
    lesions: pd.DataFrame | None = None,
    *,
    penalizer: float = _PENALIZER,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Cross-validate the Cox baseline on the metabolic parameters of ``masks``.

    Computes the parameters (`cohort_metabolic_parameters`, written to
    ``WORK/baselines/metabolic_<masks>/parameters.csv``), then for every fold fits
    `fit_metabolic_cox` on the training patients and scores the held-out ones through
    `lamp.baselines.common.cross_validate` (method `metabolic_method_name`).

    Parameters
    ----------
    work, cohort : str or Path
    masks : {"manual", "automatic"}
    endpoints : sequence of {"pfs", "os"}
    seeds : sequence of int
        The fit is deterministic; one seed is enough.
    lesions : DataFrame, optional
        A precomputed lesion table (`lamp.features.LESION_TABLE_COLUMNS`).
    penalizer : float, default 0.1
    progress : callable, optional

    Returns
    -------
    DataFrame
        Out-of-fold risks (`lamp.baselines.common.OOF_COLUMNS`), also in
        ``WORK/baselines/<method>/oof_risk.csv``.

    Raises
    ------
    BaselineError
        See `cohort_metabolic_parameters` and `fit_metabolic_cox`.
    """
    params, notes = cohort_metabolic_parameters(cohort, work, masks, lesions, progress)
    columns = [c for c in PARAMETERS if params[c].notna().all()]
    by_id = params.set_index("patient_id")

    def fit_predict(split: Split) -> np.ndarray:
        train = by_id.loc[split.train["patient_id"]]
        model = fit_metabolic_cox(
            train, split.train["time"], split.train["event"], columns, penalizer
        )
        return model.risk(by_id.loc[split.test["patient_id"]])

    settings = {
        "masks": masks,
        "parameters": columns,
        "transform": "log1p, standardised on the training fold",
        "model": "lifelines CoxPHFitter",
        "penalizer": penalizer,
        "l1_ratio": 0.0,
        "risk": "log partial hazard",
        "notes": notes,
    }
    try:
        return cross_validate(
            metabolic_method_name(masks),
            fit_predict,
            work,
            cohort,
            endpoints,
            seeds,
            settings,
            progress,
        )
    except CohortError as exc:
        raise BaselineError(str(exc)) from None
