"""lamp.features: tiling, importance map, streaming pooling, lesion table, case features."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch

from lamp.anatomy import GROUPS, TOTAL_IDS, group_id, groups_present, merge_to_groups
from lamp.features import (
    LESION_TABLE_COLUMNS,
    N_FEATURES,
    CaseImages,
    ChannelNormalization,
    FeatureError,
    _peak_kernel,
    extract_case_features,
    gaussian_importance_map,
    lesion_table,
    load_case_features,
    padding_for,
    pool_regions_full,
    pool_regions_streaming,
    sliding_windows,
)
from lamp.images import load_nifti, save_nifti

# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def starts(windows, axis):
    return sorted({w[axis].start for w in windows})


class RandomFeatureNet:
    """A small random conv net in the segmentation network's feature interface.

    Each window's features get the window's own mean added, so that the same voxel has
    clearly different features in different windows: the stitching weights matter.
    """

    def __init__(self, hidden: int | None = None, channels: int = N_FEATURES, seed: int = 0):
        torch.manual_seed(seed)
        if hidden is None:
            self.net = torch.nn.Sequential(
                torch.nn.Conv3d(2, channels, 3, padding=1), torch.nn.Tanh()
            )
        else:
            self.net = torch.nn.Sequential(
                torch.nn.Conv3d(2, hidden, 3, padding=1),
                torch.nn.Tanh(),
                torch.nn.Conv3d(hidden, channels, 1),
            )
        self.net.eval()

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.net(x)
        f = f + f.mean(dim=(2, 3, 4), keepdim=True)
        return torch.sigmoid(f[:, :1]), f


def naive_stitch(model, image, patch, step=0.5):
    """Stitch the full feature map with numpy, independently of lamp.features."""
    c_in, *shape = image.shape
    pads = [
        (max(p - n, 0) // 2, max(p - n, 0) - max(p - n, 0) // 2)
        for n, p in zip(shape, patch, strict=True)
    ]
    img = np.pad(image, [(0, 0), *pads])
    g = gaussian_importance_map(patch).astype(np.float64)
    num = None
    den = np.zeros(img.shape[1:])
    pnum = np.zeros(img.shape[1:])
    for w in sliding_windows(shape, patch, step):
        with torch.no_grad():
            p, f = model(torch.from_numpy(img[(slice(None), *w)][None]).float())
        if num is None:
            num = np.zeros((f.shape[1], *img.shape[1:]))
        num[(slice(None), *w)] += f[0].double().numpy() * g
        pnum[w] += p[0, 0].double().numpy() * g
        den[w] += g
    crop = tuple(slice(a, a + n) for (a, _), n in zip(pads, shape, strict=True))
    return (num / den)[(slice(None), *crop)], (pnum / den)[crop]


def naive_means(stitched, labels, n):
    out = np.zeros((n, stitched.shape[0]))
    for r in range(1, n + 1):
        m = labels == r
        if m.any():
            out[r - 1] = stitched[:, m].mean(axis=1)
    return out


def rel_err(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def affine(spacing, origin, signs=(1, 1, 1)):
    a = np.eye(4)
    a[:3, :3] = np.diag(np.asarray(signs, float) * np.asarray(spacing, float))
    a[:3, 3] = origin
    return a


# --------------------------------------------------------------------------------------
# tiling and importance map
# --------------------------------------------------------------------------------------


def test_sliding_windows_hand_checked():
    # nnU-Net's own comment: 110 voxels, patch 64, step 0.5 -> starts 0, 23, 46
    w = sliding_windows((110, 64, 64), (64, 64, 64))
    assert starts(w, 0) == [0, 23, 46] and starts(w, 1) == [0] and starts(w, 2) == [0]
    assert len(w) == 3 and all(s.stop - s.start == 64 for win in w for s in win)
    # 144 / 64: ceil(80 / 32) + 1 = 4 windows, step 80 / 3 = 26.67 -> 0, 27, 53, 80
    assert starts(sliding_windows((144, 64, 64), (64, 64, 64)), 0) == [0, 27, 53, 80]
    # 97 / 64: 3 windows, step 16.5; 16.5 rounds half to even -> 16 (as np.round)
    assert starts(sliding_windows((97, 64, 64), (64, 64, 64)), 0) == [0, 16, 33]
    # step 1: no overlap needed, 128 / 64 -> 0, 64; step 0.25 -> 0, 16, 32, 48, 64
    assert starts(sliding_windows((128, 64, 64), (64, 64, 64), 1.0), 0) == [0, 64]
    assert starts(sliding_windows((128, 64, 64), (64, 64, 64), 0.25), 0) == [0, 16, 32, 48, 64]
    # C order: first axis slowest
    w = sliding_windows((96, 96, 64), (64, 64, 64))
    assert [(a.start, b.start) for a, b, _ in w] == [(0, 0), (0, 32), (32, 0), (32, 32)]


def test_sliding_windows_pad_small_images():
    # axis 0 (10 < 16) is padded to 16 and holds one window; axis 2: 70 vs 64 -> 0, 6
    assert padding_for((10, 64, 70), (16, 64, 64)) == ((3, 3), (0, 0), (0, 0))
    assert padding_for((9, 5, 64), (16, 8, 64)) == ((3, 4), (1, 2), (0, 0))
    w = sliding_windows((10, 64, 70), (16, 64, 64))
    assert starts(w, 0) == [0] and starts(w, 2) == [0, 6]
    assert all(win[0] == slice(0, 16) for win in w)


@pytest.mark.parametrize("step", [0.5, 0.3, 1.0])
def test_sliding_windows_cover_and_overlap(step):
    shape, patch = (50, 23, 77), (16, 8, 20)
    w = sliding_windows(shape, patch, step)
    hits = np.zeros(shape, dtype=int)
    for win in w:
        hits[win] += 1
    assert hits.min() >= 1
    for ax in range(3):
        s = starts(w, ax)
        assert s[0] == 0 and s[-1] + patch[ax] == shape[ax]
        # steps of at most patch * step_size, up to rounding to whole voxels
        assert all(b - a <= math.ceil(patch[ax] * step) for a, b in itertools.pairwise(s))


def test_sliding_windows_match_nnunet():
    sw = pytest.importorskip("nnunetv2.inference.sliding_window_prediction")
    rng = np.random.default_rng(0)
    for _ in range(100):
        patch = tuple(int(v) for v in rng.integers(8, 48, 3))
        shape = tuple(int(p + rng.integers(0, 120)) for p in patch)
        step = float(rng.choice([0.5, 0.33, 0.75, 1.0]))
        ref = sw.compute_steps_for_sliding_window(shape, patch, step)
        ours = sliding_windows(shape, patch, step)
        assert [starts(ours, a) for a in range(3)] == [list(r) for r in ref]


def test_gaussian_importance_map_properties():
    g = gaussian_importance_map((8, 12, 7))
    assert g.shape == (8, 12, 7) and g.dtype == np.float32
    assert g.max() == pytest.approx(10.0) and g[4, 6, 3] == pytest.approx(10.0)
    assert (g > 0).all()
    # separable Gaussian, sigma = patch / 8: voxel 0 of an 8-voxel axis is 4 voxels = 4
    # sigma from the centre, so its weight is 10 exp(-8)
    assert g[0, 6, 3] == pytest.approx(10 * math.exp(-8), rel=1e-5)
    assert np.allclose(g[:, :, 3 - 1], g[:, :, 3 + 1])  # odd axis symmetric about 7 // 2
    # a narrow Gaussian is cut off at 4 sigma; the zeros become the smallest weight
    n = gaussian_importance_map((16, 16, 16), sigma_scale=1 / 32)
    inner = n[8 - 2 : 8 + 3, 8 - 2 : 8 + 3, 8 - 2 : 8 + 3]
    assert n[0, 0, 0] == n.min() == inner.min() > 0
    with pytest.raises(FeatureError, match="patch_size: expected three positive integers"):
        gaussian_importance_map((8, 0, 8))


def test_gaussian_importance_map_matches_nnunet():
    sw = pytest.importorskip("nnunetv2.inference.sliding_window_prediction")
    for patch in [(64, 64, 64), (7, 9, 13), (1, 2, 3), (40, 24, 56)]:
        ref = sw.compute_gaussian(patch, 1 / 8, 10, dtype=torch.float32, device=torch.device("cpu"))
        np.testing.assert_allclose(gaussian_importance_map(patch), ref.numpy(), rtol=1e-6)


# --------------------------------------------------------------------------------------
# streaming pooling == full map
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pooling_case():
    rng = np.random.default_rng(1)
    shape = (32, 28, 36)
    image = rng.normal(size=(2, *shape)).astype(np.float32)
    lesions = np.zeros(shape, dtype=np.uint16)
    lesions[5:21, 3:15, 6:30] = 1  # crosses window borders on all three axes
    lesions[25, 20, 3] = 2  # one voxel
    # id 3: absent
    lesions[-3:, -2:, -4:] = 4  # a corner: only the last window on each axis
    organs = rng.integers(0, 6, size=shape).astype(np.uint8)  # dense, ids 1..5, 6 absent
    model = RandomFeatureNet()
    patch = (16, 16, 16)
    labels = {"lesions": lesions, "organs": organs}
    n = {"lesions": 4, "organs": 6}
    stream = pool_regions_streaming(model, image, labels, n, patch)
    full = pool_regions_full(model, image, labels, n, patch)
    return image, labels, n, model, patch, stream, full


def test_streaming_equals_full_map(pooling_case):
    image, labels, n, model, patch, stream, full = pooling_case
    for name in labels:
        assert stream.features[name].shape == (n[name], N_FEATURES)
        assert np.isfinite(stream.features[name]).all()
        assert rel_err(stream.features[name], full.features[name]) <= 1e-4
        np.testing.assert_array_equal(stream.counts[name], full.counts[name])
    np.testing.assert_array_equal(stream.counts["lesions"], [16 * 12 * 24, 1, 0, 3 * 2 * 4])
    np.testing.assert_array_equal(stream.present["lesions"], [True, True, False, True])
    assert not stream.present["organs"][5] and stream.present["organs"][:5].all()
    assert (stream.features["lesions"][2] == 0).all() and (stream.features["organs"][5] == 0).all()
    assert stream.probability.shape == image.shape[1:] and stream.probability.dtype == np.float32
    np.testing.assert_allclose(stream.probability, full.probability, atol=1e-6)
    assert stream.n_windows == 3 * 3 * 4


def test_both_paths_match_independent_stitching_with_padding():
    rng = np.random.default_rng(2)
    shape = (12, 20, 9)  # axes 0 and 2 shorter than the patch: padded, then cropped back
    image = rng.normal(size=(2, *shape)).astype(np.float32)
    lab = np.zeros(shape, dtype=np.int32)
    lab[0:4, 0:20, 0:9] = 1
    lab[11, 19, 8] = 2
    model = RandomFeatureNet(hidden=4, channels=16)
    patch = (16, 12, 16)
    stream = pool_regions_streaming(model, image, {"l": lab}, {"l": 2}, patch)
    batched = pool_regions_streaming(
        model, torch.from_numpy(image), {"l": lab}, {"l": 2}, patch, batch_size=3
    )
    full = pool_regions_full(model, image, {"l": lab}, {"l": 2}, patch)
    stitched, prob = naive_stitch(model, image, patch)
    ref = naive_means(stitched, lab, 2)
    for result in (stream, batched, full):
        assert rel_err(result.features["l"], ref) <= 1e-5
        assert result.probability.shape == shape
        np.testing.assert_allclose(result.probability, prob, atol=1e-6)
    # a one-voxel region is the stitched value at that voxel
    np.testing.assert_allclose(stream.features["l"][1], stitched[:, 11, 19, 8], rtol=1e-5)


def test_pooling_input_errors():
    image = np.zeros((2, 8, 8, 8), dtype=np.float32)
    model = RandomFeatureNet(hidden=2, channels=4)
    lab = np.zeros((8, 8, 8), dtype=np.uint8)
    with pytest.raises(FeatureError, match=r"label map 'l': expected the image's spatial shape"):
        pool_regions_streaming(model, image, {"l": lab[:7]}, {"l": 1}, (8, 8, 8))
    lab[0, 0, 0] = 3
    with pytest.raises(
        FeatureError, match=r"label map 'l': expected region ids in 0\.\.2, got values 0\.\.3"
    ):
        pool_regions_streaming(model, image, {"l": lab}, {"l": 2}, (8, 8, 8))
    with pytest.raises(FeatureError, match="n_regions: expected one entry per label map"):
        pool_regions_streaming(model, image, {"l": lab}, {"x": 3}, (8, 8, 8))
    bad = image.copy()
    bad[0, 1, 1, 1] = np.nan
    with pytest.raises(FeatureError, match="image: expected finite values"):
        pool_regions_full(model, bad, {}, {}, (8, 8, 8))
    with pytest.raises(FeatureError, match="step_size: expected a number in"):
        pool_regions_streaming(model, image, {}, {}, (8, 8, 8), step_size=0)
    with pytest.raises(
        FeatureError, match=r"model_fn: expected a probability of shape \(1, 1, 8, 8, 8\)"
    ):
        pool_regions_streaming(lambda x: (x, x), image, {}, {}, (8, 8, 8))


# --------------------------------------------------------------------------------------
# lesion table
# --------------------------------------------------------------------------------------


def test_peak_kernel_is_one_ml():
    # partial-volume weights: the weighted volume is the sphere's (1 ml) at any voxel size
    for aff, centre in (
        (affine((4, 4, 4), (0, 0, 0), (-1, -1, 1)), 1.0),  # 4 mm voxel fully inside r = 6.2 mm
        (affine((2, 2, 3), (0, 0, 0)), 1.0),
        # r = 6.20 mm in a 12 mm voxel: the sphere less six caps of height 0.20 mm,
        # (1000 - 4.79) / 1728 of the voxel
        (affine((12, 12, 12), (0, 0, 0)), 0.576),
    ):
        off, w = _peak_kernel(aff, 1.0)
        voxel_ml = abs(np.linalg.det(aff[:3, :3])) / 1000
        assert w.sum() * voxel_ml == pytest.approx(1.0, rel=0.02)
        assert w[np.all(off == 0, axis=1)][0] == pytest.approx(centre, abs=0.01)


@pytest.fixture()
def phantom():
    """Two known lesions on an anisotropic, flipped grid, and organ groups around them."""
    shape = (40, 40, 30)
    aff = affine((2.0, 2.0, 3.0), (100.0, 50.0, -200.0), (-1, -1, 1))
    ii, jj, kk = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    suv = np.full(shape, 1.0, dtype=np.float32)
    inst = np.zeros(shape, dtype=np.uint16)
    # lesion 1: a ball of radius 10 mm around voxel (12, 20, 20), SUV 5, hottest 9 at centre
    world_d = np.sqrt(((ii - 12) * 2.0) ** 2 + ((jj - 20) * 2.0) ** 2 + ((kk - 20) * 3.0) ** 2)
    ball = world_d <= 10.0
    inst[ball] = 1
    suv[world_d <= 20.0] = 5.0  # uniform surroundings: SUVpeak = 5 + 4 w_centre / sum(w)
    suv[12, 20, 20] = 9.0
    # lesion 3 (id 2 absent): a 4 x 5 x 2 box at 2.0 inside the "liver" block
    inst[28:32, 10:15, 3:5] = 3
    suv[28:32, 10:15, 3:5] = 2.0
    groups = np.zeros(shape, dtype=np.uint8)
    groups[24:40, 0:40, 0:8] = group_id("liver")  # diaphragm at k = 7
    groups[0:3, 18:22, 14:30] = group_id("common_carotid_artery_right")  # 14 mm from lesion 1
    return suv, inst, aff, groups, ball


def test_lesion_table_hand_checked(phantom):
    suv, inst, aff, groups, ball = phantom
    t = lesion_table(suv, inst, aff, groups, "P1")
    assert list(t.columns) == list(LESION_TABLE_COLUMNS)
    assert t["lesion_id"].tolist() == [1, 3] and (t["patient_id"] == "P1").all()
    one, three = t.iloc[0], t.iloc[1]
    n1 = int(ball.sum())
    voxel_ml = 2 * 2 * 3 / 1000
    assert one["voxels"] == n1 and one["volume_ml"] == pytest.approx(n1 * voxel_ml)
    assert one["suvmax"] == 9.0
    assert one["suvmean"] == pytest.approx((5.0 * (n1 - 1) + 9.0) / n1)
    assert one["tlg"] == pytest.approx(one["suvmean"] * one["volume_ml"])
    # the ball is symmetric about its centre voxel: world = affine @ (12, 20, 20)
    assert (one["centroid_x_mm"], one["centroid_y_mm"], one["centroid_z_mm"]) == pytest.approx(
        (100 - 2 * 12, 50 - 2 * 20, -200 + 3 * 20)
    )
    # centre voxel (2x2x3 mm, half-diagonal 2.1 mm) lies fully inside the 6.2 mm sphere;
    # the sphere holds 1 ml = 83.3 voxels of 0.012 ml, all at SUV 5 except the centre
    assert one["suvpeak"] == pytest.approx(5.0 + 4.0 / (1.0 / voxel_ml), rel=2e-3)
    assert one["organ"] == "none" and one["organ_fraction"] == 0.0
    assert one["nodal_region"] == "cervical_right"  # above the liver top, nearest carotid
    assert three["voxels"] == 40 and three["volume_ml"] == pytest.approx(40 * voxel_ml)
    assert three["suvmax"] == three["suvmean"] == 2.0
    assert three["tlg"] == pytest.approx(2.0 * 40 * voxel_ml)
    assert three["centroid_x_mm"] == pytest.approx(100 - 2 * 29.5)
    assert three["centroid_z_mm"] == pytest.approx(-200 + 3 * 3.5)
    assert three["organ"] == "liver" and three["organ_fraction"] == 1.0
    assert three["nodal_region"] == ""


def test_lesion_table_sites_and_edge_cases(phantom):
    suv, inst, aff, groups, _ = phantom
    no_organs = lesion_table(suv, inst, aff, None, "P1")
    assert (no_organs["organ"] == "").all() and (no_organs["nodal_region"] == "").all()
    # far from every landmark -> no nodal region; in the spleen -> nodal region "spleen"
    far = groups.copy()
    far[far == group_id("common_carotid_artery_right")] = 0
    assert lesion_table(suv, inst, aff, far)["nodal_region"].tolist() == ["", ""]
    # the neck split: 15 mm above the top of the right clavicle -> supraclavicular
    neck = groups.copy()
    neck[0:4, 18:22, 13:16] = group_id("clavicula_right")  # top at z = -200 + 3 * 15
    assert lesion_table(suv, inst, aff, neck)["nodal_region"].iloc[0] == "supraclavicular_right"
    spleen = groups.copy()
    spleen[inst == 1] = group_id("spleen")
    t = lesion_table(suv, inst, aff, spleen)
    assert t["organ"].iloc[0] == "spleen" and t["nodal_region"].iloc[0] == "spleen"
    # a lesion only partly in an organ: kept below min_organ_fraction
    part = groups.copy()
    part[28:30, 10:15, 3:5] = 0  # half of lesion 3 leaves the liver
    assert lesion_table(suv, inst, aff, part)["organ_fraction"].iloc[1] == 0.5
    assert lesion_table(suv, inst, aff, part, min_organ_fraction=0.6)["organ"].iloc[1] == "none"
    # no lesion: an empty table with the columns
    empty = lesion_table(suv, np.zeros_like(inst), aff, groups, "P1")
    assert len(empty) == 0 and list(empty.columns) == list(LESION_TABLE_COLUMNS)
    with pytest.raises(FeatureError, match=r"instances: expected the PET shape \(40, 40, 30\)"):
        lesion_table(suv, inst[:-1], aff)
    with pytest.raises(FeatureError, match=r"organ_groups: expected region ids in 0\.\.71"):
        lesion_table(suv, inst, aff, groups.astype(np.int32) + 100)


# --------------------------------------------------------------------------------------
# one case
# --------------------------------------------------------------------------------------

NORM = ChannelNormalization(ct_mean=0.0, ct_std=300.0, pet_mean=1.5, pet_std=2.0)
PATCH = (32, 32, 32)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from lamp.synth.generate import SynthRequest, generate_cohort

    out = tmp_path_factory.mktemp("features") / "c"
    generate_cohort(SynthRequest(out=out, n_patients=5, size="tiny", export_nnunet=False))
    return out


@pytest.fixture(scope="module")
def small_net():
    return RandomFeatureNet(hidden=4)


def test_extract_case_features_from_folder(cohort, small_net, tmp_path):
    case = cohort / "cases" / "SYN0000"
    f = extract_case_features(
        small_net, case, patch_size=PATCH, normalization=NORM, out_path=tmp_path
    )
    les, _ = load_nifti(case / "lesions.nii.gz")
    org, _ = load_nifti(case / "organs.nii.gz")
    ids = np.unique(les[les > 0])
    np.testing.assert_array_equal(f.lesion_ids, ids)  # SYN0000 has a gap (id 5)
    assert (
        f.lesion_features.shape == (len(ids), N_FEATURES) and f.lesion_features.dtype == np.float32
    )
    assert f.organ_features.shape == (71, N_FEATURES)
    np.testing.assert_array_equal(f.organ_present, groups_present(merge_to_groups(org)))
    assert (f.organ_features[~f.organ_present] == 0).all()
    assert np.isfinite(f.lesion_features).all() and np.isfinite(f.organ_features).all()
    assert f.meta["ct_resampled_to_pet_grid"] is True  # the synthetic CT has its own grid
    assert f.table["lesion_id"].tolist() == ids.tolist()
    assert f.probability.shape == les.shape
    assert f.path == tmp_path / "SYN0000.npz" and not list(tmp_path.glob(".*tmp"))
    back = load_case_features(f.path)
    for key in ("lesion_ids", "lesion_features", "organ_features", "organ_present", "organ_voxels"):
        np.testing.assert_array_equal(getattr(back, key), getattr(f, key))
    pd.testing.assert_frame_equal(back.table, f.table, check_dtype=False)
    assert back.patient_id == "SYN0000" and back.meta["patch_size"] == list(PATCH)


def test_extract_case_features_zero_lesions_from_arrays(cohort, small_net, tmp_path):
    case = cohort / "cases" / "SYN0001"
    pet, pet_aff = load_nifti(case / "pet.nii.gz")
    ct, ct_aff = load_nifti(case / "ct.nii.gz")
    org, _ = load_nifti(case / "organs.nii.gz")
    images = CaseImages("SYN0001", pet, pet_aff, ct, ct_aff)
    f = extract_case_features(
        small_net,
        images,
        np.zeros(pet.shape, dtype=np.uint16),
        org,
        patch_size=PATCH,
        normalization=((0.0, 300.0), (1.5, 2.0)),
        out_path=tmp_path / "zero.npz",
    )
    assert f.lesion_ids.shape == (0,) and f.lesion_features.shape == (0, N_FEATURES)
    assert len(f.table) == 0 and list(f.table.columns) == list(LESION_TABLE_COLUMNS)
    assert f.organ_present.any()
    back = load_case_features(tmp_path / "zero.npz")
    assert back.lesion_features.shape == (0, N_FEATURES) and len(back.table) == 0
    # the streaming and the full path agree on a real case too
    g = extract_case_features(
        small_net,
        images,
        np.zeros(pet.shape, dtype=np.uint16),
        org,
        patch_size=PATCH,
        normalization=NORM,
        streaming=False,
    )
    assert rel_err(f.organ_features, g.organ_features) <= 1e-4


def test_extract_case_features_errors(cohort, small_net, tmp_path):
    case = cohort / "cases" / "SYN0002"
    pet, pet_aff = load_nifti(case / "pet.nii.gz")
    ct, ct_aff = load_nifti(case / "ct.nii.gz")
    org, _ = load_nifti(case / "organs.nii.gz")
    les, _ = load_nifti(case / "lesions.nii.gz")
    kw = {"patch_size": PATCH, "normalization": NORM}

    shifted = pet_aff.copy()
    shifted[0, 3] += 5.0
    save_nifti(tmp_path / "les_shifted.nii.gz", les, shifted, np.uint16)
    with pytest.raises(
        FeatureError,
        match=r"patient SYN0002: lesions .*les_shifted\.nii\.gz: expected the PET grid",
    ):
        extract_case_features(small_net, case, tmp_path / "les_shifted.nii.gz", **kw)

    with pytest.raises(
        FeatureError,
        match=r"patient SYN0002: organs: .*missing\.nii\.gz: image file not found.*Total",
    ):
        extract_case_features(small_net, case, None, tmp_path / "missing.nii.gz", **kw)

    bad = pet.copy()
    bad[3, 4, 5] = np.nan
    with pytest.raises(
        FeatureError,
        match=r"patient SYN0002: pet array: expected finite values, got 1 NaN/inf voxel\(s\), "
        r"first at index \(3, 4, 5\)",
    ):
        extract_case_features(
            small_net, CaseImages("SYN0002", bad, pet_aff, ct, ct_aff), les, org, **kw
        )

    neg = les.astype(np.int32)
    neg[0, 0, 0] = -1
    with pytest.raises(
        FeatureError,
        match=r"patient SYN0002: lesion instances array: expected region ids in 0\.\.65535",
    ):
        extract_case_features(small_net, case, neg, org, **kw)

    with pytest.raises(FeatureError, match=r"patient SYN0002: organ labels array: .*0\.\.117"):
        extract_case_features(small_net, case, les, org.astype(np.int16) + 200, **kw)

    with pytest.raises(
        FeatureError, match=r"patient SYN0002: lesions array: expected the PET shape"
    ):
        extract_case_features(small_net, case, les[:, :, :-1], org, **kw)

    images = CaseImages("SYN0002", pet, pet_aff, ct, ct_aff)
    with pytest.raises(
        FeatureError, match="patient SYN0002: lesions: required when the case is given as arrays"
    ):
        extract_case_features(small_net, images, None, org, **kw)

    far = ct_aff.copy()
    far[2, 3] += 1e5
    with pytest.raises(
        FeatureError, match="patient SYN0002: ct array: the CT field of view does not overlap"
    ):
        extract_case_features(
            small_net, CaseImages("SYN0002", pet, pet_aff, ct, far), les, org, **kw
        )

    with pytest.raises(FeatureError, match="normalization: expected a ChannelNormalization"):
        extract_case_features(small_net, case, les, org, patch_size=PATCH, normalization=3)
    with pytest.raises(FeatureError, match="normalization ct_std: expected a positive number"):
        ChannelNormalization(0.0, 0.0)
    with pytest.raises(FeatureError, match="features file not found"):
        load_case_features(tmp_path / "nothing.npz")
    assert GROUPS[0] == "spleen" and TOTAL_IDS["spleen"] == 1  # organ ids used above
