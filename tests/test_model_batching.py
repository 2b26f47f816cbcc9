"""Feature files, padded batches, and the batch == batch-1 accumulation gradient."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lamp.model.batching import (
    FeatureFileError,
    StackedPatients,
    Standardizer,
    collate,
    load_features,
)
from lamp.model.layers import LAMP, VARIANTS, ModelConfig
from lamp.model.loss import nll_survival_loss

D, K = 128, 71


def _write(path: Path, n_lesions: int, seed: int, **override) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {
        "lesion_features": rng.normal(size=(n_lesions, D)).astype(np.float32),
        "organ_features": rng.normal(size=(K, D)).astype(np.float32),
        "organ_present": rng.random(K) > 0.2,
        "lesion_ids": np.arange(1, n_lesions + 1),
    }
    arrays.update(override)
    np.savez(path, **arrays)
    return path


def test_load_and_collate(tmp_path: Path) -> None:
    pats = [load_features(_write(tmp_path / f"p{j}.npz", j, j)) for j in (3, 0, 5)]
    assert pats[0].patient_id == "p3" and pats[1].n_lesions == 0
    batch = collate(pats, None)
    assert batch.lesions.shape == (3, 5, D) and batch.organs.shape == (3, K, D)
    assert batch.lesion_mask.sum(1).tolist() == [3, 0, 5]
    assert torch.all(batch.lesions[~batch.lesion_mask] == 0)
    assert batch.patient_ids == ("p3", "p0", "p5")
    # Only zero-lesion patients: the lesion axis still has length 1, all masked.
    empty = collate([pats[1]], None)
    assert empty.lesions.shape == (1, 1, D) and not empty.lesion_mask.any()


def test_stacked_take_equals_collate(tmp_path: Path) -> None:
    pats = [load_features(_write(tmp_path / f"p{j}.npz", j, j)) for j in (3, 0, 5, 1)]
    stacked = StackedPatients(pats)
    for idx in ([2, 0], [1], [3, 1, 0], [0, 1, 2, 3]):
        a, b = stacked.take(idx), collate([pats[i] for i in idx], None)
        assert a.patient_ids == b.patient_ids
        for x, y in zip(a.inputs(), b.inputs(), strict=True):
            assert x.shape == y.shape and torch.equal(x, y)


def test_zero_lesions_saved_as_empty_1d(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.npz", 0, 0, lesion_features=np.zeros(0, np.float32))
    assert load_features(path).lesion_features.shape == (0, D)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"organ_features": np.zeros((70, D), np.float32)}, "organ_features: expected shape"),
        ({"organ_present": np.ones(70, bool)}, "organ_present: expected shape"),
        ({"lesion_ids": np.arange(5)}, r"lesion_ids: expected shape \(2,\)"),
        ({"lesion_features": np.full((2, D), np.nan, np.float32)}, "finite"),
    ],
)
def test_bad_files(tmp_path: Path, override: dict, match: str) -> None:
    with pytest.raises(FeatureFileError, match=match):
        load_features(_write(tmp_path / "bad.npz", 2, 0, **override))


def test_missing_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(FeatureFileError, match="file not found"):
        load_features(tmp_path / "nope.npz")
    np.savez(tmp_path / "x.npz", lesion_features=np.zeros((1, D)))
    with pytest.raises(FeatureFileError, match="missing"):
        load_features(tmp_path / "x.npz")


def test_standardizer_uses_given_patients_and_present_organs(tmp_path: Path) -> None:
    pats = [load_features(_write(tmp_path / f"p{j}.npz", j + 1, j)) for j in range(4)]
    std = Standardizer.fit(pats[:2])
    lesions = np.concatenate([p.lesion_features for p in pats[:2]])
    np.testing.assert_allclose(std.lesion_mean, lesions.mean(0), rtol=1e-5, atol=1e-6)
    organs = np.concatenate([p.organ_features[p.organ_present] for p in pats[:2]])
    np.testing.assert_allclose(std.organ_std, organs.std(0), rtol=1e-5)
    batch = collate(pats[:2], std)
    assert torch.all(batch.organs[~batch.organ_present] == 0)
    assert Standardizer.from_dict(std.to_dict()).lesion_mean.tolist() == std.lesion_mean.tolist()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_padded_batch_gradient_equals_batch1_accumulation(tmp_path: Path, variant: str) -> None:
    """The paper's batch 1 + accumulation over 32 == one padded batch, sum / 32."""
    rng = np.random.default_rng(1)
    counts = [0, 1, 7, 3, 0, 12, 2, 5] * 4  # 32 patients, zero-lesion ones included
    pats = [load_features(_write(tmp_path / f"q{i}.npz", c, 100 + i)) for i, c in enumerate(counts)]
    std = Standardizer.fit(pats)
    bins = torch.as_tensor(rng.integers(0, 4, 32))
    events = torch.as_tensor(rng.integers(0, 2, 32))
    torch.manual_seed(0)
    model = LAMP(ModelConfig.for_variant(variant, n_bins=4))  # dropout 0 by default
    model.train()
    # Reference: batch size 1, loss / 32 accumulated over the 32 patients.
    model.zero_grad()
    for i, p in enumerate(pats):
        logits = model(*collate([p], std).inputs())["logits"]
        (nll_survival_loss(logits, bins[i : i + 1], events[i : i + 1]) / 32).backward()
    reference = {n: q.grad.clone() for n, q in model.named_parameters()}
    # Padded, masked batch: sum of per-patient losses / 32.
    model.zero_grad()
    logits = model(*collate(pats, std).inputs())["logits"]
    (nll_survival_loss(logits, bins, events, reduction="sum") / 32).backward()
    for name, q in model.named_parameters():
        torch.testing.assert_close(q.grad, reference[name], atol=1e-5, rtol=0, msg=name)
    assert model.pool.empty.grad.abs().sum() > 0  # P0 was used and trained
