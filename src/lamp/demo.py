"""``lamp demo``: the pipeline end to end on the built-in synthetic cohort.

Stages, each resumable (a rerun skips what its own stage records as finished):

1. the synthetic cohort (``lamp synth``);
2. with segmentation: the LAMP segmentation network trained on the 5 folds, every patient
   predicted by the model of the fold that held it out, lesion instances and autoPET
   metrics (``lamp segment train`` / ``predict``);
3. with segmentation: the 128-d lesion and organ features (``lamp features``);
4. with segmentation: LAMP and its three ablations for PFS and OS (``lamp train``);
5. the baselines of Table 1 (``lamp baselines``; the "automatic" rows once step 2 ran);
6. Tables 1 and 2, KM curves (``lamp evaluate``) and the HTML reports (``lamp report``).

Segmentation (steps 2-4) runs by default where a CUDA device is present. On a CPU it is
opt-in (``--segmentation on``): with the ``tiny`` network it costs hours on the 229-patient
cohort of a 2-core machine (measured in ``docs/benchmarks.md``), far beyond the demo's
other stages.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DemoSettings", "demo_settings", "run_demo", "cuda_available"]


@dataclass(frozen=True)
class DemoSettings:
    """What one demo run does (``demo_settings`` builds the two standard ones)."""

    n_patients: int
    size: str
    seeds: tuple[int, ...]
    segmentation: bool
    device: str
    seg_epochs: int | None = None  # None: the tiny configuration's own schedule
    seg_iterations: int | None = None
    seg_step: float | None = None  # sliding-window step; None: the configuration's
    train_max_epochs: int | None = None  # prognosis model; None: TrainConfig's default
    tag: str = ""  # folder suffix ("-quick")
    baselines: tuple[str, ...] | None = None  # names of BASELINES; None: all with inputs
    seg_changes: dict = field(default_factory=dict)  # other SegmentConfig fields to change


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


def demo_settings(quick: bool, segmentation: str = "auto", device: str = "auto") -> DemoSettings:
    """The default demo (229 patients, 3 seeds) or ``--quick`` (40 patients, 1 seed,
    short schedules). ``segmentation``: ``auto`` (on where CUDA is present), ``on``, ``off``;
    ``device``: ``auto``, ``cpu`` or ``cuda``."""
    from lamp.errors import LampError

    if device not in ("auto", "cpu", "cuda"):
        raise LampError(f"--device must be auto, cpu or cuda, got {device!r}")
    if segmentation not in ("auto", "on", "off"):
        raise LampError(f"--segmentation must be auto, on or off, got {segmentation!r}")
    dev = ("cuda" if cuda_available() else "cpu") if device == "auto" else device
    if dev == "cuda" and not cuda_available():
        raise LampError("--device cuda: no CUDA device is available here")
    seg = dev == "cuda" if segmentation == "auto" else segmentation == "on"
    if quick:
        return DemoSettings(
            n_patients=40,
            size="small",
            seeds=(0,),
            segmentation=seg,
            device=dev,
            seg_epochs=3,
            seg_step=1.0 if dev == "cpu" else None,
            train_max_epochs=30,
            tag="-quick",
        )
    return DemoSettings(
        n_patients=229,
        size="small",
        seeds=(0, 1, 2),
        segmentation=seg,
        device=dev,
        seg_step=1.0 if dev == "cpu" else None,
    )


def _seg_config(s: DemoSettings):
    from lamp.segmentation.nnunet import SEG_CONFIGS

    changes = dict(s.seg_changes)
    if s.seg_epochs is not None:
        changes["num_epochs"] = s.seg_epochs
    if s.seg_iterations is not None:
        changes["iterations_per_epoch"] = s.seg_iterations
    if s.seg_step is not None:
        changes["tile_step_size"] = s.seg_step
    return dataclasses.replace(SEG_CONFIGS["tiny"], **changes)


def run_demo(
    out: Path,
    s: DemoSettings,
    workers: int = 1,
    say: Callable[[str], None] = print,
    synth_progress=None,
    stage_progress: Callable[[str], None] | None = None,
    on_cohort: Callable[[Path], None] | None = None,
) -> dict[str, float]:
    """Run every stage of ``s`` under ``out``; returns the wall time of each stage (s).

    ``on_cohort`` is called with the cohort folder once the synthetic cohort is written
    (the CLI prints its summary there)."""
    from lamp.synth.config import SynthConfig
    from lamp.synth.generate import SynthRequest, generate_cohort

    out = Path(out)
    cohort = out / f"cohort{s.tag}"
    work = out / f"work{s.tag}"
    timings: dict[str, float] = {}
    n_stages = 6 if s.segmentation else 3
    step = iter(range(1, n_stages + 1))

    def stage(text: str) -> None:
        say(f"[{next(step)}/{n_stages}] {text}")

    stage(f"synthetic cohort: {s.n_patients} patients, size {s.size} -> {cohort}")
    t0 = time.perf_counter()
    generate_cohort(
        # no nnU-Net raw export inside the cohort: the segmentation stage exports its own
        # into WORK/nnunet, and without it nothing reads one
        SynthRequest(out=cohort, n_patients=s.n_patients, seed=0, size=s.size, export_nnunet=False),
        SynthConfig(),
        workers=workers,
        progress=synth_progress,
    )
    timings["synthetic cohort"] = time.perf_counter() - t0
    if on_cohort is not None:
        on_cohort(cohort)

    if s.segmentation:
        from lamp.cohort import read_folds
        from lamp.segmentation.evaluate import evaluate_network
        from lamp.segmentation.extract import extract_cohort_features
        from lamp.segmentation.nnunet import predict_out_of_fold, prepare_dataset, train_fold

        cfg = _seg_config(s)
        stage(
            f"segmentation network ({cfg.name}, {s.device}): 5 folds, out-of-fold "
            f"prediction -> {work}/segmentation"
        )
        t0 = time.perf_counter()
        prepare_dataset(cohort, work, cfg)
        for k in sorted(read_folds(cohort / "folds.csv")["fold"].unique()):
            t1 = time.perf_counter()
            train_fold(work, cfg, int(k), device=s.device)
            say(f"      fold {k} trained ({time.perf_counter() - t1:.0f} s)")
        timings["segmentation training"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        predict_out_of_fold(cohort, work, cfg, device=s.device)
        _, summary = evaluate_network(cohort, work, "lamp")
        timings["segmentation prediction"] = time.perf_counter() - t0
        say(
            "      out-of-fold: "
            + ", ".join(
                f"{key} {summary[key]:.3f}"
                for key in (
                    "dice_mean",
                    "fpv_mean_ml",
                    "fnv_mean_ml",
                    "lesion_precision_pooled",
                    "lesion_recall_pooled",
                )
            )
        )
        stage(f"lesion and organ features (128-d, streaming pooling) -> {work}/features")
        t0 = time.perf_counter()
        extract_cohort_features(cohort, work, cfg, device=s.device)
        timings["features"] = time.perf_counter() - t0

        from lamp.model.layers import VARIANTS
        from lamp.model.train import TrainConfig, train_cv

        stage(
            f"LAMP and its ablations, PFS and OS, {len(s.seeds)} seed(s), 5 folds "
            f"-> {work}/prognosis"
        )
        t0 = time.perf_counter()
        tc = TrainConfig()
        if s.train_max_epochs is not None:
            tc = dataclasses.replace(tc, max_epochs=s.train_max_epochs)
        train_cv(work, cohort, ("pfs", "os"), tuple(VARIANTS), s.seeds, tc, stage_progress, workers)
        timings["prognosis model"] = time.perf_counter() - t0

    from lamp.baselines.run import run_baselines

    stage(f"baselines of Table 1 on the 5 folds, {len(s.seeds)} seed(s) -> {work}/baselines")
    t0 = time.perf_counter()
    report = run_baselines(
        work, cohort, s.baselines, ("pfs", "os"), s.seeds, progress=stage_progress
    )
    timings["baselines"] = time.perf_counter() - t0
    for name, state in report.status.items():
        took = f" ({report.seconds[name]:.1f} s)" if name in report.seconds else ""
        say(f"      {name:<24} {state}{took}")

    from lamp.evaluation.tables import TITLES, evaluate, to_markdown
    from lamp.reports.build import write_reports

    stage(f"tables, KM curves -> {work}/results; HTML reports -> {work}/reports")
    t0 = time.perf_counter()
    res = evaluate(work, cohort)
    timings["evaluation"] = time.perf_counter() - t0
    say(to_markdown(res.table1, TITLES["table1"], res.footnotes["table1"]))
    if s.segmentation:
        say(to_markdown(res.table2, TITLES["table2"], res.footnotes["table2"]))
    t0 = time.perf_counter()
    reports = write_reports(work, cohort)
    timings["report"] = time.perf_counter() - t0
    say(f"      cohort report: {reports.cohort}")
    return timings
