"""Kaplan–Meier, log-rank and the risk-group rule (`lamp.evaluation.survival`).

Reference values come from lifelines on its own shipped data sets (Waltons, Rossi); a
tiny case is computed by hand.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifelines import KaplanMeierFitter
from lifelines.datasets import load_rossi, load_waltons
from lifelines.statistics import logrank_test as lifelines_logrank

from lamp.evaluation.survival import (
    RULE_EXACT,
    RULE_OTHER_FOLDS,
    SurvivalError,
    kaplan_meier,
    logrank_test,
    number_at_risk,
    risk_groups,
)


def _datasets():
    w = load_waltons()
    r = load_rossi()
    return [
        ("waltons", w["T"], w["E"], w["group"] == "miR-137"),
        ("rossi", r["week"], r["arrest"], r["fin"] == 1),
    ]


@pytest.mark.parametrize(("name", "t", "e", "g"), _datasets(), ids=["waltons", "rossi"])
def test_kaplan_meier_matches_lifelines(name, t, e, g):
    km = kaplan_meier(t, e)
    ref = KaplanMeierFitter().fit(t, e)
    sf = ref.survival_function_.iloc[:, 0]
    np.testing.assert_allclose(km(sf.index.to_numpy()), sf.to_numpy(), rtol=0, atol=1e-8)
    # between the jumps too (right-continuous step function)
    grid = np.linspace(0, float(t.max()) + 5, 97)
    np.testing.assert_allclose(km(grid), ref.predict(grid).to_numpy(), rtol=0, atol=1e-8)
    table = ref.event_table.drop(index=0.0, errors="ignore")
    np.testing.assert_array_equal(km.time, table.index.to_numpy())
    np.testing.assert_array_equal(km.at_risk, table["at_risk"].to_numpy())
    np.testing.assert_array_equal(km.events, table["observed"].to_numpy())
    np.testing.assert_array_equal(km.censored, table["censored"].to_numpy())
    assert km.median() == pytest.approx(ref.median_survival_time_)
    # numbers at risk at arbitrary times = lifelines' at-risk count just before that time
    at = np.array([0.0, 10.0, 20.0, 33.5, 50.0])
    expect = [(t >= a).sum() for a in at]
    np.testing.assert_array_equal(number_at_risk(t, at), expect)


@pytest.mark.parametrize(("name", "t", "e", "g"), _datasets(), ids=["waltons", "rossi"])
def test_logrank_matches_lifelines(name, t, e, g):
    res = logrank_test(t[g], e[g], t[~g], e[~g])
    ref = lifelines_logrank(t[g], t[~g], e[g], e[~g])
    assert res.chi2 == pytest.approx(ref.test_statistic, rel=1e-10, abs=1e-8)
    assert res.p_value == pytest.approx(ref.p_value, rel=1e-8, abs=1e-300)
    assert sum(res.observed) == pytest.approx(sum(res.expected))
    assert res.observed[0] == e[g].sum()


def test_hand_computed_case():
    # group A: events at 1, 3; censored at 2.  group B: event at 2, censored at 4
    t = np.array([1.0, 2.0, 3.0, 2.0, 4.0])
    e = np.array([1, 0, 1, 1, 0])
    km = kaplan_meier(t, e)
    # times 1,2,3,4; at risk 5,4,2,1; events 1,1,1,0 -> S = 4/5, 4/5*3/4, *1/2, same
    np.testing.assert_array_equal(km.time, [1, 2, 3, 4])
    np.testing.assert_array_equal(km.at_risk, [5, 4, 2, 1])
    np.testing.assert_allclose(km.survival, [0.8, 0.6, 0.3, 0.3])
    assert km(0.5) == 1.0 and km(2.5) == pytest.approx(0.6)
    assert km.median() == 3.0
    np.testing.assert_array_equal(number_at_risk(t, [0, 2, 2.5, 5]), [5, 4, 2, 0])

    # log-rank A = (1,e) (2,c) (3,e) vs B = (2,e) (4,c); event times 1, 2, 3
    #  t=1: n=5, nA=3, d=1, dA=1: E=3/5, V=1*(3/5)(2/5)*4/4 = 6/25
    #  t=2: n=4, nA=2, d=1, dA=0: E=1/2, V=1*(1/2)(1/2)*3/3 = 1/4
    #  t=3: n=2, nA=1, d=1, dA=1: E=1/2, V=1*(1/2)(1/2)*1/1 = 1/4
    #  O-E = 2 - 1.6 = 0.4; V = 0.74; chi2 = 0.16/0.74
    res = logrank_test(t[:3], e[:3], t[3:], e[3:])
    assert res.chi2 == pytest.approx(0.16 / 0.74, rel=1e-12)
    assert res.expected[0] == pytest.approx(1.6)
    ref = lifelines_logrank(t[:3], t[3:], e[:3], e[3:])
    assert res.chi2 == pytest.approx(ref.test_statistic, abs=1e-10)


def test_failures_are_named():
    with pytest.raises(SurvivalError, match="no event"):
        logrank_test([1, 2], [0, 0], [3], [0])
    with pytest.raises(SurvivalError, match="one length"):
        kaplan_meier([1, 2], [1])
    with pytest.raises(SurvivalError, match="0/1"):
        kaplan_meier([1, 2], [1, 2])
    with pytest.raises(SurvivalError, match="non-empty"):
        logrank_test([], [], [1], [1])


def _oof():
    # fold 0 risks 10, 20; fold 1 risks 1, 2, 3; fold 2 risks 100, 200
    return pd.DataFrame(
        {
            "patient_id": [f"P{i}" for i in range(7)],
            "fold": [0, 0, 1, 1, 1, 2, 2],
            "risk": [10.0, 20.0, 1.0, 2.0, 3.0, 100.0, 200.0],
        }
    )


def test_risk_groups_use_only_the_other_folds():
    g = risk_groups(_oof()).set_index("patient_id")
    # fold 0: median(1,2,3,100,200) = 3;  fold 1: median(10,20,100,200) = 60;
    # fold 2: median(10,20,1,2,3) = 3
    assert g.loc["P0", "threshold"] == 3.0 and g.loc["P2", "threshold"] == 60.0
    assert g.loc["P5", "threshold"] == 3.0
    assert g["high"].to_dict() == {
        "P0": True, "P1": True, "P2": False, "P3": False, "P4": False, "P5": True, "P6": True,
    }  # fmt: skip
    assert set(g["rule"]) == {RULE_OTHER_FOLDS}
    # the fold's own risks do not move its threshold
    moved = _oof()
    moved.loc[moved["fold"] == 1, "risk"] = [1e6, 2e6, 3e6]
    assert risk_groups(moved).set_index("patient_id").loc["P2", "threshold"] == 60.0


def test_risk_groups_exact_rule_with_training_risks():
    train = pd.DataFrame({"fold": [0, 0, 0, 1, 1, 2], "risk": [5.0, 15.0, 25.0, 0.0, 4.0, 150.0]})
    g = risk_groups(_oof(), train).set_index("patient_id")
    assert g.loc["P0", "threshold"] == 15.0 and g.loc["P3", "threshold"] == 2.0
    assert g.loc["P6", "threshold"] == 150.0
    assert g["high"].tolist() == [False, True, False, False, True, False, True]
    assert set(g["rule"]) == {RULE_EXACT}
    with pytest.raises(SurvivalError, match="no training risks for fold 2"):
        risk_groups(_oof(), train[train["fold"] != 2])


def test_risk_groups_rejects_bad_frames():
    with pytest.raises(SurvivalError, match="duplicates"):
        risk_groups(pd.concat([_oof(), _oof().iloc[:1]]))
    with pytest.raises(SurvivalError, match="at least 2 folds"):
        risk_groups(_oof()[_oof()["fold"] == 1])
    with pytest.raises(SurvivalError, match="missing"):
        risk_groups(_oof().drop(columns="fold"))


def test_risk_groups_discrete_score_at_its_maximum_is_split():
    """A stage whose median is its largest value must not put everyone in the low group."""
    import pandas as pd

    from lamp.evaluation.survival import risk_groups

    oof = pd.DataFrame(
        {
            "patient_id": [f"P{i}" for i in range(10)],
            "fold": [0, 0, 0, 0, 0, 1, 1, 1, 1, 1],
            "risk": [4, 4, 4, 2, 1, 4, 4, 4, 3, 4],
        }
    )
    g = risk_groups(oof).set_index("patient_id")
    # fold 0: other fold's risks [4,4,4,3,4], median 4, none above -> 4 counts as high
    assert g.loc["P0", "high"] and not g.loc["P3", "high"]
    # fold 1: other fold's risks [4,4,4,2,1], median 4, none above -> same rule
    assert g.loc["P5", "high"] and not g.loc["P8", "high"]
    # a continuous score keeps the strict rule: ties at the median are low
    oof["risk"] = [5.0, 1.0, 3.0, 2.0, 4.0, 1.0, 3.0, 3.0, 2.0, 5.0]
    g = risk_groups(oof).set_index("patient_id")
    assert not g.loc["P2", "high"] and g.loc["P0", "high"]
