"""Whole-body PET/CT (and lesion masks) resampled to one fixed-size array per patient.

The deep baselines of Table 1 that take the whole scan as input (Guo2021, Liu2022) need
every patient on the same array size, as their papers' networks did ("whole-body PET/CT
resampled to a fixed-size input", LAMP paper §3). This module builds that input once per
patient and caches it; the networks only read the cache.

The fixed grid (a choice; the sources do not give theirs)
---------------------------------------------------------
* The destination grid is the axis-aligned world box (RAS+ mm) of the PET field of view,
  cut into ``size = (nx, ny, nz)`` voxels: axis 0 runs along world x (right-left),
  axis 1 along y (posterior-anterior), axis 2 along z (feet-head), each in increasing
  world coordinate whatever the storage order and flips of the PET. Each axis is
  stretched to fit (the aspect ratio is not kept: a tall and a short patient both fill
  ``nz`` voxels), as a plain "resize to a fixed input" does. The default ``(32, 32, 64)``
  gives voxels of about 18 x 12 x 19 mm on the synthetic ``small`` scans (576 x 384 x
  1224 mm): coarse, but it is what a CPU can train a 3D network on in minutes. Larger
  sizes (e.g. ``(64, 64, 128)``) work unchanged on a GPU.
* Resampling goes through physical space (`lamp.images.resample_to_grid`). The CT is first
  resampled from its own grid onto the PET grid (trilinear, air outside its field of
  view), as every other stage does; then PET, CT and the lesion mask are low-pass
  filtered before the trilinear downsampling (a Gaussian of sigma ``(f - 1) / 2`` source
  voxels for a downsampling factor ``f``, scikit-image's anti-aliasing rule), so that a
  small hot lesion between destination voxel centres is averaged in, not skipped.
* Intensities: PET as ``clip(SUV, 0, 20) / 10`` (`PET_SUV_CLIP`, `PET_SUV_SCALE`),
  CT as ``clip(HU, -1000, 1000) / 1000`` (`CT_HU_CLIP`, `CT_HU_SCALE`): fixed scales, the
  same for every patient, so that SUV keeps its meaning across patients (no per-patient
  z-scoring). Clipping comes after the averaging.
* The lesion mask (reference instances, "manual", or the network's, "automatic", see
  `lamp.baselines.lesions.mask_path`) becomes the fraction of each fixed-size voxel
  covered by lesion, in [0, 1] (the same filter and interpolation applied to the binary
  mask): a soft label that keeps lesions smaller than a voxel visible.

Cache layout (resumable; every file written atomically)::

    WORK/baselines/volumes_<nx>x<ny>x<nz>/<patient_id>.npz              pet, ct, affine, ...
    WORK/baselines/volumes_<nx>x<ny>x<nz>/lesions_<masks>/<patient_id>.npz   lesion

A cached file is reused when it is newer than every input image it was made from, and
rebuilt otherwise.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from lamp.baselines.common import BaselineError
from lamp.baselines.lesions import MASKS, mask_path
from lamp.cohort import CohortError, atomic_output, case_path
from lamp.images import load_nifti, resample_to_grid, same_grid

__all__ = [
    "DEFAULT_SIZE",
    "PET_SUV_CLIP",
    "PET_SUV_SCALE",
    "CT_HU_CLIP",
    "CT_HU_SCALE",
    "Volumes",
    "check_size",
    "volume_dir",
    "fixed_grid",
    "case_volume",
    "case_lesion_volume",
    "cohort_volumes",
    "torch_threads",
]

#: Default fixed size (x, y, z voxels) of the deep baselines' input.
DEFAULT_SIZE: tuple[int, int, int] = (32, 32, 64)
#: SUV range kept, and the divisor: PET inputs lie in [0, 2].
PET_SUV_CLIP: tuple[float, float] = (0.0, 20.0)
PET_SUV_SCALE = 10.0
#: HU range kept, and the divisor: CT inputs lie in [-1, 1].
CT_HU_CLIP: tuple[float, float] = (-1000.0, 1000.0)
CT_HU_SCALE = 1000.0
#: CT value outside its field of view (air).
_CT_FILL = -1024.0


@dataclass(frozen=True)
class Volumes:
    """The fixed-size inputs of a list of patients, stacked.

    Attributes
    ----------
    patient_ids : list of str
    images : ndarray, shape (n, 2, nx, ny, nz), float32
        Channel 0 PET (``clip(SUV, 0, 20) / 10``), channel 1 CT (``clip(HU, ±1000) / 1000``).
    lesions : ndarray, shape (n, nx, ny, nz), float32 in [0, 1], or None
        Lesion fraction of each voxel (None when no masks were asked for).
    """

    patient_ids: list[str]
    images: np.ndarray
    lesions: np.ndarray | None

    def rows(self, patient_ids: Sequence[str]) -> np.ndarray:
        """Row index of each of ``patient_ids`` in the arrays."""
        where = {p: i for i, p in enumerate(self.patient_ids)}
        missing = [p for p in patient_ids if p not in where]
        if missing:
            raise BaselineError(f"volumes: no fixed-size volume loaded for patients {missing[:10]}")
        return np.array([where[p] for p in patient_ids], dtype=np.int64)


def check_size(size: Sequence[int], what: str = "size") -> tuple[int, int, int]:
    """A fixed size of three integers >= 4, as a tuple."""
    s = tuple(size)
    if len(s) != 3 or not all(isinstance(n, int | np.integer) and n >= 4 for n in s):
        raise BaselineError(f"{what}: expected three integers >= 4 (x, y, z voxels), got {s}")
    return (int(s[0]), int(s[1]), int(s[2]))


def volume_dir(work: str | Path, size: Sequence[int]) -> Path:
    """``WORK/baselines/volumes_<nx>x<ny>x<nz>``."""
    s = check_size(size)
    return Path(work) / "baselines" / f"volumes_{s[0]}x{s[1]}x{s[2]}"


def fixed_grid(shape: tuple[int, int, int], affine: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Affine of the fixed-size grid over a scan's field of view.

    Parameters
    ----------
    shape : tuple of 3 int
        The PET grid's shape.
    affine : ndarray, shape (4, 4)
        The PET grid's voxel -> RAS+ mm affine.
    size : (nx, ny, nz)

    Returns
    -------
    ndarray, shape (4, 4)
        Diagonal (positive spacings, mm) plus offset: the world bounding box of the PET
        field of view (voxel edges) cut into ``size`` voxels along world x, y, z.
    """
    s = np.array(check_size(size), dtype=np.float64)
    corners = itertools.product(*((-0.5, n - 0.5) for n in shape))
    edges = np.array([[*c, 1.0] for c in corners])
    world = edges @ np.asarray(affine, dtype=np.float64)[:3].T
    lo, hi = world.min(axis=0), world.max(axis=0)
    spacing = (hi - lo) / s
    out = np.eye(4)
    out[:3, :3] = np.diag(spacing)
    out[:3, 3] = lo + spacing / 2.0
    return out


