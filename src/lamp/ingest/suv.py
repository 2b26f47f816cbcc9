"""PET DICOM headers to SUV: body-weight SUV with decay correction, and lean-body-mass SUL.

The rules follow the vendor-neutral SUV pseudo-code of the QIBA FDG-PET/CT technical
committee (University of Washington, Kinahan et al.) [1]_, which also underlies the IBSI
SUV chapter [2]_:

``Units`` (0054,1001) ``BQML`` (activity concentration, Bq/ml)
    ``SUVbw = C * W / D_decayed`` with ``C`` the rescaled pixel value (Bq/ml), ``W`` the
    weight in g (``PatientWeight`` (0010,1030) in kg x 1000) and
    ``D_decayed = RadionuclideTotalDose * 2 ** (-t / RadionuclideHalfLife)`` (Bq, s), where
    ``t`` depends on ``DecayCorrection`` (0054,1102):

    * ``START``: the images are decay-corrected to the start of the acquisition, so the
      dose is decayed from the injection to that start. The scan reference is
      ``SeriesDate``/``SeriesTime`` unless it is later than the earliest
      ``AcquisitionDate``/``AcquisitionTime`` of the series (a series re-saved by
      post-processing gets a new series time); then GE's private scan date-time
      (0009,100D) ``GEMS_PETD_01`` is used where present [1]_, else the earliest
      acquisition date-time of the series. Never the acquisition time of each slice:
      later bed positions are acquired later but are corrected to the same start.
    * ``ADMIN``: the images are decay-corrected to the administration time; no further
      decay (``t = 0``).

``Units`` ``CNTS`` (Philips)
    ``SUVbw = C * SUVScaleFactor`` with Philips' private (7053,1000) of the
    ``Philips PET Private Group``. Where only the activity concentration scale factor
    (7053,1009) is present, ``C * (7053,1009)`` is Bq/ml and the BQML rule applies [1]_.
``Units`` ``GML``
    Already SUVbw (g/ml): factor 1.

The rescaled value is ``C = stored * RescaleSlope + RescaleIntercept`` of each slice
(DICOM PS3.3 C.7.6.16.2.11 / C.8.9.4.1.2; GE varies the slope per slice [1]_).

Lean-body-mass SUL (on request): ``SUL = SUVbw * LBM / W`` with the Janmahasatian
formula [3]_, as recommended for PERCIST [4]_::

    LBM_male   = 9270 * W / (6680 + 216 * BMI)      (kg; W in kg, BMI = W / H**2 in kg/m2)
    LBM_female = 9270 * W / (8780 + 244 * BMI)

Every value the formula needs is checked: a missing, zero or implausible tag raises
`IngestError` naming the tag and the series, never a silently wrong SUV.

References
----------
.. [1] QIBA FDG-PET/CT Technical Committee. "Standardized Uptake Value (SUV) vendor-neutral
   pseudo-code", QIBA wiki (University of Washington, P. Kinahan, 2013-2015).
.. [2] Vácha M, Hofheinz F, Braune A, Löck S, Zwanenburg A, et al. "Computation of
   standardized uptake values" (IBSI), https://oncoray.github.io/suv_computation/.
.. [3] Janmahasatian S, Duffull SB, Ash S, Ward LC, Byrne NM, Green B. Quantification of
   lean bodyweight. Clin Pharmacokinet 2005;44(10):1051-1065.
.. [4] Wahl RL, Jacene H, Kasamon Y, Lodge MA. From RECIST to PERCIST: evolving
   considerations for PET response criteria in solid tumors. J Nucl Med 2009;50 Suppl
   1:122S-150S.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from lamp.ingest.common import IngestError

__all__ = [
    "SUPPORTED_UNITS",
    "F18_HALF_LIFE_S",
    "SuvScale",
    "Body",
    "suv_scale",
    "decay_factor",
    "lean_body_mass_kg",
    "sul_factor",
    "parse_da",
    "parse_tm",
    "parse_dt",
    "tag_name",
    "body_from_header",
    "element_text",
]

#: PET ``Units`` (0054,1001) that can be converted to SUVbw.
SUPPORTED_UNITS: tuple[str, ...] = ("BQML", "CNTS", "GML")
#: Half-life of fluorine-18 (s): 109.77 min (DDEP/NIST recommended value).
F18_HALF_LIFE_S = 6586.2

# Plausibility ranges. A value outside is a header error (a unit slip: grams for kg,
# MBq for Bq, minutes for seconds, cm for m) and is refused, naming the tag.
_WEIGHT_KG = (1.0, 400.0)
_HEIGHT_M = (0.3, 2.6)
_DOSE_BQ = (1.0e6, 2.0e10)  # 1 MBq .. 20 GBq; adult FDG is 150-600 MBq
_HALF_LIFE_S = (60.0, 1.0e6)  # Rb-82 (76 s) .. I-124 (4.2 d)
_F18_TOLERANCE = 0.02  # a stated F-18 half-life further than 2 % from 6586.2 s is wrong
# An uptake time above this many half-lives leaves < 0.1 % of the dose: a date slip.
_MAX_DECAY_HALF_LIVES = 10.0
# Time-only injection (no date): if the injection time is after the scan time the
# injection was on the day before only if that makes the uptake at most this long.
_MAX_ROLLOVER_S = 12 * 3600.0

_PHILIPS_CREATOR = "Philips PET Private Group"
_GE_PET_CREATOR = "GEMS_PETD_01"
# F-18 in RadionuclideCodeSequence: SNOMED-RT "C-111A1" and SNOMED CT "77004003".
_F18_CODES = {"C-111A1", "77004003"}
_F18_MEANING = re.compile(r"(\^?18\^?\s*F\b|\bF\s*-?\s*18\b|fluorine)", re.IGNORECASE)

_DA_RE = re.compile(r"^(\d{4})\.?(\d{2})\.?(\d{2})$")
_TM_RE = re.compile(r"^(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?$")
_DT_RE = re.compile(
    r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?([+-]\d{4})?$"
)


# --------------------------------------------------------------------------------------
# Tags and values
# --------------------------------------------------------------------------------------


def tag_name(keyword: str) -> str:
    """``"PatientWeight (0010,1030)"``: a keyword with its tag, for messages."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        return keyword
    return f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


