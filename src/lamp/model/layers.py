"""The LAMP prognosis network: LACF (paper Eq. 3-4), ABMLA (Eq. 5) and its ablations.

Every layer works on a padded batch of patients (see `lamp.model.batching`): lesion
features ``(B, J, D)`` with a boolean ``lesion_mask`` ``(B, J)`` and organ features
``(B, K, D)`` with ``organ_present`` ``(B, K)``. Padded lesions and absent organs are
removed with ``-inf`` before each softmax, so they get an attention of exactly zero and
a padded batch gives the same outputs (and gradients) as the patients one at a time.

Two degenerate inputs are valid and have a defined output:

* **a patient with no present organ** (an empty or failed organ segmentation): LACF has
  nothing to attend to, so its context is the zero vector, ``h_j = 0``, and its organ
  attention row is all zeros; ``z_j = concat(f_j, 0)``.
* **a patient with zero lesions**: there is nothing to pool, so the pooled vector is a
  learned "no lesion" embedding ``P0`` (one parameter vector of the size of ``P``),
  trained like every other weight by the patients without lesions; the lesion attention
  row is all zeros.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "VARIANTS",
    "ModelConfig",
    "masked_softmax",
    "LesionAnatomyFusion",
    "GatedAttentionPool",
    "MeanPool",
    "LAMP",
]

#: The ablation variants of Table 2: name -> (use_lacf, use_abmla).
VARIANTS: dict[str, tuple[bool, bool]] = {
    "baseline": (False, False),
    "abmla": (False, True),
    "lacf": (True, False),
    "full": (True, True),
}


@dataclass(frozen=True)
class ModelConfig:
    """Shape and switches of one LAMP network.

    Attributes
    ----------
    n_bins : int
        Number of discrete survival time bins (the output logits).
    feature_dim : int, default 128
        Dimension D of the lesion and organ features (paper: 128).
    attn_dim : int, default 128
        d_k of Eq. 3, the width of W_q, W_k and W_v (the paper gives no value).
    gate_dim : int, default 128
        Width of V and U in Eq. 5 (the paper gives no value).
    use_lacf, use_abmla : bool
        The two modules of the ablation (see `VARIANTS`).
    dropout : float, default 0.0
        Dropout on the pooled vector P before the head; the paper gives none, and 0
        keeps the batch and batch-1 gradients comparable.
    """

    n_bins: int
    feature_dim: int = 128
    attn_dim: int = 128
    gate_dim: int = 128
    use_lacf: bool = True
    use_abmla: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("n_bins", "feature_dim", "attn_dim", "gate_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelConfig.{name}: expected an integer >= 1, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout: expected 0 <= p < 1, got {self.dropout!r}")

    @classmethod
    def for_variant(cls, variant: str, n_bins: int, **kwargs: Any) -> ModelConfig:
        """The configuration of one named variant of `VARIANTS`."""
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {sorted(VARIANTS)}, got {variant!r}")
        use_lacf, use_abmla = VARIANTS[variant]
        return cls(n_bins=n_bins, use_lacf=use_lacf, use_abmla=use_abmla, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON and ``torch.load(weights_only=True)`` safe)."""
        return asdict(self)


