"""Out-of-fold predictions -> lesion instances and autoPET metrics, for both networks.

``WORK/segmentation/<net>/pred/<id>.nii.gz``       binary prediction (nnU-Net's export)
``WORK/segmentation/<net>/instances/<id>.nii.gz``  lesion instances (18-connected
                                                   components, every size kept; made
                                                   again when the prediction is newer,
                                                   rewritten only if they changed)
``WORK/segmentation/<net>/metrics.csv``            per-patient autoPET metrics
``WORK/segmentation/metrics.csv``                  both networks side by side (headline
                                                   metrics first), when both exist
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from lamp.cohort import case_path, read_clinical
from lamp.images import load_nifti, same_grid, save_nifti
from lamp.segmentation.instances import AUTOPET_CONNECTIVITY, lesion_instances
from lamp.segmentation.metrics import (
    cohort_metrics,
    compare_networks,
    metrics_frame,
    segmentation_metrics,
    write_metrics_csv,
)
from lamp.segmentation.nnunet import SegmentError

__all__ = [
    "NETWORKS",
    "evaluate_network",
    "load_prediction",
    "patient_metrics",
    "write_comparison",
]

NETWORKS = {"lamp": "LAMP multimodal", "plain": "plain nnU-Net"}


def load_prediction(
    cohort: Path, pred_path: Path, pid: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """One patient's predicted and reference lesion masks, checked to share a grid.

    Returns (predicted mask, reference mask, affine, voxel volume in ml).
    """
    pred_path = Path(pred_path)
    if not pred_path.is_file():
        raise SegmentError(
            f"{pred_path}: no prediction for patient {pid}; run lamp segment predict"
        )
    pred, affine = load_nifti(pred_path)
    ref_path = case_path(cohort, pid, "lesions")
    ref, ref_affine = load_nifti(ref_path)
    if not same_grid(pred.shape, affine, ref.shape, ref_affine):
        raise SegmentError(f"{pred_path}: not on the grid of {ref_path} (patient {pid})")
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    return pred > 0, ref > 0, affine, voxel_ml


def patient_metrics(cohort: Path, pred_path: Path, pid: str) -> dict:
    """The autoPET metrics of one patient's prediction file (see `segmentation_metrics`)."""
    mask, ref, _, voxel_ml = load_prediction(cohort, pred_path, pid)
    return segmentation_metrics(mask, ref, voxel_ml, connectivity=AUTOPET_CONNECTIVITY)


def evaluate_network(cohort: Path, work: Path, net: str) -> tuple[pd.DataFrame, dict]:
    """Instances and metrics of one network's out-of-fold predictions.

    Returns the per-patient table (also written to ``<net>/metrics.csv``) and the cohort
    summary of :func:`lamp.segmentation.metrics.cohort_metrics`.
    """
    base = Path(work) / "segmentation" / net
    pred_dir, inst_dir = base / "pred", base / "instances"
    clinical = read_clinical(Path(cohort) / "clinical.csv")
    per_patient = {}
    for pid in clinical["patient_id"]:
        pred_path = pred_dir / f"{pid}.nii.gz"
        mask, ref, affine, voxel_ml = load_prediction(cohort, pred_path, pid)
        inst_path = inst_dir / f"{pid}.nii.gz"
        if not inst_path.is_file():
            save_nifti(inst_path, lesion_instances(mask, voxel_ml), affine, np.uint16)
        elif inst_path.stat().st_mtime_ns < pred_path.stat().st_mtime_ns:
            # predicted again since: the instances follow, but the file is rewritten only
            # if they changed (lamp features recomputes what was pooled over a new file)
            inst = lesion_instances(mask, voxel_ml)
            if np.array_equal(load_nifti(inst_path)[0], inst):
                os.utime(inst_path)
            else:
                save_nifti(inst_path, inst, affine, np.uint16)
        per_patient[pid] = segmentation_metrics(
            mask, ref, voxel_ml, connectivity=AUTOPET_CONNECTIVITY
        )
    table = metrics_frame(per_patient)
    write_metrics_csv(base / "metrics.csv", table)
    return table, cohort_metrics(table)


def write_comparison(work: Path, tables: dict[str, pd.DataFrame]) -> Path | None:
    """``WORK/segmentation/metrics.csv``: LAMP vs plain nnU-Net, when both are there."""
    if set(tables) != set(NETWORKS):
        return None
    cmp = compare_networks(tables["lamp"], tables["plain"], ("lamp", "plain_nnunet"))
    return write_metrics_csv(Path(work) / "segmentation" / "metrics.csv", cmp)
