"""Benchmark of LAMP prognosis training on a synthetic cohort of 229 patients.

The features are random with a planted signal (not the segmentation pipeline's): each
lesion has 128 features, feature 0 centred on a patient-level value mu, the log-hazard
is 2 * mu, and 34 of the 229 patients have no outcome (as in the paper: 195 of 229).

Prints
  1. the speed-up of the padded, masked batch over batch-1 gradient accumulation
     (same model, same 32-patient steps, one epoch each, measured in this run);
  2. the wall time of the whole grid, 2 endpoints x 4 variants x 3 seeds x 5 folds,
     with the default `TrainConfig` (inner-split epoch choice, then refit);
  3. the Table 2 layout of the results and the true risk's C-index.

Usage: python benchmarks/bench_prognosis.py [--max-epochs N] [--seeds N] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lamp.cohort import make_folds, write_folds
from lamp.evaluation.metrics import concordance_index, format_table
from lamp.model.batching import StackedPatients, Standardizer, load_features
from lamp.model.layers import LAMP, ModelConfig
from lamp.model.loss import nll_survival_loss
from lamp.model.train import TrainConfig, _standardize, available_cpus, train_cv

D, K = 128, 71


def write_cohort(root: Path, n: int = 229, n_without: int = 34, seed: int = 0) -> pd.Series:
    """Synthetic clinical.csv, folds.csv and features; returns the true log-hazard."""
    rng = np.random.default_rng(seed)
    (root / "work" / "features").mkdir(parents=True, exist_ok=True)
    (root / "cohort").mkdir(exist_ok=True)
    rows, truth = [], {}
    for i in range(n):
        pid = f"S{i:04d}"
        j = int(rng.poisson(4.0))
        mu = rng.normal()
        lesions = rng.normal(size=(j, D)).astype(np.float32)
        lesions[:, 0] = mu + 0.3 * rng.normal(size=j)
        np.savez(
            root / "work" / "features" / f"{pid}.npz",
            lesion_features=lesions,
            organ_features=rng.normal(size=(K, D)).astype(np.float32),
            organ_present=rng.random(K) > 0.1,
            lesion_ids=np.arange(1, j + 1),
        )
        r = 2.0 * mu if j else 0.0
        truth[pid] = r
        t_event = rng.exponential(36.0 * np.exp(-r))
        t_cens = rng.uniform(24.0, 84.0)
        pfs, pev = min(t_event, t_cens) + 0.1, int(t_event <= t_cens)
        oev = int(pev and rng.random() < 0.7)
        os_ = pfs + (rng.uniform(0.1, 12.0) if oev else rng.uniform(0.0, 12.0))
        row = {
            "patient_id": pid, "age": 65, "sex": "F", "ecog": 1, "ldh_ratio": 1.2,
            "ann_arbor": 3, "extranodal_sites": 1, "ipi": 2,
            "pfs_months": pfs, "pfs_event": pev, "os_months": os_, "os_event": oev,
        }  # fmt: skip
        if i >= n - n_without:
            for c in ("pfs_months", "pfs_event", "os_months", "os_event"):
                row[c] = None
        rows.append(row)
    clinical = pd.DataFrame(rows)
    clinical.to_csv(root / "cohort" / "clinical.csv", index=False)
    strata = clinical["pfs_event"].fillna(-1).astype(int)
    folds = make_folds(clinical["patient_id"].tolist(), strata, 5, seed)
    write_folds(root / "cohort" / "folds.csv", folds)
    return pd.Series(truth)


def time_batching(work: Path, n_patients: int = 160, repeats: int = 3) -> tuple[float, float]:
    """Seconds per epoch (full model, 32-patient steps): batch-1 accumulation, padded batch."""
    paths = sorted((work / "features").glob("*.npz"))[:n_patients]
    raw = [load_features(p) for p in paths]
    # Both paths read the same standardised, pre-stacked set, as training does.
    pats = StackedPatients(_standardize(raw, Standardizer.fit(raw)))
    rng = np.random.default_rng(0)
    bins = torch.as_tensor(rng.integers(0, 4, len(pats)))
    events = torch.as_tensor(rng.integers(0, 2, len(pats)))
    torch.manual_seed(0)
    model = LAMP(ModelConfig(n_bins=4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def accumulate() -> None:
        for start in range(0, len(pats), 32):
            opt.zero_grad()
            for i in range(start, min(start + 32, len(pats))):
                logits = model(*pats.take([i]).inputs())["logits"]
                (nll_survival_loss(logits, bins[i : i + 1], events[i : i + 1]) / 32).backward()
            opt.step()

    def padded() -> None:
        for start in range(0, len(pats), 32):
            idx = slice(start, start + 32)
            opt.zero_grad()
            logits = model(*pats.take(np.arange(len(pats))[idx]).inputs())["logits"]
            (nll_survival_loss(logits, bins[idx], events[idx]) / 32).backward()
            opt.step()

    out = []
    for fn in (accumulate, padded):
        fn()  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        out.append((time.perf_counter() - t0) / repeats)
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-epochs", type=int, default=TrainConfig().max_epochs)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="keep files here")
    parser.add_argument("--workers", type=int, default=available_cpus())
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="bench_prognosis_"))
    truth = write_cohort(root)
    print(f"synthetic cohort (random features, planted signal): {root}")
    print(f"torch threads: {torch.get_num_threads()}, grid worker processes: {args.workers}")

    t_acc, t_pad = time_batching(root / "work")
    print(
        f"one epoch of 160 patients, full model: batch-1 accumulation {t_acc:.3f} s, "
        f"padded batch {t_pad:.3f} s, speed-up {t_acc / t_pad:.1f}x"
    )

    config = dataclasses.replace(TrainConfig(), max_epochs=args.max_epochs)
    t0 = time.perf_counter()
    results = train_cv(
        root / "work", root / "cohort", ["pfs", "os"], ["baseline", "abmla", "lacf", "full"],
        list(range(args.seeds)), config, workers=args.workers,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    n_fits = len(results.fold_metrics)
    print(
        f"grid: {n_fits} fold models in {wall:.1f} s ({wall / 60:.2f} min), "
        f"{wall / n_fits:.2f} s each"
    )
    print(f"excluded without outcome: {len(results.excluded_ids)} of {results.n_patients}")
    print(f"epochs chosen: median {results.fold_metrics['epochs'].median():.0f}")
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", None)
    print(format_table(results.fold_metrics))
    clinical = pd.read_csv(root / "cohort" / "clinical.csv").dropna(subset=["pfs_event"])
    for ep in ("pfs", "os"):
        c = concordance_index(
            clinical[f"{ep}_event"], clinical[f"{ep}_months"], truth.loc[clinical["patient_id"]]
        )
        print(f"true risk C-index, {ep}: {c:.3f}")


if __name__ == "__main__":
    main()
