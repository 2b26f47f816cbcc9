"""The discrete-time NLL survival loss against hand-computed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lamp.model.loss import (
    SurvivalDataError,
    assign_bins,
    make_time_bins,
    nll_survival_loss,
    risk_from_logits,
)

# Two bins with hazards h = (0.2, 0.5): logits = log(h / (1 - h)).
LOGITS = torch.tensor([[math.log(0.2 / 0.8), 0.0]], dtype=torch.float64)
# S_0 = 0.8, S_1 = 0.8 * 0.5 = 0.4.


@pytest.mark.parametrize(
    ("bin_", "event", "expected"),
    [
        (0, 1, 1.6094379124341003),  # -ln h_0 = -ln 0.2
        (1, 1, 0.9162907318741551),  # -ln S_0 - ln h_1 = -ln 0.8 - ln 0.5
        (0, 0, 0.2231435513142097),  # censored: -ln S_0 = -ln 0.8 (end of its bin)
        (1, 0, 0.9162907318741551),  # censored: -ln S_1 = -ln 0.4
    ],
)
def test_hand_cases(bin_: int, event: int, expected: float) -> None:
    loss = nll_survival_loss(LOGITS, torch.tensor([bin_]), torch.tensor([event]))
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_three_bins_and_reductions() -> None:
    # h = (0.1, 0.25, 0.5): S = (0.9, 0.675, 0.3375).
    h = torch.tensor([0.1, 0.25, 0.5], dtype=torch.float64)
    logits = torch.log(h / (1 - h)).repeat(3, 1)
    bins = torch.tensor([2, 1, 2])
    events = torch.tensor([1, 0, 0])
    per = nll_survival_loss(logits, bins, events, reduction="none")
    # event in bin 2: -ln 0.675 - ln 0.5 = 0.393043 + 0.693147
    # censored in bin 1: -ln 0.675 ; censored in bin 2: -ln 0.3375
    expected = [1.0861897389, 0.3930425881, 1.0861897389]
    np.testing.assert_allclose(per.numpy(), expected, atol=1e-9)
    assert nll_survival_loss(logits, bins, events).item() == pytest.approx(sum(expected))
    assert nll_survival_loss(logits, bins, events, reduction="mean").item() == pytest.approx(
        sum(expected) / 3
    )
    # alpha = 1 keeps only the uncensored term.
    only = nll_survival_loss(logits, bins, events, alpha=1.0, reduction="none")
    np.testing.assert_allclose(only.numpy(), [1.0861897389, 0.0, 0.0], atol=1e-9)


def test_risk_is_minus_sum_of_survival() -> None:
    assert risk_from_logits(LOGITS).item() == pytest.approx(-(0.8 + 0.4))


def test_loss_is_finite_at_saturated_hazards() -> None:
    logits = torch.tensor([[-50.0, 50.0]], requires_grad=True)
    loss = nll_survival_loss(logits, torch.tensor([0]), torch.tensor([1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    # the event in bin 0 with h_0 = sigmoid(-50): -log h_0 = 50 exactly (a clamp at
    # 1e-7 would give 16.1 and no gradient); d/dlogit_0 = -(1 - h_0) = -1
    assert loss.item() == pytest.approx(50.0, rel=1e-6)
    assert logits.grad[0, 0].item() == pytest.approx(-1.0, abs=1e-6)
    # a censored patient past a saturated bin keeps its gradient too
    logits = torch.tensor([[30.0, 0.0]], requires_grad=True)
    nll_survival_loss(logits, torch.tensor([1]), torch.tensor([0])).backward()
    assert logits.grad[0, 0].item() == pytest.approx(1.0, abs=1e-6)


def test_bins_at_event_quantiles_ignore_censored() -> None:
    times = np.arange(1.0, 11.0)  # events at 1..10
    events = np.ones(10, bool)
    edges = make_time_bins(times, events, 4)
    # numpy linear quantiles of 1..10 at 1/4, 1/2, 3/4: 3.25, 5.5, 7.75
    np.testing.assert_allclose(edges, [0.0, 3.25, 5.5, 7.75, np.inf])
    more = make_time_bins(np.r_[times, 0.5, 99.0], np.r_[events, False, False], 4)
    np.testing.assert_array_equal(edges, more)
    np.testing.assert_array_equal(
        assign_bins([0.5, 3.25, 5.0, 7.75, 100.0], edges), [0, 1, 1, 3, 3]
    )


def test_tied_quantiles_merge() -> None:
    edges = make_time_bins([5.0, 5.0, 5.0, 9.0], [1, 1, 1, 0], 4)
    np.testing.assert_array_equal(edges, [0.0, 5.0, np.inf])


def test_errors() -> None:
    with pytest.raises(SurvivalDataError, match="all censored"):
        make_time_bins([1.0, 2.0], [0, 0], 4)
    with pytest.raises(SurvivalDataError, match="bins in 0..1"):
        nll_survival_loss(LOGITS, torch.tensor([2]), torch.tensor([1]))
    with pytest.raises(SurvivalDataError, match="one length"):
        make_time_bins([1.0, 2.0], [1], 2)
