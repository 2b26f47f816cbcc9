"""What every part of ingest shares: its error class, an image with its grid, grid checks.

An `Image` is a voxel array in NIfTI storage order ``(i, j, k)`` with the 4x4 affine that
maps voxel indices to RAS+ world millimetres (the convention of `lamp.images`), plus a
short description of where it came from, so that every message can name the file or
the DICOM series.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lamp.errors import LampError

__all__ = [
    "IngestError",
    "Image",
    "GRID_ATOL_MM",
    "axis_spacing",
    "check_orientation",
    "orientation_difference_deg",
    "grid_alias",
]

#: Two grids whose affines agree to this (mm) are the same grid. NIfTI headers store the
#: qform as float32 quaternions: about 1e-4 mm of noise at 1 m from the origin.
GRID_ATOL_MM = 0.05

# Plausible voxel sizes (mm) of a clinical PET or CT: outside this the header is wrong
# (metres for millimetres, or a scale factor of 0/1 left in a converted file).
_MIN_SPACING_MM = 0.05
_MAX_SPACING_MM = 50.0
# Axes whose direction cosines have a dot product above this are not orthogonal: the
# grid is sheared (gantry tilt baked into the affine) and no slice-wise tool handles it.
_MAX_AXIS_COS = 1e-3


class IngestError(LampError):
    """An input to ``lamp ingest`` is missing, unreadable or implausible.

    The message names the file (or DICOM series and tag), what was expected and what came,
    and where it helps what to do about it.
    """


@dataclass(frozen=True)
class Image:
    """A 3D image on its own grid.

    Attributes
    ----------
    array : ndarray, shape (i, j, k)
        Voxel values in NIfTI storage order (float for images, integers for label maps).
    affine : ndarray, shape (4, 4), float64
        Voxel index -> RAS+ world mm.
    source : str
        Where the image came from (a file or a DICOM series), for messages.
    """

    array: np.ndarray
    affine: np.ndarray
    source: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]


def axis_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size along each array axis, shape (3,), mm (column norms of the affine)."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def check_orientation(affine: np.ndarray, what: str) -> None:
    """Refuse a grid whose axes are not orthogonal or whose voxel sizes are implausible.

    Parameters
    ----------
    affine : ndarray, shape (4, 4)
        Voxel index -> RAS+ world mm.
    what : str
        The image, for the message.

    Raises
    ------
    IngestError
        Voxel size outside 0.05-50 mm, or two axes not orthogonal (a sheared grid, as
        left by a gantry-tilted CT converted without tilt correction).
    """
    a = np.asarray(affine, dtype=np.float64)
    spacing = axis_spacing(a)
    if np.any(spacing < _MIN_SPACING_MM) or np.any(spacing > _MAX_SPACING_MM):
        raise IngestError(
            f"{what}: expected voxel sizes of {_MIN_SPACING_MM:g}-{_MAX_SPACING_MM:g} mm, "
            f"got {np.round(spacing, 4).tolist()} mm; the header's affine is not in mm"
        )
    unit = a[:3, :3] / spacing
    gram = np.abs(unit.T @ unit - np.eye(3))
    if gram.max() > _MAX_AXIS_COS:
        angle = float(np.degrees(np.arcsin(min(1.0, gram.max()))))
        raise IngestError(
            f"{what}: expected orthogonal voxel axes, got axes {angle:.2f} degrees off "
            "orthogonal (a sheared grid, e.g. a gantry-tilted CT); resample it to an "
            "orthogonal grid first (e.g. dcm2niix corrects gantry tilt)"
        )


def orientation_difference_deg(affine_a: np.ndarray, affine_b: np.ndarray) -> float:
    """Largest angle (degrees) between an axis of grid ``a`` and the nearest axis of ``b``.

    Axis order and direction do not count: a grid and its flipped or transposed copy
    differ by 0 degrees. Both grids must have orthogonal axes (`check_orientation`).
    """
    ua = np.asarray(affine_a, dtype=np.float64)[:3, :3]
    ub = np.asarray(affine_b, dtype=np.float64)[:3, :3]
    ua = ua / np.linalg.norm(ua, axis=0)
    ub = ub / np.linalg.norm(ub, axis=0)
    best_cos = np.abs(ua.T @ ub).max(axis=1)
    return float(np.degrees(np.arccos(np.clip(best_cos.min(), -1.0, 1.0))))


def grid_alias(
    shape: tuple[int, ...],
    affine: np.ndarray,
    ref_shape: tuple[int, ...],
    ref_affine: np.ndarray,
    atol_mm: float = GRID_ATOL_MM,
) -> bool:
    """Whether two grids hold exactly the same voxel centres, in any axis order.

    True when the grids are equal, or one is the other with axes permuted or flipped
    (as different converters write the same DICOM series). Nearest-neighbour resampling
    between such grids moves every voxel to a voxel centre and loses nothing.
    """
    if len(shape) != 3 or len(ref_shape) != 3:
        return False
    a = np.asarray(affine, dtype=np.float64)
    r = np.asarray(ref_affine, dtype=np.float64)
    try:
        m = np.linalg.solve(a, r)  # ref index -> index of this grid
    except np.linalg.LinAlgError:
        return False
    rot = m[:3, :3]
    perm = np.rint(rot)
    # tolerance in voxels of this grid: atol_mm over the smallest voxel
    tol = atol_mm / max(float(axis_spacing(a).min()), 1e-9)
    if np.abs(rot - perm).max() > tol or not np.all(np.abs(perm).sum(axis=0) == 1):
        return False
    if not np.all(np.abs(perm).sum(axis=1) == 1):
        return False
    corners = np.array(
        [[0, 0, 0], [ref_shape[0] - 1, ref_shape[1] - 1, ref_shape[2] - 1]], dtype=np.float64
    )
    mapped = corners @ rot.T + m[:3, 3]
    if np.abs(mapped - np.rint(mapped)).max() > tol:
        return False
    lo, hi = np.rint(mapped).min(axis=0), np.rint(mapped).max(axis=0)
    return bool(np.all(lo == 0) and np.all(hi == np.asarray(shape) - 1))
