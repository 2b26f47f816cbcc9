"""Automatic Ann Arbor staging from lesion tables (`lamp.baselines.staging`)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lamp.anatomy import TOTAL_IDS
from lamp.baselines.common import BaselineError, read_oof
from lamp.baselines.staging import (
    STAGING_COLUMNS,
    Staging,
    diaphragm_z_mm,
    run_automatic_staging,
    stage_cohort,
    stage_patient,
)
from lamp.synth.generate import SynthRequest, generate_cohort
from test_baselines_clinical import write_cohort

DIAPHRAGM = -500.0  # world z of the top of the liver in the hand-made layouts (mm)


def lesions(*rows: tuple[str, float, str, float], pid: str = "P") -> pd.DataFrame:
    """Lesion-table rows from (organ, organ_fraction, nodal_region, centroid_z_mm)."""
    return pd.DataFrame(
        [
            {
                "patient_id": pid,
                "organ": organ,
                "organ_fraction": frac,
                "nodal_region": region,
                "centroid_z_mm": z,
            }
            for organ, frac, region, z in rows
        ]
    )


def node(region: str, z: float = -300.0) -> tuple[str, float, str, float]:
    return ("none", 0.0, region, z)


# --------------------------------------------------------------------------------------
# one patient, hand-made layouts
# --------------------------------------------------------------------------------------


def test_stage_i_one_nodal_region_even_with_several_lesions():
    st = stage_patient(lesions(node("cervical_left"), node("cervical_left", -280.0)))
    assert st == Staging(1, 0, ("cervical_left",), ())
    stage, count, regions, sites = st  # unpacks as the 4-tuple of the contract
    assert (stage, count, regions, sites) == (1, 0, ("cervical_left",), ())


def test_stage_ii_two_regions_on_one_side():
    st = stage_patient(lesions(node("cervical_left"), node("mediastinal"), node("hilar_right")))
    assert st.stage == 2 and st.extranodal_count == 0
    assert st.regions == ("cervical_left", "hilar_right", "mediastinal")
    below = stage_patient(lesions(node("para_aortic", -600.0), node("iliac_left", -800.0)))
    assert below.stage == 2


def test_stage_iii_both_sides_including_the_spleen():
    st = stage_patient(lesions(node("axillary_right"), node("inguinal_left", -900.0)))
    assert st.stage == 3
    # the spleen is lymphatic tissue below the diaphragm (Lugano; lamp.clinical)
    spleen = stage_patient(lesions(node("mediastinal"), ("spleen", 1.0, "spleen", -550.0)))
    assert spleen == Staging(3, 0, ("mediastinal", "spleen"), ())


def test_stage_iv_extranodal_organs_and_their_count():
    st = stage_patient(
        lesions(
            node("mediastinal"),
            ("liver", 1.0, "", -560.0),
            ("vertebrae_T", 0.8, "", -450.0),
            ("hip_left", 1.0, "", -850.0),  # bone marrow again: counted once
            ("colon", 0.6, "", -700.0),
            ("small_bowel", 0.3, "", -720.0),  # bowel again
        )
    )
    assert st == Staging(4, 3, ("mediastinal",), ("bone_marrow", "bowel", "liver"))


def test_single_extranodal_site_is_ie_unless_disseminated():
    assert stage_patient(lesions(("stomach", 1.0, "", -600.0))) == Staging(1, 1, (), ("stomach",))
    assert stage_patient(lesions(("lung_right", 1.0, "", -350.0))).stage == 4
    # nodal disease plus one localised extranodal site is IV (no IIE, as lamp.clinical)
    assert stage_patient(lesions(node("cervical_left"), ("kidney_left", 0.9, "", -650.0))) == (
        Staging(4, 1, ("cervical_left",), ("kidney",))
    )


def test_little_overlap_is_a_node_touching_the_organ():
    rows = lesions(node("cervical_left"), ("liver", 0.05, "", -620.0))
    # without the diaphragm the unplaced node is left out
    assert stage_patient(rows) == Staging(1, 0, ("cervical_left",), ())
    st = stage_patient(rows, diaphragm_z_mm=DIAPHRAGM)
    assert st == Staging(3, 0, ("cervical_left", "unassigned_below"), ())
    # at a lower threshold the same lesion is hepatic
    assert stage_patient(rows, min_extranodal_fraction=0.01).stage == 4


def test_unassigned_node_never_splits_a_region_on_its_side():
    rows = lesions(node("cervical_left"), node("", -320.0))
    st = stage_patient(rows, diaphragm_z_mm=DIAPHRAGM)
    assert st == Staging(1, 0, ("cervical_left", "unassigned_above"), ())
    alone = stage_patient(lesions(node("", -700.0)), diaphragm_z_mm=DIAPHRAGM)
    assert alone == Staging(1, 0, ("unassigned_below",), ())


def test_node_lying_in_a_landmark_structure_takes_its_region():
    # the aorta is a landmark of the mediastinal (above) and para-aortic (below) regions
    above = stage_patient(lesions(("aorta", 0.7, "", -400.0)), diaphragm_z_mm=DIAPHRAGM)
    below = stage_patient(lesions(("aorta", 0.7, "", -650.0)), diaphragm_z_mm=DIAPHRAGM)
    assert above.regions == ("mediastinal",) and below.regions == ("para_aortic",)
    muscle = stage_patient(lesions(("iliopsoas_left", 0.9, "", -750.0)), diaphragm_z_mm=DIAPHRAGM)
    assert muscle == Staging(1, 0, ("unassigned_below",), ())


def test_no_lesion_is_stage_zero():
    assert stage_patient(lesions()) == Staging(0, 0, (), ())


def test_stage_patient_errors_name_the_field():
    with pytest.raises(BaselineError, match="without organs.nii.gz"):
        stage_patient(lesions(("", 0.0, "", -300.0)))
    with pytest.raises(BaselineError, match="missing.*'organ_fraction'"):
        stage_patient(pd.DataFrame({"organ": ["none"], "nodal_region": ["mediastinal"]}))
    with pytest.raises(BaselineError, match="nodal_region.*'neck'"):
        stage_patient(lesions(node("neck")))
    with pytest.raises(BaselineError, match="min_extranodal_fraction"):
        stage_patient(lesions(node("mediastinal")), min_extranodal_fraction=2.0)


def test_diaphragm_is_the_top_of_the_liver_else_the_spleen():
    organs = np.zeros((4, 4, 10), dtype=np.int64)
    aff = np.diag([2.0, 2.0, 5.0, 1.0])
    aff[2, 3] = -100.0
    organs[1, 1, 2:6] = TOTAL_IDS["liver"]  # top voxel k = 5 -> z = -100 + 25
    organs[2, 2, 7] = TOTAL_IDS["spleen"]
    assert diaphragm_z_mm(organs, aff) == pytest.approx(-75.0)
    organs[organs == TOTAL_IDS["liver"]] = 0
    assert diaphragm_z_mm(organs, aff) == pytest.approx(-65.0)
    assert diaphragm_z_mm(np.zeros_like(organs), aff) is None


# --------------------------------------------------------------------------------------
# cohort level
# --------------------------------------------------------------------------------------


def test_agreement_hand_checked(tmp_path):
    cohort, work = write_cohort(tmp_path, n=5, n_without_outcome=0)
    clinical = pd.read_csv(cohort / "clinical.csv")
    clinical["ann_arbor"] = [1, 2, 3, 4, 4]
    clinical["extranodal_sites"] = [0, 0, 0, 1, 2]
    clinical.to_csv(cohort / "clinical.csv", index=False)
    table = pd.concat(
        [
            lesions(node("cervical_left"), pid="P000"),  # I, agrees
            lesions(node("cervical_left"), node("mediastinal"), pid="P001"),  # II, agrees
            lesions(node("mediastinal"), ("liver", 1.0, "", -600.0), pid="P002"),  # IV vs III
            lesions(node("axillary_left"), ("stomach", 1.0, "", -600.0), pid="P003"),  # IV
            # P004: no lesion -> 0 vs IV (diffuse marrow has no mask)
        ],
        ignore_index=True,
    )
    out, agree = stage_cohort(cohort, work, "manual", table)
    assert list(out.columns) == list(STAGING_COLUMNS)
    assert out["ann_arbor_auto"].tolist() == [1, 2, 4, 4, 0]
    assert out["extranodal_auto"].tolist() == [0, 0, 1, 1, 0]
    assert out.loc[2, "sites"] == "liver" and out.loc[1, "regions"] == "cervical_left;mediastinal"
    assert agree["stage_exact_agreement_percent"] == pytest.approx(60.0)
    assert agree["extranodal_exact_agreement_percent"] == pytest.approx(60.0)
    # linear weights |i - j|: observed disagreement (1 + 4) / 5 = 1; expected from the
    # margins, ref (0, .2, .2, .2, .4) x auto (.2, .2, .2, 0, .4) over labels 0-4:
    # sum |i - j| p_i q_j = .2 * 1.6 + .2 * 1.4 + .2 * 1.6 + .4 * 1.8 = 1.64
    assert agree["stage_weighted_kappa_linear"] == pytest.approx(1.0 - 1.0 / 1.64)
    cm = np.array(agree["confusion_matrix"]["counts"])
    assert cm[3, 4] == 1 and cm[4, 0] == 1 and cm[4, 4] == 1 and cm.sum() == 5
    on_disk = pd.read_csv(work / "baselines" / "staging_manual.csv", keep_default_na=False)
    assert on_disk["ann_arbor_auto"].tolist() == [1, 2, 4, 4, 0]
    saved = json.loads((work / "baselines" / "staging_manual_agreement.json").read_text())
    assert saved["stage_exact_agreement_percent"] == pytest.approx(60.0)


@pytest.fixture(scope="module")
def tiny_synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("staging")
    cohort = root / "cohort"
    # 5 patients (the generator's minimum: one per fold) on the 12 mm 'tiny' grid
    generate_cohort(
        SynthRequest(out=cohort, n_patients=5, seed=3, size="tiny", export_nnunet=False)
    )
    return cohort, root / "work"


def test_staging_a_synthetic_cohort_from_its_reference_masks(tiny_synth):
    cohort, work = tiny_synth
    oof = run_automatic_staging(work, cohort, endpoints=("pfs",), masks="manual")
    table = pd.read_csv(work / "baselines" / "staging_manual.csv", keep_default_na=False)
    assert len(table) == 5 and table["ann_arbor_auto"].between(0, 4).all()
    agree = json.loads((work / "baselines" / "staging_manual_agreement.json").read_text())
    # disagreement comes only from diffuse involvement, unrendered lesions or region
    # slips (module docstring); on this cohort it stays small
    assert agree["stage_exact_agreement_percent"] >= 60.0
    assert np.array(agree["confusion_matrix"]["counts"]).sum() == 5
    back = read_oof(work / "baselines" / "Ann Arbor (manual masks)" / "oof_risk.csv")
    merged = back.merge(table, on="patient_id")
    assert len(merged) == len(oof) and (merged["risk"] == merged["ann_arbor_auto"]).all()


def test_missing_automatic_masks_say_what_to_run(tiny_synth):
    cohort, work = tiny_synth
    with pytest.raises(BaselineError, match=r"5 of 5 patients.*lamp segment predict"):
        stage_cohort(cohort, work, "automatic")
    with pytest.raises(BaselineError, match="expected one of"):
        stage_cohort(cohort, work, "reference")
