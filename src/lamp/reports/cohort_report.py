"""The cohort report: ``WORK/reports/cohort.html``.

One self-contained page (`lamp.reports.html`) with what a clinician-researcher reads
after a run: the cohort, Tables 1 and 2, the Kaplan–Meier curves and log-rank tests,
where the model's lesion attention goes (by lesion site), the t-SNE map of the organ
features (Fig. 2D), the segmentation metrics with overlays of a few patients, and the
configuration and package versions that made the results. A section whose inputs do
not exist yet says "not available: run ..." with the command that makes them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from lamp.cohort import case_path, has_outcome, write_text_atomic
from lamp.reports import html as H
from lamp.reports.common import (
    clinical_table,
    lesion_table,
    package_versions,
    prediction_path,
    read_json,
)

__all__ = ["cohort_report", "attention_by_site", "lesion_site"]

_ENDPOINT_LABEL = {"pfs": "PFS", "os": "OS"}


def lesion_site(organ: str, nodal_region: str) -> str:
    """A lesion's site for tables: its organ group, or "node: <region>" for nodal lesions."""
    organ = (organ or "").strip()
    if organ in ("", "none"):
        return f"node: {nodal_region}" if nodal_region else "node / soft tissue"
    return organ


def attention_by_site(attention: pd.DataFrame, tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Mean ABMLA attention of the lesions of each site, relative to uniform attention.

    Parameters
    ----------
    attention : DataFrame
        Rows of ``WORK/prognosis/lesion_attention.csv`` of one endpoint, variant and seed
        (patient_id, lesion_id, attention, organ_1).
    tables : dict
        patient_id -> lesion table (`lamp.features.lesion_table`).

    Returns
    -------
    DataFrame
        site, lesions, patients, relative attention (mean of a_j x J over the site's
        lesions, J = the patient's lesion count: 1 = what equal weights would give),
        share ranked first (fraction of the site's lesions that were their patient's
        most attended), most attended organ (LACF, the commonest ``organ_1``); sorted by
        relative attention, highest first.
    """
    rows = []
    for pid, part in attention.groupby("patient_id", sort=False):
        tab = tables.get(str(pid))
        if tab is None:
            continue
        info = tab.set_index("lesion_id")
        n = len(part)
        for r in part.itertuples(index=False):
            lid = int(r.lesion_id)
            if lid in info.index:
                site = lesion_site(str(info.at[lid, "organ"]), str(info.at[lid, "nodal_region"]))
            else:
                site = "unknown"
            rows.append(
                {
                    "site": site,
                    "patient_id": pid,
                    "relative": float(r.attention) * n,
                    "first": int(r.rank) == 1 if hasattr(r, "rank") else False,
                    "organ_1": str(getattr(r, "organ_1", "") or ""),
                }
            )
    if not rows:
        return pd.DataFrame(
            columns=["site", "lesions", "patients", "relative attention", "share ranked first",
                     "most attended organ (LACF)"]
        )  # fmt: skip
    df = pd.DataFrame(rows)
    df["organ_1"] = df["organ_1"].replace("nan", "")

    def commonest(s: pd.Series) -> str:
        s = s[s != ""]
        return str(s.value_counts().index[0]) if len(s) else ""

    out = df.groupby("site").agg(
        lesions=("relative", "size"),
        patients=("patient_id", "nunique"),
        relative=("relative", "mean"),
        first=("first", "mean"),
        organ=("organ_1", commonest),
    )
    out = out.sort_values(["relative", "lesions"], ascending=[False, False]).reset_index()
    return out.rename(
        columns={
            "relative": "relative attention",
            "first": "share ranked first",
            "organ": "most attended organ (LACF)",
        }
    )


def _cohort_section(clinical: pd.DataFrame) -> str:
    with_outcome = clinical[has_outcome(clinical)]
    items = {
        "Patients": len(clinical),
        "With outcome data": len(with_outcome),
        "PFS events": int(with_outcome["pfs_event"].astype(int).sum()),
        "OS events": int(with_outcome["os_event"].astype(int).sum()),
        "Median age (years)": f"{clinical['age'].median():.0f}",
        "Median PFS time, all patients (months)": f"{with_outcome['pfs_months'].median():.1f}"
        if len(with_outcome)
        else "n/a",
    }
    ipi = clinical["ipi"].value_counts().sort_index()
    stage = clinical["ann_arbor"].value_counts().sort_index()
    dist = H.table(
        [[f"IPI {k}", int(v)] for k, v in ipi.items()]
        + [[f"Ann Arbor {k}", int(v)] for k, v in stage.items()],
        ["Index", "Patients"],
        caption="Clinical indices",
    )
    return f'<div class="grid"><div>{H.key_values(items, "Cohort")}</div><div>{dist}</div></div>'


def _table_section(results: Path, name: str, label: str, run: str) -> str:
    md, csv = results / f"{name}.md", results / f"{name}.csv"
    if csv.is_file() and pd.read_csv(csv).empty:  # written, but no method had risks
        return H.not_available(label, run)
    if md.is_file():
        try:
            return H.markdown_table(md.read_text(encoding="utf-8"))
        except ValueError:
            pass
    if csv.is_file():
        return H.table(pd.read_csv(csv), caption=f"{label} ({csv.name})")
    return H.not_available(label, run)


def _km_section(results: Path, run: str) -> str:
    pngs = sorted(results.glob("km_*.png"))
    if not pngs:
        return H.not_available("Kaplan–Meier curves", run)

    def order(p: Path) -> tuple[int, int, str]:
        parts = p.stem.split("_", 2)
        endpoint = parts[1] if len(parts) > 1 else ""
        method = parts[2] if len(parts) > 2 else ""
        return ({"pfs": 0, "os": 1}.get(endpoint, 2), 0 if method == "lamp" else 1, p.name)

    figs = []
    for p in sorted(pngs, key=order):
        parts = p.stem.split("_", 2)
        endpoint = _ENDPOINT_LABEL.get(parts[1], parts[1]) if len(parts) > 1 else ""
        method = parts[2] if len(parts) > 2 else p.stem
        figs.append(H.figure(p, f"{endpoint}: {method} — high vs low risk ({p.name})", 460))
    body = '<div class="grid">' + "".join(figs) + "</div>"
    lr_path = results / "logrank.csv"
    if lr_path.is_file():
        lr = pd.read_csv(lr_path)
        if len(lr):
            lr = lr.sort_values("seed", kind="stable").drop_duplicates(["method", "endpoint"])
            lr = lr.assign(endpoint=lr["endpoint"].str.upper())
            cols = ["label", "endpoint", "seed", "n_high", "events_high", "n_low",
                    "events_low", "median_high", "median_low", "p_value", "rule"]  # fmt: skip
            cols = [c for c in cols if c in lr.columns]
            body += H.table(lr[cols], caption="Log-rank tests, high vs low risk (first seed)")
    return body


def _attention_section(work: Path, variant: str, tables: dict[str, pd.DataFrame]) -> str:
    path = work / "prognosis" / "lesion_attention.csv"
    if not path.is_file():
        return H.not_available(
            "Lesion attention", "lamp train (writes prognosis/lesion_attention.csv)"
        )
    att = pd.read_csv(path, dtype={"patient_id": str})
    if att.empty or "variant" not in att.columns:
        return H.not_available("Lesion attention", f"lamp train --variant {variant}")
    att = att[att["variant"] == variant]
    if att.empty:
        return H.not_available(f"Lesion attention of variant {variant}", "lamp train")
    if not tables:
        return H.not_available(
            "Lesion sites",
            "lamp features (feature files with the lesion table give each lesion its site)",
        )
    parts = []
    for endpoint in ("pfs", "os"):
        part = att[att["endpoint"] == endpoint]
        if part.empty:
            continue
        seed = int(part["seed"].min())
        by_site = attention_by_site(part[part["seed"] == seed], tables)
        parts.append(
            H.table(
                by_site,
                caption=f"{_ENDPOINT_LABEL[endpoint]}: ABMLA attention by lesion site "
                f"(out-of-fold models, variant {variant}, seed {seed})",
                digits=2,
            )
        )
    parts.append(
        '<p class="muted">Relative attention: each lesion\'s attention score times its '
        "patient's number of lesions, averaged over the lesions of a site (1 = equal "
        "weights). The paper (Fig. 2C) reports higher attention for lesions in the bone "
        "marrow and the spleen.</p>"
    )
    return "".join(parts)


def _tsne_section(work: Path, figdir: Path, max_points: int, say: Callable[[str], None]) -> str:
    from lamp.reports.figures import organ_feature_points, organ_tsne, tsne_figure

    files = sorted((work / "features").glob("*.npz"))
    if not files:
        return H.not_available("t-SNE of the organ features", "lamp features")
    say(f"t-SNE of the organ features of {len(files)} patients")
    x, organ, patients = organ_feature_points(files, max_points=max_points)
    if len(x) < 5:
        return H.not_available("t-SNE (fewer than 5 organ feature vectors)", "lamp features")
    emb = organ_tsne(x, seed=0)
    path = tsne_figure(figdir / "tsne_organs.png", emb, organ)
    cap = (
        f"t-SNE of {len(x)} organ feature vectors (128-d, standardised) of "
        f"{len(set(patients.tolist()))} patients, coloured by organ category; labels at the "
        "median point of key organs (paper Fig. 2D)."
    )
    return H.figure(path, cap, 700)


def _segmentation_section(
    work: Path, cohort: Path, figdir: Path, n_overlays: int, say: Callable[[str], None]
) -> str:
    from lamp.segmentation.metrics import cohort_metrics

    seg = work / "segmentation"
    parts = []
    both = seg / "metrics.csv"
    if both.is_file():
        cmp = pd.read_csv(both)
        parts.append(H.table(cmp, caption="Segmentation: LAMP vs plain nnU-Net (autoPET metrics)"))
    per_net = {}
    for net, label in (("lamp", "LAMP multimodal"), ("plain", "plain nnU-Net")):
        p = seg / net / "metrics.csv"
        if p.is_file():
            per_net[net] = pd.read_csv(p, dtype={"patient_id": str})
            if not both.is_file():
                try:
                    summary = cohort_metrics(per_net[net])
                except Exception as exc:  # a damaged file: say so, keep the report
                    parts.append(H.not_available(f"{label} summary ({p})", f"{exc}"))
                else:
                    parts.append(H.key_values(summary, f"Segmentation metrics: {label}"))
    if not parts:
        parts.append(
            H.not_available("Segmentation metrics", "lamp segment predict (then its evaluation)")
        )
    # overlays of a few patients: best, median and worst Dice where the metrics are known
    preds = sorted(p.name[: -len(".nii.gz")] for p in (seg / "lamp" / "pred").glob("*.nii.gz"))
    chosen = preds[:n_overlays]
    metrics = per_net.get("lamp")
    if metrics is not None and "dice" in metrics.columns:
        m = metrics[metrics["patient_id"].isin(preds)].dropna(subset=["dice"])
        m = m.sort_values("dice", ascending=False, kind="stable")
        if len(m):
            idx = sorted({0, len(m) // 2, len(m) - 1})[:n_overlays]
            chosen = [str(m.iloc[i]["patient_id"]) for i in idx]
    if not chosen:
        parts.append(H.not_available("Segmentation overlays", "lamp segment predict"))
        return "".join(parts)
    from lamp.images import load_nifti
    from lamp.reports.mip import segmentation_overlay_figure

    figs = []
    for pid in chosen:
        ref_path = case_path(cohort, pid, "lesions")
        pet_path = case_path(cohort, pid, "pet")
        pred = prediction_path(work, pid)
        if pred is None or not ref_path.is_file() or not pet_path.is_file():
            continue
        say(f"segmentation overlay of {pid}")
        pet, aff = load_nifti(pet_path)
        ref, _ = load_nifti(ref_path)
        pr, _ = load_nifti(pred)
        if not (pet.shape == ref.shape == pr.shape):
            figs.append(H.not_available(f"Overlay of {pid} (grids differ)", "lamp segment predict"))
            continue
        dice = ""
        if metrics is not None and "dice" in metrics.columns:
            row = metrics[metrics["patient_id"] == pid]
            if len(row) and pd.notna(row["dice"].iloc[0]):
                dice = f", Dice {float(row['dice'].iloc[0]):.3f}"
        path, counts = segmentation_overlay_figure(
            figdir / f"segmentation_{pid}.png", pet, aff, ref, pr, title=f"{pid}{dice}"
        )
        figs.append(
            H.figure(
                path,
                f"{pid}: reference (blue outline) vs LAMP prediction (orange, dashed); "
                f"{counts['tp']} true positive, {counts['fp']} false positive, "
                f"{counts['fn']} missed lesion(s){dice}",
                520,
            )
        )
    parts.append('<div class="grid">' + "".join(figs) + "</div>")
    return "".join(parts)


def _config_section(work: Path, cohort: Path) -> str:
    versions = package_versions()
    parts = [H.key_values(versions, "Package versions")]
    found = []
    for label, path in (
        ("Prognosis training (WORK/prognosis/config.json)", work / "prognosis" / "config.json"),
        ("Evaluation (WORK/results/evaluate.json)", work / "results" / "evaluate.json"),
        ("Synthetic cohort (COHORT/synth_config.json)", cohort / "synth_config.json"),
    ):
        data = read_json(path)
        if data is None:
            continue
        found.append(label)
        parts.append(f"<h3>{H.esc(label)}</h3>" + H.pre(json.dumps(data, indent=2)))
    if not found:
        parts.append(H.not_available("Run configuration", "lamp train / lamp evaluate"))
    parts.append(H.key_values({"Work folder": str(work), "Cohort folder": str(cohort)}, "Folders"))
    return "".join(parts)


def cohort_report(
    work: str | Path,
    cohort: str | Path,
    out: str | Path | None = None,
    variant: str = "full",
    n_overlays: int = 3,
    tsne_points: int = 2000,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write the cohort report ``cohort.html`` (module doc); returns its path.

    Parameters
    ----------
    work, cohort : str or Path
        Work folder (any stage's outputs may be missing) and cohort folder
        (``clinical.csv`` required).
    out : str or Path, optional
        Output folder, default ``WORK/reports``; figures go to ``out/figures/``.
    variant : str, default "full"
        The LAMP variant whose attention is summarised.
    n_overlays : int, default 3
        Patients shown with segmentation overlays (best, median, worst Dice).
    tsne_points : int, default 2000
        Organ feature vectors in the t-SNE (a random subsample beyond that).
    progress : callable, optional
        Called with one line per slow step.
    """
    work, cohort = Path(work), Path(cohort)
    out = Path(out) if out is not None else work / "reports"
    figdir = out / "figures"
    say = progress or (lambda _: None)
    clinical = clinical_table(cohort)
    results = work / "results"
    run_eval = f"lamp evaluate --work {work} --cohort {cohort}"
    tables = {}
    for f in sorted((work / "features").glob("*.npz")):
        t = lesion_table(f)
        if t is not None:
            tables[f.stem] = t
    sections = [
        H.section("Cohort", _cohort_section(clinical), "cohort"),
        H.section(
            "Prognosis: comparison with other methods (Table 1)",
            _table_section(results, "table1", "Table 1", run_eval),
            "table1",
        ),
        H.section(
            "Ablation study (Table 2)",
            _table_section(
                results,
                "table2",
                "Table 2",
                f"lamp train --work {work} --cohort {cohort}, then {run_eval}",
            ),
            "table2",
        ),
        H.section("Kaplan–Meier curves (Fig. 2A-B)", _km_section(results, run_eval), "km"),
        H.section(
            "Where the model looks: lesion attention by site (Fig. 2C)",
            _attention_section(work, variant, tables),
            "attention",
        ),
        H.section(
            "Organ features (Fig. 2D)", _tsne_section(work, figdir, tsne_points, say), "tsne"
        ),
        H.section(
            "Lesion segmentation",
            _segmentation_section(work, cohort, figdir, n_overlays, say),
            "segmentation",
        ),  # fmt: skip
        H.section("Configuration and versions", _config_section(work, cohort), "config"),
    ]
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = (
        f"Cohort {cohort.name}: {len(clinical)} patients. Generated {stamp} by lamp "
        f"{package_versions(('lamp-pet',))['lamp-pet']}. Research use only."
    )
    text = H.page("LAMP cohort report", sections, subtitle)
    return write_text_atomic(out / "cohort.html", text)
