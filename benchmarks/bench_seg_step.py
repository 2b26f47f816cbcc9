"""Sliding-window step: accuracy and time of out-of-fold prediction at two steps.

Usage (after ``lamp segment train --fold K`` on the cohort)::

    .venv/bin/python benchmarks/bench_seg_step.py --cohort C --work W --fold 0 \\
        [--plain] [--subset 8] [--steps 1.0 0.5] [--subset-only]

Predicts the patients that fold K held out with the trained model of fold K (nnU-Net's
predictor, Gaussian weighting) at each step: all of them at the first step, the first
``--subset`` of them at the others (at every step with ``--subset-only``). The first
step's predictions go where ``lamp segment predict`` puts them
(``W/segmentation/<net>/pred``: they are the out-of-fold predictions of those
patients); the others go to ``W/bench_step_<S>/``.
Prints, per step, the autoPET metrics against the reference masks (Dice, false
positive/negative volume, pooled lesion precision and recall; ``lamp.segmentation
.metrics``) over all predicted patients and over the common subset, the seconds per
patient, and the time ratio on the subset. Writes the per-patient metrics next to the
predictions (``bench_step_metrics.csv``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

from lamp.cohort import read_folds
from lamp.segmentation.evaluate import patient_metrics
from lamp.segmentation.metrics import cohort_metrics, metrics_frame
from lamp.segmentation.nnunet import SEG_CONFIGS, predict_out_of_fold

HEADLINE = ("dice_mean", "fpv_mean_ml", "fnv_mean_ml", "lesion_precision_pooled",
            "lesion_recall_pooled")  # fmt: skip


def _metrics(cohort: Path, pred_dir: Path, pids: list[str]):
    return metrics_frame({p: patient_metrics(cohort, pred_dir / f"{p}.nii.gz", p) for p in pids})


def _predict(cohort: Path, work: Path, cfg, plain: bool, fold: int, pids: list[str], out: Path):
    """Predict ``pids`` of ``fold`` into ``out`` (a work folder whose nnU-Net results are
    ``work``'s); returns (prediction folder, seconds, number predicted)."""
    net = "plain" if plain else "lamp"
    if out != work:
        out.mkdir(parents=True, exist_ok=True)
        link = out / "nnunet"
        if not link.exists():
            os.symlink((work / "nnunet").resolve(), link)
    pred_dir = out / "segmentation" / net / "pred"
    pred_dir.mkdir(parents=True, exist_ok=True)
    todo = sum(not (pred_dir / f"{p}.nii.gz").exists() for p in pids)
    t0 = time.perf_counter()
    predict_out_of_fold(cohort, out, cfg, plain=plain, folds=[fold], patients=pids)
    return pred_dir, time.perf_counter() - t0, todo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cohort", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--plain", action="store_true")
    ap.add_argument("--subset", type=int, default=8)
    ap.add_argument("--steps", type=float, nargs="+", default=[1.0, 0.5])
    ap.add_argument(
        "--subset-only", action="store_true", help="predict only the subset at every step"
    )
    ap.add_argument("--config", default="tiny", choices=sorted(SEG_CONFIGS))
    args = ap.parse_args()
    cohort, work = args.cohort, args.work.resolve()
    folds = read_folds(cohort / "folds.csv")
    pids = folds.loc[folds["fold"] == args.fold, "patient_id"].tolist()
    subset = pids[: args.subset]
    net = "plain" if args.plain else "lamp"
    report = {"network": net, "fold": args.fold, "n_fold": len(pids), "subset": subset}
    for i, step in enumerate(args.steps):
        cfg = dataclasses.replace(SEG_CONFIGS[args.config], tile_step_size=step)
        these = pids if i == 0 and not args.subset_only else subset
        out = work if i == 0 else work / f"bench_step_{step:g}"
        pred_dir, seconds, n_done = _predict(cohort, work, cfg, args.plain, args.fold, these, out)
        table = _metrics(cohort, pred_dir, these)
        table.to_csv(pred_dir.parent / f"bench_step_metrics_{step:g}.csv", index=False)
        entry = {
            "n": len(these),
            "predicted_now": n_done,
            "seconds_per_patient": seconds / n_done if n_done else None,
            "all": {k: cohort_metrics(table)[k] for k in HEADLINE},
            "subset": {
                k: cohort_metrics(table[table["patient_id"].isin(subset)])[k] for k in HEADLINE
            },
        }
        report[f"step {step:g}"] = entry
        print(f"step {step:g}: " + json.dumps(entry, default=float), flush=True)
    secs = [report[f"step {s:g}"]["seconds_per_patient"] for s in args.steps]
    if len(secs) > 1 and all(secs):
        print(f"time per patient, step {args.steps[1]:g} / step {args.steps[0]:g}: "
              f"{secs[1] / secs[0]:.2f}x")  # fmt: skip
    print(json.dumps(report, default=float, indent=1))


if __name__ == "__main__":
    main()
