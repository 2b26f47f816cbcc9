"""``lamp organs``: producing a cohort's organ masks with TotalSegmentator, and --check.

TotalSegmentator is not installed here. The "not installed" path is tested as it is;
the run path uses a stand-in ``totalsegmentator`` package that returns, on the CT grid,
the synthetic cohort's own organ map, so that the real runner, the check of its output,
the resampling onto the PET grid, the atomic writes, the resume and the failure
isolation all run for real.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lamp import organs
from lamp.anatomy import GROUPS, TOTAL_IDS
from lamp.errors import LampError
from lamp.images import load_nifti, resample_to_grid, same_grid, save_nifti
from lamp.organs import (
    ORGANS_LOG_DIR,
    check_cohort_organs,
    organ_groups,
    totalseg_weights_dir,
)
from lamp.organs_cli import add_parsers
from lamp.synth.generate import SynthRequest, generate_cohort

N = 5
IDS = [f"SYN{i:04d}" for i in range(N)]
NAMES = {i: name for name, i in TOTAL_IDS.items()}
CASE_FILES = {"ct.nii.gz", "pet.nii.gz", "organs.nii.gz", "lesions.nii.gz"}


def lamp_organs(*args) -> int:
    """``lamp organs ARGS`` through the subcommand's own parser and handler."""
    parser = argparse.ArgumentParser(prog="lamp")
    add_parsers(parser.add_subparsers(dest="command"))
    ns = parser.parse_args(["organs", *(str(a) for a in args)])
    return ns.handler(ns)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("organs_cli") / "cohort"
    generate_cohort(SynthRequest(out=out, n_patients=N, seed=1, size="tiny", export_nnunet=False))
    return out


@pytest.fixture
def cohort(template, tmp_path) -> Path:
    """A fresh copy of the tiny cohort (with the generator's organ masks)."""
    return Path(shutil.copytree(template, tmp_path / "cohort"))


def organs_path(cohort: Path, pid: str) -> Path:
    return cohort / "cases" / pid / "organs.nii.gz"


def tree(folder: Path) -> dict[str, int]:
    """Every file and folder under ``folder`` with its modification time."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


# --------------------------------------------------------------------------------------
# A stand-in TotalSegmentator
# --------------------------------------------------------------------------------------


def _label_table(names: dict[int, str]) -> nib.nifti1.Nifti1Extension:
    """TotalSegmentator v2's id -> name table (a CaretExtension header extension)."""
    xml = '<?xml version="1.0" encoding="UTF-8"?><CaretExtension><VolumeInformation Index="0">'
    xml += "<LabelTable>"
    for key, name in names.items():
        xml += f'<Label Key="{key}" Red="1" Green="0" Blue="0" Alpha="1"><![CDATA[{name}]]></Label>'
    xml += "</LabelTable></VolumeInformation></CaretExtension>"
    return nib.nifti1.Nifti1Extension(0, xml.encode())


class FakeTotalSegmentator:
    """Writes the template cohort's organ map, resampled onto the CT grid, like ``--ml``.

    ``behaviour[pid]`` changes what happens for one patient: ``"crash"`` (SystemExit, as
    TotalSegmentator does on bad input), ``"interrupt"`` (Ctrl-C), ``"empty"`` (no organ),
    ``"ids"`` (ids above 117), ``"names"`` (a label table with a class that is not in
    'total').
    """

    def __init__(self, template: Path) -> None:
        self.template = template
        self.calls: list[dict] = []
        self.behaviour: dict[str, str] = {}

    def __call__(self, **kwargs) -> None:
        ct_path = Path(kwargs["input"])
        pid = ct_path.parent.name
        self.calls.append({"patient": pid, **kwargs})
        what = self.behaviour.get(pid)
        if what == "crash":
            raise SystemExit(1)
        if what == "interrupt":
            raise KeyboardInterrupt
        ct, ct_affine = load_nifti(ct_path)
        labels = self.on_ct_grid(pid, ct.shape, ct_affine)
        if what == "empty":
            labels[:] = 0
        if what == "ids":
            labels[labels == TOTAL_IDS["liver"]] = 200
        names = {int(v): NAMES[int(v)] for v in np.unique(labels) if v}
        if what == "names":
            names[TOTAL_IDS["liver"]] = "lymphoma"
        img = nib.Nifti1Image(labels, ct_affine)
        img.header.extensions.append(_label_table(names))
        nib.save(img, str(kwargs["output"]))

    def on_ct_grid(self, pid: str, ct_shape, ct_affine) -> np.ndarray:
        reference, pet_affine = load_nifti(self.template / "cases" / pid / "organs.nii.gz")
        return resample_to_grid(reference, pet_affine, ct_shape, ct_affine, order=0)


