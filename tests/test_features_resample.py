"""lamp.features: the pass and the pooling at the network's planned spacing (issue #3).

The fake network is pointwise and linear in its two inputs (no convolution, no window
dependence), so its stitched feature map is exactly ``W x(v) + b`` and a region's mean is
``W mean_R(x) + b``. With PET and CT linear in world coordinates, every difference between
pooling on the PET grid and pooling on the resampled grid comes from where the regions
lie: third-order splines reproduce a linear field exactly away from the image edges, so
only the nearest-neighbour masks move. A mask resampled by nearest neighbour keeps voxels
whose centres lie within half a source voxel of the region and gains none farther, so its
centroid moves by at most half the coarser of the two voxel sizes along each axis; the
tolerance of each feature is the field's change over that shift (`shift_bound`).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from lamp.anatomy import TOTAL_IDS, group_id
from lamp.features import (
    N_FEATURES,
    CaseImages,
    ChannelNormalization,
    FeatureError,
    extract_case_features,
    load_case_features,
    pool_regions_streaming,
)
from lamp.images import (
    grid_with_spacing,
    overlap_fraction,
    resample_to_grid,
    voxel_centers_world,
    voxel_spacing,
)

# PET grid: anisotropic, flipped first axis; the "plan": coarser on axes 0 and 2, finer on 1
PET_SPACING = (2.0, 2.5, 3.0)
PLAN_SPACING = (3.0, 2.0, 4.0)
SHAPE = (30, 24, 20)
NET_SHAPE = (20, 30, 15)  # round(30 * 2 / 3), round(24 * 2.5 / 2), round(20 * 3 / 4)
PATCH = (16, 16, 16)
# world-mm gradients of the two images (linear fields), and their values at the origin
PET_GRAD = np.array([0.02, 0.012, -0.015])  # SUV / mm
CT_GRAD = np.array([1.5, -2.0, 0.8])  # HU / mm
NORM = ChannelNormalization(ct_mean=0.0, ct_std=100.0, pet_mean=2.0, pet_std=1.0)
# tiny lesions: axis 0 goes 2 -> 3 mm, whose nearest-neighbour sampling reads source
# indices 1.5 i' + 0.25 -> 0, 2, 3, 5, 6, ...: index 13 is never read
TINY = {5: (13, 6, 10), 6: (13, 12, 5), 7: (13, 12, 6)}  # 6 and 7: same nearest voxel


def pet_affine():
    a = np.diag([-PET_SPACING[0], PET_SPACING[1], PET_SPACING[2], 1.0])
    a[:3, 3] = (40.0, -30.0, -100.0)
    return a


class LinearNet:
    """Pointwise features ``W x + b`` (128 channels) and probability sigmoid(PET)."""

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(N_FEATURES, 2, generator=g)
        self.b = torch.randn(N_FEATURES, generator=g)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.einsum("fc,bcijk->bfijk", self.w, x) + self.b[None, :, None, None, None]
        return torch.sigmoid(x[:, 1:2]), f


def assert_within(a, b, bound):
    diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    assert (diff <= bound).all(), f"largest excess {float((diff - bound).max())}"


def world_centroid(mask, aff):
    return np.argwhere(mask).mean(axis=0) @ aff[:3, :3].T + aff[:3, 3]


def shift_bound(net: LinearNet) -> np.ndarray:
    """Largest change of each feature over a centroid shift of half the coarser voxel."""
    half = np.maximum(PET_SPACING, PLAN_SPACING) / 2.0
    # normalised channels: CT / 100, PET - 2; their change over the shift, per axis summed
    dx = np.array([np.abs(CT_GRAD / NORM.ct_std) @ half, np.abs(PET_GRAD) @ half])
    return np.abs(net.w.numpy()) @ dx


@pytest.fixture(scope="module")
def case():
    aff = pet_affine()
    world = voxel_centers_world(SHAPE, aff)
    pet = (3.0 + world @ PET_GRAD).astype(np.float32)
    ct = (20.0 + world @ CT_GRAD).astype(np.float32)
    lesions = np.zeros(SHAPE, dtype=np.uint16)
    ii, jj, kk = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    d = np.sqrt(((ii - 10) * 2.0) ** 2 + ((jj - 10) * 2.5) ** 2 + ((kk - 9) * 3.0) ** 2)
    lesions[d <= 9.0] = 1  # a ball of radius 9 mm
    lesions[18:24, 14:20, 12:16] = 2  # a box inside the liver
    lesions[22:25, 3:5, 3:5] = 4  # small, but survives (id 3 absent)
    for lid, ijk in TINY.items():
        lesions[ijk] = lid
    organs = np.zeros(SHAPE, dtype=np.uint8)
    organs[15:27, 10:22, 10:18] = TOTAL_IDS["liver"]
    organs[3:9, 15:21, 4:9] = TOTAL_IDS["spleen"]
    organs[13, 2, 2] = TOTAL_IDS["kidney_left"]  # one voxel: lost by resampling
    return CaseImages("P1", pet, aff, ct, aff.copy()), lesions, organs


@pytest.fixture(scope="module")
def net():
    return LinearNet()


@pytest.fixture(scope="module")
def runs(case, net, tmp_path_factory):
    images, lesions, organs = case
    out = tmp_path_factory.mktemp("resample")
    kw = {"patch_size": PATCH, "normalization": NORM}
    plain = extract_case_features(net, images, lesions, organs, **kw)
    res = extract_case_features(
        net, images, lesions, organs, target_spacing=PLAN_SPACING, out_path=out / "r.npz", **kw
    )
    return plain, res


# --------------------------------------------------------------------------------------
# the grid
# --------------------------------------------------------------------------------------


def test_grid_with_spacing_covers_the_same_field_of_view():
    aff = pet_affine()
    shape, new = grid_with_spacing(SHAPE, aff, PLAN_SPACING)
    assert shape == NET_SHAPE
    np.testing.assert_allclose(voxel_spacing(new), [3.0, 2.0, 4.0])
    assert np.sign(new[0, 0]) == -1  # the flip is kept
    assert overlap_fraction(shape, new, SHAPE, aff) == pytest.approx(1.0)
    assert overlap_fraction(SHAPE, aff, shape, new) == pytest.approx(1.0)
    # nnU-Net's rule: 25 voxels of 2 mm -> round(50 / 3) = 17 voxels of 50 / 17 mm
    shape, new = grid_with_spacing((25, 4, 4), np.eye(4) * [2, 2, 2, 1], (3, 2, 2))
    assert shape == (17, 4, 4) and new[0, 0] == pytest.approx(50 / 17)
    assert new[0, 3] == pytest.approx(-1.0 + 25 / 17)  # first edge stays at -1 mm
    with pytest.raises(Exception, match="expected three positive spacings"):
        grid_with_spacing(SHAPE, aff, (1.0, 0.0, 1.0))


# --------------------------------------------------------------------------------------
# one case at another spacing
# --------------------------------------------------------------------------------------


def test_resampled_features_are_aligned_and_close(case, net, runs):
    _, lesions, organs = case
    plain, res = runs
    ids = np.unique(lesions[lesions > 0])
    for f in (plain, res):
        np.testing.assert_array_equal(f.lesion_ids, ids)
        assert f.lesion_features.shape == (len(ids), N_FEATURES)
        assert f.organ_features.shape == (71, N_FEATURES)
        assert np.isfinite(f.lesion_features).all() and np.isfinite(f.organ_features).all()
        assert f.table["lesion_id"].tolist() == ids.tolist()
    assert plain.meta["resampled_to_target_spacing"] is False
    assert res.meta["resampled_to_target_spacing"] is True
    np.testing.assert_array_equal(res.organ_present, plain.organ_present)
    bound = shift_bound(net) + 1e-4
    assert_within(res.lesion_features, plain.lesion_features, bound)
    present = plain.organ_present
    assert_within(res.organ_features[present], plain.organ_features[present], bound)
    # the bound is not vacuous: most features move by far less than the field's range
    spread = np.ptp(plain.lesion_features, axis=0)
    assert (bound < spread).mean() > 0.9
    # pooled on the network grid: voxel counts of the plan's grid
    _, net_aff = grid_with_spacing(SHAPE, pet_affine(), PLAN_SPACING)
    on_net = resample_to_grid(lesions, pet_affine(), NET_SHAPE, net_aff, order=0)
    assert res.lesion_voxels[0] == (on_net == 1).sum() != plain.lesion_voxels[0]


def test_ball_features_match_the_field_at_its_network_grid_centroid(case, net, runs):
    """Splines reproduce the linear field: the pooled mean is the field at the resampled
    mask's own centroid, to float32 precision."""
    _, lesions, _ = case
    _, res = runs
    shape, aff = grid_with_spacing(SHAPE, pet_affine(), PLAN_SPACING)
    on_net = resample_to_grid(lesions, pet_affine(), shape, aff, order=0)
    c = world_centroid(on_net == 1, aff)
    x = np.array([(20.0 + c @ CT_GRAD) / NORM.ct_std, 3.0 + c @ PET_GRAD - 2.0])
    expected = net.w.numpy() @ x + net.b.numpy()
    np.testing.assert_allclose(res.lesion_features[0], expected, atol=1e-4)


