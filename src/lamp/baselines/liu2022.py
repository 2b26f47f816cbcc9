"""Liu2022: a multitask 3D U-Net that segments the lesions and predicts survival jointly.

Liu et al., IEEE Access 10:81612 (2022) — the "multitask" row of the paper's Table 1.
No code is public and the full methods section could not be read here, so this module
separates what is known (`reference/baselines.md`) from what was chosen.

Known (from the LAMP paper)
---------------------------
* A multitask CNN integrating lesion segmentation and prognosis, on whole-body PET/CT
  resampled to a fixed-size input.

Chosen here
-----------
* **Input**: the fixed-size PET and CT of `lamp.baselines.volumes` as two channels
  (default 32 x 32 x 64 voxels, PET ``clip(SUV, 0, 20) / 10``, CT ``clip(HU, ±1000) /
  1000``); random left-right flips (image and mask together) while training.
* **Segmentation target**: the lesion mask resampled to the fixed size — by default the
  cohort's reference ("manual") masks, which are training labels here as in the
  original; ``masks="automatic"`` takes the LAMP network's predicted masks. The target is
  the lesion fraction of each fixed-size voxel (a soft label in [0, 1]).
* **Network** (`MultitaskUNet`): a 3D U-Net with instance norm and leaky ReLU, one 3x3x3
  convolution per block, max-pool down, transposed-convolution up, skip concatenation.
  To fit a CPU budget its first stage is a 2x2x2 stride-2 convolution (a patch
  embedding), so the U-Net levels run at half the input resolution (default widths
  4, 8, 16, 32 at 16x16x32 ... 2x2x4 voxels); the lesion logits come from a 1x1x1
  convolution at that resolution, trilinearly upsampled to the input size. With a GPU,
  larger ``size`` and ``widths`` are the same code.
* **Survival head**: global average pooling of the bottleneck -> Linear(C, ``hidden``)
  -> leaky ReLU -> dropout -> Linear(``hidden``, n_bins) logits of discrete-time hazards,
  trained with LAMP's NLL survival loss (`lamp.model.loss`, bins at quantiles of the
  training fold's event times), as `reference/baselines.md` advises (a Cox loss needs
  larger batches than a 3D network allows).
* **Joint loss**: ``(soft Dice + binary cross-entropy) + λ · NLL``, Dice over the whole
  batch (so patients without lesions are valid), NLL averaged over the batch's patients,
  ``λ = surv_weight = 1.0``: both terms are of order 1 at the start, and the survival
  output, which Table 1 scores, is not to be drowned by the segmentation loss.
* Adam (lr 1e-3), batches of 8 patients, a fixed number of epochs (10 by default;
  nothing is chosen on the held-out fold).
* **Risk**: ``-Σ_k S_k`` (`lamp.model.loss.risk_from_logits`), as for LAMP.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
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
from lamp.baselines.lesions import MASKS
from lamp.baselines.volumes import DEFAULT_SIZE, Volumes, check_size, torch_threads
from lamp.model.loss import (
    SurvivalDataError,
    assign_bins,
    make_time_bins,
    nll_survival_loss,
    risk_from_logits,
)

__all__ = [
    "METHOD",
    "Liu2022Config",
    "MultitaskUNet",
    "soft_dice_loss",
    "fit_predict_liu2022",
    "run_liu2022",
]

METHOD = "Liu2022"
#: Patients per forward pass when scoring (no gradients).
_PREDICT_BATCH = 16


@dataclass(frozen=True)
class Liu2022Config:
    """Every setting of the Liu2022 baseline (saved in its ``config.json``).

    The defaults are sized for a CPU: measured on the project's 2-core machine (one
    torch thread, a shared and loaded machine), about 140 ms of CPU time per training
    patient per fold (14 ms per patient and epoch), i.e. about 3.5 minutes of CPU (about
    5 minutes of wall time under that load) for the 5-fold CV of both endpoints of a
    229-patient cohort. ``widths=(8, 16, 32, 64)`` costs about twice as much.

    Attributes
    ----------
    size : (nx, ny, nz), default (32, 32, 64)
        Fixed input size (`lamp.baselines.volumes`); each divisible by
        ``2 ** len(widths)``.
    masks : {"manual", "automatic"}, default "manual"
        Lesion masks that are the segmentation target.
    widths : tuple of int, default (4, 8, 16, 32)
        Channels of the U-Net levels (after the stride-2 stem), the last is the bottleneck.
        (8, 16, 32, 64) costs about twice the CPU time per epoch.
    hidden : int, default 32
        Units of the survival head's hidden layer.
    dropout : float, default 0.1
        Dropout in the survival head.
    n_bins : int, default 4
        Survival time bins (quantiles of the training fold's event times).
    surv_weight : float, default 1.0
        λ of the joint loss ``seg + λ · surv``.
    epochs : int, default 10
    batch_size : int, default 8
    lr : float, default 1e-3
    weight_decay : float, default 1e-5
    threads : int or None, default 1
        ``torch.set_num_threads`` while training (None: leave torch's setting). One
        thread by default: the tensors of these small networks are too small for
        intra-op threads to pay, and on a loaded 2-core machine torch's default of two
        threads was several times slower than one (measured while building them).
    """

    size: tuple[int, int, int] = DEFAULT_SIZE
    masks: str = "manual"
    widths: tuple[int, ...] = (4, 8, 16, 32)
    hidden: int = 32
    dropout: float = 0.1
    n_bins: int = 4
    surv_weight: float = 1.0
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-5
    threads: int | None = 1

    def __post_init__(self) -> None:
        size = check_size(self.size, "Liu2022Config.size")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "widths", tuple(self.widths))
        if self.masks not in MASKS:
            raise BaselineError(f"Liu2022Config.masks: expected one of {MASKS}, got {self.masks!r}")
        if len(self.widths) < 2 or not all(isinstance(w, int) and w >= 1 for w in self.widths):
            raise BaselineError(
                f"Liu2022Config.widths: expected >= 2 integers >= 1, got {self.widths!r}"
            )
        factor = 2 ** len(self.widths)
        if any(n % factor for n in size):
            raise BaselineError(
                f"Liu2022Config.size: expected sizes divisible by 2**len(widths) = {factor} "
                f"(a stride-2 stem and {len(self.widths) - 1} poolings), got {size}"
            )
        check_counts(self, ("hidden", "n_bins", "epochs", "batch_size"))
        if not self.lr > 0 or not self.surv_weight >= 0 or not self.weight_decay >= 0:
            raise BaselineError(
                "Liu2022Config: expected lr > 0, surv_weight >= 0 and weight_decay >= 0, got "
                f"{self.lr!r}, {self.surv_weight!r}, {self.weight_decay!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise BaselineError(f"Liu2022Config.dropout: expected in [0, 1), got {self.dropout!r}")

    @classmethod
    def tiny(cls) -> Liu2022Config:
        """A configuration for tests: 16 x 16 x 32 input, widths 4-8-16, 2 epochs, 2 bins,
        one thread (fast on a shared machine)."""
        return cls(
            size=(16, 16, 32),
            widths=(4, 8, 16),
            hidden=8,
            n_bins=2,
            epochs=2,
            batch_size=4,
            threads=1,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"], d["widths"] = list(self.size), list(self.widths)
        return d


def _conv(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    pad = (kernel - 1) // 2 if stride == 1 else 0
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=pad),
        nn.InstanceNorm3d(c_out, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
    )


class MultitaskUNet(nn.Module):
    """3D U-Net with a lesion output and a discrete-time survival head on the bottleneck.

    Parameters
    ----------
    widths : sequence of int
        Channels per level; ``widths[-1]`` is the bottleneck.
    n_bins : int
        Survival logits.
    hidden : int
    dropout : float
    in_channels : int, default 2 (PET, CT)
    """

    def __init__(
        self,
        widths: Sequence[int],
        n_bins: int,
        hidden: int,
        dropout: float = 0.0,
        in_channels: int = 2,
    ) -> None:
        super().__init__()
        w = list(widths)
        self.stem = _conv(in_channels, w[0], kernel=2, stride=2)
        self.encoder = nn.ModuleList(_conv(w[max(i - 1, 0)], c) for i, c in enumerate(w))
        self.up = nn.ModuleList(
            nn.ConvTranspose3d(w[i + 1], w[i], 2, stride=2) for i in range(len(w) - 1)
        )
        self.decoder = nn.ModuleList(_conv(2 * w[i], w[i]) for i in range(len(w) - 1))
        self.seg_out = nn.Conv3d(w[0], 1, 1)
        self.surv_head = nn.Sequential(
            nn.Linear(w[-1], hidden),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_bins),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Input (B, C, nx, ny, nz) -> lesion logits (B, nx, ny, nz), hazard logits (B, n_bins)."""
        x = self.stem(x)
        skips = []
        for i, block in enumerate(self.encoder):
            if i:
                x = F.max_pool3d(x, 2)
            x = block(x)
            skips.append(x)
        surv = self.surv_head(x.mean(dim=(2, 3, 4)))
        for i in reversed(range(len(self.up))):
            x = self.decoder[i](torch.cat([self.up[i](x), skips[i]], dim=1))
        # lesion logits at half resolution, trilinearly upsampled to the input size
        seg = F.interpolate(self.seg_out(x), scale_factor=2.0, mode="trilinear")
        return seg.squeeze(1), surv


def soft_dice_loss(logits: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """``1 - (2 Σ p t + s) / (Σ p + Σ t + s)`` over the whole batch, p = sigmoid(logits).

    Parameters
    ----------
    logits, target : Tensor, same shape; target in [0, 1] (soft labels allowed)
    smooth : float, default 1 (voxels)
    """
    p = torch.sigmoid(logits)
    inter = (p * target).sum()
    return 1.0 - (2.0 * inter + smooth) / (p.sum() + target.sum() + smooth)


def fit_predict_liu2022(
    train_images: np.ndarray,
    train_lesions: np.ndarray,
    time: np.ndarray,
    event: np.ndarray,
    test_images: np.ndarray,
    config: Liu2022Config,
    seed: int,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Train on one training fold, return the risks of the test patients.

    Parameters
    ----------
    train_images, test_images : ndarray, shape (n, 2, nx, ny, nz)
    train_lesions : ndarray, shape (n_train, nx, ny, nz), lesion fractions in [0, 1]
    time, event : ndarray, shape (n_train,)
        The endpoint's follow-up (months) and event (0/1).
    config : Liu2022Config
    seed : int

    Returns
    -------
    risk : ndarray, shape (n_test,)
        ``-Σ_k S_k`` (higher = worse).
    info : dict
        Bin edges and the last epoch's mean losses.

    Raises
    ------
    BaselineError
        A training fold without events (the time bins are event-time quantiles).
    """
    with torch_threads(config.threads):
        try:
            edges = make_time_bins(time, event, config.n_bins)
        except SurvivalDataError as exc:
            raise BaselineError(f"{METHOD}: {exc}") from None
        bins = torch.from_numpy(assign_bins(time, edges))
        events = torch.from_numpy(np.asarray(event, dtype=np.float32))
        gen = seeded_generator(seed)
        x_all = torch.from_numpy(train_images)
        y_all = torch.from_numpy(train_lesions)
        # channels-last 3D memory: about 20 % less CPU time per step (measured)
        model = MultitaskUNet(config.widths, len(edges) - 1, config.hidden, config.dropout).to(
            memory_format=torch.channels_last_3d
        )
        opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

        def batch_loss(idx: Tensor, flip: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
            x = flip_where(x_all[idx], flip, 2)  # left-right, image and mask together
            y = flip_where(y_all[idx], flip, 1)
            seg_logits, surv_logits = model(x.contiguous(memory_format=torch.channels_last_3d))
            seg = soft_dice_loss(seg_logits, y) + F.binary_cross_entropy_with_logits(seg_logits, y)
            surv = nll_survival_loss(surv_logits, bins[idx], events[idx], reduction="mean")
            return seg + config.surv_weight * surv, {"seg": seg, "surv": surv}

        last = train_epochs(
            model, opt, len(x_all), config.epochs, config.batch_size, gen, batch_loss
        )
        (risk_t,) = predict_in_batches(
            lambda x: risk_from_logits(
                model(x.contiguous(memory_format=torch.channels_last_3d))[1]
            ),
            model,
            (torch.from_numpy(test_images),),
            _PREDICT_BATCH,
        )
    risk = risk_t.numpy().astype(np.float64)
    info = {
        "bin_edges": [float(e) for e in edges],
        "last_epoch_seg_loss": last.get("seg"),
        "last_epoch_surv_loss": last.get("surv"),
    }
    return risk, info


def run_liu2022(
    work: str | Path,
    cohort: str | Path,
    endpoints: Sequence[str] = ("pfs", "os"),
    seeds: Sequence[int] = (0,),
    config: Liu2022Config | None = None,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Cross-validate Liu2022 on the cohort's folds; writes ``WORK/baselines/Liu2022/``.

    Builds (or reuses) the fixed-size volumes and lesion fractions of the patients with
    outcome first (``WORK/baselines/volumes_<size>/``), then trains one network per
    endpoint, seed and fold on the training folds and scores the held-out fold.

    Returns
    -------
    DataFrame with `lamp.baselines.common.OOF_COLUMNS` (method "Liu2022").
    """
    config = config or Liu2022Config()

    def fit_fold(
        volumes: Volumes, train_rows: np.ndarray, test_rows: np.ndarray, split: Split
    ) -> tuple[np.ndarray, dict[str, Any]]:
        assert volumes.lesions is not None  # asked for with config.masks
        return fit_predict_liu2022(
            volumes.images[train_rows],
            volumes.lesions[train_rows],
            split.train["time"].to_numpy(),
            split.train["event"].to_numpy(),
            volumes.images[test_rows],
            config,
            split.seed,
        )

    return cross_validate_volumes(
        METHOD, fit_fold, work, cohort, endpoints, seeds, config, config.masks, "fits", progress
    )
