"""The ``lamp ingest`` subcommand: parse, call `lamp.ingest.run.ingest_cohort`, report.

Wired into ``lamp.cli`` with `add_parser` and `run`. Heavy libraries are imported inside
`run`, so that building the parser (``lamp --help``) stays instant.

Exit status: 0 when every patient is ready; 1 when any patient failed (the summary lists
each problem; finished patients are kept, rerun to resume); 2 for an error that stops the
whole run (a bad argument, a clinical table with problems, an input folder not in the
layout), printed as one message without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_parser", "run", "LAYOUT_CHOICES"]

#: Mirrors `lamp.ingest.layouts.LAYOUTS` without importing it (checked by the tests).
LAYOUT_CHOICES: tuple[str, ...] = ("dicom", "nifti", "autopet", "nnunet")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``ingest`` subcommand to ``subparsers`` and return its parser."""
    p = subparsers.add_parser(
        "ingest",
        help="bring a real cohort (DICOM, NIfTI, autoPET, nnU-Net) into the cohort layout",
        description="Convert PET/CT studies and a clinical table into a LAMP cohort: PET "
        "to SUVbw (DICOM: decay-corrected from the header), CT resampled onto the PET grid, "
        "TotalSegmentator organ masks, lesion masks, the checked clinical table. Resumable: "
        "rerun the same command to finish. See docs/ingest.md.",
    )
    p.add_argument("--input", required=True, type=Path, metavar="PATH", help="input folder")
    p.add_argument(
        "--layout", required=True, choices=LAYOUT_CHOICES, help="how the input folder is organised"
    )
    p.add_argument(
        "--clinical",
        required=True,
        type=Path,
        metavar="FILE",
        help="clinical table (.csv, .tsv, .xlsx), one row per patient",
    )
    p.add_argument(
        "--out", required=True, type=Path, metavar="COHORT", help="cohort folder to write"
    )
    p.add_argument(
        "--column-map",
        type=Path,
        default=None,
        metavar="FILE",
        help="YAML/JSON file mapping the table's column names and values to LAMP's",
    )
    p.add_argument(
        "--sul",
        action="store_true",
        help="write SUL (SUV by lean body mass, Janmahasatian) instead of SUVbw",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``lamp ingest``; print the summary; return the exit status (0, 1 or 2)."""
    from lamp.errors import LampError
    from lamp.ingest.run import IngestRequest, ingest_cohort

    request = IngestRequest(
        input=args.input,
        layout=args.layout,
        clinical=args.clinical,
        out=args.out,
        column_map=args.column_map,
        sul=bool(args.sul),
    )
    try:
        summary = ingest_cohort(request, progress=not getattr(args, "no_progress", False))
    except LampError as exc:  # a problem that stops the run: one message, no traceback
        print(f"lamp ingest: error: {exc}", file=sys.stderr)
        return 2
    print(summary.to_text())
    return 0 if summary.ok else 1
