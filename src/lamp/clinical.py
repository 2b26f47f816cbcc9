"""Ann Arbor stage by the Lugano rules, extranodal sites and the International Prognostic Index.

Shared by the synthetic cohort generator (which places lesions at the sites named here and
derives ``ann_arbor``, ``extranodal_sites`` and ``ipi`` of ``clinical.csv`` from them) and
by the automatic staging baseline (which maps detected lesions to the same sites).

The site vocabulary is binding: other modules use exactly these strings.

* Nodal regions (`NODAL_REGIONS`), each with its side of the diaphragm. The spleen counts
  as nodal (lymphatic) tissue, as in the Lugano classification [1]_.
* Extranodal sites (`EXTRANODAL_SITES`), at organ level and without side.
  `DISSEMINATED_SITES` are the sites whose involvement is stage IV even on their own:
  bone marrow, liver, CNS and lung (in the synthetic cohorts lung lesions are always
  parenchymal, never contiguous with a nodal mass).

References
----------
.. [1] Cheson BD, Fisher RI, Barrington SF, et al. Recommendations for initial evaluation,
   staging, and response assessment of Hodgkin and non-Hodgkin lymphoma: the Lugano
   classification. J Clin Oncol 2014;32(27):3059-3068.
.. [2] The International Non-Hodgkin's Lymphoma Prognostic Factors Project (Shipp MA et al.).
   A predictive model for aggressive non-Hodgkin's lymphoma. N Engl J Med
   1993;329(14):987-994.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from lamp.errors import LampError

__all__ = [
    "ClinicalError",
    "NODAL_REGIONS",
    "EXTRANODAL_SITES",
    "DISSEMINATED_SITES",
    "IPI_GROUPS",
    "ann_arbor_stage",
    "count_extranodal_sites",
    "ipi",
    "ipi_group",
]

#: Lugano lymph node regions (the spleen included as lymphatic tissue) -> side of the
#: diaphragm, ``"above"`` or ``"below"``.
NODAL_REGIONS: dict[str, str] = {
    "cervical_left": "above",
    "cervical_right": "above",
    "supraclavicular_left": "above",
    "supraclavicular_right": "above",
    "axillary_left": "above",
    "axillary_right": "above",
    "mediastinal": "above",
    "hilar_left": "above",
    "hilar_right": "above",
    "para_aortic": "below",
    "mesenteric": "below",
    "iliac_left": "below",
    "iliac_right": "below",
    "inguinal_left": "below",
    "inguinal_right": "below",
    "spleen": "below",
}

#: Extranodal (extralymphatic) sites, organ level, no side.
EXTRANODAL_SITES: tuple[str, ...] = (
    "bone_marrow",
    "liver",
    "stomach",
    "bowel",
    "lung",
    "kidney",
    "adrenal",
    "cns",
)

#: Extranodal sites whose involvement means stage IV even without any other site
#: (diffuse or multifocal organ involvement, Lugano 2014 [1]_).
DISSEMINATED_SITES: frozenset[str] = frozenset({"bone_marrow", "liver", "cns", "lung"})

#: IPI risk groups, from lowest to highest risk (scores 0-1, 2, 3, 4-5) [2]_.
IPI_GROUPS: tuple[str, ...] = ("low", "low-intermediate", "high-intermediate", "high")

# IPI score (0..5) -> index into IPI_GROUPS.
_GROUP_OF_SCORE = np.array([0, 0, 1, 2, 3, 3], dtype=np.intp)
# How many offending values an error message lists.
_MAX_SHOWN = 5


class ClinicalError(LampError):
    """A clinical variable or a site name is invalid; the message names the field."""


# --------------------------------------------------------------------------------------
# Sites and stage
# --------------------------------------------------------------------------------------


def _check_sites(values: Iterable[str], valid: Iterable[str], field: str) -> frozenset[str]:
    """The distinct names of ``values``, all of which must be in ``valid``."""
    valid = tuple(valid)
    if isinstance(values, str | bytes):
        raise ClinicalError(
            f"{field} must be an iterable of names (a list, set or tuple); "
            f"got the single string {values!r} - wrap it in a list"
        )
    try:
        items = list(values)
    except TypeError:
        raise ClinicalError(
            f"{field} must be an iterable of names; got {type(values).__name__}"
        ) from None
    unknown = [v for v in items if not (isinstance(v, str) and v in valid)]
    if unknown:
        hints = []
        for v in unknown:
            if v in NODAL_REGIONS and field != "nodal_regions":
                hints.append(f"{v!r} is a nodal region: pass it in nodal_regions")
            elif v in EXTRANODAL_SITES and field != "extranodal_sites":
                hints.append(f"{v!r} is an extranodal site: pass it in extranodal_sites")
        hint = f" ({'; '.join(hints)})" if hints else ""
        raise ClinicalError(
            f"{field}: unknown name(s) {unknown}{hint}; valid names are {list(valid)}"
        )
    return frozenset(items)


def ann_arbor_stage(nodal_regions: Iterable[str], extranodal_sites: Iterable[str]) -> int:
    """Ann Arbor stage (1-4) of a site layout, by the Lugano 2014 rules [1]_.

    Parameters
    ----------
    nodal_regions : iterable of str
        Involved nodal regions, names from `NODAL_REGIONS` (repeats count once).
    extranodal_sites : iterable of str
        Involved extranodal sites, names from `EXTRANODAL_SITES` (repeats count once).

    Returns
    -------
    int
        1, 2, 3 or 4 (stage I-IV; the E suffix is not returned).

    Raises
    ------
    ClinicalError
        If a name is unknown (the message lists the valid names), a bare string is passed
        instead of a list, or nothing is involved.

    Notes
    -----
    The rules, applied in order:

    1. Any extranodal site -> IV (Lugano: involvement of extralymphatic organs beyond
       contiguous extension), except: exactly one extranodal site that is not in
       `DISSEMINATED_SITES` and no nodal region -> I (stage IE, a single extranodal
       lesion). Bone marrow, liver, CNS and lung are IV even alone (diffuse or multifocal
       organ involvement).
    2. Nodal regions only (the spleen is nodal): regions on both sides of the diaphragm
       -> III (including nodes above the diaphragm with the spleen); one side with one
       region -> I; one side with two or more regions -> II.

    Stage IIE (nodal stage I-II with limited *contiguous* extranodal extension) needs the
    geometry of the lesions and cannot be told from a list of sites: here nodal disease
    plus any extranodal site is stage IV, which is what the synthetic cohorts intend (their
    extranodal lesions are never contiguous with a node). Bulk and B symptoms do not change
    the stage number.

    Examples
    --------
    >>> ann_arbor_stage(["cervical_left", "mediastinal"], [])
    2
    >>> ann_arbor_stage(["cervical_left", "spleen"], [])
    3
    >>> ann_arbor_stage([], ["stomach"])
    1
    >>> ann_arbor_stage([], ["bone_marrow"])
    4
    """
    nodal = _check_sites(nodal_regions, NODAL_REGIONS, "nodal_regions")
    extranodal = _check_sites(extranodal_sites, EXTRANODAL_SITES, "extranodal_sites")
    if not nodal and not extranodal:
        raise ClinicalError(
            "nodal_regions and extranodal_sites are both empty: a stage needs at least one "
            "involved nodal region or extranodal site"
        )
    if extranodal:
        single_localised = len(extranodal) == 1 and not (extranodal & DISSEMINATED_SITES)
        return 1 if single_localised and not nodal else 4
    sides = {NODAL_REGIONS[region] for region in nodal}
    if len(sides) == 2:
        return 3
    return 1 if len(nodal) == 1 else 2


def count_extranodal_sites(extranodal_sites: Iterable[str]) -> int:
    """Number of distinct involved extranodal sites (the IPI's extranodal factor).

    Parameters
    ----------
    extranodal_sites : iterable of str
        Names from `EXTRANODAL_SITES`; repeats (several lesions in one organ) count once.

    Returns
    -------
    int
        Number of distinct sites, >= 0.

    Raises
    ------
    ClinicalError
        If a name is unknown or a bare string is passed instead of a list.
    """
    return len(_check_sites(extranodal_sites, EXTRANODAL_SITES, "extranodal_sites"))


# --------------------------------------------------------------------------------------
# International Prognostic Index
# --------------------------------------------------------------------------------------


def _describe(arr: np.ndarray, bad: np.ndarray) -> str:
    """The offending values of ``arr`` (where ``bad``), with positions for arrays."""
    if arr.ndim == 0:
        return f"{arr.item()!r}"
    positions = np.flatnonzero(bad.reshape(-1))
    values = arr.reshape(-1)[positions]
    shown = ", ".join(
        f"{v!r} at position {int(p)}"
        for p, v in zip(positions[:_MAX_SHOWN], values[:_MAX_SHOWN].tolist(), strict=True)
    )
    more = f" and {positions.size - _MAX_SHOWN} more" if positions.size > _MAX_SHOWN else ""
    return shown + more


def _as_numbers(value: Any, field: str) -> np.ndarray:
    """``value`` (scalar, array, list or pandas Series) as a float64 array without NaN.

    Missing entries (``None``, ``pd.NA`` of nullable dtypes, NaN) become NaN and are
    reported as missing.
    """
    arr = np.asarray(value)
    if arr.dtype.kind == "O":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise ClinicalError(
                f"{field} must be numeric; got non-numeric entries in an object array "
                f"(first values {arr.reshape(-1)[:_MAX_SHOWN].tolist()!r})"
            ) from None
    if arr.dtype.kind not in "iuf":
        raise ClinicalError(f"{field} must be numeric; got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    missing = np.isnan(arr)
    if missing.any():
        raise ClinicalError(
            f"{field} must not be missing (the IPI needs every factor); got NaN: "
            f"{_describe(arr, missing)}"
        )
    return arr


def _check_range(
    arr: np.ndarray,
    field: str,
    expected: str,
    *,
    low: float,
    high: float = np.inf,
    low_inclusive: bool = True,
    integer: bool = False,
) -> None:
    bad = ~np.isfinite(arr) | (arr > high)
    bad |= (arr < low) if low_inclusive else (arr <= low)
    if integer:
        bad |= arr != np.round(arr)
    if bad.any():
        raise ClinicalError(f"{field} must be {expected}; got {_describe(arr, bad)}")


def ipi(
    age: ArrayLike,
    ecog: ArrayLike,
    ldh_ratio: ArrayLike,
    ann_arbor: ArrayLike,
    extranodal_sites: ArrayLike,
) -> int | np.ndarray:
    """International Prognostic Index, 0-5 (Shipp et al. 1993 [2]_).

    One point for each of: age > 60 years; ECOG performance status >= 2; serum LDH above
    the upper limit of normal (``ldh_ratio > 1``); Ann Arbor stage III or IV; more than one
    extranodal site. The boundaries are strict as published: age exactly 60, an LDH ratio of
    exactly 1 and exactly one extranodal site score no point.

    Parameters
    ----------
    age : float or array_like, years
        Age at diagnosis, 0-120.
    ecog : int or array_like
        ECOG performance status, an integer 0-4.
    ldh_ratio : float or array_like, dimensionless
        Serum LDH divided by the laboratory's upper limit of normal, > 0.
    ann_arbor : int or array_like
        Ann Arbor stage, an integer 1-4 (see `ann_arbor_stage`).
    extranodal_sites : int or array_like
        Number of involved extranodal sites, an integer >= 0 (see
        `count_extranodal_sites`); a count, not a list of names.

    The arguments may be scalars, numpy arrays, lists or pandas Series (taken by position,
    the index is ignored); they must broadcast to one shape.

    Returns
    -------
    int or ndarray of int64
        A Python int when every argument is a scalar, else an array of the broadcast shape.

    Raises
    ------
    ClinicalError
        If a value is missing, non-numeric or out of range (the message names the field,
        the expected range and the offending values with their positions), or the
        arguments do not broadcast.

    Examples
    --------
    >>> ipi(age=61, ecog=2, ldh_ratio=1.2, ann_arbor=3, extranodal_sites=2)
    5
    >>> ipi(age=60, ecog=1, ldh_ratio=1.0, ann_arbor=2, extranodal_sites=1)
    0
    """
    fields = {
        "age": age,
        "ecog": ecog,
        "ldh_ratio": ldh_ratio,
        "ann_arbor": ann_arbor,
        "extranodal_sites": extranodal_sites,
    }
    arrays = {name: _as_numbers(value, name) for name, value in fields.items()}
    _check_range(arrays["age"], "age", "in [0, 120] years", low=0, high=120)
    _check_range(arrays["ecog"], "ecog", "an integer ECOG status 0-4", low=0, high=4, integer=True)
    _check_range(
        arrays["ldh_ratio"],
        "ldh_ratio",
        "a finite LDH / upper-limit-of-normal ratio > 0",
        low=0,
        low_inclusive=False,
    )
    _check_range(
        arrays["ann_arbor"], "ann_arbor", "an integer stage 1-4", low=1, high=4, integer=True
    )
    _check_range(
        arrays["extranodal_sites"],
        "extranodal_sites",
        "an integer count of sites >= 0",
        low=0,
        integer=True,
    )
    try:
        a, e, ldh, stage, sites = np.broadcast_arrays(*arrays.values())
    except ValueError:
        shapes = ", ".join(f"{name} {arr.shape}" for name, arr in arrays.items())
        raise ClinicalError(
            f"age, ecog, ldh_ratio, ann_arbor and extranodal_sites must have one shape "
            f"(or broadcast); got {shapes}"
        ) from None
    score = (a > 60).astype(np.int64) + (e >= 2) + (ldh > 1) + (stage >= 3) + (sites > 1)
    if score.ndim == 0:
        return int(score)
    return score


def ipi_group(ipi: ArrayLike) -> str | np.ndarray:
    """IPI risk group of an IPI score (Shipp et al. 1993 [2]_).

    Parameters
    ----------
    ipi : int or array_like of int
        IPI score(s), integers 0-5 (scalars, arrays, lists or pandas Series).

    Returns
    -------
    str or ndarray of str
        ``"low"`` (0-1), ``"low-intermediate"`` (2), ``"high-intermediate"`` (3) or
        ``"high"`` (4-5), see `IPI_GROUPS`; a str for a scalar, else an array of the same
        shape.

    Raises
    ------
    ClinicalError
        If a score is missing, non-numeric, not an integer or outside 0-5.

    Examples
    --------
    >>> ipi_group(3)
    'high-intermediate'
    """
    arr = _as_numbers(ipi, "ipi")
    _check_range(arr, "ipi", "an integer IPI score 0-5", low=0, high=5, integer=True)
    names = np.asarray(IPI_GROUPS)[_GROUP_OF_SCORE[arr.astype(np.intp)]]
    if names.ndim == 0:
        return str(names)
    return names
