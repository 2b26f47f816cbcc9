"""lamp.cohort: the clinical table, case paths, atomic writes and the fold split."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lamp.cohort import (
    CASE_FILES,
    CLINICAL_COLUMNS,
    CohortError,
    atomic_output,
    case_dir,
    case_path,
    has_outcome,
    make_folds,
    nnunet_splits,
    pfs_strata,
    read_clinical,
    read_folds,
    write_folds,
    write_text_atomic,
)
from lamp.errors import LampError

HEADER = ",".join(CLINICAL_COLUMNS)
VALID_ROWS = [
    # id, age, sex, ecog, ldh, stage, extranodal, ipi, pfs_m, pfs_e, os_m, os_e
    "P001,64,M,1,1.4,3,1,3,12.5,1,20.0,1",
    "P002,51.5,F,0,0.8,1,0,0,40.0,0,40.0,0",
    "P003,77,F,2,2.1,4,2,5,6.0,1,6.0,1",
    "P-004_b,45,M,0,1.0,2,0,0,,,,",  # no outcome: all four survival cells empty
    "NA,70,M,3,1.2,4,3,5,30,0,36,0",  # "NA" is a valid id, not a missing value
]


def write_csv(tmp_path: Path, rows: list[str], header: str = HEADER) -> Path:
    path = tmp_path / "clinical.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


# --------------------------------------------------------------------------------------
# constants, paths, atomic writes
# --------------------------------------------------------------------------------------


def test_constants_and_error_type():
    assert CLINICAL_COLUMNS[0] == "patient_id" and len(CLINICAL_COLUMNS) == 12
    assert CASE_FILES == {
        "pet": "pet.nii.gz",
        "ct": "ct.nii.gz",
        "organs": "organs.nii.gz",
        "lesions": "lesions.nii.gz",
    }
    assert issubclass(CohortError, ValueError) and issubclass(CohortError, LampError)


def test_case_paths(tmp_path):
    assert case_dir(tmp_path, "P001") == tmp_path / "cases" / "P001"
    assert case_path(tmp_path, "P001", "ct") == tmp_path / "cases" / "P001" / "ct.nii.gz"
    with pytest.raises(CohortError, match=r"expected kind one of .*, got 'mri'"):
        case_path(tmp_path, "P001", "mri")
    with pytest.raises(CohortError, match=r"expected a patient id matching .*got '\.\./x'"):
        case_dir(tmp_path, "../x")


def test_atomic_output_replaces_or_leaves_nothing(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    write_text_atomic(path, "one")
    write_text_atomic(path, "two")
    assert path.read_text() == "two"
    with pytest.raises(RuntimeError, match="interrupted"), atomic_output(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert path.read_text() == "two"
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]


# --------------------------------------------------------------------------------------
# read_clinical
# --------------------------------------------------------------------------------------


def test_read_clinical_valid(tmp_path):
    path = write_csv(tmp_path, [row + ",x" for row in VALID_ROWS], HEADER + ",site")
    df = read_clinical(path)
    assert df["patient_id"].tolist() == ["P001", "P002", "P003", "P-004_b", "NA"]
    assert list(df.columns) == [*CLINICAL_COLUMNS, "site"]
    assert df["ecog"].dtype == np.int64 and df["ipi"].dtype == np.int64
    assert df["age"].dtype == np.float64 and df["pfs_months"].dtype == np.float64
    assert str(df["pfs_event"].dtype) == "Int64"
    assert df["site"].tolist() == ["x"] * 5
    outcome = has_outcome(df)
    assert outcome.tolist() == [True, True, True, False, True]
    assert df.loc[outcome, "pfs_event"].astype(int).tolist() == [1, 0, 1, 0]
    assert pfs_strata(df).tolist() == ["event", "censored", "event", "no_outcome", "censored"]


def test_read_clinical_lists_every_problem(tmp_path):
    rows = [
        "P001,64,X,5,0,0,-1,6,12,1,20,1",  # sex, ecog, ldh, ann_arbor, extranodal, ipi
        "P001,abc,M,1.5,1,2,0,1,12,1,20,1",  # duplicate id, age not a number, ecog 1.5
        "_bad,64,M,1,1,2,0,1,12,,20,1",  # id pattern, partial survival
        ",64,F,1,1,2,0,1,-3,2,20,0",  # empty id, time <= 0, event not 0/1
        "P005,64,F,1,1,2,0,1,30,1,20,1",  # os < pfs
        "P006,64,F,1,1,2,0,1,30,0,30,1",  # os event without pfs event
        "P007,200,,1,,2,0,1,30,0,30,0",  # age range, empty sex, empty ldh
    ]
    with pytest.raises(CohortError) as info:
        read_clinical(write_csv(tmp_path, rows))
    msg = str(info.value)
    expected = [
        r"clinical\.csv: 19 problem\(s\)",
        r"line 2 \(patient 'P001'\), column 'sex': expected 'M' or 'F', got 'X'",
        r"line 2 \(patient 'P001'\), column 'ecog': expected an integer 0-4, got 5",
        r"line 2 \(patient 'P001'\), column 'ldh_ratio': expected LDH / ULN > 0, got 0",
        r"line 2 \(patient 'P001'\), column 'ann_arbor': expected an integer 1-4, got 0",
        r"column 'extranodal_sites': expected an integer >= 0, got -1",
        r"line 2 \(patient 'P001'\), column 'ipi': expected an integer 0-5, got 6",
        r"line 3 \(patient 'P001'\), column 'patient_id': expected unique ids, got 'P001' "
        r"again \(first on line 2\)",
        r"line 3 \(patient 'P001'\), column 'age': expected a number, got 'abc'",
        r"line 3 \(patient 'P001'\), column 'ecog': expected an integer 0-4, got 1\.5",
        r"line 4 \(patient '_bad'\), column 'patient_id': expected an id matching",
        r"line 4 \(patient '_bad'\), column 'pfs_months, pfs_event, os_months, os_event': "
        r"expected all four survival values or none \(no outcome\), got empty \['pfs_event'\]",
        r"line 5, column 'patient_id': expected a patient id, got an empty cell",
        r"line 5, column 'pfs_months': expected a time > 0 months, got -3",
        r"line 5, column 'pfs_event': expected 0 \(censored\) or 1 \(event\), got 2",
        r"line 6 \(patient 'P005'\), column 'os_months': expected os_months >= pfs_months "
        r"\(30\), got 20",
        r"line 7 \(patient 'P006'\), column 'pfs_event': expected 1 when os_event is 1",
        r"line 8 \(patient 'P007'\), column 'age': expected years in \(0, 120\], got 200",
        r"line 8 \(patient 'P007'\), column 'sex': expected 'M' or 'F', got an empty cell",
        r"line 8 \(patient 'P007'\), column 'ldh_ratio': expected a value, got an empty cell",
    ]
    for pattern in expected:
        assert re.search(pattern, msg), f"{pattern!r} not in\n{msg}"
    lines = [int(m) for m in re.findall(r"\n  - line (\d+)", msg)]
    assert lines == sorted(lines)  # listed in file order
    assert msg.count("\n  - ") == 19  # one line per problem


def test_read_clinical_missing_columns_and_file(tmp_path):
    header = HEADER.replace(",ipi", "").replace(",os_event", "")
    rows = ["P001,64,M,1,1.4,3,1,12.5,1,20.0"]
    with pytest.raises(CohortError, match=r"missing column\(s\) \['ipi', 'os_event'\]"):
        read_clinical(write_csv(tmp_path, rows, header))
    with pytest.raises(CohortError, match=r"nope\.csv: file not found"):
        read_clinical(tmp_path / "nope.csv")
    with pytest.raises(CohortError, match="got no rows"):
        read_clinical(write_csv(tmp_path, []))
    dup = HEADER + ",age"
    with pytest.raises(CohortError, match=r"got duplicates \['age'\]"):
        read_clinical(write_csv(tmp_path, [VALID_ROWS[0] + ",64"], dup))


def test_read_clinical_non_finite(tmp_path):
    with pytest.raises(CohortError, match=r"column 'ldh_ratio': expected a finite number, got inf"):
        read_clinical(write_csv(tmp_path, ["P001,64,M,1,inf,3,1,3,12.5,1,20.0,1"]))


# --------------------------------------------------------------------------------------
# strata and folds
# --------------------------------------------------------------------------------------


def strata_table(n_event=23, n_cens=41, n_none=7) -> pd.DataFrame:
    n = n_event + n_cens + n_none
    return pd.DataFrame(
        {
            "patient_id": [f"S{i:03d}" for i in range(n)],
            "pfs_months": [10.0] * (n_event + n_cens) + [np.nan] * n_none,
            "pfs_event": [1] * n_event + [0] * n_cens + [np.nan] * n_none,
        }
    ).sample(frac=1.0, random_state=1)  # interleave the strata


def test_pfs_strata_plain_frame():
    df = strata_table(2, 3, 1)
    counts = pfs_strata(df).value_counts().to_dict()
    assert counts == {"event": 2, "censored": 3, "no_outcome": 1}
    with pytest.raises(CohortError, match=r"expected pfs_event 0 or 1, got \[3\.0\]"):
        pfs_strata(pd.DataFrame({"pfs_months": [1.0], "pfs_event": [3]}))


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("n_folds", [3, 5])
def test_make_folds_stratified_and_balanced(seed, n_folds):
    df = strata_table()
    strata = pfs_strata(df)
    folds = make_folds(df["patient_id"].tolist(), strata, n_folds=n_folds, seed=seed)
    assert list(folds.columns) == ["patient_id", "fold"]
    assert folds["patient_id"].tolist() == df["patient_id"].tolist()
    assert folds["fold"].dtype == np.int64
    assert sorted(folds["fold"].unique()) == list(range(n_folds))
    sizes = folds["fold"].value_counts()
    assert sizes.max() - sizes.min() <= 1
    table = pd.crosstab(folds["fold"], strata.to_numpy())
    for stratum in ("event", "censored", "no_outcome"):
        assert table[stratum].max() - table[stratum].min() <= 1, table


def test_make_folds_deterministic_and_seed_dependent():
    df = strata_table()
    ids, strata = df["patient_id"].tolist(), pfs_strata(df)
    a = make_folds(ids, strata, seed=3)
    pd.testing.assert_frame_equal(a, make_folds(ids, strata, seed=3))
    assert not a.equals(make_folds(ids, strata, seed=4))


def test_make_folds_errors():
    with pytest.raises(CohortError, match=r"at least as many patients as folds \(5\), got 4"):
        make_folds(["a", "b", "c", "d"], ["x"] * 4)
    with pytest.raises(CohortError, match=r"one stratum per patient \(2\), got 1"):
        make_folds(["a", "b"], ["x"], n_folds=2)
    with pytest.raises(CohortError, match=r"duplicates \['a'\]"):
        make_folds(["a", "a", "b"], ["x"] * 3, n_folds=2)
    with pytest.raises(CohortError, match=r"n_folds an integer >= 2, got 1"):
        make_folds(["a", "b"], ["x"] * 2, n_folds=1)
    with pytest.raises(CohortError, match=r"got none for \['b'\]"):
        make_folds(["a", "b"], ["x", None], n_folds=2)


def test_folds_round_trip(tmp_path):
    df = strata_table()
    folds = make_folds(df["patient_id"].tolist(), pfs_strata(df), seed=0)
    path = write_folds(tmp_path / "folds.csv", folds)
    back = read_folds(path, patient_ids=df["patient_id"].tolist())
    pd.testing.assert_frame_equal(back, folds)
    assert [p.name for p in tmp_path.iterdir()] == ["folds.csv"]


def test_read_folds_errors(tmp_path):
    path = tmp_path / "folds.csv"
    with pytest.raises(CohortError, match=r"folds\.csv: file not found"):
        read_folds(path)
    path.write_text("patient_id,fold\nA,0\nB,2\nA,1\nC,x\n")
    with pytest.raises(CohortError) as info:
        read_folds(path)
    msg = str(info.value)
    assert "line 5, column 'fold': expected an integer >= 0, got 'x'" in msg
    assert "expected each patient exactly once, got repeated ids ['A']" in msg
    path.write_text("patient_id,fold\nA,0\nB,2\nC,0\n")
    with pytest.raises(CohortError, match=r"got empty fold\(s\) \[1\]"):
        read_folds(path)
    path.write_text("patient_id,fold\nA,0\nB,1\nC,0\n")
    with pytest.raises(CohortError) as info:
        read_folds(path, patient_ids=["A", "B", "D"])
    msg = str(info.value)
    assert "missing from the split (in the clinical table): ['D']" in msg
    assert "in the split but not in the clinical table: ['C']" in msg
    path.write_text("patient,fold\nA,0\n")
    with pytest.raises(CohortError, match=r"expected columns patient_id, fold; missing"):
        read_folds(path)


def test_write_folds_refuses_invalid(tmp_path):
    bad = pd.DataFrame({"patient_id": ["A", "B"], "fold": [0, 2]})
    with pytest.raises(CohortError, match=r"(?s)write_folds .*empty fold\(s\) \[1\]"):
        write_folds(tmp_path / "folds.csv", bad)
    assert not (tmp_path / "folds.csv").exists()


def test_nnunet_splits_format():
    folds = pd.DataFrame({"patient_id": ["A", "B", "C", "D", "E"], "fold": [1, 0, 2, 1, 0]})
    splits = nnunet_splits(folds)
    assert splits == [
        {"train": ["A", "C", "D"], "val": ["B", "E"]},
        {"train": ["B", "C", "E"], "val": ["A", "D"]},
        {"train": ["A", "B", "D", "E"], "val": ["C"]},
    ]
    assert json.loads(json.dumps(splits)) == splits  # plain JSON types
    for s in splits:
        assert set(s["train"]).isdisjoint(s["val"])
        assert sorted(s["train"] + s["val"]) == ["A", "B", "C", "D", "E"]
