"""Cross-validated training on tiny synthetic feature files with a planted signal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lamp.cohort import make_folds, write_folds
from lamp.model.batching import load_features
from lamp.model.train import TrainConfig, load_checkpoint, predict, predict_patient, train_cv

D, K = 16, 71


def write_synthetic(
    root: Path, n: int = 80, n_without_outcome: int = 3, seed: int = 0
) -> tuple[Path, Path, pd.Series]:
    """A cohort (clinical.csv, folds.csv) and WORK/features/*.npz; returns the true risk.

    The log-hazard is 2.5 * mu, mu the mean of the lesions' feature 0, so any variant
    that can average feature 0 over the lesions can learn it.
    """
    rng = np.random.default_rng(seed)
    cohort, work = root / "cohort", root / "work"
    (work / "features").mkdir(parents=True)
    cohort.mkdir()
    rows, risk = [], {}
    for i in range(n):
        pid = f"P{i:03d}"
        j = int(rng.integers(0, 6))
        mu = rng.normal()
        lesions = rng.normal(size=(j, D)).astype(np.float32)
        lesions[:, 0] = mu + 0.3 * rng.normal(size=j)
        np.savez(
            work / "features" / f"{pid}.npz",
            lesion_features=lesions,
            organ_features=rng.normal(size=(K, D)).astype(np.float32),
            organ_present=rng.random(K) > 0.1,
            lesion_ids=np.arange(1, j + 1),
        )
        r = 2.5 * mu if j else 0.0
        risk[pid] = r
        t_event = rng.exponential(24.0 * np.exp(-r))
        t_cens = rng.uniform(12.0, 72.0)
        pfs, pev = min(t_event, t_cens) + 0.1, int(t_event <= t_cens)
        oev = int(pev and rng.random() < 0.8)
        os_ = pfs + (rng.uniform(0.1, 6.0) if oev else rng.uniform(0.0, 12.0))
        row = {
            "patient_id": pid, "age": 60, "sex": "M", "ecog": 1, "ldh_ratio": 1.0,
            "ann_arbor": 3, "extranodal_sites": 0, "ipi": 2,
            "pfs_months": pfs, "pfs_event": pev, "os_months": os_, "os_event": oev,
        }  # fmt: skip
        if i >= n - n_without_outcome:
            for c in ("pfs_months", "pfs_event", "os_months", "os_event"):
                row[c] = None
        rows.append(row)
    clinical = pd.DataFrame(rows)
    clinical.to_csv(cohort / "clinical.csv", index=False)
    strata = clinical["pfs_event"].fillna(-1).astype(int)
    write_folds(cohort / "folds.csv", make_folds(clinical["patient_id"].tolist(), strata, 5, seed))
    return cohort, work, pd.Series(risk)


FAST = TrainConfig(
    n_bins=4, lr=3e-3, batch_size=16, max_epochs=30, select_epochs=False,
    attn_dim=16, gate_dim=16, auc_months=(12.0,),
)  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cv")
    cohort, work, truth = write_synthetic(root)
    results = train_cv(work, cohort, ["pfs"], ["baseline", "full"], [0], FAST)
    return cohort, work, truth, results


def test_outputs_and_exclusions(trained) -> None:
    cohort, work, _, results = trained
    out = work / "prognosis"
    assert results.excluded_ids == ["P077", "P078", "P079"]
    config = json.loads((out / "config.json").read_text())
    assert config["excluded_without_outcome"] == results.excluded_ids
    assert config["train"]["lr"] == FAST.lr and config["n_with_outcome"] == 77
    oof = pd.read_csv(out / "oof_risk.csv")
    assert list(oof.columns) == ["patient_id", "endpoint", "variant", "seed", "fold", "risk"]
    assert len(oof) == 2 * 77 and not set(results.excluded_ids) & set(oof["patient_id"])
    att = pd.read_csv(out / "lesion_attention.csv")
    full = att[att["variant"] == "full"]
    sums = full.groupby("patient_id")["attention"].sum()
    np.testing.assert_allclose(sums, 1.0, atol=1e-5)
    assert full["organ_1"].notna().all() and (full["organ_1_attention"] > 0).all()
    metrics = pd.read_csv(out / "fold_metrics.csv")
    assert len(metrics) == 2 * 5 and metrics["c_index"].notna().all()
    # in-sample risks: every training patient of each fold, scored by that fold's model
    train = pd.read_csv(out / "train_risk.csv")
    folds = pd.read_csv(cohort / "folds.csv").set_index("patient_id")["fold"]
    assert list(train.columns) == list(oof.columns) and len(train) == 2 * 4 * 77
    assert (folds.loc[train["patient_id"]].to_numpy() != train["fold"].to_numpy()).all()


def test_planted_signal_is_learned(trained) -> None:
    from lamp.evaluation.metrics import concordance_index

    cohort, _, truth, results = trained
    clinical = pd.read_csv(cohort / "clinical.csv").dropna(subset=["pfs_event"])
    for variant in ("baseline", "full"):
        oof = results.oof[results.oof["variant"] == variant].set_index("patient_id")
        risk = oof.loc[clinical["patient_id"], "risk"]
        c = concordance_index(clinical["pfs_event"], clinical["pfs_months"], risk)
        assert c > 0.58, (variant, c)  # true risk: 0.78 on these data


def test_fold_rule(trained) -> None:
    """Each out-of-fold risk is the prediction of the model that did not train on it."""
    cohort, work, _, results = trained
    folds = pd.read_csv(cohort / "folds.csv").set_index("patient_id")["fold"]
    oof = results.oof[results.oof["variant"] == "full"]
    for fold in range(5):
        path = work / "prognosis" / "checkpoints" / "pfs" / "full" / f"seed0_fold{fold}.pt"
        fitted, payload = load_checkpoint(path)
        assert payload["fold"] == fold
        rows = oof[oof["fold"] == fold]
        assert set(folds.loc[rows["patient_id"]]) == {fold}
        assert not set(rows["patient_id"]) & set(fitted.train_ids)
        assert set(fitted.train_ids) == set(folds.index[(folds != fold)]) - set(
            results.excluded_ids
        )
        feats = [load_features(work / "features" / f"{p}.npz") for p in rows["patient_id"]]
        again = [p["risk"] for p in predict(fitted, feats)]
        np.testing.assert_allclose(again, rows["risk"], rtol=1e-5, atol=1e-6)


def test_checkpoint_is_weights_only(trained) -> None:
    _, work, _, _ = trained
    path = work / "prognosis" / "checkpoints" / "pfs" / "full" / "seed0_fold0.pt"
    payload = torch.load(path, weights_only=True)
    assert payload["model_config"]["use_lacf"] and payload["bin_edges"][0] == 0.0


def test_predict_patient(trained) -> None:
    _, work, _, _ = trained
    res = predict_patient(work, work / "features" / "P000.npz", "pfs", "full")
    assert res["n_models"] == 5 and len(res["fold_risks"]) == 5
    assert res["risk_sd"] >= 0 and np.isfinite(res["risk_mean"])
    s = np.array(res["survival"])
    assert s[0] == 1.0 and np.all(np.diff(s) <= 1e-9) and len(s) == len(res["survival_months"])
    att = [lesion["attention"] for lesion in res["lesions"]]
    assert att == sorted(att, reverse=True)
    if att:
        assert sum(att) == pytest.approx(1.0, abs=1e-5) and "top_organs" in res["lesions"][0]


def test_predict_patient_zero_lesions(trained, tmp_path: Path) -> None:
    _, work, _, _ = trained
    path = tmp_path / "new.npz"
    np.savez(
        path,
        lesion_features=np.zeros((0, D), np.float32),
        organ_features=np.ones((K, D), np.float32),
        organ_present=np.zeros(K, bool),
        lesion_ids=np.zeros(0, np.int64),
    )
    res = predict_patient(work, path, "pfs", "baseline")
    assert res["lesions"] == [] and np.isfinite(res["risk_mean"])


def test_epoch_selection_on_inner_split(tmp_path: Path) -> None:
    cohort, work, _ = write_synthetic(tmp_path, n=40, n_without_outcome=0, seed=1)
    config = TrainConfig(
        lr=3e-3, batch_size=16, max_epochs=6, eval_every=2, attn_dim=8, gate_dim=8,
        auc_months=(12.0,),
    )  # fmt: skip
    results = train_cv(work, cohort, ["os"], ["abmla"], [3], config)
    assert set(results.fold_metrics["epochs"]) <= {2, 4, 6}
    assert results.excluded_ids == []


def test_missing_features_and_bad_grid(tmp_path: Path) -> None:
    from lamp.errors import LampError

    cohort, work, _ = write_synthetic(tmp_path, n=20, n_without_outcome=0)
    with pytest.raises(LampError, match="variants"):
        train_cv(work, cohort, ["pfs"], ["fancy"], [0], FAST)
    (work / "features" / "P003.npz").unlink()
    with pytest.raises(LampError, match="missing 1"):
        train_cv(work, cohort, ["pfs"], ["full"], [0], FAST)


def test_worker_processes_give_the_same_results(tmp_path, trained) -> None:
    """The grid fitted in 2 spawned processes equals the one fitted in this process."""
    cohort, work, _, results = trained
    import shutil

    work2 = tmp_path / "work"
    shutil.copytree(work / "features", work2 / "features")
    again = train_cv(work2, cohort, ["pfs"], ["baseline", "full"], [0], FAST, workers=2)
    a = results.oof.sort_values(["variant", "patient_id"]).reset_index(drop=True)
    b = again.oof.sort_values(["variant", "patient_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a.drop(columns="risk"), b.drop(columns="risk"))
    np.testing.assert_allclose(a["risk"], b["risk"], rtol=1e-4, atol=1e-5)
    att1 = pd.read_csv(work / "prognosis" / "lesion_attention.csv")
    att2 = pd.read_csv(work2 / "prognosis" / "lesion_attention.csv")
    assert list(att1.columns) == list(att2.columns) and len(att1) == len(att2)


def test_marginal_hazards_and_head_init() -> None:
    """The life-table hazards by hand; at init the head predicts them for everyone, which is
    the likelihood's optimum for a model without covariates (zero gradient on the bias)."""
    from lamp.model.layers import LAMP, ModelConfig
    from lamp.model.loss import nll_survival_loss
    from lamp.model.train import _init_head, marginal_hazards

    bins = np.array([0, 0, 1, 1, 1, 2, 2, 3])
    events = np.array([1, 0, 1, 1, 0, 0, 1, 0], dtype=bool)
    # bin 0: 1 event / 8 at risk; bin 1: 2 / 6; bin 2: 1 / 3; bin 3: 0 / 1 -> clipped 0.01
    np.testing.assert_allclose(marginal_hazards(bins, events, 4), [1 / 8, 2 / 6, 1 / 3, 0.01])
    model = LAMP(ModelConfig(n_bins=3, feature_dim=8, attn_dim=4, gate_dim=4))
    b3, e3 = np.minimum(bins, 2), events
    _init_head(model, b3, e3)
    assert torch.count_nonzero(model.head.weight) == 0
    rng = np.random.default_rng(0)
    lesions = torch.as_tensor(rng.normal(size=(8, 3, 8)), dtype=torch.float32)
    organs = torch.as_tensor(rng.normal(size=(8, 5, 8)), dtype=torch.float32)
    logits = model(lesions, torch.ones(8, 3, dtype=torch.bool), organs,
                   torch.ones(8, 5, dtype=torch.bool))["logits"]  # fmt: skip
    np.testing.assert_allclose(
        torch.sigmoid(logits).detach().numpy(), np.tile([1 / 8, 2 / 6, 1 / 3], (8, 1)), rtol=1e-5
    )
    loss = nll_survival_loss(logits, torch.as_tensor(b3), torch.as_tensor(e3, dtype=torch.float32))
    loss.backward()
    assert model.head.bias.grad.abs().max() < 1e-5
