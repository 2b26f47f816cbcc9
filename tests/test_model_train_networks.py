"""One feature space per prognosis fold: features made by the five segmentation networks.

Each fold network's features get their own offset here (as separately trained networks
give features on their own scales), so a fold model that mixed networks would see it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lamp.cohort import read_folds
from lamp.evaluation.metrics import concordance_index
from lamp.model.batching import FeatureFileError, load_features
from lamp.model.train import (
    TrainConfig,
    fold_feature_paths,
    load_checkpoint,
    predict_patient,
    train_cv,
)
from test_model_train import write_synthetic

FAST = TrainConfig(
    n_bins=4, lr=3e-3, batch_size=16, max_epochs=30, select_epochs=False,
    attn_dim=16, gate_dim=16, auc_months=(12.0,),
)  # fmt: skip


def offset(k: int) -> float:
    return 100.0 * (k + 1)


def _write(path: Path, base: dict, k: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        lesion_features=base["lesion_features"] + offset(k),
        organ_features=base["organ_features"] + offset(k),
        organ_present=base["organ_present"],
        lesion_ids=base["lesion_ids"],
        meta=np.array(json.dumps({"network": {"fold": k, "model_dir": "M"}})),
    )


def per_network(root: Path) -> tuple[Path, Path, pd.DataFrame]:
    """write_synthetic's cohort with the features lamp features writes for 5 networks."""
    cohort, work, _ = write_synthetic(root)
    folds = read_folds(cohort / "folds.csv")
    feats = work / "features"
    for pid, own in zip(folds["patient_id"], folds["fold"], strict=True):
        with np.load(feats / f"{pid}.npz") as data:
            base = {k: np.asarray(data[k]) for k in data.files}
        _write(feats / f"{pid}.npz", base, int(own))
        for k in range(5):
            if k != own:
                _write(feats / f"fold_{k}" / f"{pid}.npz", base, k)
    return cohort, work, folds


@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    cohort, work, folds = per_network(tmp_path_factory.mktemp("nets"))
    results = train_cv(work, cohort, ["pfs"], ["baseline"], [0], FAST)
    return cohort, work, folds, results


def test_each_fold_model_sees_its_own_network(networks) -> None:
    cohort, work, folds, results = networks
    ckpts = work / "prognosis" / "checkpoints" / "pfs" / "baseline"
    for k in range(5):
        fitted = load_checkpoint(ckpts / f"seed0_fold{k}.pt")[0]
        # the training features were network k's (offset(k)), standardised in-fold
        mean = fitted.standardizer.lesion_mean
        assert np.allclose(mean[1:], offset(k), atol=1.0), (k, mean[:4])
    # the held-out fold, scored with network k's out-of-fold features, ranks the
    # planted risk (a model fed another network's offsets would not)
    oof = results.oof.set_index("patient_id")["risk"]
    clinical = pd.read_csv(cohort / "clinical.csv").set_index("patient_id").loc[oof.index]
    c = concordance_index(clinical["pfs_event"], clinical["pfs_months"], oof)
    assert c > 0.65


def test_paths_per_fold_and_the_shared_space(networks, tmp_path: Path) -> None:
    _, work, folds, _ = networks
    table = folds.iloc[:12]
    paths = fold_feature_paths(work, table)
    for k, by_patient in paths.items():
        for pid, path in by_patient.items():
            own = int(table.set_index("patient_id").loc[pid, "fold"])
            expect = work / "features" / (f"{pid}.npz" if own == k else f"fold_{k}/{pid}.npz")
            assert Path(path) == expect
            assert load_features(path).network_fold == k
    # features that name no network (write_synthetic's) are one space for every fold
    cohort2, work2, _ = write_synthetic(tmp_path / "plain", n=20, n_without_outcome=0)
    table2 = read_folds(cohort2 / "folds.csv")
    plain = fold_feature_paths(work2, table2)
    assert all(
        p == str(work2 / "features" / f"{q}.npz") for v in plain.values() for q, p in v.items()
    )


def test_mixed_or_missing_networks_are_refused(tmp_path: Path) -> None:
    cohort, work, folds = per_network(tmp_path)
    pid, own = folds["patient_id"].iloc[0], int(folds["fold"].iloc[0])
    other = (own + 1) % 5
    flat = work / "features" / f"{pid}.npz"
    # an out-of-fold file made by another fold's network
    saved = flat.read_bytes()
    (work / "features" / f"fold_{other}" / f"{pid}.npz").replace(flat)
    with pytest.raises(FeatureFileError, match=rf"{pid}\.npz: meta\.network\.fold: expected {own}"):
        train_cv(work, cohort, ["pfs"], ["baseline"], [0], FAST)
    flat.write_bytes(saved)
    # a training patient's file of fold k's network missing (--out-of-fold-only)
    missing = work / "features" / f"fold_{other}" / f"{folds['patient_id'].iloc[1]}.npz"
    if missing.is_file():
        missing.unlink()
    else:  # that patient is in fold `other`: take another fold's file of patient 0
        (work / "features" / f"fold_{(own + 2) % 5}" / f"{pid}.npz").unlink()
    with pytest.raises(FeatureFileError, match="out-of-fold-only"):
        train_cv(work, cohort, ["pfs"], ["baseline"], [0], FAST)


def test_predict_patient_pairs_models_with_networks(networks, tmp_path: Path) -> None:
    _, work, folds, _ = networks
    pid = folds["patient_id"].iloc[0]
    res = predict_patient(work, work / "features" / f"{pid}.npz", "pfs", "baseline")
    assert res["n_models"] == 5 and np.isfinite(res["risk_mean"])
    # the same from a file under fold_<k>/: the others are found beside it
    k = next(k for k in range(5) if (work / "features" / f"fold_{k}" / f"{pid}.npz").is_file())
    again = predict_patient(work, work / "features" / f"fold_{k}" / f"{pid}.npz", "pfs", "baseline")
    assert again["fold_risks"] == pytest.approx(res["fold_risks"])
    # a lone copy without the other networks' files is refused, naming what is missing
    lone = tmp_path / f"{pid}.npz"
    lone.write_bytes((work / "features" / f"{pid}.npz").read_bytes())
    with pytest.raises(FeatureFileError, match="fold_"):
        predict_patient(work, lone, "pfs", "baseline")
