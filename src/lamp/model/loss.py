"""Discrete-time negative log-likelihood survival loss (paper §2.3, ref. [33]).

The loss of Chen et al., "Multimodal Co-Attention Transformer for Survival Prediction in
Gigapixel Whole Slide Images", ICCV 2021 (MCAT), written here from its definition:

* Time is cut into ``n`` bins at quantiles of the **event** times of the training fold
  (`make_time_bins`); a patient's bin ``y`` is the one holding its time (`assign_bins`).
* The network gives one logit per bin; the hazard ``h_k = sigmoid(logit_k)`` is the
  probability of the event in bin k given survival to its start, and
  ``S_k = Π_{m<=k} (1 - h_m)`` the probability of surviving to the end of bin k
  (``S_{-1} = 1``). The scalar risk is ``-Σ_k S_k`` (higher = worse prognosis).
* An uncensored patient (event in bin y) contributes ``-log S_{y-1} - log h_y``:
  it survived the bins before y and had the event in y.
* A censored patient (censored in bin y) contributes ``-log S_y``: it is counted as
  having survived to the **end** of its bin. This is MCAT's convention and the one the
  issue asks for. It credits a censored patient with surviving all of bin y although it
  was last seen somewhere inside it (slightly optimistic), but it is the only choice that
  lets censored patients inform the hazard of their own bin; with the alternative
  (``-log S_{y-1}``) a patient censored in the first bin contributes nothing at all.
  With quantile bins of a few years' follow-up the difference is small.

An optional ``alpha`` re-weights the uncensored term as in MCAT's code,
``(1 - alpha) * (censored + uncensored) + alpha * uncensored``; the default 0 is the
plain likelihood.

The logarithms are taken in log space, ``log h = logsigmoid(logit)`` and
``log S_k = Σ_{m<=k} logsigmoid(-logit_m)``, not as ``log(clamp(h, eps))`` as MCAT's code
does: the values agree wherever h and S exceed that floor, and a saturated logit keeps
its gradient instead of losing it to the clamp.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import Tensor

from lamp.errors import LampError

__all__ = [
    "SurvivalDataError",
    "make_time_bins",
    "assign_bins",
    "hazards_and_survival",
    "risk_from_logits",
    "nll_survival_loss",
]


class SurvivalDataError(LampError):
    """Survival times or events that cannot define bins or a loss."""


def make_time_bins(times: ArrayLike, events: ArrayLike, n_bins: int) -> NDArray[np.float64]:
    """Bin edges at quantiles of the event times (use the training fold only).

    Parameters
    ----------
    times : array-like, shape (n,), months
        Follow-up times of the training patients.
    events : array-like of bool or 0/1, shape (n,)
        1 = event, 0 = censored; censored times do not move the edges.
    n_bins : int
        Bins wanted (>= 1).

    Returns
    -------
    ndarray, shape (m + 1,), months
        ``[0, q_1, ..., q_{m-1}, inf]``, q_k the k/n_bins quantile (numpy's linear
        interpolation) of the event times. Tied quantiles are merged, so m <= n_bins;
        the number of bins of the model is ``len(edges) - 1``.

    Raises
    ------
    SurvivalDataError
        No event, lengths that differ, non-finite or negative times.
    """
    t, e = _check_times_events(times, events, "make_time_bins")
    if not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise SurvivalDataError(f"make_time_bins: expected n_bins >= 1, got {n_bins!r}")
    event_times = t[e]
    if event_times.size == 0:
        raise SurvivalDataError(
            f"make_time_bins: expected at least one event among the {t.size} training "
            "patients, got none (all censored): the bins are quantiles of event times"
        )
    inner = np.quantile(event_times, np.arange(1, n_bins) / n_bins) if n_bins > 1 else []
    inner = np.unique(np.asarray(inner, dtype=np.float64))
    inner = inner[inner > 0.0]
    return np.concatenate([[0.0], inner, [np.inf]])


def assign_bins(times: ArrayLike, edges: ArrayLike) -> NDArray[np.int64]:
    """Index of the bin holding each time: ``k`` with ``edges[k] <= t < edges[k+1]``.

    Parameters
    ----------
    times : array-like, shape (n,), months, >= 0
    edges : array-like, shape (m + 1,), from `make_time_bins`

    Returns
    -------
    ndarray of int64, shape (n,), values in 0..m-1.
    """
    edges = np.asarray(edges, dtype=np.float64)
    t = np.asarray(times, dtype=np.float64)
    if t.ndim != 1 or not np.all(np.isfinite(t)) or np.any(t < 0):
        raise SurvivalDataError("assign_bins: expected a 1-D array of finite times >= 0")
    return np.searchsorted(edges[1:-1], t, side="right").astype(np.int64)


def hazards_and_survival(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Hazards ``h = sigmoid(logits)`` and survival ``S = cumprod(1 - h)``.

    Parameters
    ----------
    logits : Tensor, shape (B, n_bins)

    Returns
    -------
    hazards, survival : Tensor, shape (B, n_bins)
        ``survival[:, k]`` is the probability of surviving to the end of bin k.
    """
    hazards = torch.sigmoid(logits)
    return hazards, torch.cumprod(1.0 - hazards, dim=-1)


