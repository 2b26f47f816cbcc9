"""Benchmark of the synthetic cohort generator, and its calibration report.

Usage::

    .venv/bin/python benchmarks/bench_synth.py            # all sizes + calibration
    .venv/bin/python benchmarks/bench_synth.py --sizes tiny small --patients 9

Per size, each patient is rendered and written (4 NIfTI files) in a fresh child process,
one after the other on one core; the script prints the median and range of the seconds
per patient and the child's peak resident memory. Targets on the 2-core development
machine: ``full`` under 5 s median per patient, ``tiny`` under 0.3 s.

The calibration report simulates a large tables-only cohort and prints event rates,
2-year PFS by IPI group, and Harrell's C-index of IPI, TMTV and the true linear predictor
(this benchmark, and only benchmarks, may read the generator's truth).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _one_size(size: str, n: int) -> None:
    import numpy as np

    from lamp.cohort import CASE_FILES, case_dir
    from lamp.images import save_nifti
    from lamp.synth.config import SynthConfig
    from lamp.synth.disease import simulate_patient
    from lamp.synth.render import render_patient

    cfg = SynthConfig()
    times, voxels = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            t0 = time.perf_counter()
            p = simulate_patient(cfg, 0, i)
            case = render_patient(p, cfg, size, 0)
            d = case_dir(Path(tmp), p.patient_id)
            save_nifti(d / CASE_FILES["ct"], case.ct, case.ct_grid.affine, np.int16)
            save_nifti(d / CASE_FILES["organs"], case.organs, case.pet_grid.affine, np.uint8)
            save_nifti(d / CASE_FILES["lesions"], case.lesions, case.pet_grid.affine, np.uint16)
            save_nifti(d / CASE_FILES["pet"], case.pet, case.pet_grid.affine, np.float32)
            times.append(time.perf_counter() - t0)
            voxels.append((case.pet.size, case.ct.size))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"size": size, "times": times, "peak_mb": peak_mb, "voxels": voxels}))


def _calibration(n: int) -> None:
    import numpy as np
    import pandas as pd
    from lifelines import KaplanMeierFitter
    from lifelines.utils import concordance_index

    from lamp.clinical import ipi_group
    from lamp.synth.config import SynthConfig
    from lamp.synth.generate import simulate_tables

    t0 = time.perf_counter()
    pts = simulate_tables(SynthConfig(), n, 0, workers=2)
    secs = time.perf_counter() - t0
    df = pd.DataFrame(
        {
            "t": [p.pfs_months for p in pts],
            "e": [p.pfs_event for p in pts],
            "os_t": [p.os_months for p in pts],
            "os_e": [p.os_event for p in pts],
            "ipi": [p.ipi for p in pts],
            "tmtv": [p.tmtv_ml for p in pts],
            "lp": [p.lp_pfs for p in pts],
            "lp_os": [p.lp_os for p in pts],
            "stage": [p.stage for p in pts],
            "lesions": [len(p.lesions) for p in pts],
        }
    )
    km = KaplanMeierFitter().fit(df["t"], df["e"])
    fu = KaplanMeierFitter().fit(df["t"], 1 - df["e"]).median_survival_time_
    print(
        f"\ncalibration: {n} patients, tables only, simulated in {secs:.1f} s "
        f"({1000 * secs / n:.2f} ms per patient; outcome shown for all patients)"
    )
    print(
        f"  PFS events {100 * df['e'].mean():.1f} %   OS events {100 * df['os_e'].mean():.1f} %"
        f"   median follow-up {fu:.1f} months (reverse KM)"
    )
    os2 = float(KaplanMeierFitter().fit(df["os_t"], df["os_e"]).predict(24.0))
    print(f"  2-year PFS {100 * float(km.predict(24.0)):.1f} %   2-year OS {100 * os2:.1f} %")
    groups = ipi_group(df["ipi"].to_numpy())
    print("  IPI group           share   2y PFS   5y PFS")
    for g in ("low", "low-intermediate", "high-intermediate", "high"):
        m = groups == g
        k = KaplanMeierFitter().fit(df["t"][m], df["e"][m])
        print(
            f"  {g:18s} {100 * m.mean():5.1f} %  {100 * float(k.predict(24.0)):5.1f} %"
            f"  {100 * float(k.predict(60.0)):5.1f} %"
        )
    stage = df["stage"].value_counts(normalize=True).sort_index()
    print("  Ann Arbor stage     " + "  ".join(f"{s}: {100 * v:.0f} %" for s, v in stage.items()))
    print(
        f"  TMTV median {np.median(df['tmtv']):.0f} ml; lesions per patient median "
        f"{df['lesions'].median():.0f}"
    )
    print("  Harrell C-index          PFS     OS")
    for name, col, col_os in (
        ("IPI", "ipi", "ipi"),
        ("TMTV", "tmtv", "tmtv"),
        ("true risk (truth.csv)", "lp", "lp_os"),
    ):
        c1 = concordance_index(df["t"], -df[col], df["e"])
        c2 = concordance_index(df["os_t"], -df[col_os], df["os_e"])
        print(f"  {name:22s} {c1:.3f}  {c2:.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["tiny", "small", "full"])
    ap.add_argument("--patients", type=int, default=7, help="patients timed per size")
    ap.add_argument(
        "--calibration",
        type=int,
        default=10000,
        help="patients of the tables-only calibration cohort (0 to skip)",
    )
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        _one_size(args.one, args.patients)
        return 0
    print("size    PET voxels   CT voxels   s/patient median (min-max)   peak MB")
    for size in args.sizes:
        res = subprocess.run(
            [sys.executable, __file__, "--one", size, "--patients", str(args.patients)],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(res.stdout.strip().splitlines()[-1])
        t = r["times"]
        pv, cv = r["voxels"][0]
        print(
            f"{size:6s} {pv:11,d} {cv:11,d}   {statistics.median(t):6.2f} "
            f"({min(t):.2f}-{max(t):.2f})   {r['peak_mb']:9.0f}"
        )
    if args.calibration:
        _calibration(args.calibration)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
