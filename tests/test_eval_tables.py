"""Tables 1-2, fold metrics, log-rank and ``lamp evaluate`` (`lamp.evaluation.tables`).

A small cohort (clinical.csv, folds.csv, optionally truth.csv) and hand-made
``oof_risk.csv`` files are written to ``tmp_path``; every value is compared with the
metrics computed directly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lamp.cli import main
from lamp.cohort import make_folds, read_folds, write_folds
from lamp.evaluation.metrics import (
    MetricError,
    concordance_index,
    format_table,
    time_dependent_auc,
)
from lamp.evaluation.survival import RULE_EXACT, RULE_OTHER_FOLDS, logrank_test, risk_groups
from lamp.evaluation.tables import (
    CEILING_LABEL,
    EvaluationError,
    collect_sources,
    evaluate,
    method_slug,
)
from lamp.reports.figures import format_p, km_figure

N, N_OUT = 60, 3
HEADER = "| Methods | PFS C-index | PFS 1y AUC | PFS 2y AUC | OS C-index | OS 1y AUC | OS 2y AUC |"


def write_cohort(root, truth: bool = True, short_fold0: bool = False, seed: int = 0):
    """COHORT/clinical.csv + folds.csv (+ truth.csv); returns (cohort, work, lp table).

    With ``short_fold0`` every fold-0 patient is followed < 20 months, so that the 2-year
    AUC is undefined in fold 0.
    """
    rng = np.random.default_rng(seed)
    cohort, work = root / "cohort", root / "work"
    cohort.mkdir(parents=True)
    work.mkdir()
    ids = [f"P{i:03d}" for i in range(N)]
    lp = {"pfs": rng.normal(size=N)}
    lp["os"] = lp["pfs"] + 0.3 * rng.normal(size=N)
    rows = []
    for i, pid in enumerate(ids):
        row = {
            "patient_id": pid, "age": 60, "sex": "M", "ecog": 1, "ldh_ratio": 1.0,
            "ann_arbor": 3, "extranodal_sites": 0, "ipi": 2,
        }  # fmt: skip
        t_event = rng.exponential(30.0 * np.exp(-lp["pfs"][i]))
        t_cens = rng.uniform(6.0, 72.0)
        pfs, pev = min(t_event, t_cens) + 0.1, int(t_event <= t_cens)
        oev = int(pev and rng.random() < 0.7)  # a death is a PFS event; OS >= PFS
        gap = rng.uniform(0.1, 6.0) if oev else rng.uniform(0.0, 12.0)
        row.update(pfs_months=pfs, pfs_event=pev, os_months=pfs + gap, os_event=oev)
        if i >= N - N_OUT:
            for c in ("pfs_months", "pfs_event", "os_months", "os_event"):
                row[c] = None
        rows.append(row)
    clinical = pd.DataFrame(rows)
    folds = make_folds(ids, clinical["pfs_event"].fillna(-1).astype(int), 5, seed)
    if short_fold0:
        f0 = clinical["patient_id"].isin(folds.loc[folds["fold"] == 0, "patient_id"])
        for e in ("pfs", "os"):
            clinical.loc[f0, f"{e}_months"] = np.minimum(clinical.loc[f0, f"{e}_months"], 19.0)
    clinical.to_csv(cohort / "clinical.csv", index=False)
    write_folds(cohort / "folds.csv", folds)
    table = pd.DataFrame({"patient_id": ids, "lp_pfs": lp["pfs"], "lp_os": lp["os"]})
    if truth:
        table.assign(frailty_pfs=0.0, tmtv_ml=300.0).to_csv(cohort / "truth.csv", index=False)
    return cohort, work, table


def scored(cohort):
    """Patients with outcome, with their fold."""
    clinical = pd.read_csv(cohort / "clinical.csv", dtype={"patient_id": str})
    folds = read_folds(cohort / "folds.csv")
    return clinical.dropna(subset=["pfs_months"]).merge(folds, on="patient_id")


def noisy_risk(lp_table, patients, endpoint, noise, rng):
    lp = lp_table.set_index("patient_id").loc[patients["patient_id"], f"lp_{endpoint}"]
    return lp.to_numpy() + noise * rng.normal(size=len(patients))


def write_lamp_oof(cohort, work, lp_table, variants=("baseline", "abmla", "lacf", "full"),
                   seeds=(0, 1), drop_fold=None):  # fmt: skip
    rng = np.random.default_rng(1)
    pts = scored(cohort)
    rows = []
    for e in ("pfs", "os"):
        for v_i, v in enumerate(variants):
            for s in seeds:
                r = noisy_risk(lp_table, pts, e, 2.0 - 0.4 * v_i, rng)
                for pid, f, x in zip(pts["patient_id"], pts["fold"], r, strict=True):
                    if f != drop_fold:
                        rows.append((pid, e, v, s, f, x))
    df = pd.DataFrame(rows, columns=["patient_id", "endpoint", "variant", "seed", "fold", "risk"])
    (work / "prognosis").mkdir(parents=True, exist_ok=True)
    df.to_csv(work / "prognosis" / "oof_risk.csv", index=False)
    return df


def write_baseline_oof(cohort, work, lp_table, method, noise=3.0, endpoints=("pfs", "os")):
    rng = np.random.default_rng(abs(hash(method)) % 2**32)
    pts = scored(cohort)
    rows = []
    for e in endpoints:
        r = noisy_risk(lp_table, pts, e, noise, rng)
        for pid, f, x in zip(pts["patient_id"], pts["fold"], r, strict=True):
            rows.append((pid, e, method, 0, f, x))
    df = pd.DataFrame(rows, columns=["patient_id", "endpoint", "method", "seed", "fold", "risk"])
    (work / "baselines" / method).mkdir(parents=True, exist_ok=True)
    df.to_csv(work / "baselines" / method / "oof_risk.csv", index=False)
    return df


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A synthetic cohort with LAMP (4 variants, 2 seeds), 2 paper baselines, 1 other."""
    root = tmp_path_factory.mktemp("eval")
    cohort, work, lp = write_cohort(root, truth=True, short_fold0=True)
    lamp = write_lamp_oof(cohort, work, lp)
    write_baseline_oof(cohort, work, lp, "IPI")
    write_baseline_oof(cohort, work, lp, "metabolic_automatic", endpoints=("pfs",))
    write_baseline_oof(cohort, work, lp, "toy")
    res = evaluate(work, cohort, figures=False)
    return cohort, work, lp, lamp, res


