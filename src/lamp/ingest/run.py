"""``lamp ingest``: a real cohort in, the cohort layout of DESIGN.md out, resumably.

What is written into ``COHORT/``:

``ingest.json``
    The request (input, layout, clinical table, column map, SUL) and the LAMP version,
    written first. A rerun into the same folder must name the same input, layout and
    ``--sul``; then it resumes.
``cases/<patient_id>/{pet,ct,organs,lesions}.nii.gz``
    Per patient, all on the PET grid: PET in SUVbw (SUL with ``--sul``) float32, CT in HU
    int16 (resampled), organs uint8 ('total' ids), lesions uint16 (instances). The
    optional two only where the input has them. Each file is written atomically.
``ingest_log/<patient_id>.json``
    Written last for a patient, so its presence says the patient is finished (a rerun
    skips it): the SUV conversion used, notes, warnings, the number of lesions.
``clinical.csv``
    The checked table, rows of the ready patients in the table's order.
``folds.csv``
    The one 5-fold split (`lamp.cohort.make_folds`, stratified by PFS), written once when
    every patient is ready and there are at least 5.
``ingest_summary.json``
    The summary that is also printed.

One failing patient does not stop the others; the run's summary lists each patient's
problem, and `IngestSummary.ok` is False when any patient failed.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lamp import __version__
from lamp.cohort import (
    CohortError,
    case_path,
    has_outcome,
    make_folds,
    pfs_strata,
    read_folds,
    write_folds,
    write_text_atomic,
)
from lamp.images import save_nifti
from lamp.ingest.case import prepare_case
from lamp.ingest.clinical import load_column_map, read_clinical_table, write_clinical
from lamp.ingest.common import IngestError
from lamp.ingest.layouts import LAYOUTS, PatientSource, discover, load_patient
from lamp.ingest.suv import Body, sul_factor

__all__ = [
    "IngestRequest",
    "PatientResult",
    "IngestSummary",
    "ingest_cohort",
    "SETTINGS_FILE",
    "SUMMARY_FILE",
    "LOG_DIR",
    "N_FOLDS",
]

#: The request, saved beside the output.
SETTINGS_FILE = "ingest.json"
#: The summary of the last run.
SUMMARY_FILE = "ingest_summary.json"
#: One JSON record per finished patient.
LOG_DIR = "ingest_log"
#: Folds of the split written for a complete cohort.
N_FOLDS = 5
# Settings that change what the images mean: a rerun must repeat them to resume.
_BINDING = ("input", "layout", "sul")


@dataclass(frozen=True)
class IngestRequest:
    """What to ingest: the arguments of ``lamp ingest``.

    Attributes
    ----------
    input : Path
        The input folder, in ``layout``.
    layout : str
        One of `lamp.ingest.layouts.LAYOUTS`.
    clinical : Path
        The clinical table (CSV, TSV or Excel).
    out : Path
        The cohort folder to write (new, or one this command wrote before).
    column_map : Path or None
        YAML/JSON column map of the table (`lamp.ingest.clinical`).
    sul : bool
        Write SUL (lean-body-mass SUV, Janmahasatian) instead of SUVbw.
    """

    input: Path
    layout: str
    clinical: Path
    out: Path
    column_map: Path | None = None
    sul: bool = False

    def check(self) -> None:
        """Refuse a request that cannot run, naming the argument."""
        if self.layout not in LAYOUTS:
            raise IngestError(
                f"--layout: expected one of {', '.join(LAYOUTS)}, got {self.layout!r}"
            )
        if not Path(self.input).is_dir():
            raise IngestError(f"--input {self.input}: folder not found")
        if not Path(self.clinical).is_file():
            raise IngestError(f"--clinical {self.clinical}: file not found")
        if self.column_map is not None and not Path(self.column_map).is_file():
            raise IngestError(f"--column-map {self.column_map}: file not found")
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise IngestError(f"--out {self.out}: exists and is not a folder")
        out, inp = Path(self.out).resolve(), Path(self.input).resolve()
        if out == inp or inp in out.parents:
            raise IngestError(
                f"--out {self.out}: inside --input {self.input}; write the cohort elsewhere "
                "(the input is never modified)"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": str(Path(self.input).resolve()),
            "layout": self.layout,
            "clinical": str(Path(self.clinical).resolve()),
            "column_map": str(Path(self.column_map).resolve()) if self.column_map else None,
            "sul": bool(self.sul),
            "pet_units": "SUL (lean body mass, Janmahasatian)" if self.sul else "SUVbw",
        }


@dataclass
class PatientResult:
    """What happened to one patient.

    Attributes
    ----------
    patient_id : str
    status : str
        ``"ready"`` (ingested now), ``"done"`` (finished by an earlier run) or ``"failed"``.
    problem : str or None
        Why it failed.
    warnings, notes : list of str
    has_outcome : bool or None
        Whether the table gives its survival outcome (None without a table row).
    """

    patient_id: str
    status: str
    problem: str | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    has_outcome: bool | None = None

    @property
    def ready(self) -> bool:
        return self.status in ("ready", "done")


@dataclass
class IngestSummary:
    """The outcome of a run: patients in, ready, problems by patient.

    Attributes
    ----------
    request : IngestRequest
    results : list of PatientResult
        One per patient (images or table row), sorted by id.
    notes : list of str
        Cohort-level notes (folds written or not, ...).
    """

    request: IngestRequest
    results: list[PatientResult]
    notes: list[str] = field(default_factory=list)

    @property
    def patients_in(self) -> int:
        return len(self.results)

    @property
    def ready(self) -> list[PatientResult]:
        return [r for r in self.results if r.ready]

    @property
    def failed(self) -> list[PatientResult]:
        return [r for r in self.results if not r.ready]

    @property
    def ok(self) -> bool:
        """True when every patient is ready (the command then exits 0)."""
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        ready = self.ready
        return {
            "request": self.request.to_dict(),
            "lamp_version": __version__,
            "patients_in": self.patients_in,
            "ready": len(ready),
            "ingested_now": sum(r.status == "ready" for r in ready),
            "failed": len(self.failed),
            "with_outcome": sum(bool(r.has_outcome) for r in ready),
            "notes": list(self.notes),
            "patients": [
                {
                    "patient_id": r.patient_id,
                    "status": r.status,
                    "problem": r.problem,
                    "warnings": r.warnings,
                    "has_outcome": r.has_outcome,
                }
                for r in self.results
            ],
        }

    def to_text(self) -> str:
        """The summary as printed by ``lamp ingest``."""
        req = self.request
        ready = self.ready
        now = sum(r.status == "ready" for r in ready)
        outcome = sum(bool(r.has_outcome) for r in ready)
        skipped_liver = sum(
            any(n.startswith("liver SUV check skipped") for n in r.notes) for r in ready
        )
        lines = [
            f"ingest {req.layout} {req.input} -> {req.out}",
            f"patients in        {self.patients_in}",
            f"patients ready     {len(ready)}  ({now} ingested now, {len(ready) - now} "
            "finished earlier)",
            f"patients failed    {len(self.failed)}",
            f"with outcome       {outcome} of {len(ready)} ready  ({len(ready) - outcome} "
            "without: kept for segmentation, left out of survival modelling)",
            f"PET units          {'SUL (lean body mass)' if req.sul else 'SUVbw'}",
        ]
        if skipped_liver:
            lines.append(
                f"liver SUV check    skipped for {skipped_liver} patient(s) (no organ mask)"
            )
        lines += self.notes
        if self.failed:
            lines.append("problems by patient:")
            lines += [_item(r.patient_id, r.problem or "failed") for r in self.failed]
        warned = [r for r in self.results if r.warnings]
        if warned:
            lines.append("warnings by patient:")
            lines += [_item(r.patient_id, w) for r in warned for w in r.warnings]
        if self.failed:
            lines.append(
                f"{len(self.failed)} patient(s) failed: fix the inputs named above and rerun "
                "the same command (finished patients are kept)"
            )
        return "\n".join(lines)


def _item(pid: str, text: str) -> str:
    body = text.replace("\n", "\n      ")
    return f"  {pid}: {body}"


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


def _check_out(req: IngestRequest) -> None:
    """Refuse to mix runs: an existing cohort must come from the same input and layout."""
    out = Path(req.out)
    path = out / SETTINGS_FILE
    settings = req.to_dict()
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            old = {}
        diff = [k for k in _BINDING if old.get(k) != settings[k]]
        if diff:
            raise IngestError(
                f"--out {out}: holds a cohort ingested with other settings "
                f"({', '.join(f'{k}: {old.get(k)!r}' for k in diff)}; see {path}); "
                "choose a new folder or delete this one"
            )
    elif out.exists() and any(out.iterdir()):
        raise IngestError(
            f"--out {out}: the folder is not empty and holds no {SETTINGS_FILE}; refusing to "
            "write a cohort into it (choose a new folder)"
        )


def _finished(out: Path, pid: str) -> dict[str, Any] | None:
    """The record of a patient finished by an earlier run, or None."""
    log = out / LOG_DIR / f"{pid}.json"
    if not log.is_file():
        return None
    if not all(case_path(out, pid, k).is_file() for k in ("pet", "ct")):
        return None
    try:
        record = json.loads(log.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    if not all(case_path(out, pid, k).is_file() for k in record.get("files", [])):
        return None
    return record


def _body_for_sul(dicom_body: Body | None, row: pd.Series, pid: str) -> Body:
    """Weight, height and sex for SUL: the DICOM header first, then the clinical table."""

    def table(col: str) -> float | None:
        if col not in row.index or pd.isna(row[col]):
            return None
        try:
            return float(row[col])
        except (TypeError, ValueError):
            raise IngestError(
                f"patient {pid!r}: clinical column {col!r}: expected a number, got {row[col]!r}"
            ) from None

    weight = dicom_body.weight_kg if dicom_body else None
    height = dicom_body.height_m if dicom_body else None
    sex = dicom_body.sex if dicom_body else None
    sources = []
    if weight is None:
        weight = table("weight_kg")
        sources.append("weight_kg")
    if height is None:
        cm = table("height_cm")
        height = cm / 100.0 if cm is not None else None
        sources.append("height_cm")
    if sex is None:
        sex = str(row["sex"]) if "sex" in row.index else None
        sources.append("sex")
    where = dicom_body.source if dicom_body else f"patient {pid!r}"
    if sources:
        where += f" (clinical table columns {', '.join(sources)})"
    return Body(weight_kg=weight, height_m=height, sex=sex, source=where)


def _ingest_one(req: IngestRequest, source: PatientSource, row: pd.Series) -> PatientResult:
    """Read, check and write one patient; raises on any problem (nothing written then)."""
    pid = source.patient_id
    loaded = load_patient(source)
    case = prepare_case(loaded.pet, loaded.ct, loaded.organs, loaded.lesions)
    notes = loaded.notes + case.notes
    suv_info = dict(loaded.suv)
    pet = case.pet
    if req.sul:
        body = _body_for_sul(loaded.body, row, pid)
        factor = sul_factor(body)
        pet = (pet * factor).astype("float32")
        suv_info["sul_factor_lbm_over_weight"] = factor
        suv_info["sul_body"] = {
            "weight_kg": body.weight_kg,
            "height_m": body.height_m,
            "sex": body.sex,
        }

    out = Path(req.out)
    files = ["ct", "pet"]
    # optional masks: write the ones the input has, remove stale ones of an earlier try
    for kind, data, dtype in (
        ("organs", case.organs, "uint8"),
        ("lesions", case.lesions, "uint16"),
    ):
        path = case_path(out, pid, kind)
        if data is None:
            path.unlink(missing_ok=True)
        else:
            save_nifti(path, data, case.affine, dtype)
            files.append(kind)
    save_nifti(case_path(out, pid, "ct"), case.ct, case.affine, "int16")
    save_nifti(case_path(out, pid, "pet"), pet, case.affine, "float32")
    record = {
        "patient_id": pid,
        "layout": source.layout,
        "sources": {
            k: str(v)
            for k, v in (
                ("folder", source.folder),
                ("pet", source.pet),
                ("ct", source.ct),
                ("organs", source.organs),
                ("lesions", source.lesions),
            )
            if v is not None
        },
        "files": sorted(files),
        "pet_units": "SUL" if req.sul else "SUVbw",
        "suv": suv_info,
        "shape": list(case.pet.shape),
        "n_lesions": case.n_lesions,
        "liver_suv_mean": case.liver_suv_mean,
        "warnings": case.warnings,
        "notes": notes,
        "lamp_version": __version__,
    }
    # the record last: its presence marks the patient as finished
    write_text_atomic(out / LOG_DIR / f"{pid}.json", json.dumps(record, indent=1) + "\n")
    return PatientResult(pid, "ready", warnings=list(case.warnings), notes=notes)


def ingest_cohort(
    request: IngestRequest,
    progress: bool | Callable[[int, int], None] = True,
) -> IngestSummary:
    """Ingest a real cohort into the cohort layout (module docstring), resumably.

    Parameters
    ----------
    request : IngestRequest
        Input folder and layout, clinical table, output cohort, options.
    progress : bool or callable
        True: a tqdm progress bar on stderr; False: none; a callable is called as
        ``progress(done, total)`` after each patient.

    Returns
    -------
    IngestSummary
        Per patient: ready (now or earlier) or failed with its problem, warnings
        (e.g. the liver SUV check), notes. ``summary.ok`` is False when any failed.

    Raises
    ------
    IngestError, CohortError
        Problems that stop the whole run before any image is read: a bad argument, a
        clinical table with problems (all listed), a column map that does not fit, an
        input folder without the layout's shape, an output folder of another run.
    """
    request.check()
    clinical = read_clinical_table(request.clinical, load_column_map(request.column_map))
    sources = {s.patient_id: s for s in discover(request.input, request.layout)}
    _check_out(request)
    out = Path(request.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {**request.to_dict(), "lamp_version": __version__}
    write_text_atomic(out / SETTINGS_FILE, json.dumps(settings, indent=1) + "\n")

    rows = {
        pid: row for pid, (_, row) in zip(clinical["patient_id"], clinical.iterrows(), strict=True)
    }
    outcome = dict(zip(clinical["patient_id"], has_outcome(clinical), strict=True))
    patient_ids = sorted(set(sources) | set(rows))

    bar = None
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(
            total=len(patient_ids),
            desc="ingest",
            unit="patient",
            file=sys.stderr,
            dynamic_ncols=True,
        )
    results: list[PatientResult] = []
    try:
        for done, pid in enumerate(patient_ids, start=1):
            results.append(_one_patient(request, pid, sources.get(pid), rows.get(pid)))
            results[-1].has_outcome = bool(outcome[pid]) if pid in outcome else None
            if bar is not None:
                bar.update(1)
            elif callable(progress):
                progress(done, len(patient_ids))
    finally:
        if bar is not None:
            bar.close()

    summary = IngestSummary(request, results)
    ready_ids = {r.patient_id for r in summary.ready}
    table = clinical[clinical["patient_id"].isin(ready_ids)].reset_index(drop=True)
    if len(table):
        write_clinical(out / "clinical.csv", table)
    else:
        (out / "clinical.csv").unlink(missing_ok=True)
    summary.notes += _write_folds(out, table, complete=summary.ok)
    write_text_atomic(out / SUMMARY_FILE, json.dumps(summary.to_dict(), indent=1) + "\n")
    return summary


def _one_patient(
    req: IngestRequest, pid: str, source: PatientSource | None, row: pd.Series | None
) -> PatientResult:
    """One patient, never raising: any problem becomes the result's ``problem``."""
    if source is None:
        return PatientResult(
            pid,
            "failed",
            problem=f"in the clinical table but no images found under {req.input} "
            f"(layout {req.layout}; see docs/ingest.md for the expected names)",
        )
    if source.problem is not None:
        return PatientResult(pid, "failed", problem=source.problem)
    if row is None:
        return PatientResult(
            pid,
            "failed",
            problem=f"images found ({source.folder}) but no row with patient_id {pid!r} in "
            f"the clinical table {req.clinical}",
        )
    record = _finished(Path(req.out), pid)
    if record is not None:
        return PatientResult(
            pid,
            "done",
            warnings=list(record.get("warnings", [])),
            notes=list(record.get("notes", [])),
        )
    try:
        return _ingest_one(req, source, row)
    except (IngestError, CohortError) as exc:
        return PatientResult(pid, "failed", problem=str(exc))
    except Exception as exc:  # one patient's unexpected failure must not stop the others
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return PatientResult(
            pid,
            "failed",
            problem=f"unexpected {type(exc).__name__}: {exc} (at {Path(where.filename).name}:"
            f"{where.lineno}); please report this with the input's description",
        )


def _write_folds(out: Path, table: pd.DataFrame, complete: bool) -> list[str]:
    """Write ``folds.csv`` once, for a complete cohort of >= 5 patients."""
    path = out / "folds.csv"
    ids = table["patient_id"].tolist()
    if path.is_file():
        try:
            read_folds(path, ids)
        except CohortError:
            return [
                f"folds.csv        does not match the ready patients; delete {path} and "
                "rerun to split again"
            ]
        return []
    if not complete:
        return ["folds.csv        not written until every patient is ready"]
    if len(ids) < N_FOLDS:
        return [
            f"folds.csv        not written: {len(ids)} patients, {N_FOLDS} folds need {N_FOLDS}"
        ]
    write_folds(path, make_folds(ids, pfs_strata(table), N_FOLDS, seed=0))
    return [f"folds.csv        written ({N_FOLDS} folds, stratified by PFS event)"]
