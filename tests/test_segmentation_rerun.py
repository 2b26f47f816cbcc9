"""Reruns of `lamp segment predict`'s instance step follow a changed prediction."""

from __future__ import annotations

import os

import numpy as np

from lamp.images import load_nifti, save_nifti
from lamp.segmentation.evaluate import evaluate_network
from lamp.synth.generate import SynthRequest, generate_cohort


def test_instances_follow_a_newer_prediction_and_are_rewritten_only_if_changed(tmp_path):
    cohort, work = tmp_path / "cohort", tmp_path / "work"
    generate_cohort(SynthRequest(out=cohort, n_patients=5, size="tiny", export_nnunet=False))
    pred_dir = work / "segmentation" / "lamp" / "pred"
    inst_dir = work / "segmentation" / "lamp" / "instances"
    pids = sorted(p.name for p in (cohort / "cases").iterdir())
    for pid in pids:  # the reference masks stand in for the network's predictions
        ref, aff = load_nifti(cohort / "cases" / pid / "lesions.nii.gz")
        save_nifti(pred_dir / f"{pid}.nii.gz", (ref > 0).astype(np.uint8), aff, np.uint8)
    evaluate_network(cohort, work, "lamp")
    first = {pid: (inst_dir / f"{pid}.nii.gz").read_bytes() for pid in pids}
    assert all(load_nifti(inst_dir / f"{p}.nii.gz")[0].max() >= 1 for p in pids)

    # predictions newer than their instances: one the same mask written again, one
    # with no lesion left
    a, b = pids[0], pids[1]
    _, aff = load_nifti(pred_dir / f"{b}.nii.gz")
    empty = np.zeros(load_nifti(pred_dir / f"{b}.nii.gz")[0].shape, np.uint8)
    save_nifti(pred_dir / f"{b}.nii.gz", empty, aff, np.uint8)
    for pid in (a, b):
        st = (inst_dir / f"{pid}.nii.gz").stat()
        earlier = st.st_mtime_ns - 10**10
        os.utime(inst_dir / f"{pid}.nii.gz", ns=(earlier, earlier))
    table, _ = evaluate_network(cohort, work, "lamp")

    assert (inst_dir / f"{a}.nii.gz").read_bytes() == first[a]
    # marked up to date, so the next run does not look at it again
    assert (inst_dir / f"{a}.nii.gz").stat().st_mtime_ns >= (
        pred_dir / f"{a}.nii.gz"
    ).stat().st_mtime_ns
    assert load_nifti(inst_dir / f"{b}.nii.gz")[0].max() == 0
    assert (inst_dir / f"{pids[2]}.nii.gz").read_bytes() == first[pids[2]]
    assert table.loc[table["patient_id"] == b, "dice"].iloc[0] < 1.0