def direct_fold_values(cohort, risks, endpoint, fold):
    """C-index, AUC@12, AUC@24 of one fold computed straight from the metric functions."""
    pts = scored(cohort)
    tcol, ecol = f"{endpoint}_months", f"{endpoint}_event"
    test = pts[pts["fold"] == fold].merge(risks, on="patient_id")
    train = pts[pts["fold"] != fold]
    c = concordance_index(test[ecol], test[tcol], test["risk"])
    out = [c]
    for m in (12.0, 24.0):
        try:
            out.append(
                time_dependent_auc(
                    train[ecol], train[tcol], test[ecol], test[tcol], test["risk"], [m]
                )[0]
            )
        except MetricError:
            out.append(np.nan)
    return out


def test_rows_in_the_papers_order_with_missing_rows_noted(evaluated):
    _, _, _, _, res = evaluated
    assert res.table1.index.tolist() == [
        "IPI", "Meta. Param. (automatic)", "toy", "LAMP (ours)", CEILING_LABEL,
    ]  # fmt: skip
    assert res.table2.index.tolist() == [
        "Baseline", "w/ ABMLA", "w/ LACF", "Full model", CEILING_LABEL,
    ]  # fmt: skip
    left_out = next(n for n in res.notes if n.startswith("left out"))
    for label in ("Ann Arbor", "Ann Arbor (automatic)", "Guo2021", "Liu2022", "Thiery2025"):
        assert label in left_out
    assert "IPI" not in left_out.split(": ", 1)[1].split("; ")
    assert any("toy" in n and "not among the paper's rows" in n for n in res.notes)
    # an endpoint without risks is n/a and said so
    assert res.table1.loc["Meta. Param. (automatic)", "OS C-index"] == "n/a"
    assert any("Meta. Param. (automatic): no risks for os" in n for n in res.notes)


def test_fold_values_equal_the_metrics_computed_directly(evaluated):
    cohort, _, lp, lamp, res = evaluated
    fm = res.fold_metrics
    for endpoint in ("pfs", "os"):
        for seed in (0, 1):
            risks = lamp[(lamp["variant"] == "full") & (lamp["endpoint"] == endpoint)
                         & (lamp["seed"] == seed)][["patient_id", "risk"]]  # fmt: skip
            for fold in range(5):
                row = fm[(fm["method"] == "lamp") & (fm["endpoint"] == endpoint)
                         & (fm["seed"] == seed) & (fm["fold"] == fold)]  # fmt: skip
                assert len(row) == 1
                got = row[["c_index", "auc_12", "auc_24"]].to_numpy()[0]
                np.testing.assert_allclose(got, direct_fold_values(cohort, risks, endpoint, fold))
    # the ceiling: the true linear predictors on the same folds
    truth = lp.rename(columns={"lp_pfs": "risk"})[["patient_id", "risk"]]
    row = fm[(fm["method"] == "true_risk") & (fm["endpoint"] == "pfs") & (fm["fold"] == 2)]
    np.testing.assert_allclose(
        row[["c_index", "auc_12", "auc_24"]].to_numpy()[0],
        direct_fold_values(cohort, truth, "pfs", 2),
    )


