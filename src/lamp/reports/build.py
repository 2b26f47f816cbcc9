"""``lamp report``: the cohort report and a few patient reports in one call."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lamp.reports.common import ReportError, check_patients, clinical_table, oof_risks

__all__ = ["Reports", "default_patients", "write_reports"]


@dataclass
class Reports:
    """What `write_reports` wrote, and why some patient reports were skipped."""

    cohort: Path | None
    patients: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def default_patients(work: str | Path, n: int = 3, variant: str = "full") -> list[str]:
    """The ``n`` highest and ``n`` lowest out-of-fold risks (PFS, else OS), highest first.

    Empty when ``WORK/prognosis/oof_risk.csv`` has no row of ``variant``.
    """
    oof = oof_risks(Path(work), variant)
    if oof is None:
        return []
    for endpoint in ("pfs", "os"):
        part = oof[oof["endpoint"] == endpoint]
        if len(part):
            ranked = part.sort_values(["risk", "patient_id"], ascending=[False, True])
            ids = ranked["patient_id"].tolist()
            return list(dict.fromkeys(ids[:n] + ids[-n:] if n > 0 else []))
    return []


def write_reports(
    work: str | Path,
    cohort: str | Path,
    patients: Sequence[str] | None = None,
    out: str | Path | None = None,
    n_default: int = 3,
    variant: str = "full",
    cohort_page: bool = True,
    tsne_points: int = 2000,
    progress: Callable[[str], None] | None = None,
) -> Reports:
    """The cohort report and patient reports (``out`` default ``WORK/reports``).

    Parameters
    ----------
    work, cohort : str or Path
    patients : sequence of str, optional
        Patient reports to write; each must be in ``clinical.csv`` and have features and
        a trained model, else `ReportError`. Default: the `default_patients` (none, with
        a note, when the model has not been trained).
    out : str or Path, optional
    n_default : int, default 3
        How many highest- and lowest-risk patients get a report by default.
    variant : str, default "full"
    cohort_page : bool, default True
        Write ``cohort.html``.
    tsne_points : int, default 2000
        Organ feature vectors in the cohort report's t-SNE.
    progress : callable, optional

    Raises
    ------
    ReportError
        An unknown patient id (checked before anything is written), or a requested
        patient report that cannot be made.
    """
    from lamp.reports.cohort_report import cohort_report
    from lamp.reports.patient_report import patient_report, trained_endpoints

    work, cohort = Path(work), Path(cohort)
    out = Path(out) if out is not None else work / "reports"
    res = Reports(cohort=None)
    if patients:
        chosen = check_patients(clinical_table(cohort), list(patients), cohort)
        if not trained_endpoints(work, variant):
            raise ReportError(
                f"{work / 'prognosis'}: no trained LAMP model (variant {variant!r}) for the "
                f"patient report; run lamp train --work {work} --cohort {cohort} first"
            )
    else:
        chosen = default_patients(work, n_default, variant)
        if not chosen:
            res.notes.append(
                f"no patient reports: {work / 'prognosis' / 'oof_risk.csv'} has no risks of "
                f"variant {variant!r} (run lamp train)"
            )
        elif not trained_endpoints(work, variant):
            res.notes.append("no patient reports: no checkpoints in WORK/prognosis/checkpoints")
            chosen = []
        else:
            missing = [p for p in chosen if not (work / "features" / f"{p}.npz").is_file()]
            if missing:
                res.notes.append(f"no feature file, no report: {', '.join(missing)}")
            chosen = [p for p in chosen if p not in missing]
    if cohort_page:
        res.cohort = cohort_report(
            work, cohort, out, variant=variant, tsne_points=tsne_points, progress=progress
        )
    for pid in chosen:
        res.patients[pid] = patient_report(work, cohort, pid, out, variant, progress)
    return res
