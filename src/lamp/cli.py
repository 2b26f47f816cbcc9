"""The ``lamp`` command: one subcommand per stage of the pipeline.

Thin by design: each subcommand parses its arguments, calls one library function and
reports. Heavy libraries are imported inside the subcommands so that ``lamp --help``
answers at once. Errors a user can cause (bad arguments, bad files, bad configuration)
are printed as one message naming what was wrong, with exit status 2 -- never a
traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

from lamp import __version__
from lamp.errors import LampError

__all__ = ["main", "build_parser", "default_demo_dir"]


def default_demo_dir() -> Path:
    """Where ``lamp demo`` writes by default: a cache folder outside any repository."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lamp" / "demo"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lamp",
        description="LAMP: lymphoma (DLBCL) prognosis from baseline FDG PET/CT.",
    )
    parser.add_argument("--version", action="version", version=f"lamp-pet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser(
        "synth",
        help="generate a synthetic whole-body PET/CT cohort with outcomes",
        description="Generate a synthetic DLBCL PET/CT cohort (images, clinical table, "
        "lesion list, true risks, 5-fold split, nnU-Net raw export). Resumable: rerun the "
        "same command to finish an interrupted cohort.",
    )
    s.add_argument("--out", required=True, type=Path, help="cohort folder to write")
    s.add_argument(
        "--patients",
        type=_positive_int,
        default=229,
        help="number of patients (default 229, as in the paper)",
    )
    s.add_argument("--seed", type=_positive_int, default=0, help="random seed (default 0)")
    s.add_argument(
        "--size",
        default="small",
        help="image size preset: tiny (tests), small (CPU demo, default), full (4 mm PET, 3 mm CT)",
    )
    s.add_argument("--config", type=Path, help="YAML/JSON file overriding generator settings")
    s.add_argument(
        "--tables-only",
        action="store_true",
        help="write the tables only, no images (fast, for calibration)",
    )
    s.add_argument(
        "--no-nnunet-export", action="store_true", help="skip the nnU-Net raw dataset export"
    )
    s.add_argument(
        "--workers",
        type=_positive_int,
        default=min(2, os.cpu_count() or 1),
        help="processes rendering cases in parallel (default: up to 2)",
    )

    from lamp.ingest.cli import add_parser as add_ingest_parser

    add_ingest_parser(sub)
    from lamp.segmentation.cli import add_parser as add_segment_parser

    add_segment_parser(sub)
    from lamp.prognosis_cli import add_parsers as add_model_parsers

    add_model_parsers(sub)
    from lamp.evaluation.cli import add_parsers as add_evaluate_parsers

    add_evaluate_parsers(sub)
    from lamp.baselines.cli import add_parsers as add_baseline_parsers

    add_baseline_parsers(sub)
    from lamp.organs_cli import add_parsers as add_organs_parsers

    add_organs_parsers(sub)
    from lamp.reports.cli import add_parsers as add_report_parsers

    add_report_parsers(sub)

    d = sub.add_parser(
        "demo",
        help="run the end-to-end demo on the built-in synthetic cohort",
        description="Run the pipeline end to end on the built-in synthetic cohort: "
        "generate it; train the segmentation network on the 5 folds, predict every patient "
        "out of fold, pool the lesion and organ features and train LAMP and its ablations "
        "for PFS and OS (these three stages run by default where a CUDA device is present, "
        "and on a CPU with --segmentation on: hours on a 2-core machine); cross-validate the "
        "baselines of Table 1; write Tables 1 and 2 with the true-risk ceiling, KM curves "
        "and the HTML reports. Resumable: a rerun skips what is done.",
    )
    d.add_argument(
        "--out", type=Path, default=None, help=f"output folder (default {default_demo_dir()})"
    )
    d.add_argument("--quick", action="store_true", help="fewer patients, same stages")
    d.add_argument(
        "--segmentation",
        default="auto",
        choices=("auto", "on", "off"),
        help="run segmentation, features and the LAMP model: auto (default) where CUDA is "
        "present, on, off",
    )
    d.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    d.add_argument("--workers", type=_positive_int, default=min(2, os.cpu_count() or 1))
    return parser


class _Progress:
    """tqdm bars for ``progress(stage, done, total)`` callbacks, one bar per stage."""

    LABELS = {"render": "rendering cases", "export": "nnU-Net export"}

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.bar = None
        self.stage = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = self._tqdm(
                total=total,
                desc=self.LABELS.get(stage, stage),
                unit="case",
                initial=done,
                file=sys.stderr,
                dynamic_ncols=True,
            )
        else:
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _Quiet:
    """A ``progress(message)`` callback for long stages that stays readable: it prints a
    method's start, skip and finish lines, and otherwise at most one line every
    ``every`` seconds (the latest message, prefixed with the time since the start)."""

    def __init__(self, every: float = 20.0) -> None:
        self.every = every
        self.t0 = self.last = time.perf_counter()

    def __call__(self, message: str) -> None:
        now = time.perf_counter()
        keep = ": running (" in message or ": skipped: " in message
        if keep or re.fullmatch(r".+: \d+\.\d s", message):
            print(f"      {message}", flush=True)
            self.last = now
        elif now - self.last >= self.every:
            print(f"      [{now - self.t0:5.0f} s] {message}", flush=True)
            self.last = now


