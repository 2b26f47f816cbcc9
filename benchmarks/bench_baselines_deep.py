"""Wall time (and C-index) of the Guo2021 and Liu2022 baselines on a synthetic cohort.

Generate a cohort first, e.g.::

    lamp synth --out /tmp/c40 --patients 40 --size small --no-nnunet-export

then::

    python benchmarks/bench_baselines_deep.py /tmp/c40 --work /tmp/w40 [--methods Guo2021 Liu2022]

Prints, per method: the one-off volume cache time (per patient), the cross-validation
time (PFS + OS, one seed, 5 folds) in seconds per fold and per training patient, the
extrapolation to 229 patients (training time grows linearly with the training set),
and the pooled out-of-fold C-index per endpoint next to the true risk's C-index
(``truth.csv``) for orientation. Wall times depend on the machine's load (printed);
the process CPU time is printed too: with one torch thread it is what the wall time
would be on an idle core.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import pandas as pd

from lamp.baselines.common import ENDPOINTS, outcome_table
from lamp.baselines.guo2021 import Guo2021Config, run_guo2021
from lamp.baselines.liu2022 import Liu2022Config, run_liu2022
from lamp.baselines.volumes import cohort_volumes
from lamp.evaluation.metrics import concordance_index

_T0 = time.perf_counter()


def _tick(line: str) -> None:
    if "volumes" not in line:
        print(f"  [{time.perf_counter() - _T0:7.1f} s] {line}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cohort", type=Path)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--methods", nargs="+", default=["Guo2021", "Liu2022"])
    ap.add_argument("--epochs", type=int, default=None, help="override the default epochs")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()

    table, _ = outcome_table(args.cohort)
    ids = table["patient_id"].tolist()
    print(f"cohort {args.cohort}: {len(ids)} patients with outcome; load {os.getloadavg()}")
    guo, liu = Guo2021Config(threads=args.threads), Liu2022Config(threads=args.threads)
    if args.epochs is not None:
        guo = dataclasses.replace(guo, epochs=args.epochs, pseudo_epochs=max(1, args.epochs // 2))
        liu = dataclasses.replace(liu, epochs=args.epochs)
    t0 = time.perf_counter()
    cohort_volumes(args.cohort, args.work, ids, liu.size, liu.masks)
    t_cache = time.perf_counter() - t0
    print(f"volume cache {liu.size}: {t_cache:.1f} s ({t_cache / len(ids):.2f} s/patient)")

    truth = None
    if (args.cohort / "truth.csv").is_file():
        truth = pd.read_csv(args.cohort / "truth.csv", dtype={"patient_id": str})
    runs = {
        "Guo2021": lambda: run_guo2021(args.work, args.cohort, config=guo, progress=_tick),
        "Liu2022": lambda: run_liu2022(args.work, args.cohort, config=liu, progress=_tick),
    }
    for method in args.methods:
        t0, c0 = time.perf_counter(), time.process_time()
        oof = runs[method]()
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        n_fits = oof.groupby(["endpoint", "seed", "fold"]).ngroups
        per_fold = dt / n_fits
        n_train = len(ids) * 4 / 5
        per_229 = per_fold / n_train * (195 * 4 / 5) * n_fits
        print(
            f"{method}: {dt:.1f} s for {n_fits} fits = {per_fold:.1f} s/fold "
            f"({per_fold / n_train * 1000:.0f} ms per training patient); "
            f"229-patient cohort (195 with outcome) ~ {per_229 / 60:.1f} min; "
            f"CPU time {cpu:.1f} s ({cpu / dt:.2f} cores busy on average)"
        )
        for endpoint, (tcol, ecol) in ENDPOINTS.items():
            sub = oof[oof["endpoint"] == endpoint].merge(table, on="patient_id")
            c = concordance_index(sub[ecol].astype(bool), sub[tcol], sub["risk"])
            line = f"  {endpoint}: pooled OOF C-index {c:.3f}"
            if truth is not None and f"lp_{endpoint}" in truth.columns:
                t = sub.merge(truth, on="patient_id")
                ct = concordance_index(t[ecol].astype(bool), t[tcol], t[f"lp_{endpoint}"])
                line += f" (true linear predictor {ct:.3f})"
            print(line)


if __name__ == "__main__":
    main()
