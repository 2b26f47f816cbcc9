"""LAMP on the decoder features of ONE trained segmentation network (development check).

Usage (after ``lamp segment train --fold K`` on the cohort)::

    .venv/bin/python benchmarks/bench_lamp_one_network.py --cohort C --work W --fold 0 \\
        --out OUT [--seeds 1] [--step 1.0] [--workers 2]

The protocol of the paper needs five segmentation networks, each patient's features coming
from the network of the fold that held it out (``lamp features``). On a CPU that is hours
of training (docs/benchmarks.md). This script asks a narrower question first: *given
decoder features of a trained network, does the prognosis model learn?* It

1. builds a work folder ``OUT`` whose nnU-Net results give fold K's trained network for
   every fold (symbolic links; ``W`` is not modified);
2. pools the 128-d features of every patient over the **reference** lesion masks and the
   organ groups with that network (``lamp features --reference`` semantics, step
   ``--step``), so only the lesions' delineation is taken as given;
3. cross-validates LAMP's four variants for PFS and OS on the cohort's real folds
   (``lamp train``) and evaluates them with the true-risk ceiling (``lamp evaluate``).

**What it is not**: the protocol's figure. Fold K's network saw the lesion masks of the
patients of the other four folds during its training (a segmentation label, not an
outcome: nothing here reads ``truth.csv`` or the outcomes except the prognosis model's
training folds and the evaluation), so their features come from a network that fitted
them. Prints the Table-2 layout, the ceiling, and each variant's share of the distance
from 0.5 to the ceiling, (C - 0.5) / (C_true - 0.5).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np

from lamp.segmentation.nnunet import SEG_CONFIGS, results_folder


def _one_network_work(work: Path, out: Path, fold: int, cfg) -> None:
    """OUT/nnunet: raw and preprocessed linked, results giving fold K for every fold."""
    src = results_folder(work, cfg, plain=False)
    if not (src / f"fold_{fold}" / "checkpoint_final.pth").is_file():
        raise SystemExit(f"{src}/fold_{fold}: not trained; run lamp segment train --fold {fold}")
    base = out / "nnunet"
    base.mkdir(parents=True, exist_ok=True)
    for name in ("raw", "preprocessed"):
        if not (base / name).exists():
            os.symlink((work / "nnunet" / name).resolve(), base / name)
    dst = results_folder(out, cfg, plain=False)
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.glob("*.json"):
        if not (dst / f.name).exists():
            os.symlink(f.resolve(), dst / f.name)
    for k in range(5):
        if not (dst / f"fold_{k}").exists():
            os.symlink((src / f"fold_{fold}").resolve(), dst / f"fold_{k}")


def _one_feature_space(folder: Path, fold: int) -> None:
    """Mark every feature file as made by one network for all folds (``meta["network"]
    ["fold"]`` = None), as it is here, so that ``lamp train`` uses the same files for
    every prognosis fold instead of asking for each fold network's ``fold_<k>/`` files."""
    from lamp.features import _write_npz

    for path in sorted(folder.glob("*.npz")):
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        meta = json.loads(str(arrays["meta"]))
        network = meta.get("network") or {}
        if network.get("fold") is None:
            continue
        meta["network"] = {
            "fold": None,
            "model_dir": network.get("model_dir"),
            "note": f"fold {fold}'s network for every patient (bench_lamp_one_network.py)",
        }
        arrays["meta"] = np.array(json.dumps(meta))
        _write_npz(path, arrays)


def print_report(work: Path, cohort: Path) -> None:
    """Tables 2 and 1 of ``lamp evaluate`` (LAMP and the ceiling), then each variant's
    share of the distance from 0.5 to the true risk's C-index."""
    from lamp.evaluation.tables import TITLES, evaluate, to_markdown

    res = evaluate(work, cohort, methods=["lamp", "true_risk"])
    print(to_markdown(res.table2, TITLES["table2"], res.footnotes["table2"]))
    print(to_markdown(res.table1, TITLES["table1"], res.footnotes["table1"]))
    sm = res.summary[res.summary["metric"] == "c_index"]
    true = sm[sm["method"] == "true_risk"].set_index("endpoint")["mean"]
    for row in sm[sm["method"] != "true_risk"].itertuples():
        share = (row.mean - 0.5) / (true[row.endpoint] - 0.5)
        name = getattr(row, "label", row.method)
        print(f"{name:<28} {row.endpoint}: C {row.mean:.3f}, (C-0.5)/(C_true-0.5) {share:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cohort", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True, help="work folder of the trained fold")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--step", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--config", default="tiny", choices=sorted(SEG_CONFIGS))
    args = ap.parse_args()

    from lamp.model.layers import VARIANTS
    from lamp.model.train import train_cv
    from lamp.segmentation.extract import extract_cohort_features

    cfg = dataclasses.replace(SEG_CONFIGS[args.config], tile_step_size=args.step)
    out = args.out.resolve()
    _one_network_work(args.work.resolve(), out, args.fold, cfg)
    t0 = time.perf_counter()
    # one pass per patient: every fold's "network" is fold K's, so the fold_<k>/ files
    # of lamp features would repeat the same pass four more times
    feats = extract_cohort_features(args.cohort, out, cfg, reference=True, training_patients=False)
    _one_feature_space(feats, args.fold)
    t_feat = time.perf_counter() - t0
    link = out / "features"
    if not link.exists():
        os.symlink(feats, link)
    t0 = time.perf_counter()
    train_cv(
        out, args.cohort, ("pfs", "os"), tuple(VARIANTS), tuple(range(args.seeds)),
        workers=args.workers,
    )  # fmt: skip
    t_train = time.perf_counter() - t0
    print_report(out, args.cohort)
    print(f"features pass {t_feat:.0f} s, prognosis grid {t_train:.0f} s")


if __name__ == "__main__":
    main()
