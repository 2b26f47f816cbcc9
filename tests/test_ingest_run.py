"""The ingest driver: clinical tables with a column map, resuming, the CLI, and the round
trip a new user would try (a synthetic cohort out as DICOM and autoPET, and back in)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ingest_helpers import clinical_frame, write_clinical_csv, write_nifti_patient
from lamp.cohort import read_clinical, read_folds
from lamp.images import load_nifti, resample_to_grid
from lamp.ingest import cli
from lamp.ingest.clinical import load_column_map, read_clinical_table
from lamp.ingest.export import export_cohort
from lamp.ingest.layouts import LAYOUTS
from lamp.ingest.run import IngestRequest, ingest_cohort
from lamp.synth.generate import SynthRequest, generate_cohort

# --------------------------------------------------------------------------------------
# Clinical tables
# --------------------------------------------------------------------------------------


def spreadsheet_frame() -> pd.DataFrame:
    """A hospital's export: its own names, days, words for sex and events, an extra column."""
    return pd.DataFrame(
        {
            "Patient ID": ["007", "A-12"],
            "Age (y)": [71, 54],
            "Gender": ["male", "Female"],
            "ECOG PS": [1, 2],
            "LDH/ULN": [1.4, 0.8],
            "Stage": [4, 2],
            "EN sites": [2, 0],
            "IPI score": [4, 1],
            "PFS (days)": [365.25, None],
            "Progression": ["yes", None],
            "OS (days)": [730.5, None],
            "Death": ["no", None],
            "Centre": ["Lyon", "Turku"],
        }
    )


MAP_YAML = """
columns:
  patient_id: "Patient ID"
  age: "Age (y)"
  sex: Gender
  ecog: "ECOG PS"
  ldh_ratio: "LDH/ULN"
  ann_arbor: Stage
  extranodal_sites: "EN sites"
  ipi: "IPI score"
  pfs_months: "PFS (days)"
  pfs_event: Progression
  os_months: "OS (days)"
  os_event: Death
values:
  sex: {male: M, female: F}
  pfs_event: {"yes": 1, "no": 0}
  os_event: {"yes": 1, "no": 0}
time_unit: days
sheet: Clinical
"""


def check_mapped(df: pd.DataFrame) -> None:
    assert df["patient_id"].tolist() == ["007", "A-12"]  # leading zeros kept
    assert df["sex"].tolist() == ["M", "F"]
    assert df["pfs_months"].iloc[0] == pytest.approx(12.0)  # 365.25 days
    assert df["os_months"].iloc[0] == pytest.approx(24.0)
    assert df["pfs_event"].iloc[0] == 1 and df["os_event"].iloc[0] == 0
    assert df["pfs_months"].isna().iloc[1]  # no outcome: kept
    assert df["Centre"].tolist() == ["Lyon", "Turku"]


def test_excel_table_with_a_column_map(tmp_path):
    path = tmp_path / "clinical.xlsx"
    with pd.ExcelWriter(path) as writer:
        pd.DataFrame({"note": ["cover sheet"]}).to_excel(writer, sheet_name="Info", index=False)
        spreadsheet_frame().astype(object).to_excel(writer, sheet_name="Clinical", index=False)
    (tmp_path / "map.yaml").write_text(MAP_YAML)
    check_mapped(read_clinical_table(path, tmp_path / "map.yaml"))


def test_csv_table_with_a_json_column_map(tmp_path):
    spreadsheet_frame().to_csv(tmp_path / "clinical.csv", index=False)
    import yaml

    cmap = yaml.safe_load(MAP_YAML)
    del cmap["sheet"]
    (tmp_path / "map.json").write_text(json.dumps(cmap))
    check_mapped(read_clinical_table(tmp_path / "clinical.csv", tmp_path / "map.json"))


def test_mapped_table_problems_are_listed_with_lines_of_the_source(tmp_path):
    df = spreadsheet_frame()
    df.loc[1, "Gender"] = "unknown"
    df.loc[0, "IPI score"] = 7
    df.to_csv(tmp_path / "clinical.csv", index=False)
    (tmp_path / "map.yaml").write_text(MAP_YAML.replace("sheet: Clinical", ""))
    with pytest.raises(ValueError) as err:
        read_clinical_table(tmp_path / "clinical.csv", tmp_path / "map.yaml")
    text = str(err.value)
    assert f"clinical table {tmp_path / 'clinical.csv'} (after the column map" in text
    assert "2 problem(s)" in text
    assert "line 2 (patient '007'), column 'ipi': expected an integer 0-5, got 7" in text
    assert "line 3 (patient 'A-12'), column 'sex': expected 'M' or 'F', got 'unknown'" in text


