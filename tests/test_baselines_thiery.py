"""The Thiery2025 baseline: lesion graphs, GATv2, clinical cross-attention, 2-year BCE."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from lamp.baselines.common import BaselineError, Split, outcome_table
from lamp.baselines.thiery2025 import (
    METHOD,
    NODE_FEATURES,
    GATv2Layer,
    ThieryConfig,
    ThieryNet,
    collate_graphs,
    fit_predict_thiery,
    lesion_graph,
    lesion_graphs,
    run_thiery2025,
    two_year_labels,
)
from lamp.cohort import make_folds, read_folds, write_folds
from lamp.evaluation.metrics import concordance_index

N_FEATURES = len(NODE_FEATURES)


def lesion_rows(pid: str, volumes, rng: np.random.Generator) -> list[dict]:
    rows = []
    for k, vol in enumerate(volumes):
        suvmax = rng.uniform(8.0, 40.0)
        suvmean = suvmax * rng.uniform(0.4, 0.6)
        x, y, z = rng.normal(0.0, 150.0, 3)
        rows.append(
            {
                "patient_id": pid, "lesion_id": k + 1, "voxels": 10, "volume_ml": vol,
                "suvmax": suvmax, "suvmean": suvmean, "suvpeak": 0.8 * suvmax,
                "tlg": vol * suvmean, "centroid_x_mm": x, "centroid_y_mm": y,
                "centroid_z_mm": z, "organ": rng.choice(["none", "liver", "spleen"]),
                "organ_fraction": 1.0, "nodal_region": "",
            }
        )  # fmt: skip
    return rows


def write_cohort(root, n=30, n_without_outcome=2, seed=0, max_lesions=6, strength=1.5):
    """clinical.csv + folds.csv of n patients; returns cohort, work, lesion table, truth.

    The log-hazard is ``strength`` x the standardised log total lesion volume.
    """
    rng = np.random.default_rng(seed)
    cohort, work = root / "cohort", root / "work"
    cohort.mkdir(parents=True)
    rows, lesions, truth = [], [], {}
    for i in range(n):
        pid = f"P{i:03d}"
        j = int(rng.integers(0, max_lesions + 1))
        volumes = rng.lognormal(2.5, 1.2, j)
        lesions += lesion_rows(pid, volumes, rng)
        r = strength * (np.log1p(volumes.sum()) - 3.5) / 1.5
        truth[pid] = r
        t_event = rng.exponential(24.0 * np.exp(-r))
        t_cens = rng.uniform(30.0, 72.0)
        pfs, pev = min(t_event, t_cens) + 0.1, int(t_event <= t_cens)
        oev = int(pev and rng.random() < 0.8)
        os_ = pfs + (rng.uniform(0.1, 6.0) if oev else rng.uniform(0.0, 12.0))
        row = {
            "patient_id": pid, "age": float(rng.normal(62, 12)), "sex": "M",
            "ecog": int(rng.integers(0, 4)), "ldh_ratio": float(rng.lognormal(0.1, 0.5)),
            "ann_arbor": int(rng.integers(1, 5)), "extranodal_sites": int(rng.integers(0, 3)),
            "ipi": 2, "pfs_months": pfs, "pfs_event": pev, "os_months": os_, "os_event": oev,
        }  # fmt: skip
        if i >= n - n_without_outcome:
            for c in ("pfs_months", "pfs_event", "os_months", "os_event"):
                row[c] = None
        rows.append(row)
    clinical = pd.DataFrame(rows)
    clinical.to_csv(cohort / "clinical.csv", index=False)
    strata = clinical["pfs_event"].fillna(-1).astype(int)
    write_folds(cohort / "folds.csv", make_folds(clinical["patient_id"].tolist(), strata, 5, seed))
    return cohort, work, pd.DataFrame(lesions), pd.Series(truth)


def a_split(cohort, endpoint="pfs", fold=0, seed=0) -> Split:
    table, _ = outcome_table(cohort)
    table["time"] = table[f"{endpoint}_months"].astype(float)
    table["event"] = table[f"{endpoint}_event"].astype(int)
    train = table[table["fold"] != fold].reset_index(drop=True)
    test = table[table["fold"] == fold].drop(columns=["time", "event"]).reset_index(drop=True)
    return Split(endpoint, fold, seed, train, test)


# --------------------------------------------------------------------------------------
# Hand-computed pieces
# --------------------------------------------------------------------------------------


def test_two_year_labels_by_hand():
    time = [10.0, 30.0, 20.0, 24.0, 24.0, 5.0, 40.0]
    event = [1, 1, 0, 0, 1, 0, 0]
    label, labelled = two_year_labels(time, event, 24.0)
    # event by 24 -> 1; event after 24 or event-free at >= 24 -> 0; censored < 24 -> out
    assert label.tolist() == [1, 0, 0, 0, 1, 0, 0]
    assert labelled.tolist() == [True, True, False, True, True, False, True]
    with pytest.raises(BaselineError, match="one shape"):
        two_year_labels([1.0, 2.0], [1], 24.0)


def test_lesion_graph_by_hand():
    table = pd.DataFrame(
        {
            "patient_id": ["A"] * 3, "volume_ml": [np.e - 1, 1.0, 2.0],
            "suvmax": [10.0, 20.0, 30.0], "suvmean": [5.0, 8.0, 12.0],
            "suvpeak": [9.0, 18.0, 25.0], "tlg": [5.0, 8.0, 24.0],
            "centroid_x_mm": [0.0, 30.0, 0.0], "centroid_y_mm": [0.0, 0.0, 40.0],
            "centroid_z_mm": [0.0, 0.0, 0.0], "organ": ["none", "liver", "spleen"],
        }
    )  # fmt: skip
    g = lesion_graph(table)
    assert g.nodes.shape == (3, N_FEATURES) and g.distances_mm.shape == (3, 3)
    col = {name: i for i, name in enumerate(NODE_FEATURES)}
    assert g.nodes[0, col["log_volume_ml"]] == pytest.approx(1.0)
    assert g.nodes[:, col["extranodal"]].tolist() == [0.0, 1.0, 0.0]
    assert g.nodes[:, col["rel_x_mm"]] == pytest.approx([-10.0, 20.0, -10.0])
    assert g.nodes[2, col["rel_distance_mm"]] == pytest.approx(np.hypot(10.0, 40 - 40 / 3))
    assert g.nodes[:, col["log_n_lesions"]] == pytest.approx([np.log(3)] * 3)
    assert g.distances_mm[1, 2] == pytest.approx(50.0) and g.distances_mm[2, 1] == 50.0
    assert np.diag(g.distances_mm).tolist() == [0.0, 0.0, 0.0]
    kept = lesion_graph(table, max_lesions=2)  # the two largest TLG, in table order
    assert kept.nodes[:, col["suvmax"]].tolist() == [20.0, 30.0]
    assert kept.distances_mm[0, 1] == pytest.approx(50.0)
    empty = lesion_graph(table.iloc[:0])
    assert empty.nodes.shape == (0, N_FEATURES) and empty.n_lesions == 0


# --------------------------------------------------------------------------------------
# The network: masks, padding, permutations, empty graphs
# --------------------------------------------------------------------------------------


def test_gatv2_attention_sums_to_one_and_ignores_padding():
    torch.manual_seed(0)
    layer = GATv2Layer(8, heads=2).eval()
    h = torch.randn(2, 5, 8)
    edge = torch.rand(2, 5, 5)
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    out, alpha = layer(h, edge, mask)
    assert alpha.shape == (2, 2, 5, 5)
    assert torch.allclose(alpha.sum(-1), torch.ones(2, 2, 5))
    assert torch.all(alpha[0, :, :, 3:] == 0)
    assert torch.all(out[0, 3:] == 0)
    h2, edge2 = h.clone(), edge.clone()
    h2[0, 3:] = 100.0 * torch.randn(2, 8)
    edge2[0, :, 3:] = 7.0
    edge2[0, 3:, :] = -3.0
    out2, alpha2 = layer(h2, edge2, mask)
    assert torch.allclose(out2, out, atol=1e-6)
    assert torch.allclose(alpha2[0, :, :3, :3], alpha[0, :, :3, :3], atol=1e-6)
    # the edge attribute enters the score
    out3, _ = layer(h, edge * 5.0, mask)
    assert not torch.allclose(out3[0, :3], out[0, :3])


def _graph(n, rng):
    return lesion_graph(pd.DataFrame(lesion_rows("X", rng.lognormal(2.0, 1.0, n), rng)))


def _logits(model, graphs, clinical):
    batch = collate_graphs(graphs)
    with torch.no_grad():
        return model(batch.nodes, batch.distances_mm, batch.mask, clinical)


def test_net_padding_and_permutation_invariance():
    rng = np.random.default_rng(1)
    torch.manual_seed(0)
    model = ThieryNet(ThieryConfig.tiny()).eval()
    a, b = _graph(3, rng), _graph(7, rng)
    clin = torch.randn(2, 5)
    alone = _logits(model, [a], clin[:1])
    together = _logits(model, [a, b], clin)
    assert torch.allclose(alone, together[:1], atol=1e-5)
    # garbage in a's padded slots changes nothing
    batch = collate_graphs([a, b])
    batch.nodes[0, 3:] = 50.0
    batch.distances_mm[0, 3:, :] = 1e4
    batch.distances_mm[0, :, 3:] = 1e4
    with torch.no_grad():
        padded = model(batch.nodes, batch.distances_mm, batch.mask, clin)
    assert torch.allclose(padded, together, atol=1e-5)
    # the order of the lesions does not matter
    perm = rng.permutation(7)
    b_perm = type(b)(b.nodes[perm], b.distances_mm[np.ix_(perm, perm)])
    assert torch.allclose(_logits(model, [a, b_perm], clin), together, atol=1e-5)
    # the clinical tokens reach the output
    assert not torch.allclose(_logits(model, [a, b], clin + 1.0), together)


def test_zero_lesion_patient_uses_the_empty_token():
    rng = np.random.default_rng(2)
    torch.manual_seed(0)
    model = ThieryNet(ThieryConfig.tiny()).eval()
    empty = lesion_graph(pd.DataFrame(lesion_rows("E", [], rng)))
    clin = torch.randn(3, 5)
    out = _logits(model, [empty, _graph(2, rng), empty], clin)
    assert out.shape == (3,) and torch.isfinite(out).all()
    assert out[0] != out[2]  # different clinical tokens
    alone = _logits(model, [empty], clin[:1])
    assert alone.shape == (1,) and torch.allclose(alone, out[:1], atol=1e-5)
    with torch.no_grad():
        model.empty_token.add_(1.0)
    changed = _logits(model, [empty, _graph(2, np.random.default_rng(2)), empty], clin)
    assert changed[0] != out[0]


# --------------------------------------------------------------------------------------
# Training and cross-validation
# --------------------------------------------------------------------------------------


def test_run_respects_folds_and_scores_every_patient(tmp_path):
    cohort, work, lesions, _ = write_cohort(tmp_path, n=30, n_without_outcome=3)
    assert lesions["patient_id"].nunique() < 30  # some patients have no lesion
    oof = run_thiery2025(
        work, cohort, ["pfs", "os"], [0], masks="manual", config=ThieryConfig.tiny(),
        lesions=lesions,
    )  # fmt: skip
    name = f"{METHOD} (manual masks)"  # the automatic masks' row is plain METHOD
    assert set(oof["method"]) == {name}
    assert len(oof) == 27 * 2 and np.isfinite(oof["risk"]).all()
    merged = oof.merge(read_folds(cohort / "folds.csv"), on="patient_id", suffixes=("", "_c"))
    assert (merged["fold"] == merged["fold_c"]).all()
    assert {"P027", "P028", "P029"}.isdisjoint(oof["patient_id"])
    config = json.loads((work / "baselines" / name / "config.json").read_text())
    assert config["settings"]["masks"] == "manual" and config["settings"]["epochs"] == 5
    assert (work / "baselines" / name / "oof_risk.csv").is_file()


def test_same_seed_same_risks_and_no_global_side_effects(tmp_path):
    cohort, _, lesions, _ = write_cohort(tmp_path, n=30)
    split = a_split(cohort)
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = fit_predict_thiery(split, lesions, ThieryConfig.tiny())
    after = torch.rand(1)
    assert torch.equal(before, after)  # the global RNG is left alone
    assert torch.get_num_threads() == threads
    again = fit_predict_thiery(split, lesions, ThieryConfig.tiny())
    assert np.array_equal(first, again)
    prebuilt = lesion_graphs(lesions, ThieryConfig.tiny().max_lesions)
    assert np.array_equal(fit_predict_thiery(split, prebuilt, ThieryConfig.tiny()), first)
    other = fit_predict_thiery(
        Split(split.endpoint, split.fold, 7, split.train, split.test), lesions, ThieryConfig.tiny()
    )
    assert not np.array_equal(first, other)


def test_learns_a_planted_tumour_burden_signal(tmp_path):
    cohort, work, lesions, truth = write_cohort(
        tmp_path, n=80, n_without_outcome=0, seed=3, strength=3.0
    )
    config = ThieryConfig(hidden=16, heads=2, epochs=40, batch_size=32, lr=3e-3)
    oof = run_thiery2025(work, cohort, ["pfs"], [0], "manual", config, lesions=lesions)
    clinical = pd.read_csv(cohort / "clinical.csv").set_index("patient_id")
    clinical = clinical.loc[oof["patient_id"]]
    c_model = concordance_index(clinical["pfs_event"], clinical["pfs_months"], oof["risk"])
    c_true = concordance_index(
        clinical["pfs_event"], clinical["pfs_months"], truth[oof["patient_id"]]
    )
    assert c_true > 0.8  # the signal is there to learn
    assert c_model > 0.7, (c_model, c_true)


def test_training_draws_batch_orders_only():
    """Thiery trains through `_deep.train_epochs` with flips=False: no left-right draw, so
    the generator yields one permutation per epoch and nothing else."""
    from lamp.baselines._deep import seeded_generator, train_epochs

    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    seen = []

    def batch_loss(idx, flip):
        seen.append((idx.tolist(), flip.tolist()))
        return model(idx.float()[:, None]).sum() * 0.0, {}

    assert train_epochs(model, opt, 5, 2, 3, seeded_generator(4), batch_loss, flips=False) == {}
    gen = seeded_generator(4)
    orders = [torch.randperm(5, generator=gen).tolist() for _ in range(2)]
    assert [b[0] for b in seen] == [orders[0][:3], orders[0][3:], orders[1][:3], orders[1][3:]]
    assert all(not any(b[1]) and len(b[1]) == len(b[0]) for b in seen)


def test_failures_are_named(tmp_path):
    cohort, work, lesions, _ = write_cohort(tmp_path, n=30)
    split = a_split(cohort)
    late = split.train.assign(time=split.train["time"] + 100.0)  # no event by 24 months
    with pytest.raises(BaselineError, match="with and without an event"):
        fit_predict_thiery(Split("pfs", 0, 0, late, split.test), lesions, ThieryConfig.tiny())
    with pytest.raises(BaselineError, match="missing \\['suvpeak'\\]"):
        fit_predict_thiery(split, lesions.drop(columns="suvpeak"), ThieryConfig.tiny())
    bad = lesions.copy()
    bad.loc[0, "suvmax"] = np.nan
    with pytest.raises(BaselineError, match="non-finite"):
        fit_predict_thiery(split, bad, ThieryConfig.tiny())
    with pytest.raises(BaselineError, match="multiple of heads"):
        ThieryConfig(hidden=10, heads=4)
    with pytest.raises(BaselineError, match="epochs"):
        ThieryConfig(epochs=0)
    with pytest.raises(BaselineError, match="unknown setting"):
        ThieryConfig.from_dict({"hidden": 8, "layers": 3})
    with pytest.raises(BaselineError, match="lesion masks"):
        run_thiery2025(work, cohort, masks="reference", lesions=lesions)


def test_default_lesions_come_from_the_chosen_masks(tmp_path, monkeypatch):
    import lamp.baselines.thiery2025 as thiery

    cohort, work, lesions, _ = write_cohort(tmp_path, n=20, n_without_outcome=2)
    calls = []

    def fake_tables(cohort_, work_, masks, patient_ids=None, progress=None):
        calls.append((masks, list(patient_ids)))
        return lesions

    monkeypatch.setattr(thiery, "cohort_lesion_tables", fake_tables)
    config = ThieryConfig(hidden=8, heads=2, epochs=1)
    run_thiery2025(work, cohort, ["pfs"], [0], masks="automatic", config=config)
    assert calls == [("automatic", [f"P{i:03d}" for i in range(18)])]
