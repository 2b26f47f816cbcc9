"""`lamp baselines` / `run_baselines`: which methods run, skip, fail, and what they write."""

from __future__ import annotations

import pandas as pd
import pytest

from lamp.baselines.common import BaselineError
from lamp.baselines.run import BASELINES, run_baselines
from lamp.cli import main
from test_baselines_clinical import write_cohort


def test_runs_skips_and_resumes(tmp_path, capsys):
    cohort, work = write_cohort(tmp_path)  # no images, no masks
    names = ["IPI", "Ann Arbor", "Metabolic (manual)", "Thiery2025"]
    with pytest.raises(BaselineError, match="lack manual lesion masks or PET"):
        run_baselines(work, cohort, names, ["pfs"], [0, 1])
    report = run_baselines(work, cohort, None, ["pfs"], [0, 1])
    assert report.status["IPI"] == "ran" and report.status["Ann Arbor"] == "ran"
    for name, spec in BASELINES.items():
        if spec.masks is not None:
            assert report.status[name].startswith("skipped:"), name
    assert "lamp segment predict" in report.status["Thiery2025"]
    oof = pd.read_csv(work / "baselines" / "IPI" / "oof_risk.csv")
    assert set(oof["seed"]) == {0}  # deterministic: one seed whatever is asked
    again = run_baselines(work, cohort, ["IPI"], ["pfs"], [0])
    assert again.status == {"IPI": "done before"}
    timings = pd.read_csv(work / "baselines" / "timings.csv")
    assert {"IPI", "Ann Arbor"} <= set(timings["method"])


def test_cli(tmp_path, capsys):
    cohort, work = write_cohort(tmp_path)
    rc = main(["baselines", "--work", str(work), "--cohort", str(cohort), "--methods", "IPI",
               "--endpoint", "pfs", "--seeds", "1"])  # fmt: skip
    assert rc == 0
    assert "IPI" in capsys.readouterr().out
    rc = main(["baselines", "--work", str(work), "--cohort", str(cohort), "--methods",
               "Liu2022", "--seeds", "1"])  # fmt: skip
    assert rc == 2
    assert "Liu2022" in capsys.readouterr().err