def test_lesions_lost_by_resampling_are_pooled_at_their_nearest_voxels(case, net, runs):
    _, lesions, _ = case
    plain, res = runs
    shape, aff = grid_with_spacing(SHAPE, pet_affine(), PLAN_SPACING)
    on_net = resample_to_grid(lesions, pet_affine(), shape, aff, order=0)
    lost = sorted(TINY)
    assert not np.isin(on_net, lost).any()  # the premise: all three vanish
    assert res.meta["fallback_lesion_ids"] == lost
    assert res.meta["fallback_organ_groups"] == [group_id("kidney_left")]
    rows = np.searchsorted(res.lesion_ids, lost)
    np.testing.assert_array_equal(res.lesion_voxels[rows], [1, 1, 1])
    # kept, finite, and close to the field at the lesion itself
    bound = shift_bound(net) + 1e-4
    assert_within(res.lesion_features[rows], plain.lesion_features[rows], bound)
    # lesions 6 and 7 share their nearest network voxel (two fallback layers): same features
    np.testing.assert_allclose(res.lesion_features[rows[1]], res.lesion_features[rows[2]])
    # and that voxel is the one holding the centre of their PET voxels
    v = np.linalg.solve(aff, pet_affine()) @ np.array([*TINY[6], 1.0])
    n6 = np.floor(v[:3] + 0.5).astype(int)
    x = voxel_centers_world(shape, aff)[tuple(n6)]
    xin = np.array([(20.0 + x @ CT_GRAD) / NORM.ct_std, 3.0 + x @ PET_GRAD - 2.0])
    np.testing.assert_allclose(
        res.lesion_features[rows[1]], net.w.numpy() @ xin + net.b.numpy(), atol=1e-4
    )
    kidney = group_id("kidney_left") - 1
    assert res.organ_present[kidney] and res.organ_voxels[kidney] == 1


