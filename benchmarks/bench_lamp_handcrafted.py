"""LAMP on hand-crafted region statistics instead of decoder features (a control).

Usage::

    .venv/bin/python benchmarks/bench_lamp_handcrafted.py --cohort C --out OUT \\
        [--seeds 1] [--workers 2] [--lr 1e-4] [--drop suv_sd suv_cov ...]

`bench_lamp_one_network.py` found LAMP far from the true risk on the decoder features of
an under-trained segmentation network. That leaves two suspects: the features, or the
prognosis model and its training. This script removes the first one. It writes, for every
patient of the cohort, a feature file in the format of ``lamp features``
(``OUT/features/<patient_id>.npz``) whose rows are **hand-crafted statistics of the
images** over each reference lesion instance and over each of the 71 organ groups, the
same statistics for both (so LACF's projections compare like with like):

====  =======================================================================
 0    log volume (ml)
 1    log SUVmax
 2    SUVmean
 3    SUV standard deviation
 4    SUV coefficient of variation (sd / mean): uptake heterogeneity
 5    fraction of voxels below 40 % of the region's SUVmax: photopenic (necrotic) share
 6    CT mean (HU / 100), CT on the PET grid (trilinear)
 7    CT standard deviation (HU / 100)
 8    overlap: for a lesion, the fraction inside any organ group; for an organ group,
      the fraction covered by lesions
====  =======================================================================

Then it cross-validates LAMP's four variants on the cohort's folds (``lamp train``,
default `TrainConfig` unless ``--lr``) and evaluates them with the true-risk ceiling.
``--drop`` leaves statistics out, to see what the model loses without them (use a new
``--out`` folder for each set; feature files of another set are rewritten).

Only images and reference masks are read to build the features: no outcome, no
``truth.csv`` (the evaluation alone reads it, for the ceiling row). **Not the paper's
method**: LAMP's features are the segmentation decoder's (paper Eq. 1-2). If the model
reaches the ceiling's neighbourhood here, its architecture and training can use lesion-
and organ-level signal, and a shortfall on decoder features is a feature problem.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from lamp.anatomy import N_GROUPS, merge_to_groups
from lamp.cohort import CASE_FILES, atomic_output, read_clinical
from lamp.images import load_nifti, resample_to_grid, voxel_spacing

STATS = (
    "log_volume_ml", "log_suvmax", "suvmean", "suv_sd", "suv_cov",
    "photopenic_fraction", "ct_mean_100hu", "ct_sd_100hu", "overlap",
)  # fmt: skip


def region_stats(
    labels: np.ndarray, n: int, pet: np.ndarray, ct: np.ndarray, other: np.ndarray, ml: float
) -> tuple[np.ndarray, np.ndarray]:
    """Statistics of `STATS` for regions 1..n of ``labels``; (n, 9) and present (n,)."""
    flat = labels.ravel().astype(np.int64)
    sel = flat > 0
    idx, p, c, o = flat[sel] - 1, pet.ravel()[sel], ct.ravel()[sel], other.ravel()[sel]
    count = np.bincount(idx, minlength=n).astype(np.float64)
    present = count > 0
    safe = np.maximum(count, 1.0)

    def mean(v: np.ndarray) -> np.ndarray:
        return np.bincount(idx, weights=v, minlength=n) / safe

    suvmax = np.full(n, -np.inf)
    np.maximum.at(suvmax, idx, p)
    suvmax = np.where(present, suvmax, 1.0)
    pm, cm = mean(p), mean(c)
    psd = np.sqrt(np.maximum(mean(p * p) - pm**2, 0.0))
    csd = np.sqrt(np.maximum(mean(c * c) - cm**2, 0.0))
    low = mean((p < 0.4 * suvmax[idx]).astype(np.float64))
    out = np.stack(
        [
            np.log(np.maximum(count * ml, 1e-3)),
            np.log(np.maximum(suvmax, 1e-3)),
            pm,
            psd,
            psd / np.maximum(pm, 1e-3),
            low,
            cm / 100.0,
            csd / 100.0,
            mean(o.astype(np.float64)),
        ],
        axis=1,
    )
    return np.where(present[:, None], out, 0.0).astype(np.float32), present


def write_case(cohort: Path, pid: str, dst: Path, keep: list[int]) -> int:
    """Write ``dst/<pid>.npz`` with the statistics ``keep``; returns the number of lesions."""
    folder = cohort / "cases" / pid
    pet, aff = load_nifti(folder / CASE_FILES["pet"])
    ct, ct_aff = load_nifti(folder / CASE_FILES["ct"])
    organs, _ = load_nifti(folder / CASE_FILES["organs"])
    lesions, _ = load_nifti(folder / CASE_FILES["lesions"])
    ct = resample_to_grid(ct.astype(np.float32), ct_aff, pet.shape, aff, order=1, fill=-1000.0)
    groups = merge_to_groups(organs)
    ml = float(np.prod(voxel_spacing(aff))) / 1000.0
    ids = np.unique(lesions[lesions > 0]).astype(np.int64)
    # instance ids -> 1..J in one pass (ids may have gaps)
    dense = np.where(lesions > 0, np.searchsorted(ids, lesions) + 1, 0)
    les, _ = region_stats(dense, len(ids), pet, ct, groups > 0, ml)
    org, present = region_stats(groups, N_GROUPS, pet, ct, lesions > 0, ml)
    with atomic_output(dst / f"{pid}.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(
                fh, lesion_features=les[:, keep], organ_features=org[:, keep],
                organ_present=present, lesion_ids=ids, stat_names=np.array(STATS)[keep],
            )  # fmt: skip
    return len(ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cohort", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--lr", type=float, default=None, help="override TrainConfig.lr")
    ap.add_argument(
        "--drop", nargs="*", default=[], choices=STATS, help="leave these statistics out"
    )
    args = ap.parse_args()
    keep = [i for i, name in enumerate(STATS) if name not in args.drop]

    from bench_lamp_one_network import print_report
    from lamp.model.layers import VARIANTS
    from lamp.model.train import TrainConfig, train_cv

    out = args.out.resolve()
    feats = out / "features"
    feats.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pids = read_clinical(args.cohort / "clinical.csv")["patient_id"].tolist()
    names = list(np.array(STATS)[keep])

    def done(pid: str) -> bool:  # a file of another --drop set is rewritten
        path = feats / f"{pid}.npz"
        if not path.is_file():
            return False
        with np.load(path) as f:
            return list(f["stat_names"]) == names

    todo = [p for p in pids if not done(p)]
    n = [write_case(args.cohort, p, feats, keep) for p in todo]
    t_feat = time.perf_counter() - t0
    print(f"{len(n)} feature files written ({sum(n)} lesions) in {t_feat:.0f} s")
    config = TrainConfig()
    if args.lr is not None:
        config = dataclasses.replace(config, lr=args.lr)
    t0 = time.perf_counter()
    train_cv(
        out, args.cohort, ("pfs", "os"), tuple(VARIANTS), tuple(range(args.seeds)),
        config=config, workers=args.workers,
    )  # fmt: skip
    print_report(out, args.cohort)
    print(f"prognosis grid {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
