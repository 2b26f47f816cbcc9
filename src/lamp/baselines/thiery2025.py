"""Thiery2025: lesion graphs with clinical cross-attention (Table 1, reference [29]).

Thiery et al., "PET-based lesion graphs meet clinical data: an interpretable
cross-attention framework for DLBCL treatment response prediction", Comput. Med.
Imaging Graph. 120:102481 (2025); arXiv 2310.16863. No code is public; this module is
built from the published description.

What the source says (known)
----------------------------
* Each patient's PET becomes an attributed graph of its lesions, updated by a graph
  neural network (GATv2, Brody et al. 2022 [1]_, is among its references).
* A cross-attention module fuses the lesion attributes with clinical indicators
  (several configurations are compared in the paper).
* A final module fuses across lesions (min + max instance pooling, WILDCAT [2]_ /
  MANTRA, is among its references) and outputs the probability of 2-year PFS.

What this module chose
----------------------
* **Nodes** = the lesions of `lamp.baselines.lesions.cohort_lesion_tables` (the same
  masks as LAMP: "manual" = reference, "automatic" = predicted), with `NODE_FEATURES`:
  log(1 + volume ml), SUVmax, SUVmean, SUVpeak, log(1 + TLG), an extranodal indicator
  (organ neither "none" nor "spleen"; 0 where the organ is unknown), and the centroid
  relative to the barycentre of the patient's lesions (x, y, z in mm, plus its norm:
  translation-invariant, since scanner coordinates have no common origin), and the log of
  the patient's lesion count (softmax attention and min+max pooling normalise the count
  away, and the number of lesions is a known prognostic factor). Features are
  z-scored with the training fold's lesions only. At most ``max_lesions`` lesions per
  patient, those with the largest TLG (the others carry little of the tumour burden and
  the dense attention costs J² per patient).
* **Edges**: the complete graph with self-loops; the edge attribute is the distance
  between the two centroids divided by ``distance_scale_mm``, entering the GATv2 score
  e_ij = aᵀ LeakyReLU(W_t h_i + W_s h_j + W_e d_ij) ([1]_ eq. 7 with an edge term, as in
  PyTorch Geometric's ``GATv2Conv``); α_ij = softmax_j e_ij over the patient's real
  lesions; h_i' = LayerNorm(h_i + ELU(Σ_j α_ij W_s h_j)), multi-head, concatenated.
  ``gat_layers`` (default 2) such layers, in plain PyTorch on padded, masked batches.
* **Clinical tokens**: age, ECOG, log LDH ratio, Ann Arbor stage and number of
  extranodal sites, z-scored with the training fold's statistics; variable c becomes
  the token v_c·w_c + b_c (a per-variable learned embedding). Sex and IPI are left out
  (IPI is a function of the others).
* **Cross-attention**: the lesion tokens (queries) attend to the clinical tokens (keys,
  values), multi-head, with a residual, LayerNorm and a feed-forward block.
* **Pooling**: a linear score per lesion token; the patient logit is
  mean(top-k scores) + ``min_weight`` · mean(bottom-k scores), k = min(``pool_k``, J)
  (WILDCAT's min+max pooling with α = ``min_weight``).
* **Empty graphs**: a patient with no lesion gets one node, a learned "empty" token in
  place of the embedded lesion features (no edges but its self-loop), so it still
  receives the clinical cross-attention and a defined risk.
* **Loss**: binary cross-entropy on the 2-year label of the endpoint
  (`two_year_labels`: event at ≤ 24 months = 1, event-free at ≥ 24 months = 0,
  censored before 24 months left out of the loss); for OS the same rule on OS.
  The logit is the risk score (higher = worse).
* **Training**: the training fold only, a fixed number of epochs (``epochs``, default
  60; no early stopping, so no inner split is needed), Adam, mini-batches of
  ``batch_size`` patients, everything seeded by ``split.seed`` (the global torch RNG is
  left as it was) and run on one intra-op thread (restored afterwards). The final model
  scores the held-out fold. Measured on the project's 2-core CPU machine (shared, load
  about 4): PFS + OS x 5 folds x 1 seed on 229 synthetic patients with 0-15 lesions each
  takes about 60 s with the default configuration.

References
----------
.. [1] Brody, Alon, Yahav, "How attentive are graph attention networks?", ICLR 2022.
.. [2] Durand et al., "WILDCAT: weakly supervised learning of deep ConvNets for image
   classification, pointwise localization and segmentation", CVPR 2017.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from numpy.typing import NDArray
from torch import nn
from torch.nn import functional as F

from lamp.baselines._deep import check_counts, seeded_generator, train_epochs
from lamp.baselines.common import BaselineError, Split, cross_validate, outcome_table
from lamp.baselines.lesions import MASKS, cohort_lesion_tables
from lamp.baselines.volumes import torch_threads

__all__ = [
    "METHOD",
    "NODE_FEATURES",
    "CLINICAL_TOKENS",
    "ThieryConfig",
    "LesionGraph",
    "GraphBatch",
    "two_year_labels",
    "lesion_graph",
    "lesion_graphs",
    "collate_graphs",
    "GATv2Layer",
    "ThieryNet",
    "fit_predict_thiery",
    "run_thiery2025",
]

METHOD = "Thiery2025"
# Patients per padded scoring pass: the pass holds a few (B, J, J, hidden) float tensors
# (64 x 64 x 32 x 4 B = 0.5 MB each per patient at the default 64 lesions, by arithmetic),
# so the memory stays bounded whatever the cohort size.
_SCORE_BATCH = 64

#: Columns of a lesion graph's node feature matrix, in order.
NODE_FEATURES: tuple[str, ...] = (
    "log_volume_ml",
    "suvmax",
    "suvmean",
    "suvpeak",
    "log_tlg",
    "extranodal",
    "rel_x_mm",
    "rel_y_mm",
    "rel_z_mm",
    "rel_distance_mm",
    "log_n_lesions",
)
#: Clinical variables, each one token of the cross-attention (``ldh_ratio`` log-scaled).
CLINICAL_TOKENS: tuple[str, ...] = ("age", "ecog", "ldh_ratio", "ann_arbor", "extranodal_sites")

_LESION_COLUMNS = (
    "patient_id",
    "volume_ml",
    "suvmax",
    "suvmean",
    "suvpeak",
    "tlg",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
)
# Organ values that are not extranodal: nodal/soft tissue, spleen (nodal in Lugano),
# unknown (no organ masks).
_NOT_EXTRANODAL = {"none", "spleen", ""}


@dataclass(frozen=True)
class ThieryConfig:
    """Settings of the Thiery2025 baseline (saved in its ``config.json``).

    Attributes
    ----------
    hidden : int
        Width of the lesion and clinical tokens.
    heads : int
        Attention heads of the GATv2 layers and of the cross-attention; divides ``hidden``.
    gat_layers : int
        Number of GATv2 layers.
    dropout : float
        Dropout on attention weights and the feed-forward block.
    pool_k : int
        k of the top-k / bottom-k pooling (k = min(pool_k, J) per patient).
    min_weight : float
        Weight of the bottom-k mean in the logit (WILDCAT's α).
    distance_scale_mm : float
        Inter-lesion distances are divided by this before entering the attention.
    max_lesions : int
        Lesions kept per patient (largest TLG first).
    horizon_months : float
        The 2-year label's horizon.
    epochs, batch_size, lr, weight_decay
        Adam on the training fold for a fixed number of epochs.
    """

    hidden: int = 32
    heads: int = 4
    gat_layers: int = 2
    dropout: float = 0.1
    pool_k: int = 3
    min_weight: float = 1.0
    distance_scale_mm: float = 100.0
    max_lesions: int = 64
    horizon_months: float = 24.0
    epochs: int = 60
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        check_counts(
            self, ("hidden", "heads", "gat_layers", "pool_k", "max_lesions", "epochs", "batch_size")
        )
        if self.hidden % self.heads:
            raise BaselineError(
                f"ThieryConfig: hidden ({self.hidden}) must be a multiple of heads ({self.heads})"
            )
        for name in ("distance_scale_mm", "horizon_months", "lr"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and value > 0):
                raise BaselineError(f"ThieryConfig.{name}: expected a number > 0, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise BaselineError(f"ThieryConfig.dropout: expected 0 <= p < 1, got {self.dropout}")
        if self.weight_decay < 0:
            raise BaselineError(
                f"ThieryConfig.weight_decay: expected >= 0, got {self.weight_decay}"
            )

    @classmethod
    def tiny(cls) -> ThieryConfig:
        """A small, fast configuration for tests and demos."""
        return cls(hidden=8, heads=2, pool_k=2, epochs=5, batch_size=16, lr=3e-3)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ThieryConfig:
        """The configuration from a dict (e.g. ``config.json``'s settings); unknown keys fail."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise BaselineError(
                f"ThieryConfig: unknown setting(s) {unknown}; known {sorted(known)}"
            )
        return cls(**values)


def two_year_labels(
    time: Sequence[float] | NDArray, event: Sequence[int] | NDArray, horizon: float = 24.0
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """The binary label at ``horizon`` months and which patients have one.

    Parameters
    ----------
    time : array-like, shape (n,), months
    event : array-like, shape (n,), 1 = event
    horizon : float, months

    Returns
    -------
    label : ndarray, shape (n,), float32
        1 for an event at ``time <= horizon``, 0 otherwise.
    labelled : ndarray, shape (n,), bool
        False for a patient censored before ``horizon`` (status unknown at the horizon):
        left out of the loss. A patient censored exactly at ``horizon`` is event-free at
        it (label 0).
    """
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event).astype(bool)
    if t.shape != e.shape or t.ndim != 1:
        raise BaselineError(
            f"two_year_labels: expected time and event of one shape (n,), got {t.shape}, {e.shape}"
        )
    positive = e & (t <= horizon)
    labelled = positive | (t >= horizon)
    return positive.astype(np.float32), labelled


# --------------------------------------------------------------------------------------
# Graphs
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LesionGraph:
    """One patient's lesion graph, before standardisation.

    Attributes
    ----------
    nodes : ndarray, shape (J, len(NODE_FEATURES)), float32
    distances_mm : ndarray, shape (J, J), float32
        Euclidean distance between lesion centroids (the complete graph's edge attribute).
    """

    nodes: NDArray[np.float32]
    distances_mm: NDArray[np.float32]

    @property
    def n_lesions(self) -> int:
        return int(self.nodes.shape[0])


def _check_lesion_table(lesions: pd.DataFrame, where: str) -> None:
    missing = [c for c in _LESION_COLUMNS if c not in lesions.columns]
    if missing:
        raise BaselineError(
            f"{where}: lesion table: expected columns {list(_LESION_COLUMNS)}, missing {missing}"
        )
    values = lesions[list(_LESION_COLUMNS[1:])].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        rows = lesions.loc[bad, "patient_id"].astype(str).tolist()[:10]
        raise BaselineError(f"{where}: lesion table: non-finite values for patients {rows}")


def lesion_graph(lesions: pd.DataFrame, max_lesions: int | None = None) -> LesionGraph:
    """The lesion graph of one patient from its rows of a lesion table.

    Parameters
    ----------
    lesions : DataFrame
        One row per lesion with ``volume_ml``, ``suvmax``, ``suvmean``, ``suvpeak``,
        ``tlg``, ``centroid_{x,y,z}_mm`` and optionally ``organ``
        (`lamp.features.lesion_table`); may be empty.
    max_lesions : int, optional
        Keep only this many lesions, those with the largest TLG (stable order on ties).
        The barycentre is that of all the patient's lesions.

    Returns
    -------
    LesionGraph
        Node features `NODE_FEATURES` and pairwise centroid distances, rows in the
        table's order (of the kept lesions).
    """
    n_features = len(NODE_FEATURES)
    if len(lesions) == 0:
        return LesionGraph(np.zeros((0, n_features), np.float32), np.zeros((0, 0), np.float32))
    centroids = lesions[["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]].to_numpy(np.float64)
    relative = centroids - centroids.mean(axis=0)
    if "organ" in lesions.columns:
        organ = lesions["organ"].fillna("").astype(str)
        extranodal = (~organ.isin(_NOT_EXTRANODAL)).to_numpy(np.float64)
    else:
        extranodal = np.zeros(len(lesions))
    nodes = np.column_stack(
        [
            np.log1p(np.maximum(lesions["volume_ml"].to_numpy(np.float64), 0.0)),
            lesions["suvmax"].to_numpy(np.float64),
            lesions["suvmean"].to_numpy(np.float64),
            lesions["suvpeak"].to_numpy(np.float64),
            np.log1p(np.maximum(lesions["tlg"].to_numpy(np.float64), 0.0)),
            extranodal,
            relative,
            np.linalg.norm(relative, axis=1),
            np.full(len(lesions), np.log(len(lesions))),
        ]
    )
    if max_lesions is not None and len(lesions) > max_lesions:
        keep = np.sort(
            np.argsort(-lesions["tlg"].to_numpy(np.float64), kind="stable")[:max_lesions]
        )
        nodes, centroids = nodes[keep], centroids[keep]
    distances = np.linalg.norm(centroids[:, None, :] - centroids[None, :, :], axis=-1)
    return LesionGraph(nodes.astype(np.float32), distances.astype(np.float32))


@dataclass(frozen=True)
class GraphBatch:
    """Padded, masked lesion graphs of B patients.

    Attributes
    ----------
    nodes : Tensor, shape (B, J, F)
        Standardised node features; padded rows are 0.
    distances_mm : Tensor, shape (B, J, J)
    mask : Tensor, shape (B, J), bool
        True for real lesions. A patient without lesions has none (the model puts its
        learned empty token in slot 0).
    """

    nodes: torch.Tensor
    distances_mm: torch.Tensor
    mask: torch.Tensor

    def __getitem__(self, index: torch.Tensor) -> GraphBatch:
        """The patients ``index``, trimmed to their largest lesion count (at least 1)."""
        mask = self.mask[index]
        j = max(1, int(mask.sum(dim=1).max()))
        return GraphBatch(
            self.nodes[index, :j], self.distances_mm[index, :j, :j], mask[:, :j].contiguous()
        )


def collate_graphs(
    graphs: Sequence[LesionGraph],
    mean: NDArray[np.floating] | None = None,
    std: NDArray[np.floating] | None = None,
) -> GraphBatch:
    """Pad graphs to the largest lesion count (at least 1) and z-score their nodes.

    Parameters
    ----------
    graphs : sequence of LesionGraph, length B
    mean, std : ndarray, shape (F,), optional
        Node feature statistics (of the training fold); none = no standardisation.
    """
    n_features = len(NODE_FEATURES)
    j = max([1, *(g.n_lesions for g in graphs)])
    nodes = np.zeros((len(graphs), j, n_features), np.float32)
    dist = np.zeros((len(graphs), j, j), np.float32)
    mask = np.zeros((len(graphs), j), bool)
    mu = np.zeros(n_features) if mean is None else np.asarray(mean, np.float64)
    sd = np.ones(n_features) if std is None else np.asarray(std, np.float64)
    for b, g in enumerate(graphs):
        n = g.n_lesions
        nodes[b, :n] = (g.nodes - mu) / sd
        dist[b, :n, :n] = g.distances_mm
        mask[b, :n] = True
    return GraphBatch(torch.from_numpy(nodes), torch.from_numpy(dist), torch.from_numpy(mask))


# --------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------


class GATv2Layer(nn.Module):
    """One multi-head GATv2 layer [1]_ on dense, padded complete graphs with an edge attribute.

    e_ij^h = a_hᵀ LeakyReLU_0.2(W_t h_i + W_s h_j + W_e d_ij)  (head h's slice),
    α_ij^h = softmax over the real nodes j of e_ij^h,
    out_i = LayerNorm(h_i + ELU(concat_h Σ_j α_ij^h (W_s h_j)^h)), padded rows set to 0.

    Parameters
    ----------
    dim : int
    heads : int
        Divides ``dim``.
    dropout : float
        On the attention weights (training only).
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise BaselineError(f"GATv2Layer: dim ({dim}) must be a multiple of heads ({heads})")
        self.heads, self.head_dim = heads, dim // heads
        self.lin_source = nn.Linear(dim, dim)
        self.lin_target = nn.Linear(dim, dim, bias=False)
        self.lin_edge = nn.Linear(1, dim, bias=False)
        self.att = nn.Parameter(torch.empty(heads, self.head_dim))
        nn.init.xavier_uniform_(self.att)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, h: torch.Tensor, edge: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update the node tokens.

        Parameters
        ----------
        h : Tensor, shape (B, J, dim)
        edge : Tensor, shape (B, J, J)
            Edge attribute (scaled distance) between nodes i and j.
        mask : Tensor, shape (B, J), bool
            Real nodes; every patient needs at least one.

        Returns
        -------
        out : Tensor, shape (B, J, dim)
        alpha : Tensor, shape (B, heads, J, J)
            Attention of node i (row) over nodes j; rows sum to 1 over real j; padded
            columns are 0.
        """
        b, j, _ = h.shape
        hh, dh = self.heads, self.head_dim
        source = self.lin_source(h).view(b, j, hh, dh)
        target = self.lin_target(h).view(b, j, hh, dh)
        edges = self.lin_edge(edge.unsqueeze(-1)).view(b, j, j, hh, dh)
        pair = target[:, :, None] + source[:, None, :] + edges  # (B, i, j, H, dh)
        score = (F.leaky_relu(pair, 0.2) * self.att).sum(-1)  # (B, i, j, H)
        score = score.masked_fill(~mask[:, None, :, None], float("-inf"))
        alpha = torch.softmax(score, dim=2)
        message = torch.einsum("bijh,bjhd->bihd", self.dropout(alpha), source).reshape(b, j, -1)
        out = self.norm(h + F.elu(message)) * mask[..., None]
        return out, alpha.permute(0, 3, 1, 2)


class ThieryNet(nn.Module):
    """Lesion graph → GATv2 layers → cross-attention to clinical tokens → min+max pooling.

    Parameters
    ----------
    config : ThieryConfig
    n_node_features, n_clinical : int
    """

    def __init__(
        self,
        config: ThieryConfig,
        n_node_features: int = len(NODE_FEATURES),
        n_clinical: int = len(CLINICAL_TOKENS),
    ) -> None:
        super().__init__()
        d = config.hidden
        self.config = config
        self.embed = nn.Sequential(nn.Linear(n_node_features, d), nn.ELU(), nn.Linear(d, d))
        self.empty_token = nn.Parameter(torch.zeros(d))
        nn.init.normal_(self.empty_token, std=0.1)
        self.gat = nn.ModuleList(
            [GATv2Layer(d, config.heads, config.dropout) for _ in range(config.gat_layers)]
        )
        self.clinical_weight = nn.Parameter(torch.randn(n_clinical, d) / math.sqrt(d))
        self.clinical_bias = nn.Parameter(torch.zeros(n_clinical, d))
        self.cross = nn.MultiheadAttention(
            d, config.heads, dropout=config.dropout, batch_first=True
        )
        self.norm_cross = nn.LayerNorm(d)
        self.ffn = nn.Sequential(
            nn.Linear(d, 2 * d), nn.ELU(), nn.Dropout(config.dropout), nn.Linear(2 * d, d)
        )
        self.norm_ffn = nn.LayerNorm(d)
        self.score = nn.Linear(d, 1)

    def forward(
        self,
        nodes: torch.Tensor,
        distances_mm: torch.Tensor,
        mask: torch.Tensor,
        clinical: torch.Tensor,
    ) -> torch.Tensor:
        """Risk logits, shape (B,), from a `GraphBatch`'s tensors and clinical (B, C)."""
        empty = ~mask.any(dim=1)
        h = self.embed(nodes)
        first = torch.where(empty[:, None], self.empty_token.expand_as(h[:, 0]), h[:, 0])
        h = torch.cat([first[:, None], h[:, 1:]], dim=1)
        mask = mask.clone()
        mask[:, 0] |= empty
        edge = distances_mm / self.config.distance_scale_mm
        for layer in self.gat:
            h, _ = layer(h, edge, mask)
        tokens = clinical[..., None] * self.clinical_weight + self.clinical_bias  # (B, C, d)
        attended, _ = self.cross(h, tokens, tokens, need_weights=False)
        h = self.norm_cross(h + attended)
        h = self.norm_ffn(h + self.ffn(h))
        return _min_max_pool(self.score(h).squeeze(-1), mask, self.config)


def _min_max_pool(scores: torch.Tensor, mask: torch.Tensor, config: ThieryConfig) -> torch.Tensor:
    """mean(top-k) + min_weight · mean(bottom-k) of the real scores, k = min(pool_k, n)."""
    n = mask.sum(dim=1)
    kk = min(config.pool_k, scores.shape[1])
    k = n.clamp(max=kk)
    take = torch.arange(kk, device=scores.device)[None, :] < k[:, None]
    top = torch.sort(scores.masked_fill(~mask, float("-inf")), dim=1, descending=True).values
    bottom = torch.sort(scores.masked_fill(~mask, float("inf")), dim=1).values
    top_mean = torch.where(take, top[:, :kk], 0.0).sum(1) / k
    bottom_mean = torch.where(take, bottom[:, :kk], 0.0).sum(1) / k
    return top_mean + config.min_weight * bottom_mean


# --------------------------------------------------------------------------------------
# Fitting on one split
# --------------------------------------------------------------------------------------


def _clinical_matrix(table: pd.DataFrame, where: str) -> NDArray[np.float64]:
    missing = [c for c in CLINICAL_TOKENS if c not in table.columns]
    if missing:
        raise BaselineError(
            f"{where}: expected clinical columns {list(CLINICAL_TOKENS)}, missing {missing}"
        )
    x = table[list(CLINICAL_TOKENS)].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    col = CLINICAL_TOKENS.index("ldh_ratio")
    x[:, col] = np.log(np.clip(x[:, col], 1e-3, None))
    return x


def lesion_graphs(
    lesions: pd.DataFrame, max_lesions: int | None = None, where: str = "lesion graphs"
) -> dict[str, LesionGraph]:
    """`lesion_graph` of every patient of a lesion table, keyed by patient id.

    A patient without rows has no entry (`fit_predict_thiery` gives it an empty graph).

    Raises
    ------
    BaselineError
        Missing columns or non-finite values; names the patients.
    """
    _check_lesion_table(lesions, where)
    return {
        str(pid): lesion_graph(rows, max_lesions)
        for pid, rows in lesions.groupby(lesions["patient_id"].astype(str), sort=False)
    }


def _graphs(patient_ids: Sequence[str], by_patient: Mapping[str, LesionGraph]) -> list[LesionGraph]:
    empty = LesionGraph(np.zeros((0, len(NODE_FEATURES)), np.float32), np.zeros((0, 0), np.float32))
    return [by_patient.get(str(p), empty) for p in patient_ids]


def _stats(x: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    if x.shape[0] == 0:
        return np.zeros(x.shape[1]), np.ones(x.shape[1])
    mean = np.nanmean(x, axis=0)
    std = np.nanstd(x, axis=0)
    return np.nan_to_num(mean), np.where(np.isfinite(std) & (std > 1e-6), std, 1.0)


def fit_predict_thiery(
    split: Split,
    lesions: pd.DataFrame | Mapping[str, LesionGraph],
    config: ThieryConfig | None = None,
) -> NDArray[np.float64]:
    """Fit the Thiery2025 network on ``split.train``; return the risks of ``split.test``.

    Parameters
    ----------
    split : Split
    lesions : DataFrame or mapping of str to LesionGraph
        Lesion table (`lamp.baselines.lesions.cohort_lesion_tables`) of at least the
        split's patients, or its `lesion_graphs` built with ``config.max_lesions`` (to
        build the graphs once for all folds); a patient without rows has no lesions.
    config : ThieryConfig, optional

    Returns
    -------
    ndarray, shape (len(split.test),)
        The logit of an event before the horizon (higher = worse).

    Raises
    ------
    BaselineError
        A malformed lesion table, or a training fold without both labels at the horizon.
    """
    config = config or ThieryConfig()
    where = f"{METHOD} ({split.endpoint}, fold {split.fold})"
    by_patient = (
        lesion_graphs(lesions, config.max_lesions, where)
        if isinstance(lesions, pd.DataFrame)
        else lesions
    )
    label, labelled = two_year_labels(
        split.train["time"].to_numpy(), split.train["event"].to_numpy(), config.horizon_months
    )
    n_pos, n_neg = int(label[labelled].sum()), int((labelled & (label == 0)).sum())
    if n_pos == 0 or n_neg == 0:
        raise BaselineError(
            f"{where}: the training fold needs patients with and without an event by "
            f"{config.horizon_months:g} months; got {n_pos} with and {n_neg} without "
            f"({int((~labelled).sum())} censored earlier)"
        )
    train_ids = split.train["patient_id"].astype(str).tolist()
    test_ids = split.test["patient_id"].astype(str).tolist()
    train_graphs = _graphs(train_ids, by_patient)
    test_graphs = _graphs(test_ids, by_patient)
    # statistics of the whole training fold (no outcome used), never of the test fold
    node_mean, node_std = _stats(
        np.concatenate([g.nodes for g in train_graphs] + [np.zeros((0, len(NODE_FEATURES)))])
    )
    clin_train = _clinical_matrix(split.train, where)
    clin_mean, clin_std = _stats(clin_train)

    def clinical_tensor(x: NDArray[np.float64]) -> torch.Tensor:
        z = np.nan_to_num((x - clin_mean) / clin_std)  # a missing value sits at the mean
        return torch.as_tensor(z, dtype=torch.float32)

    keep = np.flatnonzero(labelled)
    graphs = collate_graphs([train_graphs[i] for i in keep], node_mean, node_std)
    clinical = clinical_tensor(clin_train[keep])
    target = torch.as_tensor(label[keep])
    test_clinical = clinical_tensor(_clinical_matrix(split.test, where))

    # The tensors are tiny: a second intra-op thread costs more than it gains (measured:
    # 7x the CPU time per step on a busy 2-core machine), and one thread keeps the sums in
    # one order.
    with torch_threads(1), torch.random.fork_rng(devices=[]):
        model = _train(graphs, clinical, target, config, seeded_generator(split.seed))
        # padded passes of _SCORE_BATCH patients (the rows to score include the training
        # patients, for the Kaplan-Meier threshold); each row's risk is its own
        model.eval()
        risks = []
        with torch.no_grad():
            for start in range(0, len(test_graphs), _SCORE_BATCH):
                part = slice(start, start + _SCORE_BATCH)
                batch = collate_graphs(test_graphs[part], node_mean, node_std)
                risks.append(
                    model(batch.nodes, batch.distances_mm, batch.mask, test_clinical[part])
                )
    return torch.cat(risks).numpy().astype(np.float64)


def _train(
    graphs: GraphBatch,
    clinical: torch.Tensor,
    target: torch.Tensor,
    config: ThieryConfig,
    generator: torch.Generator,
) -> ThieryNet:
    """Adam on BCE for ``config.epochs`` epochs of mini-batches shuffled by ``generator``.

    The weights are drawn from torch's global generator (seeded by the caller, as
    `seeded_generator` does); no augmentation.
    """
    model = ThieryNet(config)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def batch_loss(
        idx: torch.Tensor, flip: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch = graphs[idx]
        logit = model(batch.nodes, batch.distances_mm, batch.mask, clinical[idx])
        return F.binary_cross_entropy_with_logits(logit, target[idx]), {}

    train_epochs(
        model,
        optimiser,
        len(target),
        config.epochs,
        config.batch_size,
        generator,
        batch_loss,
        flips=False,
    )
    return model


def run_thiery2025(
    work: str | Path,
    cohort: str | Path,
    endpoints: Sequence[str] = ("pfs", "os"),
    seeds: Sequence[int] = (0,),
    masks: str = "automatic",
    config: ThieryConfig | None = None,
    lesions: pd.DataFrame | None = None,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Cross-validate Thiery2025; write ``WORK/baselines/Thiery2025/oof_risk.csv``.

    Parameters
    ----------
    work, cohort : str or Path
    endpoints : sequence of {"pfs", "os"}
        For "os" the 2-year label is on overall survival.
    seeds : sequence of int
    masks : {"automatic", "manual"}
        Whose lesions make the graphs: the segmentation network's (as LAMP) or the
        reference masks.
    config : ThieryConfig, optional
    lesions : DataFrame, optional
        A precomputed lesion table (tests, or a table computed elsewhere); by default
        `cohort_lesion_tables` of the patients with outcome.
    progress : callable, optional

    Returns
    -------
    DataFrame with `lamp.baselines.common.OOF_COLUMNS`, method "Thiery2025".
    """
    if masks not in MASKS:
        raise BaselineError(f"{METHOD}: lesion masks: expected one of {MASKS}, got {masks!r}")
    config = config or ThieryConfig()
    if lesions is None:
        table, _ = outcome_table(cohort)
        lesions = cohort_lesion_tables(
            cohort, work, masks, table["patient_id"].tolist(), progress=progress
        )
    settings = {"masks": masks, **asdict(config)}
    graphs = lesion_graphs(lesions, config.max_lesions, METHOD)  # once, not per fold

    def fit_predict(split: Split) -> NDArray[np.float64]:
        return fit_predict_thiery(split, graphs, config)

    # The row of Table 1 uses LAMP's (automatic) masks; on the reference masks the method
    # gets its own name so that the two never overwrite each other.
    name = METHOD if masks == "automatic" else f"{METHOD} (manual masks)"
    return cross_validate(name, fit_predict, work, cohort, endpoints, seeds, settings, progress)
