"""Figures and HTML reports (`lamp.reports`) on a tiny synthetic cohort.

The fixture never runs segmentation: a `lamp synth` cohort (tiny images), feature files
with random 128-d features for the reference lesions (the lesion table computed from the
images), a fake prediction per patient (the reference minus one lesion plus a false
blob), a few-epoch `train_cv` so that ``WORK/prognosis`` exists, and `evaluate`.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lamp.anatomy import GROUPS, merge_to_groups
from lamp.cohort import case_path, read_clinical
from lamp.errors import LampError
from lamp.images import load_nifti, save_nifti
from lamp.reports import html as H
from lamp.reports.build import default_patients, write_reports
from lamp.reports.cohort_report import cohort_report
from lamp.reports.common import ReportError
from lamp.reports.figures import ORGAN_CATEGORIES, organ_category
from lamp.reports.mip import (
    attention_mip_figure,
    mip_views,
    project_labels,
    segmentation_overlay_figure,
)
from lamp.reports.patient_report import fold_survival, patient_report

PNG = b"\x89PNG\r\n\x1a\n"
FAST = dict(
    n_bins=4, lr=3e-3, batch_size=16, max_epochs=5, select_epochs=False,
    attn_dim=16, gate_dim=16, auc_months=(12.0,),
)  # fmt: skip


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG
    return struct.unpack(">II", data[16:24])


def write_features(cohort: Path, work: Path, seed: int = 0) -> list[str]:
    """WORK/features/<id>.npz in the layout of `lamp.features` with random features."""
    from lamp.features import lesion_table

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(GROUPS), 128))  # one cluster per organ for the t-SNE
    ids = read_clinical(cohort / "clinical.csv")["patient_id"].tolist()
    (work / "features").mkdir(parents=True, exist_ok=True)
    for pid in ids:
        pet, aff = load_nifti(case_path(cohort, pid, "pet"))
        les, _ = load_nifti(case_path(cohort, pid, "lesions"))
        groups = merge_to_groups(load_nifti(case_path(cohort, pid, "organs"))[0])
        table = lesion_table(pet, les, aff, groups, pid)
        vox = np.bincount(groups.ravel(), minlength=len(GROUPS) + 1)[1:]
        present = vox > 0
        organs = (centres + 0.3 * rng.normal(size=centres.shape)) * present[:, None]
        meta = {
            "format": 1, "patient_id": pid, "n_features": 128,
            "sources": {"lesions": str(case_path(cohort, pid, "lesions"))},
        }  # fmt: skip
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            patient_id=np.array(pid),
            lesion_ids=table["lesion_id"].to_numpy(np.int32),
            lesion_features=rng.normal(size=(len(table), 128)).astype(np.float32),
            lesion_voxels=table["voxels"].to_numpy(np.int64),
            organ_features=organs.astype(np.float32),
            organ_present=present,
            organ_voxels=vox.astype(np.int64),
            lesion_table=np.array(table.to_json(orient="split", index=False)),
            meta=np.array(json.dumps(meta)),
        )
        (work / "features" / f"{pid}.npz").write_bytes(buf.getvalue())
        pred = (les > 0) & (les != les.max())  # the last lesion missed
        pred[1:3, 1:3, 1:3] = True  # a false positive
        path = work / "segmentation" / "lamp" / "pred" / f"{pid}.nii.gz"
        save_nifti(path, pred.astype(np.uint8), aff, np.uint8)
    return ids


def build_work(root: Path, n_patients: int = 6, endpoints=("pfs", "os")) -> tuple[Path, Path]:
    """A cohort, features, predictions, a trained model and results; returns (cohort, work)."""
    import torch
    from threadpoolctl import threadpool_limits

    from lamp.evaluation.tables import evaluate
    from lamp.model.train import TrainConfig, train_cv
    from lamp.segmentation.evaluate import evaluate_network
    from lamp.synth.generate import SynthRequest, generate_cohort

    cohort, work = root / "cohort", root / "work"
    generate_cohort(
        SynthRequest(out=cohort, n_patients=n_patients, size="tiny", export_nnunet=False)
    )
    write_features(cohort, work)
    # one thread: tiny tensors and a small t-SNE run far faster than with threads that
    # spin against each other on a busy 2-core machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            train_cv(work, cohort, list(endpoints), ["full"], [0], TrainConfig(**FAST))
            evaluate_network(cohort, work, "lamp")
            evaluate(work, cohort)
    finally:
        torch.set_num_threads(threads)
    return cohort, work


def make_reports(cohort: Path, work: Path, **kw):
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            return write_reports(work, cohort, n_default=1, tsne_points=150, **kw)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cohort, work = build_work(tmp_path_factory.mktemp("reports"))
    res = make_reports(cohort, work)
    return cohort, work, res


def images_of(page: str) -> list[str]:
    return re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", page)


def assert_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", page, re.I)
    assert "<script" not in page.lower()
    srcs = images_of(page)
    assert len(srcs) == page.count("<img")
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1], validate=True)[:8] == PNG


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------


def test_mip_orientation_is_radiological_in_any_storage_order():
    vol = np.zeros((10, 8, 12), dtype=np.float32)
    vol[9, 0, 11] = 5.0  # index -> RAS: +i towards the patient's right (identity affine)
    views = mip_views(vol, np.diag([2.0, 3.0, 4.0, 1.0]))
    cor, sag = views.images["coronal"], views.images["sagittal"]
    assert cor.shape == (12, 10) and sag.shape == (12, 8)
    # superior at the top, the patient's right on the viewer's left, anterior on the left
    assert cor[0, 0] == 5.0
    assert sag[0, -1] == 5.0  # j = 0 is the posterior end
    assert views.extents["coronal"] == (20.0, 48.0)
    # the same body stored flipped (LPS-like affine) gives the same pictures
    flipped = vol[::-1, ::-1, :]
    aff = np.diag([-2.0, -3.0, 4.0, 1.0])
    again = mip_views(flipped, aff)
    assert np.array_equal(again.images["coronal"], cor)
    assert np.array_equal(again.images["sagittal"], sag)
    labels = np.zeros(vol.shape, dtype=np.uint8)
    labels[9, 0, 11] = 3
    fp = project_labels(labels, np.diag([2.0, 3.0, 4.0, 1.0]))
    assert set(fp["coronal"]) == {3} and fp["coronal"][3][0, 0]


def test_segmentation_overlay_counts(tmp_path):
    suv = np.ones((20, 12, 24), dtype=np.float32)
    ref = np.zeros(suv.shape, dtype=np.uint8)
    pred = np.zeros(suv.shape, dtype=np.uint8)
    ref[2:5, 2:5, 2:5] = 1  # found (TP)
    pred[3:6, 3:6, 3:6] = 1
    ref[10:12, 6:8, 10:12] = 1  # missed (FN)
    pred[15:18, 2:4, 18:20] = 1  # false positive
    path, counts = segmentation_overlay_figure(
        tmp_path / "s.png", suv, np.diag([4.0, 4.0, 4.0, 1.0]), ref, pred, "case"
    )
    assert counts == {"tp": 1, "fp": 1, "fn": 1, "n_ref": 2, "n_pred": 2}
    assert path.read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="one grid"):
        segmentation_overlay_figure(tmp_path / "t.png", suv, np.eye(4), ref[:-1], pred)


def test_attention_mip_is_deterministic_and_sized(tmp_path):
    suv = np.random.default_rng(0).random((16, 10, 30)).astype(np.float32) * 4
    inst = np.zeros(suv.shape, dtype=np.uint16)
    inst[3:6, 3:6, 20:24] = 1
    inst[10:13, 4:7, 5:8] = 2
    aff = np.diag([-4.0, -4.0, 4.0, 1.0])
    args = (suv, aff, inst, {1: 0.7, 2: 0.3}, {1: "L1 spleen -> attends <liver>"})
    a = attention_mip_figure(tmp_path / "a.png", *args, title="t").read_bytes()
    b = attention_mip_figure(tmp_path / "b.png", *args, title="t").read_bytes()
    assert a == b and b"Software" not in a
    w, h = png_size(a)
    assert w >= 750 and 700 <= h <= 760  # 7.5 in wide at least, 7.6 in tall, 100 dpi


def test_every_organ_group_has_a_category():
    assert {organ_category(g) for g in GROUPS} <= set(ORGAN_CATEGORIES)
    assert sum(len(v) for v in ORGAN_CATEGORIES.values()) == len(GROUPS)
    assert organ_category("not_an_organ") == "Other"


# --------------------------------------------------------------------------------------
# HTML building blocks
# --------------------------------------------------------------------------------------


def test_html_escaping():
    evil = '<script>alert("x")</script> & co'
    out = H.table([[evil, 1.23456]], ["<th>", "value"], caption=evil)
    assert "<script>" not in out and "&lt;script&gt;" in out and "&amp; co" in out
    assert "1.235" in out and "&lt;th&gt;" in out
    assert "<script>" not in H.key_values({evil: evil}) + H.pre(evil) + H.section(evil, "")
    assert H.not_available(evil, evil).count("&lt;script&gt;") == 2
    md = f"**Table <1>**\n\n| Methods | C |\n|:---|:---:|\n| {evil} | 0.7 |\n\n- note <b>\n"
    title, header, rows, notes = H.parse_markdown_table(md)
    assert title == "Table <1>" and header == ["Methods", "C"] and rows == [[evil, "0.7"]]
    assert notes == ["note <b>"]
    page = H.page(evil, [H.markdown_table(md)])
    assert "<script>" not in page and "Table &lt;1&gt;" in page and "note &lt;b&gt;" in page
    with pytest.raises(ValueError, match="not a PNG"):
        H.png_data_uri(b"GIF89a")
    with pytest.raises(ValueError, match="no markdown table"):
        H.parse_markdown_table("just text")


# --------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------


def test_cohort_report(built):
    cohort, work, res = built
    page = res.cohort.read_text(encoding="utf-8")
    assert res.cohort == work / "reports" / "cohort.html"
    assert_self_contained(page)
    expected = ("Table 1.", "Table 2.", "LAMP (ours)", "log-rank", "t-SNE", "Dice",
                "relative attention", "Package versions", "numpy",
                "&quot;max_epochs&quot;: 5")  # fmt: skip
    for text in expected:
        assert text in page, text
    assert "not available" not in page
    # KM (2 endpoints x Table 1 rows), t-SNE, 3 segmentation overlays
    assert len(images_of(page)) == len(list((work / "results").glob("km_*.png"))) + 1 + 3
    tsne = (work / "reports" / "figures" / "tsne_organs.png").read_bytes()
    assert png_size(tsne) == (825, 660)
    for seg in (work / "reports" / "figures").glob("segmentation_*.png"):
        w, h = png_size(seg.read_bytes())
        assert w >= 650 and h == 660


def test_patient_reports(built):
    cohort, work, res = built
    chosen = default_patients(work, 1)
    assert list(res.patients) == chosen and len(chosen) == 2  # highest and lowest PFS risk
    oof = pd.read_csv(work / "prognosis" / "oof_risk.csv")
    pfs = oof[oof["endpoint"] == "pfs"].sort_values("risk")
    assert chosen == [pfs["patient_id"].iloc[-1], pfs["patient_id"].iloc[0]]
    for pid, path in res.patients.items():
        assert path == work / "reports" / "patients" / f"{pid}.html"
        page = path.read_text(encoding="utf-8")
        assert_self_contained(page)
        for text in ("IPI", "Ann Arbor stage", "PFS risk group", "OS risk group",
                     "lesions ranked by ABMLA attention", "high risk" if pid == chosen[0]
                     else "low risk"):  # fmt: skip
            assert text in page, text
        # per endpoint: histogram, survival curve, attention MIP
        assert len(images_of(page)) == 6
    figs = work / "reports" / "patients" / "figures"
    assert png_size((figs / f"{chosen[0]}_pfs_risk.png").read_bytes()) == (550, 330)
    assert png_size((figs / f"{chosen[0]}_os_survival.png").read_bytes()) == (550, 374)


def test_fold_survival_matches_predict_patient(built):
    from lamp.model.train import predict_patient

    _, work, res = built
    pid = next(iter(res.patients))
    feats = work / "features" / f"{pid}.npz"
    pred = predict_patient(work, feats, "pfs", "full")
    per = fold_survival(work, feats, "pfs", "full", pred["seed"])
    assert per.shape == (pred["n_models"], len(pred["survival_months"]))
    np.testing.assert_allclose(per.mean(axis=0), pred["survival"], rtol=1e-6)


def test_missing_inputs_say_not_available(built, tmp_path):
    cohort, _, _ = built
    work = tmp_path / "empty"
    res = write_reports(work, cohort)
    page = res.cohort.read_text(encoding="utf-8")
    assert_self_contained(page)
    assert res.patients == {} and "run lamp train" in res.notes[0]
    for text in (
        "Table 1 not available: lamp evaluate",
        "Kaplan–Meier curves not available",
        "t-SNE of the organ features not available: lamp features",
        "Segmentation metrics not available",
        "Lesion attention not available",
    ):
        assert text in page, text
    assert images_of(page) == []
    # a results table with markup in it is shown escaped
    md = "**T**\n\n| Methods | PFS C-index |\n|:---|:---:|\n| <b>IPI</b> | 0.6 |\n"
    (work / "results").mkdir(parents=True)
    (work / "results" / "table1.md").write_text(md)
    page = cohort_report(work, cohort).read_text(encoding="utf-8")
    assert "&lt;b&gt;IPI&lt;/b&gt;" in page and "<b>IPI" not in page


def test_user_errors_name_the_file(built, tmp_path):
    cohort, work, _ = built
    with pytest.raises(ReportError, match=r"NOPE.*clinical\.csv"):
        write_reports(work, cohort, patients=["NOPE"])
    empty = tmp_path / "w"
    with pytest.raises(ReportError, match=r"prognosis.*lamp train"):
        write_reports(empty, cohort, patients=["SYN0000"])
    with pytest.raises(ReportError, match=r"checkpoints.*lamp train"):
        patient_report(empty, cohort, "SYN0000")
    assert isinstance(ReportError("x"), LampError)


def test_cli_report_for_named_patients(built, tmp_path, capsys):
    from lamp.reports.cli import add_parsers

    cohort, work, _ = built
    parser = argparse.ArgumentParser(prog="lamp")
    add_parsers(parser.add_subparsers(dest="command"))
    out = tmp_path / "out"
    args = parser.parse_args(
        ["report", "--work", str(work), "--cohort", str(cohort), "--patient", "SYN0001",
         "--out", str(out), "--no-cohort"]
    )  # fmt: skip
    assert args.handler(args) == 0
    assert (out / "patients" / "SYN0001.html").is_file() and not (out / "cohort.html").exists()
    assert "patient report SYN0001" in capsys.readouterr().out
    args = parser.parse_args(["report", "--work", str(work), "--cohort", str(cohort),
                              "--patient", "SYN9999"])  # fmt: skip
    with pytest.raises(LampError, match="SYN9999"):
        args.handler(args)
