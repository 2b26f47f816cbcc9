"""``lamp report``: the HTML reports on the command line.

Wired into :mod:`lamp.cli` with :func:`add_parsers`; matplotlib, scikit-learn and torch
are imported inside the handler so that ``lamp --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parsers"]


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    r = subparsers.add_parser(
        "report",
        help="self-contained HTML reports: the cohort and individual patients",
        description="Write WORK/reports/cohort.html (Tables 1-2, KM curves, lesion "
        "attention by site, t-SNE of the organ features, segmentation metrics and "
        "overlays, configuration and versions) and WORK/reports/patients/<id>.html (risk "
        "and risk group against the cohort, predicted survival, lesions ranked by "
        "attention on a PET MIP, clinical indices). Sections whose inputs are missing say "
        "which command makes them. Images are embedded: each file opens offline and prints.",
    )
    r.add_argument("--work", required=True, type=Path)
    r.add_argument("--cohort", required=True, type=Path)
    r.add_argument(
        "--patient",
        nargs="+",
        default=None,
        metavar="ID",
        help="patients to report (default: the 3 highest and 3 lowest out-of-fold PFS risks)",
    )
    r.add_argument("--out", type=Path, default=None, help="output folder (default WORK/reports)")
    r.add_argument(
        "--n-default",
        type=int,
        default=3,
        help="highest- and lowest-risk patients reported by default (default 3 each)",
    )
    r.add_argument("--variant", default="full", choices=("baseline", "abmla", "lacf", "full"))
    r.add_argument("--no-cohort", action="store_true", help="patient reports only")
    r.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from lamp.errors import LampError
    from lamp.reports.build import write_reports

    if args.n_default < 0:
        raise LampError(f"--n-default must be >= 0, got {args.n_default}")
    res = write_reports(
        args.work,
        args.cohort,
        patients=args.patient,
        out=args.out,
        n_default=args.n_default,
        variant=args.variant,
        cohort_page=not args.no_cohort,
        progress=print,
    )
    for note in res.notes:
        print(f"note: {note}")
    if res.cohort is not None:
        print(f"cohort report: {res.cohort}")
    for pid, path in res.patients.items():
        print(f"patient report {pid}: {path}")
    return 0