def risk_from_logits(logits: Tensor) -> Tensor:
    """Scalar risk ``-Σ_k S_k`` (higher = earlier expected event), shape (B,)."""
    return -hazards_and_survival(logits)[1].sum(dim=-1)


def nll_survival_loss(
    logits: Tensor,
    bins: Tensor,
    events: Tensor,
    alpha: float = 0.0,
    reduction: Literal["sum", "mean", "none"] = "sum",
) -> Tensor:
    """Discrete-time NLL survival loss (Chen et al. 2021; conventions in the module doc).

    Parameters
    ----------
    logits : Tensor, shape (B, n_bins)
    bins : Tensor, int64, shape (B,)
        Bin index of each patient's time (`assign_bins`).
    events : Tensor, shape (B,)
        1 = event, 0 = censored.
    alpha : float, default 0
        Extra weight of the uncensored term (MCAT); 0 is the plain likelihood.
    reduction : {"sum", "mean", "none"}, default "sum"
        "sum" is what accumulating per-patient losses gives; divide by the
        accumulation size yourself to reproduce ``loss / 32`` per patient.

    Returns
    -------
    Tensor: scalar, or shape (B,) for ``reduction="none"``.
    """
    if logits.ndim != 2:
        raise SurvivalDataError(
            f"nll_survival_loss: expected logits of shape (B, n_bins), got {tuple(logits.shape)}"
        )
    n_bins = logits.shape[1]
    bins = bins.long().reshape(-1, 1)
    if bins.shape[0] != logits.shape[0] or events.numel() != logits.shape[0]:
        raise SurvivalDataError(
            f"nll_survival_loss: expected {logits.shape[0]} bins and events, got "
            f"{bins.shape[0]} and {events.numel()}"
        )
    if bins.numel() and (int(bins.min()) < 0 or int(bins.max()) >= n_bins):
        raise SurvivalDataError(
            f"nll_survival_loss: expected bins in 0..{n_bins - 1}, got "
            f"{int(bins.min())}..{int(bins.max())}"
        )
    event = events.to(logits.dtype).reshape(-1, 1)
    log_h = torch.nn.functional.logsigmoid(logits)
    log_s = torch.cumsum(torch.nn.functional.logsigmoid(-logits), dim=1)
    # log S padded with log S_{-1} = 0 in front: [:, k] = log S_{k-1}, [:, k+1] = log S_k.
    log_s_pad = torch.cat([torch.zeros_like(log_s[:, :1]), log_s], dim=1)
    log_s_before = torch.gather(log_s_pad, 1, bins)
    log_s_after = torch.gather(log_s_pad, 1, bins + 1)
    uncensored = -event * (log_s_before + torch.gather(log_h, 1, bins))
    censored = -(1.0 - event) * log_s_after
    per_patient = ((1.0 - alpha) * (censored + uncensored) + alpha * uncensored).squeeze(1)
    if reduction == "none":
        return per_patient
    if reduction == "sum":
        return per_patient.sum()
    if reduction == "mean":
        return per_patient.mean()
    raise ValueError(f"reduction: expected 'sum', 'mean' or 'none', got {reduction!r}")


def _check_times_events(
    times: ArrayLike, events: ArrayLike, where: str
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    t = np.asarray(times, dtype=np.float64)
    e_raw = np.asarray(events)
    if t.ndim != 1 or e_raw.shape != t.shape:
        raise SurvivalDataError(
            f"{where}: expected 1-D times and events of one length, got shapes "
            f"{t.shape} and {e_raw.shape}"
        )
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise SurvivalDataError(f"{where}: expected finite times >= 0 (months)")
    if not np.all(np.isin(e_raw.astype(np.float64), [0.0, 1.0])):
        raise SurvivalDataError(f"{where}: expected events of 0/1 or bool")
    return t, e_raw.astype(bool)