def test_lesion_table_and_probability_stay_on_the_pet_grid(runs):
    plain, res = runs
    pd.testing.assert_frame_equal(res.table, plain.table)  # exactly
    assert res.probability.shape == SHAPE and res.probability.dtype == np.float32
    # sigmoid of a linear field, interpolated back: close inside, bounded everywhere
    inner = (slice(2, -2),) * 3
    np.testing.assert_allclose(res.probability[inner], plain.probability[inner], atol=0.01)
    assert ((res.probability >= 0) & (res.probability <= 1)).all()


def test_meta_records_the_spacings_and_survives_the_file(runs):
    _, res = runs
    back = load_case_features(res.path)
    with np.load(res.path) as z:
        meta = json.loads(str(z["meta"]))
    for m in (res.meta, back.meta, meta):
        assert m["pet_spacing_mm"] == pytest.approx(PET_SPACING)
        assert m["target_spacing_mm"] == pytest.approx(PLAN_SPACING)
        assert m["network_grid_spacing_mm"] == pytest.approx(PLAN_SPACING)
        assert m["network_grid_shape"] == list(NET_SHAPE)
        assert m["resampled_to_target_spacing"] is True
        assert "spline order 3" in m["resampling"]["image"]
    np.testing.assert_array_equal(back.lesion_features, res.lesion_features)
    np.testing.assert_array_equal(back.lesion_ids, res.lesion_ids)


