"""Shapes, masking and degenerate inputs of the LAMP layers (paper Eq. 3-5)."""

from __future__ import annotations

import pytest
import torch

from lamp.model.layers import (
    LAMP,
    VARIANTS,
    GatedAttentionPool,
    LesionAnatomyFusion,
    MeanPool,
    ModelConfig,
    masked_softmax,
)

D, K = 16, 71


def _inputs(b: int = 3, j: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lesions = torch.randn(b, j, D, generator=g)
    organs = torch.randn(b, K, D, generator=g)
    mask = torch.ones(b, j, dtype=torch.bool)
    mask[1, 3:] = False  # patient 1 has 3 lesions
    mask[2, :] = False  # patient 2 has none
    present = torch.rand(b, K, generator=g) > 0.3
    present[0, :] = False  # patient 0: organ segmentation found nothing
    return lesions, mask, organs, present


def test_masked_softmax_sums_to_one_and_zero_rows() -> None:
    scores = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    mask = torch.tensor([[True, False, True], [False, False, False]])
    out = masked_softmax(scores, mask)
    e1, e3 = torch.exp(torch.tensor(1.0)), torch.exp(torch.tensor(3.0))
    torch.testing.assert_close(
        out[0], torch.stack([e1 / (e1 + e3), torch.tensor(0.0), e3 / (e1 + e3)])
    )
    assert torch.equal(out[1], torch.zeros(3))


def test_lacf_shapes_masks_and_no_organ_patient() -> None:
    lesions, _, organs, present = _inputs()
    lacf = LesionAnatomyFusion(D, 8)
    z, att = lacf(lesions, organs, present)
    assert z.shape == (3, 5, D + 8) and att.shape == (3, 5, K)
    assert torch.equal(z[..., :D], lesions)  # Eq. 4: f_j is kept as it is
    # Rows sum to one over present organs, absent organs get exactly zero.
    torch.testing.assert_close(att[1:].sum(-1), torch.ones(2, 5))
    assert torch.all(att[~present[:, None, :].expand_as(att)] == 0)
    # No present organ: zero attention and zero context, no NaN.
    assert torch.all(att[0] == 0) and torch.all(z[0, :, D:] == 0)
    assert torch.isfinite(z).all()


def test_lacf_matches_eq3_by_hand() -> None:
    lacf = LesionAnatomyFusion(D, 8)
    lesions, _, organs, present = _inputs(seed=1)
    present[0, :] = True
    z, att = lacf(lesions[:1], organs[:1], present[:1])
    q, k, v = lacf.w_q(lesions[0]), lacf.w_k(organs[0]), lacf.w_v(organs[0])
    expected = torch.softmax(q @ k.T / 8**0.5, dim=-1)
    torch.testing.assert_close(att[0], expected)
    torch.testing.assert_close(z[0, :, D:], expected @ v)


def test_lacf_absent_organ_values_do_not_matter() -> None:
    lacf = LesionAnatomyFusion(D, 8)
    lesions, _, organs, present = _inputs()
    z1, _ = lacf(lesions, organs, present)
    organs2 = organs.clone()
    organs2[~present] = 1e3
    z2, _ = lacf(lesions, organs2, present)
    torch.testing.assert_close(z1, z2)


@pytest.mark.parametrize("pool_cls", [GatedAttentionPool, MeanPool])
def test_pooling_masks_and_zero_lesion_patient(pool_cls) -> None:
    lesions, mask, _, _ = _inputs()
    pool = pool_cls(D, 8) if pool_cls is GatedAttentionPool else pool_cls(D)
    with torch.no_grad():
        pool.empty.fill_(0.5)
    pooled, att = pool(lesions, mask)
    assert pooled.shape == (3, D) and att.shape == (3, 5)
    torch.testing.assert_close(att[:2].sum(-1), torch.ones(2))
    assert torch.all(att[~mask] == 0)
    # P is the attention-weighted sum of the patient's own lesions (Eq. 5).
    torch.testing.assert_close(pooled[1], (att[1, :3, None] * lesions[1, :3]).sum(0))
    # Zero lesions: the learned "no lesion" embedding P0.
    torch.testing.assert_close(pooled[2], torch.full((D,), 0.5))


def test_gated_attention_matches_eq5_by_hand() -> None:
    pool = GatedAttentionPool(D, 8)
    z = torch.randn(1, 4, D)
    mask = torch.ones(1, 4, dtype=torch.bool)
    _, att = pool(z, mask)
    s = pool.w(torch.tanh(pool.v(z[0])) * torch.sigmoid(pool.u(z[0]))).squeeze(-1)
    torch.testing.assert_close(att[0], torch.softmax(s, 0))


def test_mean_pool_is_uniform() -> None:
    lesions, mask, _, _ = _inputs()
    pooled, att = MeanPool(D)(lesions, mask)
    torch.testing.assert_close(att[1, :3], torch.full((3,), 1 / 3))
    torch.testing.assert_close(pooled[0], lesions[0].mean(0))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_lamp_variants_shapes_padding_invariance(variant: str) -> None:
    torch.manual_seed(0)
    model = LAMP(ModelConfig.for_variant(variant, n_bins=4, feature_dim=D, attn_dim=8, gate_dim=8))
    assert (model.lacf is not None) == VARIANTS[variant][0]
    assert isinstance(model.pool, GatedAttentionPool) == VARIANTS[variant][1]
    lesions, mask, organs, present = _inputs()
    out = model(lesions, mask, organs, present)
    assert out["logits"].shape == (3, 4)
    assert out["lesion_attention"].shape == (3, 5)
    assert out["organ_attention"].shape == (3, 5, K)
    assert all(torch.isfinite(t).all() for t in out.values())
    # Patient 1 alone, unpadded, gives the same logits as inside the padded batch.
    alone = model(lesions[1:2, :3], mask[1:2, :3], organs[1:2], present[1:2])
    torch.testing.assert_close(alone["logits"][0], out["logits"][1])
    # Zero-lesion patient: a defined output, the head applied to P0.
    expected = model.head(model.pool.empty)
    torch.testing.assert_close(out["logits"][2], expected)


def test_zero_lesion_batch_backward_is_finite() -> None:
    model = LAMP(ModelConfig(n_bins=3, feature_dim=D, attn_dim=8, gate_dim=8))
    lesions = torch.zeros(2, 1, D)
    mask = torch.zeros(2, 1, dtype=torch.bool)
    organs = torch.randn(2, K, D)
    present = torch.zeros(2, K, dtype=torch.bool)
    out = model(lesions, mask, organs, present)
    out["logits"].sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.pool.empty.grad is not None and model.pool.empty.grad.abs().sum() > 0


def test_model_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="n_bins"):
        ModelConfig(n_bins=0)
    with pytest.raises(ValueError, match="variant"):
        ModelConfig.for_variant("everything", n_bins=4)
