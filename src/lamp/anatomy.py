"""TotalSegmentator's 'total' label map and its merge into 71 anatomical groups.

Organ masks enter LAMP in TotalSegmentator's ``total`` label map (117 classes, ids 1-117,
0 = background). The prognosis model describes the anatomy with 71 merged groups: the
per-level index is dropped (``rib_left_1`` .. ``rib_left_12`` -> ``rib_left``;
``vertebrae_C1`` .. ``C7`` / ``T1`` .. ``T12`` / ``L1`` .. ``L5`` / ``S1`` ->
``vertebrae_C`` / ``T`` / ``L`` / ``S``), the lung lobes of one side merge into
``lung_left`` / ``lung_right``, and every other class stays as it is.

The mapping is read once, at import, from the packaged file
``lamp/data/totalseg_total_117_to_71.json`` and checked there (71 groups with ids 1..71,
every total id 1..117 in exactly one group), so a damaged file fails at import and not
half-way through a cohort.

This module only knows the label map; it does not import or run TotalSegmentator.

References
----------
.. [1] Wasserthal J, Breit H-C, Meyer MT, et al. TotalSegmentator: robust segmentation of
   104 anatomic structures in CT images. Radiol Artif Intell 2023;5(5):e230024.
.. [2] Cristy M. Active bone marrow distribution as a function of age in humans.
   Phys Med Biol 1981;26(3):389-400.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any

import numpy as np

from lamp.errors import LampError

__all__ = [
    "AnatomyError",
    "GROUP_MAP_RESOURCE",
    "N_TOTAL_CLASSES",
    "N_GROUPS",
    "TOTAL_CLASSES",
    "TOTAL_IDS",
    "GROUPS",
    "GROUP_OF_TOTAL",
    "VERTEBRAE_C",
    "VERTEBRAE_T",
    "VERTEBRAE_L",
    "RIBS_LEFT",
    "RIBS_RIGHT",
    "LUNG_LEFT",
    "LUNG_RIGHT",
    "MARROW_BONES",
    "MARROW_GROUPS",
    "merge_to_groups",
    "groups_present",
    "group_id",
]

#: Package-relative location of the 117 -> 71 mapping (inside the ``lamp`` package).
GROUP_MAP_RESOURCE = "data/totalseg_total_117_to_71.json"
#: Number of TotalSegmentator 'total' classes (ids 1..117, background 0 excluded).
N_TOTAL_CLASSES = 117
#: Number of merged anatomical groups (ids 1..71, background 0 excluded).
N_GROUPS = 71

# Voxels per bincount chunk in groups_present: bincount casts to intp (8 bytes per voxel),
# so a whole-body volume at once would need gigabytes; 4 Mi voxels keeps it at 32 MiB.
_CHUNK_VOXELS = 1 << 22
# How many offending values an error message lists before it says "...".
_MAX_SHOWN = 10


class AnatomyError(LampError):
    """An anatomical label volume, group name or the packaged label mapping is invalid."""


# --------------------------------------------------------------------------------------
# Loading and checking the packaged mapping
# --------------------------------------------------------------------------------------


def _parse_group_map(
    data: Mapping[str, Any], source: str
) -> tuple[dict[int, str], tuple[str, ...], tuple[tuple[int, ...], ...]]:
    """Check the 117 -> 71 mapping and return ``(total_classes, groups, members)``.

    Parameters
    ----------
    data : mapping
        The decoded JSON: ``{"groups": [{"id", "name", "total_ids", "total_names"}, ...]}``.
    source : str
        Where ``data`` came from, for error messages.

    Returns
    -------
    total_classes : dict of int to str
        Total id (1..117) -> TotalSegmentator class name, in id order.
    groups : tuple of str, length 71
        Group names in group-id order.
    members : tuple of tuple of int, length 71
        The total ids of each group, in group-id order.

    Raises
    ------
    AnatomyError
        If the file does not describe exactly 71 groups with ids 1..71 that together hold
        every total id 1..117 exactly once, each with a unique name.
    """
    groups = data.get("groups") if isinstance(data, Mapping) else None
    if not isinstance(groups, list):
        raise AnatomyError(f"{source}: field 'groups' must be a list of objects; got {groups!r}")
    if len(groups) != N_GROUPS:
        raise AnatomyError(
            f"{source}: field 'groups' must hold exactly {N_GROUPS} groups; got {len(groups)}"
        )

    total_classes: dict[int, str] = {}
    names: list[str] = []
    members: list[tuple[int, ...]] = []
    for position, group in enumerate(groups, start=1):
        if not isinstance(group, Mapping):
            raise AnatomyError(f"{source}: groups[{position - 1}] must be an object; got {group!r}")
        missing = [k for k in ("id", "name", "total_ids", "total_names") if k not in group]
        if missing:
            raise AnatomyError(
                f"{source}: groups[{position - 1}] lacks the field(s) {missing}; "
                "expected 'id', 'name', 'total_ids' and 'total_names'"
            )
        gid, name = group["id"], group["name"]
        if gid != position:
            raise AnatomyError(
                f"{source}: group ids must run 1..{N_GROUPS} in order; "
                f"groups[{position - 1}] has field 'id' = {gid!r}, expected {position}"
            )
        if not isinstance(name, str) or not name:
            raise AnatomyError(f"{source}: group {gid} field 'name' must be a non-empty string")
        if name in names:
            raise AnatomyError(f"{source}: group name {name!r} appears more than once")
        ids, id_names = list(group["total_ids"]), list(group["total_names"])
        if not ids or len(ids) != len(id_names):
            raise AnatomyError(
                f"{source}: group {name!r} must list as many 'total_names' as 'total_ids' "
                f"(at least one); got {len(ids)} ids and {len(id_names)} names"
            )
        for tid, tname in zip(ids, id_names, strict=True):
            if isinstance(tid, bool) or not isinstance(tid, int) or not 1 <= tid <= N_TOTAL_CLASSES:
                raise AnatomyError(
                    f"{source}: group {name!r} field 'total_ids' must hold integers in "
                    f"1..{N_TOTAL_CLASSES}; got {tid!r}"
                )
            if tid in total_classes:
                raise AnatomyError(
                    f"{source}: total id {tid} ({tname!r}) is listed in more than one group; "
                    "every total id must belong to exactly one group"
                )
            total_classes[tid] = str(tname)
        names.append(name)
        members.append(tuple(ids))

    missing_ids = sorted(set(range(1, N_TOTAL_CLASSES + 1)) - set(total_classes))
    if missing_ids:
        raise AnatomyError(
            f"{source}: every total id 1..{N_TOTAL_CLASSES} must belong to a group; "
            f"missing {missing_ids}"
        )
    if len(set(total_classes.values())) != N_TOTAL_CLASSES:
        raise AnatomyError(f"{source}: the {N_TOTAL_CLASSES} total class names must be unique")
    return dict(sorted(total_classes.items())), tuple(names), tuple(members)


def _load_group_map() -> tuple[dict[int, str], tuple[str, ...], tuple[tuple[int, ...], ...]]:
    resource = resources.files("lamp")
    for part in GROUP_MAP_RESOURCE.split("/"):
        resource = resource / part
    with resource.open("r", encoding="utf-8") as fh:
        data = json.load(fh)
    return _parse_group_map(data, f"lamp/{GROUP_MAP_RESOURCE}")


_TOTAL_CLASSES, _GROUPS, _MEMBERS = _load_group_map()

#: TotalSegmentator 'total' class id (1..117) -> class name, in id order.
TOTAL_CLASSES: dict[int, str] = _TOTAL_CLASSES
#: TotalSegmentator 'total' class name -> id (1..117); the inverse of ``TOTAL_CLASSES``.
TOTAL_IDS: dict[str, int] = {name: tid for tid, name in TOTAL_CLASSES.items()}
#: The 71 group names in group-id order: ``GROUPS[g - 1]`` is the name of group id ``g``.
GROUPS: tuple[str, ...] = _GROUPS


def _build_lookup() -> np.ndarray:
    lookup = np.zeros(N_TOTAL_CLASSES + 1, dtype=np.uint8)
    for gid, ids in enumerate(_MEMBERS, start=1):
        lookup[list(ids)] = gid
    lookup.setflags(write=False)
    return lookup


#: ndarray, shape (118,), uint8, read-only: ``GROUP_OF_TOTAL[t]`` is the group id (1..71)
#: of total id ``t`` (1..117); ``GROUP_OF_TOTAL[0] == 0`` keeps the background.
GROUP_OF_TOTAL: np.ndarray = _build_lookup()


# --------------------------------------------------------------------------------------
# Anatomical convenience sets (TotalSegmentator 'total' class names)
# --------------------------------------------------------------------------------------


def _levelled(pattern: str, expected: int) -> tuple[str, ...]:
    """Total names matching ``pattern`` (one integer group), ordered by that integer."""
    regex = re.compile(pattern)
    found = [(int(m.group(1)), n) for n in TOTAL_CLASSES.values() if (m := regex.fullmatch(n))]
    if len(found) != expected:
        raise AnatomyError(
            f"lamp/{GROUP_MAP_RESOURCE}: expected {expected} total classes matching "
            f"{pattern!r}; found {len(found)}"
        )
    return tuple(name for _, name in sorted(found))


#: Cervical vertebrae, cranial to caudal (``vertebrae_C1`` .. ``vertebrae_C7``).
VERTEBRAE_C: tuple[str, ...] = _levelled(r"vertebrae_C(\d+)", 7)
#: Thoracic vertebrae, cranial to caudal (``vertebrae_T1`` .. ``vertebrae_T12``).
VERTEBRAE_T: tuple[str, ...] = _levelled(r"vertebrae_T(\d+)", 12)
#: Lumbar vertebrae, cranial to caudal (``vertebrae_L1`` .. ``vertebrae_L5``).
VERTEBRAE_L: tuple[str, ...] = _levelled(r"vertebrae_L(\d+)", 5)
#: Left ribs 1..12, cranial to caudal.
RIBS_LEFT: tuple[str, ...] = _levelled(r"rib_left_(\d+)", 12)
#: Right ribs 1..12, cranial to caudal.
RIBS_RIGHT: tuple[str, ...] = _levelled(r"rib_right_(\d+)", 12)
#: Left lung lobes (upper, lower), as listed in the ``lung_left`` group.
LUNG_LEFT: tuple[str, ...] = tuple(TOTAL_CLASSES[t] for t in _MEMBERS[GROUPS.index("lung_left")])
#: Right lung lobes (upper, middle, lower), as listed in the ``lung_right`` group.
LUNG_RIGHT: tuple[str, ...] = tuple(TOTAL_CLASSES[t] for t in _MEMBERS[GROUPS.index("lung_right")])

#: TotalSegmentator names of the bones that carry red (haematopoietic) marrow in adults
#: (Cristy 1981 [2]_): all vertebrae including S1, sacrum, hips, sternum, ribs, skull,
#: scapulae, clavicles, femurs and humeri. TotalSegmentator segments the whole femur and
#: humerus, while adult red marrow lies only in their proximal parts: a caller that places
#: marrow (the synthetic phantom) or measures it must restrict those two bones itself.
#: Costal cartilages carry no marrow and are not included.
MARROW_BONES: tuple[str, ...] = (
    *VERTEBRAE_C,
    *VERTEBRAE_T,
    *VERTEBRAE_L,
    "vertebrae_S1",
    "sacrum",
    "hip_left",
    "hip_right",
    "sternum",
    *RIBS_LEFT,
    *RIBS_RIGHT,
    "femur_left",
    "femur_right",
    "humerus_left",
    "humerus_right",
    "scapula_left",
    "scapula_right",
    "clavicula_left",
    "clavicula_right",
    "skull",
)
_unknown_marrow = [n for n in MARROW_BONES if n not in TOTAL_IDS]
if _unknown_marrow:  # pragma: no cover - guards a future edit of the JSON or of this list
    raise AnatomyError(f"MARROW_BONES names absent from the total label map: {_unknown_marrow}")

#: The merged group names (of ``GROUPS``) that hold the ``MARROW_BONES``, in group-id order.
MARROW_GROUPS: tuple[str, ...] = tuple(
    GROUPS[g - 1] for g in sorted({int(GROUP_OF_TOTAL[TOTAL_IDS[n]]) for n in MARROW_BONES})
)


# --------------------------------------------------------------------------------------
# Label volumes
# --------------------------------------------------------------------------------------


def _show(values: np.ndarray) -> str:
    """Up to ``_MAX_SHOWN`` distinct values of ``values`` as a short list."""
    distinct = np.unique(values)
    shown = ", ".join(f"{v:g}" for v in distinct[:_MAX_SHOWN].tolist())
    more = f", ... ({distinct.size} distinct)" if distinct.size > _MAX_SHOWN else ""
    return f"[{shown}{more}]"


def _check_label_array(labels: Any, max_id: int, field: str, kind: str) -> np.ndarray:
    """Return ``labels`` as an array of whole numbers in ``0..max_id``, or raise.

    Integer arrays pass as they are. Float arrays (``nibabel``'s ``get_fdata``) are accepted
    when every value is a whole number and come back as ``uint8`` (``max_id`` < 256).
    """
    arr = np.asarray(labels)
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iuf":
        raise AnatomyError(
            f"{field} must be an integer array of {kind} ids (0 = background); "
            f"got dtype {arr.dtype}"
        )
    if arr.size == 0:
        return arr
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            raise AnatomyError(
                f"{field} must hold whole-number {kind} ids; got non-integer values "
                f"{_show(arr[bad])}"
            )
    lo, hi = arr.min(), arr.max()
    if lo < 0 or hi > max_id:
        offending = arr[(arr < 0) | (arr > max_id)]
        hint = ""
        if kind == "group" and hi <= N_TOTAL_CLASSES and lo >= 0:
            hint = (
                "; these look like TotalSegmentator 'total' ids: "
                "merge them with merge_to_groups() first"
            )
        raise AnatomyError(
            f"{field} must hold {kind} ids in 0..{max_id}; got out-of-range values "
            f"{_show(offending)}{hint}"
        )
    if arr.dtype.kind == "f":
        arr = arr.astype(np.uint8)
    return arr


def merge_to_groups(labels: np.ndarray) -> np.ndarray:
    """Map TotalSegmentator 'total' ids to the 71 merged group ids.

    Parameters
    ----------
    labels : ndarray of int, any shape (typically (z, y, x))
        TotalSegmentator 'total' label ids, 0 (background) .. 117. Float arrays are accepted
        when every value is a whole number (as ``nibabel``'s ``get_fdata`` returns them).

    Returns
    -------
    groups : ndarray of uint8, same shape as ``labels``
        Group ids 0 (background) .. 71; group id ``g`` is ``GROUPS[g - 1]``.

    Raises
    ------
    AnatomyError
        If ``labels`` is not an integer (or whole-number float) array, or holds an id
        outside 0..117; the message lists the offending values.

    Examples
    --------
    >>> merge_to_groups(np.array([0, TOTAL_IDS["rib_left_3"], TOTAL_IDS["spleen"]]))
    array([ 0, 68,  1], dtype=uint8)
    """
    arr = _check_label_array(labels, N_TOTAL_CLASSES, "labels", "TotalSegmentator 'total'")
    if arr.size == 0:
        return np.zeros(arr.shape, dtype=np.uint8)
    # Indexing with the array's own integer dtype avoids an 8-byte intp copy of the volume.
    return np.asarray(GROUP_OF_TOTAL[arr], dtype=np.uint8)


def groups_present(labels_or_groups: np.ndarray, min_voxels: int = 1) -> np.ndarray:
    """Which of the 71 groups occupy at least ``min_voxels`` voxels of a merged label map.

    Parameters
    ----------
    labels_or_groups : ndarray of int, any shape (typically (z, y, x))
        A merged group label map, ids 0 (background) .. 71, as returned by
        `merge_to_groups`. Raw TotalSegmentator 'total' ids are not accepted: ids above 71
        raise an error (they would otherwise be read as the wrong groups), and a 'total' map
        that happens to hold only ids <= 71 cannot be told apart - merge it first.
    min_voxels : int, default 1
        Minimum number of voxels for a group to count as present (>= 1).

    Returns
    -------
    present : ndarray of bool, shape (71,)
        ``present[g - 1]`` is True when group id ``g`` (``GROUPS[g - 1]``) has at least
        ``min_voxels`` voxels. This is the organ mask of the LACF attention (paper §2.2).

    Raises
    ------
    AnatomyError
        If the map is not an integer array, holds ids outside 0..71, or ``min_voxels`` is
        not an integer >= 1.
    """
    if isinstance(min_voxels, bool) or not isinstance(min_voxels, int | np.integer):
        raise AnatomyError(f"min_voxels must be an integer >= 1; got {min_voxels!r}")
    if min_voxels < 1:
        raise AnatomyError(f"min_voxels must be an integer >= 1; got {min_voxels}")
    arr = _check_label_array(labels_or_groups, N_GROUPS, "labels_or_groups", "group")
    counts = np.zeros(N_GROUPS + 1, dtype=np.int64)
    flat = arr.reshape(-1)
    for start in range(0, flat.size, _CHUNK_VOXELS):
        counts += np.bincount(flat[start : start + _CHUNK_VOXELS], minlength=N_GROUPS + 1)
    return counts[1:] >= min_voxels


def group_id(name: str) -> int:
    """The group id (1..71) of a merged group name.

    Parameters
    ----------
    name : str
        One of `GROUPS`, e.g. ``"rib_left"`` or ``"vertebrae_T"``.

    Returns
    -------
    int
        The group id; ``GROUPS[group_id(name) - 1] == name``.

    Raises
    ------
    AnatomyError
        If ``name`` is not a group name; the message suggests close names and says whether
        ``name`` is a TotalSegmentator 'total' class (whose group is then named).
    """
    try:
        return GROUPS.index(name) + 1
    except ValueError:
        pass
    hint = ""
    if name in TOTAL_IDS:
        merged = GROUPS[int(GROUP_OF_TOTAL[TOTAL_IDS[name]]) - 1]
        hint = f"; {name!r} is a TotalSegmentator 'total' class, merged into group {merged!r}"
    else:
        close = difflib.get_close_matches(str(name), GROUPS, n=3)
        if close:
            hint = f"; did you mean {', '.join(map(repr, close))}?"
    raise AnatomyError(
        f"name must be one of the {N_GROUPS} group names in lamp.anatomy.GROUPS; got {name!r}{hint}"
    )
