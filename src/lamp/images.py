"""NIfTI input/output, voxel grids and resampling through physical space.

Conventions (binding for the whole project):

* Arrays are in NIfTI storage order ``(i, j, k)``, exactly as nibabel returns them; no
  axis is ever transposed or flipped to a "canonical" orientation.
* A grid is a ``shape`` plus a 4x4 ``affine`` that maps voxel indices ``(i, j, k, 1)``
  to RAS+ world coordinates in millimetres (the nibabel convention). Voxel ``(0, 0, 0)``
  is the *centre* of the first voxel; the field of view of an axis of ``n`` voxels spans
  indices ``-0.5 .. n - 0.5``.
* Images are written float32; label maps in the integer dtype the caller names. Every
  write is atomic (a temporary file in the same folder, then ``os.replace``).

Errors a user can cause (a missing, unreadable, non-3D or non-finite file) are raised as
`lamp.cohort.CohortError`, whose message names the file, what was expected and what came.
"""

from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray
from scipy import ndimage

from lamp.cohort import CohortError, atomic_output

__all__ = [
    "save_nifti",
    "load_nifti",
    "voxel_centers_world",
    "same_grid",
    "voxel_spacing",
    "grid_with_spacing",
    "resample_to_grid",
    "overlap_fraction",
]

# Destination voxels per map_coordinates call: three float64 coordinate arrays of this
# many points are 24 MiB, whatever the size of the target grid.
_BLOCK_VOXELS = 1 << 20
# Points this close (in source voxels) outside the field of view still count as inside:
# world -> voxel round trips are not exact in floating point.
_FOV_TOLERANCE = 1e-6
# gzip level of written .nii.gz files (nibabel's own default): fast, and image noise
# compresses poorly at any level.
_GZIP_LEVEL = 1


# --------------------------------------------------------------------------------------
# Checking helpers
# --------------------------------------------------------------------------------------


