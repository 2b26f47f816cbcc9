"""lamp.images: NIfTI I/O, resampling through world space, grid overlap."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from lamp.cohort import CohortError
from lamp.images import (
    load_nifti,
    overlap_fraction,
    resample_to_grid,
    same_grid,
    save_nifti,
    voxel_centers_world,
)


def grid_affine(spacing, origin, signs=(1, 1, 1)) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = np.diag(np.asarray(signs, float) * np.asarray(spacing, float))
    a[:3, 3] = origin
    return a


# a linear function of world position (mm): linear interpolation reproduces it exactly
COEF = np.array([0.7, -1.3, 0.4])
CONST = 5.0


def ramp(shape, affine) -> np.ndarray:
    return voxel_centers_world(shape, affine) @ COEF + CONST


def source_index(src_affine, dst_shape, dst_affine) -> np.ndarray:
    """Fractional source index of every destination voxel centre, shape (*dst_shape, 3)."""
    world = voxel_centers_world(dst_shape, dst_affine)
    inv = np.linalg.inv(src_affine)
    return world @ inv[:3, :3].T + inv[:3, 3]


# --------------------------------------------------------------------------------------
# voxel_centers_world, same_grid, overlap_fraction
# --------------------------------------------------------------------------------------


def test_voxel_centers_world_matches_affine():
    a = grid_affine((2.0, 3.0, 4.0), (10.0, -5.0, 1.0), (-1, 1, 1))
    w = voxel_centers_world((3, 4, 5), a)
    assert w.shape == (3, 4, 5, 3)
    np.testing.assert_allclose(w[0, 0, 0], [10.0, -5.0, 1.0])
    np.testing.assert_allclose(w[2, 3, 4], [10.0 - 4.0, -5.0 + 9.0, 1.0 + 16.0])


def test_same_grid():
    a = grid_affine((2, 2, 2), (0, 0, 0))
    assert same_grid((4, 4, 4), a, (4, 4, 4), a + 1e-6)
    assert not same_grid((4, 4, 4), a, (4, 4, 5), a)
    assert not same_grid((4, 4, 4), a, (4, 4, 4), grid_affine((2, 2, 2), (0, 0, 1)))


def test_overlap_fraction_half_and_flip():
    dst = grid_affine((1, 1, 1), (0, 0, 0))  # field of view -0.5..9.5 on each axis
    same = grid_affine((1, 1, 1), (0, 0, 0))
    assert overlap_fraction((10, 10, 10), same, (10, 10, 10), dst) == pytest.approx(1.0)
    shifted = grid_affine((1, 1, 1), (5, 0, 0))
    assert overlap_fraction((10, 10, 10), shifted, (10, 10, 10), dst) == pytest.approx(0.5)
    # the same box described with a flipped first axis
    flipped = grid_affine((1, 1, 1), (14, 0, 0), (-1, 1, 1))
    assert overlap_fraction((10, 10, 10), flipped, (10, 10, 10), dst) == pytest.approx(0.5)
    far = grid_affine((1, 1, 1), (100, 0, 0))
    assert overlap_fraction((10, 10, 10), far, (10, 10, 10), dst) == 0.0
    # a larger source covering everything
    big = grid_affine((5, 5, 5), (-20, -20, -20))
    assert overlap_fraction((10, 10, 10), big, (10, 10, 10), dst) == pytest.approx(1.0)


# --------------------------------------------------------------------------------------
# resample_to_grid
# --------------------------------------------------------------------------------------


def test_resample_identity_returns_input():
    rng = np.random.default_rng(0)
    a = grid_affine((2.0, 3.0, 1.5), (-10, 4, 7), (-1, 1, -1))
    img = rng.normal(size=(5, 6, 7)).astype(np.float32)
    out = resample_to_grid(img, a, img.shape, a)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, img)
    assert out is not img


def test_resample_identity_through_interpolation_path():
    # an affine equal only up to 1e-5 mm skips the shortcut: interpolation must still
    # reproduce the input (voxel centres land on voxel centres)
    rng = np.random.default_rng(1)
    a = grid_affine((2.0, 3.0, 1.5), (-10, 4, 7))
    b = a.copy()
    b[0, 3] += 1e-5
    img = rng.normal(size=(5, 6, 7))
    np.testing.assert_allclose(resample_to_grid(img, a, img.shape, b), img, atol=1e-4)


@pytest.mark.parametrize(
    ("dst_spacing", "dst_origin", "dst_signs", "dst_shape"),
    [
        ((4.0, 4.0, 4.0), (3.0, -2.0, 5.0), (1, 1, 1), (10, 6, 6)),  # shifted
        ((4.0, 4.0, 4.0), (25.0, -2.0, 5.0), (-1, 1, 1), (10, 6, 6)),  # flipped i
        ((1.5, 2.5, 1.0), (1.0, 0.5, 2.0), (1, -1, 1), (13, 7, 26)),  # finer, flipped j
    ],
)
def test_resample_linear_ramp_is_exact(dst_spacing, dst_origin, dst_signs, dst_shape):
    # source: x -5..28, y 20..-16 (j flipped), z -6..24 mm
    src_aff = grid_affine((3.0, 4.0, 2.0), (-5.0, 20.0, -6.0), (1, -1, 1))
    src_shape = (12, 10, 16)
    src = ramp(src_shape, src_aff)
    dst_aff = grid_affine(dst_spacing, dst_origin, dst_signs)
    out = resample_to_grid(src, src_aff, dst_shape, dst_aff, order=1, fill=-999.0)
    assert out.shape == dst_shape and out.dtype == np.float64
    s = source_index(src_aff, dst_shape, dst_aff)
    n = np.array(src_shape)
    inside_centres = np.all((s >= 0) & (s <= n - 1), axis=-1)
    outside_fov = np.any((s < -0.5) | (s > n - 0.5), axis=-1)
    assert inside_centres.sum() > 50 and outside_fov.sum() > 0
    expected = ramp(dst_shape, dst_aff)
    np.testing.assert_allclose(out[inside_centres], expected[inside_centres], atol=1e-9)
    assert np.all(out[outside_fov] == -999.0)


def test_resample_outside_gets_fill_and_margin_gets_edge():
    src_aff = grid_affine((1, 1, 1), (0, 0, 0))
    src = np.arange(4.0)[:, None, None] * np.ones((4, 2, 2))
    dst_aff = grid_affine((0.25, 1, 1), (-1.0, 0, 0))  # i samples x = -1, -0.75, ...
    out = resample_to_grid(src, src_aff, (24, 2, 2), dst_aff, fill=-7.0)
    x = -1.0 + 0.25 * np.arange(24)
    expected = np.where((x < -0.5) | (x > 3.5), -7.0, np.clip(x, 0.0, 3.0))
    np.testing.assert_allclose(out[:, 0, 0], expected)


def test_resample_float32_and_int_sources_give_float32():
    a = grid_affine((1, 1, 1), (0, 0, 0))
    b = grid_affine((0.5, 1, 1), (0, 0, 0))
    for src in (np.ones((3, 3, 3), np.float32), np.ones((3, 3, 3), np.int16)):
        assert resample_to_grid(src, a, (5, 3, 3), b).dtype == np.float32


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.bool_])
def test_resample_nearest_keeps_labels_and_dtype(dtype):
    rng = np.random.default_rng(2)
    src_aff = grid_affine((2.0, 2.0, 2.0), (0.0, 12.0, 0.0), (1, -1, 1))
    hi = 2 if dtype is np.bool_ else 9
    labels = rng.integers(1, hi + 1, size=(6, 7, 8)).astype(dtype)
    dst_aff = grid_affine((0.7, 1.1, 0.9), (0.3, -1.0, 0.2), (1, 1, -1))
    dst_shape = (15, 10, 17)
    out = resample_to_grid(labels, src_aff, dst_shape, dst_aff, order=0, fill=0)
    assert out.dtype == labels.dtype and out.shape == dst_shape
    s = source_index(src_aff, dst_shape, dst_aff)
    n = np.array(labels.shape)
    inside = np.all((s >= -0.5) & (s <= n - 0.5), axis=-1)
    tie = np.any(np.abs(s - np.floor(s) - 0.5) < 1e-6, axis=-1)  # either neighbour is right
    nearest = np.clip(np.floor(s + 0.5).astype(int), 0, n - 1)
    expected = labels[nearest[..., 0], nearest[..., 1], nearest[..., 2]]
    ok = inside & ~tie
    assert ok.sum() > 100 and (~inside).sum() > 0
    np.testing.assert_array_equal(out[ok], expected[ok])
    assert np.all(out[~inside] == 0)


def test_resample_blockwise_equals_single_block(monkeypatch):
    import lamp.images as images

    rng = np.random.default_rng(3)
    src_aff = grid_affine((2.0, 2.0, 2.0), (0, 0, 0))
    src = rng.normal(size=(8, 8, 8)).astype(np.float32)
    dst_aff = grid_affine((1.3, 1.1, 0.9), (-1.0, 0.5, 0.2), (1, 1, -1))
    whole = resample_to_grid(src, src_aff, (11, 12, 9), dst_aff)
    monkeypatch.setattr(images, "_BLOCK_VOXELS", 7)  # one i-slice per block
    np.testing.assert_array_equal(resample_to_grid(src, src_aff, (11, 12, 9), dst_aff), whole)


def test_resample_cubic_reproduces_ramp_inside():
    # exact far from the edges, where the boundary condition of the spline has decayed
    src_aff = grid_affine((2.0, 2.0, 2.0), (0, 0, 0))
    src = ramp((24, 24, 24), src_aff)
    dst_aff = grid_affine((1.0, 1.0, 1.0), (19.5, 19.5, 19.5))
    out = resample_to_grid(src, src_aff, (8, 8, 8), dst_aff, order=3)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, ramp((8, 8, 8), dst_aff), atol=1e-4)


def test_resample_errors():
    a = np.eye(4)
    with pytest.raises(CohortError, match="expected a 3D source array, got shape"):
        resample_to_grid(np.zeros((2, 2)), a, (2, 2, 2), a)
    with pytest.raises(CohortError, match="spline order 0..5, got 7"):
        resample_to_grid(np.zeros((2, 2, 2)), a, (2, 2, 2), a, order=7)
    with pytest.raises(CohortError, match="fill -1 is not a value of the label dtype uint8"):
        resample_to_grid(np.zeros((2, 2, 2), np.uint8), a, (3, 2, 2), a, order=0, fill=-1)
    singular = np.diag([1.0, 0.0, 1.0, 1.0])
    with pytest.raises(CohortError, match="destination: expected an invertible affine"):
        resample_to_grid(np.zeros((2, 2, 2)), a, (2, 2, 2), singular)
    with pytest.raises(CohortError, match="expected a 3D shape of positive sizes"):
        resample_to_grid(np.zeros((2, 2, 2)), a, (2, 0, 2), a)


# --------------------------------------------------------------------------------------
# save_nifti / load_nifti
# --------------------------------------------------------------------------------------


def test_save_load_round_trip_float(tmp_path):
    aff = grid_affine((4.0, 4.0, 3.0), (-100.0, 50.0, -20.0), (-1, -1, 1))
    data = np.random.default_rng(4).normal(size=(4, 5, 6))
    path = save_nifti(tmp_path / "sub" / "pet.nii.gz", data, aff)
    assert path == tmp_path / "sub" / "pet.nii.gz"
    with gzip.open(path) as f:  # really gzip-compressed
        f.read(4)
    arr, aff2 = load_nifti(path)
    assert arr.dtype == np.float32
    np.testing.assert_array_equal(arr, data.astype(np.float32))
    np.testing.assert_allclose(aff2, aff)
    img = nib.load(path)
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    assert img.header.get_xyzt_units()[0] == "mm"
    np.testing.assert_allclose(img.get_qform(), aff, atol=1e-5)


def test_save_load_round_trip_labels(tmp_path):
    aff = grid_affine((2.0, 2.0, 2.0), (0, 0, 0))
    labels = np.zeros((3, 4, 5), np.int64)
    labels[1, 2, 3] = 300
    arr, _ = load_nifti(save_nifti(tmp_path / "l.nii.gz", labels, aff, np.uint16))
    assert arr.dtype == np.uint16
    np.testing.assert_array_equal(arr, labels)
    # default for int64 is int32, for bool uint8
    assert load_nifti(save_nifti(tmp_path / "d.nii.gz", labels, aff))[0].dtype == np.int32
    mask = labels > 0
    assert load_nifti(save_nifti(tmp_path / "b.nii.gz", mask, aff))[0].dtype == np.uint8
    # float stored as integer rounds
    hu = np.full((2, 2, 2), -1023.6)
    assert load_nifti(save_nifti(tmp_path / "ct.nii.gz", hu, aff, np.int16))[0][0, 0, 0] == -1024


def test_save_uncompressed(tmp_path):
    path = save_nifti(tmp_path / "x.nii", np.ones((2, 2, 2)), np.eye(4))
    assert path.read_bytes()[344:348] == b"n+1\x00"
    np.testing.assert_array_equal(load_nifti(path)[0], np.ones((2, 2, 2)))


def test_save_is_atomic_and_replaces(tmp_path):
    path = tmp_path / "img.nii.gz"
    save_nifti(path, np.zeros((2, 2, 2)), np.eye(4))
    save_nifti(path, np.full((3, 3, 3), 2.0), np.eye(4))
    assert load_nifti(path)[0].shape == (3, 3, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.nii.gz"]


def test_save_failure_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    import lamp.images as images

    path = tmp_path / "img.nii.gz"
    save_nifti(path, np.zeros((2, 2, 2)), np.eye(4))
    before = path.read_bytes()

    class Boom(RuntimeError):
        pass

    class BrokenGzip:
        def __init__(self, *args, **kwargs):
            self.f = open(args[0], "wb")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[:10])
            raise Boom("disk full")

    monkeypatch.setattr(images.gzip, "GzipFile", BrokenGzip)
    with pytest.raises(Boom):
        save_nifti(path, np.ones((2, 2, 2)), np.eye(4))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.nii.gz"]


def test_save_errors(tmp_path):
    with pytest.raises(CohortError, match=r"ending in \.nii\.gz or \.nii, got 'x\.png'"):
        save_nifti(tmp_path / "x.png", np.zeros((2, 2, 2)), np.eye(4))
    with pytest.raises(CohortError, match=r"expected a 3D \(or 4D\) array, got shape \(2, 2\)"):
        save_nifti(tmp_path / "x.nii.gz", np.zeros((2, 2)), np.eye(4))
    with pytest.raises(CohortError, match=r"values 0\.0\.\.300\.0 do not fit dtype uint8"):
        save_nifti(tmp_path / "x.nii.gz", np.array([0.0, 300.0]).reshape(2, 1, 1), np.eye(4), "u1")
    with pytest.raises(CohortError, match=r"expected a 4x4 affine, got shape \(3, 3\)"):
        save_nifti(tmp_path / "x.nii.gz", np.zeros((2, 2, 2)), np.eye(3))
    assert not any(tmp_path.iterdir())


def test_load_missing(tmp_path):
    with pytest.raises(CohortError, match=r"nope\.nii\.gz: image file not found"):
        load_nifti(tmp_path / "nope.nii.gz")


def test_load_unreadable(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(CohortError, match=r"bad\.nii\.gz: unreadable image"):
        load_nifti(bad)
    truncated = tmp_path / "trunc.nii.gz"
    save_nifti(truncated, np.random.default_rng(0).normal(size=(20, 20, 20)), np.eye(4))
    truncated.write_bytes(truncated.read_bytes()[:500])
    with pytest.raises(CohortError, match=r"trunc\.nii\.gz: unreadable image"):
        load_nifti(truncated)


def test_load_4d(tmp_path):
    one = tmp_path / "one.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((2, 3, 4, 1), np.float32), np.eye(4)), one)
    assert load_nifti(one)[0].shape == (2, 3, 4)
    many = tmp_path / "many.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((2, 3, 4, 2), np.float32), np.eye(4)), many)
    with pytest.raises(CohortError, match=r"many\.nii\.gz: expected a 3D image, got shape"):
        load_nifti(many)
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((2, 3), np.float32), np.eye(4)), flat)
    with pytest.raises(CohortError, match=r"flat\.nii\.gz: expected a 3D image, got shape"):
        load_nifti(flat)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_load_non_finite(tmp_path, value):
    data = np.zeros((3, 3, 3), np.float32)
    data[1, 2, 0] = value
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    with pytest.raises(CohortError, match=r"nan\.nii\.gz: expected finite voxel values, got 1 "):
        load_nifti(path)
