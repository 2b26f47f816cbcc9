"""``lamp demo``: the settings it picks and every stage chained on a tiny cohort."""

from __future__ import annotations

import pandas as pd
import pytest

from lamp.demo import DemoSettings, demo_settings, run_demo
from lamp.errors import LampError


def test_demo_settings_follow_the_device(monkeypatch):
    import lamp.demo as demo

    monkeypatch.setattr(demo, "cuda_available", lambda: False)
    s = demo_settings(quick=False)
    assert (s.n_patients, s.size, s.seeds) == (229, "small", (0, 1, 2))
    assert s.device == "cpu" and not s.segmentation  # opt-in on a CPU
    assert demo_settings(False, "on").segmentation
    q = demo_settings(True, "on")
    assert q.n_patients == 40 and q.seeds == (0,) and q.tag == "-quick" and q.seg_epochs
    with pytest.raises(LampError, match="no CUDA device"):
        demo_settings(False, device="cuda")
    with pytest.raises(LampError, match="--segmentation must be"):
        demo_settings(False, "yes")
    monkeypatch.setattr(demo, "cuda_available", lambda: True)
    s = demo_settings(False)
    assert s.device == "cuda" and s.segmentation  # on by default where CUDA is present
    assert not demo_settings(False, "off").segmentation


@pytest.mark.slow
def test_demo_runs_every_stage_on_a_tiny_cohort(tmp_path):
    """Synth -> segmentation (5 folds, 1 iteration each) -> features -> LAMP grid ->
    baselines (a subset, manual and automatic masks) -> tables -> reports."""
    settings = DemoSettings(
        n_patients=10,
        size="tiny",
        seeds=(0,),
        segmentation=True,
        device="cpu",
        seg_epochs=1,
        seg_iterations=1,
        seg_step=1.0,
        train_max_epochs=2,
        baselines=("IPI", "Metabolic (manual)", "Metabolic (automatic)"),
        # one augmentation worker process (nnU-Net's planner cannot take 0), one
        # validation batch: start-up dominates here
        seg_changes={"data_augmentation_processes": 1, "val_iterations_per_epoch": 1},
    )
    lines: list[str] = []
    timings = run_demo(tmp_path, settings, workers=1, say=lines.append)
    assert list(timings) == [
        "synthetic cohort",
        "segmentation training",
        "segmentation prediction",
        "features",
        "prognosis model",
        "baselines",
        "evaluation",
        "report",
    ]
    assert [ln[:5] for ln in lines if ln.startswith("[")] == [f"[{i}/6]" for i in range(1, 7)]
    work = tmp_path / "work"
    # every patient predicted out of fold, with instances and metrics
    metrics = pd.read_csv(work / "segmentation" / "lamp" / "metrics.csv")
    assert len(metrics) == 10
    assert len(list((work / "segmentation" / "lamp" / "instances").glob("*.nii.gz"))) == 10
    assert len(list((work / "features").glob("*.npz"))) == 10
    # each fold network also pooled the 8 patients it trained on (lamp train needs them)
    assert len(list((work / "features").glob("fold_*/*.npz"))) == 5 * 8
    oof = pd.read_csv(work / "prognosis" / "oof_risk.csv")
    assert set(oof["variant"]) == {"baseline", "abmla", "lacf", "full"}
    assert set(oof["endpoint"]) == {"pfs", "os"}
    t1 = pd.read_csv(work / "results" / "table1.csv")
    t2 = pd.read_csv(work / "results" / "table2.csv")
    assert {"IPI", "Metabolic (automatic)", "lamp", "true_risk"} <= set(t1["method"])
    # Table 2: the full model ("lamp", also LAMP's row of Table 1) and its three ablations
    assert {"lamp", "lamp_baseline", "lamp_abmla", "lamp_lacf"} <= set(t2["method"])
    assert (work / "reports" / "cohort.html").is_file()


def test_lamp_demo_command_prints_the_cohort_summary_and_what_it_left_out(
    tmp_path, monkeypatch, capsys
):
    """The CLI wrapper around `run_demo` (stages replaced by a tables-only cohort)."""
    import lamp.demo as demo
    from lamp.cli import main
    from lamp.synth.generate import SynthRequest, generate_cohort

    def fake_run_demo(out, settings, workers, say, synth_progress, stage_progress, on_cohort):
        say("[1/3] synthetic cohort")
        generate_cohort(SynthRequest(out=out / "cohort", n_patients=30, seed=0, tables_only=True))
        on_cohort(out / "cohort")
        say("[2/3] baselines")
        say("[3/3] tables")
        return {"synthetic cohort": 1.0, "baselines": 2.0}

    monkeypatch.setattr(demo, "cuda_available", lambda: False)
    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    # the summary comes after the cohort stage and before the next one
    first, second = lines.index("[1/3] synthetic cohort"), lines.index("[2/3] baselines")
    assert any(ln.startswith("patients") and ln.split()[-1] == "30" for ln in lines[first:second])
    assert "not run on a CPU unless asked (--segmentation on)" in out
    assert "Stage wall times: synthetic cohort 1 s, baselines 2 s" in out
    assert f"lamp segment train --cohort {tmp_path / 'cohort'}" in out
