"""Guo2021: weakly supervised CNN with a prediction similarity index (PSI) as risk.

Guo et al., "Weakly supervised deep learning for prognosis of NK/T-cell lymphoma",
EJNMMI 48:3151 (2021) — the "weakly supervised" row of the paper's Table 1. No code is
public and the full methods section could not be read here, so this module separates
what is known (`reference/baselines.md`) from what was chosen.

Known (abstract)
----------------
* 167 patients, 84 with >= 2 years of follow-up (64 train / 20 test) and 83 with
  incomplete follow-up, added to training by weak supervision.
* A deep network on the baseline PET/CT; a "prediction similarity index" (PSI) computed
  from its deep image features, with a threshold of 1.0 separating the two outcomes.
* Test AUC 0.875 against 0.734 for a conventionally supervised network.

Chosen here
-----------
* **Endpoint** (`two_year_labels`): the binary 2-year outcome of the endpoint being
  predicted (PFS or OS; one network per endpoint and fold). Event by 24 months
  (``event == 1 and time <= 24``) -> 1; otherwise followed event-free up to at least 24
  months (``time >= 24``, whatever happens later) -> 0; censored before 24 months ->
  unlabeled. An event at exactly 24.0 months counts as an event by 24 months (as the
  AUC at 24 months counts it, T <= t, and as Thiery2025's labels do).
* **Input**: two 2D views of the fixed-size volume of `lamp.baselines.volumes` (default
  32 x 32 x 64): the coronal and the sagittal projection, each a 2-channel image
  (PET maximum-intensity projection; CT *mean* projection, because a CT MIP shows little
  but bone and the table). MIPs are the usual whole-body 2D input of PET prognosis CNNs.
* **Network** (`MipCNN`): one small CNN shared by both views (4 blocks conv3x3 - batch
  norm - ReLU - max-pool, ``width``, 2x, 4x, 4x channels), global average pooling per
  view, the two view vectors concatenated, a fully connected layer to ``feature_dim``
  deep features (ReLU), and a logistic output. Trained with class-weighted binary
  cross-entropy (positive weight = negatives / positives of the labeled training
  patients), Adam, random left-right flips of the coronal view.
* **Weak supervision** (two rounds, a pseudo-label scheme): round 1 trains ``epochs`` on
  the labeled training patients; the round-1 network then scores the unlabeled training
  patients (censored before 24 months) and those it is confident about
  (``p >= pseudo_threshold`` -> 1, ``p <= 1 - pseudo_threshold`` -> 0) join the
  training set with weight ``pseudo_weight``; round 2 continues training for
  ``pseudo_epochs`` on labeled + pseudo-labeled patients. Fixed epoch counts: nothing is
  chosen on the held-out fold.
* **PSI** (`prediction_similarity_index`): the distance of a patient's deep features to
  the centroid of the *non-event* training patients divided by its distance to the
  centroid of the *event* training patients (Euclidean; centroids from the labeled
  training patients of the fold, with their true labels, features of the final network).
  PSI > 1 means closer to the event class, so 1.0 is the natural threshold; the
  continuous PSI is the risk score written to ``oof_risk.csv``.
* The default sizes are scaled to train on a CPU in minutes (see `Guo2021Config`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from lamp.baselines._deep import (
    check_counts,
    cross_validate_volumes,
    flip_where,
    predict_in_batches,
    seeded_generator,
    train_epochs,
)
from lamp.baselines.common import BaselineError, Split
from lamp.baselines.volumes import DEFAULT_SIZE, Volumes, check_size, torch_threads

__all__ = [
    "METHOD",
    "UNLABELED",
    "Guo2021Config",
    "MipCNN",
    "two_year_labels",
    "mip_views",
    "prediction_similarity_index",
    "fit_predict_guo2021",
    "run_guo2021",
]

METHOD = "Guo2021"
#: Label of a patient censored before the horizon (no 2-year outcome).
UNLABELED = -1


@dataclass(frozen=True)
class Guo2021Config:
    """Every setting of the Guo2021 baseline (saved in its ``config.json``).

    The defaults are sized for a CPU: measured on the project's 2-core machine (one
    torch thread, a shared and loaded machine), about 80 ms of CPU time per training
    patient per fold, i.e. about 2 minutes of CPU (about 3 minutes of wall time under
    that load) for the 5-fold CV of both endpoints of a 229-patient cohort.

    Attributes
    ----------
    size : (nx, ny, nz), default (32, 32, 64)
        Fixed-size volume the projections are made from (`lamp.baselines.volumes`).
    horizon_months : float, default 24
        The binary endpoint: event by this time (time <= horizon).
    width : int, default 8
        Channels of the first convolution block (then 2x, 4x, 4x).
    feature_dim : int, default 32
        Deep features the PSI is computed on.
    epochs : int, default 30
        Round 1 (labeled patients only).
    pseudo_epochs : int, default 15
        Round 2 (labeled + confident pseudo-labeled patients).
    batch_size : int, default 16
    lr : float, default 1e-3
    weight_decay : float, default 1e-4
    pseudo_threshold : float, default 0.8
        Round-1 probability above which an unlabeled patient becomes a positive (and
        below ``1 - pseudo_threshold`` a negative).
    pseudo_weight : float, default 0.5
        Loss weight of a pseudo-labeled patient (labeled: 1).
    threads : int or None, default 1
        ``torch.set_num_threads`` while training (None: leave torch's setting). One
        thread by default: the tensors of these small networks are too small for
        intra-op threads to pay, and on a loaded 2-core machine torch's default of two
        threads was several times slower than one (measured while building them).
    """

    size: tuple[int, int, int] = DEFAULT_SIZE
    horizon_months: float = 24.0
    width: int = 8
    feature_dim: int = 32
    epochs: int = 30
    pseudo_epochs: int = 15
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    pseudo_threshold: float = 0.8
    pseudo_weight: float = 0.5
    threads: int | None = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", check_size(self.size, "Guo2021Config.size"))
        check_counts(self, ("width", "feature_dim", "epochs", "batch_size"))
        check_counts(self, ("pseudo_epochs",), minimum=0)
        if not 0.5 < self.pseudo_threshold < 1.0:
            raise BaselineError(
                "Guo2021Config.pseudo_threshold: expected in (0.5, 1), got "
                f"{self.pseudo_threshold!r}"
            )
        for name in ("horizon_months", "lr"):
            if not getattr(self, name) > 0:
                raise BaselineError(
                    f"Guo2021Config.{name}: expected > 0, got {getattr(self, name)!r}"
                )
        if not self.pseudo_weight >= 0 or not self.weight_decay >= 0:
            raise BaselineError("Guo2021Config: expected pseudo_weight and weight_decay >= 0")

    @classmethod
    def tiny(cls) -> Guo2021Config:
        """A configuration for tests: 16 x 16 x 32 input, 4 channels, 2 + 1 epochs, one
        thread (fast on a shared machine)."""
        return cls(
            size=(16, 16, 32),
            width=4,
            feature_dim=8,
            epochs=2,
            pseudo_epochs=1,
            batch_size=4,
            threads=1,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        return d


def two_year_labels(
    time: Sequence[float] | np.ndarray,
    event: Sequence[int] | np.ndarray,
    horizon_months: float = 24.0,
) -> np.ndarray:
    """The binary outcome at the horizon: 1 event by it, 0 event-free at it, -1 unknown.

    Parameters
    ----------
    time : array-like, shape (n,), months
    event : array-like of 0/1, shape (n,)
    horizon_months : float, default 24

    Returns
    -------
    ndarray of int64, shape (n,)
        1 if ``event == 1 and time <= horizon``; otherwise 0 if ``time >= horizon``
        (followed event-free up to the horizon); `UNLABELED` (-1) if censored before
        the horizon. An event exactly at the horizon counts as an event by it, as the
        cumulative/dynamic AUC at that time counts it (cases: T <= t) and as Thiery2025's
        labels do.
    """
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event)
    if t.shape != e.shape or t.ndim != 1 or not np.all(np.isfinite(t)):
        raise BaselineError(
            f"two_year_labels: expected finite 1-D times and events of one length, got "
            f"shapes {t.shape} and {e.shape}"
        )
    labels = np.full(t.shape, UNLABELED, dtype=np.int64)
    labels[t >= horizon_months] = 0
    labels[(t <= horizon_months) & (e == 1)] = 1
    return labels


def mip_views(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coronal and sagittal projections of fixed-size PET/CT volumes.

    Parameters
    ----------
    images : ndarray, shape (n, 2, nx, ny, nz)
        Channel 0 PET, channel 1 CT (`lamp.baselines.volumes.Volumes.images`).

    Returns
    -------
    coronal : ndarray, shape (n, 2, nx, nz), float32
        PET maximum and CT mean over y (anterior-posterior).
    sagittal : ndarray, shape (n, 2, ny, nz), float32
        PET maximum and CT mean over x (left-right).
    """
    if images.ndim != 5 or images.shape[1] != 2:
        raise BaselineError(
            f"mip_views: expected images of shape (n, 2, nx, ny, nz), got {images.shape}"
        )
    pet, ct = images[:, 0], images[:, 1]
    coronal = np.stack([pet.max(axis=2), ct.mean(axis=2)], axis=1)
    sagittal = np.stack([pet.max(axis=1), ct.mean(axis=1)], axis=1)
    return coronal.astype(np.float32), sagittal.astype(np.float32)


def prediction_similarity_index(
    features: np.ndarray, centroid_event: np.ndarray, centroid_no_event: np.ndarray
) -> np.ndarray:
    """PSI: distance to the non-event centroid over distance to the event centroid.

    Parameters
    ----------
    features : ndarray, shape (n, d)
    centroid_event, centroid_no_event : ndarray, shape (d,)
        Mean deep features of the training patients with (label 1) and without (label 0)
        an event by the horizon.

    Returns
    -------
    ndarray, shape (n,), >= 0
        ``||f - c0|| / ||f - c1||`` (the denominator floored at 1e-12): > 1 when a patient
        is closer to the event class, 1 on the bisecting hyperplane.
    """
    f = np.asarray(features, dtype=np.float64)
    d_event = np.linalg.norm(f - np.asarray(centroid_event, dtype=np.float64), axis=1)
    d_none = np.linalg.norm(f - np.asarray(centroid_no_event, dtype=np.float64), axis=1)
    return d_none / np.maximum(d_event, 1e-12)


class MipCNN(nn.Module):
    """Shared 2D CNN over the coronal and sagittal views -> deep features -> logit.

    Parameters
    ----------
    width : int
        Channels of the first block (then 2x, 4x, 4x).
    feature_dim : int
        Size of the deep feature vector (the PSI's space).
    """

    def __init__(self, width: int, feature_dim: int) -> None:
        super().__init__()
        chans = [2, width, 2 * width, 4 * width, 4 * width]
        blocks: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):
            blocks += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
        self.encoder = nn.Sequential(*blocks)
        self.embed = nn.Sequential(nn.Linear(2 * chans[-1], feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(feature_dim, 1)

    def features(self, coronal: Tensor, sagittal: Tensor) -> Tensor:
        """Deep features, shape (B, feature_dim), from views (B, 2, ·, nz)."""
        pooled = [self.encoder(v).mean(dim=(2, 3)) for v in (coronal, sagittal)]
        return self.embed(torch.cat(pooled, dim=1))

    def forward(self, coronal: Tensor, sagittal: Tensor) -> tuple[Tensor, Tensor]:
        """Logits (B,) and deep features (B, feature_dim)."""
        feats = self.features(coronal, sagittal)
        return self.head(feats).squeeze(1), feats


#: Patients per forward pass when scoring (no gradients).
_PREDICT_BATCH = 64


def _train(
    model: MipCNN,
    cor: Tensor,
    sag: Tensor,
    labels: Tensor,
    weights: Tensor,
    pos_weight: float,
    epochs: int,
    config: Guo2021Config,
    gen: torch.Generator,
    optimizer: torch.optim.Optimizer,
) -> None:
    """Class- and patient-weighted BCE on the views, coronal view flipped left-right."""
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight), reduction="none")

    def batch_loss(idx: Tensor, flip: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        logits, _ = model(flip_where(cor[idx], flip, 2), sag[idx])  # left-right
        w = weights[idx]
        return (loss_fn(logits, labels[idx]) * w).sum() / w.sum(), {}

    train_epochs(model, optimizer, len(labels), epochs, config.batch_size, gen, batch_loss)


def _predict(model: MipCNN, cor: Tensor, sag: Tensor) -> tuple[Tensor, Tensor]:
    """Logits (n,) and deep features (n, feature_dim)."""
    logits, feats = predict_in_batches(model, model, (cor, sag), _PREDICT_BATCH)
    return logits, feats


def fit_predict_guo2021(
    train_images: np.ndarray,
    time: np.ndarray,
    event: np.ndarray,
    test_images: np.ndarray,
    config: Guo2021Config,
    seed: int,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Train on one training fold, return the PSI of the test patients.

    Parameters
    ----------
    train_images, test_images : ndarray, shape (n, 2, nx, ny, nz)
        Fixed-size PET/CT volumes (`lamp.baselines.volumes.Volumes.images`).
    time, event : ndarray, shape (n_train,)
        The endpoint's follow-up (months) and event (0/1) of the training patients.
    config : Guo2021Config
    seed : int

    Returns
    -------
    psi : ndarray, shape (n_test,)
        The risk (higher = worse).
    info : dict
        Counts of labeled / unlabeled / pseudo-labeled training patients.

    Raises
    ------
    BaselineError
        A training fold without a patient of each 2-year class.
    """
    with torch_threads(config.threads):
        labels = two_year_labels(time, event, config.horizon_months)
        labeled = labels != UNLABELED
        n_pos, n_neg = int((labels == 1).sum()), int((labels == 0).sum())
        if n_pos == 0 or n_neg == 0:
            raise BaselineError(
                f"{METHOD}: expected training patients of both {config.horizon_months:g}-month "
                f"classes, got {n_pos} with an event by it and {n_neg} event-free at the horizon"
            )
        gen = seeded_generator(seed)
        cor_np, sag_np = mip_views(train_images)
        cor, sag = torch.from_numpy(cor_np), torch.from_numpy(sag_np)
        model = MipCNN(config.width, config.feature_dim)
        opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        pos_weight = n_neg / n_pos
        y = torch.from_numpy(labels.clip(0).astype(np.float32))
        lab_idx = torch.from_numpy(np.flatnonzero(labeled))
        ones = torch.ones(len(labels))
        _train(
            model,
            cor[lab_idx],
            sag[lab_idx],
            y[lab_idx],
            ones[lab_idx],
            pos_weight,
            config.epochs,
            config,
            gen,
            opt,
        )

        # round 2: confident round-1 predictions on the unlabeled patients become labels
        unl_idx = np.flatnonzero(~labeled)
        pseudo_idx = np.zeros(0, dtype=np.int64)
        if config.pseudo_epochs > 0:
            if len(unl_idx):
                logits, _ = _predict(model, cor[unl_idx], sag[unl_idx])
                p = torch.sigmoid(logits).numpy()
                confident = (p >= config.pseudo_threshold) | (p <= 1.0 - config.pseudo_threshold)
                pseudo_idx = unl_idx[confident]
                y[pseudo_idx] = torch.from_numpy((p[confident] >= 0.5).astype(np.float32))
            w = ones.clone()
            w[pseudo_idx] = config.pseudo_weight
            idx = torch.from_numpy(np.concatenate([np.flatnonzero(labeled), pseudo_idx]))
            _train(
                model,
                cor[idx],
                sag[idx],
                y[idx],
                w[idx],
                pos_weight,
                config.pseudo_epochs,
                config,
                gen,
                opt,
            )

        _, train_feats = _predict(model, cor[lab_idx], sag[lab_idx])
        t_cor, t_sag = (torch.from_numpy(v) for v in mip_views(test_images))
        _, test_feats = _predict(model, t_cor, t_sag)
    f = train_feats.numpy().astype(np.float64)
    lab = labels[labeled]
    c_event, c_none = f[lab == 1].mean(axis=0), f[lab == 0].mean(axis=0)
    psi = prediction_similarity_index(test_feats.numpy(), c_event, c_none)
    info = {
        "labeled_event": n_pos,
        "labeled_event_free": n_neg,
        "unlabeled": len(unl_idx),
        "pseudo_labeled": len(pseudo_idx),
        "pseudo_event": int(y[pseudo_idx].sum()) if len(pseudo_idx) else 0,
    }
    return psi, info


def run_guo2021(
    work: str | Path,
    cohort: str | Path,
    endpoints: Sequence[str] = ("pfs", "os"),
    seeds: Sequence[int] = (0,),
    config: Guo2021Config | None = None,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Cross-validate Guo2021 on the cohort's folds; writes ``WORK/baselines/Guo2021/``.

    Builds (or reuses) the fixed-size volumes of the patients with outcome first
    (``WORK/baselines/volumes_<size>/``), then trains one network per endpoint, seed and
    fold on the training folds and scores the held-out fold by its PSI.

    Returns
    -------
    DataFrame with `lamp.baselines.common.OOF_COLUMNS` (method "Guo2021").
    """
    config = config or Guo2021Config()

    def fit_fold(
        volumes: Volumes, train_rows: np.ndarray, test_rows: np.ndarray, split: Split
    ) -> tuple[np.ndarray, dict[str, Any]]:
        return fit_predict_guo2021(
            volumes.images[train_rows],
            split.train["time"].to_numpy(),
            split.train["event"].to_numpy(),
            volumes.images[test_rows],
            config,
            split.seed,
        )

    return cross_validate_volumes(
        METHOD, fit_fold, work, cohort, endpoints, seeds, config, None, "training_counts", progress
    )
