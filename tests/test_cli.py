"""The ``lamp`` command line: help, synth, clear errors with exit status 2."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from lamp.cli import main


def test_help_is_instant_and_lists_the_stages():
    out = subprocess.run(
        [sys.executable, "-m", "lamp", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "synth" in out and "demo" in out


def test_synth_tables_only_prints_a_summary(tmp_path, capsys):
    rc = main(
        ["synth", "--out", str(tmp_path / "c"), "--patients", "60", "--seed", "4", "--tables-only"]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "patients                60" in out
    assert "PFS events" in out and "IPI group" in out and "TMTV" in out
    clin = pd.read_csv(tmp_path / "c" / "clinical.csv")
    assert len(clin) == 60


def test_synth_tiny_images(tmp_path, capsys):
    rc = main(
        [
            "synth",
            "--out",
            str(tmp_path / "c"),
            "--patients",
            "5",
            "--size",
            "tiny",
            "--no-nnunet-export",
            "--workers",
            "2",
        ]
    )
    assert rc == 0
    cases = sorted(p.name for p in (tmp_path / "c" / "cases").iterdir())
    assert cases == [f"SYN{i:04d}" for i in range(5)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "huge"], "--size must be one of tiny, small, full, got 'huge'"),
        (["--patients", "2"], "--patients must be an integer >= 5"),
        (["--seed", "-3"], "--seed must be a non-negative integer"),
    ],
)
def test_synth_bad_arguments_exit_2_with_a_message(tmp_path, capsys, args, message):
    rc = main(["synth", "--out", str(tmp_path / "c"), *args])
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_synth_bad_config_names_the_file(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("survival:\n  pfs:\n    frailty: 1\n")
    rc = main(["synth", "--out", str(tmp_path / "c"), "--config", str(cfg), "--tables-only"])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(cfg) in err and "survival.pfs.frailty" in err


def test_non_integer_patients_is_an_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["synth", "--out", str(tmp_path / "c"), "--patients", "many"])
    assert info.value.code == 2
    assert "expected an integer, got 'many'" in capsys.readouterr().err