def test_identity_map():
    cmap = load_column_map(None)
    assert cmap.columns == {} and cmap.time_unit == "months"


# --------------------------------------------------------------------------------------
# Resuming and the summary
# --------------------------------------------------------------------------------------


def test_rerun_skips_finished_patients_and_retries_failed_ones(tmp_path):
    inp = tmp_path / "in"
    for pid in ("P1", "P2", "P3", "P4", "P5"):
        write_nifti_patient(inp, pid)
    (inp / "P5" / "ct.nii.gz").unlink()
    write_clinical_csv(tmp_path / "clinical.csv", ["P1", "P2", "P3", "P4", "P5"])
    req = IngestRequest(inp, "nifti", tmp_path / "clinical.csv", tmp_path / "out")
    calls = []
    first = ingest_cohort(req, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (5, 5)
    assert [r.status for r in first.results] == ["ready"] * 4 + ["failed"]
    assert not (tmp_path / "out" / "folds.csv").exists()  # only for a complete cohort
    pet = tmp_path / "out" / "cases" / "P1" / "pet.nii.gz"
    stamp = pet.stat().st_mtime_ns

    write_nifti_patient(inp, "P5")  # the user fixes the input and reruns
    second = ingest_cohort(req, progress=False)
    assert [r.status for r in second.results] == ["done"] * 4 + ["ready"]
    assert second.ok
    assert pet.stat().st_mtime_ns == stamp  # finished patients are not rewritten
    text = second.to_text()
    assert "patients in        5" in text
    assert "patients ready     5  (1 ingested now, 4 finished earlier)" in text
    assert "folds.csv        written (5 folds" in text
    folds = read_folds(tmp_path / "out" / "folds.csv", [f"P{i}" for i in range(1, 6)])
    assert sorted(folds["fold"]) == [0, 1, 2, 3, 4]
    saved = json.loads((tmp_path / "out" / "ingest_summary.json").read_text())
    assert saved["ready"] == 5 and saved["ingested_now"] == 1


def test_outcomes_may_be_missing_and_are_counted(tmp_path):
    write_nifti_patient(tmp_path / "in", "P1")
    write_nifti_patient(tmp_path / "in", "P2")
    df = clinical_frame(["P1", "P2"])
    df.loc[1, ["pfs_months", "pfs_event", "os_months", "os_event"]] = None
    df.to_csv(tmp_path / "clinical.csv", index=False)
    s = ingest_cohort(
        IngestRequest(tmp_path / "in", "nifti", tmp_path / "clinical.csv", tmp_path / "out"),
        progress=False,
    )
    assert s.ok
    assert "with outcome       1 of 2 ready  (1 without: kept for segmentation" in s.to_text()
    assert read_clinical(tmp_path / "out" / "clinical.csv")["pfs_months"].isna().tolist() == [
        False,
        True,
    ]


def test_the_input_is_never_modified(tmp_path):
    write_nifti_patient(tmp_path / "in", "P1")
    write_clinical_csv(tmp_path / "clinical.csv", ["P1"])
    before = {p: p.read_bytes() for p in (tmp_path / "in").rglob("*") if p.is_file()}
    ingest_cohort(
        IngestRequest(tmp_path / "in", "nifti", tmp_path / "clinical.csv", tmp_path / "out"),
        progress=False,
    )
    assert {p: p.read_bytes() for p in (tmp_path / "in").rglob("*") if p.is_file()} == before


# --------------------------------------------------------------------------------------
# The CLI, through add_parser and run
# --------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lamp")
    sub = p.add_subparsers(dest="command")
    cli.add_parser(sub)
    return p


def test_cli_layout_choices_match_the_library():
    assert cli.LAYOUT_CHOICES == LAYOUTS


def test_cli_ingest_ok_then_failed_patient_exit_1(tmp_path, capsys):
    write_nifti_patient(tmp_path / "in", "P1")
    write_clinical_csv(tmp_path / "clinical.csv", ["P1", "P2"])
    argv = [
        "ingest",
        "--input",
        str(tmp_path / "in"),
        "--layout",
        "nifti",
        "--clinical",
        str(tmp_path / "clinical.csv"),
        "--out",
        str(tmp_path / "out"),
        "--no-progress",
    ]
    args = parser().parse_args(argv)
    assert args.handler is cli.run
    assert cli.run(args) == 1  # P2 has no images
    out = capsys.readouterr().out
    assert "patients failed    1" in out
    assert "P2: in the clinical table but no images found" in out

    write_clinical_csv(tmp_path / "clinical2.csv", ["P1"])
    argv[argv.index(str(tmp_path / "clinical.csv"))] = str(tmp_path / "clinical2.csv")
    assert cli.run(parser().parse_args(argv)) == 0
    assert "patients ready     1  (0 ingested now, 1 finished earlier)" in capsys.readouterr().out


def test_cli_run_stopping_error_exit_2_without_traceback(tmp_path, capsys):
    write_nifti_patient(tmp_path / "in", "P1")
    args = parser().parse_args(
        [
            "ingest",
            "--input",
            str(tmp_path / "in"),
            "--layout",
            "nifti",
            "--clinical",
            str(tmp_path / "nope.csv"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert cli.run(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("lamp ingest: error: --clinical ")
    assert "nope.csv: file not found" in err and "Traceback" not in err


def test_cli_rejects_an_unknown_layout(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(
            ["ingest", "--input", "x", "--layout", "dcm", "--clinical", "c", "--out", "o"]
        )
    assert "invalid choice: 'dcm'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# The round trip: a synthetic cohort as DICOM and as autoPET, ingested back
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "cohort"
    generate_cohort(SynthRequest(out=out, n_patients=5, size="tiny", export_nnunet=False))
    return out


def test_round_trip_dicom(synthetic, tmp_path):
    export_cohort(synthetic, tmp_path / "dicom", "dicom")
    s = ingest_cohort(
        IngestRequest(tmp_path / "dicom", "dicom", synthetic / "clinical.csv", tmp_path / "cohort"),
        progress=False,
    )
    assert s.ok, s.to_text()
    assert "warnings" not in s.to_text()  # every liver SUV within 1.3-3.0
    original = read_clinical(synthetic / "clinical.csv")
    pd.testing.assert_frame_equal(read_clinical(tmp_path / "cohort" / "clinical.csv"), original)
    for pid in original["patient_id"]:
        src = synthetic / "cases" / pid
        dst = tmp_path / "cohort" / "cases" / pid
        pet0, aff0 = load_nifti(src / "pet.nii.gz")
        pet1, aff1 = load_nifti(dst / "pet.nii.gz")
        np.testing.assert_allclose(aff1, aff0, atol=1e-4)
        # int16 with a per-slice slope: half a step of the slice maximum at most
        np.testing.assert_allclose(pet1, pet0, rtol=0, atol=2e-5 * pet0.max())
        ct0, ct_aff0 = load_nifti(src / "ct.nii.gz")
        ct1, _ = load_nifti(dst / "ct.nii.gz")
        expected = resample_to_grid(
            ct0.astype(np.float32), ct_aff0, pet0.shape, aff0, order=1, fill=-1024
        )
        np.testing.assert_allclose(ct1, expected, atol=0.51)  # HU stored as integers
        for kind in ("organs", "lesions"):
            np.testing.assert_array_equal(
                load_nifti(dst / f"{kind}.nii.gz")[0], load_nifti(src / f"{kind}.nii.gz")[0]
            )
        record = json.loads((tmp_path / "cohort" / "ingest_log" / f"{pid}.json").read_text())
        assert record["suv"]["injection"] == "2024-03-01T23:10:00"  # the day before the scan
        assert record["suv"]["decay_time_s"] == 3750.0


def test_round_trip_autopet(synthetic, tmp_path):
    export_cohort(synthetic, tmp_path / "autopet", "autopet")
    s = ingest_cohort(
        IngestRequest(
            tmp_path / "autopet", "autopet", synthetic / "clinical.csv", tmp_path / "cohort"
        ),
        progress=False,
    )
    assert s.ok, s.to_text()
    original = read_clinical(synthetic / "clinical.csv")
    pd.testing.assert_frame_equal(read_clinical(tmp_path / "cohort" / "clinical.csv"), original)
    read_folds(tmp_path / "cohort" / "folds.csv", original["patient_id"])  # all five split
    for pid in original["patient_id"]:
        src = synthetic / "cases" / pid
        dst = tmp_path / "cohort" / "cases" / pid
        pet0, aff0 = load_nifti(src / "pet.nii.gz")
        pet1, aff1 = load_nifti(dst / "pet.nii.gz")
        np.testing.assert_array_equal(pet1, pet0)
        np.testing.assert_allclose(aff1, aff0)
        ct0, ct_aff0 = load_nifti(src / "ct.nii.gz")
        expected = resample_to_grid(
            ct0.astype(np.float32), ct_aff0, pet0.shape, aff0, order=1, fill=-1024
        )
        np.testing.assert_allclose(load_nifti(dst / "ct.nii.gz")[0], expected, atol=0.51)
        les0 = load_nifti(src / "lesions.nii.gz")[0]
        les1 = load_nifti(dst / "lesions.nii.gz")[0]
        np.testing.assert_array_equal(les1 > 0, les0 > 0)  # SEG is binary: instances renumbered
