"""The per-patient report: ``WORK/reports/patients/<patient_id>.html``.

What the model says about one patient, beside what the clinic already knows:

* the clinical indices (IPI and its risk group, Ann Arbor stage, the IPI factors) from
  ``clinical.csv``, and the observed outcome when the cohort has it;
* per endpoint (PFS, OS; those with trained checkpoints): the risk and the risk group
  against the cohort (high above the median of the cohort's out-of-fold risks), a
  histogram of the cohort's risks with the patient marked, and the predicted survival
  curve of the fold ensemble with the spread of the fold models;
* the lesion attention map (PET MIP, paper Fig. 2C) and the lesions ranked by ABMLA
  attention with their site, metabolic parameters and the organs each attends to
  (LACF).

Which risk is whose: a cohort patient's **risk group** uses its out-of-fold risk (from
the fold model that did not train on it), compared with the other out-of-fold risks.
The survival curve, the ensemble risk and the attention come from
`lamp.model.train.predict_patient`, which applies every fold model; for a cohort patient
four of the five trained on this patient, so these are in-sample views of the model
(the report says so). For a patient outside the training set they are all honest.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lamp.cohort import case_path, has_outcome, write_text_atomic
from lamp.reports import html as H
from lamp.reports.common import (
    ReportError,
    check_patients,
    clinical_table,
    lesion_map_path,
    lesion_table,
    oof_risks,
    package_versions,
    patient_risks,
)

__all__ = ["IPI_GROUPS", "ipi_group", "trained_endpoints", "fold_survival", "patient_report"]

_ENDPOINT_LABEL = {"pfs": "PFS", "os": "OS"}
#: IPI score -> risk group (Shipp et al., NEJM 1993).
IPI_GROUPS = {
    0: "low",
    1: "low",
    2: "low-intermediate",
    3: "high-intermediate",
    4: "high",
    5: "high",
}


def ipi_group(score: int) -> str:
    """The IPI risk group of a score 0-5."""
    return IPI_GROUPS.get(int(score), "unknown")


def trained_endpoints(work: Path, variant: str = "full") -> list[str]:
    """Endpoints with fold checkpoints ``WORK/prognosis/checkpoints/<endpoint>/<variant>``."""
    base = Path(work) / "prognosis" / "checkpoints"
    return [e for e in ("pfs", "os") if any((base / e / variant).glob("seed*_fold*.pt"))]


def fold_survival(
    work: Path, features_npz: Path, endpoint: str, variant: str, seed: int
) -> np.ndarray:
    """Each fold model's predicted S(t) on the time grid of `predict_patient`.

    Returns
    -------
    ndarray, shape (n_models, m)
        Row i: fold model i's survival at ``survival_months`` of `predict_patient`
        (same seed, same models, same step rule), whose mean is its ``survival``.
    """
    from lamp.model.batching import load_features
    from lamp.model.train import load_checkpoint, predict

    folder = Path(work) / "prognosis" / "checkpoints" / endpoint / variant
    paths = sorted(folder.glob(f"seed{seed}_fold*.pt"))
    feat = load_features(features_npz)
    models = [load_checkpoint(p)[0] for p in paths]
    finite = sorted({float(e) for m in models for e in m.bin_edges[1:-1]})
    grid = np.array([0.0, *finite])
    curves = []
    for m in models:
        p = predict(m, [feat])[0]
        idx = np.searchsorted(m.bin_edges[1:-1], grid, side="right")
        curves.append(np.concatenate([[1.0], p["survival"]])[idx])
    return np.asarray(curves)


def _clinical_block(row: pd.Series) -> str:
    items: dict[str, Any] = {
        "IPI": f"{int(row['ipi'])} ({ipi_group(row['ipi'])} risk)",
        "Ann Arbor stage": ["I", "II", "III", "IV"][int(row["ann_arbor"]) - 1],
        "Age (years)": f"{float(row['age']):.0f}",
        "Sex": row["sex"],
        "ECOG performance status": int(row["ecog"]),
        "LDH / upper limit of normal": f"{float(row['ldh_ratio']):.2f}",
        "Extranodal sites": int(row["extranodal_sites"]),
    }
    if pd.notna(row.get("pfs_months")):
        pev = "event" if int(row["pfs_event"]) else "censored"
        oev = "death" if int(row["os_event"]) else "censored"
        items["Observed PFS"] = f"{float(row['pfs_months']):.1f} months ({pev})"
        items["Observed OS"] = f"{float(row['os_months']):.1f} months ({oev})"
    else:
        items["Observed outcome"] = "not recorded"
    return H.key_values(items, "Clinical indices (clinical.csv)")


def _badge(group: str) -> str:
    cls = {"high": "high", "low": "low"}.get(group, "none")
    return f'<span class="badge {cls}">{H.esc(group)} risk</span>'


def _lesion_rows(pred: dict[str, Any], table: pd.DataFrame | None) -> pd.DataFrame:
    from lamp.reports.cohort_report import lesion_site

    info = table.set_index("lesion_id") if table is not None and len(table) else None
    rows = []
    for rank, les in enumerate(pred["lesions"], start=1):
        lid = int(les["lesion_id"])
        row: dict[str, Any] = {
            "rank": rank,
            "lesion": f"L{lid}",
            "attention": f"{les['attention']:.3f} ± {les['attention_sd']:.3f}",
        }
        if info is not None and lid in info.index:
            r = info.loc[lid]
            row["site"] = lesion_site(str(r["organ"]), str(r["nodal_region"]))
            row["volume (ml)"] = float(r["volume_ml"])
            row["SUVmax"] = float(r["suvmax"])
            row["SUVpeak"] = float(r["suvpeak"])
            row["TLG (g)"] = float(r["tlg"])
        tops = les.get("top_organs") or []
        row["organs attended (LACF)"] = ", ".join(f"{n} {w:.2f}" for n, w in tops)
        rows.append(row)
    return pd.DataFrame(rows)


def _mip(
    work: Path, cohort: Path, pid: str, pred: dict[str, Any], table: pd.DataFrame | None,
    figdir: Path, endpoint: str,
) -> str:  # fmt: skip
    from lamp.images import load_nifti
    from lamp.reports.cohort_report import lesion_site
    from lamp.reports.mip import attention_mip_figure

    pet_path = case_path(cohort, pid, "pet")
    les_path = lesion_map_path(work, cohort, pid)
    if not pet_path.is_file():
        return H.not_available("Attention map (no PET image)", f"expected {pet_path}")
    if les_path is None:
        return H.not_available(
            "Attention map (no lesion instance map)", "lamp segment predict or lamp features"
        )
    pet, aff = load_nifti(pet_path)
    inst, _ = load_nifti(les_path)
    if inst.shape != pet.shape:
        return H.not_available(
            f"Attention map ({les_path} is not on the PET grid)", "lamp features"
        )
    info = table.set_index("lesion_id") if table is not None and len(table) else None
    attention, labels = {}, {}
    for les in pred["lesions"]:
        lid = int(les["lesion_id"])
        attention[lid] = float(les["attention"])
        site = ""
        if info is not None and lid in info.index:
            site = " " + lesion_site(str(info.at[lid, "organ"]), str(info.at[lid, "nodal_region"]))
        tops = les.get("top_organs") or []
        to = f" -> attends {tops[0][0]}" if tops else ""
        labels[lid] = f"L{lid}{site}{to}"
    path = attention_mip_figure(
        figdir / f"{pid}_{endpoint}_attention_mip.png", pet, aff, inst, attention, labels,
        title=f"{pid}: {_ENDPOINT_LABEL[endpoint]} model, lesions coloured by ABMLA attention",
    )  # fmt: skip
    return H.figure(
        path,
        f"PET maximum-intensity projection (SUV 0-10, inverted) with each lesion coloured by "
        f"its attention score; numbers = attention rank. Lesion map: {les_path.name}.",
        760,
    )


def patient_report(
    work: str | Path,
    cohort: str | Path,
    patient_id: str,
    out: str | Path | None = None,
    variant: str = "full",
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write ``patients/<patient_id>.html`` (module doc); returns its path.

    Parameters
    ----------
    work, cohort : str or Path
    patient_id : str
        A patient of ``COHORT/clinical.csv``.
    out : str or Path, optional
        Output folder, default ``WORK/reports``; the page goes to ``out/patients/``.
    variant : str, default "full"
        The LAMP variant whose fold models are applied.
    progress : callable, optional

    Raises
    ------
    ReportError
        Unknown patient id; no trained checkpoints under ``WORK/prognosis``; no feature
        file ``WORK/features/<patient_id>.npz``.
    """
    from lamp.model.train import predict_patient
    from lamp.reports.figures import risk_histogram_figure, survival_curve_figure

    work, cohort = Path(work), Path(cohort)
    out = Path(out) if out is not None else work / "reports"
    figdir = out / "patients" / "figures"
    say = progress or (lambda _: None)
    clinical = clinical_table(cohort)
    check_patients(clinical, [patient_id], cohort)
    endpoints = trained_endpoints(work, variant)
    if not endpoints:
        raise ReportError(
            f"{work / 'prognosis' / 'checkpoints'}: no trained fold models of variant "
            f"{variant!r} (expected <endpoint>/{variant}/seed<s>_fold<k>.pt); run lamp train "
            f"--work {work} --cohort {cohort} first"
        )
    features = work / "features" / f"{patient_id}.npz"
    if not features.is_file():
        raise ReportError(
            f"{features}: feature file of patient {patient_id} not found; run lamp features"
        )
    say(f"patient {patient_id}")
    row = clinical.set_index("patient_id").loc[patient_id]
    oof = oof_risks(work, variant)
    table = lesion_table(features)
    model_items: dict[str, str] = {}
    endpoint_sections = []
    for endpoint in endpoints:
        label = _ENDPOINT_LABEL[endpoint]
        pred = predict_patient(work, features, endpoint, variant)
        cohort_r = patient_risks(oof, endpoint) if oof is not None else pd.Series(dtype=float)
        if patient_id in cohort_r.index:
            risk, source = float(cohort_r[patient_id]), "out-of-fold"
        else:
            risk, source = pred["risk_mean"], "fold ensemble (patient not in the out-of-fold file)"
        if len(cohort_r):
            median = float(np.median(cohort_r.to_numpy()))
            group = "high" if risk > median else "low"
            pct = 100.0 * float(np.mean(cohort_r.to_numpy() <= risk))
            where = f"{pct:.0f}th percentile of {len(cohort_r)} patients, median {median:.3f}"
        else:
            group, where = "unknown", "no cohort out-of-fold risks (prognosis/oof_risk.csv)"
        model_items[f"{label} risk group"] = f"{group} risk ({where})"
        model_items[f"{label} risk ({source})"] = f"{risk:.3f}"
        model_items[f"{label} risk, fold ensemble"] = (
            f"{pred['risk_mean']:.3f} ± {pred['risk_sd']:.3f} ({pred['n_models']} models)"
        )
        figs = []
        if len(cohort_r):
            hist = risk_histogram_figure(
                figdir / f"{patient_id}_{endpoint}_risk.png", cohort_r.to_numpy(), risk,
                title=f"{label}: this patient among the cohort",
            )  # fmt: skip
            figs.append(H.figure(hist, f"{label} risk: cohort out-of-fold risks ({source})", 460))
        per_model = fold_survival(work, features, endpoint, variant, pred["seed"])
        surv = survival_curve_figure(
            figdir / f"{patient_id}_{endpoint}_survival.png",
            {label: (pred["survival_months"], pred["survival"], per_model)},
            title=f"Predicted {label} (fold ensemble, seed {pred['seed']})",
        )
        figs.append(
            H.figure(
                surv,
                f"Predicted {label}: mean of {pred['n_models']} fold models, band = their range.",
                460,
            )
        )
        lesions = _lesion_rows(pred, table)
        body = f"<h3>{H.esc(label)} {_badge(group)}</h3>"
        body += '<div class="grid">' + "".join(figs) + "</div>"
        if pred["lesions"]:
            body += _mip(work, cohort, patient_id, pred, table, figdir, endpoint)
            body += H.table(
                lesions, caption=f"{label}: lesions ranked by ABMLA attention (mean ± sd over "
                "fold models)", digits=2,
            )  # fmt: skip
        else:
            body += '<p class="muted">No lesion detected: the model sees the anatomy only.</p>'
        endpoint_sections.append(body)
    overview = (
        '<div class="grid"><div>'
        + _clinical_block(row)
        + "</div><div>"
        + H.key_values(model_items, f"LAMP ({variant} model)")
        + "</div></div>"
    )
    caveat = (
        '<p class="muted">Risk group: the out-of-fold risk (from the fold model that did not '
        "train on this patient) against the median of the cohort's out-of-fold risks; "
        "high = above the median. The survival curves, the ensemble risk and the attention "
        "apply all fold models; for a patient of the training cohort most of them trained on "
        "this patient, so these are in-sample views. Research use only: not a clinical "
        "decision aid.</p>"
    )
    provenance = H.key_values(
        {
            "Features": str(features),
            "Lesion map": str(lesion_map_path(work, cohort, patient_id) or "not found"),
            "Checkpoints": str(work / "prognosis" / "checkpoints"),
            "Endpoints": ", ".join(_ENDPOINT_LABEL[e] for e in endpoints),
            "lamp": package_versions(("lamp-pet",))["lamp-pet"],
            "Outcome data": "yes"
            if bool(has_outcome(clinical[clinical["patient_id"] == patient_id]).iloc[0])
            else "no",
        },
        "Inputs",
    )
    sections = [
        H.section("Clinical indices and the model's view", overview + caveat, "overview"),
        H.section("Model outputs by endpoint", "".join(endpoint_sections), "endpoints"),
        H.section("Provenance", provenance, "provenance"),
    ]
    text = H.page(f"LAMP patient report: {patient_id}", sections, f"Cohort {cohort.name}")
    return write_text_atomic(out / "patients" / f"{patient_id}.html", text)