def test_undefined_metric_is_nan_with_a_note_and_counted(evaluated):
    _, _, _, _, res = evaluated
    fm = res.fold_metrics
    f0 = fm[fm["fold"] == 0]
    assert f0["auc_24"].isna().all()  # fold 0 follow-up < 20 months
    assert f0["note"].str.contains("auc_24: time_dependent_auc: time point 24").all()
    assert fm.loc[fm["fold"] != 0, "auc_24"].notna().all()
    # LAMP: 2 seeds x 5 folds, 8 defined; single-seed baselines: 4/5
    assert res.table1.loc["LAMP (ours)", "PFS 2y AUC"].endswith("(8/10 folds)")
    assert res.table1.loc["IPI", "PFS 2y AUC"].endswith("± n/a (4/5 folds)")
    assert "folds)" not in res.table1.loc["IPI", "PFS C-index"]
    s = res.summary.set_index(["method", "endpoint", "metric"])
    lamp = fm[(fm["method"] == "lamp") & (fm["endpoint"] == "pfs")]
    seed_means = lamp.groupby("seed")["auc_24"].mean()  # over the 4 defined folds
    assert s.loc[("lamp", "pfs", "auc_24"), "mean"] == pytest.approx(seed_means.mean())
    assert s.loc[("lamp", "pfs", "auc_24"), "sd"] == pytest.approx(seed_means.std(ddof=1))
    assert s.loc[("lamp", "pfs", "auc_24"), "folds_used"] == 8
    assert any("undefined metric" in n for n in res.notes)


def test_cells_agree_with_format_table(evaluated):
    _, _, _, _, res = evaluated
    fm = res.fold_metrics
    part = fm[fm["method"].str.startswith("lamp")]
    ref = format_table(part, metrics=("c_index", "auc_12"), row="method")
    table = res.table2.rename(index={"Full model": "lamp", "Baseline": "lamp_baseline"})
    for method in ("lamp", "lamp_baseline"):
        for endpoint, label in (("pfs", "PFS"), ("os", "OS")):
            for metric, name in (("c_index", "C-index"), ("auc_12", "1y AUC")):
                # both add "(k/n folds)" where folds are left out
                cell = table.loc[method, f"{label} {name}"]
                assert cell == ref.loc[method, (endpoint, metric)]


def test_outputs_written(evaluated):
    _, work, _, _, res = evaluated
    out = work / "results"
    for name in ("table1.csv", "table1.md", "table2.csv", "table2.md", "fold_metrics.csv",
                 "logrank.csv", "evaluate.json"):  # fmt: skip
        assert (out / name).is_file(), name
    md = (out / "table1.md").read_text().splitlines()
    assert md[2] == HEADER
    assert md[3].startswith("|:---|")
    lamp_line = next(x for x in md if x.startswith("| LAMP (ours) |"))
    cells = [c.strip() for c in lamp_line.strip("|").split("|")]
    assert len(cells) == 7 and cells[1] == res.table1.loc["LAMP (ours)", "PFS C-index"]
    assert cells[1].count(" ± ") == 1 and len(cells[1].split(" ± ")[0]) == 5  # "0.712"
    assert any("left out" in x for x in md)
    t1 = pd.read_csv(out / "table1.csv")
    assert t1["label"].drop_duplicates().tolist() == res.table1.index.tolist()
    assert {"mean", "sd", "n_seeds", "folds_used", "folds_total", "cell"} <= set(t1.columns)
    back = pd.read_csv(out / "fold_metrics.csv")
    assert len(back) == len(res.fold_metrics)
    assert not list(out.glob("km_*.png"))  # figures=False
    assert not list(out.glob(".*.tmp"))