def _check_affine(affine: ArrayLike, what: str) -> NDArray[np.float64]:
    """A finite, invertible 4x4 affine with last row (0, 0, 0, 1), as float64."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise CohortError(f"{what}: expected a 4x4 affine, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise CohortError(f"{what}: expected a finite affine, got NaN or inf in\n{a}")
    if not np.allclose(a[3], [0.0, 0.0, 0.0, 1.0]):
        raise CohortError(f"{what}: expected the affine's last row (0, 0, 0, 1), got {a[3]}")
    if abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise CohortError(f"{what}: expected an invertible affine, got a singular one\n{a}")
    return a


def _check_shape(shape: tuple[int, ...] | ArrayLike, what: str) -> tuple[int, int, int]:
    s = tuple(int(n) for n in np.asarray(shape).ravel())
    if len(s) != 3 or min(s) < 1:
        raise CohortError(f"{what}: expected a 3D shape of positive sizes, got {s}")
    return s  # type: ignore[return-value]


def _cast(array: NDArray, dtype: np.dtype, what: str) -> NDArray:
    """Cast for storage; float to integer rounds, out-of-range values are an error."""
    if array.dtype == dtype:
        return array
    if np.issubdtype(dtype, np.integer):
        if array.dtype == np.bool_:
            return array.astype(dtype)
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise CohortError(f"{what}: expected numeric data, got dtype {array.dtype}")
        if array.size:
            if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
                raise CohortError(f"{what}: expected finite values for dtype {dtype}, got NaN/inf")
            lo, hi = array.min(), array.max()
            info = np.iinfo(dtype)
            if lo < info.min - 0.5 or hi > info.max + 0.5:
                raise CohortError(
                    f"{what}: values {lo}..{hi} do not fit dtype {dtype} "
                    f"({info.min}..{info.max}); choose a wider dtype"
                )
        if np.issubdtype(array.dtype, np.floating):
            return np.rint(array).astype(dtype)
        return array.astype(dtype)
    if np.issubdtype(dtype, np.floating):
        return array.astype(dtype)
    raise CohortError(f"{what}: expected an integer or floating dtype to store, got {dtype}")


def _default_dtype(array: NDArray, what: str) -> np.dtype:
    """float -> float32, bool -> uint8, integers kept (64-bit narrowed to int32)."""
    if np.issubdtype(array.dtype, np.floating):
        return np.dtype(np.float32)
    if array.dtype == np.bool_:
        return np.dtype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        if array.dtype.itemsize < 8:
            return array.dtype
        # nibabel refuses 64-bit integers without an explicit dtype (few readers support
        # them); int32 holds every label map and HU value.
        return np.dtype(np.int32)
    raise CohortError(f"{what}: expected numeric data, got dtype {array.dtype}")


# --------------------------------------------------------------------------------------
# Input / output
# --------------------------------------------------------------------------------------


def save_nifti(
    path: str | Path,
    array: ArrayLike,
    affine: ArrayLike,
    dtype: DTypeLike | None = None,
) -> Path:
    """Write a 3D image atomically as NIfTI-1 (``.nii.gz`` or ``.nii``).

    Parameters
    ----------
    path : str or Path
        Output file, ending in ``.nii.gz`` (or ``.nii``); its parent folder is created.
    array : array_like, shape (i, j, k)
        Voxel values in NIfTI storage order (a 4th axis is allowed, e.g. channels).
    affine : array_like, shape (4, 4)
        Voxel index -> RAS+ world mm. Stored as both qform and sform (code 1, scanner
        anatomical), spatial units mm.
    dtype : dtype, optional
        Stored dtype. Default: float32 for floating input, uint8 for bool, the input's
        own integer dtype otherwise (64-bit integers narrowed to int32). Label maps
        should name theirs (``np.uint8``, ``np.uint16``). Floating data stored in an
        integer dtype are rounded to the nearest integer; values outside the dtype's
        range are an error (never wrapped).

    Returns
    -------
    Path
        ``path``. The file appears complete or not at all: the data are written to a
        temporary file in the same folder that then replaces ``path``.

    Raises
    ------
    CohortError
        Wrong dimensionality or suffix, a bad affine, values that do not fit ``dtype``.
    """
    path = Path(path)
    what = f"save_nifti {path}"
    name = path.name
    if not (name.endswith(".nii.gz") or name.endswith(".nii")):
        raise CohortError(f"{what}: expected a file name ending in .nii.gz or .nii, got {name!r}")
    data = np.asanyarray(array)
    if data.ndim not in (3, 4):
        raise CohortError(f"{what}: expected a 3D (or 4D) array, got shape {data.shape}")
    aff = _check_affine(affine, what)
    target = np.dtype(dtype) if dtype is not None else _default_dtype(data, what)
    data = _cast(data, target, what)

    img = nib.Nifti1Image(data, aff, dtype=target)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    img.header.set_xyzt_units(xyz="mm")
    raw = img.to_bytes()
    with atomic_output(path) as tmp:
        if name.endswith(".gz"):
            # mtime=0: identical data give identical files (reruns do not churn)
            with gzip.GzipFile(tmp, mode="wb", compresslevel=_GZIP_LEVEL, mtime=0) as f:
                f.write(raw)
        else:
            tmp.write_bytes(raw)
    return path


def load_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3D NIfTI image and check it.

    Parameters
    ----------
    path : str or Path
        A ``.nii`` or ``.nii.gz`` file.

    Returns
    -------
    array : ndarray, shape (i, j, k)
        Voxel values in storage order, in the stored dtype (integer label maps stay
        integer; scaled data come back as floating point). A 4D image whose 4th axis
        has length 1 is squeezed to 3D.
    affine : ndarray, shape (4, 4), float64
        Voxel index -> RAS+ world mm (nibabel's choice: the sform if set, else the qform).

    Raises
    ------
    CohortError
        The file is missing or unreadable, is not 3D, has a bad affine, or holds NaN/inf.
    """
    path = Path(path)
    if not path.is_file():
        raise CohortError(f"{path}: image file not found (expected a NIfTI file)")
    try:
        img = nib.load(str(path))
        if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
            raise TypeError(f"not a NIfTI image but {type(img).__name__}")
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many kinds (ImageFileError, EOFError, zlib)
        raise CohortError(
            f"{path}: unreadable image (expected a NIfTI file): {type(exc).__name__}: {exc}"
        ) from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CohortError(f"{path}: expected a 3D image, got shape {data.shape}")
    if np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.complexfloating):
        finite = np.isfinite(data)
        if not finite.all():
            bad = np.argwhere(~finite)
            raise CohortError(
                f"{path}: expected finite voxel values, got {len(bad)} NaN/inf voxel(s), "
                f"first at index {tuple(int(v) for v in bad[0])}"
            )
    affine = _check_affine(img.affine, str(path))
    return data, affine


