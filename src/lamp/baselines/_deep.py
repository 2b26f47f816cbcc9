"""Training scaffolding shared by the deep baselines on fixed-size volumes.

Guo2021 (`lamp.baselines.guo2021`) and Liu2022 (`lamp.baselines.liu2022`) have their own
input, network, loss, training rounds and risk; around these they do the same: both

* build (or reuse) the fixed-size volumes of the patients with outcome and train one
  network per endpoint, seed and fold through `lamp.baselines.common.cross_validate`,
  recording one dict of training facts per fit in their ``config.json``
  (`cross_validate_volumes`);
* seed torch's global generator (weight initialisation, dropout) and a separate
  generator for the data order and the augmentation with the fold's seed
  (`seeded_generator`);
* train for a fixed number of epochs (both with Adam) on mini-batches in a random order per
  epoch, each patient of a batch flipped left-right with probability 1/2
  (`train_epochs`, `flip_where`);
* score patients in evaluation mode, without gradients, in fixed-size batches
  (`predict_in_batches`).

What each model does with a batch (views, masks, losses) stays in its module.

Thiery2025 (`lamp.baselines.thiery2025`), on lesion graphs rather than volumes, uses only
`check_counts`, `seeded_generator` and `train_epochs` (with ``flips=False``: a lesion
graph has no left-right augmentation); it builds its graphs once and calls
`lamp.baselines.common.cross_validate` itself, and scores a held-out fold in one padded
pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from lamp.baselines.common import BaselineError, Split, cross_validate, outcome_table
from lamp.baselines.volumes import Volumes, cohort_volumes

__all__ = [
    "check_counts",
    "seeded_generator",
    "flip_where",
    "train_epochs",
    "predict_in_batches",
    "cross_validate_volumes",
]


class _DeepConfig(Protocol):
    size: tuple[int, int, int]

    def to_dict(self) -> dict[str, Any]: ...


def check_counts(config: object, names: Sequence[str], minimum: int = 1) -> None:
    """Raise `BaselineError` unless each attribute ``names`` of ``config`` is an int >= minimum.

    The message names the setting as ``<ConfigClass>.<name>``.
    """
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or value < minimum:
            raise BaselineError(
                f"{type(config).__name__}.{name}: expected an integer >= {minimum}, got {value!r}"
            )


def seeded_generator(seed: int) -> torch.Generator:
    """Seed torch's global generator and return a new generator seeded alike.

    Call it before building the network: the global generator draws its initial weights
    (and its dropout masks); the returned one draws the batch order and the flips.
    """
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def flip_where(t: Tensor, flip: Tensor, dim: int) -> Tensor:
    """``t`` with the samples where ``flip`` (bool, shape (B,)) is True reversed along ``dim``."""
    return torch.where(flip.view(-1, *([1] * (t.ndim - 1))), t.flip(dim), t)


def train_epochs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    n: int,
    epochs: int,
    batch_size: int,
    gen: torch.Generator,
    batch_loss: Callable[[Tensor, Tensor], tuple[Tensor, dict[str, Tensor]]],
    flips: bool = True,
) -> dict[str, float]:
    """Mini-batch training of ``model`` for ``epochs`` over ``n`` patients.

    Each epoch draws a random order of the patients from ``gen``; each batch draws, from
    ``gen`` as well, whether each of its patients is flipped left-right (probability 1/2;
    unless ``flips`` is False), then ``batch_loss(idx, flip)`` returns the batch's loss
    and the named parts of it to report; one Adam (or other ``optimizer``) step follows.

    Parameters
    ----------
    model : nn.Module
        Put in training mode first.
    optimizer : torch.optim.Optimizer
    n, epochs, batch_size : int
    gen : torch.Generator
    batch_loss : callable
        ``batch_loss(idx, flip) -> (loss, parts)``: ``idx`` (int64, shape (B,)) the
        patients of the batch, ``flip`` (bool, shape (B,)) those to flip; ``parts`` maps
        names to scalar tensors (may be empty).
    flips : bool, default True
        False: no flip is drawn (``gen`` then draws only the batch orders) and ``flip``
        is all False.

    Returns
    -------
    dict
        The last epoch's mean of each part over the patients (batch means weighted by
        the batch sizes); empty without epochs or parts.
    """
    model.train()
    last: dict[str, float] = {}
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        sums: dict[str, float] = {}
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if flips:
                flip = torch.rand(len(idx), generator=gen) < 0.5
            else:
                flip = torch.zeros(len(idx), dtype=torch.bool)
            loss, parts = batch_loss(idx, flip)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            for name, value in parts.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach()) * len(idx)
        last = {name: total / n for name, total in sums.items()}
    return last


@torch.no_grad()
def predict_in_batches(
    forward: Callable[..., Tensor | tuple[Tensor, ...]],
    model: nn.Module,
    inputs: Sequence[Tensor],
    batch_size: int,
) -> tuple[Tensor, ...]:
    """``forward`` on consecutive slices of ``inputs``, ``model`` in evaluation mode.

    Parameters
    ----------
    forward : callable
        ``forward(*slices)`` -> a tensor or a tuple of tensors with the slices' rows first
        (usually ``model`` itself, or a function calling it).
    model : nn.Module
        Put in evaluation mode first.
    inputs : sequence of Tensor
        Of one length n (>= 1), sliced alike.
    batch_size : int

    Returns
    -------
    tuple of Tensor
        Each output of ``forward`` concatenated over the batches (n rows).
    """
    model.eval()
    n = len(inputs[0])
    outs: list[tuple[Tensor, ...]] = []
    for i in range(0, n, batch_size):
        out = forward(*(t[i : i + batch_size] for t in inputs))
        outs.append(out if isinstance(out, tuple) else (out,))
    return tuple(torch.cat(parts) for parts in zip(*outs, strict=True))


def cross_validate_volumes(
    method: str,
    fit_fold: Callable[[Volumes, np.ndarray, np.ndarray, Split], tuple[np.ndarray, dict[str, Any]]],
    work: str | Path,
    cohort: str | Path,
    endpoints: Sequence[str],
    seeds: Sequence[int],
    config: _DeepConfig,
    masks: str | None,
    records: str,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Cross-validate a deep baseline on the fixed-size volumes of the cohort.

    Builds (or reuses) the fixed-size volumes of the patients with outcome
    (``WORK/baselines/volumes_<size>/``, with the lesion fractions of ``masks`` unless
    None), then for each endpoint, seed and fold calls
    ``fit_fold(volumes, train_rows, test_rows, split) -> (risk, info)``, where the rows
    index ``volumes.images``. Each ``info`` is recorded, with the endpoint, fold and seed,
    in the list ``settings[records]`` of ``config.json`` (after ``config.to_dict()``).

    Returns
    -------
    DataFrame with `lamp.baselines.common.OOF_COLUMNS`.
    """
    table, _ = outcome_table(cohort)
    volumes = cohort_volumes(
        cohort, work, table["patient_id"].tolist(), config.size, masks, progress
    )
    fits: list[dict[str, Any]] = []

    def fit_predict(split: Split) -> np.ndarray:
        train_rows = volumes.rows(split.train["patient_id"].tolist())
        test_rows = volumes.rows(split.test["patient_id"].tolist())
        risk, info = fit_fold(volumes, train_rows, test_rows, split)
        fits.append({"endpoint": split.endpoint, "fold": split.fold, "seed": split.seed, **info})
        return risk

    return cross_validate(
        method,
        fit_predict,
        work,
        cohort,
        endpoints,
        seeds,
        settings={**config.to_dict(), records: fits},
        progress=progress,
    )