@pytest.fixture
def fake_totalseg(monkeypatch, tmp_path, template) -> FakeTotalSegmentator:
    home = tmp_path / "tshome"
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(home))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    for d in (291, 292, 293, 294, 295, 297):
        fold = home / "nnunet" / "results" / f"Dataset{d}_TotalSeg" / "tr__pl__3d" / "fold_0"
        fold.mkdir(parents=True)
        (fold / "checkpoint_final.pth").write_bytes(b"weights")
    fake = FakeTotalSegmentator(template)
    package = types.ModuleType("totalsegmentator")
    api = types.ModuleType("totalsegmentator.python_api")
    api.totalsegmentator = fake  # type: ignore[attr-defined]
    package.python_api = api  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "totalsegmentator", package)
    monkeypatch.setitem(sys.modules, "totalsegmentator.python_api", api)
    monkeypatch.setattr(organs, "_totalseg_version", lambda: "2.4.0")
    return fake


def remove_masks(cohort: Path, pids=IDS) -> None:
    for pid in pids:
        organs_path(cohort, pid).unlink()


def case_leftovers(cohort: Path, pid: str) -> set[str]:
    """Names in a case folder other than its images (scratch folders, temporary files)."""
    return {p.name for p in (cohort / "cases" / pid).iterdir()} - CASE_FILES


# --------------------------------------------------------------------------------------
# Without TotalSegmentator
# --------------------------------------------------------------------------------------


def test_without_totalsegmentator_exits_2_and_touches_nothing(cohort, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "totalsegmentator", None)  # import raises ImportError
    remove_masks(cohort, ["SYN0001", "SYN0003"])
    before = tree(cohort)
    assert lamp_organs("--cohort", cohort) == 2
    assert tree(cohort) == before
    err = capsys.readouterr().err
    assert "TotalSegmentator is not installed" in err and "no patient was touched" in err
    assert "pip install 'TotalSegmentator>=2'" in err
    assert str(totalseg_weights_dir()) in err and "Dataset291_*" in err
    assert "never downloads" in err
    assert "--ml" in err and "lamp ingest" in err
    assert f"{cohort}/cases/<patient_id>/organs.nii.gz" in err
    assert f"lamp organs --cohort {cohort} --check" in err


def test_without_weights_exits_2_and_names_the_folder(cohort, fake_totalseg, tmp_path, capsys):
    remove_masks(cohort, ["SYN0000"])
    before = tree(cohort)
    empty = tmp_path / "no_weights"
    assert lamp_organs("--cohort", cohort, "--fast", "--weights-dir", empty) == 2
    assert tree(cohort) == before and fake_totalseg.calls == []
    err = capsys.readouterr().err
    assert f"not installed in {empty}" in err and "Dataset297_*" in err
    assert "TotalSegmentator -i ct.nii.gz -o organs.nii.gz --ml" in err


def test_nothing_to_run_needs_no_totalsegmentator(cohort, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "totalsegmentator", None)
    assert lamp_organs("--cohort", cohort) == 0
    assert "nothing to run" in capsys.readouterr().out


def test_bad_arguments_are_errors_before_anything_runs(cohort, fake_totalseg):
    with pytest.raises(LampError, match=r"patient\(s\) NOPE not in .*clinical.csv"):
        lamp_organs("--cohort", cohort, "--patient", "SYN0001", "NOPE")
    shutil.rmtree(cohort / "cases" / "SYN0001")
    (cohort / "clinical.csv").unlink()
    with pytest.raises(LampError, match="clinical.csv.*not found"):
        lamp_organs("--cohort", cohort)
    assert fake_totalseg.calls == []


# --------------------------------------------------------------------------------------
# Running (with the stand-in)
# --------------------------------------------------------------------------------------