# --------------------------------------------------------------------------------------
# Grids
# --------------------------------------------------------------------------------------


def voxel_centers_world(shape: tuple[int, int, int], affine: ArrayLike) -> np.ndarray:
    """World coordinates of every voxel centre of a grid.

    Parameters
    ----------
    shape : tuple of 3 int
        Grid size ``(ni, nj, nk)``.
    affine : array_like, shape (4, 4)
        Voxel index -> RAS+ world mm.

    Returns
    -------
    ndarray, shape (ni, nj, nk, 3), float64, mm
        ``out[i, j, k] = affine @ (i, j, k, 1)``. Meant for small grids (24 bytes per
        voxel); `resample_to_grid` never builds it for a whole grid.
    """
    s = _check_shape(shape, "voxel_centers_world")
    a = _check_affine(affine, "voxel_centers_world")
    ijk = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float64) for n in s), indexing="ij"), -1)
    return ijk @ a[:3, :3].T + a[:3, 3]


def same_grid(
    shape_a: tuple[int, ...],
    affine_a: ArrayLike,
    shape_b: tuple[int, ...],
    affine_b: ArrayLike,
    atol_mm: float = 1e-3,
) -> bool:
    """Whether two grids are the same: equal shapes and affines equal within ``atol_mm``."""
    return tuple(shape_a) == tuple(shape_b) and bool(
        np.allclose(np.asarray(affine_a), np.asarray(affine_b), rtol=0.0, atol=atol_mm)
    )


def voxel_spacing(affine: ArrayLike) -> np.ndarray:
    """Voxel size along each voxel axis (mm): the column norms of the affine's 3x3 part.

    Parameters
    ----------
    affine : array_like, shape (4, 4)
        Voxel index -> RAS+ world mm.

    Returns
    -------
    ndarray, shape (3,), float64, mm
        The spacing along ``i``, ``j``, ``k`` (what nibabel's ``header.get_zooms()`` gives
        for a file written with this affine), whatever the orientation.
    """
    a = _check_affine(affine, "voxel_spacing")
    return np.linalg.norm(a[:3, :3], axis=0)


