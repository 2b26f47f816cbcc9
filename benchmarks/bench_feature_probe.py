"""What do lesion features encode? Linear probes of a synthetic cohort's lesion attributes.

Usage::

    .venv/bin/python benchmarks/bench_feature_probe.py --cohort C --features W/features_reference

For a folder of feature files pooled over the **reference** lesion masks of a synthetic
cohort (``lamp features --reference``, or ``bench_lamp_handcrafted.py``'s), this fits a
ridge regression from each lesion's feature row to each attribute the generator gave the
lesion (``COHORT/lesions.csv``: rendered volume, SUVmax, uptake heterogeneity, necrotic
fraction, nodal vs extranodal site) and prints the cross-validated R^2 (5 folds grouped
by patient, so no patient is on both sides; the ridge penalty chosen inside each training
fold by `sklearn.linear_model.RidgeCV`). For 128-d decoder features it also probes each
decoder's block (fused 0-63, PET 64-95, CT 96-127, the order of paper Eq. 1).

Several of these attributes enter the synthetic log-hazard (docs/synthetic.md: log TMTV,
heterogeneity, necrosis, log SUVmax, the organs involved), so features that cannot
recover them cannot carry that part of the risk, whatever the prognosis model does with
them. A benchmark: it reads the generator's per-lesion attributes, which no model may.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lamp.model.batching import load_features

BLOCKS_128 = {"fused": slice(0, 64), "pet": slice(64, 96), "ct": slice(96, 128)}


def lesion_rows(features: Path, cohort: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """Feature rows of every rendered reference lesion and its generator attributes."""
    rows, keys = [], []
    for path in sorted(features.glob("*.npz")):
        f = load_features(path)
        rows.append(f.lesion_features)
        keys += [(f.patient_id, int(i)) for i in f.lesion_ids]
    x = np.concatenate(rows, axis=0)
    key = pd.DataFrame(keys, columns=["patient_id", "lesion_id"])
    truth = pd.read_csv(cohort / "lesions.csv")
    table = key.merge(truth, on=["patient_id", "lesion_id"], how="left", validate="1:1")
    unmatched = int(table["volume_ml"].isna().sum())
    if unmatched:
        raise SystemExit(
            f"{features}: {unmatched} lesion rows have no match in {cohort}/lesions.csv; "
            "expected features pooled over the reference masks (lamp features --reference)"
        )
    keep = (table["rendered_ml"] > 0).to_numpy()
    return x[keep], table[keep].reset_index(drop=True)


def probe(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
    """Cross-validated R^2 of a ridge regression (folds grouped by patient)."""
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13)))
    pred = cross_val_predict(model, x, y, groups=groups, cv=GroupKFold(5))
    return float(1.0 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cohort", type=Path, required=True)
    ap.add_argument("--features", type=Path, required=True)
    args = ap.parse_args()
    x, t = lesion_rows(args.features, args.cohort)
    targets = {
        "log rendered volume": np.log(t["rendered_ml"].to_numpy()),
        "log SUVmax": np.log(t["suvmax"].to_numpy()),
        "heterogeneity": t["heterogeneity"].to_numpy(),
        "necrotic fraction": t["necrotic_fraction"].to_numpy(),
        "nodal site": (t["site_type"] == "nodal").to_numpy(float),
    }
    blocks = {"all": slice(None)}
    if x.shape[1] == 128:
        blocks.update(BLOCKS_128)
    groups = t["patient_id"].to_numpy()
    print(f"{len(t)} lesions of {t['patient_id'].nunique()} patients, {x.shape[1]}-d features")
    print("cross-validated R^2 | " + " | ".join(blocks))
    for name, y in targets.items():
        r2 = [probe(x[:, s], y, groups) for s in blocks.values()]
        print(f"{name:<20} | " + " | ".join(f"{v:6.3f}" for v in r2))


if __name__ == "__main__":
    main()