def test_run_writes_total_masks_on_the_pet_grid(cohort, template, fake_totalseg, capsys):
    remove_masks(cohort)
    assert lamp_organs("--cohort", cohort) == 0
    assert "5 written" in capsys.readouterr().out
    assert [c["patient"] for c in fake_totalseg.calls] == IDS
    call = fake_totalseg.calls[0]
    assert call["ml"] is True and call["task"] == "total" and call["fast"] is False
    assert call["device"] == "cpu"
    config = json.loads((Path(organs.totalseg_home_dir()) / "config.json").read_text())
    assert config["send_usage_stats"] is False
    for pid in IDS:
        out, affine = load_nifti(organs_path(cohort, pid))
        pet, pet_affine = load_nifti(cohort / "cases" / pid / "pet.nii.gz")
        ct, ct_affine = load_nifti(cohort / "cases" / pid / "ct.nii.gz")
        assert out.dtype == np.uint8 and same_grid(out.shape, affine, pet.shape, pet_affine)
        assert not same_grid(ct.shape, ct_affine, pet.shape, pet_affine)  # it was resampled
        # nearest neighbour through physical space from TotalSegmentator's CT-grid output
        on_ct = fake_totalseg.on_ct_grid(pid, ct.shape, ct_affine)
        expected = resample_to_grid(on_ct, ct_affine, pet.shape, pet_affine, order=0)
        np.testing.assert_array_equal(out, expected)
        # ... which puts the organs back where they were (PET -> CT -> PET, 12 / 10 mm)
        reference, _ = load_nifti(template / "cases" / pid / "organs.nii.gz")
        body = reference > 0
        assert np.mean(out[body] == reference[body]) > 0.8
        assert case_leftovers(cohort, pid) == set()
        record = json.loads((cohort / ORGANS_LOG_DIR / f"{pid}.json").read_text())
        assert record["totalsegmentator_version"] == "2.4.0" and record["fast"] is False
        assert record["ct_on_pet_grid"] is False
        assert record["groups_present"] == int(organ_groups(out)[1].sum())


def test_device_fast_and_patient_options(cohort, fake_totalseg):
    remove_masks(cohort, ["SYN0001", "SYN0002"])
    args = ("--cohort", cohort, "--device", "gpu", "--fast", "--patient", "SYN0002", "SYN0000")
    assert lamp_organs(*args) == 0
    (call,) = fake_totalseg.calls  # SYN0000 still had its masks
    assert call["patient"] == "SYN0002" and call["device"] == "gpu" and call["fast"] is True
    assert organs_path(cohort, "SYN0002").exists()
    assert not organs_path(cohort, "SYN0001").exists()


def test_failures_are_isolated_and_a_rerun_resumes(cohort, fake_totalseg, capsys):
    remove_masks(cohort)
    fake_totalseg.behaviour = {
        "SYN0001": "crash",
        "SYN0002": "ids",
        "SYN0003": "names",
        "SYN0004": "empty",
    }
    assert lamp_organs("--cohort", cohort) == 1
    out = capsys.readouterr().out
    assert "1 written" in out and "4 failed" in out
    assert "FAILED SYN0001: TotalSegmentator failed" in out and "SystemExit" in out
    assert "FAILED SYN0002:" in out and "200" in out
    assert "FAILED SYN0003:" in out and "'lymphoma'" in out and "not its 'total' map" in out
    assert "FAILED SYN0004: TotalSegmentator found no organ" in out
    assert organs_path(cohort, "SYN0000").exists()
    for pid in IDS[1:]:
        assert not organs_path(cohort, pid).exists()
        assert case_leftovers(cohort, pid) == set()
        assert not (cohort / ORGANS_LOG_DIR / f"{pid}.json").exists()
    done = organs_path(cohort, "SYN0000").stat().st_mtime_ns

    # the rerun does only the failed patients, and leaves the finished one alone
    fake_totalseg.behaviour = {}
    fake_totalseg.calls.clear()
    assert lamp_organs("--cohort", cohort) == 0
    assert [c["patient"] for c in fake_totalseg.calls] == IDS[1:]
    assert organs_path(cohort, "SYN0000").stat().st_mtime_ns == done
    assert check_cohort_organs(cohort).ok

    fake_totalseg.calls.clear()
    assert lamp_organs("--cohort", cohort) == 0
    assert fake_totalseg.calls == []
    assert lamp_organs("--cohort", cohort, "--force") == 0
    assert [c["patient"] for c in fake_totalseg.calls] == IDS


