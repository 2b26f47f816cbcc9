"""Hot-background patch sampling of the CPU segmentation configuration."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import (
    nnUNetDatasetBlosc2,
    nnUNetDatasetNumpy,
)
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from lamp.segmentation import sampling
from lamp.segmentation.sampling import (
    HOT_KEY,
    HotBackgroundDatasetNumpy,
    hot_background_locations,
    with_hot_background,
)

SHAPE = (20, 16, 16)


def _case(rng):
    """PET with a hot 'bladder' block (background) and a hotter lesion elsewhere."""
    pet = rng.normal(1.0, 0.1, SHAPE).astype(np.float32)
    seg = np.zeros(SHAPE, np.int16)
    pet[2:5, 2:5, 2:5] = 30.0  # 27 hot background voxels
    pet[12:14, 10:12, 10:12] = 50.0
    seg[12:14, 10:12, 10:12] = 1  # the lesion, hotter still
    seg[0] = -1  # outside nnU-Net's non-zero region: never sampled
    pet[0] = 99.0
    return pet, seg


def test_hot_locations_are_the_hottest_percent_of_the_background():
    pet, seg = _case(np.random.default_rng(0))
    loc = hot_background_locations(pet, seg)
    assert loc.dtype == np.int64 and loc.shape[1] == 4 and (loc[:, 0] == 0).all()
    x, y, z = loc[:, 1:].T
    assert (seg[x, y, z] == 0).all()  # never a lesion voxel, never nnU-Net's -1
    background = seg == 0
    n_expected = int(np.ceil(0.01 * background.sum()))
    assert n_expected <= len(loc) <= n_expected + 1
    # the 27 block voxels are the hottest background: all of them are offered
    block = {(i, j, k) for i in range(2, 5) for j in range(2, 5) for k in range(2, 5)}
    assert block <= {tuple(r) for r in loc[:, 1:].tolist()}
    assert pet[x, y, z].min() >= np.percentile(pet[background], 99.0)


def test_hot_locations_are_subsampled_and_the_threshold_ignores_the_affine_map(monkeypatch):
    pet, seg = _case(np.random.default_rng(1))
    full = hot_background_locations(pet, seg)
    # nnU-Net z-scores PET per image: the same voxels are hot
    np.testing.assert_array_equal(hot_background_locations(3.0 * pet - 7.0, seg), full)
    monkeypatch.setattr(sampling, "MAX_LOCATIONS", 10)
    sub = hot_background_locations(pet, seg, np.random.default_rng(0))
    assert len(sub) == 10
    assert {tuple(r) for r in sub.tolist()} <= {tuple(r) for r in full.tolist()}
    # no background at all: nothing to offer
    assert hot_background_locations(pet, np.ones(SHAPE, np.int16)).shape == (0, 4)
    with pytest.raises(ValueError, match="same 3-D shape"):
        hot_background_locations(pet, seg[:-1])


def _numpy_dataset(tmp_path, n=2):
    rng = np.random.default_rng(2)
    ids = []
    for i in range(n):
        pet, seg = _case(rng)
        ct = rng.normal(0.0, 1.0, SHAPE).astype(np.float32)
        data = np.stack([ct, pet])
        pid = f"C{i}"
        props = {"class_locations": {1: np.argwhere(seg[None] == 1)}}
        nnUNetDatasetNumpy.save_case(data, seg[None], props, str(tmp_path / pid))
        ids.append(pid)
    return nnUNetDatasetNumpy(str(tmp_path), ids)


def test_dataset_offers_hot_locations_and_pickles(tmp_path):
    base = _numpy_dataset(tmp_path)
    hot = with_hot_background(base)
    assert isinstance(hot, HotBackgroundDatasetNumpy) and hot.identifiers == base.identifiers
    data, seg, _, props = hot.load_case("C0")
    assert set(props["class_locations"]) == {1, HOT_KEY}
    assert len(props["class_locations"][HOT_KEY]) > 0
    # the plain dataset is untouched
    assert set(base.load_case("C0")[3]["class_locations"]) == {1}
    again = pickle.loads(pickle.dumps(hot))  # augmentation workers receive it pickled
    assert HOT_KEY in again.load_case("C1")[3]["class_locations"]
    with pytest.raises(TypeError, match="hot-background sampling supports"):
        with_hot_background(object())
    assert issubclass(sampling._HOT_CLASSES[nnUNetDatasetBlosc2], nnUNetDatasetBlosc2)


def test_loader_centres_patches_on_lesions_hot_background_and_random(tmp_path):
    """nnU-Net's own loader, fed the hot dataset, draws all three kinds of patches."""
    hot = with_hot_background(_numpy_dataset(tmp_path, n=1))
    _, seg, _, props = hot.load_case("C0")
    labels = LabelManager({"background": 0, "lesion": 1}, regions_class_order=None)
    patch = (4, 4, 4)
    loader = nnUNetDataLoader(
        hot, 1, patch, patch, labels, oversample_foreground_percent=2 / 3,
        probabilistic_oversampling=True,
    )  # fmt: skip
    np.random.seed(0)  # noqa: NPY002 (nnU-Net's loader draws from numpy's global state)
    kinds = {"lesion": 0, "hot": 0, "other": 0}
    for _ in range(600):
        forced = loader.get_do_oversample(0)
        lbs, _ = loader.get_bbox(seg.shape[1:], forced, props["class_locations"])
        centre = tuple(lb + p // 2 for lb, p in zip(lbs, patch, strict=True))
        if seg[(0, *centre)] == 1:
            kinds["lesion"] += 1
        elif 2 <= centre[0] < 5 and 2 <= centre[1] < 5 and 2 <= centre[2] < 5:
            kinds["hot"] += 1
        else:
            kinds["other"] += 1
    # a third each in expectation (the hot set also holds a few noise voxels, and random
    # patches fall anywhere): loose bounds that a loader ignoring the hot set would fail
    assert kinds["lesion"] > 120 and kinds["hot"] > 100 and kinds["other"] > 120, kinds


def test_trainer_switch_swaps_only_the_training_dataset(tmp_path):
    from lamp.segmentation.trainer import HOT_FOREGROUND_PERCENT, _LampSchedule

    tr = _numpy_dataset(tmp_path, 1)
    val = nnUNetDatasetNumpy(str(tmp_path), ["C0"])

    class Base:
        probabilistic_oversampling = False
        oversample_foreground_percent = 0.33

        def get_tr_and_val_datasets(self):
            return tr, val

    class Trainer(_LampSchedule, Base):
        pass

    off = Trainer()
    assert off.get_tr_and_val_datasets() == (tr, val)
    assert (off.probabilistic_oversampling, off.oversample_foreground_percent) == (False, 0.33)
    on = Trainer()
    on.hot_background_sampling = True
    new_tr, new_val = on.get_tr_and_val_datasets()
    assert isinstance(new_tr, HotBackgroundDatasetNumpy) and new_val is val
    assert on.probabilistic_oversampling
    assert on.oversample_foreground_percent == HOT_FOREGROUND_PERCENT
