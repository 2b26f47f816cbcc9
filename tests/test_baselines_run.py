"""`lamp baselines` / `run_baselines`: which methods run, skip, fail, and what they write."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from lamp.baselines.common import BaselineError
from lamp.baselines.run import BASELINES, Baseline, _why_rerun, inputs_stamp, run_baselines
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


def test_a_finished_run_is_reused_only_when_it_covers_the_request(tmp_path):
    cohort, work = write_cohort(tmp_path)
    said: list[str] = []
    assert run_baselines(work, cohort, ["IPI"], ["pfs"], [0]).status == {"IPI": "ran"}
    out = work / "baselines" / "IPI"
    assert json.loads((out / "request.json").read_text())["endpoints"] == ["pfs"]
    # the same request, or a part of it: reused
    assert run_baselines(work, cohort, ["IPI"], ["pfs"], [0]).status == {"IPI": "done before"}
    # an endpoint not run before: run again, and the reason is said
    report = run_baselines(work, cohort, ["IPI"], ["pfs", "os"], [0], progress=said.append)
    assert report.status == {"IPI": "ran"}
    assert any("endpoint(s) ['os'] not run before" in m for m in said)
    assert set(pd.read_csv(out / "oof_risk.csv")["endpoint"]) == {"pfs", "os"}
    assert run_baselines(work, cohort, ["IPI"], ["os"], [0]).status == {"IPI": "done before"}
    # the same files touched (a copy, say): reused; a changed input: run again
    clinical = cohort / "clinical.csv"
    st = clinical.stat()
    os.utime(clinical, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert run_baselines(work, cohort, ["IPI"], ["pfs"], [0]).status == {"IPI": "done before"}
    with open(clinical, "a", encoding="utf-8") as f:
        f.write("\n")  # a blank line: another file, the same table
    said.clear()
    assert run_baselines(work, cohort, ["IPI"], ["pfs"], [0], progress=said.append).status == {
        "IPI": "ran"
    }
    assert any("inputs changed" in m for m in said)
    # a folder from before the record (no request.json, or no train_risk.csv): run again
    for name in ("request.json", "train_risk.csv"):
        (out / name).unlink()
        said.clear()
        assert run_baselines(work, cohort, ["IPI"], ["pfs"], [0], progress=said.append).status == {
            "IPI": "ran"
        }
        assert any(name in m for m in said)
    assert run_baselines(work, cohort, ["IPI"], ["pfs"], [0], force=True).status == {"IPI": "ran"}


def test_seeds_not_run_before_make_a_trained_method_run_again(tmp_path):
    cohort, work = write_cohort(tmp_path)
    out = work / "baselines" / "m"
    out.mkdir(parents=True)
    for name in ("oof_risk.csv", "train_risk.csv"):
        (out / name).write_text("patient_id,endpoint,method,seed,fold,risk\n")
    stamp = inputs_stamp(cohort, work, None)
    (out / "request.json").write_text(
        json.dumps({"endpoints": ["pfs", "os"], "seeds": [0], "inputs": stamp})
    )
    trained = Baseline("m", None, lambda *a: None)
    fixed = Baseline("m", None, lambda *a: None, deterministic=True)
    assert _why_rerun(out, trained, ["pfs"], [0], stamp) is None
    assert "seed(s) [1, 2] not run before" in _why_rerun(out, trained, ["pfs"], [0, 1, 2], stamp)
    assert _why_rerun(out, fixed, ["pfs"], [0, 1, 2], stamp) is None  # one seed is all it needs
    assert "inputs changed" in _why_rerun(out, fixed, ["pfs"], [0], "another")
    (out / "request.json").write_text("{not json")
    assert "unreadable" in _why_rerun(out, fixed, ["pfs"], [0], stamp)


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
