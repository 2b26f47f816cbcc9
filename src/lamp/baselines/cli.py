"""``lamp baselines``: run the baselines of Table 1 on the cohort's folds.

Wired into :mod:`lamp.cli` with :func:`add_parsers`; the baselines (torch, lifelines,
pyradiomics) are imported inside the handler so that ``lamp --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parsers", "BASELINE_NAMES"]

#: The names of `lamp.baselines.run.BASELINES` (kept here so the parser imports nothing).
BASELINE_NAMES = (
    "IPI",
    "Ann Arbor",
    "Ann Arbor (automatic)",
    "Metabolic (manual)",
    "Metabolic (automatic)",
    "Radiomics (manual)",
    "Radiomics (automatic)",
    "Guo2021",
    "Liu2022",
    "Thiery2025",
    "Ann Arbor (manual masks)",
    "Thiery2025 (manual masks)",
)


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    b = subparsers.add_parser(
        "baselines",
        help="run the baselines of Table 1 (clinical, metabolic, radiomics, deep) on the folds",
        description="Cross-validate the baselines of the paper's Table 1 on the cohort's "
        "5 folds (the folds of LAMP), for PFS and OS, writing "
        "WORK/baselines/<method>/oof_risk.csv; then `lamp evaluate` builds the tables. "
        "Methods already run are skipped (--force reruns them); methods whose lesion "
        "masks are missing are skipped with the reason ('automatic' ones need "
        "`lamp segment predict`). Methods: " + ", ".join(BASELINE_NAMES) + ".",
    )
    b.add_argument("--work", required=True, type=Path)
    b.add_argument("--cohort", required=True, type=Path)
    b.add_argument(
        "--methods",
        nargs="+",
        default=None,
        metavar="METHOD",
        choices=BASELINE_NAMES,
        help="only these methods (quote names with spaces); default all",
    )
    b.add_argument("--endpoint", default="both", choices=("pfs", "os", "both"))
    b.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    b.add_argument("--force", action="store_true", help="rerun methods already done")
    b.set_defaults(handler=_baselines)


def _baselines(args: argparse.Namespace) -> int:
    from lamp.baselines.run import run_baselines
    from lamp.errors import LampError

    if args.seeds < 1:
        raise LampError(f"--seeds must be >= 1, got {args.seeds}")
    endpoints = ("pfs", "os") if args.endpoint == "both" else (args.endpoint,)
    report = run_baselines(
        args.work,
        args.cohort,
        args.methods,
        endpoints,
        tuple(range(args.seeds)),
        force=args.force,
        progress=print,
    )
    for name, state in report.status.items():
        took = f" ({report.seconds[name]:.1f} s)" if name in report.seconds else ""
        print(f"{name:<24} {state}{took}")
    print(f"outputs: {Path(args.work) / 'baselines'}; next: lamp evaluate")
    return 0
