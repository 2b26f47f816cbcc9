"""Tables 1 and 2 of the paper, the Kaplan–Meier analysis, from the out-of-fold risk files.

Every number comes from the same code whatever the method (DESIGN.md, "Evaluation
protocol"):

* inputs: ``WORK/prognosis/oof_risk.csv`` (LAMP and its ablations, column ``variant``)
  and ``WORK/baselines/<method>/oof_risk.csv`` (column ``method``); for a synthetic
  cohort also ``COHORT/truth.csv`` (read here only, for the "True risk (ceiling)" row:
  the generator's linear predictors ``lp_pfs``/``lp_os`` scored on the same folds);
* per (method, endpoint, seed, fold k): Harrell's C-index and the cumulative/dynamic AUC
  at 12 and 24 months of fold k's held-out patients, censoring weights from the training
  fold = the cohort's patients with outcome data not in fold k (`score_fold`). A metric
  undefined in a fold is NaN there with the reason in ``note``;
* a cell = the mean over the seeds of the per-seed mean over folds (over the folds
  where the metric is defined), ± the standard deviation over seeds (ddof = 1; "n/a"
  with one seed, e.g. a deterministic baseline). A cell whose mean leaves folds out says
  so: ``0.712 ± 0.010 (9/10 folds)`` counts (seed, fold) runs;
* Kaplan–Meier and log-rank: high vs low risk per fold at the threshold of
  `lamp.evaluation.survival.risk_groups` (the training-fold median, or its stated
  approximation), the held-out patients of all folds pooled.

``lamp train`` and ``lamp baselines`` write a ``train_risk.csv`` (same columns as the oof
file; ``fold`` = the fold whose model scored these *training* patients) beside each oof
file; with it the KM split uses the exact training-fold median, without it (a hand-made
risk file) the approximation, and ``logrank.csv`` says which.

Outputs (``WORK/results/``): ``table1.csv/.md``, ``table2.csv/.md``, ``fold_metrics.csv``,
``logrank.csv``, ``km_<endpoint>_<method>.png`` (Table 1 rows, first seed) and
``evaluate.json`` (the inputs and notes).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lamp.baselines.common import ENDPOINTS, outcome_table, read_oof
from lamp.cohort import write_text_atomic
from lamp.errors import LampError
from lamp.evaluation.metrics import MetricError, concordance_index, time_dependent_auc
from lamp.evaluation.survival import SurvivalError, kaplan_meier, logrank_test, risk_groups

__all__ = [
    "EvaluationError",
    "METRICS",
    "AUC_MONTHS",
    "TABLE1_ROWS",
    "TABLE2_ROWS",
    "OPTIONAL_ROWS",
    "TITLES",
    "LAMP_METHOD",
    "CEILING_METHOD",
    "RiskSource",
    "Evaluation",
    "collect_sources",
    "score_fold",
    "fold_metrics",
    "summarize",
    "layout_table",
    "to_markdown",
    "table_footnotes",
    "method_slug",
    "logrank_table",
    "evaluate",
]

METRICS: tuple[str, ...] = ("c_index", "auc_12", "auc_24")
AUC_MONTHS: tuple[float, ...] = (12.0, 24.0)
METRIC_LABELS = {"c_index": "C-index", "auc_12": "1y AUC", "auc_24": "2y AUC"}
ENDPOINT_LABELS = {"pfs": "PFS", "os": "OS"}

LAMP_METHOD = "lamp"  # the full model's key; the ablations are lamp_<variant>
CEILING_METHOD = "true_risk"
CEILING_LABEL = "True risk (ceiling)"

# Table 1 rows in the paper's order: (method key, label, other names accepted for it). A
# baseline's folder (= its ``method`` column) matches a row when its name, lower-cased
# and stripped of everything but letters and digits, equals one of these names stripped
# the same way ("Ann Arbor (automatic)" and "ann_arbor_automatic" are the same row).
TABLE1_ROWS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("ipi", "IPI", ()),
    ("ann_arbor", "Ann Arbor", ("ann_arbor_clinical",)),
    ("ann_arbor_automatic", "Ann Arbor (automatic)", ("ann_arbor_auto", "automatic_staging")),
    ("ann_arbor_manual_masks", "Ann Arbor (manual masks)", ()),  # optional, not in the paper
    ("metabolic_manual", "Meta. Param. (manual)", ("meta_param_manual", "metabolic_params_manual")),
    (
        "metabolic_automatic",
        "Meta. Param. (automatic)",
        ("metabolic_auto", "meta_param_automatic", "metabolic_params_automatic"),
    ),
    ("radiomics", "Radiomics", ()),  # optional: one radiomics row without a mask tag
    ("radiomics_manual", "Radiomics (manual)", ()),
    ("radiomics_automatic", "Radiomics (automatic)", ("radiomics_auto",)),
    ("guo2021", "Guo2021", ()),
    ("liu2022", "Liu2022", ()),
    ("thiery2025", "Thiery2025", ()),
    (LAMP_METHOD, "LAMP (ours)", ()),
)
# Table 2 rows: (LAMP variant, method key, the paper's label)
TABLE2_ROWS: tuple[tuple[str, str, str], ...] = (
    ("baseline", "lamp_baseline", "Baseline"),
    ("abmla", "lamp_abmla", "w/ ABMLA"),
    ("lacf", "lamp_lacf", "w/ LACF"),
    ("full", LAMP_METHOD, "Full model"),
)
# rows not reported as "left out" when absent (variants of a paper row, not paper rows)
OPTIONAL_ROWS = frozenset({"ann_arbor_manual_masks", "radiomics"})
TITLES = {
    "table1": "Table 1. Comparison results using C-index and Time-AUC metrics under five-fold "
    "cross-validation.",
    "table2": "Table 2. Ablation studies under five-fold cross-validation.",
}
_PROGNOSIS_COLUMNS = ["patient_id", "endpoint", "variant", "seed", "fold", "risk"]


class EvaluationError(LampError):
    """Risk files or a cohort that cannot be evaluated together; the message says why."""


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


@dataclass(frozen=True)
class RiskSource:
    """The out-of-fold risks of one method (one row of a table).

    Attributes
    ----------
    method : str
        Key in ``fold_metrics.csv`` and file names (a baseline's folder name, ``lamp``,
        ``lamp_<variant>``, ``true_risk``).
    label : str
        Row label in the tables.
    path : Path
        The file the risks came from.
    oof : DataFrame
        Columns ``patient_id, endpoint, seed, fold, risk``.
    train_risk : DataFrame or None
        In-sample risks of each fold's training patients, same columns, if stored.
    """

    method: str
    label: str
    path: Path
    oof: pd.DataFrame
    train_risk: pd.DataFrame | None = None


@dataclass
class Evaluation:
    """What `evaluate` computed and wrote.

    Attributes
    ----------
    table1, table2 : DataFrame of str
        The paper's layout: index = row labels, columns ``"PFS C-index"`` ... ``"OS 2y
        AUC"``; cells ``"0.712 ± 0.010"``.
    summary : DataFrame
        One row per (table, method, endpoint, metric): mean, sd, n_seeds, folds_used,
        folds_total, cell.
    fold_metrics : DataFrame
        Every fold value: method, label, endpoint, seed, fold, n_test, n_events, the
        `METRICS`, note.
    logrank : DataFrame
        One row per (method, endpoint, seed).
    notes : list of str
        Rows left out, partial files, undefined metrics: printed by the CLI, written
        under the markdown tables.
    files : list of Path
        Everything written.
    footnotes : dict
        ``{"table1": [...], "table2": [...]}``: the legend under each table.
    """

    table1: pd.DataFrame
    table2: pd.DataFrame
    summary: pd.DataFrame
    fold_metrics: pd.DataFrame
    logrank: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    footnotes: dict[str, list[str]] = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# Collecting the risk files
# --------------------------------------------------------------------------------------


def _read_prognosis_oof(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"patient_id": str, "variant": str})
    missing = [c for c in _PROGNOSIS_COLUMNS if c not in df.columns]
    if missing:
        raise EvaluationError(f"{path}: expected columns {_PROGNOSIS_COLUMNS}, missing {missing}")
    risk = pd.to_numeric(df["risk"], errors="coerce")
    bad = ~np.isfinite(risk)
    if bad.any():
        raise EvaluationError(f"{path}: non-finite risk in rows {list(df.index[bad])[:10]}")
    bad_e = ~df["endpoint"].isin(list(ENDPOINTS))
    if bad_e.any():
        raise EvaluationError(
            f"{path}: column endpoint: expected pfs or os, got {sorted(set(df['endpoint'][bad_e]))}"
        )
    return df


def _optional_train_risk(path: Path, column: str, value: str) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    df = pd.read_csv(path, dtype={"patient_id": str, column: str})
    need = ["patient_id", "endpoint", column, "seed", "fold", "risk"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise EvaluationError(f"{path}: expected columns {need}, missing {missing}")
    bad = ~np.isfinite(pd.to_numeric(df["risk"], errors="coerce"))
    if bad.any():
        raise EvaluationError(
            f"{path}: column risk: expected finite numbers, got "
            f"{df.loc[bad, 'risk'].tolist()[:5]} in rows {list(df.index[bad])[:5]}"
        )
    return df[df[column] == value].drop(columns=[column]).reset_index(drop=True)


def _truth_source(cohort: Path, table: pd.DataFrame) -> RiskSource | None:
    path = cohort / "truth.csv"
    if not path.is_file():
        return None
    truth = pd.read_csv(path, dtype={"patient_id": str})
    need = ["patient_id", *(f"lp_{e}" for e in ENDPOINTS)]
    missing = [c for c in need if c not in truth.columns]
    if missing:
        raise EvaluationError(f"{path}: expected columns {need}, missing {missing}")
    merged = table[["patient_id", "fold"]].merge(truth[need], on="patient_id", how="left")
    lost = merged.loc[merged[need[1:]].isna().any(axis=1), "patient_id"].tolist()
    if lost:
        raise EvaluationError(
            f"{path}: expected the true linear predictors of every patient with outcome data, "
            f"missing {len(lost)}: {lost[:10]}"
        )
    frames = [
        pd.DataFrame(
            {
                "patient_id": merged["patient_id"],
                "endpoint": e,
                "seed": 0,
                "fold": merged["fold"].astype(int),
                "risk": merged[f"lp_{e}"].astype(np.float64),
            }
        )
        for e in ENDPOINTS
    ]
    return RiskSource(CEILING_METHOD, CEILING_LABEL, path, pd.concat(frames, ignore_index=True))


def collect_sources(
    work: str | Path, cohort: str | Path, methods: Sequence[str] | None = None
) -> tuple[list[RiskSource], list[RiskSource], list[str]]:
    """Find every risk file of the tables, in the paper's row order.

    Parameters
    ----------
    work, cohort : str or Path
    methods : sequence of str, optional
        Only these method keys: baseline folder names, ``lamp`` (all four variants of
        ``WORK/prognosis/oof_risk.csv``), ``true_risk``. Default: everything found.

    Returns
    -------
    table1 : list of RiskSource
        Clinical, metabolic, radiomics, deep baselines, other baselines found, LAMP (the
        full variant), the ceiling (synthetic cohorts).
    table2 : list of RiskSource
        The LAMP variants found, in the paper's Table 2 order.
    notes : list of str
        The rows left out because their file does not exist, and other remarks.

    Raises
    ------
    EvaluationError
        A method asked for that has no file; malformed files.
    """
    work, cohort = Path(work), Path(cohort)
    table, _ = outcome_table(cohort)
    notes: list[str] = []
    wanted = None if methods is None else {_norm(str(m)) for m in methods}

    def want(key: str) -> bool:
        return wanted is None or _norm(key) in wanted

    base_dir = work / "baselines"
    found: dict[str, Path] = {}
    if base_dir.is_dir():
        for d in sorted(p for p in base_dir.iterdir() if p.is_dir()):
            if (d / "oof_risk.csv").is_file():
                found[d.name] = d / "oof_risk.csv"

    def baseline(folder: str, label: str) -> RiskSource:
        path = found[folder]
        df = read_oof(path)
        other = sorted(set(df["method"].astype(str)) - {folder})
        if other:
            raise EvaluationError(
                f"{path}: column method: expected {folder!r} (the folder's name), got {other}"
            )
        tr = _optional_train_risk(path.with_name("train_risk.csv"), "method", folder)
        cols = ["patient_id", "endpoint", "seed", "fold", "risk"]
        return RiskSource(folder, label, path, df[cols].copy(), tr)

    t1: list[RiskSource] = []
    left_out: list[str] = []
    used: set[str] = set()
    answered: set[str] = set()  # method keys (and folder names) that found a file
    for key, label, aliases in TABLE1_ROWS[:-1]:
        names = {_norm(key), *(_norm(a) for a in aliases)}
        match = [f for f in found if _norm(f) in names]
        if not match:
            if want(key) and key not in OPTIONAL_ROWS:
                left_out.append(label)
            continue
        if len(match) > 1:
            raise EvaluationError(
                f"{base_dir}: expected one folder for the row {label!r}, found {match}"
            )
        used.add(match[0])
        answered.update((key, match[0]))
        if want(match[0]) or want(key):
            t1.append(baseline(match[0], label))
    extra = [f for f in found if f not in used and want(f)]
    for folder in extra:
        t1.append(baseline(folder, folder))
        answered.add(folder)
    if extra:
        notes.append(
            "baselines not among the paper's rows, listed after them under their folder "
            f"name: {', '.join(extra)}"
        )

    t2: list[RiskSource] = []
    lamp_path = work / "prognosis" / "oof_risk.csv"
    wanted_variants = [r for r in TABLE2_ROWS if want(LAMP_METHOD) or want(r[1])]
    if wanted_variants:
        if lamp_path.is_file():
            df = _read_prognosis_oof(lamp_path)
            for variant, key, label in wanted_variants:
                part = df[df["variant"] == variant]
                if part.empty:
                    left_out.append(f"Table 2 {label} (variant {variant!r} not in {lamp_path})")
                    continue
                tr = _optional_train_risk(lamp_path.with_name("train_risk.csv"), "variant", variant)
                cols = ["patient_id", "endpoint", "seed", "fold", "risk"]
                src = RiskSource(key, label, lamp_path, part[cols].reset_index(drop=True), tr)
                t2.append(src)
                answered.update((key, LAMP_METHOD))
                if variant == "full":
                    t1.append(RiskSource(key, TABLE1_ROWS[-1][1], lamp_path, src.oof, tr))
        else:
            left_out.append(f"LAMP and its ablations (no {lamp_path})")
    if want(CEILING_METHOD):
        ceiling = _truth_source(cohort, table)
        if ceiling is not None:
            t1.append(ceiling)
            answered.add(CEILING_METHOD)
            if t2:
                t2.append(ceiling)
    if wanted is not None:
        got = {_norm(a) for a in answered}
        absent = [str(m) for m in methods or () if _norm(str(m)) not in got]
        if absent:
            have = sorted(
                {*found}
                | ({LAMP_METHOD} if lamp_path.is_file() else set())
                | ({CEILING_METHOD} if (cohort / "truth.csv").is_file() else set())
            )
            raise EvaluationError(
                f"methods: no risk file for {absent}; risk files found for {have}"
            )
    if left_out:
        notes.insert(
            0,
            f"left out (no out-of-fold risk file under {base_dir} or {lamp_path.parent}): "
            + "; ".join(left_out),
        )
    return t1, t2, notes


# --------------------------------------------------------------------------------------
# Metrics per fold and their summary
# --------------------------------------------------------------------------------------


def score_fold(
    train_events: np.ndarray,
    train_times: np.ndarray,
    test_events: np.ndarray,
    test_times: np.ndarray,
    risk: np.ndarray,
    auc_months: Sequence[float] = AUC_MONTHS,
) -> tuple[dict[str, float], str]:
    """C-index and time-AUCs of one held-out fold; undefined ones are NaN with a note.

    Parameters
    ----------
    train_events, train_times : ndarray, shape (n_train,)
        The training fold's outcomes (censoring weights of the AUC).
    test_events, test_times, risk : ndarray, shape (n_test,)
    auc_months : sequence of float
        The AUC keys are ``auc_<months>`` (``auc_12``, ``auc_24``).

    Returns
    -------
    values : dict
        ``c_index`` and ``auc_<m>``.
    note : str
        ``"<metric>: <reason>"`` for each undefined metric, joined by ``"; "``.
    """
    out: dict[str, float] = {}
    notes = []
    try:
        out["c_index"] = concordance_index(test_events, test_times, risk)
    except MetricError as exc:
        out["c_index"] = float("nan")
        notes.append(f"c_index: {exc}")
    for m in auc_months:
        key = f"auc_{m:g}"
        try:
            auc = time_dependent_auc(train_events, train_times, test_events, test_times, risk, [m])
            out[key] = float(auc[0])
        except MetricError as exc:
            out[key] = float("nan")
            notes.append(f"{key}: {exc}")
    return out, "; ".join(notes)


def _merge_outcome(
    source: RiskSource, table: pd.DataFrame, endpoint: str, seed: int
) -> tuple[pd.DataFrame, list[str]]:
    """The source's risks of one endpoint and seed with the cohort's outcome and fold."""
    tcol, ecol = ENDPOINTS[endpoint]
    part = source.oof[(source.oof["endpoint"] == endpoint) & (source.oof["seed"] == seed)]
    dup = part["patient_id"][part["patient_id"].duplicated()]
    if len(dup):
        raise EvaluationError(
            f"{source.path} ({endpoint}, seed {seed}): a patient scored twice: "
            f"{sorted(set(dup))[:10]}"
        )
    merged = part.merge(
        table[["patient_id", "fold", tcol, ecol]],
        on="patient_id",
        how="left",
        suffixes=("", "_cohort"),
    )
    stray = merged.loc[merged["fold_cohort"].isna(), "patient_id"].tolist()
    if stray:
        raise EvaluationError(
            f"{source.path} ({endpoint}, seed {seed}): {len(stray)} patients are not patients "
            f"with outcome data of the cohort: {stray[:10]}"
        )
    moved = merged.loc[merged["fold"] != merged["fold_cohort"], "patient_id"].tolist()
    if moved:
        raise EvaluationError(
            f"{source.path} ({endpoint}, seed {seed}): {len(moved)} patients were scored in "
            f"another fold than the cohort's folds.csv says (another split?): {moved[:10]}"
        )
    notes = []
    unscored = sorted(set(table["patient_id"]) - set(merged["patient_id"]))
    if unscored:
        notes.append(
            f"{source.label} ({endpoint}, seed {seed}): {len(unscored)} patients with outcome "
            f"data have no risk and are left out: {unscored[:10]}"
        )
    merged = merged.rename(columns={tcol: "time", ecol: "event"}).drop(columns="fold_cohort")
    merged["event"] = merged["event"].astype(int)
    return merged, notes


def fold_metrics(
    sources: Sequence[RiskSource],
    cohort: str | Path,
    auc_months: Sequence[float] = AUC_MONTHS,
) -> tuple[pd.DataFrame, list[str]]:
    """Every fold value of every source (the rows of ``fold_metrics.csv``).

    Returns
    -------
    DataFrame
        method, label, endpoint, seed, fold, n_test, n_events, ``c_index``,
        ``auc_<m>``..., note. A fold of the cohort that a source did not score is a row
        of NaN with a note.
    notes : list of str
    """
    table, _ = outcome_table(cohort)
    folds = sorted(int(f) for f in table["fold"].unique())
    keys = ["c_index", *(f"auc_{m:g}" for m in auc_months)]
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for src in sources:
        for endpoint in ENDPOINTS:
            tcol, ecol = ENDPOINTS[endpoint]
            seeds = sorted(
                int(s) for s in src.oof.loc[src.oof["endpoint"] == endpoint, "seed"].unique()
            )
            for seed in seeds:
                data, n = _merge_outcome(src, table, endpoint, seed)
                notes.extend(n)
                for k in folds:
                    test = data[data["fold"] == k]
                    base = {"method": src.method, "label": src.label, "endpoint": endpoint,
                            "seed": seed, "fold": k, "n_test": len(test),
                            "n_events": int(test["event"].sum())}  # fmt: skip
                    if test.empty:
                        rows.append({**base, **dict.fromkeys(keys, np.nan),
                                     "note": f"no out-of-fold risks for fold {k}"})  # fmt: skip
                        continue
                    train = table[table["fold"] != k]
                    values, note = score_fold(
                        train[ecol].to_numpy(int), train[tcol].to_numpy(np.float64),
                        test["event"].to_numpy(int), test["time"].to_numpy(np.float64),
                        test["risk"].to_numpy(np.float64), auc_months,
                    )  # fmt: skip
                    rows.append({**base, **values, "note": note})
    cols = ["method", "label", "endpoint", "seed", "fold", "n_test", "n_events", *keys, "note"]
    return pd.DataFrame(rows, columns=cols), notes


def summarize(fm: pd.DataFrame, metrics: Sequence[str] = METRICS, digits: int = 3) -> pd.DataFrame:
    """Mean over folds per seed, then mean ± sd over seeds, with the folds used.

    Parameters
    ----------
    fm : DataFrame
        Rows of `fold_metrics` (columns method, endpoint, seed, fold and ``metrics``).

    Returns
    -------
    DataFrame
        One row per (method, endpoint, metric): ``mean``, ``sd`` (ddof = 1 over the seeds
        with a defined mean; NaN with one), ``n_seeds``, ``folds_used`` and
        ``folds_total`` (counted over (seed, fold) runs), ``cell`` (the table text).
    """
    rows = []
    for (method, endpoint), g in fm.groupby(["method", "endpoint"], sort=False):
        for metric in metrics:
            per_seed = g.groupby("seed")[metric].mean()  # NaN folds are skipped by mean()
            defined = per_seed.dropna()
            used, total = int(g[metric].notna().sum()), len(g)
            mean = float(defined.mean()) if len(defined) else float("nan")
            sd = float(defined.std(ddof=1)) if len(defined) > 1 else float("nan")
            if not len(defined):
                cell = "n/a"
            else:
                cell = f"{mean:.{digits}f} ± " + ("n/a" if np.isnan(sd) else f"{sd:.{digits}f}")
            if used < total:
                cell += f" ({used}/{total} folds)"
            rows.append({"method": method, "endpoint": endpoint, "metric": metric,
                         "mean": mean, "sd": sd, "n_seeds": len(defined),
                         "folds_used": used, "folds_total": total, "cell": cell})  # fmt: skip
    return pd.DataFrame(
        rows,
        columns=["method", "endpoint", "metric", "mean", "sd", "n_seeds", "folds_used",
                 "folds_total", "cell"],
    )  # fmt: skip


def method_slug(method: str) -> str:
    """A method key as a file-name part: "Ann Arbor (automatic)" -> "ann_arbor_automatic"."""
    return re.sub(r"[^a-z0-9]+", "_", method.lower()).strip("_") or "method"


def _column_name(endpoint: str, metric: str) -> str:
    return f"{ENDPOINT_LABELS[endpoint]} {METRIC_LABELS[metric]}"


def layout_table(
    summary: pd.DataFrame, sources: Sequence[RiskSource], metrics: Sequence[str] = METRICS
) -> pd.DataFrame:
    """The paper's layout: one row per source (label), PFS then OS metric columns.

    A (method, endpoint) with no risks at all shows ``"n/a"``.
    """
    cells = summary.set_index(["method", "endpoint", "metric"])["cell"]
    columns = [_column_name(e, m) for e in ENDPOINTS for m in metrics]
    data = []
    for src in sources:
        data.append([cells.get((src.method, e, m), "n/a") for e in ENDPOINTS for m in metrics])
    out = pd.DataFrame(data, index=[s.label for s in sources], columns=columns)
    out.index.name = "Methods"
    return out


def to_markdown(table: pd.DataFrame, title: str, footnotes: Sequence[str] = ()) -> str:
    """A markdown table (title line, header, rows), then footnotes as a list."""
    header = [table.index.name or "", *table.columns]
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join([":---", *(":---:" for _ in table.columns)]) + "|")
    for label, row in table.iterrows():
        lines.append("| " + " | ".join([str(label), *(str(v) for v in row)]) + " |")
    if footnotes:
        lines.append("")
        lines.extend(f"- {f}" for f in footnotes)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------
# Kaplan–Meier and log-rank
# --------------------------------------------------------------------------------------


def _groups(
    src: RiskSource, table: pd.DataFrame, endpoint: str, seed: int
) -> tuple[pd.DataFrame, str]:
    data, _ = _merge_outcome(src, table, endpoint, seed)
    tr = None
    if src.train_risk is not None:
        tr = src.train_risk[
            (src.train_risk["endpoint"] == endpoint) & (src.train_risk["seed"] == seed)
        ]
        tr = tr if not tr.empty else None
    if tr is not None:
        missing = sorted(set(data["fold"]) - set(tr["fold"]))
        if missing:
            raise EvaluationError(
                f"{src.path.with_name('train_risk.csv')}: no training-patient risks of fold(s) "
                f"{missing} for {endpoint} seed {seed}, though the oof file scores them; rerun "
                "the method (or remove train_risk.csv for the approximate rule)"
            )
    grouped = risk_groups(data, tr)
    return grouped, str(grouped["rule"].iloc[0])


def logrank_table(
    sources: Sequence[RiskSource],
    cohort: str | Path,
    figure_dir: str | Path | None = None,
    figure_methods: Sequence[str] | None = None,
    km_seed: int | None = None,
) -> tuple[pd.DataFrame, list[Path]]:
    """Log-rank test of high vs low risk for every (source, endpoint, seed); KM figures.

    Parameters
    ----------
    sources : sequence of RiskSource
    cohort : str or Path
    figure_dir : str or Path, optional
        Where to draw ``km_<endpoint>_<method>.png`` (none drawn if None).
    figure_methods : sequence of str, optional
        The methods to draw (default: all sources).
    km_seed : int, optional
        The seed drawn (default: each source's smallest seed).

    Returns
    -------
    DataFrame
        method, label, endpoint, seed, rule, n_high, n_low, events_high, events_low,
        expected_high, median_high, median_low (months; inf if not reached), chi2,
        p_value, note.
    list of Path
        The figures written.
    """
    table, _ = outcome_table(cohort)
    rows: list[dict[str, Any]] = []
    figures: list[Path] = []
    draw = None if figure_methods is None else set(figure_methods)
    for src in sources:
        for endpoint in ENDPOINTS:
            seeds = sorted(
                int(s) for s in src.oof.loc[src.oof["endpoint"] == endpoint, "seed"].unique()
            )
            for seed in seeds:
                g, rule = _groups(src, table, endpoint, seed)
                hi, lo = g[g["high"]], g[~g["high"]]
                row: dict[str, Any] = {
                    "method": src.method, "label": src.label, "endpoint": endpoint,
                    "seed": seed, "rule": rule, "n_high": len(hi), "n_low": len(lo),
                    "events_high": int(hi["event"].sum()), "events_low": int(lo["event"].sum()),
                    "expected_high": np.nan, "median_high": np.nan, "median_low": np.nan,
                    "chi2": np.nan, "p_value": np.nan, "note": "",
                }  # fmt: skip
                for name, part in (("high", hi), ("low", lo)):
                    if len(part):
                        row[f"median_{name}"] = kaplan_meier(part["time"], part["event"]).median()
                try:
                    res = logrank_test(hi["time"], hi["event"], lo["time"], lo["event"])
                    row.update(chi2=res.chi2, p_value=res.p_value, expected_high=res.expected[0])
                except SurvivalError as exc:
                    row["note"] = str(exc)
                rows.append(row)
                first = seeds[0] if km_seed is None or km_seed not in seeds else km_seed
                if (
                    figure_dir is not None
                    and seed == first
                    and (draw is None or src.method in draw)
                ):
                    from lamp.reports.figures import km_figure

                    path = Path(figure_dir) / f"km_{endpoint}_{method_slug(src.method)}.png"
                    title = f"{ENDPOINT_LABELS[endpoint]}: {src.label}"
                    if len(seeds) > 1:
                        title += f" (seed {seed})"
                    groups = {
                        "High risk": (hi["time"].to_numpy(), hi["event"].to_numpy()),
                        "Low risk": (lo["time"].to_numpy(), lo["event"].to_numpy()),
                    }
                    figures.append(km_figure(path, groups, title, row["p_value"]))
    cols = ["method", "label", "endpoint", "seed", "rule", "n_high", "n_low", "events_high",
            "events_low", "expected_high", "median_high", "median_low", "chi2", "p_value",
            "note"]  # fmt: skip
    return pd.DataFrame(rows, columns=cols), figures


# --------------------------------------------------------------------------------------
# The whole evaluation
# --------------------------------------------------------------------------------------


def table_footnotes(summary: pd.DataFrame, methods: set[str]) -> list[str]:
    """The legend under a table: what a cell means, and "(k/n folds)" where used."""
    part = summary[summary["method"].isin(methods)]
    notes = [
        "Cells: mean over folds (per seed), ± standard deviation over seeds; "
        "'± n/a' = one seed (e.g. a deterministic method). "
        "1y/2y AUC = cumulative/dynamic AUC at 12/24 months, censoring weights from the "
        "training fold."
    ]
    if (part["folds_used"] < part["folds_total"]).any():
        notes.append(
            "'(k/n folds)': the metric was undefined in some (seed, fold) runs (see "
            "fold_metrics.csv, column note); the mean is over the k runs where it is defined."
        )
    return notes


def _csv(df: pd.DataFrame) -> str:
    return df.to_csv(index=False, lineterminator="\n")


def evaluate(
    work: str | Path,
    cohort: str | Path,
    methods: Sequence[str] | None = None,
    out: str | Path | None = None,
    figures: bool = True,
    km_seed: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Evaluation:
    """Tables 1 and 2, fold metrics, log-rank tests and KM figures from the risk files.

    Call it after ``lamp train`` and/or the baselines: it evaluates whatever
    out-of-fold risk files exist (module doc) and notes the rows that are missing.

    Parameters
    ----------
    work : str or Path
        Work folder with ``prognosis/oof_risk.csv`` and/or ``baselines/*/oof_risk.csv``.
    cohort : str or Path
        Cohort folder (``clinical.csv``, ``folds.csv``; ``truth.csv`` if synthetic).
    methods : sequence of str, optional
        Restrict to these method keys (see `collect_sources`).
    out : str or Path, optional
        Output folder, default ``WORK/results``.
    figures : bool
        Draw ``km_<endpoint>_<method>.png`` for the Table 1 rows.
    km_seed : int, optional
        Seed drawn in the KM figures (default: each method's smallest seed).
    progress : callable, optional
        Called with one line per stage.

    Returns
    -------
    Evaluation

    Raises
    ------
    EvaluationError
        No risk file at all ("nothing to evaluate"), or files inconsistent with the
        cohort (other patients, another split, duplicates).
    """
    work, cohort = Path(work), Path(cohort)
    out = Path(out) if out is not None else work / "results"
    say = progress or (lambda _: None)
    t1, t2, notes = collect_sources(work, cohort, methods)
    if not [s for s in t1 + t2 if s.method != CEILING_METHOD]:
        raise EvaluationError(
            f"nothing to evaluate: no out-of-fold risk file under {work / 'prognosis'} or "
            f"{work / 'baselines'}; run lamp train and/or the baselines first"
        )
    by_method: dict[str, RiskSource] = {}
    for s in [*t1, *t2]:  # Table 1's label wins for LAMP ("LAMP (ours)", not "Full model")
        by_method.setdefault(s.method, s)
    sources = list(by_method.values())
    say(f"scoring {len(sources)} methods fold by fold")
    fm, merge_notes = fold_metrics(sources, cohort)
    notes.extend(dict.fromkeys(merge_notes))
    undefined = fm[fm[list(METRICS)].isna().any(axis=1)]
    if len(undefined):
        notes.append(
            f"{len(undefined)} (method, endpoint, seed, fold) runs have an undefined metric "
            "(NaN, reason in fold_metrics.csv column note); their means use the other folds"
        )
    for src in sources:
        absent = [e for e in ENDPOINTS if not (src.oof["endpoint"] == e).any()]
        if absent:
            notes.append(f"{src.label}: no risks for {', '.join(absent)} (cells n/a)")
    summary = summarize(fm)
    table1 = layout_table(summary, t1)
    table2 = layout_table(summary, t2)
    say("log-rank tests" + (" and Kaplan–Meier figures" if figures else ""))
    lr, pngs = logrank_table(
        sources, cohort, out if figures else None, [s.method for s in t1], km_seed
    )
    rule_notes = sorted(set(lr["rule"]))
    notes.append("KM / log-rank risk groups split at: " + "; ".join(rule_notes))

    def long(sources_: Sequence[RiskSource], name: str) -> pd.DataFrame:
        order = {s.method: i for i, s in enumerate(sources_)}
        labels = {s.method: s.label for s in sources_}
        part = summary[summary["method"].isin(order)].copy()
        part.insert(0, "label", part["method"].map(labels))
        part.insert(0, "table", name)
        part["_o"] = part["method"].map(order)
        return part.sort_values(["_o"], kind="stable").drop(columns="_o")

    footnotes = {
        "table1": table_footnotes(summary, {s.method for s in t1}),
        "table2": table_footnotes(summary, {s.method for s in t2}),
    }
    files = [
        write_text_atomic(out / "table1.csv", _csv(long(t1, "table1"))),
        write_text_atomic(
            out / "table1.md",
            to_markdown(
                table1,
                TITLES["table1"],
                footnotes["table1"] + notes,
            ),
        ),
        write_text_atomic(out / "table2.csv", _csv(long(t2, "table2"))),
        write_text_atomic(
            out / "table2.md",
            to_markdown(
                table2,
                TITLES["table2"],
                footnotes["table2"],
            ),
        ),
        write_text_atomic(out / "fold_metrics.csv", _csv(fm)),
        write_text_atomic(out / "logrank.csv", _csv(lr)),
    ]
    files.extend(pngs)
    record = {
        "work": str(work),
        "cohort": str(cohort),
        "methods": None if methods is None else list(methods),
        "sources": {s.method: {"label": s.label, "path": str(s.path)} for s in sources},
        "table1": [s.method for s in t1],
        "table2": [s.method for s in t2],
        "auc_months": list(AUC_MONTHS),
        "km_seed": km_seed,
        "notes": notes,
    }
    files.append(write_text_atomic(out / "evaluate.json", json.dumps(record, indent=2) + "\n"))
    return Evaluation(table1, table2, summary, fm, lr, notes, files, footnotes)