def test_km_figures_for_table1_rows(evaluated, tmp_path):
    cohort, work, _, _, _ = evaluated
    res = evaluate(work, cohort, methods=["lamp_abmla", "IPI"], out=tmp_path / "r")
    # the Table 1 rows only (first seed), not the ablations of Table 2
    assert res.table1.index.tolist() == ["IPI"] and res.table2.index.tolist() == ["w/ ABMLA"]
    names = sorted(p.name for p in (tmp_path / "r").glob("*.png"))
    assert names == ["km_os_ipi.png", "km_pfs_ipi.png"]
    png = (tmp_path / "r" / "km_pfs_ipi.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and b"Software" not in png


def test_km_figure_is_deterministic(tmp_path):
    rng = np.random.default_rng(0)
    groups = {
        "High risk": (rng.exponential(20, 30) + 0.1, rng.random(30) < 0.6),
        "Low risk": (rng.exponential(60, 30) + 0.1, rng.random(30) < 0.6),
        "Empty": (np.array([]), np.array([])),
    }
    a = km_figure(tmp_path / "a.png", groups, "PFS", 0.0004).read_bytes()
    b = km_figure(tmp_path / "b.png", groups, "PFS", 0.0004).read_bytes()
    assert a == b and a[:4] == b"\x89PNG"
    assert format_p(0.0004) == "p < 0.001" and format_p(0.0123) == "p = 0.012"
    assert format_p(float("nan")) == "p = n/a"


def test_logrank_rows_follow_the_fold_rule(evaluated):
    cohort, _, _, lamp, res = evaluated
    lr = res.logrank
    assert len(lr) == len(res.fold_metrics[["method", "endpoint", "seed"]].drop_duplicates())
    row = lr[(lr["method"] == "lamp") & (lr["endpoint"] == "os") & (lr["seed"] == 1)].iloc[0]
    assert row["rule"] == RULE_OTHER_FOLDS
    pts = scored(cohort)
    oof = lamp[(lamp["variant"] == "full") & (lamp["endpoint"] == "os") & (lamp["seed"] == 1)]
    g = risk_groups(oof[["patient_id", "fold", "risk"]]).merge(pts, on="patient_id")
    hi, lo = g[g["high"]], g[~g["high"]]
    ref = logrank_test(hi["os_months"], hi["os_event"], lo["os_months"], lo["os_event"])
    assert row["n_high"] == len(hi) and row["n_low"] == len(lo)
    assert row["chi2"] == pytest.approx(ref.chi2) and row["p_value"] == pytest.approx(ref.p_value)


def test_no_ceiling_without_truth_and_method_filter(tmp_path):
    cohort, work, lp = write_cohort(tmp_path, truth=False)
    write_lamp_oof(cohort, work, lp, variants=("baseline", "full"), seeds=(0,))
    write_baseline_oof(cohort, work, lp, "Ann Arbor (automatic)")
    res = evaluate(work, cohort, figures=False)
    assert res.table1.index.tolist() == ["Ann Arbor (automatic)", "LAMP (ours)"]
    assert res.table2.index.tolist() == ["Baseline", "Full model"]
    assert "w/ ABMLA" in res.notes[0] and "w/ LACF" in res.notes[0]
    assert not list((work / "results").glob("km_*.png"))
    # a folder named like the label and the canonical key select the same row
    t1, t2, _ = collect_sources(work, cohort, ["ann_arbor_automatic"])
    assert [s.label for s in t1] == ["Ann Arbor (automatic)"] and t2 == []
    assert method_slug("Ann Arbor (automatic)") == "ann_arbor_automatic"
    with pytest.raises(EvaluationError, match=r"no risk file for \['guo2021'\]"):
        collect_sources(work, cohort, ["lamp", "guo2021"])
    with pytest.raises(EvaluationError, match="true_risk"):
        collect_sources(work, cohort, ["true_risk"])


def test_inconsistent_files_are_refused(tmp_path):
    cohort, work, lp = write_cohort(tmp_path, truth=False)
    df = write_baseline_oof(cohort, work, lp, "ipi")
    df.loc[0, "fold"] = (df.loc[0, "fold"] + 1) % 5
    df.to_csv(work / "baselines" / "ipi" / "oof_risk.csv", index=False)
    with pytest.raises(EvaluationError, match="another fold"):
        evaluate(work, cohort, figures=False)
    df = write_baseline_oof(cohort, work, lp, "ipi")
    df.loc[0, "patient_id"] = f"P{N - 1:03d}"  # a patient without outcome
    df.to_csv(work / "baselines" / "ipi" / "oof_risk.csv", index=False)
    with pytest.raises(EvaluationError, match="not patients with outcome"):
        evaluate(work, cohort, figures=False)


def test_missing_fold_is_a_noted_nan_row(tmp_path):
    cohort, work, lp = write_cohort(tmp_path, truth=False)
    write_lamp_oof(cohort, work, lp, variants=("full",), seeds=(0,), drop_fold=3)
    res = evaluate(work, cohort, figures=False)
    fm = res.fold_metrics
    row = fm[(fm["fold"] == 3) & (fm["endpoint"] == "pfs")]
    assert row["c_index"].isna().all() and (row["note"] == "no out-of-fold risks for fold 3").all()
    assert res.table1.loc["LAMP (ours)", "PFS C-index"].endswith("(4/5 folds)")
    assert any("have no risk and are left out" in n for n in res.notes)


def test_cli(tmp_path, capsys):
    cohort, work, lp = write_cohort(tmp_path, truth=True)
    assert main(["evaluate", "--work", str(work), "--cohort", str(cohort)]) == 2
    err = capsys.readouterr().err
    assert "lamp evaluate: error: nothing to evaluate" in err and "lamp train" in err
    write_lamp_oof(cohort, work, lp, seeds=(0,))
    args = ["evaluate", "--work", str(work), "--cohort", str(cohort), "--no-figures"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count(HEADER) == 2
    assert "| LAMP (ours) |" in out and "| w/ ABMLA |" in out and f"| {CEILING_LABEL} |" in out
    assert "note: left out" in out and "Log-rank" in out
    assert (work / "results" / "table2.md").is_file()
    assert main([*args, "--methods", "guo2021"]) == 2
    assert "no risk file for ['guo2021']" in capsys.readouterr().err


def test_stored_training_risks_give_the_exact_split(tmp_path):
    cohort, work, lp = write_cohort(tmp_path, truth=False)
    oof = write_baseline_oof(cohort, work, lp, "guo2021", endpoints=("pfs",))
    # in-sample risks of each fold's training patients: here all 0 except fold 2's = 100
    pts = scored(cohort)
    rows = [
        (p, "pfs", "guo2021", 0, k, 100.0 if k == 2 else 0.0)
        for k in range(5)
        for p in pts.loc[pts["fold"] != k, "patient_id"]
    ]
    cols = ["patient_id", "endpoint", "method", "seed", "fold", "risk"]
    pd.DataFrame(rows, columns=cols).to_csv(work / "baselines/guo2021/train_risk.csv", index=False)
    res = evaluate(work, cohort, figures=False)
    row = res.logrank.iloc[0]
    assert row["method"] == "guo2021" and row["rule"] == RULE_EXACT
    merged = oof.merge(pts[["patient_id"]], on="patient_id")
    high = ((merged["risk"] > 0) & (merged["fold"] != 2)).sum()  # fold 2: nobody above 100
    assert row["n_high"] == high and row["n_low"] == len(merged) - high


def test_training_risks_missing_a_fold_are_refused(tmp_path):
    cohort, work, lp = write_cohort(tmp_path, truth=False)
    write_baseline_oof(cohort, work, lp, "guo2021", endpoints=("pfs",))
    pts = scored(cohort)
    rows = [
        (p, "pfs", "guo2021", 0, k, 1.0)
        for k in (0, 1, 2, 4)  # fold 3's model scored no training patient
        for p in pts.loc[pts["fold"] != k, "patient_id"]
    ]
    cols = ["patient_id", "endpoint", "method", "seed", "fold", "risk"]
    pd.DataFrame(rows, columns=cols).to_csv(work / "baselines/guo2021/train_risk.csv", index=False)
    with pytest.raises(
        EvaluationError, match=r"train_risk.csv: no training-patient risks of fold\(s\) \[3\]"
    ):
        evaluate(work, cohort, figures=False)


def test_baseline_folder_names_map_to_the_papers_rows(tmp_path):
    # the names the baseline modules write (lamp.baselines.*), in a scrambled order
    cohort, work, lp = write_cohort(tmp_path, truth=False)
    names = ["Thiery2025", "Radiomics (automatic)", "Metabolic (manual)", "Ann Arbor (automatic)",
             "Guo2021", "Ann Arbor", "IPI", "Liu2022", "Metabolic (automatic)",
             "Radiomics (manual)", "Ann Arbor (manual masks)"]  # fmt: skip
    for name in names:
        write_baseline_oof(cohort, work, lp, name, endpoints=("pfs",))
    t1, t2, notes = collect_sources(work, cohort)
    assert [s.label for s in t1] == [
        "IPI", "Ann Arbor", "Ann Arbor (automatic)", "Ann Arbor (manual masks)",
        "Meta. Param. (manual)", "Meta. Param. (automatic)", "Radiomics (manual)",
        "Radiomics (automatic)", "Guo2021", "Liu2022", "Thiery2025",
    ]  # fmt: skip
    assert t2 == [] and len(notes) == 1
    assert notes[0].endswith(f"LAMP and its ablations (no {work / 'prognosis' / 'oof_risk.csv'})")
