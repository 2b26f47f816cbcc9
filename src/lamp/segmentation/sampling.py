"""Hot-background patch sampling: training patches centred on FDG-avid non-lesion tissue.

Why. nnU-Net draws a training patch either at random or centred on a foreground voxel
(``oversample_foreground_percent``). Over nnU-Net's own schedule (1000 epochs x 250
iterations) random patches cover the physiological FDG uptake of brain, heart, urinary
bladder and kidneys thousands of times, and the network learns that these are not
lesions. The CPU ``tiny`` schedule has 600 iterations of two 32^3 patches; on the
``small`` synthetic cohort, fold 0's network then labelled every hot structure a lesion:
of its false positive volume (459 ml per patient), 79 % lay in the bladder, brain and heart
(the 45 patients of fold 0, autoPET's one-voxel overlap rule; Dice 0.38, lesion recall
0.90).

What. With hot-background sampling on, each training case also offers, beside nnU-Net's
per-class foreground locations, the locations of its *hot background* (key
:data:`HOT_KEY`): the hottest 1 % of its voxels outside the lesions (PET at or above the
99th percentile of the non-lesion voxels). On the ``small`` synthetic cohort that set lies
in the brain (about 45 % of it), the bladder, the heart, the kidneys and hot bowel or
liver spots (8 patients checked). nnU-Net's foreground sampling picks one of the offered
location sets uniformly, so a "foreground" patch is centred on a lesion or on hot
background with equal probability. The trainer (:mod:`lamp.segmentation.trainer`) also
switches nnU-Net to probabilistic oversampling at 2/3, so that in expectation a third of
the patches is centred on a lesion, a third on hot background and a third is random.
Only the training split offers hot locations; validation patches (nnU-Net's pseudo Dice)
are centred on lesions or drawn at random, with the same 2/3 share.

This is hard-negative sampling, a training device of the CPU configuration, not part of
the paper's method (which does not describe its patch sampling); ``full`` keeps nnU-Net's
own sampling. The PET channel is z-scored per image by nnU-Net before it reaches the
loader; the threshold is a quantile of the same case, so it is unaffected by that affine
map.
"""

from __future__ import annotations

import numpy as np
from nnunetv2.training.dataloading.nnunet_dataset import (
    nnUNetDatasetBlosc2,
    nnUNetDatasetNumpy,
)

__all__ = [
    "HOT_KEY",
    "MAX_LOCATIONS",
    "hot_background_locations",
    "with_hot_background",
]

#: The key of the hot-background locations in a case's ``class_locations``.
HOT_KEY = "lamp_hot_background"
#: At most this many locations are kept per case (nnU-Net keeps 10,000 per class).
MAX_LOCATIONS = 10_000
#: Percentile of the PET values of a case's non-lesion voxels above which a voxel is "hot".
HOT_PERCENTILE = 99.0

PET_CHANNEL = 1  # lamp.segmentation.dataset.CHANNEL_NAMES: {"0": "CT", "1": "PET"}


def hot_background_locations(
    pet: np.ndarray, seg: np.ndarray, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Locations of the hot background of one case, as nnU-Net stores class locations.

    Parameters
    ----------
    pet : (X, Y, Z) array, the PET channel (any positive affine map of SUV).
    seg : (X, Y, Z) array, the label map: > 0 lesion, 0 background, < 0 outside the
        image's non-zero region (nnU-Net's -1), never sampled.
    rng : random generator for the subsampling to :data:`MAX_LOCATIONS`.

    Returns
    -------
    (N, 4) int64 array of ``(0, x, y, z)`` rows (the leading channel index is nnU-Net's
    convention), N <= MAX_LOCATIONS; N = 0 when the case has no background voxel.
    """
    pet = np.asarray(pet)
    seg = np.asarray(seg)
    if pet.shape != seg.shape or pet.ndim != 3:
        raise ValueError(f"pet {pet.shape} and seg {seg.shape} must be the same 3-D shape")
    background = seg == 0
    if not background.any():
        return np.zeros((0, 4), dtype=np.int64)
    threshold = float(np.percentile(pet[background], HOT_PERCENTILE))
    hot = background & (pet >= threshold)
    loc = np.argwhere(hot)
    if len(loc) > MAX_LOCATIONS:
        rng = rng if rng is not None else np.random.default_rng()
        loc = loc[np.sort(rng.choice(len(loc), MAX_LOCATIONS, replace=False))]
    return np.concatenate([np.zeros((len(loc), 1), dtype=np.int64), loc.astype(np.int64)], 1)


class _HotBackgroundMixin:
    """``load_case`` adds :data:`HOT_KEY` to the case's ``class_locations``.

    The locations are computed on a case's first load and cached in the process (each
    augmentation worker keeps its own cache: ~160 kB per case at most).
    """

    def load_case(self, identifier):
        data, seg, seg_prev, properties = super().load_case(identifier)
        cache = self.__dict__.setdefault("_lamp_hot_cache", {})
        loc = cache.get(identifier)
        if loc is None:
            loc = hot_background_locations(np.asarray(data[PET_CHANNEL]), np.asarray(seg[0]))
            cache[identifier] = loc
        if len(loc):
            properties = dict(properties)
            properties["class_locations"] = {**properties["class_locations"], HOT_KEY: loc}
        return data, seg, seg_prev, properties


class HotBackgroundDatasetBlosc2(_HotBackgroundMixin, nnUNetDatasetBlosc2):
    """nnU-Net's blosc2 dataset with hot-background locations."""


class HotBackgroundDatasetNumpy(_HotBackgroundMixin, nnUNetDatasetNumpy):
    """nnU-Net's numpy dataset with hot-background locations."""


_HOT_CLASSES = {
    nnUNetDatasetBlosc2: HotBackgroundDatasetBlosc2,
    nnUNetDatasetNumpy: HotBackgroundDatasetNumpy,
}


def with_hot_background(dataset):
    """A copy of ``dataset`` (an nnU-Net dataset instance: same folder, cases and
    previous-stage folder) that offers hot-background locations; its class is defined at
    module level, so that the augmentation workers can pickle it."""
    cls = _HOT_CLASSES.get(type(dataset))
    if cls is None:
        raise TypeError(
            f"hot-background sampling supports nnU-Net's {sorted(c.__name__ for c in _HOT_CLASSES)}"
            f", not {type(dataset).__name__}"
        )
    return cls(
        dataset.source_folder,
        list(dataset.identifiers),
        folder_with_segs_from_previous_stage=dataset.folder_with_segs_from_previous_stage,
    )
