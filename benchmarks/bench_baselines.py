"""Wall time of each baseline of Table 1 on a synthetic cohort, on this machine.

Runs `lamp.baselines.run.run_baselines` on a cohort (by default it generates the
default `small` cohort of 229 patients first, into a temporary folder) and prints, per
method, the wall time of its whole cross-validation (5 folds, PFS and OS, the given
seeds; deterministic methods run one seed) and the time per fold model. Methods whose
inputs the cohort lacks (the "automatic" ones without `lamp segment predict`) are listed
as skipped. Every method is rerun (``force``) so that the times are this run's.

Usage: python benchmarks/bench_baselines.py [--cohort DIR] [--work DIR] [--seeds N]
                                            [--methods NAME ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lamp.baselines.run import BASELINES, run_baselines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=Path, default=None, help="existing cohort folder")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=None, choices=list(BASELINES))
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_baselines_"))
    cohort = args.cohort
    if cohort is None:
        cohort = root / "cohort"
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "lamp", "synth", "--out", str(cohort), "--no-nnunet-export"],
            check=True,
        )
        print(f"cohort generated in {time.perf_counter() - t0:.0f} s: {cohort}")
    work = args.work or root / "work"
    print(f"cohort {cohort}, work {work}, CPUs {os.cpu_count()}, seeds {args.seeds}")
    report = run_baselines(
        work, cohort, args.methods, ("pfs", "os"), tuple(range(args.seeds)), force=True
    )
    print(f"\n{'method':<24} {'wall s':>8} {'s / fold model':>15}  status")
    for name, state in report.status.items():
        if name in report.seconds:
            seeds = 1 if BASELINES[name].deterministic else args.seeds
            per = report.seconds[name] / (2 * 5 * seeds)
            print(f"{name:<24} {report.seconds[name]:>8.1f} {per:>15.2f}  {state}")
        else:
            print(f"{name:<24} {'-':>8} {'-':>15}  {state}")


if __name__ == "__main__":
    main()