def masked_softmax(scores: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """Softmax over the entries where ``mask`` is true; a row with none gives zeros.

    Parameters
    ----------
    scores : Tensor, float
        Unnormalised scores.
    mask : Tensor, bool, broadcastable to ``scores``
        True where an entry takes part.
    dim : int
        The axis normalised.

    Returns
    -------
    Tensor like ``scores``: non-negative, summing to one along ``dim`` where any entry
    is unmasked, exactly zero at masked entries and in rows with no unmasked entry (no
    NaN, and no gradient flows through the masked entries).
    """
    mask = mask.expand_as(scores)
    any_valid = mask.any(dim=dim, keepdim=True)
    # A fully masked row would be softmax(-inf, ..., -inf) = NaN; give it zeros instead.
    filled = scores.masked_fill(~mask, float("-inf")).masked_fill(~any_valid, 0.0)
    return torch.softmax(filled, dim=dim).masked_fill(~mask, 0.0)


class LesionAnatomyFusion(nn.Module):
    """LACF, paper Eq. 3-4: lesions attend to the organs present in the scan.

    ``h = softmax((F_L W_q)(F_S W_k)^T / sqrt(d_k)) F_S W_v`` with the absent organs
    masked out, and ``z_j = concat(f_j, h_j)``.

    Parameters
    ----------
    feature_dim : int
        D, the dimension of lesion and organ features.
    attn_dim : int
        d_k, the width of the query, key and value projections.
    """

    def __init__(self, feature_dim: int, attn_dim: int) -> None:
        super().__init__()
        self.w_q = nn.Linear(feature_dim, attn_dim, bias=False)
        self.w_k = nn.Linear(feature_dim, attn_dim, bias=False)
        self.w_v = nn.Linear(feature_dim, attn_dim, bias=False)
        self.scale = 1.0 / math.sqrt(attn_dim)
        self.out_dim = feature_dim + attn_dim

    def forward(
        self, lesions: Tensor, organs: Tensor, organ_present: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Fuse each lesion with its anatomical context.

        Parameters
        ----------
        lesions : Tensor, shape (B, J, D)
        organs : Tensor, shape (B, K, D)
        organ_present : Tensor, bool, shape (B, K)

        Returns
        -------
        z : Tensor, shape (B, J, D + d_k)
            ``concat(f_j, h_j)`` (Eq. 4); ``h_j = 0`` for a patient with no organ.
        organ_attention : Tensor, shape (B, J, K)
            Lesion -> organ attention; rows sum to one over present organs, zero at
            absent organs (and everywhere for a patient with no organ).
        """
        q = self.w_q(lesions)
        k = self.w_k(organs)
        v = self.w_v(organs)
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        attention = masked_softmax(scores, organ_present[:, None, :], dim=-1)
        h = torch.matmul(attention, v)
        return torch.cat([lesions, h], dim=-1), attention


class GatedAttentionPool(nn.Module):
    """ABMLA, paper Eq. 5: gated attention pooling over the patient's lesions.

    ``a_j = softmax_j(w^T (tanh(V z_j) ⊙ sigm(U z_j)))``, ``P = Σ_j a_j z_j``; a patient
    with zero lesions gets the learned ``P0``.

    Parameters
    ----------
    in_dim : int
        Dimension of z_j.
    gate_dim : int
        Rows of V and U.
    """

    def __init__(self, in_dim: int, gate_dim: int) -> None:
        super().__init__()
        self.v = nn.Linear(in_dim, gate_dim)
        self.u = nn.Linear(in_dim, gate_dim)
        self.w = nn.Linear(gate_dim, 1)
        self.empty = nn.Parameter(torch.zeros(in_dim))

    def forward(self, z: Tensor, lesion_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Pool the lesions of each patient.

        Parameters
        ----------
        z : Tensor, shape (B, J, E)
        lesion_mask : Tensor, bool, shape (B, J)

        Returns
        -------
        pooled : Tensor, shape (B, E)
        lesion_attention : Tensor, shape (B, J)
            a_j; sums to one over a patient's lesions, zero at padding and for a
            patient with no lesion.
        """
        gate = torch.tanh(self.v(z)) * torch.sigmoid(self.u(z))
        scores = self.w(gate).squeeze(-1)
        attention = masked_softmax(scores, lesion_mask, dim=-1)
        pooled = torch.einsum("bj,bje->be", attention, z)
        return _fill_empty(pooled, lesion_mask, self.empty), attention


class MeanPool(nn.Module):
    """The ablation baseline: mean of the lesion vectors (``P0`` without lesions).

    Parameters
    ----------
    in_dim : int
        Dimension of z_j.
    """

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.empty = nn.Parameter(torch.zeros(in_dim))

    def forward(self, z: Tensor, lesion_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Same contract as `GatedAttentionPool.forward`, with uniform weights 1/J."""
        weights = lesion_mask.to(z.dtype)
        weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1.0)
        pooled = torch.einsum("bj,bje->be", weights, z)
        return _fill_empty(pooled, lesion_mask, self.empty), weights


def _fill_empty(pooled: Tensor, lesion_mask: Tensor, empty: Tensor) -> Tensor:
    has_lesion = lesion_mask.any(dim=-1, keepdim=True)
    return torch.where(has_lesion, pooled, empty.expand_as(pooled))


class LAMP(nn.Module):
    """The LAMP prognosis network and its ablation variants (paper §2.2-2.3, Table 2).

    features -> [LACF] -> z_j -> ABMLA or mean pooling -> P -> linear -> n_bins logits.
    Without LACF, ``z_j = f_j``.

    Parameters
    ----------
    config : ModelConfig
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.lacf: LesionAnatomyFusion | None = None
        dim = config.feature_dim
        if config.use_lacf:
            self.lacf = LesionAnatomyFusion(config.feature_dim, config.attn_dim)
            dim = self.lacf.out_dim
        self.pool: nn.Module = (
            GatedAttentionPool(dim, config.gate_dim) if config.use_abmla else MeanPool(dim)
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(dim, config.n_bins)

    def forward(
        self,
        lesions: Tensor,
        lesion_mask: Tensor,
        organs: Tensor,
        organ_present: Tensor,
    ) -> dict[str, Tensor]:
        """Survival logits and attentions of a padded batch.

        Parameters
        ----------
        lesions : Tensor, float, shape (B, J, D)
            Standardised lesion features; padded rows are ignored.
        lesion_mask : Tensor, bool, shape (B, J)
        organs : Tensor, float, shape (B, K, D)
            Standardised organ features (K = 71); absent rows are ignored.
        organ_present : Tensor, bool, shape (B, K)

        Returns
        -------
        dict with
            ``logits`` (B, n_bins): hazards are ``sigmoid(logits)`` (see
            `lamp.model.loss`); ``lesion_attention`` (B, J): ABMLA's a_j, or 1/J for
            mean pooling; ``organ_attention`` (B, J, K): LACF's attention, zeros
            without LACF.
        """
        b, j, _ = lesions.shape
        if self.lacf is not None:
            z, organ_attention = self.lacf(lesions, organs, organ_present)
        else:
            z = lesions
            organ_attention = lesions.new_zeros((b, j, organs.shape[1]))
        pooled, lesion_attention = self.pool(z, lesion_mask)
        logits = self.head(self.dropout(pooled))
        return {
            "logits": logits,
            "lesion_attention": lesion_attention,
            "organ_attention": organ_attention,
        }