def element_text(value: Any) -> str | None:
    """A DICOM value as stripped text (multiple values joined by ``\\``); None if empty."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    if isinstance(value, MultiValue | list | tuple):
        text = "\\".join(str(v).strip() for v in value)
    else:
        text = str(value)
    text = text.strip().strip("\x00").strip()
    return text or None


def _raw(ds: Dataset, keyword: str) -> str | None:
    """The text of a top-level element, or None when it is absent or empty."""
    elem = ds.get(keyword)
    return element_text(elem)


def _number(ds: Dataset, keyword: str, series: str) -> float | None:
    """A numeric element as float, None when absent/empty; an error when not a number."""
    text = _raw(ds, keyword)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise IngestError(
            f"{series}: tag {tag_name(keyword)}: expected a number, got {text!r}"
        ) from None
    if not math.isfinite(value):
        raise IngestError(
            f"{series}: tag {tag_name(keyword)}: expected a finite number, got {text}"
        )
    return value


def _private(ds: Dataset, group: int, creator: str, offset: int) -> str | None:
    """Text of a private element (``group``, creator block, element offset), or None."""
    try:
        block = ds.private_block(group, creator)
        elem = block[offset]
    except KeyError:
        return None
    return element_text(elem.value)


def _private_number(
    ds: Dataset, group: int, creator: str, offset: int, name: str, series: str
) -> float | None:
    text = _private(ds, group, creator, offset)
    if text is None:
        return None
    try:
        value = float(text.split("\\")[0])
    except ValueError:
        raise IngestError(
            f"{series}: private tag {name}: expected a number, got {text!r}"
        ) from None
    if not math.isfinite(value):
        raise IngestError(f"{series}: private tag {name}: expected a finite number, got {text}")
    return value


# --------------------------------------------------------------------------------------
# Dates and times (DICOM PS3.5 6.2 DA, TM, DT)
# --------------------------------------------------------------------------------------


def parse_da(text: str, what: str = "DA") -> date:
    """A DICOM date ``YYYYMMDD`` (also the old ``YYYY.MM.DD``)."""
    m = _DA_RE.match(text.strip())
    if m is None:
        raise IngestError(f"{what}: expected a date YYYYMMDD, got {text!r}")
    try:
        return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError as exc:
        raise IngestError(f"{what}: expected a valid date YYYYMMDD, got {text!r}: {exc}") from None


def parse_tm(text: str, what: str = "TM") -> timedelta:
    """A DICOM time ``HH[MM[SS[.FFFFFF]]]`` (also ``HH:MM:SS``) as time since midnight."""
    m = _TM_RE.match(text.strip())
    if m is None:
        raise IngestError(f"{what}: expected a time HHMMSS[.FFFFFF], got {text!r}")
    hh, mm, ss = int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0)
    frac = float("0." + m.group(4)) if m.group(4) else 0.0
    # 60 s is allowed for a leap second, as DICOM does
    if hh > 23 or mm > 59 or ss > 60:
        raise IngestError(f"{what}: expected a time of day HHMMSS, got {text!r}")
    return timedelta(hours=hh, minutes=mm, seconds=ss + frac)


def parse_dt(text: str, what: str = "DT") -> tuple[datetime, bool]:
    """A DICOM date-time ``YYYYMMDDHHMMSS.FFFFFF&ZZXX``.

    Returns
    -------
    datetime
        Naive local date-time; missing trailing components are taken as their minimum.
    bool
        Whether a UTC offset (``&ZZXX``) was given and ignored: scanners write every
        time of a study in the same local clock, which is what decay times need.
    """
    m = _DT_RE.match(text.strip())
    if m is None or m.group(4) is None:
        raise IngestError(
            f"{what}: expected a date-time YYYYMMDDHHMMSS[.FFFFFF], got {text!r} "
            "(at least the hour is needed)"
        )
    parts = [int(g) if g else d for g, d in zip(m.groups()[:6], (0, 1, 1, 0, 0, 0), strict=True)]
    frac = float("0." + m.group(7)) if m.group(7) else 0.0
    try:
        value = datetime(*parts) + timedelta(seconds=frac)
    except ValueError as exc:
        raise IngestError(f"{what}: expected a valid date-time, got {text!r}: {exc}") from None
    return value, m.group(8) is not None


def _date_time(ds: Dataset, date_kw: str, time_kw: str, series: str) -> datetime | None:
    """Combine a DA and a TM element; None when either is absent."""
    d, t = _raw(ds, date_kw), _raw(ds, time_kw)
    if d is None or t is None:
        return None
    day = parse_da(d, f"{series}: tag {tag_name(date_kw)}")
    return datetime.combine(day, datetime.min.time()) + parse_tm(
        t, f"{series}: tag {tag_name(time_kw)}"
    )


# --------------------------------------------------------------------------------------
# Body measures and SUL
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Body:
    """Patient measures for SUV normalisation (any may be unknown).

    Attributes
    ----------
    weight_kg : float or None
        Body weight, kg.
    height_m : float or None
        Height, m.
    sex : str or None
        ``"M"`` or ``"F"``.
    source : str
        Where the values came from, for messages.
    """

    weight_kg: float | None = None
    height_m: float | None = None
    sex: str | None = None
    source: str = "patient"


def lean_body_mass_kg(
    weight_kg: float, height_m: float, sex: str, source: str = "patient"
) -> float:
    """Lean body mass by Janmahasatian et al. 2005 [3]_ (module docstring).

    Parameters
    ----------
    weight_kg : float
        Body weight, kg (1-400).
    height_m : float
        Height, m (0.3-2.6).
    sex : str
        ``"M"`` or ``"F"``.
    source : str
        Where the values came from, for messages.

    Returns
    -------
    float
        Lean body mass, kg: ``9270 W / (6680 + 216 BMI)`` for men and
        ``9270 W / (8780 + 244 BMI)`` for women, ``BMI = W / H**2`` (kg/m2).

    Examples
    --------
    >>> round(lean_body_mass_kg(80.0, 1.80, "M"), 2)
    61.73
    """
    _check_range(weight_kg, _WEIGHT_KG, f"{source}: weight (kg)")
    _check_range(height_m, _HEIGHT_M, f"{source}: height (m)")
    bmi = weight_kg / height_m**2
    # Janmahasatian 2005, eq. for lean body weight (WHO BMI in kg/m2)
    if sex == "M":
        return 9270.0 * weight_kg / (6680.0 + 216.0 * bmi)
    if sex == "F":
        return 9270.0 * weight_kg / (8780.0 + 244.0 * bmi)
    raise IngestError(
        f"{source}: SUL needs the patient's sex 'M' or 'F' (the lean-body-mass formula "
        f"differs), got {sex!r}"
    )


def sul_factor(body: Body) -> float:
    """``LBM / W``: multiply SUVbw by this to get SUL (SUV normalised by lean body mass)."""
    missing = [
        n
        for n, v in (("weight", body.weight_kg), ("height", body.height_m), ("sex", body.sex))
        if v is None
    ]
    if missing:
        raise IngestError(
            f"{body.source}: SUL (--sul) needs the patient's weight, height and sex; "
            f"missing {', '.join(missing)}"
        )
    assert body.weight_kg is not None and body.height_m is not None and body.sex is not None
    return lean_body_mass_kg(body.weight_kg, body.height_m, body.sex, body.source) / body.weight_kg


def _check_range(value: float, bounds: tuple[float, float], what: str, hint: str = "") -> None:
    lo, hi = bounds
    if not (lo <= value <= hi):
        raise IngestError(f"{what}: expected {lo:g} to {hi:g}, got {value:g}{hint}")


# --------------------------------------------------------------------------------------
# The SUV scale of a PET series
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SuvScale:
    """How the rescaled pixel values of a PET series become SUVbw.

    Attributes
    ----------
    factor : float
        ``SUVbw = (stored * RescaleSlope + RescaleIntercept) * factor`` (g/ml per unit).
    units : str
        The series' ``Units``: ``"BQML"``, ``"CNTS"`` or ``"GML"``.
    method : str
        The rule that gave ``factor``, in words.
    decay_correction : str or None
        ``"START"`` or ``"ADMIN"`` (BQML only).
    injected_dose_bq, half_life_s, decay_time_s, weight_kg : float or None
        The values used (BQML); ``decay_time_s`` from the injection to the scan reference.
    injection, scan_reference : str or None
        ISO date-times used, and ``scan_reference_rule`` the tag they came from.
    notes : tuple of str
        Assumptions made on the way (e.g. an injection date taken as the day before).
    """

    factor: float
    units: str
    method: str
    decay_correction: str | None = None
    injected_dose_bq: float | None = None
    half_life_s: float | None = None
    decay_time_s: float | None = None
    weight_kg: float | None = None
    injection: str | None = None
    scan_reference: str | None = None
    scan_reference_rule: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["notes"] = list(self.notes)
        return out


def decay_factor(seconds: float, half_life_s: float) -> float:
    """Fraction of activity left after ``seconds``: ``2 ** (-seconds / half_life_s)``."""
    return 2.0 ** (-seconds / half_life_s)


def _require(ds: Dataset, keyword: str, series: str, why: str) -> str:
    value = _raw(ds, keyword)
    if value is None:
        raise IngestError(f"{series}: tag {tag_name(keyword)} is missing or empty; {why}")
    return value


def _weight(ds: Dataset, series: str) -> float:
    w = _number(ds, "PatientWeight", series)
    if w is None:
        raise IngestError(
            f"{series}: tag {tag_name('PatientWeight')} is missing or empty; SUVbw needs the "
            "body weight in kg (fill in the tag, e.g. with pydicom, from the scan records)"
        )
    if w <= 0:
        raise IngestError(
            f"{series}: tag {tag_name('PatientWeight')} is {w:g} kg; SUVbw needs the "
            "body weight in kg (an anonymiser may have zeroed it)"
        )
    hint = " (grams instead of kg?)" if w > _WEIGHT_KG[1] else ""
    _check_range(w, _WEIGHT_KG, f"{series}: tag {tag_name('PatientWeight')} (kg)", hint)
    return w


def _radiopharmaceutical(ds: Dataset, series: str) -> tuple[Dataset, list[str]]:
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    if seq is None or len(seq) == 0:
        raise IngestError(
            f"{series}: tag {tag_name('RadiopharmaceuticalInformationSequence')} is missing "
            "or empty; it holds the injected dose, half-life and injection time"
        )
    notes = []
    if len(seq) > 1:
        notes.append(
            f"{len(seq)} items in RadiopharmaceuticalInformationSequence; the first is used"
        )
    return seq[0], notes


def _half_life(rp: Dataset, series: str) -> float:
    kw = "RadionuclideHalfLife"
    hl = _number(rp, kw, series)
    if hl is None:
        raise IngestError(
            f"{series}: tag {tag_name(kw)} (in RadiopharmaceuticalInformationSequence) is "
            "missing or empty; decay correction needs the half-life in s (F-18: 6586.2 s)"
        )
    hint = " (minutes instead of seconds?)" if 0 < hl < _HALF_LIFE_S[0] else ""
    _check_range(hl, _HALF_LIFE_S, f"{series}: tag {tag_name(kw)} (s)", hint)
    if _is_f18(rp) and abs(hl / F18_HALF_LIFE_S - 1.0) > _F18_TOLERANCE:
        raise IngestError(
            f"{series}: tag {tag_name(kw)} is {hl:g} s but the radionuclide is F-18 "
            f"(half-life {F18_HALF_LIFE_S:g} s); the header is wrong"
        )
    return hl


def _is_f18(rp: Dataset) -> bool:
    codes = rp.get("RadionuclideCodeSequence")
    for item in codes or []:
        if _raw(item, "CodeValue") in _F18_CODES:
            return True
        meaning = _raw(item, "CodeMeaning")
        if meaning and _F18_MEANING.search(meaning):
            return True
    return False


def _dose(rp: Dataset, series: str) -> float:
    kw = "RadionuclideTotalDose"
    dose = _number(rp, kw, series)
    if dose is None:
        raise IngestError(
            f"{series}: tag {tag_name(kw)} (in RadiopharmaceuticalInformationSequence) is "
            "missing or empty; SUVbw needs the injected activity in Bq"
        )
    if dose <= 0:
        raise IngestError(
            f"{series}: tag {tag_name(kw)} is {dose:g} Bq; expected the injected activity > 0"
        )
    hint = " (MBq instead of Bq?)" if dose < _DOSE_BQ[0] else ""
    _check_range(dose, _DOSE_BQ, f"{series}: tag {tag_name(kw)} (Bq)", hint)
    return dose


def _scan_reference(headers: Sequence[Dataset], series: str) -> tuple[datetime, str, list[str]]:
    """The START reference date-time of a series (QIBA rule; module docstring)."""
    first = headers[0]
    notes: list[str] = []
    series_dt = _date_time(first, "SeriesDate", "SeriesTime", series)
    acq = [_date_time(h, "AcquisitionDate", "AcquisitionTime", series) for h in headers]
    acq_known = [a for a in acq if a is not None]
    earliest = min(acq_known) if acq_known else None
    if series_dt is None and earliest is None:
        raise IngestError(
            f"{series}: tags {tag_name('SeriesDate')}/{tag_name('SeriesTime')} and "
            f"{tag_name('AcquisitionDate')}/{tag_name('AcquisitionTime')} are missing; "
            "decay correction needs the scan start"
        )
    if series_dt is not None and (earliest is None or series_dt <= earliest):
        if earliest is None:
            notes.append("no AcquisitionDate/Time: SeriesDate/Time taken as the scan start")
        return series_dt, "SeriesDate/SeriesTime", notes
    # the series date-time is absent or after the acquisition: a re-saved series
    assert earliest is not None
    ge = _private(first, 0x0009, _GE_PET_CREATOR, 0x0D)
    if ge is not None:
        value, _ = parse_dt(ge, f"{series}: GE private scan date-time (0009,100D)")
        if series_dt is not None:
            notes.append(
                f"SeriesDate/Time {series_dt.isoformat()} is after the first acquisition "
                f"{earliest.isoformat()} (post-processed series): GE's scan date-time used"
            )
        return value, "GE private (0009,100D) GEMS_PETD_01", notes
    if series_dt is not None:
        notes.append(
            f"SeriesDate/Time {series_dt.isoformat()} is after the first acquisition "
            f"{earliest.isoformat()} (post-processed series): the earliest acquisition used"
        )
    else:
        notes.append("no SeriesDate/Time: the earliest AcquisitionDate/Time used")
    return earliest, "earliest AcquisitionDate/AcquisitionTime", notes


def _injection(rp: Dataset, scan: datetime, series: str) -> tuple[datetime, list[str]]:
    """The injection date-time: the full DT, else the time on the scan's date (QIBA)."""
    notes: list[str] = []
    dt_text = _raw(rp, "RadiopharmaceuticalStartDateTime")
    if dt_text is not None:
        value, offset = parse_dt(
            dt_text, f"{series}: tag {tag_name('RadiopharmaceuticalStartDateTime')}"
        )
        if offset:
            notes.append(
                "the UTC offset of RadiopharmaceuticalStartDateTime is ignored (local clock)"
            )
        return value, notes
    t_text = _raw(rp, "RadiopharmaceuticalStartTime")
    if t_text is None:
        raise IngestError(
            f"{series}: tags {tag_name('RadiopharmaceuticalStartDateTime')} and "
            f"{tag_name('RadiopharmaceuticalStartTime')} (in RadiopharmaceuticalInformation"
            "Sequence) are missing; decay correction needs the injection time"
        )
    tod = parse_tm(t_text, f"{series}: tag {tag_name('RadiopharmaceuticalStartTime')}")
    value = datetime.combine(scan.date(), datetime.min.time()) + tod
    if value > scan and (scan - (value - timedelta(days=1))).total_seconds() <= _MAX_ROLLOVER_S:
        # QIBA: "start Date is not explicit ... assume same as Series Date; but consider
        # spanning midnight" -- an injection time after the scan time means the day before
        value -= timedelta(days=1)
        notes.append(
            f"injection time {t_text} without a date is after the scan time: the injection "
            f"is taken on the day before ({value.isoformat()})"
        )
    else:
        notes.append("injection date not given: taken as the scan date")
    return value, notes


