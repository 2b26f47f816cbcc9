"""``lamp organs``: a cohort's TotalSegmentator organ masks, produced or checked.

Wired into :mod:`lamp.cli` with :func:`add_parsers`; the handler imports `lamp.organs`
(numpy, nibabel, pandas) only when it runs, so ``lamp --help`` stays fast.

Exit status: 0 when every patient asked for is done (or, with ``--check``, has a usable
mask on its PET grid); 1 when any patient failed (or, with ``--check``, has no mask or a
mask that is off the grid or unusable); 2 when nothing could start - TotalSegmentator or
its weights are not installed (the message says what to install, where the weights must
be and how to supply the masks instead), or a bad argument or clinical table (raised as
`lamp.errors.LampError`, printed by `lamp.cli.main`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_parsers"]

DEVICE_CHOICES = ("cpu", "gpu", "mps")


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``organs`` subcommand to ``lamp``'s subparsers."""
    p = subparsers.add_parser(
        "organs",
        help="organ masks (TotalSegmentator 'total') for every patient of a cohort, or --check",
        description="Run a locally installed TotalSegmentator (v2, task 'total', --ml) on "
        "the CT of every patient of the cohort that has no cases/<id>/organs.nii.gz yet, "
        "and write the masks on the patient's PET grid (nearest neighbour through physical "
        "space). Nothing is downloaded and TotalSegmentator's usage statistics are switched "
        "off. Resumable: finished patients are skipped, and one patient's failure does not "
        "stop the others (exit 1 if any failed). Without TotalSegmentator or its weights it "
        "exits 2 before touching any patient and says how to supply the masks instead. "
        "--check runs nothing: it lists patients without masks, masks off the PET grid and "
        "how many patients have each of the 71 organ groups absent.",
    )
    p.add_argument(
        "--cohort", required=True, type=Path, help="cohort folder (clinical.csv, cases/)"
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="only check the existing masks (missing, off the PET grid, 71-group presence)",
    )
    p.add_argument(
        "--device",
        default=None,
        choices=DEVICE_CHOICES,
        help="where TotalSegmentator runs (default cpu)",
    )
    p.add_argument(
        "--fast",
        action="store_true",
        help="TotalSegmentator's 3 mm model (much faster on a CPU, coarser masks)",
    )
    p.add_argument(
        "--force", action="store_true", help="redo patients that already have organ masks"
    )
    p.add_argument(
        "--patient",
        nargs="+",
        action="extend",
        metavar="ID",
        help="only these patients (default: every patient of clinical.csv)",
    )
    p.add_argument(
        "--weights-dir",
        type=Path,
        default=None,
        help="folder with TotalSegmentator's Dataset<id>_* weight folders, if not where "
        "TotalSegmentator looks itself ($TOTALSEG_WEIGHTS_PATH or "
        "~/.totalsegmentator/nnunet/results)",
    )
    p.set_defaults(handler=_organs)


def _organs(args: argparse.Namespace) -> int:
    if args.check:
        return _check(args)
    return _run(args)


def _check(args: argparse.Namespace) -> int:
    from lamp.errors import LampError
    from lamp.organs import check_cohort_organs

    given = [
        option
        for option, value in (
            ("--device", args.device),
            ("--fast", args.fast),
            ("--force", args.force),
            ("--weights-dir", args.weights_dir),
        )
        if value
    ]
    if given:
        raise LampError(
            f"--check runs nothing, so {', '.join(given)} would have no effect; drop "
            f"{'it' if len(given) == 1 else 'them'}, or drop --check to run TotalSegmentator"
        )

    report = check_cohort_organs(args.cohort, args.patient)
    print(report.to_text())
    return 0 if report.ok else 1


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from lamp.organs import (
        TotalSegmentatorUnavailable,
        segment_cohort_organs,
        supply_masks_help,
    )

    bar = None

    def progress(done: int, total: int, patient_id: str, message: str) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="organ masks", unit="patient", file=sys.stderr)
        bar.update(done - bar.n)
        bar.write(f"[{done}/{total}] {patient_id}: {message}")

    try:
        run = segment_cohort_organs(
            args.cohort,
            args.patient,
            device=args.device or "cpu",
            fast=args.fast,
            force=args.force,
            weights_dir=args.weights_dir,
            progress=progress,
        )
    except TotalSegmentatorUnavailable as exc:
        print(
            f"lamp organs: TotalSegmentator cannot run here; no patient was touched.\n"
            f"  {exc.reason}\n" + supply_masks_help(args.cohort, args.fast, args.weights_dir),
            file=sys.stderr,
        )
        return 2
    finally:
        if bar is not None:
            bar.close()
    print(run.to_text())
    if not run.failed and not run.written:
        print("nothing to run: every patient asked for has organ masks (--force redoes them)")
    return 0 if run.ok else 1
