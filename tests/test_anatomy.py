"""Tests of lamp.anatomy: the TotalSegmentator 'total' label map and the 117 -> 71 merge."""

from __future__ import annotations

import copy
import json
import re
from importlib import resources

import numpy as np
import pytest

from lamp import anatomy
from lamp.anatomy import (
    GROUP_OF_TOTAL,
    GROUPS,
    LUNG_LEFT,
    LUNG_RIGHT,
    MARROW_BONES,
    MARROW_GROUPS,
    RIBS_LEFT,
    RIBS_RIGHT,
    TOTAL_CLASSES,
    TOTAL_IDS,
    VERTEBRAE_C,
    VERTEBRAE_L,
    VERTEBRAE_T,
    AnatomyError,
    group_id,
    groups_present,
    merge_to_groups,
)


@pytest.fixture
def group_map() -> dict:
    """The packaged mapping, decoded afresh so a test may damage its copy."""
    path = resources.files("lamp") / "data" / "totalseg_total_117_to_71.json"
    return json.loads(path.read_text(encoding="utf-8"))


# --- the label map ---------------------------------------------------------------------


def test_counts_and_ids():
    assert list(TOTAL_CLASSES) == list(range(1, 118))
    assert len(set(TOTAL_CLASSES.values())) == 117
    assert len(GROUPS) == 71 == len(set(GROUPS))
    assert GROUP_OF_TOTAL.shape == (118,)
    assert GROUP_OF_TOTAL.dtype == np.uint8
    assert GROUP_OF_TOTAL[0] == 0
    assert sorted(set(GROUP_OF_TOTAL[1:].tolist())) == list(range(1, 72))


def test_known_ids_and_names():
    # TotalSegmentator 2.x 'total' ids, read off its class_map
    assert TOTAL_CLASSES[1] == "spleen"
    assert TOTAL_CLASSES[5] == "liver"
    assert TOTAL_CLASSES[13] == "lung_middle_lobe_right"
    assert TOTAL_CLASSES[37] == "vertebrae_T7"
    assert TOTAL_CLASSES[94] == "rib_left_3"
    assert TOTAL_CLASSES[117] == "costal_cartilages"
    assert TOTAL_IDS["rib_left_3"] == 94
    assert all(TOTAL_CLASSES[i] == n for n, i in TOTAL_IDS.items())
    assert GROUPS[0] == "spleen"
    assert GROUPS[10] == "lung_right"
    assert GROUPS[24] == "vertebrae_T"
    assert GROUPS[67] == "rib_left"
    assert GROUPS[70] == "costal_cartilages"


def test_lookup_is_read_only():
    with pytest.raises(ValueError, match="read-only"):
        GROUP_OF_TOTAL[1] = 5


def _group_by_design_rule(total_name: str) -> str:
    """DESIGN.md's merge rule, written independently of the JSON file."""
    name = re.sub(r"^(rib_(?:left|right))_\d+$", r"\1", total_name)
    name = re.sub(r"^vertebrae_([CTLS])\d+$", r"vertebrae_\1", name)
    return re.sub(r"^lung_(?:upper|middle|lower)_lobe_(left|right)$", r"lung_\1", name)


def test_every_total_class_merges_by_the_design_rule():
    for tid, name in TOTAL_CLASSES.items():
        assert GROUPS[GROUP_OF_TOTAL[tid] - 1] == _group_by_design_rule(name), name


# --- merge_to_groups ----------------------------------------------------------------------


def test_merge_hand_made_volume():
    labels = np.array(
        [
            [[0, 94], [13, 37]],  # background, rib_left_3, lung_middle_lobe_right, vertebrae_T7
            [[1, 1], [5, 117]],  # spleen, spleen, liver, costal_cartilages
        ],
        dtype=np.int16,
    )
    merged = merge_to_groups(labels)
    # rib_left = 68, lung_right = 11, vertebrae_T = 25, spleen = 1, liver = 5, costal = 71
    expected = np.array([[[0, 68], [11, 25]], [[1, 1], [5, 71]]], dtype=np.uint8)
    assert merged.dtype == np.uint8
    assert merged.shape == labels.shape
    np.testing.assert_array_equal(merged, expected)
    assert [GROUPS[g - 1] for g in merged[0].ravel()[1:]] == [
        "rib_left",
        "lung_right",
        "vertebrae_T",
    ]


