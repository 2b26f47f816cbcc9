"""The deep baselines on whole images: fixed-size volumes, Guo2021 (PSI) and Liu2022."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from lamp.baselines._deep import (
    check_counts,
    flip_where,
    predict_in_batches,
    seeded_generator,
    train_epochs,
)
from lamp.baselines.common import BaselineError, read_oof
from lamp.baselines.guo2021 import (
    UNLABELED,
    Guo2021Config,
    fit_predict_guo2021,
    mip_views,
    prediction_similarity_index,
    run_guo2021,
    two_year_labels,
)
from lamp.baselines.liu2022 import (
    Liu2022Config,
    fit_predict_liu2022,
    run_liu2022,
    soft_dice_loss,
)
from lamp.baselines.volumes import (
    case_lesion_volume,
    case_volume,
    cohort_volumes,
    fixed_grid,
    volume_dir,
)
from lamp.cohort import read_folds, write_folds
from lamp.images import save_nifti

TINY = (16, 16, 32)
# pfs_months, pfs_event, os_months, os_event of SYN0000..SYN0007 (SYN0008/9: no outcome).
# Folds are i % 5, so every training fold holds 2-year events, 2-year event-free
# patients and censored-before-24-months (unlabeled) patients, for PFS and for OS.
OUTCOMES = [
    (10.0, 1, 15.0, 1),
    (30.0, 0, 30.0, 0),
    (12.0, 0, 12.0, 0),
    (18.0, 1, 22.0, 1),
    (36.0, 1, 50.0, 1),
    (8.0, 1, 20.0, 1),
    (20.0, 0, 20.0, 0),
    (48.0, 0, 48.0, 0),
]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from lamp.synth.generate import SynthRequest, generate_cohort

    out = tmp_path_factory.mktemp("deep") / "cohort"
    generate_cohort(SynthRequest(out=out, n_patients=10, seed=1, size="tiny", export_nnunet=False))
    clin = pd.read_csv(out / "clinical.csv", dtype={"patient_id": str})
    cols = ["pfs_months", "pfs_event", "os_months", "os_event"]
    clin[cols] = clin[cols].astype(object)
    for i in range(10):
        clin.loc[i, cols] = list(OUTCOMES[i]) if i < len(OUTCOMES) else [None] * 4
    clin.to_csv(out / "clinical.csv", index=False)
    write_folds(
        out / "folds.csv",
        pd.DataFrame({"patient_id": clin["patient_id"], "fold": np.arange(10) % 5}),
    )
    return out


@pytest.fixture(scope="module")
def volumes(cohort, tmp_path_factory):
    work = tmp_path_factory.mktemp("deepwork")
    ids = [f"SYN{i:04d}" for i in range(8)]
    return work, cohort_volumes(cohort, work, ids, TINY, masks="manual")


# --------------------------------------------------------------------------------------
# Fixed-size volumes
# --------------------------------------------------------------------------------------


def _write_case(root, pid="H001", ct_half=True):
    """PET 5 SUV everywhere on a flipped 4 mm grid; CT 500 HU on its own 5 mm grid that
    covers only the upper half (z > 0) of the PET field of view; one lesion block."""
    case = root / "cases" / pid
    pet_aff = np.array([[-4.0, 0, 0, 40], [0, -4, 0, 40], [0, 0, 4, -118], [0, 0, 0, 1]])
    pet = np.full((20, 20, 60), 5.0, dtype=np.float32)
    save_nifti(case / "pet.nii.gz", pet, pet_aff)
    ct_aff = np.diag([5.0, 5.0, 5.0, 1.0])
    ct_aff[:3, 3] = [-47.5, -47.5, 2.5 if ct_half else -117.5]
    ct = np.full((20, 20, 24 if ct_half else 48), 500, dtype=np.int16)
    save_nifti(case / "ct.nii.gz", ct, ct_aff)
    les = np.zeros((20, 20, 60), dtype=np.uint16)
    les[4:12, 4:12, 10:26] = 1
    save_nifti(case / "lesions.nii.gz", les, pet_aff)
    return case


def test_fixed_grid_is_the_world_box():
    # PET of 10 x 20 x 30 voxels, x flipped: world box x -1..19 mm... checked by hand
    aff = np.array([[-2.0, 0, 0, 18.0], [0, 3, 0, -30.0], [0, 0, 4, 0.0], [0, 0, 0, 1]])
    out = fixed_grid((10, 20, 30), aff, (5, 6, 8))
    # x edges: 18 - 2 * (-0.5) = 19 and 18 - 2 * 9.5 = -1 -> 20 mm / 5 voxels
    # y edges: -31.5 .. 28.5 -> 60 / 6 = 10; z edges: -2 .. 118 -> 120 / 8 = 15
    np.testing.assert_allclose(np.diag(out)[:3], [4.0, 10.0, 15.0])
    np.testing.assert_allclose(out[:3, 3], [-1.0 + 2.0, -31.5 + 5.0, -2.0 + 7.5])


def test_case_volume_normalises_and_resamples_ct_through_world(tmp_path):
    _write_case(tmp_path)
    vol = case_volume(tmp_path, tmp_path / "work", "H001", (8, 8, 16))
    assert vol["pet"].shape == vol["ct"].shape == (8, 8, 16)
    assert vol["pet"].dtype == np.float32
    np.testing.assert_allclose(vol["pet"], 0.5, atol=1e-6)  # 5 SUV / 10
    # the CT covers the upper half of the PET box (z > 0) at 500 HU; below it is air
    np.testing.assert_allclose(vol["ct"][:, :, 10:], 0.5, atol=1e-5)
    np.testing.assert_allclose(vol["ct"][:, :, :6], -1.0, atol=1e-5)
    lesion = case_lesion_volume(tmp_path, tmp_path / "work", "H001", (8, 8, 16))
    assert lesion.min() >= 0.0 and lesion.max() <= 1.0
    # the lesion block covers 8 * 8 * 16 PET voxels = 1/25 * ... of the box: its
    # total fraction is preserved approximately by the averaging
    assert lesion.sum() * (20 * 20 * 60) / (8 * 8 * 16) == pytest.approx(8 * 8 * 16, rel=0.15)


def test_volume_cache_resumes_and_rebuilds_when_an_input_is_newer(tmp_path):
    case = _write_case(tmp_path)
    work = tmp_path / "work"
    case_volume(tmp_path, work, "H001", (8, 8, 16))
    cache = volume_dir(work, (8, 8, 16)) / "H001.npz"
    assert cache.is_file()
    stamp = cache.stat().st_mtime_ns
    os.utime(cache, ns=(stamp - 10**9, stamp - 10**9))  # older than nothing: still fresh
    os.utime(case / "pet.nii.gz", ns=(stamp - 2 * 10**9, stamp - 2 * 10**9))
    os.utime(case / "ct.nii.gz", ns=(stamp - 2 * 10**9, stamp - 2 * 10**9))
    before = cache.stat().st_mtime_ns
    case_volume(tmp_path, work, "H001", (8, 8, 16))
    assert cache.stat().st_mtime_ns == before  # reused, not rewritten
    os.utime(case / "pet.nii.gz", ns=(before + 10**9, before + 10**9))
    case_volume(tmp_path, work, "H001", (8, 8, 16))
    assert cache.stat().st_mtime_ns != before  # the PET is newer: rebuilt
    assert not [p for p in cache.parent.iterdir() if p.name.endswith(".tmp")]


def test_missing_images_name_patient_and_file(tmp_path):
    case = _write_case(tmp_path)
    work = tmp_path / "work"
    (case / "ct.nii.gz").unlink()
    with pytest.raises(BaselineError, match=r"patient H001: .*ct\.nii\.gz: no such file"):
        case_volume(tmp_path, work, "H001", (8, 8, 16))
    (case / "pet.nii.gz").unlink()
    with pytest.raises(BaselineError, match=r"patient H001: .*pet\.nii\.gz: no such file"):
        case_volume(tmp_path, work, "H001", (8, 8, 16))
    _write_case(tmp_path)
    (case / "lesions.nii.gz").unlink()
    with pytest.raises(BaselineError, match=r"patient H001: .*lesions\.nii\.gz: no such file"):
        case_lesion_volume(tmp_path, work, "H001", (8, 8, 16), "manual")
    with pytest.raises(BaselineError, match="segment predict"):
        case_lesion_volume(tmp_path, work, "H001", (8, 8, 16), "automatic")


def test_cohort_volumes_on_synthetic_cases(volumes):
    _, vol = volumes
    assert vol.images.shape == (8, 2, *TINY) and vol.lesions.shape == (8, *TINY)
    pet, ct = vol.images[:, 0], vol.images[:, 1]
    assert pet.min() >= 0.0 and pet.max() <= 2.0 and pet.max() > 0.5  # hot lesions / organs
    assert ct.min() >= -1.0 and ct.max() <= 1.0 and ct.min() == pytest.approx(-1.0)
    assert 0.0 <= vol.lesions.min() and vol.lesions.max() <= 1.0
    assert (vol.lesions.sum(axis=(1, 2, 3)) > 0).all()  # every synthetic patient has lesions
    # lesions are hot: PET inside lesions is higher than the body average
    assert pet[vol.lesions > 0.5].mean() > 2 * pet[ct > -0.5].mean()


# --------------------------------------------------------------------------------------
# The shared training scaffolding (_deep)
# --------------------------------------------------------------------------------------


def test_flip_where_flips_only_the_flagged_samples():
    import torch

    t = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    out = flip_where(t, torch.tensor([False, True]), 2)
    assert torch.equal(out[0], t[0]) and torch.equal(out[1], t[1].flip(1))


def test_train_epochs_order_flips_and_reported_means():
    import torch

    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    seen = []

    def batch_loss(idx, flip):
        seen.append((idx.tolist(), flip.tolist()))
        loss = model(idx.float()[:, None]).sum() * 0.0
        return loss, {"size": torch.tensor(float(len(idx))), "first": idx[0].float()}

    last = train_epochs(model, opt, 5, 2, 2, seeded_generator(7), batch_loss)
    # 2 epochs of batches 2 + 2 + 1, each epoch a permutation of the 5 patients
    assert [len(b[0]) for b in seen] == [2, 2, 1, 2, 2, 1]
    assert sorted(sum((b[0] for b in seen[3:]), [])) == [0, 1, 2, 3, 4]
    # per-patient means of the last epoch: (2 * 2 + 2 * 2 + 1 * 1) / 5
    assert last["size"] == pytest.approx(9 / 5)
    gen = seeded_generator(7)
    order = torch.randperm(5, generator=gen).tolist()
    assert seen[0][0] == order[:2]  # the same draws from the same seed
    assert seen[0][1] == (torch.rand(2, generator=gen) < 0.5).tolist()
    assert train_epochs(model, opt, 5, 0, 2, gen, batch_loss) == {}


def test_predict_in_batches_concatenates_every_output():
    import torch

    model = torch.nn.Linear(3, 2)
    x = torch.randn(7, 3)
    whole = predict_in_batches(lambda a: (model(a), a.sum(1)), model, (x,), 100)
    batched = predict_in_batches(lambda a: (model(a), a.sum(1)), model, (x,), 3)
    assert len(batched) == 2 and batched[0].shape == (7, 2) and not model.training
    assert torch.allclose(whole[0], batched[0]) and torch.equal(whole[1], batched[1])
    (single,) = predict_in_batches(lambda a: a * 2, model, (x,), 4)
    assert torch.equal(single, x * 2)


def test_check_counts_names_the_setting():
    with pytest.raises(BaselineError, match=r"Guo2021Config\.epochs: expected an integer >= 1"):
        Guo2021Config(epochs=0)
    with pytest.raises(BaselineError, match=r"Liu2022Config\.n_bins: .* got 2\.5"):
        Liu2022Config(n_bins=2.5)
    check_counts(Guo2021Config(), ("pseudo_epochs",), minimum=0)


# --------------------------------------------------------------------------------------
# Guo2021
# --------------------------------------------------------------------------------------


def test_two_year_labels_by_hand():
    time = [10.0, 30.0, 12.0, 24.0, 24.0, 5.0, 23.9]
    event = [1, 0, 0, 1, 0, 0, 1]
    expected = [1, 0, UNLABELED, 1, 0, UNLABELED, 1]  # an event at 24.0 is an event by 24
    assert two_year_labels(time, event).tolist() == expected
    assert two_year_labels([10.0, 30.0], [0, 1], horizon_months=12.0).tolist() == [UNLABELED, 0]
    with pytest.raises(BaselineError, match="one length"):
        two_year_labels([1.0, 2.0], [1])


def test_prediction_similarity_index_by_hand():
    features = np.array([[0.0, 0.0], [3.0, 0.0], [1.0, 0.0], [2.0, 5.0]])
    c_event, c_none = np.array([4.0, 0.0]), np.array([0.0, 0.0])
    psi = prediction_similarity_index(features, c_event, c_none)
    # d(f, c0) / d(f, c1): 0/4, 3/1, 1/3, sqrt(29)/sqrt(29) (on the bisector x = 2)
    np.testing.assert_allclose(psi, [0.0, 3.0, 1.0 / 3.0, 1.0])


def test_mip_views():
    rng = np.random.default_rng(0)
    images = rng.random((3, 2, 4, 5, 6)).astype(np.float32)
    cor, sag = mip_views(images)
    assert cor.shape == (3, 2, 4, 6) and sag.shape == (3, 2, 5, 6)
    np.testing.assert_allclose(cor[:, 0], images[:, 0].max(axis=2))
    np.testing.assert_allclose(cor[:, 1], images[:, 1].mean(axis=2), rtol=1e-6)
    np.testing.assert_allclose(sag[:, 0], images[:, 0].max(axis=1))
    with pytest.raises(BaselineError, match="shape"):
        mip_views(images[:, :1])


def _check_oof(oof, cohort, method, endpoints):
    folds = read_folds(cohort / "folds.csv")
    assert len(oof) == 8 * len(endpoints)
    assert set(oof["method"]) == {method}
    assert {"SYN0008", "SYN0009"}.isdisjoint(oof["patient_id"])  # no outcome
    merged = oof.merge(folds, on="patient_id", suffixes=("", "_cohort"))
    assert (merged["fold"] == merged["fold_cohort"]).all()
    assert np.isfinite(oof["risk"]).all()
    for endpoint in endpoints:
        assert sorted(oof.loc[oof["endpoint"] == endpoint, "patient_id"]) == [
            f"SYN{i:04d}" for i in range(8)
        ]


def test_run_guo2021_cross_validates(cohort, volumes):
    work, _ = volumes
    oof = run_guo2021(work, cohort, endpoints=("pfs", "os"), config=Guo2021Config.tiny())
    _check_oof(oof, cohort, "Guo2021", ["pfs", "os"])
    assert (oof["risk"] >= 0).all()  # a ratio of distances
    back = read_oof(work / "baselines" / "Guo2021" / "oof_risk.csv")
    assert len(back) == len(oof)
    settings = json.loads((work / "baselines" / "Guo2021" / "config.json").read_text())["settings"]
    assert settings["size"] == list(TINY) and settings["epochs"] == 2
    counts = settings["training_counts"]
    assert len(counts) == 10 and all(c["unlabeled"] >= 1 for c in counts)


def test_guo2021_is_deterministic_and_needs_both_classes(volumes):
    _, vol = volumes
    time = np.array([t[0] for t in OUTCOMES[:6]])
    event = np.array([t[1] for t in OUTCOMES[:6]])
    cfg = Guo2021Config.tiny()
    a, info = fit_predict_guo2021(vol.images[:6], time, event, vol.images[6:], cfg, seed=3)
    b, _ = fit_predict_guo2021(vol.images[:6], time, event, vol.images[6:], cfg, seed=3)
    c, _ = fit_predict_guo2021(vol.images[:6], time, event, vol.images[6:], cfg, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert info["labeled_event"] == 3 and info["labeled_event_free"] == 2
    assert info["unlabeled"] == 1
    with pytest.raises(BaselineError, match="both"):
        fit_predict_guo2021(vol.images[:3], np.full(3, 30.0), np.zeros(3), vol.images[6:], cfg, 0)


def test_guo2021_config_is_checked():
    with pytest.raises(BaselineError, match="pseudo_threshold"):
        Guo2021Config(pseudo_threshold=0.4)
    with pytest.raises(BaselineError, match="size"):
        Guo2021Config(size=(16, 16))


# --------------------------------------------------------------------------------------
# Liu2022
# --------------------------------------------------------------------------------------


def test_soft_dice_loss_by_hand():
    import torch

    target = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    perfect = torch.tensor([[50.0, -50.0, 50.0, -50.0]])
    assert float(soft_dice_loss(perfect, target)) == pytest.approx(0.0, abs=1e-6)
    half = torch.zeros(1, 4)  # p = 0.5 everywhere: 1 - (2 * 1 + 1) / (2 + 2 + 1)
    assert float(soft_dice_loss(half, target)) == pytest.approx(1.0 - 3.0 / 5.0)


def test_run_liu2022_cross_validates(cohort, volumes):
    work, _ = volumes
    oof = run_liu2022(work, cohort, endpoints=("pfs", "os"), config=Liu2022Config.tiny())
    _check_oof(oof, cohort, "Liu2022", ["pfs", "os"])
    assert (oof["risk"] < 0).all()  # -sum of survival probabilities
    settings = json.loads((work / "baselines" / "Liu2022" / "config.json").read_text())["settings"]
    assert settings["masks"] == "manual" and settings["widths"] == [4, 8, 16]
    assert all(np.isfinite(f["last_epoch_seg_loss"]) for f in settings["fits"])


def test_liu2022_is_deterministic(volumes):
    _, vol = volumes
    time = np.array([t[0] for t in OUTCOMES[:6]])
    event = np.array([t[1] for t in OUTCOMES[:6]])
    cfg = Liu2022Config.tiny()
    args = (vol.images[:6], vol.lesions[:6], time, event, vol.images[6:], cfg)
    a, info = fit_predict_liu2022(*args, seed=1)
    b, _ = fit_predict_liu2022(*args, seed=1)
    c, _ = fit_predict_liu2022(*args, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert len(info["bin_edges"]) == 3  # 2 bins
    with pytest.raises(BaselineError, match="at least one event"):
        fit_predict_liu2022(*args[:3], np.zeros(6), *args[4:], seed=0)


def test_liu2022_config_is_checked():
    with pytest.raises(BaselineError, match="divisible"):
        Liu2022Config(size=(20, 16, 32), widths=(4, 8, 16))
    with pytest.raises(BaselineError, match="masks"):
        Liu2022Config(masks="mine")