def _print_summary(summary: dict) -> None:
    def pct(a: int, b: int) -> str:
        return f"{a} ({100.0 * a / b:.0f} %)" if b else str(a)

    n, k = summary["patients"], summary["with_outcome"]
    lines = [
        f"patients                {n}",
        f"with outcome            {k}  ({n - k} without: kept for segmentation, "
        "left out of survival modelling)",
        f"PFS events              {pct(summary['pfs_events'], k)}",
        f"OS events               {pct(summary['os_events'], k)}",
    ]
    if "pfs_2y" in summary:
        lines += [
            f"2-year PFS (KM)         {100 * summary['pfs_2y']:.1f} %",
            f"median follow-up        {summary['followup_median_months']:.1f} months (reverse KM)",
        ]
    lines.append(
        "Ann Arbor stage         "
        + ", ".join(f"{'I II III IV'.split()[s - 1]}: {c}" for s, c in summary["stage"].items())
    )
    lines.append(
        "IPI group               " + ", ".join(f"{g}: {c}" for g, c in summary["ipi_group"].items())
    )
    if "tmtv_ml_median" in summary:
        q1, q3 = summary["tmtv_ml_iqr"]
        lo, hi = summary["lesions_range"]
        lines += [
            f"TMTV                    median {summary['tmtv_ml_median']:.0f} ml "
            f"(IQR {q1:.0f}-{q3:.0f})",
            f"lesions per patient     median {summary['lesions_median']:.0f} (range {lo}-{hi})",
        ]
    if "cindex_ipi_pfs" in summary:
        lines.append(
            f"C-index for PFS         IPI {summary['cindex_ipi_pfs']:.3f}"
            + (f", TMTV {summary['cindex_tmtv_pfs']:.3f}" if "cindex_tmtv_pfs" in summary else "")
        )
    print("\n".join(lines))


def _cmd_synth(args: argparse.Namespace) -> int:
    from lamp.synth.config import load_synth_config
    from lamp.synth.generate import SynthRequest, generate_cohort, summarize

    cfg = load_synth_config(args.config)
    req = SynthRequest(
        out=args.out,
        n_patients=args.patients,
        seed=args.seed,
        size=args.size,
        tables_only=args.tables_only,
        export_nnunet=not args.no_nnunet_export,
    )
    req.check()
    t0 = time.perf_counter()
    bar = _Progress()
    try:
        generate_cohort(req, cfg, workers=args.workers, progress=bar)
    finally:
        bar.close()
    print(f"cohort written to {args.out} in {time.perf_counter() - t0:.1f} s")
    _print_summary(summarize(args.out))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from lamp.demo import demo_settings, run_demo
    from lamp.synth.generate import summarize

    settings = demo_settings(args.quick, args.segmentation, args.device)
    out = args.out or default_demo_dir()
    print(f"LAMP demo -> {out}")
    if not settings.segmentation:
        print(
            "      segmentation, features and the LAMP model are not run "
            + (
                "(--segmentation off)"
                if args.segmentation == "off"
                else "on a CPU unless asked (--segmentation on): with the tiny network they "
                "take hours on a 2-core machine (docs/benchmarks.md)"
            )
        )
    bar = _Progress()

    def say(line: str) -> None:
        bar.close()
        print(line, flush=True)

    def on_cohort(cohort: Path) -> None:
        bar.close()
        _print_summary(summarize(cohort))

    try:
        timings = run_demo(
            out,
            settings,
            args.workers,
            say=say,
            synth_progress=bar,
            stage_progress=_Quiet(),
            on_cohort=on_cohort,
        )
    finally:
        bar.close()
    print("Stage wall times: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    if not settings.segmentation:
        cohort, work = out / f"cohort{settings.tag}", out / f"work{settings.tag}"
        print(
            "Not run (no --segmentation on): the LAMP rows, Table 2 and the 'automatic' "
            "baselines; `lamp demo --segmentation on` runs them, or stage by stage:\n"
            f"  lamp segment train --cohort {cohort} --work {work}   (then lamp segment predict)\n"
            f"  lamp features --cohort {cohort} --work {work}\n"
            f"  lamp train --cohort {cohort} --work {work}\n"
            f"  lamp baselines --cohort {cohort} --work {work} && lamp evaluate "
            f"--cohort {cohort} --work {work}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    handler = (
        getattr(args, "handler", None) or {"synth": _cmd_synth, "demo": _cmd_demo}[args.command]
    )
    try:
        return handler(args)
    except LampError as exc:  # input errors carry a message naming what was wrong
        print(f"lamp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"lamp {args.command}: interrupted; rerun the same command to resume", file=sys.stderr
        )
        return 130