def suv_scale(headers: Sequence[Dataset], series: str) -> SuvScale:
    """The factor that turns a PET series' rescaled pixel values into SUVbw.

    Parameters
    ----------
    headers : sequence of pydicom Dataset
        The headers of every slice of the series (pixel data not needed). Series-level
        tags are read from the first; the acquisition times of all are compared.
    series : str
        The series' name for messages (e.g. ``"PET series 1.2.3 ('WB AC', 120 files in
        ...)"``).

    Returns
    -------
    SuvScale
        See the module docstring for the rules.

    Raises
    ------
    IngestError
        Naming the tag and the series: ``Units``, ``DecayCorrection`` or
        ``CorrectedImage`` missing or unsupported (not attenuation- and decay-corrected,
        ``DecayCorrection NONE``), ``PatientWeight`` missing, 0 or implausible, dose or
        half-life missing or implausible, injection time missing, a negative or
        implausibly long decay time, a CNTS series without Philips scale factors, or
        ``Units`` differing between slices.
    """
    if not headers:
        raise IngestError(f"{series}: no slices")
    first = headers[0]
    units = _require(
        first, "Units", series, f"expected one of {', '.join(SUPPORTED_UNITS)}"
    ).upper()
    seen = sorted({(_raw(h, "Units") or "(empty)").upper() for h in headers})
    if len(seen) > 1:
        raise IngestError(
            f"{series}: tag {tag_name('Units')} differs between slices ({', '.join(seen)}); "
            "expected one unit per series"
        )
    if units not in SUPPORTED_UNITS:
        raise IngestError(
            f"{series}: tag {tag_name('Units')} is {units!r}; expected one of "
            f"{', '.join(SUPPORTED_UNITS)} (Bq/ml, Philips counts, or SUVbw in g/ml); "
            "other units (e.g. PROPCNTS, CM2ML, NONE) cannot be converted to SUVbw"
        )
    if units == "GML":
        return SuvScale(factor=1.0, units=units, method="GML: pixel values are SUVbw already")

    corrected = _require(
        first,
        "CorrectedImage",
        series,
        "SUV needs attenuation- and decay-corrected images (ATTN and DECY)",
    )
    flags = {f.strip().upper() for f in corrected.split("\\")}
    if "ATTN" not in flags:
        raise IngestError(
            f"{series}: tag {tag_name('CorrectedImage')} is {corrected!r} without ATTN: "
            "the series is not attenuation-corrected (NAC) and has no quantitative SUV; "
            "use the attenuation-corrected series"
        )

    if units == "CNTS":
        suv = _private_number(
            first, 0x7053, _PHILIPS_CREATOR, 0x00, "(7053,1000) Philips SUV scale factor", series
        )
        if suv is not None:
            if suv <= 0:
                raise IngestError(
                    f"{series}: private tag (7053,1000) Philips SUV scale factor is {suv:g}; "
                    "expected > 0"
                )
            return SuvScale(
                factor=suv, units=units, method="CNTS: Philips SUV scale factor (7053,1000)"
            )
        bqml = _private_number(
            first,
            0x7053,
            _PHILIPS_CREATOR,
            0x09,
            "(7053,1009) Philips activity concentration scale factor",
            series,
        )
        if bqml is None:
            raise IngestError(
                f"{series}: tag {tag_name('Units')} is CNTS but the Philips private tags "
                f"(7053,1000) SUV scale factor and (7053,1009) activity concentration scale "
                f"factor of the '{_PHILIPS_CREATOR}' block are both missing; counts cannot "
                "be converted (export the series from the scanner in Bq/ml or SUV)"
            )
        if bqml <= 0:
            raise IngestError(
                f"{series}: private tag (7053,1009) Philips activity concentration scale "
                f"factor is {bqml:g}; expected > 0"
            )
        base = _bqml_scale(headers, series, units="CNTS")
        # QIBA: "(7053,1009) * Rescale Slope scales pixels to Bq/ml, and proceed as if
        # Units are BQML"
        return replace(
            base,
            factor=base.factor * bqml,
            method="CNTS: Philips activity concentration scale factor (7053,1009) to Bq/ml, "
            f"then {base.method}",
        )
    return _bqml_scale(headers, series, units="BQML")


