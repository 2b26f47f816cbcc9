"""One patient's images onto the PET grid, checked: what a case of the cohort holds.

The PET grid is the reference (DESIGN.md, "Files between stages"). The CT is resampled
onto it through physical coordinates (trilinear, air outside the CT's field of view)
after checking that both grids are sane, that their axes agree and that the CT covers
the PET. Masks must lie on the PET grid or on the CT grid (in any axis order), since a
mask is drawn on one of the two scans; they are moved onto the PET grid by nearest
neighbour. A binary lesion mask becomes lesion instances (connected components).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from lamp.anatomy import TOTAL_IDS
from lamp.images import overlap_fraction, resample_to_grid
from lamp.ingest.common import (
    Image,
    IngestError,
    check_orientation,
    grid_alias,
    orientation_difference_deg,
)

__all__ = [
    "CT_FILL_HU",
    "MIN_CT_PET_OVERLAP",
    "MAX_ORIENTATION_DIFFERENCE_DEG",
    "LIVER_SUV_RANGE",
    "MAX_SUV",
    "PreparedCase",
    "check_pet_values",
    "check_ct_values",
    "lesion_instances",
    "liver_suv_check",
    "prepare_case",
]

#: CT value (HU) of PET voxels outside the CT field of view: air.
CT_FILL_HU = -1024.0
#: Minimum fraction of the PET field of view the CT must cover (as the nnU-Net export).
MIN_CT_PET_OVERLAP = 0.5
#: PET and CT axes further apart than this (degrees) are not the same study's frame.
MAX_ORIENTATION_DIFFERENCE_DEG = 5.0
#: Expected mean liver SUVbw of an FDG scan at ~60 min (EANM/PERCIST reference range).
LIVER_SUV_RANGE: tuple[float, float] = (1.3, 3.0)
#: No SUV is this high (bladder reaches ~100); above it the PET is in Bq/ml or counts.
MAX_SUV = 1000.0
# HU: a whole-body CT always holds air (about -1000 HU) around the body; a minimum above
# this means stored values without RescaleIntercept, or not a CT in HU.
_MAX_CT_MIN_HU = -500.0
_MAX_CT_HU = 40000.0
# Lesion instances: 18-connectivity, as the autoPET metrics (DESIGN.md) count components.
_STRUCTURE_18 = ndimage.generate_binary_structure(3, 2)
_MIN_LIVER_VOXELS = 10


@dataclass
class PreparedCase:
    """A case ready to be written: every image on the PET grid.

    Attributes
    ----------
    affine : ndarray, shape (4, 4)
        The PET grid (voxel -> RAS+ mm).
    pet : ndarray, shape (i, j, k), float32
        SUVbw (or SUL with ``--sul``), g/ml.
    ct : ndarray, shape (i, j, k), int16
        HU, resampled onto the PET grid (air outside the CT's field of view).
    organs : ndarray of uint8 or None
        TotalSegmentator 'total' ids.
    lesions : ndarray of uint16 or None
        Lesion instances 1..J.
    n_lesions : int or None
    liver_suv_mean : float or None
        Mean SUVbw in the liver (before any SUL conversion).
    warnings, notes : list of str
    """

    affine: np.ndarray
    pet: np.ndarray
    ct: np.ndarray
    organs: np.ndarray | None = None
    lesions: np.ndarray | None = None
    n_lesions: int | None = None
    liver_suv_mean: float | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_pet_values(pet: Image) -> None:
    """Refuse a PET that cannot be SUV: all zero, or values of activity, not SUV.

    Raises
    ------
    IngestError
        No positive voxel, or a maximum above `MAX_SUV` (Bq/ml or counts, not SUV).
    """
    hi = float(np.max(pet.array)) if pet.array.size else 0.0
    if hi <= 0:
        raise IngestError(
            f"{pet.source}: the PET holds no positive value (max {hi:g}); expected SUV"
        )
    if hi > MAX_SUV:
        raise IngestError(
            f"{pet.source}: PET maximum {hi:.4g} is not an SUV (expected at most {MAX_SUV:g} "
            "g/ml); the image looks like activity concentration (Bq/ml) or counts: convert "
            "it to SUVbw, or ingest the DICOM series (--layout dicom) to have it converted"
        )


def check_ct_values(ct: Image) -> None:
    """Refuse a CT that is not in HU (no air, or absurd values).

    Raises
    ------
    IngestError
        A minimum above -500 HU (no air: stored values without ``RescaleIntercept``, or
        not a CT), or a maximum above 40000 HU.
    """
    lo, hi = float(np.min(ct.array)), float(np.max(ct.array))
    if lo > _MAX_CT_MIN_HU:
        raise IngestError(
            f"{ct.source}: CT minimum {lo:g} HU; expected air (about -1000 HU) around the "
            "body: the values are not HU (stored values without RescaleIntercept, e.g. "
            "HU + 1024?)"
        )
    if hi > _MAX_CT_HU:
        raise IngestError(f"{ct.source}: CT maximum {hi:g} HU; expected at most {_MAX_CT_HU:g} HU")


def lesion_instances(mask: np.ndarray, what: str) -> tuple[np.ndarray, int, str]:
    """Lesion instances 1..J from a lesion mask.

    A binary mask (values 0 and one other value, e.g. 1 or 255) becomes connected
    components (18-connectivity) numbered 1..J; a mask with several labels is taken as
    instances and kept as it is (ids may have gaps).

    Parameters
    ----------
    mask : ndarray of int, shape (i, j, k)
    what : str
        The file, for messages.

    Returns
    -------
    instances : ndarray of uint16, shape (i, j, k)
    n : int
        Number of lesions (distinct non-zero ids; 0 for an empty mask).
    how : str
        ``"components"``, ``"instances"`` or ``"empty"``.

    Raises
    ------
    IngestError
        Fractional or negative labels, or ids above 65535.
    """
    arr = _as_labels(mask, what)
    values = np.unique(arr)
    values = values[values != 0]
    if values.size == 0:
        return np.zeros(arr.shape, dtype=np.uint16), 0, "empty"
    if values.size == 1:
        labels, n = ndimage.label(arr > 0, structure=_STRUCTURE_18)
        how = "components"
    else:
        # ids kept as they are: they may link to a lesion table, and an id may be missing
        # (a lesion too small to cover a voxel of this grid)
        labels, n = arr, int(values.size)
        how = "instances"
    if int(labels.max()) > np.iinfo(np.uint16).max:
        raise IngestError(
            f"{what}: lesion ids up to {int(labels.max())}; at most 65535 can be stored"
        )
    return labels.astype(np.uint16), int(n), how


def liver_suv_check(
    pet_suv: np.ndarray, organs: np.ndarray | None, bounds: tuple[float, float] = LIVER_SUV_RANGE
) -> tuple[float | None, str | None, str | None]:
    """Mean SUVbw in the liver and a warning when it is outside the expected range.

    The liver mask (TotalSegmentator ``liver``) is eroded by one voxel when enough of it
    remains, so that partial-volume voxels at its edge do not pull the mean down.

    Parameters
    ----------
    pet_suv : ndarray, shape (i, j, k)
        SUVbw on the PET grid, g/ml.
    organs : ndarray of int or None
        'total' ids on the PET grid.
    bounds : (float, float)
        Expected range of the mean (default 1.3-3.0 g/ml).

    Returns
    -------
    mean : float or None
        None when the check could not be made.
    warning : str or None
        Set when the mean is outside ``bounds``.
    note : str or None
        Why the check was skipped.
    """
    if organs is None:
        return None, None, "liver SUV check skipped: no organ mask"
    liver = organs == TOTAL_IDS["liver"]
    if np.count_nonzero(liver) < _MIN_LIVER_VOXELS:
        return None, None, "liver SUV check skipped: no liver in the organ mask"
    core = ndimage.binary_erosion(liver)
    if np.count_nonzero(core) >= _MIN_LIVER_VOXELS:
        liver = core
    mean = float(np.mean(pet_suv[liver], dtype=np.float64))
    lo, hi = bounds
    if lo <= mean <= hi:
        return mean, None, None
    return (
        mean,
        f"mean liver SUV {mean:.2f} is outside the expected {lo:.1f}-{hi:.1f} for FDG at about "
        "60 min: check the patient's weight, the injected dose and its unit, the injection "
        "and scan times, and the PET units; the SUVs of this patient may be wrong",
        None,
    )


def _on_pet_grid(mask: Image, pet: Image, ct: Image, kind: str) -> np.ndarray:
    """A mask on the PET grid or on the CT grid (any axis order) moved onto the PET grid."""
    on_pet = grid_alias(mask.shape, mask.affine, pet.shape, pet.affine)
    if not (on_pet or grid_alias(mask.shape, mask.affine, ct.shape, ct.affine)):
        raise IngestError(
            f"{kind} {mask.source}: its grid (shape {mask.shape}) is neither the PET's "
            f"(shape {pet.shape}) nor the CT's (shape {ct.shape}); expected the mask on "
            f"the grid of the scan it was drawn on\n  mask affine:\n{np.round(mask.affine, 3)}"
            f"\n  PET affine:\n{np.round(pet.affine, 3)}"
        )
    labels = _as_labels(mask.array, f"{kind} {mask.source}")
    if on_pet and np.allclose(mask.affine, pet.affine, atol=1e-6):
        return labels
    return resample_to_grid(labels, mask.affine, pet.shape, pet.affine, order=0, fill=0)


def _as_labels(array: np.ndarray, what: str) -> np.ndarray:
    """Integer labels >= 0 (whole-number floats, as some tools store masks, converted)."""
    arr = np.asarray(array)
    if arr.dtype.kind == "b":
        return arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        if np.any(arr != np.round(arr)):
            raise IngestError(f"{what}: expected integer labels, got fractional values")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iu":
        raise IngestError(f"{what}: expected integer labels, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise IngestError(f"{what}: expected labels >= 0, got {int(arr.min())}")
    return arr


def prepare_case(
    pet: Image, ct: Image, organs: Image | None = None, lesions: Image | None = None
) -> PreparedCase:
    """Check a patient's images and put them all on the PET grid.

    Parameters
    ----------
    pet : Image
        SUVbw, g/ml (its grid becomes the case's grid).
    ct : Image
        HU, on any grid.
    organs : Image, optional
        TotalSegmentator 'total' ids on the PET or the CT grid.
    lesions : Image, optional
        A lesion mask (binary or instances) on the PET or the CT grid.

    Returns
    -------
    PreparedCase

    Raises
    ------
    IngestError
        A PET that is not SUV, a CT not in HU, a sheared grid or implausible voxel sizes,
        PET and CT axes more than 5 degrees apart, a CT covering less than half of the
        PET's field of view, a mask on neither grid, non-integer mask labels.
    """
    notes: list[str] = []
    warnings: list[str] = []
    check_orientation(pet.affine, f"PET {pet.source}")
    check_orientation(ct.affine, f"CT {ct.source}")
    check_pet_values(pet)
    check_ct_values(ct)
    angle = orientation_difference_deg(pet.affine, ct.affine)
    if angle > MAX_ORIENTATION_DIFFERENCE_DEG:
        raise IngestError(
            f"CT {ct.source}: its axes are {angle:.1f} degrees off the PET's ({pet.source}); "
            "expected the PET and CT of one PET/CT study (same orientation); check the "
            "files belong together and that the headers' orientations are right"
        )
    frac = overlap_fraction(ct.shape, ct.affine, pet.shape, pet.affine)
    if frac < MIN_CT_PET_OVERLAP:
        raise IngestError(
            f"CT {ct.source}: covers {frac:.0%} of the PET's field of view ({pet.source}); "
            f"expected at least {MIN_CT_PET_OVERLAP:.0%}: the two scans do not overlap "
            "(different studies, or a wrong origin in a header)"
        )
    if frac < 0.999:
        notes.append(f"the CT covers {frac:.1%} of the PET field of view (air elsewhere)")
    ct_on_pet = resample_to_grid(
        ct.array.astype(np.float32, copy=False),
        ct.affine,
        pet.shape,
        pet.affine,
        order=1,
        fill=CT_FILL_HU,
    )
    info = np.iinfo(np.int16)
    ct_int = np.clip(np.rint(ct_on_pet), info.min, info.max).astype(np.int16)

    organ_map = None
    if organs is not None:
        organ_map = _on_pet_grid(organs, pet, ct, "organ mask").astype(np.uint8)
    lesion_map, n_lesions = None, None
    if lesions is not None:
        on_pet = _on_pet_grid(lesions, pet, ct, "lesion mask")
        lesion_map, n_lesions, how = lesion_instances(on_pet, f"lesion mask {lesions.source}")
        if how == "empty":
            warnings.append(
                f"lesion mask {lesions.source} is empty (no lesion voxel): the patient is kept "
                "with no reference lesions; check that the right file was given"
            )
        else:
            notes.append(f"{n_lesions} reference lesion(s) ({how})")
    mean, warning, note = liver_suv_check(pet.array, organ_map)
    if warning:
        warnings.append(warning)
    if note:
        notes.append(note)
    return PreparedCase(
        affine=pet.affine,
        pet=pet.array.astype(np.float32, copy=False),
        ct=ct_int,
        organs=organ_map,
        lesions=lesion_map,
        n_lesions=n_lesions,
        liver_suv_mean=mean,
        warnings=warnings,
        notes=notes,
    )