def test_merge_accepts_whole_number_floats_and_any_int_dtype():
    np.testing.assert_array_equal(
        merge_to_groups(np.array([0.0, 94.0, 26.0])), np.array([0, 68, 23], dtype=np.uint8)
    )
    np.testing.assert_array_equal(
        merge_to_groups(np.array([44, 50], dtype=np.uint8)), np.array([26, 26], dtype=np.uint8)
    )
    assert merge_to_groups(np.zeros((0, 3), dtype=np.int32)).shape == (0, 3)


def test_merge_out_of_range_ids_are_named():
    labels = np.array([[0, 1, -1], [118, 200, 118]], dtype=np.int32)
    with pytest.raises(
        AnatomyError, match=r"labels must hold .* ids in 0\.\.117; .*\[-1, 118, 200\]"
    ):
        merge_to_groups(labels)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.array([1.0, 2.5]), r"labels must hold whole-number .* non-integer values \[2\.5\]"),
        (np.array([1.0, np.nan]), r"labels must hold whole-number .* \[nan\]"),
        (np.array([True, False]), r"labels must be an integer array .* got dtype bool"),
        (np.array(["spleen"]), r"labels must be an integer array .* got dtype <U6"),
    ],
)
def test_merge_rejects_non_integer_labels(labels, message):
    with pytest.raises(AnatomyError, match=message):
        merge_to_groups(labels)


# --- groups_present --------------------------------------------------------------------


def test_groups_present_counts_voxels():
    groups = np.zeros((3, 4, 5), dtype=np.uint8)
    groups[0, 0, :3] = 1  # spleen, 3 voxels
    groups[1, 1, 1] = 68  # rib_left, 1 voxel
    groups[2, :2, :2] = 71  # costal_cartilages, 4 voxels

    present = groups_present(groups)
    assert present.shape == (71,) and present.dtype == bool
    assert np.flatnonzero(present).tolist() == [0, 67, 70]

    assert np.flatnonzero(groups_present(groups, min_voxels=3)).tolist() == [0, 70]
    assert np.flatnonzero(groups_present(groups, min_voxels=4)).tolist() == [70]
    assert not groups_present(groups, min_voxels=5).any()


def test_groups_present_after_merge():
    labels = np.array([TOTAL_IDS["lung_upper_lobe_left"], TOTAL_IDS["lung_lower_lobe_left"]])
    present = groups_present(merge_to_groups(labels), min_voxels=2)
    assert np.flatnonzero(present).tolist() == [group_id("lung_left") - 1]


def test_groups_present_chunks_add_up(monkeypatch):
    monkeypatch.setattr(anatomy, "_CHUNK_VOXELS", 3)
    groups = np.array([2, 2, 0, 2, 9, 9, 2], dtype=np.uint8)  # 4 voxels of 2, across chunks
    assert np.flatnonzero(groups_present(groups, min_voxels=4)).tolist() == [1]


def test_groups_present_empty_volume():
    assert not groups_present(np.zeros((2, 2, 2), dtype=np.uint8)).any()


def test_groups_present_rejects_total_ids():
    labels = np.array([0, 1, 94], dtype=np.uint8)
    with pytest.raises(AnatomyError, match=r"ids in 0\.\.71; .*\[94\].*merge_to_groups"):
        groups_present(labels)


@pytest.mark.parametrize("min_voxels", [0, -2, 1.5, True])
def test_groups_present_rejects_bad_min_voxels(min_voxels):
    with pytest.raises(AnatomyError, match="min_voxels must be an integer >= 1"):
        groups_present(np.zeros(3, dtype=np.uint8), min_voxels=min_voxels)


# --- group_id -----------------------------------------------------------------------------


def test_group_id():
    assert group_id("spleen") == 1
    assert group_id("lung_left") == 10
    assert group_id("rib_right") == 69
    assert group_id("costal_cartilages") == 71
    assert all(group_id(name) == i + 1 for i, name in enumerate(GROUPS))


def test_group_id_of_a_total_class_names_its_group():
    with pytest.raises(AnatomyError, match=r"got 'rib_left_3'; .*merged into group 'rib_left'"):
        group_id("rib_left_3")


def test_group_id_suggests_close_names():
    with pytest.raises(AnatomyError, match=r"name must be one of the 71 .*'splen'.*'spleen'"):
        group_id("splen")


# --- convenience sets ---------------------------------------------------------------------