def _bqml_scale(headers: Sequence[Dataset], series: str, units: str) -> SuvScale:
    """SUVbw factor for activity concentration in Bq/ml (QIBA BQML branch)."""
    first = headers[0]
    decay = _require(first, "DecayCorrection", series, "expected START or ADMIN").upper()
    corrected = {f.strip().upper() for f in (_raw(first, "CorrectedImage") or "").split("\\")}
    if decay == "NONE" or "DECY" not in corrected:
        raise IngestError(
            f"{series}: the images are not decay-corrected (tag {tag_name('DecayCorrection')} "
            f"{decay!r}, {tag_name('CorrectedImage')} without DECY); per-frame decay "
            "correction is not supported: reconstruct with decay correction"
        )
    if decay not in ("START", "ADMIN"):
        raise IngestError(
            f"{series}: tag {tag_name('DecayCorrection')} is {decay!r}; expected START "
            "(corrected to the scan start) or ADMIN (corrected to the injection)"
        )
    weight = _weight(first, series)
    rp, notes = _radiopharmaceutical(first, series)
    dose = _dose(rp, series)
    if decay == "ADMIN":
        # decay-corrected to the administration time: the injected dose is the reference
        return SuvScale(
            factor=weight * 1000.0 / dose,
            units=units,
            method="BQML, DecayCorrection ADMIN: SUV = C * W / dose (no further decay)",
            decay_correction=decay,
            injected_dose_bq=dose,
            decay_time_s=0.0,
            weight_kg=weight,
            notes=tuple(notes),
        )
    half_life = _half_life(rp, series)
    scan, rule, scan_notes = _scan_reference(headers, series)
    injected, inj_notes = _injection(rp, scan, series)
    notes += scan_notes + inj_notes
    seconds = (scan - injected).total_seconds()
    if seconds < 0:
        raise IngestError(
            f"{series}: negative decay time {seconds / 60:.1f} min: the injection "
            f"({injected.isoformat()}, from RadiopharmaceuticalStartDateTime/StartTime) is "
            f"after the scan start ({scan.isoformat()}, from {rule}); check the dates and times"
        )
    if seconds > _MAX_DECAY_HALF_LIVES * half_life:
        raise IngestError(
            f"{series}: implausible decay time {seconds / 3600:.1f} h from the injection "
            f"({injected.isoformat()}) to the scan start ({scan.isoformat()}, from {rule}): "
            f"more than {_MAX_DECAY_HALF_LIVES:g} half-lives ({half_life:g} s); check the dates"
        )
    # QIBA: decayed dose = injected dose * 2^(-decay time / half-life); SUVbw = C * W[g] / D
    decayed = dose * decay_factor(seconds, half_life)
    return SuvScale(
        factor=weight * 1000.0 / decayed,
        units=units,
        method="BQML, DecayCorrection START: SUV = C * W / (dose * 2^(-t / T1/2))",
        decay_correction=decay,
        injected_dose_bq=dose,
        half_life_s=half_life,
        decay_time_s=seconds,
        weight_kg=weight,
        injection=injected.isoformat(),
        scan_reference=scan.isoformat(),
        scan_reference_rule=rule,
        notes=tuple(notes),
    )


def body_from_header(ds: Dataset, series: str) -> Body:
    """Weight (kg), height (m) and sex from a PET header; unknown values are None.

    ``PatientSize`` (0010,1020) is in metres; a value above 3 is refused as centimetres.
    """
    weight = _number(ds, "PatientWeight", series)
    height = _number(ds, "PatientSize", series)
    if height is not None and height > 3.0:
        raise IngestError(
            f"{series}: tag {tag_name('PatientSize')} is {height:g}; expected the height in "
            "metres (centimetres given?)"
        )
    sex = (_raw(ds, "PatientSex") or "").upper() or None
    return Body(
        weight_kg=weight if weight and weight > 0 else None,
        height_m=height if height and height > 0 else None,
        sex=sex if sex in ("M", "F") else None,
        source=series,
    )
