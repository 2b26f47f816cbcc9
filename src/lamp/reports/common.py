"""What the reports read from a cohort and a work folder, in one place.

Every reader here either returns the data or ``None`` (an optional input that is not
there yet: the report then says "not available: run ..."), or raises `ReportError` for
an input a user asked for explicitly (a patient id that is not in the cohort, a patient
report without a trained model).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lamp.cohort import case_path, read_clinical
from lamp.errors import LampError

__all__ = [
    "ReportError",
    "VERSION_PACKAGES",
    "CasePaths",
    "case_paths",
    "package_versions",
    "read_json",
    "clinical_table",
    "check_patients",
    "oof_risks",
    "patient_risks",
    "lesion_table",
    "lesion_map_path",
    "prediction_path",
]

#: Distributions whose versions the cohort report lists (importlib.metadata names).
VERSION_PACKAGES: tuple[str, ...] = (
    "lamp-pet",
    "numpy",
    "scipy",
    "pandas",
    "torch",
    "nnunetv2",
    "scikit-learn",
    "scikit-survival",
    "lifelines",
    "matplotlib",
    "nibabel",
    "SimpleITK",
    "pyradiomics",
)


class ReportError(LampError):
    """A report that cannot be made from the inputs asked for; the message says which."""


@dataclass(frozen=True)
class CasePaths:
    """The files the figures of one patient come from (None where absent)."""

    pet: Path | None
    lesions: Path | None
    features: Path | None


def package_versions(names: tuple[str, ...] = VERSION_PACKAGES) -> dict[str, str]:
    """``{distribution: version}``, "not installed" for those absent."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def read_json(path: Path) -> Any | None:
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def clinical_table(cohort: Path) -> pd.DataFrame:
    """``COHORT/clinical.csv`` (checked by `lamp.cohort.read_clinical`)."""
    return read_clinical(Path(cohort) / "clinical.csv")


def check_patients(clinical: pd.DataFrame, patients: list[str], cohort: Path) -> list[str]:
    """Return ``patients`` if all are in the clinical table, else raise `ReportError`."""
    known = set(clinical["patient_id"])
    unknown = [p for p in patients if p not in known]
    if unknown:
        some = ", ".join(sorted(known)[:5])
        raise ReportError(
            f"--patient {' '.join(unknown)}: not in {Path(cohort) / 'clinical.csv'} "
            f"(column patient_id; it holds {len(known)} patients, e.g. {some})"
        )
    return list(dict.fromkeys(patients))


def oof_risks(work: Path, variant: str = "full") -> pd.DataFrame | None:
    """Out-of-fold risks of one LAMP variant, mean over seeds: patient_id, endpoint, fold, risk.

    None when ``WORK/prognosis/oof_risk.csv`` is missing or holds no row of ``variant``.
    """
    path = Path(work) / "prognosis" / "oof_risk.csv"
    if not path.is_file():
        return None
    df = pd.read_csv(path, dtype={"patient_id": str})
    need = {"patient_id", "endpoint", "variant", "fold", "risk"}
    if not need <= set(df.columns):
        raise ReportError(f"{path}: expected columns {sorted(need)}, got {list(df.columns)}")
    df = df[df["variant"] == variant]
    if df.empty:
        return None
    return df.groupby(["patient_id", "endpoint"], as_index=False, sort=False).agg(
        fold=("fold", "first"), risk=("risk", "mean")
    )


def patient_risks(oof: pd.DataFrame, endpoint: str) -> pd.Series:
    """The cohort's out-of-fold risks of one endpoint, indexed by patient_id."""
    part = oof[oof["endpoint"] == endpoint]
    return pd.Series(part["risk"].to_numpy(np.float64), index=part["patient_id"].to_numpy())


def lesion_table(features_npz: Path) -> pd.DataFrame | None:
    """The lesion table stored in a features file, or None when the file has none.

    Files written by `lamp.features.extract_case_features` carry it; minimal feature
    files (the keys of `lamp.model.batching.FEATURE_KEYS` only) do not.
    """
    from lamp.features import FeatureError, load_case_features

    try:
        with np.load(features_npz, allow_pickle=False) as z:
            if "lesion_table" not in z.files:
                return None
        return load_case_features(features_npz).table
    except (OSError, ValueError, FeatureError):
        return None


def _features_meta(features_npz: Path) -> dict[str, Any]:
    try:
        with np.load(features_npz, allow_pickle=False) as z:
            return json.loads(str(z["meta"])) if "meta" in z.files else {}
    except (OSError, ValueError, KeyError):
        return {}


def lesion_map_path(work: Path, cohort: Path, patient_id: str) -> Path | None:
    """The lesion instance map whose ids the patient's features use, if it can be found.

    In order: the map named in the features file's ``meta.sources.lesions``; the
    predicted instances ``WORK/segmentation/lamp/instances/<id>.nii.gz``; the reference
    lesions ``COHORT/cases/<id>/lesions.nii.gz``.
    """
    feats = Path(work) / "features" / f"{patient_id}.npz"
    candidates = []
    if feats.is_file():
        src = _features_meta(feats).get("sources", {}).get("lesions")
        if isinstance(src, str) and src not in ("", "array"):
            candidates.append(Path(src))
    candidates.append(Path(work) / "segmentation" / "lamp" / "instances" / f"{patient_id}.nii.gz")
    candidates.append(case_path(cohort, patient_id, "lesions"))
    return next((p for p in candidates if p.is_file()), None)


def prediction_path(work: Path, patient_id: str, net: str = "lamp") -> Path | None:
    """``WORK/segmentation/<net>/pred/<id>.nii.gz`` if it exists."""
    path = Path(work) / "segmentation" / net / "pred" / f"{patient_id}.nii.gz"
    return path if path.is_file() else None


def case_paths(work: Path, cohort: Path, patient_id: str) -> CasePaths:
    """PET, lesion instance map and features file of a patient (None where absent)."""
    pet = case_path(cohort, patient_id, "pet")
    feats = Path(work) / "features" / f"{patient_id}.npz"
    return CasePaths(
        pet=pet if pet.is_file() else None,
        lesions=lesion_map_path(work, cohort, patient_id),
        features=feats if feats.is_file() else None,
    )