def grid_with_spacing(
    shape: tuple[int, int, int], affine: ArrayLike, spacing: ArrayLike
) -> tuple[tuple[int, int, int], np.ndarray]:
    """The grid that covers the same field of view as ``(shape, affine)`` with another
    voxel spacing, by nnU-Net's rule.

    Along each voxel axis the new size is ``round(n * s / s_new)`` (nnU-Net's
    ``compute_new_shape``, Python's ``round``, at least 1) and the new voxels tile exactly
    the old field of view, voxel edge to voxel edge, as nnU-Net's resampling
    (``skimage.transform.resize``) places them: the new spacing is ``n * s / n_new``,
    within half a new voxel over the whole axis of ``s_new``. Axis directions, their
    order and flips are kept.

    Parameters
    ----------
    shape : tuple of 3 int
        Size of the original grid ``(ni, nj, nk)``.
    affine : array_like, shape (4, 4)
        Its voxel index -> RAS+ world mm.
    spacing : array_like, shape (3,), mm
        The wanted spacing along ``i``, ``j``, ``k`` (e.g. a network's planned spacing).

    Returns
    -------
    shape : tuple of 3 int
        The new grid's size.
    affine : ndarray, shape (4, 4), float64
        Its voxel index -> world mm: new index ``i'`` is old (fractional) index
        ``(i' + 0.5) n / n_new - 0.5``.

    Raises
    ------
    CohortError
        A bad shape or affine, or a spacing that is not three positive finite numbers.

    Examples
    --------
    >>> shape, aff = grid_with_spacing((30, 40, 20), np.diag([2.0, 2.0, 3.0, 1.0]), (3, 4, 2))
    >>> shape, np.diag(aff)[:3].tolist(), aff[:3, 3].tolist()
    ((20, 20, 30), [3.0, 4.0, 2.0], [0.5, 1.0, -0.5])
    """
    s = _check_shape(shape, "grid_with_spacing")
    a = _check_affine(affine, "grid_with_spacing")
    new = np.asarray(spacing, dtype=np.float64).ravel()
    if new.shape != (3,) or not np.all(np.isfinite(new)) or np.any(new <= 0):
        raise CohortError(
            f"grid_with_spacing: expected three positive spacings (mm), got {spacing!r}"
        )
    old = np.linalg.norm(a[:3, :3], axis=0)
    n_new = tuple(max(1, int(round(float(o / t * n)))) for o, t, n in zip(old, new, s, strict=True))
    ratio = np.array(s, dtype=np.float64) / np.array(n_new, dtype=np.float64)
    to_old = np.eye(4)
    to_old[:3, :3] = np.diag(ratio)
    to_old[:3, 3] = 0.5 * ratio - 0.5
    return n_new, a @ to_old  # type: ignore[return-value]


def _world_box(shape: tuple[int, int, int], affine: NDArray) -> tuple[NDArray, NDArray]:
    """Axis-aligned world bounding box (mm) of a grid's field of view (voxel edges)."""
    edges = [(-0.5, n - 0.5) for n in shape]
    corners = np.array(list(itertools.product(*edges)), dtype=np.float64)
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    return world.min(axis=0), world.max(axis=0)


def overlap_fraction(
    src_shape: tuple[int, int, int],
    src_affine: ArrayLike,
    dst_shape: tuple[int, int, int],
    dst_affine: ArrayLike,
) -> float:
    """Fraction of the destination's bounding box that the source's bounding box covers.

    Both fields of view (voxel edges, not centres) are reduced to their axis-aligned
    bounding boxes in world space, which is exact for axis-aligned grids (flips included)
    and an approximation for oblique ones.

    Parameters
    ----------
    src_shape, dst_shape : tuple of 3 int
        Grid sizes.
    src_affine, dst_affine : array_like, shape (4, 4)
        Voxel index -> RAS+ world mm.

    Returns
    -------
    float in [0, 1]
        Volume(src box ∩ dst box) / volume(dst box).
    """
    s_lo, s_hi = _world_box(
        _check_shape(src_shape, "overlap_fraction source"),
        _check_affine(src_affine, "overlap_fraction source"),
    )
    d_lo, d_hi = _world_box(
        _check_shape(dst_shape, "overlap_fraction destination"),
        _check_affine(dst_affine, "overlap_fraction destination"),
    )
    inter = np.clip(np.minimum(s_hi, d_hi) - np.maximum(s_lo, d_lo), 0.0, None)
    return float(np.prod(inter) / np.prod(d_hi - d_lo))


# --------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------


