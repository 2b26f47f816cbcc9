"""Lesion and organ features pooled from the segmentation network, and the lesion table.

Paper §2.1-2.2: each lesion instance ``l_j`` and each of the 71 organ groups ``s_k`` is
described by the average, inside its mask, of the last-block decoder feature maps of the
segmentation network, concatenated as ``fused (64) | PET (32) | CT (32)`` = 128 channels
(Eq. 1 for lesions, Eq. 2 for organs; `FEATURE_LAYOUT`).

The feature maps come from a sliding-window pass exactly as nnU-Net predicts: overlapping
tiles (`sliding_windows`), each tile's output weighted by a Gaussian importance map
(`gaussian_importance_map`) and the weighted sum divided by the sum of the weights. A
whole-body 128-channel map at 4 mm is about 2 GB in float32 (and grows as 1/spacing³), so
the pooling here never builds it. With ``f_w`` the features of window ``w``, ``g_w`` its
importance map placed at ``w`` and ``G(v) = Σ_w g_w(v)``, the stitched map is

    F(v) = Σ_w g_w(v) f_w(v) / G(v),

and the mean of ``F`` over a region ``R`` (Eq. 1-2) is

    mean_R F = (1 / |R|) Σ_w Σ_{v ∈ R ∩ w} (g_w(v) / G(v)) f_w(v).

``G`` depends only on the tiling, so it is computed (one channel) before the network runs,
and the inner sum is accumulated window by window into an ``(n_regions, C)`` float64 table
(`pool_regions_streaming`): the same numbers as stitching first and masking afterwards
(`pool_regions_full`, the reference), with the memory of one window's features plus a few
one-channel volumes.

When the network was planned at another voxel spacing than the patient's PET, the pass
and the pooling run on a grid of the planned spacing over the same field of view, as
nnU-Net predicts (`extract_case_features`, ``target_spacing``); the lesion table stays on
the PET grid.

Pooling over *predicted* lesions needs their instance map before the pass, so the
feature stage runs after `lamp segment predict`; its pass also returns the stitched lesion
probability (nothing of the segmentation output is lost by running it once more).

The lesion table (`lesion_table`) describes every lesion with the metabolic parameters a
nuclear-medicine reader expects (volume, SUVmax, SUVmean, SUVpeak, TLG), its centroid in
world millimetres, the organ group it lies in and, for nodal lesions, an approximate
Lugano nodal region.

References
----------
.. [1] Isensee F, Jaeger PF, Kohl SAA, Petersen J, Maier-Hein KH. nnU-Net: a
   self-configuring method for deep learning-based biomedical image segmentation.
   Nat Methods 2021;18(2):203-211. Sliding-window rule and Gaussian weighting:
   ``nnunetv2/inference/sliding_window_prediction.py`` (``compute_steps_for_sliding_window``,
   ``compute_gaussian``) and ``acvl_utils`` ``pad_nd_image``.
.. [2] Wahl RL, Jacene H, Kasamon Y, Lodge MA. From RECIST to PERCIST: evolving
   considerations for PET response criteria in solid tumors. J Nucl Med 2009;50 Suppl
   1:122S-150S. (SUVpeak: mean SUV in a 1 cm³ sphere, 1.2 cm diameter.)
.. [3] Cheson BD, Fisher RI, Barrington SF, et al. Recommendations for initial evaluation,
   staging, and response assessment of Hodgkin and non-Hodgkin lymphoma: the Lugano
   classification. J Clin Oncol 2014;32(27):3059-3068.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage
from scipy.spatial import cKDTree

from lamp.anatomy import GROUPS, N_GROUPS, AnatomyError, group_id, merge_to_groups
from lamp.clinical import NODAL_REGIONS
from lamp.cohort import CASE_FILES, CohortError, atomic_output, check_patient_id, file_digest
from lamp.errors import LampError
from lamp.images import (
    grid_with_spacing,
    load_nifti,
    overlap_fraction,
    resample_to_grid,
    same_grid,
    voxel_spacing,
)

__all__ = [
    "FeatureError",
    "ModelFn",
    "Normalizer",
    "FEATURE_LAYOUT",
    "N_FEATURES",
    "CT_CLIP_HU",
    "LESION_TABLE_COLUMNS",
    "NODAL_LANDMARKS",
    "FEATURES_FORMAT",
    "PoolResult",
    "ChannelNormalization",
    "CaseImages",
    "CaseFeatures",
    "padding_for",
    "sliding_windows",
    "gaussian_importance_map",
    "pool_regions_streaming",
    "pool_regions_full",
    "lesion_table",
    "load_case_images",
    "extract_case_features",
    "load_case_features",
]

#: A segmentation network's feature interface: a patch batch ``(B, 2, z, y, x)`` (channel
#: 0 = normalised CT, 1 = normalised PET) -> ``(lesion probability (B, 1, z, y, x),
#: features (B, C, z, y, x))`` at the patch's resolution.
ModelFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

#: Channels of the 128-channel feature vector (paper Eq. 1-2): fused decoder, PET decoder,
#: CT decoder (half-open ranges).
FEATURE_LAYOUT: dict[str, tuple[int, int]] = {"fused": (0, 64), "pet": (64, 96), "ct": (96, 128)}
#: Length of a lesion or organ feature vector.
N_FEATURES = 128
#: CT range kept before z-scoring (HU): air to the top of a 12-bit scanner range.
CT_CLIP_HU: tuple[float, float] = (-1024.0, 3071.0)
#: Version of the per-patient ``.npz`` layout written by `extract_case_features`.
FEATURES_FORMAT = 1

#: Columns of `lesion_table`, in order.
LESION_TABLE_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "lesion_id",
    "voxels",
    "volume_ml",
    "suvmax",
    "suvmean",
    "suvpeak",
    "tlg",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
    "organ",
    "organ_fraction",
    "nodal_region",
)

#: Organ groups whose voxels stand for each Lugano nodal region in the approximate
#: nearest-landmark rule of `lesion_table` (the spleen is decided by overlap instead).
#: Structures that cross the diaphragm (aorta, oesophagus, vena cava) count only on the
#: side of the diaphragm of the region (`lamp.clinical.NODAL_REGIONS`); the pulmonary
#: vein label, which has no side, is split at its own centroid for the two hila.
NODAL_LANDMARKS: dict[str, tuple[str, ...]] = {
    "cervical_left": ("common_carotid_artery_left",),
    "cervical_right": ("common_carotid_artery_right",),
    "supraclavicular_left": ("clavicula_left",),
    "supraclavicular_right": ("clavicula_right",),
    "axillary_left": ("humerus_left", "scapula_left"),
    "axillary_right": ("humerus_right", "scapula_right"),
    "mediastinal": (
        "trachea",
        "esophagus",
        "heart",
        "aorta",
        "superior_vena_cava",
        "brachiocephalic_trunk",
        "brachiocephalic_vein_left",
        "brachiocephalic_vein_right",
    ),
    "hilar_left": ("pulmonary_vein",),
    "hilar_right": ("pulmonary_vein",),
    "para_aortic": ("aorta", "inferior_vena_cava"),
    "mesenteric": ("small_bowel",),
    "iliac_left": ("iliac_artery_left", "iliac_vena_left"),
    "iliac_right": ("iliac_artery_right", "iliac_vena_right"),
    "inguinal_left": ("femur_left",),
    "inguinal_right": ("femur_right",),
}

# The float columns of the lesion table.
_FLOAT_COLUMNS = (
    "volume_ml", "suvmax", "suvmean", "suvpeak", "tlg",
    "centroid_x_mm", "centroid_y_mm", "centroid_z_mm", "organ_fraction",
)  # fmt: skip
# A neck node this close above the top of its clavicle (mm) is supraclavicular, higher
# up it is cervical: the supraclavicular fossa lies just above the clavicle.
_SUPRACLAVICULAR_MM = 20.0
# Largest lesion id: instance maps are stored as uint16 (lamp.segmentation.instances).
_MAX_LESION_ID = int(np.iinfo(np.uint16).max)
# scipy.ndimage.gaussian_filter's default truncation (in sigmas): nnU-Net's importance map
# is a filtered delta, hence a Gaussian cut off at this radius.
_GAUSS_TRUNCATE = 4.0
# Selected voxels per chunk when the reference path pools the full map (float64 copies of
# C x chunk values: 64 MiB at C = 128).
_POOL_CHUNK = 1 << 16
# Relative spacing difference up to which the network runs on the PET grid itself: the
# pooling grid is then the PET grid either way, so the only effect is a voxel size off by
# at most 1 % for the network (nnU-Net trains with scale augmentation of 0.7-1.4).
_SPACING_RTOL = 0.01
# Spline order of the network input when it is resampled to the target spacing:
# nnU-Net's default for image data (``resampling_fn_data_kwargs['order']``).
_IMAGE_ORDER = 3
# Sub-sample spacing (mm) when the SUVpeak sphere's voxel weights are estimated: the
# weighted volume then matches the sphere's within about 1 %; at least 8 and at most 32
# sub-samples per voxel and axis.
_PEAK_SUBSAMPLE_MM = 0.5


class FeatureError(LampError):
    """An input of the feature stage is invalid; the message names the patient, the file
    or argument, what was expected and what came."""


# --------------------------------------------------------------------------------------
# Small checking helpers
# --------------------------------------------------------------------------------------


def _triplet(value: Any, name: str) -> tuple[int, int, int]:
    """Three positive integers (a patch size or a shape)."""
    try:
        t = tuple(int(v) for v in value)
        ok = len(t) == 3 and all(v >= 1 for v in t) and all(float(v) == int(v) for v in value)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise FeatureError(f"{name}: expected three positive integers, got {value!r}")
    return t  # type: ignore[return-value]


def _check_step(step_size: float) -> float:
    if isinstance(step_size, bool) or not isinstance(step_size, int | float | np.floating):
        raise FeatureError(f"step_size: expected a number in (0, 1], got {step_size!r}")
    if not 0.0 < float(step_size) <= 1.0:
        raise FeatureError(f"step_size: expected a number in (0, 1], got {step_size}")
    return float(step_size)


def _check_affine(affine: ArrayLike, what: str) -> NDArray[np.float64]:
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise FeatureError(f"{what}: expected a finite 4x4 affine, got shape {a.shape}")
    if abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise FeatureError(f"{what}: expected an invertible affine, got a singular one")
    return a


def _check_labels(labels: Any, what: str, max_id: int) -> np.ndarray:
    """An integer label array with ids in 0..max_id (whole-number floats are accepted)."""
    arr = np.asarray(labels)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iuf":
        raise FeatureError(f"{what}: expected integer region ids, got dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise FeatureError(f"{what}: expected whole-number region ids, got fractional/NaN")
        arr = arr.astype(np.int32 if max_id > 255 else np.uint8)
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > max_id:
            raise FeatureError(f"{what}: expected region ids in 0..{max_id}, got values {lo}..{hi}")
    return arr


# --------------------------------------------------------------------------------------
# Tiling and importance map (nnU-Net's rules)
# --------------------------------------------------------------------------------------


def padding_for(
    shape: Sequence[int], patch_size: Sequence[int]
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Zero padding that makes an image at least one patch large, as nnU-Net pads.

    Parameters
    ----------
    shape, patch_size : sequence of 3 int
        Image and patch sizes (voxels).

    Returns
    -------
    tuple of 3 (before, after) pairs
        ``max(patch - shape, 0)`` split as ``before = diff // 2``, ``after = diff - before``
        (acvl_utils ``pad_nd_image``, used by nnU-Net's predictor [1]_).
    """
    s, p = _triplet(shape, "shape"), _triplet(patch_size, "patch_size")
    out = []
    for n, k in zip(s, p, strict=True):
        diff = max(k - n, 0)
        out.append((diff // 2, diff - diff // 2))
    return tuple(out)  # type: ignore[return-value]


def _axis_starts(n: int, patch: int, step_size: float) -> list[int]:
    """Window starts along one axis of length ``n >= patch`` (nnU-Net's rule, [1]_)."""
    # nnU-Net, compute_steps_for_sliding_window: as few windows as keep the step at most
    # patch * step_size, spread evenly between 0 and n - patch, rounded half to even
    # (np.round, as nnU-Net does; Python's round would agree).
    target = patch * step_size
    num = int(np.ceil((n - patch) / target)) + 1
    if num == 1:
        return [0]
    actual = (n - patch) / (num - 1)
    return [int(np.round(actual * i)) for i in range(num)]


def sliding_windows(
    shape: Sequence[int], patch_size: Sequence[int], step_size: float = 0.5
) -> list[tuple[slice, slice, slice]]:
    """The tiles of a sliding-window pass, by nnU-Net's rule.

    Along each axis the windows overlap by at least ``1 - step_size`` of the patch (up to
    rounding to whole voxels): their number is ``ceil((n - p) / (p * step_size)) + 1``,
    the first starts at 0, the last ends flush with the (padded) image, and the starts
    between are evenly spaced and rounded half to even (Isensee et al. 2021 [1]_, nnunetv2
    ``inference/sliding_window_prediction.py``). An axis shorter than the patch is first
    padded to the patch size (`padding_for`) and then holds one window.

    Parameters
    ----------
    shape : sequence of 3 int
        Image size (voxels), before padding.
    patch_size : sequence of 3 int
        Window size (voxels).
    step_size : float, default 0.5
        Largest step as a fraction of the patch, in (0, 1] (nnU-Net's ``tile_step_size``).

    Returns
    -------
    list of (slice, slice, slice)
        Windows in C order of their starts (first axis slowest). The slices index the
        image **padded** by `padding_for` (the image itself when no axis is shorter than
        the patch); every window has exactly ``patch_size`` voxels.

    Examples
    --------
    >>> [w[0].start for w in sliding_windows((110, 64, 64), (64, 64, 64))][::1]
    [0, 23, 46]
    """
    s, p = _triplet(shape, "shape"), _triplet(patch_size, "patch_size")
    step = _check_step(step_size)
    padded = [max(n, k) for n, k in zip(s, p, strict=True)]
    starts = [_axis_starts(n, k, step) for n, k in zip(padded, p, strict=True)]
    return [
        (slice(i, i + p[0]), slice(j, j + p[1]), slice(k, k + p[2]))
        for i in starts[0]
        for j in starts[1]
        for k in starts[2]
    ]


def gaussian_importance_map(
    patch_size: Sequence[int],
    sigma_scale: float = 1.0 / 8.0,
    value_scaling_factor: float = 10.0,
) -> np.ndarray:
    """nnU-Net's Gaussian importance map of a window.

    nnU-Net ([1]_, ``compute_gaussian``) filters a unit impulse at voxel ``patch // 2``
    with `scipy.ndimage.gaussian_filter` (sigma = ``patch * sigma_scale`` per axis, cut
    off at 4 sigma), rescales so that the maximum is ``value_scaling_factor`` and replaces
    zeros by the smallest non-zero value (so that no voxel has zero total weight). The
    filtered impulse is a product of sampled 1-D Gaussians, which is what is computed here.

    Parameters
    ----------
    patch_size : sequence of 3 int
        Window size (voxels).
    sigma_scale : float, default 1/8
        Sigma as a fraction of the patch size, per axis.
    value_scaling_factor : float, default 10
        The map's maximum (nnU-Net's predictor uses 10).

    Returns
    -------
    ndarray, shape patch_size, float32
        Positive weights, maximal (``value_scaling_factor``) at ``patch // 2``.
        nnU-Net stores the map in float16 on the device; float32 is used here, where the
        smallest weight (about 4e-10 for even patch sizes) is still a normal number.
    """
    p = _triplet(patch_size, "patch_size")
    if not (sigma_scale > 0 and math.isfinite(sigma_scale)):
        raise FeatureError(f"sigma_scale: expected a positive number, got {sigma_scale!r}")
    if not (value_scaling_factor > 0 and math.isfinite(value_scaling_factor)):
        raise FeatureError(
            f"value_scaling_factor: expected a positive number, got {value_scaling_factor!r}"
        )
    axes = []
    for n in p:
        sigma = n * sigma_scale
        radius = int(_GAUSS_TRUNCATE * sigma + 0.5)  # scipy's kernel radius
        x = np.arange(n, dtype=np.float64) - n // 2
        g = np.exp(-0.5 * (x / sigma) ** 2)
        g[np.abs(x) > radius] = 0.0
        axes.append(g)
    m = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    m *= value_scaling_factor / m.max()
    m = m.astype(np.float32)
    positive = m > 0
    if not positive.all():
        m[~positive] = m[positive].min()
    return m


# --------------------------------------------------------------------------------------
# Region pooling
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolResult:
    """Region means of a stitched feature map, and the stitched lesion probability.

    Attributes
    ----------
    features : dict of str to ndarray, shape (n, C), float64
        Per label map, row ``r - 1`` is the mean of the stitched feature map over the voxels
        of region id ``r`` (paper Eq. 1-2); zeros for a region without voxels.
    counts : dict of str to ndarray, shape (n,), int64
        Voxels of each region id ``1..n``.
    present : dict of str to ndarray, shape (n,), bool
        ``counts > 0``: whether a row of ``features`` is a mean or a placeholder zero.
    probability : ndarray, shape (X, Y, Z), float32
        The stitched lesion probability, Gaussian-weighted like the features.
    n_windows : int
        Windows of the pass.
    """

    features: dict[str, np.ndarray]
    counts: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    probability: np.ndarray
    n_windows: int


@dataclass
class _Setup:
    """Checked and padded inputs shared by the streaming and the full path."""

    image: torch.Tensor  # (C_in, *padded) float32 on device
    labels: dict[str, np.ndarray]  # name -> (*padded) integer ids, host
    n_regions: dict[str, int]
    counts: dict[str, np.ndarray]
    windows: list[tuple[slice, slice, slice]]
    crop: tuple[slice, slice, slice]  # padded -> original
    gaussian: torch.Tensor  # patch-shaped float32 on device
    weight_sum: torch.Tensor  # G, (*padded) float32 on device
    patch: tuple[int, int, int]
    device: torch.device
    batch_size: int


# torch has full kernel support for these integer dtypes; others are widened to int32.
_TORCH_INT = {np.dtype(t) for t in (np.uint8, np.int16, np.int32, np.int64)}


def _setup(
    image: torch.Tensor | np.ndarray,
    label_maps: Mapping[str, np.ndarray],
    n_regions: Mapping[str, int],
    patch_size: Sequence[int],
    step_size: float,
    device: str | torch.device,
    batch_size: int,
) -> _Setup:
    patch = _triplet(patch_size, "patch_size")
    step = _check_step(step_size)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise FeatureError(f"batch_size: expected a positive integer, got {batch_size!r}")
    if batch_size < 1:
        raise FeatureError(f"batch_size: expected a positive integer, got {batch_size}")
    dev = torch.device(device)

    img = torch.as_tensor(image)
    if img.ndim != 4 or not img.is_floating_point():
        raise FeatureError(
            f"image: expected a floating (C, X, Y, Z) array, got shape {tuple(img.shape)} "
            f"and dtype {img.dtype}"
        )
    if not bool(torch.isfinite(img).all()):
        raise FeatureError("image: expected finite values, got NaN or inf")
    shape = tuple(int(n) for n in img.shape[1:])
    if set(label_maps) != set(n_regions):
        raise FeatureError(
            f"n_regions: expected one entry per label map {sorted(label_maps)}, "
            f"got {sorted(n_regions)}"
        )

    pads = padding_for(shape, patch)
    padded = tuple(n + a + b for n, (a, b) in zip(shape, pads, strict=True))
    crop = tuple(slice(a, a + n) for n, (a, _) in zip(shape, pads, strict=True))
    img = img.to(dtype=torch.float32)
    if any(a or b for a, b in pads):
        # torch.nn.functional.pad takes the last axis first
        flat = [v for a, b in reversed(pads) for v in (a, b)]
        img = torch.nn.functional.pad(img, flat, mode="constant", value=0.0)
    img = img.to(dev).contiguous()

    labels: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    regions: dict[str, int] = {}
    for name, lab in label_maps.items():
        n = n_regions[name]
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
            raise FeatureError(f"n_regions[{name!r}]: expected an integer >= 0, got {n!r}")
        arr = np.asarray(lab)
        if arr.shape != shape:
            raise FeatureError(
                f"label map {name!r}: expected the image's spatial shape {shape}, got {arr.shape}"
            )
        arr = _check_labels(arr, f"label map {name!r}", int(n))
        counts[name] = np.bincount(arr.reshape(-1), minlength=int(n) + 1)[1:].astype(np.int64)
        if any(a or b for a, b in pads):
            arr = np.pad(arr, pads, mode="constant", constant_values=0)  # background
        labels[name] = np.ascontiguousarray(arr)
        regions[name] = int(n)

    windows = sliding_windows(shape, patch, step)
    gaussian = torch.from_numpy(gaussian_importance_map(patch)).to(dev)
    weight_sum = torch.zeros(padded, dtype=torch.float32, device=dev)
    for w in windows:
        weight_sum[w] += gaussian
    return _Setup(
        img, labels, regions, counts, windows, crop, gaussian, weight_sum, patch, dev,
        int(batch_size),
    )  # fmt: skip


def _run_windows(
    model_fn: ModelFn,
    s: _Setup,
    progress: bool,
    consume: Callable[[tuple[slice, slice, slice], torch.Tensor, torch.Tensor], None],
) -> None:
    """Run the model on every window and hand each window's output to ``consume``.

    ``consume(window, probability (*patch), features (C, *patch))``, float32 on the
    device. A callback rather than a generator: the caller then holds no reference to a
    batch's outputs while the model computes the next one, so at most one batch of
    features is alive at a time.
    """
    windows = s.windows
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(windows), desc="sliding window", unit="window")
    try:
        for b0 in range(0, len(windows), s.batch_size):
            batch = windows[b0 : b0 + s.batch_size]
            x = torch.stack([s.image[(slice(None), *w)] for w in batch])
            out = model_fn(x)
            del x
            if not (isinstance(out, tuple | list) and len(out) == 2):
                raise FeatureError(
                    f"model_fn: expected a pair (probability, features), got {type(out).__name__}"
                )
            prob, feats = out
            del out
            b = len(batch)
            if tuple(prob.shape) != (b, 1, *s.patch):
                raise FeatureError(
                    f"model_fn: expected a probability of shape {(b, 1, *s.patch)}, "
                    f"got {tuple(prob.shape)}"
                )
            if feats.ndim != 5 or feats.shape[0] != b or tuple(feats.shape[2:]) != s.patch:
                raise FeatureError(
                    f"model_fn: expected features of shape {(b, 'C', *s.patch)}, "
                    f"got {tuple(feats.shape)}"
                )
            prob = prob.to(device=s.device, dtype=torch.float32)
            feats = feats.to(device=s.device, dtype=torch.float32)
            for i, w in enumerate(batch):
                consume(w, prob[i, 0], feats[i])
            del prob, feats  # before the next model call
            if bar is not None:
                bar.update(b)
    finally:
        if bar is not None:
            bar.close()


def _finish(
    s: _Setup, sums: dict[str, torch.Tensor], prob_sum: torch.Tensor, n_windows: int
) -> PoolResult:
    """Divide region sums (C, n) float64 by the voxel counts; crop the probability."""
    features, present = {}, {}
    for name, acc in sums.items():
        counts = s.counts[name]
        feat = acc.T.cpu().numpy()  # (n, C)
        nz = counts > 0
        out = np.zeros_like(feat)
        out[nz] = feat[nz] / counts[nz, None]
        features[name] = out
        present[name] = nz
    prob = (prob_sum / s.weight_sum)[s.crop].cpu().numpy().astype(np.float32, copy=False)
    return PoolResult(features, dict(s.counts), present, np.ascontiguousarray(prob), n_windows)


class _RegionIndex:
    """Every labelled voxel of every label map, sorted by flat index, with its row.

    The streaming loop asks for the labelled voxels inside each window. Slicing the label
    maps per window and searching them for non-zero ids would cost a pass over every
    window voxel; here the voxels of a window are found among the (few) labelled ones: a
    binary search gives those in the window's first-axis range, a test of the other two
    coordinates the rest. ``1 / G(v)`` is looked up once per voxel, not once per window.
    A voxel in several maps (a lesion inside an organ) has one entry per map.
    """

    def __init__(self, s: _Setup) -> None:
        shape = tuple(s.weight_sum.shape)
        flats, rows = [], []
        self.offsets: dict[str, int] = {}
        total = 0
        for name, lab in s.labels.items():
            flat = np.flatnonzero(lab)  # sorted
            flats.append(flat)
            rows.append(lab.reshape(-1)[flat].astype(np.int64) + (total - 1))
            self.offsets[name] = total
            total += s.n_regions[name]
        self.total = total
        flat = np.concatenate(flats) if flats else np.zeros(0, dtype=np.int64)
        order = np.argsort(flat, kind="stable")
        self.flat = flat[order]
        self.rows = np.concatenate(rows)[order] if rows else np.zeros(0, dtype=np.int64)
        i, j, k = np.unravel_index(self.flat, shape)
        self.i, self.j, self.k = (x.astype(np.int32) for x in (i, j, k))
        inv_g = 1.0 / s.weight_sum.reshape(-1).cpu().numpy()[self.flat]
        self.inv_g = inv_g.astype(np.float32)
        self.plane = shape[1] * shape[2]
        self.device = s.device

    def in_window(
        self, w: tuple[slice, slice, slice], patch: tuple[int, int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(flat index within the window, 1 / G, accumulator row) of its labelled voxels."""
        lo, hi = np.searchsorted(self.flat, [w[0].start * self.plane, w[0].stop * self.plane])
        j, k = self.j[lo:hi], self.k[lo:hi]
        inside = (j >= w[1].start) & (j < w[1].stop) & (k >= w[2].start) & (k < w[2].stop)
        sel = lo + np.flatnonzero(inside)
        local = (
            (self.i[sel].astype(np.int64) - w[0].start) * patch[1] + (self.j[sel] - w[1].start)
        ) * patch[2] + (self.k[sel] - w[2].start)
        dev = self.device
        return (
            torch.from_numpy(local).to(dev),
            torch.from_numpy(self.inv_g[sel]).to(dev),
            torch.from_numpy(self.rows[sel]).to(dev),
        )


def pool_regions_streaming(
    model_fn: ModelFn,
    image: torch.Tensor | np.ndarray,
    label_maps: Mapping[str, np.ndarray],
    n_regions: Mapping[str, int],
    patch_size: Sequence[int],
    step_size: float = 0.5,
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    progress: bool = False,
) -> PoolResult:
    """Masked region means of the stitched feature map, one window at a time.

    The mean of the stitched map over region ``R`` (paper Eq. 1 for lesions, Eq. 2 for
    organs) is accumulated as ``Σ_w Σ_{v ∈ R ∩ w} (g_w(v) / G(v)) f_w(v)`` (module
    docstring) into a float64 ``(C, n)`` table per label map, and divided by ``|R|`` at the
    end. Memory: the padded input, ``G``, the probability sum and the label maps (one
    channel each), an index of the labelled voxels (about 28 bytes per voxel and map) and
    one batch of window outputs; never the ``(C, X, Y, Z)`` map. The cost over a
    segmentation-only pass is one gather of the labelled voxels' features per window.

    Parameters
    ----------
    model_fn : callable
        ``(B, C_in, *patch) float32 tensor on device -> (probability (B, 1, *patch),
        features (B, C, *patch))`` (`ModelFn`), e.g. the segmentation network's
        ``forward_features`` in eval mode. Called under `torch.inference_mode`. Test-time
        mirroring, if wanted, belongs inside it (averaging mirrored outputs is linear).
    image : tensor or ndarray, shape (C_in, X, Y, Z), floating
        The normalised network input (channel 0 CT, 1 PET for LAMP's network). Padded
        with zeros like nnU-Net where an axis is shorter than the patch.
    label_maps : mapping of str to ndarray, shape (X, Y, Z), int
        Named region maps, 0 = background, e.g. ``{"lesions": instances 1..J,
        "organs": group ids 1..71}``. Regions of different maps may overlap.
    n_regions : mapping of str to int
        Number of region ids of each map (rows of its result); ids must lie in 0..n.
    patch_size : sequence of 3 int
        Window size (voxels), the network's patch size.
    step_size : float, default 0.5
        Tiling step as a fraction of the patch (`sliding_windows`).
    device : str or torch.device, default "cpu"
        Where the model runs and the sums are accumulated.
    batch_size : int, default 1
        Windows per model call.
    progress : bool, default False
        Show a progress bar over the windows (stderr).

    Returns
    -------
    PoolResult
        Region means ``(n, C)`` (zeros and ``present=False`` for ids without voxels),
        voxel counts, and the stitched probability ``(X, Y, Z)``.

    Raises
    ------
    FeatureError
        Bad shapes, ids out of range, non-finite input, a model output of the wrong shape.

    See Also
    --------
    pool_regions_full : the reference that builds the stitched map first.
    """
    s = _setup(image, label_maps, n_regions, patch_size, step_size, device, batch_size)
    index = _RegionIndex(s)
    g_flat = s.gaussian.reshape(-1)
    on_cpu = s.device.type == "cpu"
    prob_sum = torch.zeros_like(s.weight_sum)
    acc = torch.zeros(0)  # (C, rows) float64 once C is known

    def consume(w: tuple[slice, slice, slice], prob: torch.Tensor, feats: torch.Tensor) -> None:
        nonlocal acc
        prob_sum[w] += prob * s.gaussian
        c = feats.shape[0]
        if acc.ndim == 1:
            acc = torch.zeros((c, index.total), dtype=torch.float64, device=s.device)
        local, inv_g, rows = index.in_window(w, s.patch)
        if local.numel() == 0:
            return
        # the Eq. 1-2 summand of each labelled voxel: (g_w(v) / G(v)) f_w(v)
        weight = g_flat.index_select(0, local) * inv_g
        if on_cpu:
            # numpy's take gathers along a row about twice as fast as index_select, and
            # this gather (a pass over the window's features) is the main cost
            picked = torch.from_numpy(np.take(feats.reshape(c, -1).numpy(), local.numpy(), 1))
        else:
            picked = feats.reshape(c, -1).index_select(1, local)
        picked.mul_(weight)
        # one window's sum in float32 (at most a patch of terms), the running total over
        # windows in float64
        part = torch.zeros((c, index.total), dtype=torch.float32, device=s.device)
        part.index_add_(1, rows, picked)
        acc += part

    with torch.inference_mode():
        _run_windows(model_fn, s, progress, consume)
    sums = {n: acc[:, o : o + s.n_regions[n]] for n, o in index.offsets.items()}
    return _finish(s, sums, prob_sum, len(s.windows))


def pool_regions_full(
    model_fn: ModelFn,
    image: torch.Tensor | np.ndarray,
    label_maps: Mapping[str, np.ndarray],
    n_regions: Mapping[str, int],
    patch_size: Sequence[int],
    step_size: float = 0.5,
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    progress: bool = False,
) -> PoolResult:
    """The reference: stitch the full ``(C, X, Y, Z)`` feature map, then average per region.

    Same parameters, result and errors as `pool_regions_streaming`. The stitched map
    ``F = Σ_w g_w f_w / G`` is built in float32 exactly as nnU-Net stitches its logits, and
    each region's voxels are summed in float64. Needs ``4 C X Y Z`` bytes for the map
    (about 2 GB for a 4 mm whole body at C = 128): for tests and benchmarks.
    """
    s = _setup(image, label_maps, n_regions, patch_size, step_size, device, batch_size)
    prob_sum = torch.zeros_like(s.weight_sum)
    stitched = torch.zeros(0)  # (C, *padded) float32 once C is known

    def consume(w: tuple[slice, slice, slice], prob: torch.Tensor, feats: torch.Tensor) -> None:
        nonlocal stitched
        prob_sum[w] += prob * s.gaussian
        if stitched.ndim == 1:
            shape = (feats.shape[0], *s.weight_sum.shape)
            stitched = torch.zeros(shape, dtype=torch.float32, device=s.device)
        stitched[(slice(None), *w)].addcmul_(feats, s.gaussian)  # no window-sized temporary

    with torch.inference_mode():
        _run_windows(model_fn, s, progress, consume)
        stitched /= s.weight_sum
        c = stitched.shape[0]
        flat = stitched.reshape(c, -1)
        sums = {}
        for name, lab in s.labels.items():
            acc = torch.zeros((c, s.n_regions[name]), dtype=torch.float64, device=s.device)
            if lab.dtype not in _TORCH_INT:
                lab = lab.astype(np.int32)
            ids = torch.from_numpy(lab.reshape(-1)).to(s.device)
            sel = torch.nonzero(ids, as_tuple=True)[0]
            for a in range(0, sel.numel(), _POOL_CHUNK):
                chunk = sel[a : a + _POOL_CHUNK]
                acc.index_add_(
                    1, ids.index_select(0, chunk).long() - 1, flat.index_select(1, chunk).double()
                )
            sums[name] = acc
    return _finish(s, sums, prob_sum, len(s.windows))


# --------------------------------------------------------------------------------------
# The lesion table
# --------------------------------------------------------------------------------------


def _peak_kernel(affine: np.ndarray, volume_ml: float) -> tuple[np.ndarray, np.ndarray]:
    """Voxel offsets (K, 3) and weights (K,) of a sphere of ``volume_ml`` on a grid.

    A voxel's weight is the fraction of its volume inside the sphere centred on the
    centre of voxel (0, 0, 0), estimated from n³ evenly spaced points in the voxel (a
    parallelepiped for an oblique affine), n chosen so that they lie about
    `_PEAK_SUBSAMPLE_MM` apart.
    """
    a3 = affine[:3, :3]
    radius = (3.0 * volume_ml * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)  # mm
    # along index axis k a world sphere spans radius * |row k of A^-1| voxels; +0.5 for
    # the half voxel beyond a centre
    half = np.ceil(radius * np.linalg.norm(np.linalg.inv(a3), axis=1) + 0.5).astype(int)
    rng = [np.arange(-h, h + 1) for h in half]
    offsets = np.stack(np.meshgrid(*rng, indexing="ij"), -1).reshape(-1, 3)
    edge = float(np.linalg.norm(a3, axis=0).max())  # longest voxel edge, mm
    n = int(np.clip(np.ceil(edge / _PEAK_SUBSAMPLE_MM), 8, 32))
    sub1 = (np.arange(n) + 0.5) / n - 0.5
    sub = np.stack(np.meshgrid(sub1, sub1, sub1, indexing="ij"), -1).reshape(-1, 3)
    pts = offsets[:, None, :] + sub[None, :, :]  # (K, n^3, 3) in voxel units
    dist = np.linalg.norm(pts @ a3.T, axis=-1)
    weights = (dist <= radius).mean(axis=1)
    keep = weights > 0
    return offsets[keep], weights[keep]


def _suv_peak(
    suv: np.ndarray, hot: tuple[int, int, int], offsets: np.ndarray, weights: np.ndarray
) -> float:
    """Weighted mean SUV of the kernel placed at ``hot``; voxels outside the image drop out."""
    idx = offsets + np.asarray(hot)
    inside = np.all((idx >= 0) & (idx < np.asarray(suv.shape)), axis=1)
    idx, w = idx[inside], weights[inside]
    vals = suv[idx[:, 0], idx[:, 1], idx[:, 2]].astype(np.float64)
    return float(np.dot(w, vals) / w.sum())


def _world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    return ijk @ affine[:3, :3].T + affine[:3, 3]


@dataclass
class _Landmarks:
    """What the nodal-region rule needs from the organ map (world mm)."""

    diaphragm_z: float | None  # top of the liver (else spleen)
    clavicle_top_z: dict[str, float]  # side -> top of that clavicle
    trees: dict[str, cKDTree]  # region -> landmark voxels


def _landmarks(groups: np.ndarray, affine: np.ndarray) -> _Landmarks:
    """Landmark voxels of each nodal region (`NODAL_LANDMARKS`), the diaphragm and clavicles."""
    diaphragm_ids = [group_id("liver"), group_id("spleen")]
    needed = {group_id(g) for names in NODAL_LANDMARKS.values() for g in names}
    wanted = np.zeros(N_GROUPS + 1, dtype=bool)
    wanted[sorted(needed) + diaphragm_ids] = True
    flat = np.flatnonzero(wanted[groups.reshape(-1)])
    ids = groups.reshape(-1)[flat]
    world = _world(affine, np.stack(np.unravel_index(flat, groups.shape), -1).astype(np.float64))
    diaphragm = None
    for gid in diaphragm_ids:
        on = ids == gid
        if on.any():
            diaphragm = float(world[on, 2].max())
            break
    clavicle_top = {}
    for side in ("left", "right"):
        on = ids == group_id(f"clavicula_{side}")
        if on.any():
            clavicle_top[side] = float(world[on, 2].max())
    trees: dict[str, cKDTree] = {}
    for region, names in NODAL_LANDMARKS.items():
        pts = world[np.isin(ids, [group_id(g) for g in names])]
        if diaphragm is not None:
            above = pts[:, 2] > diaphragm
            pts = pts[above] if NODAL_REGIONS[region] == "above" else pts[~above]
        if region.startswith("hilar_") and len(pts):
            right = pts[:, 0] >= pts[:, 0].mean()  # RAS+: +x is the patient's right
            pts = pts[right] if region.endswith("right") else pts[~right]
        if len(pts):
            trees[region] = cKDTree(pts)
    return _Landmarks(diaphragm, clavicle_top, trees)


def _nodal_region(centroid: np.ndarray, marks: _Landmarks, max_distance_mm: float) -> str:
    """The approximate Lugano region of a nodal lesion (rule in `lesion_table`)."""
    z = float(centroid[2])
    side = None if marks.diaphragm_z is None else ("above" if z > marks.diaphragm_z else "below")
    best, best_d = "", max_distance_mm
    for region, tree in marks.trees.items():
        if side is not None and NODAL_REGIONS[region] != side:
            continue
        d = float(tree.query(centroid)[0])
        if d <= best_d:
            best, best_d = region, d
    # the neck of one side: the carotid runs down to the clavicle, so its nearness does
    # not separate the two; height above the clavicle does
    for lr in ("left", "right"):
        if best in (f"cervical_{lr}", f"supraclavicular_{lr}") and lr in marks.clavicle_top_z:
            low = z <= marks.clavicle_top_z[lr] + _SUPRACLAVICULAR_MM
            best = f"supraclavicular_{lr}" if low else f"cervical_{lr}"
    return best


def lesion_table(
    pet_suv: ArrayLike,
    instances: ArrayLike,
    affine: ArrayLike,
    organ_groups: ArrayLike | None = None,
    patient_id: str = "",
    *,
    peak_volume_ml: float = 1.0,
    min_organ_fraction: float = 0.0,
    max_nodal_distance_mm: float = 60.0,
) -> pd.DataFrame:
    """One row per lesion: size, uptake, position and anatomical site.

    Parameters
    ----------
    pet_suv : array_like, shape (X, Y, Z)
        PET in SUVbw (g/ml).
    instances : array_like, shape (X, Y, Z), int
        Lesion instance ids (0 = background); ids need not be consecutive.
    affine : array_like, shape (4, 4)
        Voxel index -> RAS+ world mm of the PET grid.
    organ_groups : array_like, shape (X, Y, Z), int, optional
        Merged organ group ids 0..71 (`lamp.anatomy.merge_to_groups`). Without it the
        ``organ`` and ``nodal_region`` columns are empty strings (unknown).
    patient_id : str, default ""
        Written in the first column.
    peak_volume_ml : float, default 1.0
        Volume of the SUVpeak sphere (PERCIST: 1 cm³, 1.2 cm diameter [2]_).
    min_organ_fraction : float, default 0.0
        Smallest fraction of a lesion's voxels inside its most-overlapped organ group for
        the lesion to be assigned to that organ; at 0 any overlap counts.
    max_nodal_distance_mm : float, default 60
        A nodal lesion farther than this from every landmark gets no nodal region.

    Returns
    -------
    DataFrame
        Columns `LESION_TABLE_COLUMNS`, one row per lesion id present, ascending:

        * ``voxels``, ``volume_ml`` (voxels x |det A| / 1000);
        * ``suvmax``, ``suvmean`` over the lesion's voxels, ``tlg`` = suvmean x volume_ml
          (total lesion glycolysis, g);
        * ``suvpeak``: mean SUV in a sphere of ``peak_volume_ml`` centred on the centre of
          the lesion's hottest voxel (first in C order on ties), per PERCIST (Wahl et al.,
          J Nucl Med 2009 [2]_), with the common simplification of centring on the hottest
          voxel rather than searching for the hottest sphere. The sphere is discretised
          by partial-volume weights: each voxel counts with the fraction of its volume
          inside the sphere (estimated from sub-voxel points about 0.5 mm apart), so
          that the weighted volume is the sphere's at any voxel size; the sphere is not
          restricted to the lesion mask, and voxels beyond the image edge are left out;
        * ``centroid_x_mm``/``_y_mm``/``_z_mm``: the mean voxel index mapped through
          ``affine``: world RAS+ mm (x towards the patient's right, y anterior, z superior);
        * ``organ``: the group (`lamp.anatomy.GROUPS`) that holds most of the lesion's
          voxels, or ``"none"`` (no overlap, or less than ``min_organ_fraction``: a nodal
          or soft-tissue lesion); ``organ_fraction`` its share of the lesion's voxels;
        * ``nodal_region``: for lesions with organ ``"none"`` or ``"spleen"``, an
          **approximate** Lugano region (`lamp.clinical.NODAL_REGIONS`), else ``""``.
          Rule: ``"spleen"`` for the spleen; otherwise the region whose landmark
          structures (`NODAL_LANDMARKS`, e.g. carotid artery for cervical, clavicle for
          supraclavicular, humerus/scapula for axillary, femur for inguinal) lie nearest
          to the lesion centroid, among the regions on the lesion's side of the diaphragm
          (top of the liver); a neck node (cervical or supraclavicular of one side) is
          supraclavicular when its centroid lies at most 2 cm above the top of that
          clavicle, cervical above that; ``""`` when no landmark lies within
          ``max_nodal_distance_mm`` or the landmarks are missing. Without a
          ``pulmonary_vein`` label hilar nodes come out mediastinal. It is a rough guide
          for tables and figures, not a staging read.

        A map without lesions gives an empty table with these columns.

    Raises
    ------
    FeatureError
        Mismatched shapes, a bad affine, non-finite SUV, invalid ids.
    """
    suv = np.asarray(pet_suv)
    if suv.ndim != 3 or suv.dtype.kind not in "fiu":
        raise FeatureError(f"pet_suv: expected a numeric 3D array, got shape {suv.shape}")
    if not np.all(np.isfinite(suv)):
        raise FeatureError(f"pet_suv: patient {patient_id!r}: expected finite SUV, got NaN/inf")
    inst = np.asarray(instances)
    if inst.shape != suv.shape:
        raise FeatureError(
            f"instances: expected the PET shape {suv.shape}, got {inst.shape} "
            f"(patient {patient_id!r})"
        )
    inst = _check_labels(inst, "instances", _MAX_LESION_ID)
    aff = _check_affine(affine, "affine")
    groups = None
    if organ_groups is not None:
        groups = np.asarray(organ_groups)
        if groups.shape != suv.shape:
            raise FeatureError(
                f"organ_groups: expected the PET shape {suv.shape}, got {groups.shape} "
                f"(patient {patient_id!r})"
            )
        groups = _check_labels(groups, "organ_groups", N_GROUPS).astype(np.uint8, copy=False)
    if not 0.0 <= min_organ_fraction <= 1.0:
        raise FeatureError(f"min_organ_fraction: expected 0..1, got {min_organ_fraction}")
    if not peak_volume_ml > 0:
        raise FeatureError(f"peak_volume_ml: expected a positive volume, got {peak_volume_ml}")

    voxel_ml = abs(float(np.linalg.det(aff[:3, :3]))) / 1000.0
    offsets, weights = _peak_kernel(aff, peak_volume_ml)
    boxes = ndimage.find_objects(inst.astype(np.int32, copy=False)) if inst.size else []
    rows: list[dict[str, Any]] = []
    nodal: list[tuple[int, np.ndarray]] = []  # (row, centroid) of lesions to place
    for j, box in enumerate(boxes, start=1):
        if box is None:
            continue
        mask = inst[box] == j
        vals = suv[box][mask].astype(np.float64)
        local = np.argwhere(mask)
        start = np.array([sl.start for sl in box])
        hot = tuple(int(v) for v in local[int(np.argmax(vals))] + start)
        n = int(mask.sum())
        centroid = _world(aff, local.mean(axis=0) + start)
        volume = n * voxel_ml
        organ, fraction, region = "", 0.0, ""
        if groups is not None:
            hist = np.bincount(groups[box][mask], minlength=N_GROUPS + 1)
            hist[0] = 0
            g = int(np.argmax(hist))
            share = hist[g] / n
            if hist[g] > 0 and share >= min_organ_fraction:
                organ, fraction = GROUPS[g - 1], float(share)
            else:
                organ = "none"
            if organ == "spleen":
                region = "spleen"
            elif organ == "none":
                nodal.append((len(rows), centroid))
        rows.append(
            {
                "patient_id": patient_id,
                "lesion_id": j,
                "voxels": n,
                "volume_ml": volume,
                "suvmax": float(vals.max()),
                "suvmean": float(vals.mean()),
                "suvpeak": _suv_peak(suv, hot, offsets, weights),
                "tlg": float(vals.mean()) * volume,
                "centroid_x_mm": float(centroid[0]),
                "centroid_y_mm": float(centroid[1]),
                "centroid_z_mm": float(centroid[2]),
                "organ": organ,
                "organ_fraction": fraction,
                "nodal_region": region,
            }
        )
    if nodal and groups is not None:
        marks = _landmarks(groups, aff)
        for row, c in nodal:
            rows[row]["nodal_region"] = _nodal_region(c, marks, max_nodal_distance_mm)
    table = pd.DataFrame(rows, columns=list(LESION_TABLE_COLUMNS))
    return table.astype(
        {
            "patient_id": str,
            "lesion_id": np.int64,
            "voxels": np.int64,
            "organ": str,
            "nodal_region": str,
            **{c: np.float64 for c in _FLOAT_COLUMNS},
        }
    )


# --------------------------------------------------------------------------------------
# One case: inputs, normalisation, features, the .npz file
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelNormalization:
    """Intensity normalisation of the two network input channels (from nnU-Net's plans).

    CT (channel 0): clipped to ``ct_clip`` HU, then ``(x - ct_mean) / ct_std``.
    PET (channel 1): clipped to ``pet_clip`` if given, then ``(x - pet_mean) / pet_std``;
    with ``pet_mean``/``pet_std`` left None the image's own mean and standard deviation
    are used, as nnU-Net's ``ZScoreNormalization`` does for a non-CT channel. Standard
    deviations are floored at 1e-8 as in nnU-Net.

    Parameters
    ----------
    ct_mean, ct_std : float
        CT statistics in HU (nnU-Net: ``foreground_intensity_properties_per_channel``).
    pet_mean, pet_std : float, optional
        PET statistics in SUV, or None for per-image statistics.
    ct_clip : (float, float) or None, default (-1024, 3071)
        CT range kept (nnU-Net's ``CTNormalization`` clips at the 0.5 and 99.5
        foreground percentiles; pass those to match a trained network exactly).
    pet_clip : (float, float) or None, default None
        PET range kept.
    """

    ct_mean: float
    ct_std: float
    pet_mean: float | None = None
    pet_std: float | None = None
    ct_clip: tuple[float, float] | None = CT_CLIP_HU
    pet_clip: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        for name in ("ct_mean", "ct_std", "pet_mean", "pet_std"):
            v = getattr(self, name)
            if v is None and name.startswith("pet"):
                continue
            if not isinstance(v, int | float | np.floating) or not math.isfinite(v):
                raise FeatureError(f"normalization {name}: expected a finite number, got {v!r}")
        if (self.pet_mean is None) != (self.pet_std is None):
            raise FeatureError("normalization: give both pet_mean and pet_std, or neither")
        for name in ("ct_std", "pet_std"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise FeatureError(f"normalization {name}: expected a positive number, got {v}")

    def __call__(self, ct_hu: np.ndarray, pet_suv: np.ndarray) -> np.ndarray:
        """``(2, X, Y, Z)`` float32: normalised CT, normalised PET (same grid)."""
        out = np.empty((2, *pet_suv.shape), dtype=np.float32)
        out[0] = ct_hu
        out[1] = pet_suv
        if self.ct_clip is not None:
            np.clip(out[0], self.ct_clip[0], self.ct_clip[1], out=out[0])
        out[0] -= self.ct_mean
        out[0] /= max(self.ct_std, 1e-8)
        if self.pet_clip is not None:
            np.clip(out[1], self.pet_clip[0], self.pet_clip[1], out=out[1])
        mean = self.pet_mean if self.pet_mean is not None else float(out[1].mean(dtype=np.float64))
        std = self.pet_std if self.pet_std is not None else float(out[1].std(dtype=np.float64))
        out[1] -= mean
        out[1] /= max(std, 1e-8)
        return out


Normalizer = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _as_normalizer(normalization: Any) -> Normalizer:
    """A `ChannelNormalization`, a callable, or ``((ct_mean, ct_std), (pet_mean, pet_std))``."""
    if callable(normalization):
        return normalization
    try:
        (cm, cs), (pm, ps) = normalization
    except (TypeError, ValueError):
        raise FeatureError(
            "normalization: expected a ChannelNormalization, a callable (ct_hu, pet_suv) -> "
            "(2, X, Y, Z) array, or ((ct_mean, ct_std), (pet_mean, pet_std)); "
            f"got {normalization!r}"
        ) from None
    return ChannelNormalization(float(cm), float(cs), float(pm), float(ps))


@dataclass(frozen=True)
class CaseImages:
    """One patient's PET and CT, each with its grid (NIfTI storage order).

    Attributes
    ----------
    patient_id : str
    pet : ndarray, shape (X, Y, Z)
        PET in SUVbw; its grid is the reference grid of every other map.
    pet_affine : ndarray, shape (4, 4)
        Voxel index -> RAS+ world mm.
    ct : ndarray, shape (X', Y', Z')
        CT in HU, on its own grid or on the PET grid.
    ct_affine : ndarray, shape (4, 4)
    sources : dict of str to str
        Where each image came from (file paths), for error messages.
    """

    patient_id: str
    pet: np.ndarray
    pet_affine: np.ndarray
    ct: np.ndarray
    ct_affine: np.ndarray
    sources: dict[str, str] = field(default_factory=dict)


def load_case_images(case_dir: str | Path, patient_id: str | None = None) -> CaseImages:
    """Read ``pet.nii.gz`` and ``ct.nii.gz`` of ``cases/<patient_id>/``.

    Raises
    ------
    FeatureError
        A missing, unreadable or non-finite file; the message names the patient and file.
    """
    folder = Path(case_dir)
    pid = patient_id if patient_id is not None else folder.name
    try:
        pid = check_patient_id(pid, f"{folder}: patient id")
    except CohortError as exc:
        raise FeatureError(str(exc)) from None
    arrays = {}
    for kind in ("pet", "ct"):
        path = folder / CASE_FILES[kind]
        try:
            arrays[kind] = load_nifti(path)
        except CohortError as exc:
            raise FeatureError(f"patient {pid}: {kind}: {exc}") from None
    (pet, pet_aff), (ct, ct_aff) = arrays["pet"], arrays["ct"]
    sources = {k: str(folder / CASE_FILES[k]) for k in ("pet", "ct")}
    return CaseImages(pid, pet, pet_aff, ct, ct_aff, sources)


@dataclass(frozen=True)
class CaseFeatures:
    """The features of one patient (the content of ``<patient_id>.npz``).

    Attributes
    ----------
    patient_id : str
    lesion_ids : ndarray, shape (J,), int32
        Instance ids present in the lesion map, ascending; J = 0 for no lesion.
    lesion_features : ndarray, shape (J, 128), float32
        Eq. 1: masked mean of concat(fused 64, PET 32, CT 32) per lesion (`FEATURE_LAYOUT`).
    lesion_voxels : ndarray, shape (J,), int64
        Voxels pooled per lesion, on the network's grid (the PET grid unless the input was
        resampled to another spacing; see `extract_case_features`).
    organ_features : ndarray, shape (71, 128), float32
        Eq. 2 per organ group (row g - 1 for group id g, `lamp.anatomy.GROUPS`); zeros
        for an absent group.
    organ_present : ndarray, shape (71,), bool
        Whether the group has at least one voxel (the LACF attention mask).
    organ_voxels : ndarray, shape (71,), int64
    table : DataFrame
        `lesion_table` of the lesions, rows in ``lesion_ids`` order.
    meta : dict
        How the features were made (patch, step, windows, pooling, normalisation, sources).
    probability : ndarray, shape (X, Y, Z), float32, or None
        The stitched lesion probability on the PET grid (not stored in the file).
    path : Path or None
        The file written, if any.
    """

    patient_id: str
    lesion_ids: np.ndarray
    lesion_features: np.ndarray
    lesion_voxels: np.ndarray
    organ_features: np.ndarray
    organ_present: np.ndarray
    organ_voxels: np.ndarray
    table: pd.DataFrame
    meta: dict[str, Any]
    probability: np.ndarray | None = None
    path: Path | None = None


def _label_input(
    value: str | Path | np.ndarray | None,
    default: Path | None,
    what: str,
    pid: str,
    pet: CaseImages,
) -> tuple[np.ndarray, str]:
    """Read or take a label map and check it lies on the PET grid."""
    if value is None:
        if default is None:
            raise FeatureError(f"patient {pid}: {what}: required when the case is given as arrays")
        value = default
    if isinstance(value, str | Path):
        path = Path(value)
        try:
            arr, aff = load_nifti(path)
        except CohortError as exc:
            hint = ""
            if what == "organs" and not path.exists():
                hint = (
                    " (organ masks are TotalSegmentator 'total' ids on the PET grid; run "
                    "TotalSegmentator on the CT and resample the result onto the PET grid)"
                )
            raise FeatureError(f"patient {pid}: {what}: {exc}{hint}") from None
        if not same_grid(arr.shape, aff, pet.pet.shape, pet.pet_affine):
            raise FeatureError(
                f"patient {pid}: {what} {path}: expected the PET grid (shape "
                f"{pet.pet.shape}, affine\n{np.round(pet.pet_affine, 3)}) of "
                f"{pet.sources.get('pet', 'the PET')}, got shape {arr.shape}, affine\n"
                f"{np.round(aff, 3)}; resample it onto the PET grid (nearest neighbour)"
            )
        return arr, str(path)
    arr = np.asarray(value)
    if arr.shape != pet.pet.shape:
        raise FeatureError(
            f"patient {pid}: {what} array: expected the PET shape {pet.pet.shape}, got {arr.shape}"
        )
    return arr, "array"


def _check_case(case: CaseImages) -> None:
    pid = case.patient_id
    for kind in ("pet", "ct"):
        arr = np.asarray(getattr(case, kind))
        src = case.sources.get(kind, f"{kind} array")
        if arr.ndim != 3 or arr.dtype.kind not in "fiu":
            raise FeatureError(
                f"patient {pid}: {src}: expected a numeric 3D image, got shape {arr.shape} "
                f"and dtype {arr.dtype}"
            )
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            bad = np.argwhere(~np.isfinite(arr))
            raise FeatureError(
                f"patient {pid}: {src}: expected finite values, got {len(bad)} NaN/inf "
                f"voxel(s), first at index {tuple(int(v) for v in bad[0])}"
            )
        _check_affine(getattr(case, f"{kind}_affine"), f"patient {pid}: {src}")


def _check_spacing(spacing: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(spacing, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        arr = np.zeros(0)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise FeatureError(f"{what}: expected three positive spacings (mm), got {spacing!r}")
    return arr


def _lost_regions(
    src: np.ndarray,
    src_affine: np.ndarray,
    dst: np.ndarray,
    dst_affine: np.ndarray,
    n: int,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Regions that nearest-neighbour resampling lost, and where to pool them instead.

    A region present in ``src`` but without a voxel in ``dst`` (its nearest-neighbour
    resampling) is pooled over the ``dst`` voxels that contain the centres of its ``src``
    voxels: the nearest voxels of the network grid, usually one for a one-voxel lesion.
    Such voxels may belong to another region too, so these fallback regions live in
    label maps of their own ("layers", each region in the first layer where its voxels
    are still free; `pool_regions_streaming` lets regions of different maps overlap).

    Returns
    -------
    lost : ndarray, shape (V,), int64
        The lost region ids, ascending.
    layers : list of ndarray, shape dst.shape, uint16
        Label maps on the ``dst`` grid; id ``k`` stands for region ``lost[k - 1]``, which
        lies in exactly one layer.
    """
    src_counts = np.bincount(src.reshape(-1), minlength=n + 1)[1:]
    dst_counts = np.bincount(dst.reshape(-1), minlength=n + 1)[1:]
    lost = np.flatnonzero((src_counts > 0) & (dst_counts == 0)) + 1
    if lost.size == 0:
        return lost, []
    compact = np.zeros(n + 1, dtype=np.int64)
    compact[lost] = np.arange(1, lost.size + 1)
    src_flat = src.reshape(-1)
    flat = np.flatnonzero(np.isin(src_flat, lost))
    ids = compact[src_flat[flat]]
    ijk = np.stack(np.unravel_index(flat, src.shape), -1).astype(np.float64)
    m = np.linalg.solve(dst_affine, src_affine)  # source index -> destination index
    idx = np.floor(ijk @ m[:3, :3].T + m[:3, 3] + 0.5).astype(np.int64)
    idx = np.clip(idx, 0, np.asarray(dst.shape) - 1)
    where = np.ravel_multi_index(tuple(idx.T), dst.shape)
    order = np.lexsort((where, ids))
    ids, where = ids[order], where[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    layers: list[np.ndarray] = []
    for a, b in zip(starts, np.r_[starts[1:], ids.size], strict=True):
        voxels = np.unique(where[a:b])
        for layer in layers:
            if not layer.reshape(-1)[voxels].any():
                break
        else:
            layer = np.zeros(dst.shape, dtype=np.uint16)
            layers.append(layer)
        layer.reshape(-1)[voxels] = ids[a]
    return lost, layers


def _fallback_key(name: str, layer: int) -> str:
    return f"{name}:fallback{layer}"


def _merge_fallback(
    result: PoolResult, name: str, lost: np.ndarray, n_layers: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, counts and presence of map ``name`` with its lost regions filled in."""
    feats = result.features[name].copy()
    counts = result.counts[name].copy()
    present = result.present[name].copy()
    for layer in range(n_layers):
        key = _fallback_key(name, layer)
        here = result.present[key]
        rows = lost[here] - 1
        feats[rows] = result.features[key][here]
        counts[rows] = result.counts[key][here]
        present[rows] = True
    return feats, counts, present


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    # an open file, not a name: np.savez appends ".npz" to names that lack it
    np.savez_compressed(buf, **arrays)
    with atomic_output(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def extract_case_features(
    model_fn: ModelFn,
    case: str | Path | CaseImages,
    lesion_instances: str | Path | np.ndarray | None = None,
    organ_labels: str | Path | np.ndarray | None = None,
    *,
    patch_size: Sequence[int],
    normalization: ChannelNormalization | Normalizer | Sequence[Sequence[float]],
    out_path: str | Path | None = None,
    step_size: float = 0.5,
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    streaming: bool = True,
    progress: bool = False,
    target_spacing: Sequence[float] | None = None,
    spacing_rtol: float = _SPACING_RTOL,
    network: Mapping[str, Any] | None = None,
) -> CaseFeatures:
    """Lesion and organ features of one patient (paper Eq. 1-2), written atomically.

    Steps: read and check the images; resample the CT onto the PET grid (trilinear, air
    outside its field of view) when it is on its own grid; normalise the two channels;
    merge the organ labels into the 71 groups; one sliding-window pass with streaming
    pooling over lesions and organs; the lesion table; the ``.npz`` file.

    **Another network spacing.** When ``target_spacing`` (the nnU-Net plan's spacing)
    differs from the PET voxel spacing by more than ``spacing_rtol``, the pass runs where
    nnU-Net would run it: on the grid of that spacing that covers the PET field of view
    (`lamp.images.grid_with_spacing`, nnU-Net's shape rule). As nnU-Net's preprocessing
    does, the two channels are normalised on the PET grid and then resampled with
    third-order splines (nnU-Net's data order; its separate low-order resampling of an
    axis more than 3x coarser than the others is not imitated); the lesion instances and
    organ groups follow by nearest neighbour, and the features are pooled there. A region
    that nearest-neighbour resampling loses (a lesion smaller than a network voxel, or
    one that falls between the sampled voxel centres) is **kept**: it is pooled over the
    network-grid voxels that contain the centres of its PET voxels (usually one), so
    ``lesion_ids``, the table and ``lesion_features`` stay aligned and every feature is
    finite; its ids are listed in ``meta["fallback_lesion_ids"]`` (organ groups in
    ``meta["fallback_organ_groups"]``). The lesion table is always computed on the
    original PET grid, and the returned probability is interpolated (linearly, as nnU-Net
    exports probabilities) back onto it. Within ``spacing_rtol`` (or without
    ``target_spacing``) nothing is resampled and the result is the same, bit for bit,
    as before this option existed.

    Parameters
    ----------
    model_fn : callable
        See `ModelFn`: ``(B, 2, *patch)`` -> ``(probability (B, 1, *patch), features
        (B, 128, *patch))``; channel 0 normalised CT, 1 normalised PET.
    case : path or CaseImages
        A case folder ``cases/<patient_id>/`` (``pet.nii.gz`` SUV, ``ct.nii.gz`` HU) or the
        arrays.
    lesion_instances : path, ndarray (X, Y, Z) of int, or None
        Lesion instance ids 1..J (<= 65535) on the PET grid, predicted or reference.
        None: the case folder's ``lesions.nii.gz`` (the reference masks).
    organ_labels : path, ndarray (X, Y, Z) of int, or None
        TotalSegmentator 'total' ids 0..117 on the PET grid, merged here with
        `lamp.anatomy.merge_to_groups`. None: the case folder's ``organs.nii.gz``.
    patch_size : sequence of 3 int
        The network's patch size.
    normalization : ChannelNormalization, callable or pairs
        Channel normalisation (nnU-Net's plans define it): a `ChannelNormalization`, a
        callable ``(ct_hu, pet_suv) -> (2, X, Y, Z)`` float array, or
        ``((ct_mean, ct_std), (pet_mean, pet_std))`` (CT clipped to `CT_CLIP_HU` first).
    out_path : path, optional
        A folder (the file is ``<out_path>/<patient_id>.npz``) or a file name ending in
        ``.npz``. Written atomically: an interrupted run leaves no file that looks finished.
    step_size, device, batch_size, progress
        As in `pool_regions_streaming`.
    streaming : bool, default True
        False uses `pool_regions_full` (same numbers, the full map in memory).
    target_spacing : sequence of 3 float, optional
        The network's voxel spacing (mm) along the PET's ``i``, ``j``, ``k`` axes (for an
        nnU-Net plan: its ``spacing`` reversed, when the plan does not transpose axes).
        None: the network runs on the PET grid.
    spacing_rtol : float, default 0.01
        Relative difference of spacing up to which the PET grid is used as it is: the
        pooling grid is then the PET grid either way, and the network sees voxels at most
        1 % off its own (nnU-Net trains with scale augmentation of 0.7-1.4).
    network : mapping, optional
        Which trained network ``model_fn`` is (e.g. ``{"fold": 2, "model_dir": ...}``),
        stored as ``meta["network"]``: features of different networks lie in different
        spaces, and `lamp.model.train.train_cv` checks that each fold model sees one.

    Returns
    -------
    CaseFeatures
        Also what the file holds: ``lesion_ids`` (J,) int32, ``lesion_features`` (J, 128)
        float32, ``lesion_voxels`` (J,), ``organ_features`` (71, 128) float32,
        ``organ_present`` (71,) bool, ``organ_voxels`` (71,), ``lesion_table`` (JSON) and
        ``meta`` (JSON). **No lesion** is a valid result: J = 0, ``lesion_features`` of
        shape (0, 128), an empty table; the organs are pooled as usual.
        ``lesion_voxels`` and ``organ_voxels`` count the voxels pooled, on the network's
        grid (the table's ``voxels`` column counts PET voxels). ``meta`` records the PET,
        target and network-grid spacings (mm), the network grid's shape, whether the
        input was resampled, and how.

    Raises
    ------
    FeatureError
        Missing or unreadable files, label maps off the PET grid, NaN/inf voxels, label ids
        out of range (lesions 0..65535, organs 0..117), no overlap between CT and PET, a
        normaliser or model output of the wrong shape, a target spacing that is not three
        positive numbers. The message names the patient and the file (or the argument).
    """
    if isinstance(case, CaseImages):
        images, folder = case, None
    else:
        folder = Path(case)
        if not folder.is_dir():
            raise FeatureError(f"{folder}: case folder not found (expected cases/<patient_id>/)")
        images = load_case_images(folder)
    _check_case(images)
    pid = images.patient_id
    patch = _triplet(patch_size, "patch_size")
    normalize = _as_normalizer(normalization)
    target = None if target_spacing is None else _check_spacing(target_spacing, "target_spacing")
    if isinstance(spacing_rtol, bool) or not isinstance(spacing_rtol, int | float | np.floating):
        raise FeatureError(f"spacing_rtol: expected a number >= 0, got {spacing_rtol!r}")
    rtol = float(spacing_rtol)
    if not (math.isfinite(rtol) and rtol >= 0):
        raise FeatureError(f"spacing_rtol: expected a number >= 0, got {spacing_rtol!r}")

    les_raw, les_src = _label_input(
        lesion_instances,
        folder / CASE_FILES["lesions"] if folder else None,
        "lesions",
        pid,
        images,
    )
    org_raw, org_src = _label_input(
        organ_labels, folder / CASE_FILES["organs"] if folder else None, "organs", pid, images
    )
    try:
        lesions = _check_labels(les_raw, f"lesion instances {les_src}", _MAX_LESION_ID)
    except FeatureError as exc:
        raise FeatureError(f"patient {pid}: {exc}") from None
    try:
        groups = merge_to_groups(org_raw)
    except AnatomyError as exc:
        raise FeatureError(f"patient {pid}: organ labels {org_src}: {exc}") from None

    pet = np.asarray(images.pet)
    pet_aff = np.asarray(images.pet_affine, dtype=np.float64)
    ct = np.asarray(images.ct)
    ct_aff = np.asarray(images.ct_affine, dtype=np.float64)
    ct_src = images.sources.get("ct", "ct array")
    resampled = not same_grid(ct.shape, ct_aff, pet.shape, pet_aff)
    if resampled:
        if overlap_fraction(ct.shape, ct_aff, pet.shape, pet_aff) <= 0.0:
            raise FeatureError(
                f"patient {pid}: {ct_src}: the CT field of view does not overlap the PET's "
                "(check the two affines)"
            )
        ct = resample_to_grid(ct, ct_aff, pet.shape, pet_aff, order=1, fill=CT_CLIP_HU[0])
    image = np.asarray(normalize(ct, pet))
    if image.shape != (2, *pet.shape) or image.dtype.kind != "f":
        raise FeatureError(
            f"patient {pid}: normalization: expected a float array of shape "
            f"{(2, *pet.shape)}, got {image.dtype} {image.shape}"
        )
    if not np.all(np.isfinite(image)):
        raise FeatureError(f"patient {pid}: normalization: produced NaN or inf values")

    n_lesions = int(lesions.max()) if lesions.size else 0
    label_maps: dict[str, np.ndarray] = {"lesions": lesions, "organs": groups}
    n_regions = {"lesions": n_lesions, "organs": N_GROUPS}
    pet_spacing = voxel_spacing(pet_aff)
    to_target = target is not None and not np.allclose(pet_spacing, target, rtol=rtol, atol=0.0)
    net_shape, net_aff = pet.shape, pet_aff
    lost: dict[str, np.ndarray] = {}
    n_layers: dict[str, int] = {}
    if to_target:
        # nnU-Net's order at inference: normalise on the original grid, then resample the
        # data (third order) to the target spacing; label maps by nearest neighbour
        net_shape, net_aff = grid_with_spacing(pet.shape, pet_aff, target)
        image = np.stack(
            [
                resample_to_grid(image[c], pet_aff, net_shape, net_aff, order=_IMAGE_ORDER)
                for c in range(image.shape[0])
            ]
        )
        for name, n in list(n_regions.items()):
            on_pet = label_maps[name]
            on_net = resample_to_grid(on_pet, pet_aff, net_shape, net_aff, order=0)
            label_maps[name] = on_net
            lost[name], layers = _lost_regions(on_pet, pet_aff, on_net, net_aff, n)
            n_layers[name] = len(layers)
            for i, layer in enumerate(layers):
                label_maps[_fallback_key(name, i)] = layer
                n_regions[_fallback_key(name, i)] = int(lost[name].size)

    pool = pool_regions_streaming if streaming else pool_regions_full
    result = pool(
        model_fn,
        image.astype(np.float32, copy=False),
        label_maps,
        n_regions,
        patch,
        step_size=step_size,
        device=device,
        batch_size=batch_size,
        progress=progress,
    )
    n_feat = result.features["organs"].shape[1]
    if to_target:
        les_feat, les_count, present = _merge_fallback(
            result, "lesions", lost["lesions"], n_layers["lesions"]
        )
        org_feat, org_count, org_present = _merge_fallback(
            result, "organs", lost["organs"], n_layers["organs"]
        )
        # the lesion probability back on the PET grid, linearly as nnU-Net exports it
        probability = resample_to_grid(result.probability, net_aff, pet.shape, pet_aff, order=1)
    else:
        les_feat, les_count, present = (
            result.features["lesions"], result.counts["lesions"], result.present["lesions"]
        )  # fmt: skip
        org_feat, org_count = result.features["organs"], result.counts["organs"]
        org_present = result.present["organs"].copy()
        probability = result.probability
    lesion_ids = (np.flatnonzero(present) + 1).astype(np.int32)
    # clinical quantities on the PET grid whatever the network's spacing
    table = lesion_table(pet, lesions, pet_aff, groups, pid)
    meta = {
        "format": FEATURES_FORMAT,
        "patient_id": pid,
        "n_features": int(n_feat),
        "feature_layout": FEATURE_LAYOUT,
        "patch_size": list(patch),
        "step_size": float(step_size),
        "n_windows": result.n_windows,
        "pooling": "streaming" if streaming else "full",
        "normalization": repr(normalize),
        "sources": {"lesions": les_src, "organs": org_src, **images.sources},
        # what the label maps were, so that a rerun can tell new masks from the same ones
        "source_sha256": {
            "lesions": file_digest(les_src) if les_src != "array" else None,
            "organs": file_digest(org_src) if org_src != "array" else None,
        },
        "ct_resampled_to_pet_grid": resampled,
        "pet_spacing_mm": pet_spacing.tolist(),
        "target_spacing_mm": None if target is None else target.tolist(),
        "resampled_to_target_spacing": bool(to_target),
        "network_grid_shape": [int(n) for n in net_shape],
        "network_grid_spacing_mm": voxel_spacing(net_aff).tolist(),
    }
    if network is not None:
        # which trained network made the features (lamp.segmentation.extract: its fold);
        # features of different networks live in different spaces (lamp.model.train)
        meta["network"] = dict(network)
    if to_target:
        meta["resampling"] = {
            "image": f"spline order {_IMAGE_ORDER} after normalisation (nnU-Net's data order)",
            "labels": "nearest neighbour",
            "probability": "linear, back to the PET grid",
            "lost_regions": "pooled over the network-grid voxels holding their voxel centres",
        }
        meta["fallback_lesion_ids"] = lost["lesions"].tolist()
        meta["fallback_organ_groups"] = lost["organs"].tolist()
    feats = CaseFeatures(
        patient_id=pid,
        lesion_ids=lesion_ids,
        lesion_features=les_feat[present].astype(np.float32).reshape(-1, n_feat),
        lesion_voxels=les_count[present],
        organ_features=org_feat.astype(np.float32),
        organ_present=org_present,
        organ_voxels=org_count,
        table=table,
        meta=meta,
        probability=probability,
    )
    if out_path is None:
        return feats
    out = Path(out_path)
    path = out if out.suffix == ".npz" else out / f"{pid}.npz"
    _write_npz(
        path,
        {
            "patient_id": np.array(pid),
            "lesion_ids": feats.lesion_ids,
            "lesion_features": feats.lesion_features,
            "lesion_voxels": feats.lesion_voxels,
            "organ_features": feats.organ_features,
            "organ_present": feats.organ_present,
            "organ_voxels": feats.organ_voxels,
            "lesion_table": np.array(table.to_json(orient="split", index=False)),
            "meta": np.array(json.dumps(meta)),
        },
    )
    return CaseFeatures(**{**feats.__dict__, "path": path})


def load_case_features(path: str | Path) -> CaseFeatures:
    """Read a file written by `extract_case_features` (no pickled objects).

    Raises
    ------
    FeatureError
        A missing or unreadable file, or one of another layout.
    """
    path = Path(path)
    if not path.is_file():
        raise FeatureError(f"{path}: features file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        meta = json.loads(str(data["meta"]))
        table = pd.read_json(
            io.StringIO(str(data["lesion_table"])),
            orient="split",
            dtype=False,  # keep ids such as "0012" strings
            convert_dates=False,
        )
    except Exception as exc:  # zipfile, KeyError, JSON: all mean "not our file"
        raise FeatureError(
            f"{path}: unreadable features file: {type(exc).__name__}: {exc}"
        ) from None
    if meta.get("format") != FEATURES_FORMAT:
        raise FeatureError(
            f"{path}: expected features format {FEATURES_FORMAT}, got {meta.get('format')}"
        )
    table = table.reindex(columns=list(LESION_TABLE_COLUMNS))
    for col in ("organ", "nodal_region", "patient_id"):
        table[col] = table[col].fillna("").astype(str)
    n_feat = int(meta["n_features"])
    return CaseFeatures(
        patient_id=str(data["patient_id"]),
        lesion_ids=data["lesion_ids"],
        lesion_features=data["lesion_features"].reshape(-1, n_feat),
        lesion_voxels=data["lesion_voxels"],
        organ_features=data["organ_features"],
        organ_present=data["organ_present"],
        organ_voxels=data["organ_voxels"],
        table=table,
        meta=meta,
        probability=None,
        path=path,
    )