def test_an_interrupted_patient_leaves_nothing_that_looks_finished(cohort, fake_totalseg):
    remove_masks(cohort)
    fake_totalseg.behaviour = {"SYN0002": "interrupt"}
    with pytest.raises(KeyboardInterrupt):
        lamp_organs("--cohort", cohort)
    assert [organs_path(cohort, p).exists() for p in IDS] == [True, True, False, False, False]
    assert case_leftovers(cohort, "SYN0002") == set()
    fake_totalseg.behaviour = {}
    fake_totalseg.calls.clear()
    assert lamp_organs("--cohort", cohort) == 0
    assert [c["patient"] for c in fake_totalseg.calls] == IDS[2:]


# --------------------------------------------------------------------------------------
# --check
# --------------------------------------------------------------------------------------


def test_check_lists_missing_off_grid_unusable_and_group_presence(cohort, capsys):
    remove_masks(cohort, ["SYN0001"])
    # SYN0002: a mask left on the CT grid (TotalSegmentator's output, copied as it is)
    ct, ct_affine = load_nifti(cohort / "cases" / "SYN0002" / "ct.nii.gz")
    labels, pet_affine = load_nifti(organs_path(cohort, "SYN0002"))
    on_ct = resample_to_grid(labels, pet_affine, ct.shape, ct_affine, order=0)
    save_nifti(organs_path(cohort, "SYN0002"), on_ct, ct_affine, dtype=np.uint8)
    # SYN0003: not a 'total' map
    labels, pet_affine = load_nifti(organs_path(cohort, "SYN0003"))
    save_nifti(organs_path(cohort, "SYN0003"), np.where(labels > 0, 200, 0), pet_affine, np.uint8)
    # SYN0004: no spleen
    labels, pet_affine = load_nifti(organs_path(cohort, "SYN0004"))
    labels[labels == TOTAL_IDS["spleen"]] = 0
    save_nifti(organs_path(cohort, "SYN0004"), labels, pet_affine, dtype=np.uint8)
    before = tree(cohort)

    assert lamp_organs("--cohort", cohort, "--check") == 1
    assert tree(cohort) == before  # runs nothing, writes nothing
    out = capsys.readouterr().out
    assert "patients 5: 2 with organ masks on the PET grid, 1 without" in out
    assert "without organ masks: SYN0001" in out
    assert f"not on the PET grid: SYN0002: shape {ct.shape}" in out
    assert "unusable: SYN0003:" in out and "200" in out

    check = check_cohort_organs(cohort)
    assert check.missing == ("SYN0001",) and set(check.off_grid) == {"SYN0002"}
    assert set(check.unusable) == {"SYN0003"} and check.n_read == 3
    # the presence counts are those of the three readable masks, off grid or not
    expected = np.zeros(len(GROUPS), dtype=int)
    for pid in ("SYN0000", "SYN0002", "SYN0004"):
        data, _ = load_nifti(organs_path(cohort, pid))
        expected += ~organ_groups(data)[1]
    np.testing.assert_array_equal(check.absent, expected)
    spleen = GROUPS.index("spleen")
    assert check.absent[spleen] == 1
    for g in np.flatnonzero(expected):
        assert f"{GROUPS[g]}  " in out and f"{expected[g]} of 3" in out
    assert f"present in every patient ({int(np.sum(expected == 0))} group(s))" in out


def test_check_of_a_complete_cohort_and_of_chosen_patients(cohort, capsys):
    assert lamp_organs("--cohort", cohort, "--check") == 0
    assert "patients 5: 5 with organ masks on the PET grid" in capsys.readouterr().out
    remove_masks(cohort, ["SYN0004"])
    assert lamp_organs("--cohort", cohort, "--check", "--patient", "SYN0000") == 0
    assert lamp_organs("--cohort", cohort, "--check") == 1
    with pytest.raises(LampError, match="--check runs nothing, so --fast, --force would"):
        lamp_organs("--cohort", cohort, "--check", "--force", "--fast")


def test_importing_the_subcommand_is_light():
    heavy = "{'numpy', 'nibabel', 'lamp.organs'}"
    code = f"import sys, lamp.organs_cli; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
