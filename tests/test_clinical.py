"""Tests of lamp.clinical: Lugano / Ann Arbor stage, extranodal sites, IPI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lamp.clinical import (
    DISSEMINATED_SITES,
    EXTRANODAL_SITES,
    IPI_GROUPS,
    NODAL_REGIONS,
    ClinicalError,
    ann_arbor_stage,
    count_extranodal_sites,
    ipi,
    ipi_group,
)

# --- vocabulary ---------------------------------------------------------------------------


def test_vocabulary():
    above = [r for r, side in NODAL_REGIONS.items() if side == "above"]
    below = [r for r, side in NODAL_REGIONS.items() if side == "below"]
    assert len(above) == 9 and len(below) == 7
    assert set(NODAL_REGIONS.values()) == {"above", "below"}
    assert "mediastinal" in above and "spleen" in below
    assert EXTRANODAL_SITES == (
        "bone_marrow",
        "liver",
        "stomach",
        "bowel",
        "lung",
        "kidney",
        "adrenal",
        "cns",
    )
    assert DISSEMINATED_SITES == {"bone_marrow", "liver", "cns", "lung"}
    assert not set(NODAL_REGIONS) & set(EXTRANODAL_SITES)


# --- Ann Arbor stage ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nodal", "extranodal", "stage"),
    [
        pytest.param(["cervical_left"], [], 1, id="I-one-nodal-region"),
        pytest.param(["spleen"], [], 1, id="I-spleen-alone"),
        pytest.param([], ["stomach"], 1, id="IE-single-extranodal"),
        pytest.param([], ["kidney", "kidney"], 1, id="IE-one-site-two-lesions"),
        pytest.param(["cervical_left", "axillary_right", "mediastinal"], [], 2, id="II-above"),
        pytest.param(["para_aortic", "spleen"], [], 2, id="II-below-with-spleen"),
        pytest.param(["spleen", "cervical_right"], [], 3, id="III-spleen-and-cervical"),
        pytest.param(["mediastinal", "inguinal_left"], [], 3, id="III-nodes-both-sides"),
        pytest.param([], ["bone_marrow"], 4, id="IV-marrow-alone"),
        pytest.param([], ["liver"], 4, id="IV-liver-alone"),
        pytest.param([], ["lung"], 4, id="IV-lung-alone"),
        pytest.param([], ["cns"], 4, id="IV-cns-alone"),
        pytest.param(["para_aortic", "mesenteric"], ["liver"], 4, id="IV-liver-and-nodes"),
        pytest.param([], ["stomach", "kidney"], 4, id="IV-two-localised-extranodal"),
        pytest.param(["mediastinal"], ["stomach"], 4, id="IV-node-and-localised-extranodal"),
    ],
)
def test_ann_arbor_stage(nodal, extranodal, stage):
    assert ann_arbor_stage(nodal, extranodal) == stage


def test_stage_accepts_any_iterable_and_counts_repeats_once():
    assert ann_arbor_stage(("cervical_left", "cervical_left"), set()) == 1
    assert ann_arbor_stage((r for r in ["hilar_left", "hilar_right"]), ()) == 2
    assert type(ann_arbor_stage({"mediastinal"}, [])) is int


def test_stage_unknown_nodal_region_lists_valid_names():
    with pytest.raises(
        ClinicalError,
        match=r"nodal_regions: unknown name\(s\) \['neck'\]; valid names are \['cervical_left',",
    ):
        ann_arbor_stage(["cervical_left", "neck"], [])


def test_stage_unknown_extranodal_site_lists_valid_names():
    with pytest.raises(
        ClinicalError,
        match=r"extranodal_sites: unknown name\(s\) \['bone'\]; valid names are \['bone_marrow'",
    ):
        ann_arbor_stage([], ["bone"])


def test_stage_spleen_passed_as_extranodal_is_explained():
    with pytest.raises(
        ClinicalError, match=r"'spleen' is a nodal region: pass it in nodal_regions"
    ):
        ann_arbor_stage([], ["spleen"])


def test_stage_liver_passed_as_nodal_is_explained():
    with pytest.raises(
        ClinicalError, match=r"'liver' is an extranodal site: pass it in extranodal_sites"
    ):
        ann_arbor_stage(["liver"], [])


def test_stage_nothing_involved():
    with pytest.raises(ClinicalError, match="both empty: a stage needs at least one"):
        ann_arbor_stage([], [])


def test_stage_bare_string_is_refused():
    with pytest.raises(ClinicalError, match=r"nodal_regions .* single string 'mediastinal'"):
        ann_arbor_stage("mediastinal", [])


def test_stage_non_iterable_is_refused():
    with pytest.raises(ClinicalError, match="extranodal_sites must be an iterable of names; got"):
        ann_arbor_stage(["mediastinal"], None)


def test_count_extranodal_sites():
    assert count_extranodal_sites([]) == 0
    assert count_extranodal_sites(["liver"]) == 1
    assert count_extranodal_sites(["liver", "stomach", "liver", "bone_marrow"]) == 3
    with pytest.raises(ClinicalError, match=r"extranodal_sites: unknown name\(s\) \['Liver'\]"):
        count_extranodal_sites(["Liver"])


# --- IPI ----------------------------------------------------------------------------------

# age, ecog, ldh_ratio, ann_arbor, extranodal_sites -> IPI, each point counted by hand
IPI_CASES = [
    (61, 2, 1.01, 3, 2, 5),  # every factor just over its threshold
    (60, 1, 1.0, 2, 1, 0),  # every factor exactly at its threshold: no point
    (60.5, 0, 0.8, 1, 0, 1),  # age only
    (45, 2, 1.0, 2, 0, 1),  # ECOG 2 only
    (45, 1, 1.5, 1, 0, 1),  # LDH only
    (45, 0, 0.5, 3, 0, 1),  # stage III only
    (45, 0, 0.5, 2, 2, 1),  # two extranodal sites only
    (70, 3, 2.0, 4, 1, 4),  # one site: no point
    (30, 4, 3.0, 1, 5, 3),
    (0, 0, 0.01, 1, 0, 0),  # lower range limits
    (120, 4, 10.0, 4, 8, 5),  # upper range limits
]


@pytest.mark.parametrize(("age", "ecog", "ldh", "stage", "sites", "expected"), IPI_CASES)
def test_ipi_hand_computed(age, ecog, ldh, stage, sites, expected):
    score = ipi(age, ecog, ldh, stage, sites)
    assert score == expected
    assert type(score) is int


def test_ipi_vectorised_equals_scalar():
    columns = np.array(IPI_CASES, dtype=float).T
    expected = columns[5].astype(np.int64)
    scores = ipi(*columns[:5])
    assert isinstance(scores, np.ndarray) and scores.dtype == np.int64
    np.testing.assert_array_equal(scores, expected)
    np.testing.assert_array_equal(scores, [ipi(*row[:5]) for row in IPI_CASES])


def test_ipi_on_a_clinical_table():
    table = pd.DataFrame(
        [row[:5] for row in IPI_CASES],
        columns=["age", "ecog", "ldh_ratio", "ann_arbor", "extranodal_sites"],
        index=[f"P{i:03d}" for i in range(len(IPI_CASES))],
    )
    table["ipi"] = ipi(
        table["age"],
        table["ecog"],
        table["ldh_ratio"],
        table["ann_arbor"],
        table["extranodal_sites"],
    )
    assert table["ipi"].tolist() == [row[5] for row in IPI_CASES]


def test_ipi_broadcasts_scalars_against_arrays():
    scores = ipi(np.array([[59], [61]]), 0, [0.9, 1.1, 1.0], 1, 0)
    np.testing.assert_array_equal(scores, [[0, 1, 0], [1, 2, 1]])


def test_ipi_accepts_nullable_integers_without_missing_values():
    assert ipi(pd.Series([70], dtype="Int64"), 0, 1.0, 1, 0).tolist() == [1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"age": 130}, r"age must be in \[0, 120\] years; got 130\.0"),
        ({"age": -1}, r"age must be in \[0, 120\] years; got -1\.0"),
        ({"age": np.inf}, r"age must be in \[0, 120\] years; got inf"),
        ({"ecog": 5}, r"ecog must be an integer ECOG status 0-4; got 5\.0"),
        ({"ecog": 1.5}, r"ecog must be an integer ECOG status 0-4; got 1\.5"),
        ({"ldh_ratio": 0}, r"ldh_ratio must be a finite LDH / upper-limit-of-normal ratio > 0"),
        ({"ldh_ratio": -0.5}, r"ldh_ratio must be .* > 0; got -0\.5"),
        ({"ldh_ratio": np.inf}, r"ldh_ratio must be .* > 0; got inf"),
        ({"ann_arbor": 0}, r"ann_arbor must be an integer stage 1-4; got 0\.0"),
        ({"ann_arbor": 5}, r"ann_arbor must be an integer stage 1-4; got 5\.0"),
        ({"ann_arbor": "III"}, r"ann_arbor must be numeric; got dtype <U3"),
        ({"extranodal_sites": -1}, r"extranodal_sites must be an integer count of sites >= 0"),
        ({"extranodal_sites": 1.5}, r"extranodal_sites must be an integer count .* got 1\.5"),
        (
            {"extranodal_sites": ["liver", "stomach"]},
            r"extranodal_sites must be numeric; got dtype <U7",
        ),
        ({"ecog": True}, r"ecog must be numeric; got dtype bool"),
    ],
)
def test_ipi_rejects_bad_values(kwargs, message):
    args = {"age": 50, "ecog": 1, "ldh_ratio": 1.0, "ann_arbor": 2, "extranodal_sites": 0}
    args.update(kwargs)
    with pytest.raises(ClinicalError, match=message):
        ipi(**args)


def test_ipi_error_names_positions_in_arrays():
    with pytest.raises(
        ClinicalError, match=r"age must be in \[0, 120\] years; got 130\.0 at position 2$"
    ):
        ipi(np.array([50, 60, 130]), 1, 1.0, 2, 0)


def test_ipi_missing_values_are_named():
    with pytest.raises(
        ClinicalError, match=r"age must not be missing .* got NaN: nan at position 1"
    ):
        ipi([50, np.nan], 1, 1.0, 2, 0)
    with pytest.raises(ClinicalError, match=r"ecog must not be missing .* nan at position 1"):
        ipi(70, pd.Series([1, None], dtype="Int64"), 1.0, 2, 0)
    with pytest.raises(ClinicalError, match="ecog must be numeric; got non-numeric entries"):
        ipi(70, pd.Series([1, "x"]), 1.0, 2, 0)


def test_ipi_shape_mismatch():
    with pytest.raises(
        ClinicalError, match=r"must have one shape \(or broadcast\); got age \(2,\), ecog \(3,\)"
    ):
        ipi([50, 70], [0, 1, 2], 1.0, 2, 0)


# --- IPI groups ---------------------------------------------------------------------------


def test_ipi_groups_order():
    assert IPI_GROUPS == ("low", "low-intermediate", "high-intermediate", "high")


@pytest.mark.parametrize(
    ("score", "group"),
    [
        (0, "low"),
        (1, "low"),
        (2, "low-intermediate"),
        (3, "high-intermediate"),
        (4, "high"),
        (5, "high"),
    ],
)
def test_ipi_group(score, group):
    assert ipi_group(score) == group
    assert type(ipi_group(score)) is str


def test_ipi_group_vectorised():
    groups = ipi_group(pd.Series([5, 0, 2, 3, 1, 4]))
    assert groups.tolist() == [
        "high",
        "low",
        "low-intermediate",
        "high-intermediate",
        "low",
        "high",
    ]
    assert groups.tolist() == [ipi_group(s) for s in [5, 0, 2, 3, 1, 4]]


@pytest.mark.parametrize(
    ("score", "message"),
    [
        (6, r"ipi must be an integer IPI score 0-5; got 6\.0"),
        (-1, r"ipi must be an integer IPI score 0-5; got -1\.0"),
        (2.5, r"ipi must be an integer IPI score 0-5; got 2\.5"),
        ([1, np.nan], r"ipi must not be missing .* nan at position 1"),
        ("high", r"ipi must be numeric; got dtype <U4"),
    ],
)
def test_ipi_group_rejects_bad_scores(score, message):
    with pytest.raises(ClinicalError, match=message):
        ipi_group(score)
