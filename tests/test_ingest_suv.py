"""PET DICOM to SUV: each unit, vendor variant and time convention against hand-computed SUVs.

The tests write PET series with pydicom from a volume of known activity concentration
(`ingest_helpers.activity`, Bq/ml) and compare what `read_pet` returns with SUVs worked
out here by hand:

    SUVbw = C [Bq/ml] * W [g] / (D [Bq] * 2^(-t / T))

Reference case: W = 70 kg, D = 370 MBq of F-18 (T = 6586.2 s) injected at 09:00, scan
(SeriesTime) at 10:00: t = 3600 s, 2^(-3600/6586.2) = 0.6846329, so
factor = 70000 / (370e6 * 0.6846329) = 2.7633668e-4 ml/Bq.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import numpy as np
import pydicom
import pytest

from ingest_helpers import activity, pet_tags, write_pet
from lamp.ingest.common import IngestError
from lamp.ingest.dicom import read_pet, scan_dicom_folder
from lamp.ingest.export import PrivateTag
from lamp.ingest.suv import (
    Body,
    lean_body_mass_kg,
    parse_da,
    parse_dt,
    parse_tm,
    sul_factor,
)

# hand-computed (module docstring)
FACTOR_60MIN = 2.7633668171764324e-4  # 70000 / (370e6 * 2^(-3600/6586.2))
FACTOR_75MIN = 3.0379043363243550e-4  # 70000 / (370e6 * 2^(-4500/6586.2))
FACTOR_80MIN = 70000 / (370e6 * 2 ** (-4800 / 6586.2))
FACTOR_ADMIN = 1.8918918918918918e-4  # 70000 / 370e6, no decay
PHILIPS = "Philips PET Private Group"


def read(folder):
    (series,) = scan_dicom_folder(folder).series
    return read_pet(series)


def assert_suv(result, expected):
    # int16 with a per-slice slope: at most half a step of the slice maximum off
    np.testing.assert_allclose(result.image.array, expected, rtol=0, atol=expected.max() * 2e-5)


def test_bqml_start_one_hour_hand_computed(tmp_path):
    write_pet(tmp_path / "pet")
    r = read(tmp_path / "pet")
    assert r.scale.factor == pytest.approx(FACTOR_60MIN, rel=1e-9)
    assert r.scale.decay_time_s == 3600.0
    assert r.scale.scan_reference_rule == "SeriesDate/SeriesTime"
    assert_suv(r, activity() * FACTOR_60MIN)
    # one voxel by hand: the hot spot, 38000 Bq/ml -> 10.50 g/ml
    assert r.image.array[11, 12, 5] == pytest.approx(38000 * 2.7633668e-4, rel=1e-4)
    assert r.image.array.dtype == np.float32


def test_start_uses_series_start_not_each_beds_acquisition_time(tmp_path):
    # two bed positions: the upper one acquired 3 min later, yet decay-corrected to START
    beds = [{"AcquisitionTime": "100000" if k < 6 else "100300"} for k in range(12)]
    write_pet(tmp_path / "pet", slice_tags=beds)
    r = read(tmp_path / "pet")
    assert r.scale.decay_time_s == 3600.0
    assert_suv(r, activity() * FACTOR_60MIN)


def test_start_post_processed_series_uses_earliest_acquisition(tmp_path):
    # a re-saved series: SeriesTime 11:30 is after the acquisitions (10:15 and 10:18)
    beds = [{"AcquisitionTime": "101500" if k < 6 else "101800"} for k in range(12)]
    tags = pet_tags(SeriesTime="113000")
    write_pet(tmp_path / "pet", tags=tags, slice_tags=beds)
    r = read(tmp_path / "pet")
    assert r.scale.decay_time_s == 4500.0
    assert r.scale.scan_reference_rule == "earliest AcquisitionDate/AcquisitionTime"
    assert r.scale.factor == pytest.approx(FACTOR_75MIN, rel=1e-9)
    assert any("post-processed" in n for n in r.scale.notes)
    assert_suv(r, activity() * FACTOR_75MIN)


def test_start_post_processed_ge_private_scan_datetime(tmp_path):
    # GE: the private scan date-time (0009,100D) wins over the acquisition times (QIBA)
    tags = pet_tags(SeriesTime="113000", AcquisitionTime="102000")
    ge = PrivateTag(0x0009, "GEMS_PETD_01", 0x0D, "DT", "20240105101500")
    write_pet(tmp_path / "pet", tags=tags, private=[ge])
    r = read(tmp_path / "pet")
    assert r.scale.decay_time_s == 4500.0  # 10:15, not the acquisition's 10:20 (4800 s)
    assert "GE private" in r.scale.scan_reference_rule
    assert_suv(r, activity() * FACTOR_75MIN)
    assert FACTOR_80MIN > FACTOR_75MIN  # the acquisition time would have given more


def test_admin_means_no_further_decay(tmp_path):
    rp = {"RadiopharmaceuticalStartDateTime": None, "RadiopharmaceuticalStartTime": None}
    write_pet(tmp_path / "pet", tags=pet_tags(rp=rp, DecayCorrection="ADMIN"))
    r = read(tmp_path / "pet")
    assert r.scale.factor == pytest.approx(FACTOR_ADMIN, rel=1e-12)
    assert r.scale.decay_time_s == 0.0
    assert_suv(r, activity() * FACTOR_ADMIN)


def test_injection_the_day_before_with_full_datetime(tmp_path):
    rp = {
        "RadiopharmaceuticalStartDateTime": "20240104235000",
        "RadiopharmaceuticalStartTime": "235000",
    }
    tags = pet_tags(rp=rp, SeriesTime="005000", AcquisitionTime="005000")
    write_pet(tmp_path / "pet", tags=tags)
    r = read(tmp_path / "pet")
    assert r.scale.decay_time_s == 3600.0
    assert r.scale.injection == "2024-01-04T23:50:00"
    assert_suv(r, activity() * FACTOR_60MIN)


def test_injection_time_only_across_midnight_taken_the_day_before(tmp_path):
    rp = {"RadiopharmaceuticalStartDateTime": None, "RadiopharmaceuticalStartTime": "235000"}
    tags = pet_tags(rp=rp, SeriesTime="005000", AcquisitionTime="005000")
    write_pet(tmp_path / "pet", tags=tags)
    r = read(tmp_path / "pet")
    assert r.scale.decay_time_s == 3600.0
    assert any("day before" in n for n in r.scale.notes)
    assert_suv(r, activity() * FACTOR_60MIN)


def test_injection_time_only_same_day(tmp_path):
    rp = {"RadiopharmaceuticalStartDateTime": None, "RadiopharmaceuticalStartTime": "090000.5"}
    write_pet(tmp_path / "pet", tags=pet_tags(rp=rp))
    r = read(tmp_path / "pet")
    assert r.scale.decay_time_s == pytest.approx(3599.5)


def test_per_slice_rescale_slope_and_intercept(tmp_path):
    files = write_pet(tmp_path / "pet", rescale_intercept=-250.0)
    slopes = {float(pydicom.dcmread(f, stop_before_pixels=True).RescaleSlope) for f in files}
    assert len(slopes) == 10  # one per slice, but the three hot-spot slices share theirs
    assert {float(pydicom.dcmread(f, stop_before_pixels=True).RescaleIntercept) for f in files} == {
        -250.0
    }
    assert_suv(read(tmp_path / "pet"), activity() * FACTOR_60MIN)


def test_slices_are_ordered_by_position_not_file_name_or_instance_number(tmp_path):
    files = write_pet(tmp_path / "pet")
    # file names are hashes; instance numbers run backwards; shuffle names once more
    for n, f in enumerate(reversed(files)):
        f.rename(f.with_name(f"IM{n:04d}"))
    r = read(tmp_path / "pet")
    assert_suv(r, activity() * FACTOR_60MIN)


@pytest.mark.parametrize("implicit", [False, True])
def test_cnts_philips_suv_scale_factor(tmp_path, implicit):
    counts = activity() / 4.0
    tags = pet_tags(Units="CNTS")
    suv = PrivateTag(0x7053, PHILIPS, 0x00, "DS", "0.0011053")
    write_pet(tmp_path / "pet", values=counts, tags=tags, private=[suv], implicit_vr=implicit)
    r = read(tmp_path / "pet")
    assert r.scale.factor == 0.0011053
    assert_suv(r, counts * 0.0011053)


def test_cnts_philips_activity_concentration_scale_then_bqml(tmp_path):
    # (7053,1009): Bq/ml per count; then the BQML rule with the header's dose and times
    counts = activity() / 4.0
    act = PrivateTag(0x7053, PHILIPS, 0x09, "DS", "4.0")
    write_pet(tmp_path / "pet", values=counts, tags=pet_tags(Units="CNTS"), private=[act])
    r = read(tmp_path / "pet")
    assert r.scale.factor == pytest.approx(4.0 * FACTOR_60MIN, rel=1e-9)
    assert "(7053,1009)" in r.scale.method
    assert_suv(r, activity() * FACTOR_60MIN)


def test_gml_is_suv_already(tmp_path):
    suv = activity() / 3000.0
    write_pet(tmp_path / "pet", values=suv, tags=pet_tags(Units="GML", PatientWeight=None))
    r = read(tmp_path / "pet")
    assert r.scale.factor == 1.0
    assert_suv(r, suv)


def test_header_body_for_sul(tmp_path):
    write_pet(tmp_path / "pet", tags=pet_tags(PatientSex="F", PatientSize="1.65"))
    body = read(tmp_path / "pet").body
    assert (body.weight_kg, body.height_m, body.sex) == (70.0, 1.65, "F")


def test_patient_size_in_cm_is_refused(tmp_path):
    write_pet(tmp_path / "pet", tags=pet_tags(PatientSize="180"))
    with pytest.raises(
        IngestError, match=r"PatientSize \(0010,1020\) is 180; expected the height in metres"
    ):
        read(tmp_path / "pet")


# --------------------------------------------------------------------------------------
# Lean body mass (Janmahasatian 2005)
# --------------------------------------------------------------------------------------


def test_lean_body_mass_hand_computed():
    # man 80 kg, 1.80 m: BMI 24.691; 9270 * 80 / (6680 + 216 * 24.691) = 61.731 kg
    assert lean_body_mass_kg(80.0, 1.80, "M") == pytest.approx(61.73141, rel=1e-6)
    # woman 60 kg, 1.65 m: BMI 22.039; 9270 * 60 / (8780 + 244 * 22.039) = 39.287 kg
    assert lean_body_mass_kg(60.0, 1.65, "F") == pytest.approx(39.28685, rel=1e-6)
    assert sul_factor(Body(80.0, 1.80, "M")) == pytest.approx(61.73141 / 80.0, rel=1e-6)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (Body(80.0, None, "M", "P9"), r"P9: SUL \(--sul\) needs .* missing height"),
        (Body(80.0, 1.8, "O", "P9"), r"needs the patient's sex 'M' or 'F'.*got 'O'"),
        (Body(80.0, 180.0, "M", "P9"), r"height \(m\): expected 0.3 to 2.6, got 180"),
    ],
)
def test_sul_needs_plausible_measures(body, match):
    with pytest.raises(IngestError, match=match):
        sul_factor(body)


# --------------------------------------------------------------------------------------
# DICOM dates and times
# --------------------------------------------------------------------------------------


def test_parse_dicom_dates_and_times():
    assert parse_da("20240105") == date(2024, 1, 5)
    assert parse_da("2024.01.05") == date(2024, 1, 5)
    assert parse_tm("101530.25") == timedelta(hours=10, minutes=15, seconds=30.25)
    assert parse_tm("1015") == timedelta(hours=10, minutes=15)
    assert parse_tm("10:15:30") == timedelta(hours=10, minutes=15, seconds=30)
    assert parse_dt("20240105101530.5") == (datetime(2024, 1, 5, 10, 15, 30, 500000), False)
    assert parse_dt("20240105101530+0100") == (datetime(2024, 1, 5, 10, 15, 30), True)


@pytest.mark.parametrize(
    ("func", "text", "match"),
    [
        (parse_da, "05/01/2024", "expected a date YYYYMMDD"),
        (parse_da, "20241305", "expected a valid date"),
        (parse_tm, "25:00", "expected a time"),
        (parse_tm, "256000", "expected a time of day"),
        (parse_dt, "20240105", "at least the hour is needed"),
    ],
)
def test_parse_errors(func, text, match):
    with pytest.raises(IngestError, match=match):
        func(text)