def test_full_map_path_agrees_after_resampling(case, net, runs):
    images, lesions, organs = case
    _, res = runs
    full = extract_case_features(
        net,
        images,
        lesions,
        organs,
        patch_size=PATCH,
        normalization=NORM,
        target_spacing=PLAN_SPACING,
        streaming=False,
    )
    np.testing.assert_allclose(full.lesion_features, res.lesion_features, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(full.organ_features, res.organ_features, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(full.lesion_voxels, res.lesion_voxels)


def test_ct_on_its_own_grid_is_resampled_once_onto_the_pet_grid_first(case, net, runs):
    images, lesions, organs = case
    _, res = runs
    ct_aff = np.diag([1.5, 1.5, 1.5, 1.0])
    ct_aff[:3, 3] = (-30.0, -40.0, -110.0)
    ct_shape = (60, 60, 60)
    ct = (20.0 + voxel_centers_world(ct_shape, ct_aff) @ CT_GRAD).astype(np.float32)
    own = CaseImages("P1", images.pet, images.pet_affine, ct, ct_aff)
    f = extract_case_features(
        net,
        own,
        lesions,
        organs,
        patch_size=PATCH,
        normalization=NORM,
        target_spacing=PLAN_SPACING,
    )
    assert f.meta["ct_resampled_to_pet_grid"] is True
    # trilinear then cubic interpolation of a linear field: the same features
    np.testing.assert_allclose(f.lesion_features, res.lesion_features, atol=1e-3)


# --------------------------------------------------------------------------------------
# equal spacing: the old path, bit for bit
# --------------------------------------------------------------------------------------


def test_equal_spacing_takes_the_old_path_bit_for_bit(case, net, runs):
    images, lesions, organs = case
    plain, _ = runs
    near = np.array(PET_SPACING) * 1.005  # within the 1 % tolerance
    for target in (PET_SPACING, near):
        same = extract_case_features(
            net,
            images,
            lesions,
            organs,
            patch_size=PATCH,
            normalization=NORM,
            target_spacing=target,
        )
        assert same.meta["resampled_to_target_spacing"] is False
        assert same.meta["network_grid_shape"] == list(SHAPE)
        assert "fallback_lesion_ids" not in same.meta
        for key in (
            "lesion_ids",
            "lesion_features",
            "lesion_voxels",
            "organ_features",
            "organ_present",
            "organ_voxels",
            "probability",
        ):
            np.testing.assert_array_equal(getattr(same, key), getattr(plain, key))
        pd.testing.assert_frame_equal(same.table, plain.table)
    # and the old path is the pooling of the PET-grid inputs, untouched
    from lamp.anatomy import merge_to_groups

    image = NORM(images.ct, images.pet)
    direct = pool_regions_streaming(
        net,
        image,
        {"lesions": lesions, "organs": merge_to_groups(organs)},
        {"lesions": int(lesions.max()), "organs": 71},
        PATCH,
    )
    pres = direct.present["lesions"]
    np.testing.assert_array_equal(
        plain.lesion_features, direct.features["lesions"][pres].astype(np.float32)
    )
    np.testing.assert_array_equal(plain.probability, direct.probability)
    # a looser tolerance keeps the PET grid even for the plan's spacing
    loose = extract_case_features(
        net,
        images,
        lesions,
        organs,
        patch_size=PATCH,
        normalization=NORM,
        target_spacing=PLAN_SPACING,
        spacing_rtol=1.0,
    )
    np.testing.assert_array_equal(loose.lesion_features, plain.lesion_features)


def test_target_spacing_errors(case, net):
    images, lesions, organs = case
    kw = {"patch_size": PATCH, "normalization": NORM}
    for bad in ((1.0, 2.0), (1.0, -1.0, 2.0), (1.0, float("nan"), 2.0), "abc"):
        with pytest.raises(FeatureError, match="target_spacing: expected three positive spacings"):
            extract_case_features(net, images, lesions, organs, target_spacing=bad, **kw)
    with pytest.raises(FeatureError, match="spacing_rtol: expected a number >= 0"):
        extract_case_features(
            net, images, lesions, organs, target_spacing=PET_SPACING, spacing_rtol=-0.1, **kw
        )
