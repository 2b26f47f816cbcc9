"""``lamp evaluate``: Tables 1 and 2, the fold metrics and the KM analysis on the command line.

Wired into :mod:`lamp.cli` with :func:`add_parsers`; the evaluation (pandas, scikit-survival,
matplotlib) is imported inside the handler so that ``lamp --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parsers"]


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    e = subparsers.add_parser(
        "evaluate",
        help="Tables 1-2 (C-index, 1y/2y AUC), KM curves and log-rank tests from the risk files",
        description="Evaluate every out-of-fold risk file found in WORK "
        "(prognosis/oof_risk.csv from lamp train, baselines/<method>/oof_risk.csv from the "
        "baselines) with the same metrics code on the cohort's folds: per fold Harrell's "
        "C-index and time-AUC at 12 and 24 months (censoring weights from the training "
        "fold), mean over folds ± sd over seeds; KM curves and log-rank tests of high vs "
        "low risk. For a synthetic cohort a 'True risk (ceiling)' row from COHORT/truth.csv. "
        "Writes WORK/results/ and prints the two tables.",
    )
    e.add_argument("--work", required=True, type=Path)
    e.add_argument("--cohort", required=True, type=Path)
    e.add_argument(
        "--methods",
        nargs="+",
        default=None,
        metavar="METHOD",
        help="only these methods: baseline folder names, lamp (all variants), true_risk "
        "(default: every risk file found)",
    )
    e.add_argument("--out", type=Path, default=None, help="output folder (default WORK/results)")
    e.add_argument("--no-figures", action="store_true", help="skip the KM figures")
    e.add_argument("--km-seed", type=int, default=None, help="seed drawn in the KM figures")
    e.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from lamp.evaluation.tables import TITLES, evaluate, to_markdown

    res = evaluate(
        args.work,
        args.cohort,
        methods=args.methods,
        out=args.out,
        figures=not args.no_figures,
        km_seed=args.km_seed,
    )
    print(to_markdown(res.table1, TITLES["table1"], res.footnotes["table1"]))
    if len(res.table2):
        print(to_markdown(res.table2, TITLES["table2"], res.footnotes["table2"]))
    lr = res.logrank
    first = lr.sort_values("seed", kind="stable").drop_duplicates(["method", "endpoint"])
    if len(first):
        print("Log-rank, high vs low risk (first seed):")
        for _, r in first.iterrows():
            p = "n/a" if r["p_value"] != r["p_value"] else f"{r['p_value']:.3g}"
            print(
                f"  {r['endpoint'].upper():<3} {r['label']:<28} high {r['n_high']:>4} "
                f"({r['events_high']} events)  low {r['n_low']:>4} ({r['events_low']} events)"
                f"  p = {p}"
            )
    for note in res.notes:
        print(f"note: {note}")
    out = res.files[0].parent if res.files else args.out
    print(f"outputs: {out}")
    return 0