def resample_to_grid(
    array: ArrayLike,
    src_affine: ArrayLike,
    dst_shape: tuple[int, int, int],
    dst_affine: ArrayLike,
    order: int = 1,
    fill: float = 0.0,
) -> np.ndarray:
    """Resample an image onto another grid through physical (world) space.

    Every destination voxel centre is mapped to world mm by ``dst_affine`` and back to a
    (fractional) source index by the inverse of ``src_affine``, where the source is
    interpolated with `scipy.ndimage.map_coordinates`. Any affines work: flips,
    permuted axes, different spacings, offsets, rotations. The destination is filled in
    blocks of about a million voxels, so the extra memory is bounded (about 30 MiB)
    whatever the size of the target.

    Parameters
    ----------
    array : array_like, shape (si, sj, sk)
        Source voxel values in storage order.
    src_affine : array_like, shape (4, 4)
        Source voxel index -> RAS+ world mm.
    dst_shape : tuple of 3 int
        Destination grid size ``(di, dj, dk)``.
    dst_affine : array_like, shape (4, 4)
        Destination voxel index -> RAS+ world mm.
    order : int, default 1
        Spline order: 1 (trilinear) for images, 0 (nearest neighbour) for label maps;
        2-5 are allowed (the spline coefficients are computed once for the whole source).
    fill : float, default 0.0
        Value of destination voxels outside the source field of view (e.g. -1024 for
        CT in HU). The field of view reaches half a voxel beyond the outermost source
        voxel centres; in that margin the nearest edge value is used.

    Returns
    -------
    ndarray, shape dst_shape
        ``order=0``: the source dtype (labels stay labels; ``fill`` must be a value of
        that dtype). ``order>=1``: float32, or float64 for a float64 source.
        Identical grids return a copy of the input.

    Raises
    ------
    CohortError
        Not a 3D source, bad affines or shape, an unsupported order, or a ``fill`` that
        the label dtype cannot hold.
    """
    src = np.asarray(array)
    if src.ndim != 3:
        raise CohortError(f"resample_to_grid: expected a 3D source array, got shape {src.shape}")
    a_src = _check_affine(src_affine, "resample_to_grid source")
    a_dst = _check_affine(dst_affine, "resample_to_grid destination")
    shape = _check_shape(dst_shape, "resample_to_grid destination")
    if not isinstance(order, int | np.integer) or not 0 <= order <= 5:
        raise CohortError(f"resample_to_grid: expected a spline order 0..5, got {order!r}")

    if order == 0:
        out_dtype = src.dtype
        if np.issubdtype(out_dtype, np.integer) or out_dtype == np.bool_:
            if float(fill) != np.asarray(fill).astype(out_dtype):
                raise CohortError(
                    f"resample_to_grid: fill {fill!r} is not a value of the label dtype {out_dtype}"
                )
    else:
        out_dtype = np.dtype(np.float64 if src.dtype == np.float64 else np.float32)

    if same_grid(src.shape, a_src, shape, a_dst, atol_mm=1e-6):
        return src.astype(out_dtype, copy=True)

    # map_coordinates has no bool kernel; nearest neighbour on uint8 is the same thing
    work = src.view(np.uint8) if src.dtype == np.bool_ else src
    work_dtype = work.dtype if order == 0 else out_dtype
    if order > 1:
        # the spline coefficients once, not once per block
        work = ndimage.spline_filter(work, order=order, mode="nearest", output=np.float64)

    m = np.linalg.solve(a_src, a_dst)  # destination index -> source index
    out = np.empty(shape, dtype=work_dtype)
    nj, nk = shape[1], shape[2]
    step = max(1, _BLOCK_VOXELS // (nj * nk))
    jj = np.arange(nj, dtype=np.float64)[None, :, None]
    kk = np.arange(nk, dtype=np.float64)[None, None, :]
    lo = -0.5 - _FOV_TOLERANCE
    for i0 in range(0, shape[0], step):
        ii = np.arange(i0, min(i0 + step, shape[0]), dtype=np.float64)[:, None, None]
        coords = np.stack([m[a, 0] * ii + m[a, 1] * jj + m[a, 2] * kk + m[a, 3] for a in range(3)])
        inside = np.ones(coords.shape[1:], dtype=bool)
        for a in range(3):
            hi = src.shape[a] - 0.5 + _FOV_TOLERANCE
            inside &= (coords[a] >= lo) & (coords[a] <= hi)
        block = ndimage.map_coordinates(
            work,
            coords,
            output=work_dtype,
            order=order,
            mode="nearest",
            prefilter=False,
        )
        block[~inside] = fill
        out[i0 : i0 + ii.shape[0]] = block
    if src.dtype == np.bool_:
        return out.view(np.bool_)
    return out.astype(out_dtype, copy=False)