def _anti_alias(array: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray) -> np.ndarray:
    """Gaussian low-pass of sigma ``(f - 1) / 2`` source voxels per axis, f the shrink factor."""
    cols = src_affine[:3, :3]
    src_spacing = np.linalg.norm(cols, axis=0)
    dst_spacing = np.abs(np.diag(dst_affine)[:3])
    # destination spacing seen along each source axis (exact for axis-aligned grids)
    along = (np.abs(cols) / src_spacing).T @ dst_spacing
    sigma = np.maximum(0.0, (along / src_spacing - 1.0) / 2.0)
    if not np.any(sigma > 0):
        return array.astype(np.float32, copy=False)
    return ndimage.gaussian_filter(array.astype(np.float32, copy=False), sigma, mode="nearest")


def _to_fixed(
    array: np.ndarray, affine: np.ndarray, dst_affine: np.ndarray, size: tuple, fill: float
) -> np.ndarray:
    smooth = _anti_alias(array, affine, dst_affine)
    return resample_to_grid(smooth, affine, size, dst_affine, order=1, fill=fill).astype(np.float32)


def _load(patient_id: str, path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise BaselineError(f"patient {patient_id}: {path}: no such file (expected the {what})")
    try:
        return load_nifti(path)
    except CohortError as exc:
        raise BaselineError(f"patient {patient_id}: {exc}") from None


def _fresh(cache: Path, inputs: Sequence[Path]) -> bool:
    """Whether ``cache`` exists, every input exists, and none is newer than ``cache``."""
    if not cache.is_file() or not all(p.is_file() for p in inputs):
        return False
    stamp = cache.stat().st_mtime
    return all(p.stat().st_mtime <= stamp for p in inputs)


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


def case_volume(
    cohort: str | Path, work: str | Path, patient_id: str, size: Sequence[int] = DEFAULT_SIZE
) -> dict[str, np.ndarray]:
    """The fixed-size PET and CT of one patient, from the cache or built and cached.

    Returns
    -------
    dict with
        ``pet``, ``ct`` : ndarray, shape size, float32 (normalised, see the module doc);
        ``affine`` : (4, 4) affine of the fixed grid (mm);
        ``pet_shape``, ``pet_affine`` : the PET grid it came from.

    Raises
    ------
    BaselineError
        A missing or unreadable PET or CT; names the patient and the file.
    """
    size = check_size(size)
    pet_path = case_path(cohort, patient_id, "pet")
    ct_path = case_path(cohort, patient_id, "ct")
    cache = volume_dir(work, size) / f"{patient_id}.npz"
    if _fresh(cache, [pet_path, ct_path]):
        with np.load(cache) as z:
            return {k: z[k] for k in z.files}
    pet, pet_aff = _load(patient_id, pet_path, "PET in SUVbw")
    ct, ct_aff = _load(patient_id, ct_path, "CT in HU")
    ct = ct.astype(np.float32)
    if not same_grid(ct.shape, ct_aff, pet.shape, pet_aff):
        ct = resample_to_grid(ct, ct_aff, pet.shape, pet_aff, order=1, fill=_CT_FILL)
    dst = fixed_grid(pet.shape, pet_aff, size)
    pet_f = _to_fixed(pet.astype(np.float32), pet_aff, dst, size, 0.0)
    ct_f = _to_fixed(ct, pet_aff, dst, size, _CT_FILL)
    out = {
        "pet": (np.clip(pet_f, *PET_SUV_CLIP) / PET_SUV_SCALE).astype(np.float32),
        "ct": (np.clip(ct_f, *CT_HU_CLIP) / CT_HU_SCALE).astype(np.float32),
        "affine": dst,
        "pet_shape": np.array(pet.shape, dtype=np.int64),
        "pet_affine": pet_aff,
    }
    _save_npz(cache, **out)
    return out


def case_lesion_volume(
    cohort: str | Path,
    work: str | Path,
    patient_id: str,
    size: Sequence[int] = DEFAULT_SIZE,
    masks: str = "manual",
) -> np.ndarray:
    """The lesion fraction of each fixed-size voxel of one patient (cached).

    Returns
    -------
    ndarray, shape size, float32 in [0, 1]

    Raises
    ------
    BaselineError
        A missing or unreadable mask or PET, or a mask not on the PET grid.
    """
    size = check_size(size)
    if masks not in MASKS:
        raise BaselineError(f"lesion masks: expected one of {MASKS}, got {masks!r}")
    les_path = mask_path(cohort, work, patient_id, masks)
    pet_path = case_path(cohort, patient_id, "pet")
    cache = volume_dir(work, size) / f"lesions_{masks}" / f"{patient_id}.npz"
    if _fresh(cache, [les_path, pet_path]):
        with np.load(cache) as z:
            return z["lesion"]
    hint = (
        "mask of `lamp segment predict`; run it first"
        if masks == "automatic"
        else "reference lesion mask; the cohort has none for this patient"
    )
    les, les_aff = _load(patient_id, les_path, hint)
    image = case_volume(cohort, work, patient_id, size)
    pet_shape, pet_aff = tuple(int(n) for n in image["pet_shape"]), image["pet_affine"]
    if not same_grid(les.shape, les_aff, pet_shape, pet_aff):
        raise BaselineError(
            f"patient {patient_id}: {les_path}: the lesion mask is not on the PET grid "
            f"({pet_path}: shape {pet_shape}, mask shape {les.shape})"
        )
    frac = _to_fixed((les > 0).astype(np.float32), les_aff, image["affine"], size, 0.0)
    lesion = np.clip(frac, 0.0, 1.0).astype(np.float32)
    _save_npz(cache, lesion=lesion)
    return lesion


def cohort_volumes(
    cohort: str | Path,
    work: str | Path,
    patient_ids: Sequence[str],
    size: Sequence[int] = DEFAULT_SIZE,
    masks: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Volumes:
    """The fixed-size inputs of ``patient_ids`` (built where not cached), stacked.

    Parameters
    ----------
    cohort, work : str or Path
    patient_ids : sequence of str
    size : (nx, ny, nz), default `DEFAULT_SIZE`
    masks : {"manual", "automatic"} or None
        Also load the lesion fractions from these masks (None: images only).
    progress : callable, optional
        Called with one line per patient.
    """
    size = check_size(size)
    ids = list(patient_ids)
    images = np.empty((len(ids), 2, *size), dtype=np.float32)
    lesions = np.empty((len(ids), *size), dtype=np.float32) if masks is not None else None
    for i, pid in enumerate(ids):
        vol = case_volume(cohort, work, pid, size)
        images[i, 0], images[i, 1] = vol["pet"], vol["ct"]
        if lesions is not None:
            lesions[i] = case_lesion_volume(cohort, work, pid, size, masks)  # type: ignore[arg-type]
        if progress is not None:
            progress(f"fixed-size volumes {size}: {i + 1}/{len(ids)} {pid}")
    return Volumes(ids, images, lesions)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)`` (None: leave it), then restore."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise BaselineError(f"threads: expected an integer >= 1 or None, got {threads!r}")
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)
