"""Lesion instances: the connected components of a binary lesion mask.

The segmentation network predicts one binary lesion mask per patient; the prognosis stage
needs individual lesions (paper §2.1-2.2: one feature vector per lesion). A lesion is a
connected component of the mask. The connectivity is the autoPET challenge's choice [1]_,
18 (voxels sharing a face or an edge are neighbours, voxels sharing only a corner are not),
so that the lesions of the prognosis stage are the same objects that the segmentation
metrics (`lamp.segmentation.metrics`) count. 6 and 26 are allowed for sensitivity checks.

Instances are numbered ``1..J`` in a deterministic order: by **descending volume**, ties
broken by the **first voxel** of the component in C (row-major) order, i.e. the component
whose lexicographically smallest ``(i, j, k)`` index comes first. Lesion 1 is therefore
always the largest lesion, whatever the labelling order of the connected-components
library, and the same mask always gives the same numbering.

References
----------
.. [1] Gatidis S, Früh M, Fabritius MP, et al. Results from the autoPET challenge on
   fully automated lesion segmentation in oncologic PET/CT imaging. Nature Machine
   Intelligence 2024;6:1396-1405. Evaluation: https://autopet.grand-challenge.org/Evaluation/
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cc3d
import numpy as np
from numpy.typing import ArrayLike

from lamp.errors import LampError

__all__ = [
    "AUTOPET_CONNECTIVITY",
    "CONNECTIVITIES",
    "MAX_INSTANCES",
    "InstanceError",
    "check_binary_mask",
    "check_connectivity",
    "voxel_volume_ml",
    "connected_components",
    "lesion_instances",
    "relabel_sequential",
]

#: Connectivity of the autoPET challenge evaluation (faces + edges).
AUTOPET_CONNECTIVITY = 18
#: The 3D neighbourhoods cc3d supports: faces (6), + edges (18), + corners (26).
CONNECTIVITIES: tuple[int, ...] = (6, 18, 26)
#: Most instances a uint16 instance map can number.
MAX_INSTANCES = int(np.iinfo(np.uint16).max)
# Distinct offending values an error message lists.
_MAX_SHOWN = 10


class InstanceError(LampError):
    """A lesion mask, instance map or instance setting is invalid."""


# --------------------------------------------------------------------------------------
# Checking helpers
# --------------------------------------------------------------------------------------


def _show(values: np.ndarray) -> str:
    distinct = np.unique(values)
    shown = ", ".join(f"{v:g}" for v in distinct[:_MAX_SHOWN].tolist())
    more = f", ... ({distinct.size} distinct)" if distinct.size > _MAX_SHOWN else ""
    return f"[{shown}{more}]"


def check_binary_mask(mask: ArrayLike, what: str = "mask") -> np.ndarray:
    """Return a 3D binary mask as a bool array, or raise `InstanceError`.

    Parameters
    ----------
    mask : array_like, shape (i, j, k)
        bool, or numbers that are all 0 or 1 (integer or float, e.g. as read from NIfTI).
    what : str
        Name of the input for error messages (``"pred_mask"``, a file path, ...).

    Returns
    -------
    ndarray of bool, shape (i, j, k)
        The mask itself when it is already bool (no copy).

    Raises
    ------
    InstanceError
        Not 3D, not numeric, or values other than 0 and 1. An instance map (1..J) is not
        a binary mask: pass ``labels > 0``.
    """
    arr = np.asarray(mask)
    if arr.ndim != 3:
        raise InstanceError(f"{what}: expected a 3D mask (i, j, k), got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    if arr.dtype.kind not in "iuf":
        raise InstanceError(f"{what}: expected a bool or 0/1 numeric mask, got dtype {arr.dtype}")
    # NaN fails both comparisons and is reported as a bad value
    bad = ~((arr == 0) | (arr == 1))
    if bad.any():
        raise InstanceError(
            f"{what}: expected a binary mask (values 0 and 1 only), got values "
            f"{_show(arr[bad])}; for an instance or label map pass `labels > 0`"
        )
    return arr == 1


def check_connectivity(connectivity: int) -> int:
    """Return ``connectivity`` if it is 6, 18 or 26, else raise `InstanceError`."""
    if isinstance(connectivity, bool) or connectivity not in CONNECTIVITIES:
        raise InstanceError(
            f"connectivity: expected one of {CONNECTIVITIES} (6 faces, 18 + edges, "
            f"26 + corners; autoPET uses {AUTOPET_CONNECTIVITY}), got {connectivity!r}"
        )
    return int(connectivity)


def voxel_volume_ml(
    voxel_ml: float | None = None, spacing: Sequence[float] | None = None
) -> float | None:
    """The volume of one voxel in ml, from ``voxel_ml`` or from ``spacing`` (mm).

    Parameters
    ----------
    voxel_ml : float, optional
        Voxel volume in ml (= cm^3), > 0.
    spacing : sequence of 3 float, optional
        Voxel spacing in mm, each > 0; the volume is their product / 1000.

    Returns
    -------
    float or None
        None when neither is given.

    Raises
    ------
    InstanceError
        Both given, or a value that is not finite and positive.
    """
    if voxel_ml is not None and spacing is not None:
        raise InstanceError("give the voxel size as voxel_ml or as spacing (mm), not both")
    if spacing is not None:
        s = np.asarray(spacing, dtype=np.float64)
        if s.shape != (3,) or not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise InstanceError(
                f"spacing: expected 3 finite positive voxel sizes in mm, got {spacing!r}"
            )
        return float(np.prod(s)) / 1000.0
    if voxel_ml is None:
        return None
    v = float(voxel_ml)
    if not math.isfinite(v) or v <= 0:
        raise InstanceError(f"voxel_ml: expected a finite positive volume in ml, got {voxel_ml!r}")
    return v


# --------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------


def connected_components(
    mask: np.ndarray, connectivity: int = AUTOPET_CONNECTIVITY
) -> tuple[np.ndarray, int]:
    """Connected components of a checked bool mask, in cc3d's own numbering.

    Parameters
    ----------
    mask : ndarray of bool, shape (i, j, k)
        As returned by `check_binary_mask`.
    connectivity : {6, 18, 26}, default 18

    Returns
    -------
    labels : ndarray of unsigned int, shape (i, j, k)
        0 = background, components ``1..n`` in an order that is cc3d's business (use
        `lesion_instances` for a documented order).
    n : int
        Number of components.
    """
    labels, n = cc3d.connected_components(
        mask, connectivity=check_connectivity(connectivity), return_N=True
    )
    return labels, int(n)


def lesion_instances(
    mask: ArrayLike,
    voxel_ml: float | None = None,
    *,
    spacing: Sequence[float] | None = None,
    connectivity: int = AUTOPET_CONNECTIVITY,
    min_volume_ml: float = 0.0,
) -> np.ndarray:
    """Number the lesions (connected components) of a binary mask ``1..J``.

    Parameters
    ----------
    mask : array_like, shape (i, j, k)
        Binary lesion mask: bool, or numbers that are all 0 or 1.
    voxel_ml : float, optional
        Voxel volume in ml. Needed (or ``spacing``) only when ``min_volume_ml > 0``.
    spacing : sequence of 3 float, optional, keyword-only
        Voxel spacing in mm, instead of ``voxel_ml``.
    connectivity : {6, 18, 26}, default 18
        Neighbourhood of a voxel: 6 (faces), 18 (faces + edges, the autoPET choice [1]_),
        26 (faces + edges + corners).
    min_volume_ml : float, default 0.0
        Components smaller than this (in ml) are removed (set to 0) before numbering.
        **The default keeps every component**, single voxels included: the autoPET
        metrics count every component of the raw mask, and the prognosis stage should see
        the lesions the metrics judged. Removing small components is a post-processing
        choice (e.g. 0.1 ml against isolated noise voxels) that a caller makes explicitly
        and records in its configuration.

    Returns
    -------
    ndarray of uint16, shape (i, j, k)
        0 = background, lesions ``1..J`` ordered by descending voxel count; equal counts
        are ordered by the C-order (row-major) flat index of the component's first voxel,
        smallest first. J = 0 for an empty mask.

    Raises
    ------
    InstanceError
        Non-3D or non-binary mask, a connectivity other than 6/18/26, a negative or
        non-finite ``min_volume_ml``, ``min_volume_ml > 0`` without a voxel size, or more
        than 65535 lesions (which a uint16 map cannot hold).

    Examples
    --------
    >>> m = np.zeros((4, 4, 4), bool); m[0, 0, 0] = True; m[2:4, 2:4, 2:4] = True
    >>> inst = lesion_instances(m)
    >>> int(inst[3, 3, 3]), int(inst[0, 0, 0])
    (1, 2)
    """
    binary = check_binary_mask(mask)
    check_connectivity(connectivity)
    min_ml = float(min_volume_ml)
    if not math.isfinite(min_ml) or min_ml < 0:
        raise InstanceError(
            f"min_volume_ml: expected a finite volume >= 0 ml, got {min_volume_ml!r}"
        )
    vox_ml = voxel_volume_ml(voxel_ml, spacing)
    if min_ml > 0 and vox_ml is None:
        raise InstanceError(
            f"min_volume_ml={min_ml:g} needs the voxel size: give voxel_ml or spacing (mm)"
        )

    labels, n = connected_components(binary, connectivity)
    if n == 0:
        return np.zeros(binary.shape, dtype=np.uint16)

    # Only the foreground voxels are visited: flatnonzero is sorted, so the first
    # occurrence of a label in `fg` is the component's first voxel in C order.
    flat = labels.reshape(-1)
    fg_index = np.flatnonzero(flat)
    fg = flat[fg_index]
    counts = np.bincount(fg, minlength=n + 1)[1:]
    ids, first_pos = np.unique(fg, return_index=True)
    first = np.empty(n, dtype=np.int64)
    first[ids - 1] = fg_index[first_pos]

    keep = np.ones(n, dtype=bool)
    if min_ml > 0:
        keep = counts * vox_ml >= min_ml  # type: ignore[operator]
    kept = np.flatnonzero(keep)
    if kept.size > MAX_INSTANCES:
        raise InstanceError(
            f"mask: {kept.size} lesions (connected components) do not fit a uint16 instance "
            f"map (at most {MAX_INSTANCES}); is this really a lesion mask?"
        )
    # lexsort: the last key is the primary one
    order = kept[np.lexsort((first[kept], -counts[kept]))]
    lut = np.zeros(n + 1, dtype=np.uint16)
    lut[order + 1] = np.arange(1, order.size + 1, dtype=np.uint16)
    return lut[labels]


def relabel_sequential(instances: ArrayLike) -> np.ndarray:
    """Renumber an instance map so that its ids are ``1..J`` without gaps.

    The relative order of the ids is kept (the smallest id present becomes 1, the next
    2, ...), so a map numbered by `lesion_instances` and then thinned out keeps its
    largest-first order.

    Parameters
    ----------
    instances : array_like of int, shape (i, j, k)
        0 = background, instance ids > 0 (any gaps). Whole-number floats are accepted.

    Returns
    -------
    ndarray of uint16, shape (i, j, k)

    Raises
    ------
    InstanceError
        Not 3D, not integer-valued, negative ids, or more than 65535 distinct instances.
    """
    arr = np.asarray(instances)
    if arr.ndim != 3:
        raise InstanceError(f"instances: expected a 3D instance map, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr.astype(np.uint16)
    if arr.dtype.kind not in "iuf":
        raise InstanceError(f"instances: expected integer instance ids, got dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            raise InstanceError(
                f"instances: expected whole-number instance ids, got {_show(arr[bad])}"
            )
    if arr.size and arr.min() < 0:
        raise InstanceError(f"instances: expected ids >= 0, got {_show(arr[arr < 0])}")
    # only the foreground is sorted: a whole-body map is mostly background
    foreground = arr != 0
    values = arr[foreground]
    ids = np.unique(values)
    if ids.size > MAX_INSTANCES:
        raise InstanceError(
            f"instances: {ids.size} distinct instances do not fit uint16 (at most {MAX_INSTANCES})"
        )
    out = np.zeros(arr.shape, dtype=np.uint16)
    out[foreground] = np.searchsorted(ids, values) + 1
    return out
