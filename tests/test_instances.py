"""Tests of lamp.segmentation.instances: lesion instances as connected components."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from lamp.images import load_nifti
from lamp.segmentation.instances import (
    InstanceError,
    lesion_instances,
    relabel_sequential,
    voxel_volume_ml,
)
from lamp.synth.generate import SynthRequest, generate_cohort

# scipy.ndimage structures: rank 3 with connectivity 1/2/3 = 6/18/26 neighbours, an
# implementation independent of cc3d to check the partition against.
_STRUCTURE = {c: ndimage.generate_binary_structure(3, r) for c, r in ((6, 1), (18, 2), (26, 3))}


def _mask(shape=(6, 6, 6), voxels=()) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    for v in voxels:
        m[v] = True
    return m


# --------------------------------------------------------------------------------------
# Numbering
# --------------------------------------------------------------------------------------


def test_empty_mask_gives_no_instances():
    out = lesion_instances(np.zeros((3, 4, 5), dtype=bool))
    assert out.dtype == np.uint16
    assert out.shape == (3, 4, 5)
    assert not out.any()


def test_instances_are_numbered_by_descending_volume():
    m = np.zeros((10, 10, 10), dtype=bool)
    m[0, 0, 0] = True  # 1 voxel, first in scan order
    m[2:4, 0:2, 0:2] = True  # 8 voxels
    m[6:9, 6:9, 6:9] = True  # 27 voxels, last in scan order
    out = lesion_instances(m)
    assert out[7, 7, 7] == 1
    assert out[2, 0, 0] == 2
    assert out[0, 0, 0] == 3
    assert np.array_equal(np.bincount(out.ravel())[1:], [27, 8, 1])


def test_equal_volumes_are_ordered_by_first_voxel_in_c_order():
    m = np.zeros((6, 6, 6), dtype=bool)
    m[4, 0, 0:2] = True  # first voxel (4, 0, 0): flat index 144
    m[0, 4, 4:6] = True  # first voxel (0, 4, 4): flat index 28 -> comes first
    m[0, 0, 2:4] = True  # first voxel (0, 0, 2): flat index 2 -> comes first of all
    out = lesion_instances(m)
    assert out[0, 0, 2] == 1
    assert out[0, 4, 4] == 2
    assert out[4, 0, 0] == 3


def test_numbering_does_not_depend_on_memory_layout():
    rng = np.random.default_rng(0)
    m = rng.random((12, 12, 12)) > 0.8
    a = lesion_instances(m)
    b = lesion_instances(m.copy(order="F"))
    assert np.array_equal(a, b)


@pytest.mark.parametrize(
    ("second", "expected"),
    [
        ((2, 3, 3), {6: 1, 18: 1, 26: 1}),  # shares a face
        ((2, 2, 3), {6: 2, 18: 1, 26: 1}),  # shares an edge only
        ((2, 2, 2), {6: 2, 18: 2, 26: 1}),  # shares a corner only
    ],
)
@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_connectivity_decides_which_contacts_join(second, expected, connectivity):
    m = _mask(voxels=[(3, 3, 3), second])
    assert lesion_instances(m, connectivity=connectivity).max() == expected[connectivity]


def test_default_connectivity_is_autopet_18():
    edge_pair = _mask(voxels=[(3, 3, 3), (2, 2, 3)])
    corner_pair = _mask(voxels=[(3, 3, 3), (2, 2, 2)])
    assert lesion_instances(edge_pair).max() == 1
    assert lesion_instances(corner_pair).max() == 2


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_partition_matches_scipy_label(connectivity):
    rng = np.random.default_rng(connectivity)
    m = rng.random((15, 14, 13)) > 0.75
    ours = lesion_instances(m, connectivity=connectivity)
    ref, n = ndimage.label(m, structure=_STRUCTURE[connectivity])
    assert ours.max() == n
    # same partition: every instance is exactly one scipy component and vice versa
    pairs = np.unique(np.stack([ours[m], ref[m]]), axis=1)
    assert pairs.shape[1] == n
    assert np.unique(pairs[0]).size == n and np.unique(pairs[1]).size == n
    # and the order is by descending size
    sizes = np.bincount(ours.ravel())[1:]
    assert np.all(np.diff(sizes) <= 0)


# --------------------------------------------------------------------------------------
# Minimum size and voxel size
# --------------------------------------------------------------------------------------


def test_min_volume_removes_small_components_and_renumbers():
    m = np.zeros((10, 10, 10), dtype=bool)
    m[0, 0, 0] = True  # 1 voxel = 0.008 ml at 2 mm
    m[3:5, 3:5, 3:5] = True  # 8 voxels = 0.064 ml
    m[7:10, 7:10, 7:10] = True  # 27 voxels = 0.216 ml
    out = lesion_instances(m, spacing=(2.0, 2.0, 2.0), min_volume_ml=0.05)
    assert out.max() == 2
    assert out[0, 0, 0] == 0
    assert out[8, 8, 8] == 1 and out[4, 4, 4] == 2
    # a component exactly at the threshold stays
    same = lesion_instances(m, voxel_ml=0.008, min_volume_ml=0.064)
    assert same.max() == 2


def test_default_keeps_single_voxels():
    m = _mask(voxels=[(0, 0, 0), (5, 5, 5)])
    assert lesion_instances(m).max() == 2


def test_voxel_volume_from_spacing():
    assert voxel_volume_ml(spacing=(2.0, 4.0, 5.0)) == pytest.approx(0.04)
    assert voxel_volume_ml(0.3) == 0.3
    assert voxel_volume_ml() is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_volume_ml": 0.1}, "needs the voxel size"),
        ({"min_volume_ml": -1.0, "voxel_ml": 0.1}, "min_volume_ml"),
        ({"min_volume_ml": float("nan"), "voxel_ml": 0.1}, "min_volume_ml"),
        ({"voxel_ml": 0.1, "spacing": (1, 1, 1)}, "not both"),
        ({"voxel_ml": 0.0}, "voxel_ml"),
        ({"spacing": (1.0, -1.0, 1.0)}, "spacing"),
        ({"spacing": (1.0, 1.0)}, "spacing"),
        ({"connectivity": 8}, "connectivity"),
        ({"connectivity": True}, "connectivity"),
    ],
)
def test_bad_settings_are_errors(kwargs, match):
    with pytest.raises(InstanceError, match=match):
        lesion_instances(_mask(voxels=[(1, 1, 1)]), **kwargs)


# --------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------


def test_numeric_zero_one_masks_are_accepted():
    m = _mask(voxels=[(1, 1, 1), (4, 4, 4)])
    expected = lesion_instances(m)
    assert np.array_equal(lesion_instances(m.astype(np.uint8)), expected)
    assert np.array_equal(lesion_instances(m.astype(np.float32)), expected)


def test_non_binary_mask_is_an_error_that_suggests_labels_gt_0():
    m = np.zeros((4, 4, 4), dtype=np.uint16)
    m[0, 0, 0], m[3, 3, 3] = 1, 2
    with pytest.raises(InstanceError, match=r"binary.*\[2\].*labels > 0"):
        lesion_instances(m)


def test_nan_in_mask_is_an_error():
    m = np.zeros((4, 4, 4), dtype=np.float32)
    m[1, 1, 1] = np.nan
    with pytest.raises(InstanceError, match="binary"):
        lesion_instances(m)


@pytest.mark.parametrize("shape", [(4, 4), (2, 2, 2, 2)])
def test_non_3d_mask_is_an_error(shape):
    with pytest.raises(InstanceError, match="3D"):
        lesion_instances(np.zeros(shape, dtype=bool))


def test_string_mask_is_an_error():
    with pytest.raises(InstanceError, match="dtype"):
        lesion_instances(np.full((2, 2, 2), "a"))


# --------------------------------------------------------------------------------------
# relabel_sequential
# --------------------------------------------------------------------------------------


def test_relabel_sequential_closes_gaps_and_keeps_order():
    inst = np.zeros((3, 3, 3), dtype=np.int32)
    inst[0, 0, 0], inst[1, 1, 1], inst[2, 2, 2] = 7, 3, 12
    out = relabel_sequential(inst)
    assert out.dtype == np.uint16
    assert (out[1, 1, 1], out[0, 0, 0], out[2, 2, 2]) == (1, 2, 3)
    assert np.count_nonzero(out) == 3


def test_relabel_sequential_of_full_volume_without_background():
    inst = np.full((2, 2, 2), 5, dtype=np.uint8)
    inst[0, 0, 0] = 9
    out = relabel_sequential(inst)
    assert out[0, 0, 0] == 2 and out[1, 1, 1] == 1


def test_relabel_sequential_after_thinning_keeps_largest_first():
    m = np.zeros((10, 10, 10), dtype=bool)
    m[0:3, 0:3, 0:3] = True
    m[5:7, 5:7, 5:7] = True
    m[9, 9, 9] = True
    inst = lesion_instances(m)
    inst[inst == 2] = 0
    out = relabel_sequential(inst)
    assert out[1, 1, 1] == 1 and out[9, 9, 9] == 2


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (np.array([-1.0, 0.0]), ">= 0"),
        (np.array([0.5, 1.0]), "whole-number"),
    ],
)
def test_relabel_sequential_rejects_bad_ids(values, match):
    inst = np.zeros((2, 2, 2), dtype=values.dtype)
    inst[0, 0, :] = values
    with pytest.raises(InstanceError, match=match):
        relabel_sequential(inst)


def test_relabel_sequential_rejects_non_3d():
    with pytest.raises(InstanceError, match="3D"):
        relabel_sequential(np.zeros((3, 3), dtype=np.uint8))


# --------------------------------------------------------------------------------------
# On a synthetic case
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "c"
    generate_cohort(SynthRequest(out=out, n_patients=5, size="tiny", export_nnunet=False))
    return out


def test_instances_of_a_synthetic_reference_mask(cohort):
    for case in sorted((cohort / "cases").iterdir()):
        stored, affine = load_nifti(case / "lesions.nii.gz")
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        inst = lesion_instances(stored > 0, spacing=spacing)
        # components of the union: touching stored lesions may merge, never split
        n_stored = np.unique(stored[stored > 0]).size
        assert 1 <= inst.max() <= n_stored
        assert np.array_equal(inst > 0, stored > 0)
        sizes = np.bincount(inst.ravel())[1:]
        assert np.all(np.diff(sizes) <= 0)
