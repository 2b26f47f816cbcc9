"""The synthetic cohort's tables: configuration, determinism, clinical consistency and
calibration against the targets of the foundation issue (rituximab-era DLBCL)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from lifelines import KaplanMeierFitter
from lifelines.utils import concordance_index

from lamp.clinical import ann_arbor_stage, count_extranodal_sites, ipi
from lamp.synth.config import ConfigError, SynthConfig, load_synth_config
from lamp.synth.disease import simulate_patient
from lamp.synth.generate import (
    SynthError,
    SynthRequest,
    _clinical_frame,
    _lesion_frame,
    _truth_frame,
    generate_cohort,
    simulate_tables,
)

# --------------------------------------------------------------------------- configuration


def test_defaults_are_valid_and_round_trip(tmp_path):
    cfg = SynthConfig()
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert load_synth_config(path) == cfg


def test_partial_yaml_keeps_other_defaults(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("survival:\n  os:\n    cns: 2.0\ndisease:\n  tmtv_median_ml: 150\n")
    cfg = load_synth_config(path)
    default = SynthConfig()
    assert cfg.survival.os.cns == 2.0
    assert cfg.disease.tmtv_median_ml == 150.0
    # the OS hazard keeps its own defaults (not the PFS ones) for keys not given
    assert cfg.survival.os.age_per_decade == default.survival.os.age_per_decade
    assert cfg.survival.os.age_per_decade != default.survival.pfs.age_per_decade
    assert cfg.survival.pfs == default.survival.pfs


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("disease:\n  tmtv_median: 3\n", r"unknown key\(s\) disease\.tmtv_median"),
        ("disease:\n  tmtv_median_ml: big\n", r"disease\.tmtv_median_ml must be a number"),
        ("population:\n  male_fraction: 1.5\n", r"population\.male_fraction must lie in \[0, 1\]"),
        ("disease:\n  max_lesions: 2.5\n", r"disease\.max_lesions must be an integer"),
        ("disease:\n  suvmax_min: 50\n", r"disease\.suvmax_min \(50\.0\) must not exceed"),
        (
            "survival:\n  pfs:\n    baseline_shape: 0\n",
            r"survival\.pfs\.baseline_shape must be > 0",
        ),
        ("disease: [1, 2]\n", r"'disease' must be a mapping"),
        ("disease:\n  ecog_cuts: [1, 0, 2, 3]\n", r"disease\.ecog_cuts must be increasing"),
        ("disease:\n  ecog_cuts: [1, 2]\n", r"disease\.ecog_cuts must be a list of 4 numbers"),
        ("disease: {tmtv_median_ml: 1\n", r"cannot parse"),
    ],
)
def test_invalid_configuration_names_file_and_key(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_synth_config(path)
    assert str(path) in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_synth_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_patients": 3}, r"--patients must be an integer >= 5"),
        ({"size": "huge"}, r"--size must be one of tiny, small, full, got 'huge'"),
        ({"seed": -1}, r"--seed must be a non-negative integer"),
        ({"n_patients": 20000}, r"use --tables-only for more"),
    ],
)
def test_invalid_requests(tmp_path, kwargs, match):
    with pytest.raises(SynthError, match=match):
        SynthRequest(out=tmp_path / "c", **kwargs).check()


# --------------------------------------------------------------------------- determinism


def _tables(n: int, seed: int):
    pts = simulate_tables(SynthConfig(), n, seed)
    return _clinical_frame(pts), _lesion_frame(pts, None, None), _truth_frame(pts)


def test_same_seed_same_tables_and_patients_do_not_depend_on_cohort_size():
    a = _tables(30, 7)
    b = _tables(30, 7)
    for x, y in zip(a, b, strict=True):
        pd.testing.assert_frame_equal(x, y)
    small = _tables(12, 7)[0]
    pd.testing.assert_frame_equal(small, a[0].iloc[:12].reset_index(drop=True))
    other = _tables(30, 8)[0]
    assert not other[["age", "ldh_ratio"]].equals(a[0][["age", "ldh_ratio"]])


def test_tables_only_cohort_writes_the_contract(tmp_path):
    out = generate_cohort(SynthRequest(out=tmp_path / "c", n_patients=40, seed=3, tables_only=True))
    for name in ("clinical.csv", "lesions.csv", "truth.csv", "folds.csv", "synth_config.json"):
        assert (out / name).is_file(), name
    assert not (out / "cases").exists()
    clin = pd.read_csv(out / "clinical.csv")
    pd.testing.assert_frame_equal(
        clin, pd.read_csv(pd.io.common.StringIO(_tables(40, 3)[0].to_csv(index=False)))
    )
    folds = pd.read_csv(out / "folds.csv")
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]
    assert set(folds["patient_id"]) == set(clin["patient_id"])


# --------------------------------------------------------------------------- consistency


def test_stage_extranodal_and_ipi_recomputed_from_lesions_agree():
    clin, les, truth = _tables(300, 11)
    truth = truth.set_index("patient_id")
    for _, row in clin.iterrows():
        pl = les[les["patient_id"] == row["patient_id"]]
        assert len(pl) >= 1
        nodal = set(pl.loc[pl["site_type"] == "nodal", "site"])
        extra = set(pl.loc[pl["site_type"] == "extranodal", "site"])
        t = truth.loc[row["patient_id"]]
        if t["diffuse_spleen"]:
            nodal.add("spleen")
        if t["diffuse_marrow"]:
            extra.add("bone_marrow")
        stage = ann_arbor_stage(nodal, extra)
        n_en = count_extranodal_sites(extra)
        assert row["ann_arbor"] == stage
        assert row["extranodal_sites"] == n_en
        assert row["ipi"] == ipi(row["age"], row["ecog"], row["ldh_ratio"], stage, n_en)


def test_survival_columns_are_consistent():
    clin = _tables(400, 5)[0]
    known = clin["pfs_months"].notna()
    assert known.mean() == pytest.approx(0.85, abs=0.06)
    assert clin.loc[~known, ["pfs_event", "os_months", "os_event"]].isna().all().all()
    k = clin[known]
    assert (k["pfs_months"] > 0).all()
    assert (k["os_months"] >= k["pfs_months"]).all()
    assert (k.loc[k["os_event"] == 1, "pfs_event"] == 1).all()  # death is a PFS event


def test_lesion_traits_within_configured_ranges():
    cfg = SynthConfig()
    les = _tables(200, 2)[1]
    assert les["suvmax"].between(cfg.disease.suvmax_min, cfg.disease.suvmax_max).all()
    assert (les["volume_ml"] >= cfg.disease.lesion_min_ml - 1e-9).all()
    assert les["heterogeneity"].between(0, 1).all()
    assert set(les["site_type"]) == {"nodal", "extranodal"}


def test_hazard_coefficients_drive_outcomes():
    """Setting a coefficient changes who progresses: the generator really uses it."""
    base = SynthConfig()
    strong = dataclasses.replace(
        base,
        survival=dataclasses.replace(
            base.survival, pfs=dataclasses.replace(base.survival.pfs, heterogeneity=2.0)
        ),
    )
    a = [simulate_patient(base, 0, i).lp_pfs for i in range(50)]
    b = [simulate_patient(strong, 0, i).lp_pfs for i in range(50)]
    assert not np.allclose(a, b)


# --------------------------------------------------------------------------- calibration


@pytest.fixture(scope="module")
def large_cohort():
    pts = simulate_tables(SynthConfig(), 6000, 2024)
    return pd.DataFrame(
        {
            "t": [p.pfs_months for p in pts],
            "e": [p.pfs_event for p in pts],
            "os_t": [p.os_months for p in pts],
            "os_e": [p.os_event for p in pts],
            "ipi": [p.ipi for p in pts],
            "tmtv": [p.tmtv_ml for p in pts],
            "lp": [p.lp_pfs for p in pts],
        }
    )


def test_calibration_event_rate_and_two_year_pfs(large_cohort):
    df = large_cohort
    assert 0.25 <= df["e"].mean() <= 0.35
    pfs2 = float(KaplanMeierFitter().fit(df["t"], df["e"]).predict(24.0))
    assert 0.70 <= pfs2 <= 0.80
    assert df["os_e"].mean() < df["e"].mean()
    assert np.exp(np.log(df["tmtv"]).median()) == pytest.approx(300.0, rel=0.25)


def test_calibration_c_indices(large_cohort):
    df = large_cohort
    c_ipi = concordance_index(df["t"], -df["ipi"], df["e"])
    c_tmtv = concordance_index(df["t"], -df["tmtv"], df["e"])
    c_true = concordance_index(df["t"], -df["lp"], df["e"])
    assert 0.60 <= c_ipi <= 0.72
    assert 0.60 <= c_tmtv <= 0.72
    assert c_true >= max(c_ipi, c_tmtv) + 0.04


def test_ipi_groups_are_ordered(large_cohort):
    df = large_cohort
    groups = np.digitize(df["ipi"], [2, 3, 4])
    surv = []
    for g in range(4):
        m = groups == g
        surv.append(float(KaplanMeierFitter().fit(df["t"][m], df["e"][m]).predict(24.0)))
    assert surv == sorted(surv, reverse=True)


def test_parallel_tables_equal_serial(monkeypatch):
    import lamp.synth.generate as gen

    monkeypatch.setattr(gen, "_PARALLEL_MIN", 10)
    serial = gen.simulate_tables(SynthConfig(), 24, 9, workers=1)
    parallel = gen.simulate_tables(SynthConfig(), 24, 9, workers=2)
    pd.testing.assert_frame_equal(_clinical_frame(serial), _clinical_frame(parallel))
    pd.testing.assert_frame_equal(
        _lesion_frame(serial, None, None), _lesion_frame(parallel, None, None)
    )
