"""``lamp train`` and ``lamp predict`` through the command line."""

from __future__ import annotations

import json

from lamp.cli import main
from test_model_train import write_synthetic


def test_train_then_predict(tmp_path, capsys):
    cohort, work, _ = write_synthetic(tmp_path, n=40)
    rc = main(
        [
            "train",
            "--work",
            str(work),
            "--cohort",
            str(cohort),
            "--endpoint",
            "pfs",
            "--variant",
            "full",
            "--seeds",
            "1",
            "--max-epochs",
            "3",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "3 without outcome left out" in out
    assert "±" in out and "full" in out
    assert (work / "prognosis" / "oof_risk.csv").is_file()
    npz = sorted((work / "features").glob("*.npz"))[0]
    rc = main(["predict", "--work", str(work), "--features", str(npz), "--variant", "full"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert "risk" in json.dumps(result)
    assert len(result["lesions"]) == min(result["n_lesions"], 20)
    rc = main(["predict", "--work", str(work), "--features", str(npz), "--top", "1"])
    short = json.loads(capsys.readouterr().out)
    assert rc == 0 and len(short["lesions"]) == min(1, short["n_lesions"])
    if short["n_lesions"] > 1:
        assert short["lesions_not_listed"] == short["n_lesions"] - 1
        assert short["lesions"][0] == result["lesions"][0]


def test_train_bad_arguments(tmp_path, capsys):
    cohort, work, _ = write_synthetic(tmp_path, n=20)
    rc = main(["train", "--work", str(work), "--cohort", str(cohort), "--seeds", "0"])
    assert rc == 2
    assert "--seeds must be >= 1, got 0" in capsys.readouterr().err
