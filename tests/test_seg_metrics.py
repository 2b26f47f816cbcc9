"""Tests of lamp.segmentation.metrics: autoPET metrics and lesion-level detection.

Hand-computed cases first; then a property test against a direct re-statement of the
autoPET definitions (a loop over components labelled by scipy.ndimage, independent of
cc3d); then the cohort summary, the side-by-side table and the CSV.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from lamp.images import load_nifti
from lamp.segmentation.instances import InstanceError
from lamp.segmentation.metrics import (
    HEADLINE_METRICS,
    METRIC_COLUMNS,
    MetricsError,
    cohort_metrics,
    compare_networks,
    metrics_frame,
    segmentation_metrics,
    write_metrics_csv,
)
from lamp.synth.generate import SynthRequest, generate_cohort

VOX = 0.008  # ml: a 2 mm isotropic voxel


def _empty(shape=(20, 20, 20)) -> np.ndarray:
    return np.zeros(shape, dtype=bool)


# --------------------------------------------------------------------------------------
# Hand-computed cases
# --------------------------------------------------------------------------------------


def test_two_overlapping_cubes():
    ref, pred = _empty(), _empty()
    ref[2:6, 2:6, 2:6] = True  # 4^3 = 64 voxels
    pred[4:7, 3:6, 3:6] = True  # 3^3 = 27 voxels; overlap x 4..5, y 3..5, z 3..5 = 2*3*3
    m = segmentation_metrics(pred, ref, VOX)
    assert list(m) == list(METRIC_COLUMNS)
    assert m["dice"] == pytest.approx(2 * 18 / (64 + 27))
    assert m["false_positive_volume_ml"] == 0.0
    assert m["false_negative_volume_ml"] == 0.0
    assert (m["n_ref"], m["n_pred"], m["tp_pred"], m["detected_ref"]) == (1, 1, 1, 1)
    assert m["lesion_precision"] == 1.0 and m["lesion_recall"] == 1.0
    assert m["ref_volume_ml"] == pytest.approx(64 * VOX)
    assert m["pred_volume_ml"] == pytest.approx(27 * VOX)
    assert m["ref_empty"] is False and m["pred_empty"] is False


def test_false_positive_blob():
    ref, pred = _empty(), _empty()
    ref[2:6, 2:6, 2:6] = True
    pred[2:6, 2:6, 2:6] = True
    pred[12:14, 12:14, 12:15] = True  # 12 voxels far away
    m = segmentation_metrics(pred, ref, VOX)
    assert m["dice"] == pytest.approx(2 * 64 / (64 + 76))
    assert m["false_positive_volume_ml"] == pytest.approx(12 * VOX)
    assert m["false_negative_volume_ml"] == 0.0
    assert (m["n_pred"], m["tp_pred"]) == (2, 1)
    assert m["lesion_precision"] == 0.5
    assert m["lesion_recall"] == 1.0


def test_missed_lesion():
    ref, pred = _empty(), _empty()
    ref[2:6, 2:6, 2:6] = True
    ref[12:15, 12:15, 12:13] = True  # 9 voxels, missed
    pred[3:6, 2:6, 2:6] = True  # 48 voxels inside the first lesion
    m = segmentation_metrics(pred, ref, VOX)
    assert m["dice"] == pytest.approx(2 * 48 / (73 + 48))
    assert m["false_negative_volume_ml"] == pytest.approx(9 * VOX)
    assert m["false_positive_volume_ml"] == 0.0
    assert (m["n_ref"], m["detected_ref"]) == (2, 1)
    assert m["lesion_recall"] == 0.5
    assert m["lesion_precision"] == 1.0


def test_one_shared_voxel_counts_as_detected():
    ref, pred = _empty(), _empty()
    ref[2:6, 2:6, 2:6] = True
    pred[5:9, 5:9, 5:9] = True  # shares exactly voxel (5, 5, 5)
    assert np.count_nonzero(ref & pred) == 1
    m = segmentation_metrics(pred, ref, VOX)
    assert m["detected_ref"] == 1 and m["tp_pred"] == 1
    assert m["false_positive_volume_ml"] == 0.0  # the whole component is a true positive
    assert m["false_negative_volume_ml"] == 0.0
    assert m["dice"] == pytest.approx(2 / 128)


def test_adjacent_without_shared_voxel_is_not_detected():
    ref, pred = _empty(), _empty()
    ref[2:6, 2:6, 2:6] = True
    pred[6:9, 2:6, 2:6] = True  # face contact, no shared voxel
    m = segmentation_metrics(pred, ref, VOX)
    assert m["dice"] == 0.0
    assert m["detected_ref"] == 0 and m["tp_pred"] == 0
    assert m["false_positive_volume_ml"] == pytest.approx(48 * VOX)
    assert m["false_negative_volume_ml"] == pytest.approx(64 * VOX)
    assert m["lesion_precision"] == 0.0 and m["lesion_recall"] == 0.0


@pytest.mark.parametrize(
    ("extra", "fp_voxels"),
    [
        # a voxel touching the true-positive blob (2:6)^3 only along an edge
        ((6, 6, 3), {6: 1, 18: 0, 26: 0}),
        # a voxel touching it only at a corner
        ((6, 6, 6), {6: 1, 18: 1, 26: 0}),
    ],
)
@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_connectivity_decides_whether_a_diagonal_voxel_is_a_false_positive(
    extra, fp_voxels, connectivity
):
    ref, pred = _empty(), _empty()
    ref[2:6, 2:6, 2:6] = True
    pred[2:6, 2:6, 2:6] = True
    pred[extra] = True
    m = segmentation_metrics(pred, ref, VOX, connectivity=connectivity)
    assert m["false_positive_volume_ml"] == pytest.approx(fp_voxels[connectivity] * VOX)
    assert m["n_pred"] == 1 + fp_voxels[connectivity]


def test_default_connectivity_is_18():
    ref, pred = _empty(), _empty()
    ref[2:6, 2:6, 2:6] = True
    pred[2:6, 2:6, 2:6] = True
    pred[6, 6, 3] = True  # edge neighbour of (5, 5, 3): part of the blob under 18
    pred[6, 6, 6] = True  # corner neighbour of (5, 5, 5) only: a separate false positive
    m = segmentation_metrics(pred, ref, VOX)
    assert m["n_pred"] == 2
    assert m["false_positive_volume_ml"] == pytest.approx(VOX)


# --------------------------------------------------------------------------------------
# Empty masks
# --------------------------------------------------------------------------------------


def test_both_empty():
    m = segmentation_metrics(_empty(), _empty(), VOX)
    assert math.isnan(m["dice"]) and m["ref_empty"] and m["pred_empty"]
    assert m["false_positive_volume_ml"] == 0.0 and m["false_negative_volume_ml"] == 0.0
    assert math.isnan(m["lesion_precision"]) and math.isnan(m["lesion_recall"])
    assert m["n_ref"] == 0 and m["n_pred"] == 0


def test_empty_reference_with_prediction():
    pred = _empty()
    pred[1:3, 1:3, 1:3] = True
    m = segmentation_metrics(pred, _empty(), VOX)
    assert math.isnan(m["dice"]) and m["ref_empty"] and not m["pred_empty"]
    assert m["false_positive_volume_ml"] == pytest.approx(8 * VOX)
    assert m["false_negative_volume_ml"] == 0.0
    assert m["lesion_precision"] == 0.0
    assert math.isnan(m["lesion_recall"])


def test_empty_prediction_with_reference():
    ref = _empty()
    ref[1:3, 1:3, 1:3] = True
    m = segmentation_metrics(_empty(), ref, VOX)
    assert m["dice"] == 0.0 and not m["ref_empty"] and m["pred_empty"]
    assert m["false_negative_volume_ml"] == pytest.approx(8 * VOX)
    assert m["lesion_recall"] == 0.0
    assert math.isnan(m["lesion_precision"])


# --------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------


def test_shape_mismatch_is_an_error():
    with pytest.raises(MetricsError, match="same grid"):
        segmentation_metrics(_empty((4, 4, 4)), _empty((4, 4, 5)), VOX)


def test_instance_map_is_rejected_as_reference():
    ref = np.zeros((4, 4, 4), dtype=np.uint16)
    ref[0, 0, 0], ref[3, 3, 3] = 1, 2
    with pytest.raises(InstanceError, match="ref_mask.*labels > 0"):
        segmentation_metrics(_empty((4, 4, 4)), ref, VOX)


@pytest.mark.parametrize("voxel_ml", [0.0, -1.0, float("nan"), float("inf"), None])
def test_bad_voxel_volume_is_an_error(voxel_ml):
    with pytest.raises(MetricsError, match="voxel_ml"):
        segmentation_metrics(_empty((4, 4, 4)), _empty((4, 4, 4)), voxel_ml)


# --------------------------------------------------------------------------------------
# Property test against the definitions, with an independent labelling
# --------------------------------------------------------------------------------------


def _by_definition(pred: np.ndarray, ref: np.ndarray, vox: float) -> dict[str, float]:
    """The autoPET definitions, one component at a time (scipy labels, 18-connected)."""
    structure = ndimage.generate_binary_structure(3, 2)
    pred_lab, n_pred = ndimage.label(pred, structure=structure)
    ref_lab, n_ref = ndimage.label(ref, structure=structure)
    fp = tp = 0
    for c in range(1, n_pred + 1):
        comp = pred_lab == c
        if (comp & ref).any():
            tp += 1
        else:
            fp += int(comp.sum())
    fn = det = 0
    for c in range(1, n_ref + 1):
        comp = ref_lab == c
        if (comp & pred).any():
            det += 1
        else:
            fn += int(comp.sum())
    return {
        "false_positive_volume_ml": fp * vox,
        "false_negative_volume_ml": fn * vox,
        "n_pred": n_pred,
        "n_ref": n_ref,
        "tp_pred": tp,
        "detected_ref": det,
    }


@pytest.mark.parametrize("seed", range(5))
def test_random_masks_agree_with_the_definitions(seed):
    rng = np.random.default_rng(seed)
    ref = ndimage.binary_dilation(rng.random((16, 16, 16)) > 0.985, iterations=1)
    pred = ref.copy()
    pred ^= rng.random(ref.shape) > 0.93  # flip ~7 % of voxels: misses and extras
    m = segmentation_metrics(pred, ref, 0.064)
    expected = _by_definition(pred, ref, 0.064)
    for key, value in expected.items():
        assert m[key] == pytest.approx(value), key
    assert m["dice"] == pytest.approx(2 * (pred & ref).sum() / (pred.sum() + ref.sum()))


# --------------------------------------------------------------------------------------
# Cohort summary
# --------------------------------------------------------------------------------------


def _row(dice, fpv, fnv, n_ref, n_pred, tp, det) -> dict:
    return {
        "dice": dice,
        "ref_empty": n_ref == 0,
        "pred_empty": n_pred == 0,
        "false_positive_volume_ml": fpv,
        "false_negative_volume_ml": fnv,
        "n_ref": n_ref,
        "n_pred": n_pred,
        "tp_pred": tp,
        "detected_ref": det,
        "lesion_precision": tp / n_pred if n_pred else math.nan,
        "lesion_recall": det / n_ref if n_ref else math.nan,
        "ref_volume_ml": 1.0 if n_ref else 0.0,
        "pred_volume_ml": 1.0 if n_pred else 0.0,
    }


@pytest.fixture
def table() -> pd.DataFrame:
    return metrics_frame(
        {
            "P1": _row(0.8, 1.0, 0.5, n_ref=2, n_pred=3, tp=2, det=2),
            "P2": _row(0.6, 0.0, 2.0, n_ref=4, n_pred=1, tp=1, det=1),
            "P3": _row(math.nan, 3.0, 0.0, n_ref=0, n_pred=2, tp=0, det=0),
        }
    )


def test_cohort_metrics_by_hand(table):
    c = cohort_metrics(table)
    assert (c["n_patients"], c["n_ref_positive"], c["n_ref_negative"]) == (3, 2, 1)
    assert c["dice_mean"] == pytest.approx(0.7)  # the negative patient is left out
    assert c["dice_median"] == pytest.approx(0.7)
    assert c["dice_std"] == pytest.approx(np.std([0.8, 0.6], ddof=1))
    assert c["fpv_mean_ml"] == pytest.approx(4.0 / 3.0)  # over all patients
    assert c["fnv_mean_ml"] == pytest.approx(1.25)  # over patients with a lesion
    assert c["lesion_precision_pooled"] == pytest.approx(3 / 6)
    assert c["lesion_recall_pooled"] == pytest.approx(3 / 6)
    assert c["lesion_precision_mean"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert c["lesion_recall_mean"] == pytest.approx((1 + 0.25) / 2)
    assert (c["n_ref_lesions"], c["n_pred_lesions"]) == (6, 6)
    assert set(HEADLINE_METRICS) <= set(c)


def test_cohort_without_reference_lesions_has_nan_dice_not_zero():
    t = metrics_frame({"N1": _row(math.nan, 0.5, 0.0, 0, 1, 0, 0)})
    c = cohort_metrics(t)
    assert math.isnan(c["dice_mean"]) and math.isnan(c["fnv_mean_ml"])
    assert math.isnan(c["lesion_recall_pooled"])
    assert c["fpv_mean_ml"] == 0.5 and c["lesion_precision_pooled"] == 0.0


def test_silent_zero_dice_for_empty_reference_is_rejected(table):
    table.loc[2, "dice"] = 0.0
    with pytest.raises(MetricsError, match=r"'dice'.*NaN exactly.*P3"):
        cohort_metrics(table)


def test_nan_dice_for_a_patient_with_lesions_is_rejected(table):
    table.loc[0, "dice"] = math.nan
    with pytest.raises(MetricsError, match=r"'dice'.*P1"):
        cohort_metrics(table)


def test_ref_empty_must_agree_with_n_ref(table):
    table.loc[2, "n_ref"] = 1
    with pytest.raises(MetricsError, match="n_ref"):
        cohort_metrics(table)


def test_missing_columns_and_empty_table_are_errors(table):
    with pytest.raises(MetricsError, match=r"missing column\(s\) \['tp_pred'\]"):
        cohort_metrics(table.drop(columns="tp_pred"))
    with pytest.raises(MetricsError, match="no rows"):
        cohort_metrics(table.iloc[:0])


def test_negative_volume_is_an_error(table):
    table.loc[1, "false_positive_volume_ml"] = -1.0
    with pytest.raises(MetricsError, match=r"false_positive_volume_ml.*P2"):
        cohort_metrics(table)


def test_metrics_frame_checks_keys():
    with pytest.raises(MetricsError, match="P9"):
        metrics_frame({"P9": {"dice": 1.0}})


# --------------------------------------------------------------------------------------
# CSV and side-by-side comparison
# --------------------------------------------------------------------------------------


def test_csv_round_trip_gives_the_same_cohort_metrics(table, tmp_path):
    path = write_metrics_csv(tmp_path / "seg" / "metrics.csv", table)
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["metrics.csv"]  # no temp file left
    back = pd.read_csv(path)
    assert list(back.columns) == ["patient_id", *METRIC_COLUMNS]
    a, b = cohort_metrics(table), cohort_metrics(back)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], nan_ok=True), k


def test_compare_networks_side_by_side(table, tmp_path):
    other = table.copy()
    other["dice"] = [0.5, 0.4, math.nan]
    other["false_positive_volume_ml"] = [2.0, 1.0, 3.0]
    other = other.iloc[::-1].reset_index(drop=True)  # row order does not matter
    out = compare_networks(table, other, names=("lamp", "plain"))
    assert list(out.index[: len(HEADLINE_METRICS)]) == list(HEADLINE_METRICS)
    assert list(out.columns) == ["lamp", "plain", "lamp - plain", "p_wilcoxon", "higher_is_better"]
    assert out.loc["dice_mean", "lamp"] == pytest.approx(0.7)
    assert out.loc["dice_mean", "plain"] == pytest.approx(0.45)
    assert out.loc["dice_mean", "lamp - plain"] == pytest.approx(0.25)
    assert out.loc["fpv_mean_ml", "lamp - plain"] == pytest.approx(4 / 3 - 2.0)
    # Dice pairs: P1 (0.8 vs 0.5), P2 (0.6 vs 0.4): exact two-sided p with n = 2 is 0.5
    assert out.loc["dice_mean", "p_wilcoxon"] == pytest.approx(0.5)
    # identical per-patient values: no test; pooled numbers: no per-patient pairs
    assert math.isnan(out.loc["fnv_mean_ml", "p_wilcoxon"])
    assert math.isnan(out.loc["lesion_recall_pooled", "p_wilcoxon"])
    assert out.loc["dice_mean", "higher_is_better"] is True
    assert out.loc["fpv_mean_ml", "higher_is_better"] is False
    assert out.loc["n_patients", "higher_is_better"] is None

    path = write_metrics_csv(tmp_path / "compare.csv", out)
    back = pd.read_csv(path, index_col="metric")
    assert back.loc["dice_mean", "lamp"] == pytest.approx(0.7)


def test_compare_networks_needs_the_same_patients(table):
    with pytest.raises(MetricsError, match=r"only in 'a': \['P3'\]"):
        compare_networks(table, table.iloc[:2])
    with pytest.raises(MetricsError, match="patient_id"):
        compare_networks(table.drop(columns="patient_id"), table)
    doubled = pd.concat([table, table.iloc[:1]], ignore_index=True)
    with pytest.raises(MetricsError, match="more than once.*P1"):
        compare_networks(doubled, table)


def test_compare_networks_needs_the_same_reference(table):
    other = table.copy()
    other.loc[2, ["ref_empty", "n_ref", "detected_ref"]] = [False, 1, 0]
    other.loc[2, ["dice", "lesion_recall"]] = [0.0, 0.0]
    with pytest.raises(MetricsError, match=r"disagree.*P3"):
        compare_networks(table, other)


@pytest.mark.parametrize("names", [("x", "x"), ("x",), "ab", ("x", "")])
def test_compare_networks_checks_names(table, names):
    with pytest.raises(MetricsError, match="names"):
        compare_networks(table, table, names=names)


# --------------------------------------------------------------------------------------
# On a synthetic cohort
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "c"
    generate_cohort(SynthRequest(out=out, n_patients=5, size="tiny", export_nnunet=False))
    return out


def test_reference_against_itself_and_against_nothing(cohort):
    perfect, empty = {}, {}
    for case in sorted((cohort / "cases").iterdir()):
        lesions, affine = load_nifti(case / "lesions.nii.gz")
        vox = abs(np.linalg.det(affine[:3, :3])) / 1000.0
        ref = lesions > 0
        perfect[case.name] = segmentation_metrics(ref, ref, vox)
        empty[case.name] = segmentation_metrics(np.zeros_like(ref), ref, vox)
    a, b = metrics_frame(perfect), metrics_frame(empty)
    ca, cb = cohort_metrics(a), cohort_metrics(b)
    assert ca["dice_mean"] == 1.0 and ca["fpv_mean_ml"] == 0.0 and ca["fnv_mean_ml"] == 0.0
    assert ca["lesion_precision_pooled"] == 1.0 and ca["lesion_recall_pooled"] == 1.0
    assert cb["dice_mean"] == 0.0 and cb["lesion_recall_pooled"] == 0.0
    assert cb["fnv_mean_ml"] == pytest.approx(b["ref_volume_ml"].mean())
    assert math.isnan(cb["lesion_precision_pooled"])
    table = compare_networks(a, b, names=("perfect", "empty"))
    assert table.loc["dice_mean", "perfect - empty"] == 1.0


def test_patient_metrics_reads_a_prediction_file_and_checks_its_grid(cohort, tmp_path):
    from lamp.images import save_nifti
    from lamp.segmentation.evaluate import patient_metrics
    from lamp.segmentation.nnunet import SegmentError

    pid = sorted(p.name for p in (cohort / "cases").iterdir())[0]
    lesions, affine = load_nifti(cohort / "cases" / pid / "lesions.nii.gz")
    # the reference itself as prediction: a perfect score
    good = tmp_path / f"{pid}.nii.gz"
    save_nifti(good, (lesions > 0).astype(np.uint8), affine, np.uint8)
    m = patient_metrics(cohort, good, pid)
    assert m["dice"] == 1.0 and m["lesion_recall"] == 1.0
    assert m["false_positive_volume_ml"] == 0.0 and m["false_negative_volume_ml"] == 0.0
    # shifted by one voxel: another grid, named in the error
    shifted = affine.copy()
    shifted[:3, 3] += affine[:3, 0]
    bad = tmp_path / "shifted" / f"{pid}.nii.gz"
    bad.parent.mkdir()
    save_nifti(bad, (lesions > 0).astype(np.uint8), shifted, np.uint8)
    with pytest.raises(SegmentError, match=f"not on the grid of .*lesions.nii.gz.*{pid}"):
        patient_metrics(cohort, bad, pid)
    with pytest.raises(SegmentError, match=f"no prediction for patient {pid}"):
        patient_metrics(cohort, tmp_path / "none.nii.gz", pid)