def test_vertebrae_ribs_lungs():
    assert VERTEBRAE_C == tuple(f"vertebrae_C{i}" for i in range(1, 8))
    assert VERTEBRAE_T == tuple(f"vertebrae_T{i}" for i in range(1, 13))
    assert VERTEBRAE_L == (
        "vertebrae_L1",
        "vertebrae_L2",
        "vertebrae_L3",
        "vertebrae_L4",
        "vertebrae_L5",
    )
    assert RIBS_LEFT[0] == "rib_left_1" and RIBS_LEFT[-1] == "rib_left_12"
    assert len(RIBS_LEFT) == len(RIBS_RIGHT) == 12
    assert RIBS_RIGHT[9] == "rib_right_10"  # numeric, not lexical, order
    assert LUNG_LEFT == ("lung_upper_lobe_left", "lung_lower_lobe_left")
    assert LUNG_RIGHT == (
        "lung_upper_lobe_right",
        "lung_middle_lobe_right",
        "lung_lower_lobe_right",
    )
    for name in (*VERTEBRAE_C, *VERTEBRAE_T, *VERTEBRAE_L, *RIBS_LEFT, *RIBS_RIGHT):
        assert name in TOTAL_IDS


def test_marrow_bones():
    # 24 vertebrae + S1 + sacrum + 2 hips + sternum + 24 ribs + 2 femurs + 2 humeri
    # + 2 scapulae + 2 clavicles + skull
    assert len(MARROW_BONES) == 62 == len(set(MARROW_BONES))
    assert all(name in TOTAL_IDS for name in MARROW_BONES)
    for bone in (
        "vertebrae_T7",
        "vertebrae_S1",
        "sacrum",
        "hip_left",
        "sternum",
        "rib_right_12",
        "femur_right",
        "humerus_left",
        "scapula_right",
        "clavicula_left",
        "skull",
    ):
        assert bone in MARROW_BONES
    for not_marrow in ("costal_cartilages", "liver", "spleen", "brain", "spinal_cord"):
        assert not_marrow not in MARROW_BONES
    assert set(MARROW_GROUPS) == {
        "sacrum",
        "vertebrae_S",
        "vertebrae_L",
        "vertebrae_T",
        "vertebrae_C",
        "humerus_left",
        "humerus_right",
        "scapula_left",
        "scapula_right",
        "clavicula_left",
        "clavicula_right",
        "femur_left",
        "femur_right",
        "hip_left",
        "hip_right",
        "skull",
        "rib_left",
        "rib_right",
        "sternum",
    }


# --- validation of the packaged JSON ------------------------------------------------------


def test_packaged_map_parses_to_the_module_constants(group_map):
    total_classes, groups, members = anatomy._parse_group_map(group_map, "packaged")
    assert total_classes == TOTAL_CLASSES
    assert groups == GROUPS
    assert members[GROUPS.index("lung_right")] == (12, 13, 14)


def _drop_last_group(data):
    data["groups"].pop()


def _duplicate_total_id(data):
    data["groups"][0]["total_ids"].append(94)
    data["groups"][0]["total_names"].append("rib_left_3")


def _drop_total_id(data):
    rib_left = data["groups"][67]
    rib_left["total_ids"].remove(94)
    rib_left["total_names"].remove("rib_left_3")


def _renumber_group(data):
    data["groups"][3]["id"] = 40


def _mismatched_names(data):
    data["groups"][9]["total_names"].pop()


def _out_of_range_id(data):
    data["groups"][70]["total_ids"] = [118]


def _duplicate_group_name(data):
    data["groups"][1]["name"] = "spleen"


def _missing_field(data):
    del data["groups"][5]["total_names"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_drop_last_group, r"'groups' must hold exactly 71 groups; got 70"),
        (_duplicate_total_id, r"total id 94 \('rib_left_3'\) is listed in more than one group"),
        (_drop_total_id, r"every total id 1\.\.117 must belong to a group; missing \[94\]"),
        (_renumber_group, r"groups\[3\] has field 'id' = 40, expected 4"),
        (_mismatched_names, r"group 'lung_left' must list as many 'total_names' as 'total_ids'"),
        (_out_of_range_id, r"'total_ids' must hold integers in 1\.\.117; got 118"),
        (_duplicate_group_name, r"group name 'spleen' appears more than once"),
        (_missing_field, r"groups\[5\] lacks the field\(s\) \['total_names'\]"),
    ],
)
def test_damaged_map_is_rejected(group_map, damage, message):
    data = copy.deepcopy(group_map)
    damage(data)
    with pytest.raises(AnatomyError, match=r"^damaged\.json: .*" + message):
        anatomy._parse_group_map(data, "damaged.json")


def test_map_without_groups_is_rejected():
    with pytest.raises(AnatomyError, match=r"x\.json: field 'groups' must be a list"):
        anatomy._parse_group_map({"rule": "nothing"}, "x.json")
