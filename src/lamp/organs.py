"""Organ masks for the prognosis stage: TotalSegmentator's 'total' map and its 71 groups.

The prognosis model describes the anatomy of a scan with one feature vector per merged
organ group (paper §2.2, Eq. 2) and lets every lesion attend to the organs present (LACF).
Organ masks enter as TotalSegmentator's [1]_ ``total`` label map (v2: 117 classes, ids
1..117, 0 = background), on the PET grid of the patient:

* `load_organs` reads one multilabel file (TotalSegmentator's ``--ml`` output) or a folder
  of per-class masks, checks that it is the ``total`` map (ids 0..117 only) and that it
  lies on the reference grid - or resamples it there with nearest neighbour on request.
* `read_totalseg_folder` combines the per-class output (one ``<class_name>.nii.gz`` per
  class, TotalSegmentator's default without ``--ml``) into one ``total`` label map.
* `organ_groups` merges the 117 classes into the 71 groups of `lamp.anatomy` and says
  which groups are present.
* `run_totalsegmentator` runs TotalSegmentator where the package *and its weights* are
  already installed. It never downloads anything and switches TotalSegmentator's usage
  statistics off; everywhere else it explains how to supply the masks instead. It is the
  only place in LAMP that imports ``totalsegmentator``, and only when called: the package
  is not a dependency of LAMP. `check_totalsegmentator` checks the installation alone.
* `segment_cohort_organs` runs it over a cohort (``lamp organs``): for every patient
  without ``cases/<patient_id>/organs.nii.gz``, TotalSegmentator on the CT, the result
  checked to be the 'total' map and resampled onto the PET grid, written atomically;
  resumable, one failing patient does not stop the others. `check_cohort_organs`
  (``lamp organs --check``) lists missing masks, masks off the PET grid and how many
  patients have each of the 71 groups absent.

Absent organs. An organ can be missing from a scan (outside the field of view, resected,
not found). It is then *absent*: its flag in ``present`` is False and its group id occurs
nowhere in the group map, so it has no voxel to pool. Absence is always carried by that
flag, never by a value alone: `lamp.features` stores a row of zeros as the pooled feature
of an absent group *together with* ``organ_present = False``, and the LACF attention masks
those organs out (a zero row rather than NaN, because a NaN value row would poison the
attention output even with a zero weight). A consumer must read ``present`` before it
reads a per-organ value.

References
----------
.. [1] Wasserthal J, Breit H-C, Meyer MT, et al. TotalSegmentator: robust segmentation of
   104 anatomic structures in CT images. Radiol Artif Intell 2023;5(5):e230024.
   https://github.com/wasserth/TotalSegmentator
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import json
import os
import shutil
import tempfile
import textwrap
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from numpy.typing import ArrayLike

from lamp.anatomy import (
    GROUPS,
    N_GROUPS,
    N_TOTAL_CLASSES,
    TOTAL_IDS,
    groups_present,
    merge_to_groups,
)
from lamp.cohort import case_path, check_patient_id, read_clinical, write_text_atomic
from lamp.errors import LampError
from lamp.images import (
    load_nifti,
    overlap_fraction,
    resample_to_grid,
    same_grid,
    save_nifti,
)

__all__ = [
    "TOTALSEG_DATASETS",
    "OrganError",
    "TotalSegmentatorUnavailable",
    "load_organs",
    "organ_groups",
    "read_totalseg_folder",
    "totalseg_home_dir",
    "totalseg_weights_dir",
    "run_totalsegmentator",
    "check_totalsegmentator",
    "supply_masks_help",
    "OrganRun",
    "OrganCheck",
    "ORGANS_LOG_DIR",
    "segment_case_organs",
    "segment_cohort_organs",
    "check_cohort_organs",
]

#: nnU-Net dataset ids of TotalSegmentator v2's 'total' task: the 1.5 mm model is split in
#: five parts (291-295); ``--fast`` uses the single 3 mm model (297).
TOTALSEG_DATASETS: dict[str, tuple[int, ...]] = {
    "total": (291, 292, 293, 294, 295),
    "total_fast": (297,),
}

_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_DEVICES = ("cpu", "cuda", "gpu", "mps")
# Distinct offending values / names an error message lists.
_MAX_SHOWN = 20
# The weights check stops after this many files per dataset folder (a full folder holds
# a handful; this only bounds a walk through a mistaken, huge directory).
_MAX_WALK = 10_000

_SUPPLY_MASKS = (
    "LAMP does not need TotalSegmentator itself: supply the organ masks. Run TotalSegmentator "
    "v2 (task 'total', 117 classes) wherever it is installed with its weights, e.g. "
    "`TotalSegmentator -i ct.nii.gz -o organs.nii.gz --ml`, then either put that file (or the "
    "folder of per-class masks <class_name>.nii.gz that TotalSegmentator writes without --ml) "
    "beside the patient's PET and CT in the input of `lamp ingest` "
    "(INPUT/<patient_id>/organs.nii.gz), which moves it onto the PET grid with nearest "
    "neighbour, or copy a mask that is already on the PET grid to "
    "cases/<patient_id>/organs.nii.gz of the cohort (`lamp organs --check` lists masks off "
    "the grid; lamp.organs.load_organs(path, pet_grid, resample=True) resamples one). LAMP "
    "never downloads weights."
)


class OrganError(LampError):
    """An organ mask file or folder, or the TotalSegmentator set-up, is not usable."""


class TotalSegmentatorUnavailable(OrganError):
    """TotalSegmentator v2 or the weights of its 'total' task are not installed here.

    Raised by `check_totalsegmentator` before anything runs; the message says what to
    install, where the weights must be and how to supply the organ masks instead.
    ``reason`` holds the first part alone (what is missing), for callers that explain
    the rest themselves (`supply_masks_help`).
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


# --------------------------------------------------------------------------------------
# Checking helpers
# --------------------------------------------------------------------------------------


def _show(values: np.ndarray) -> str:
    distinct = np.unique(values)
    shown = ", ".join(f"{v:g}" for v in distinct[:_MAX_SHOWN].tolist())
    more = f", ... ({distinct.size} distinct)" if distinct.size > _MAX_SHOWN else ""
    return f"[{shown}{more}]"


def _total_ids(data: np.ndarray, source: str) -> np.ndarray:
    """The voxel values as uint8 'total' ids, or an error naming ``source`` and bad ids."""
    if data.dtype == np.bool_ or data.dtype.kind not in "iuf":
        raise OrganError(
            f"{source}: expected TotalSegmentator 'total' ids (integers 0..{N_TOTAL_CLASSES}), "
            f"got dtype {data.dtype}"
        )
    if data.dtype.kind == "f":
        fraction = data != np.round(data)
        if fraction.any():
            raise OrganError(
                f"{source}: expected whole-number TotalSegmentator 'total' ids, got "
                f"non-integer values {_show(data[fraction])}"
            )
    if data.size:
        bad = (data < 0) | (data > N_TOTAL_CLASSES)
        if bad.any():
            raise OrganError(
                f"{source}: not TotalSegmentator's 'total' label map (ids 0..{N_TOTAL_CLASSES}"
                f"); found id(s) {_show(data[bad])}. Use the output of the 'total' task "
                "(TotalSegmentator v2, --ml), or its folder of per-class masks"
            )
    return data.astype(np.uint8, copy=False)


def _reference(reference_grid: Any) -> tuple[tuple[int, int, int], np.ndarray]:
    try:
        shape, affine = reference_grid
        shape = tuple(int(n) for n in shape)
        affine = np.asarray(affine, dtype=np.float64)
    except (TypeError, ValueError):
        raise OrganError(
            f"reference_grid: expected (shape, affine) with a 3-tuple shape and a 4x4 affine, "
            f"got {reference_grid!r}"
        ) from None
    if len(shape) != 3 or affine.shape != (4, 4):
        raise OrganError(
            f"reference_grid: expected (shape, affine) with a 3-tuple shape and a 4x4 affine, "
            f"got shape {shape} and affine of shape {affine.shape}"
        )
    return shape, affine  # type: ignore[return-value]


def _on_grid(
    labels: np.ndarray,
    affine: np.ndarray,
    reference_grid: Any,
    resample: bool,
    source: str,
) -> np.ndarray:
    """``labels`` on the reference grid: checked, or resampled with nearest neighbour."""
    if reference_grid is None:
        return labels
    shape, ref_affine = _reference(reference_grid)
    if same_grid(labels.shape, affine, shape, ref_affine):
        return labels
    if not resample:
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        ref_spacing = np.linalg.norm(ref_affine[:3, :3], axis=0)
        raise OrganError(
            f"{source}: the organ mask is not on the reference (PET) grid: shape "
            f"{labels.shape}, spacing {np.round(spacing, 3).tolist()} mm, origin "
            f"{np.round(affine[:3, 3], 2).tolist()} mm; expected shape {shape}, spacing "
            f"{np.round(ref_spacing, 3).tolist()} mm, origin "
            f"{np.round(ref_affine[:3, 3], 2).tolist()} mm. Pass resample=True to resample "
            "it with nearest neighbour through physical space"
        )
    # nearest neighbour keeps labels labels; outside the mask's field of view is background
    return resample_to_grid(labels, affine, shape, ref_affine, order=0, fill=0)


def _stem(path: Path) -> str:
    for suffix in _NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.name


# --------------------------------------------------------------------------------------
# Reading organ masks
# --------------------------------------------------------------------------------------


def load_organs(
    path: str | Path,
    reference_grid: tuple[tuple[int, int, int], ArrayLike] | None = None,
    *,
    resample: bool = False,
) -> np.ndarray:
    """Read TotalSegmentator 'total' organ masks and put them on the reference grid.

    Parameters
    ----------
    path : str or Path
        A multilabel NIfTI file (``TotalSegmentator --ml``; e.g.
        ``cases/<patient_id>/organs.nii.gz``) or a folder of per-class masks (see
        `read_totalseg_folder`).
    reference_grid : (shape, affine), optional
        The grid the masks must lie on, normally the patient's PET grid: ``shape`` a
        3-tuple, ``affine`` (4, 4) voxel index -> RAS+ mm. None skips the check.
    resample : bool, default False, keyword-only
        Masks on another grid are an error unless True; then they are resampled onto the
        reference grid with nearest neighbour through physical space (voxels outside the
        masks' field of view become background).

    Returns
    -------
    ndarray of uint8, shape (i, j, k)
        'total' ids 0..117 (0 = background), on the reference grid when one is given.

    Raises
    ------
    OrganError
        Ids outside 0..117 or non-integer values (the message names the file and the
        offending ids), a mask off the reference grid without ``resample``, a bad
        ``reference_grid``.
    CohortError
        A missing or unreadable file (from `lamp.images.load_nifti`).
    """
    path = Path(path)
    if path.is_dir():
        return read_totalseg_folder(path, reference_grid, resample=resample)
    data, affine = load_nifti(path)
    labels = _total_ids(data, str(path))
    return _on_grid(labels, affine, reference_grid, resample, str(path))


def read_totalseg_folder(
    folder: str | Path,
    reference_grid: tuple[tuple[int, int, int], ArrayLike] | None = None,
    *,
    resample: bool = False,
) -> np.ndarray:
    """Combine TotalSegmentator's per-class masks into one 'total' label map.

    Without ``--ml``, TotalSegmentator writes one binary mask per class into a folder,
    named ``<class_name>.nii.gz`` (``liver.nii.gz``, ``rib_left_3.nii.gz``, ...). Each
    mask's voxels get the class's 'total' id (`lamp.anatomy.TOTAL_IDS`). Classes without
    a file are simply absent (e.g. a ``--roi_subset`` run). Files that are not NIfTI
    (``statistics.json``) are ignored.

    Parameters
    ----------
    folder : str or Path
        The folder of per-class masks.
    reference_grid : (shape, affine), optional
        As in `load_organs`.
    resample : bool, default False, keyword-only
        As in `load_organs`.

    Returns
    -------
    ndarray of uint8, shape (i, j, k)
        'total' ids 0..117. Where masks overlap, the higher id wins (masks of one
        TotalSegmentator run never overlap; a `UserWarning` says how many voxels did).

    Raises
    ------
    OrganError
        Not a folder, no NIfTI file in it, file names that are not 'total' class names
        (all listed, with the closest known name), a class given twice, a mask that is
        not binary, masks on different grids, or the grid errors of `load_organs`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise OrganError(f"{folder}: expected a folder of per-class organ masks, not found")
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.name.endswith(_NIFTI_SUFFIXES) and not p.name.startswith(".")
    )
    if not files:
        raise OrganError(
            f"{folder}: no NIfTI masks found; expected TotalSegmentator's per-class output "
            "(<class_name>.nii.gz, one per class)"
        )
    by_class: dict[str, Path] = {}
    unknown: list[str] = []
    for f in files:
        name = _stem(f)
        if name not in TOTAL_IDS:
            close = difflib.get_close_matches(name, list(TOTAL_IDS), n=1)
            unknown.append(f"{f.name}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        elif name in by_class:
            raise OrganError(
                f"{folder}: class {name!r} is given twice ({by_class[name].name} and {f.name})"
            )
        else:
            by_class[name] = f
    if unknown:
        raise OrganError(
            f"{folder}: {len(unknown)} file(s) are not TotalSegmentator 'total' class masks: "
            f"{', '.join(unknown)}. Expected one <class_name>.nii.gz per class of the 'total' "
            "task (TotalSegmentator v2, 117 classes); move other files out of the folder"
        )

    labels: np.ndarray | None = None
    grid: tuple[tuple[int, ...], np.ndarray, Path] | None = None
    overlap = 0
    # ascending ids, so that the higher id wins where masks overlap
    for name in sorted(by_class, key=TOTAL_IDS.__getitem__):
        f = by_class[name]
        data, affine = load_nifti(f)
        bad = ~((data == 0) | (data == 1))
        if bad.any():
            raise OrganError(
                f"{f}: expected a binary mask (0/1) of class {name!r}, got values "
                f"{_show(data[bad])}"
            )
        if grid is None:
            grid = (data.shape, affine, f)
            labels = np.zeros(data.shape, dtype=np.uint8)
        elif not same_grid(data.shape, affine, grid[0], grid[1]):
            raise OrganError(
                f"{f}: not on the grid of {grid[2].name} (shape {data.shape} vs {grid[0]}, "
                "or a different affine); all per-class masks of one scan share one grid"
            )
        assert labels is not None
        inside = data == 1
        overlap += int(np.count_nonzero(labels[inside]))
        labels[inside] = TOTAL_IDS[name]
    assert labels is not None and grid is not None
    if overlap:
        warnings.warn(
            f"{folder}: {overlap} voxel(s) belong to more than one class mask; the higher "
            "'total' id was kept. Masks of one TotalSegmentator run do not overlap: check "
            "that the folder holds the masks of a single run",
            UserWarning,
            stacklevel=2,
        )
    return _on_grid(labels, grid[1], reference_grid, resample, str(folder))


# --------------------------------------------------------------------------------------
# The 71 groups
# --------------------------------------------------------------------------------------


def organ_groups(total_labels: ArrayLike, min_voxels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Merge 'total' ids into the 71 organ groups and flag which groups are present.

    Parameters
    ----------
    total_labels : array_like of int, shape (i, j, k)
        TotalSegmentator 'total' ids 0..117 (as returned by `load_organs`).
    min_voxels : int, default 1
        A group with fewer voxels counts as absent, and its voxels are cleared from the
        returned map, so that the map and the flags never disagree. Raise it to keep a
        sliver of an organ at the edge of the field of view from producing a pooled
        feature from a handful of voxels.

    Returns
    -------
    groups : ndarray of uint8, shape (i, j, k)
        Group ids 0..71 (0 = background; id ``g`` is ``lamp.anatomy.GROUPS[g - 1]``).
    present : ndarray of bool, shape (71,)
        ``present[g - 1]`` is True when group ``g`` has at least ``min_voxels`` voxels in
        ``groups``. An absent group has no voxel in ``groups``; any per-organ value of it
        is meaningless without this flag (see the module docstring).

    Raises
    ------
    AnatomyError
        Ids outside 0..117 or a bad ``min_voxels`` (from `lamp.anatomy`).
    """
    groups = merge_to_groups(np.asarray(total_labels))
    present = groups_present(groups, min_voxels=min_voxels)
    if min_voxels > 1 and not present.all():
        # groups below the threshold keep no voxel, or pooling would use them anyway
        lut = np.arange(N_GROUPS + 1, dtype=np.uint8)
        lut[1:][~present] = 0
        groups = lut[groups]
    return groups, present


# --------------------------------------------------------------------------------------
# The optional TotalSegmentator runner
# --------------------------------------------------------------------------------------


def totalseg_home_dir() -> Path:
    """TotalSegmentator's own folder (its ``config.json``, by default its weights).

    Mirrors TotalSegmentator's lookup so that LAMP checks the folder TotalSegmentator will
    use: ``$TOTALSEG_HOME_DIR`` if set, else ``~/.totalsegmentator`` (``/tmp`` in place of
    a home of ``/``, as in containers). These variables belong to TotalSegmentator; LAMP
    reads them only to find its installation.
    """
    if "TOTALSEG_HOME_DIR" in os.environ:
        return Path(os.environ["TOTALSEG_HOME_DIR"])
    home = Path.home()
    return (Path("/tmp") if str(home) == "/" else home) / ".totalsegmentator"


def totalseg_weights_dir() -> Path:
    """Where TotalSegmentator looks for its nnU-Net weights.

    ``$TOTALSEG_WEIGHTS_PATH`` if set, else ``totalseg_home_dir() / "nnunet/results"``;
    each model is a folder ``Dataset<id>_<name>/`` in it holding ``checkpoint_final.pth``.
    """
    if "TOTALSEG_WEIGHTS_PATH" in os.environ:
        return Path(os.environ["TOTALSEG_WEIGHTS_PATH"])
    return totalseg_home_dir() / "nnunet" / "results"


def _dataset_installed(weights_dir: Path, dataset_id: int) -> bool:
    if not weights_dir.is_dir():
        return False
    for folder in weights_dir.glob(f"Dataset{dataset_id:03d}_*"):
        if not folder.is_dir():
            continue
        for n, f in enumerate(folder.rglob("checkpoint_final.pth")):
            if f.is_file() and f.stat().st_size > 0:
                return True
            if n > _MAX_WALK:
                break
    return False


def _totalseg_version() -> str | None:
    """The installed TotalSegmentator distribution's version, None if unknown."""
    for dist in ("TotalSegmentator", "totalsegmentator"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _switch_off_usage_statistics(home: Path) -> None:
    """Set ``send_usage_stats: false`` in TotalSegmentator's ``config.json``.

    TotalSegmentator sends anonymous usage statistics after every prediction unless its
    config file says otherwise; its documentation names this key as the way to disable
    them. A missing file is created with the keys TotalSegmentator reads, so that it does
    not create its own with statistics switched on.
    """
    config_file = home / "config.json"
    config: dict[str, Any] = {}
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise OrganError(
                f"{config_file}: TotalSegmentator's config file is unreadable ({exc}); fix or "
                "remove it so that LAMP can switch the usage statistics off"
            ) from None
        if not isinstance(config, dict):
            raise OrganError(f"{config_file}: expected a JSON object, got {type(config).__name__}")
    config.setdefault("totalseg_id", "totalseg_lamp_offline")
    config.setdefault("prediction_counter", 0)
    config["send_usage_stats"] = False
    # the notice that statistics are sent is moot once they are off
    config["statistics_disclaimer_shown"] = True
    try:
        write_text_atomic(config_file, json.dumps(config, indent=4))
    except OSError as exc:
        raise OrganError(
            f"{config_file}: cannot write TotalSegmentator's config to switch its usage "
            f"statistics off ({exc}); LAMP does not run it with statistics on. {_SUPPLY_MASKS}"
        ) from None


@contextlib.contextmanager
def _weights_env(weights_dir: Path | None) -> Iterator[None]:
    """Point TotalSegmentator at ``weights_dir`` for one call, then restore the variable."""
    if weights_dir is None:
        yield
        return
    old = os.environ.get("TOTALSEG_WEIGHTS_PATH")
    os.environ["TOTALSEG_WEIGHTS_PATH"] = str(weights_dir)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TOTALSEG_WEIGHTS_PATH", None)
        else:
            os.environ["TOTALSEG_WEIGHTS_PATH"] = old


def _weights_install_hint(fast: bool, wdir: Path) -> str:
    datasets = ", ".join(
        f"Dataset{d}_*" for d in TOTALSEG_DATASETS["total_fast" if fast else "total"]
    )
    return (
        f"the weights of its 'total' task ({datasets}, each with checkpoint_final.pth) must be "
        f"in {wdir} (TotalSegmentator's weights folder: $TOTALSEG_WEIGHTS_PATH, else "
        "$TOTALSEG_HOME_DIR/nnunet/results, else ~/.totalsegmentator/nnunet/results)"
    )


def check_totalsegmentator(fast: bool = False, *, weights_dir: str | Path | None = None) -> Path:
    """Check that TotalSegmentator v2 and the weights of its 'total' task are installed.

    Runs nothing and downloads nothing: it imports ``totalsegmentator`` (only here and in
    `run_totalsegmentator`), reads its version and looks for the nnU-Net checkpoints of the
    'total' task (datasets 291-295, or 297 with ``fast``). `run_totalsegmentator` calls it
    before every run; a cohort run calls it once before touching any patient.

    Parameters
    ----------
    fast : bool, default False
        Check the weights of TotalSegmentator's 3 mm model instead.
    weights_dir : str or Path, optional, keyword-only
        Folder holding the ``Dataset<id>_*`` weight folders; default `totalseg_weights_dir`.

    Returns
    -------
    Path
        The weights folder that was checked.

    Raises
    ------
    TotalSegmentatorUnavailable
        An `OrganError`: TotalSegmentator missing or older than v2, or its weights
        missing. The message says what to install, where the weights must be, and how to
        supply the masks instead.
    """
    wdir = Path(weights_dir) if weights_dir is not None else totalseg_weights_dir()
    try:
        importlib.import_module("totalsegmentator")
    except ImportError as exc:
        reason = f"TotalSegmentator is not installed ({exc})."
        raise TotalSegmentatorUnavailable(
            f"{reason} To let LAMP run it, install TotalSegmentator v2 (`pip install "
            "'TotalSegmentator>=2'`, which brings nnU-Net and PyTorch); "
            f"{_weights_install_hint(fast, wdir)}. {_SUPPLY_MASKS}",
            reason,
        ) from None
    version = _totalseg_version()
    major = version.split(".")[0] if version else ""
    if not major.isdigit() or int(major) < 2:
        reason = (
            f"TotalSegmentator {version or '(unknown version)'} is installed; LAMP needs v2 "
            f"or later, whose 'total' task has the {N_TOTAL_CLASSES} classes LAMP maps "
            "(v1 had 104, with other ids)."
        )
        raise TotalSegmentatorUnavailable(f"{reason} {_SUPPLY_MASKS}", reason)
    task = "total_fast" if fast else "total"
    missing = [d for d in TOTALSEG_DATASETS[task] if not _dataset_installed(wdir, d)]
    if missing:
        reason = (
            f"TotalSegmentator's weights for task 'total'{' --fast' if fast else ''} are not "
            f"installed in {wdir} (missing nnU-Net dataset(s) "
            f"{', '.join(f'Dataset{d}_*' for d in missing)} with checkpoint_final.pth), and "
            "LAMP never downloads them."
        )
        raise TotalSegmentatorUnavailable(
            f"{reason} Install them on a machine with internet access (TotalSegmentator's "
            "totalseg_download_weights / totalseg_import_weights) and point "
            "TOTALSEG_HOME_DIR or weights_dir at them, or: " + _SUPPLY_MASKS,
            reason,
        )
    return wdir


def supply_masks_help(
    cohort: str | Path = "COHORT", fast: bool = False, weights_dir: str | Path | None = None
) -> str:
    """How to get organ masks into a cohort, as a few lines for a terminal.

    Both ways: installing TotalSegmentator and its weights here (where they must be), or
    running it elsewhere and bringing the masks in. Used by ``lamp organs`` when
    `check_totalsegmentator` fails.
    """
    wdir = Path(weights_dir) if weights_dir is not None else totalseg_weights_dir()
    datasets = ", ".join(
        f"Dataset{d}_*" for d in TOTALSEG_DATASETS["total_fast" if fast else "total"]
    )
    return "\n".join(
        [
            "To let LAMP produce the organ masks here (it never downloads anything):",
            "  1. install TotalSegmentator v2:  pip install 'TotalSegmentator>=2'",
            f"  2. put the weights of its 'total' task{' (--fast)' if fast else ''} "
            f"({datasets}, each with checkpoint_final.pth) in",
            f"       {wdir}",
            "     (copied from a machine where TotalSegmentator downloaded them, or with "
            "totalseg_import_weights;",
            "     elsewhere: --weights-dir, or TOTALSEG_WEIGHTS_PATH / TOTALSEG_HOME_DIR)",
            "Or supply the masks (TotalSegmentator v2, task 'total', run elsewhere):",
            "  TotalSegmentator -i ct.nii.gz -o organs.nii.gz --ml",
            "  then either put organs.nii.gz beside the patient's PET and CT in the input of "
            "`lamp ingest`",
            "  (INPUT/<patient_id>/organs.nii.gz, on the PET or the CT grid; ingest moves it "
            "onto the PET grid),",
            f"  or copy a mask already on the PET grid to {Path(cohort)}/cases/<patient_id>/"
            "organs.nii.gz",
            f"  and check the cohort with:  lamp organs --cohort {cohort} --check",
        ]
    )


def run_totalsegmentator(
    ct_path: str | Path,
    out_path: str | Path,
    device: str = "cpu",
    fast: bool = False,
    *,
    weights_dir: str | Path | None = None,
) -> Path:
    """Segment the organs of a CT with a locally installed TotalSegmentator.

    Optional: LAMP runs without it (see `load_organs`). The ``totalsegmentator`` package is
    imported only here, only when called, and is not a LAMP dependency. Before anything
    runs, the function checks that TotalSegmentator v2 is installed and that the weights
    of the 'total' task are already on disk (datasets 291-295, or 297 with ``fast``); it
    never downloads them. It then switches TotalSegmentator's usage statistics off in its
    ``config.json`` and runs the 'total' task with a multilabel output (``--ml``).

    Parameters
    ----------
    ct_path : str or Path
        The CT in HU, a NIfTI file.
    out_path : str or Path
        Output multilabel NIfTI (``.nii.gz``), 'total' ids 0..117 on the CT's grid.
        Written atomically; resample it onto the PET grid with
        ``load_organs(out_path, pet_grid, resample=True)``.
    device : {"cpu", "cuda", "gpu", "mps"}, default "cpu"
        Where TotalSegmentator runs ("cuda" and "gpu" are the same).
    fast : bool, default False
        TotalSegmentator's 3 mm model: much faster on a CPU, coarser masks.
    weights_dir : str or Path, optional, keyword-only
        Folder holding TotalSegmentator's ``Dataset<id>_*`` weight folders, if not where
        TotalSegmentator looks by itself (`totalseg_weights_dir`).

    Returns
    -------
    Path
        ``out_path``, checked to hold 'total' ids only.

    Raises
    ------
    OrganError
        TotalSegmentator missing or older than v2, its weights not installed, the
        statistics switch not writable, the run failing, or an output that is not a
        'total' map. Every message says how to supply the organ masks instead.
    """
    ct_path, out_path = Path(ct_path), Path(out_path)
    if not ct_path.is_file():
        raise OrganError(f"{ct_path}: CT image not found (expected a NIfTI file in HU)")
    if not out_path.name.endswith(".nii.gz"):
        raise OrganError(f"{out_path}: expected an output file name ending in .nii.gz")
    if device not in _DEVICES:
        raise OrganError(f"device: expected one of {_DEVICES}, got {device!r}")

    check_totalsegmentator(fast, weights_dir=weights_dir)
    _switch_off_usage_statistics(totalseg_home_dir())
    try:
        api = importlib.import_module("totalsegmentator.python_api")
        run = api.totalsegmentator
    except (ImportError, AttributeError) as exc:
        raise OrganError(
            f"TotalSegmentator is installed but its Python API cannot be loaded "
            f"({type(exc).__name__}: {exc}). {_SUPPLY_MASKS}"
        ) from None

    out_path.parent.mkdir(parents=True, exist_ok=True)
    # TotalSegmentator picks the format from the file name, so it writes to a real
    # .nii.gz in a private folder beside out_path, renamed into place once checked.
    tmp_dir = Path(tempfile.mkdtemp(dir=out_path.parent, prefix=f".{out_path.name}."))
    try:
        tmp_out = tmp_dir / "organs.nii.gz"
        with _weights_env(Path(weights_dir) if weights_dir is not None else None):
            try:
                run(
                    input=ct_path,
                    output=tmp_out,
                    ml=True,
                    fast=fast,
                    task="total",
                    device="gpu" if device == "cuda" else device,
                    quiet=True,
                )
            except (Exception, SystemExit) as exc:  # it may sys.exit() on bad input
                raise OrganError(
                    f"TotalSegmentator failed on {ct_path}: {type(exc).__name__}: {exc}. "
                    + _SUPPLY_MASKS
                ) from None
        if not tmp_out.is_file():
            raise OrganError(
                f"TotalSegmentator wrote no multilabel file for {ct_path}. {_SUPPLY_MASKS}"
            )
        _total_ids(load_nifti(tmp_out)[0], f"TotalSegmentator output for {ct_path}")
        # same folder, so the rename is atomic: out_path is complete or absent
        os.replace(tmp_out, out_path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_path


# --------------------------------------------------------------------------------------
# A cohort's organ masks: producing them, checking them
# --------------------------------------------------------------------------------------

#: Folder of a cohort with one JSON record per patient of how `segment_case_organs` made
#: its masks (TotalSegmentator version, model, device, time, groups present).
ORGANS_LOG_DIR = "organs_log"
# TotalSegmentator's raw output (on the CT grid) lives in a hidden scratch folder of the
# case while it is checked and resampled; no ``*.nii.gz`` pattern of the case matches it.
_SCRATCH_PREFIX = ".organs-totalseg-"


@dataclass(frozen=True)
class OrganRun:
    """What `segment_cohort_organs` did, patient by patient.

    Attributes
    ----------
    patients : tuple of str
        The patients asked for, in order.
    written : tuple of str
        Patients whose ``organs.nii.gz`` this run wrote.
    skipped : tuple of str
        Patients that already had ``organs.nii.gz`` (left as they were; ``force`` redoes them).
    failed : dict of str to str
        Patient -> what went wrong; these have no ``organs.nii.gz`` written by this run.
    records : dict of str to dict
        Patient -> the record written to ``organs_log/<patient_id>.json``.
    """

    patients: tuple[str, ...]
    written: tuple[str, ...]
    skipped: tuple[str, ...]
    failed: dict[str, str] = field(default_factory=dict)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no patient failed."""
        return not self.failed

    def to_text(self) -> str:
        """A summary for people: counts, then every failure with its reason."""
        lines = [
            f"patients {len(self.patients)}: {len(self.written)} written, "
            f"{len(self.skipped)} already had organ masks (skipped), {len(self.failed)} failed"
        ]
        for pid, why in self.failed.items():
            lines.append(f"  FAILED {pid}: {why}")
        return "\n".join(lines)


@dataclass(frozen=True)
class OrganCheck:
    """The organ masks of a cohort as `check_cohort_organs` found them.

    Attributes
    ----------
    patients : tuple of str
        The patients checked, in order.
    missing : tuple of str
        Patients without ``cases/<patient_id>/organs.nii.gz``.
    off_grid : dict of str to str
        Patient -> how its mask's grid differs from its PET grid.
    unusable : dict of str to str
        Patient -> why its mask (or its PET) could not be read as a 'total' map.
    absent : ndarray of int, shape (71,)
        ``absent[g - 1]``: among the ``n_read`` patients whose mask could be read (on the
        PET grid or not), how many have group ``g`` (``lamp.anatomy.GROUPS[g - 1]``)
        absent (fewer than ``min_voxels`` voxels).
    n_groups_present : dict of str to int
        Patient -> number of groups present, for the patients whose mask could be read.
    min_voxels : int
        The presence threshold used (as in `organ_groups`).
    """

    patients: tuple[str, ...]
    missing: tuple[str, ...]
    off_grid: dict[str, str]
    unusable: dict[str, str]
    absent: np.ndarray
    n_groups_present: dict[str, int]
    min_voxels: int = 1

    @property
    def n_read(self) -> int:
        """Patients whose mask could be read."""
        return len(self.n_groups_present)

    @property
    def ok(self) -> bool:
        """True when every patient has a readable 'total' mask on its PET grid."""
        return not (self.missing or self.off_grid or self.unusable)

    def to_text(self) -> str:
        """A report for people: the problems by patient, then the 71-group presence table."""
        n = len(self.patients)
        good = n - len(self.missing) - len(self.off_grid) - len(self.unusable)
        lines = [
            f"patients {n}: {good} with organ masks on the PET grid, {len(self.missing)} "
            f"without, {len(self.off_grid)} not on the PET grid, {len(self.unusable)} unusable"
        ]
        if self.missing:
            lines.append("without organ masks: " + ", ".join(self.missing))
        for pid, why in self.off_grid.items():
            lines.append(f"not on the PET grid: {pid}: {why}")
        for pid, why in self.unusable.items():
            lines.append(f"unusable: {pid}: {why}")
        if not self.n_read:
            return "\n".join(lines)
        counts = sorted(self.n_groups_present.values())
        lines.append(
            f"organ groups present per patient (of {N_GROUPS}, >= {self.min_voxels} voxel(s)): "
            f"median {float(np.median(counts)):g}, range {counts[0]}-{counts[-1]}, "
            f"over {self.n_read} patient(s) with a readable mask"
        )
        order = sorted(np.flatnonzero(self.absent), key=lambda g: (-self.absent[g], g))
        if order:
            width = max(len(GROUPS[g]) for g in order)
            lines.append(f"  {'group':<{width}}  absent in")
            for g in order:
                k = int(self.absent[g])
                lines.append(
                    f"  {GROUPS[g]:<{width}}  {k} of {self.n_read} ({100 * k / self.n_read:.0f} %)"
                )
        always = [GROUPS[g] for g in range(N_GROUPS) if self.absent[g] == 0]
        if always:
            lines += textwrap.wrap(
                f"present in every patient ({len(always)} group(s)): " + ", ".join(always),
                width=92,
                initial_indent="  ",
                subsequent_indent="    ",
            )
        return "\n".join(lines)


def _cohort_patients(cohort: Path, patient_ids: Sequence[str] | None) -> list[str]:
    """The cohort's patients from clinical.csv, or the ones asked for (checked against it)."""
    table = read_clinical(cohort / "clinical.csv")["patient_id"].tolist()
    if not patient_ids:
        return table
    asked = list(dict.fromkeys(check_patient_id(p, "--patient") for p in patient_ids))
    unknown = [p for p in asked if p not in set(table)]
    if unknown:
        raise OrganError(
            f"patient(s) {', '.join(unknown)} not in {cohort / 'clinical.csv'} "
            f"({len(table)} patients, e.g. {', '.join(table[:3])})"
        )
    return asked


def _grid_of(path: Path, what: str) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of a NIfTI image from its header (the voxels are not read)."""
    if not path.is_file():
        raise OrganError(f"{path}: {what} not found (expected a NIfTI file)")
    try:
        img = nib.load(str(path))
        shape = tuple(int(n) for n in img.shape)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises many kinds
        raise OrganError(f"{path}: unreadable {what}: {type(exc).__name__}: {exc}") from None
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise OrganError(f"{path}: expected a 3D {what}, got shape {shape}")
    return shape, affine  # type: ignore[return-value]


def _describe_grid(shape: tuple[int, ...], affine: np.ndarray) -> str:
    spacing = np.round(np.linalg.norm(affine[:3, :3], axis=0), 3).tolist()
    origin = np.round(affine[:3, 3], 2).tolist()
    return f"shape {tuple(shape)}, spacing {spacing} mm, origin {origin} mm"


def segment_case_organs(
    cohort: str | Path,
    patient_id: str,
    *,
    device: str = "cpu",
    fast: bool = False,
    weights_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run TotalSegmentator on one patient's CT; write its organ masks on the PET grid.

    TotalSegmentator segments ``cases/<patient_id>/ct.nii.gz`` (`run_totalsegmentator`,
    output on the CT's grid) into a hidden scratch folder of the case. The result is read
    as a 'total' map - by class name where TotalSegmentator stored its label table
    (`lamp.ingest.organs.read_organs`), so a renumbered class cannot be misread - and must
    hold at least one organ. It is resampled onto the PET grid with nearest neighbour
    through physical space (voxels outside the CT's field of view become background) and
    written as ``cases/<patient_id>/organs.nii.gz`` (uint8), atomically and last: the file
    exists only once everything before it succeeded. A record of the run goes to
    ``COHORT/organs_log/<patient_id>.json`` first.

    Parameters
    ----------
    cohort : str or Path
        The cohort folder.
    patient_id : str
        The patient.
    device, fast, weights_dir
        As in `run_totalsegmentator`.

    Returns
    -------
    dict
        The record written to ``organs_log/<patient_id>.json``.

    Raises
    ------
    OrganError
        A missing or unreadable PET or CT, any error of `run_totalsegmentator`, an output
        that is not the 'total' map, holds no organ, or does not overlap the PET.
    """
    # deferred: lamp.ingest.organs is the one reader of TotalSegmentator's label table
    from lamp.ingest.common import IngestError
    from lamp.ingest.organs import read_organs

    cohort = Path(cohort)
    pet_path = case_path(cohort, patient_id, "pet")
    ct_path = case_path(cohort, patient_id, "ct")
    out_path = case_path(cohort, patient_id, "organs")
    pet_shape, pet_affine = _grid_of(pet_path, "PET image (its grid is the patient's grid)")
    if not ct_path.is_file():
        raise OrganError(f"{ct_path}: CT image not found (expected a NIfTI file in HU)")

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=_SCRATCH_PREFIX) as scratch:
        raw = run_totalsegmentator(
            ct_path, Path(scratch) / "organs_ct.nii.gz", device, fast, weights_dir=weights_dir
        )
        try:
            image, notes = read_organs(raw)
        except IngestError as exc:
            raise OrganError(
                f"TotalSegmentator output for {ct_path} is not its 'total' map: {exc}"
            ) from None
    seconds = time.perf_counter() - t0
    labels, affine = image.array, image.affine
    if not labels.any():
        raise OrganError(
            f"TotalSegmentator found no organ in {ct_path}; expected a CT in HU covering the "
            "body (check its values and orientation)"
        )
    if overlap_fraction(labels.shape, affine, pet_shape, pet_affine) <= 0.0:
        raise OrganError(
            f"{ct_path}: the CT ({_describe_grid(labels.shape, affine)}) does not overlap the "
            f"PET {pet_path} ({_describe_grid(pet_shape, pet_affine)}); check the origins"
        )
    on_pet = resample_to_grid(labels, affine, pet_shape, pet_affine, order=0, fill=0)
    if not on_pet.any():
        raise OrganError(
            f"TotalSegmentator's organs of {ct_path} all lie outside the PET field of view "
            f"of {pet_path}; check that the CT and PET belong together"
        )
    _, present = organ_groups(on_pet)
    record: dict[str, Any] = {
        "patient_id": patient_id,
        "ct": str(ct_path),
        "organs": str(out_path),
        "totalsegmentator_version": _totalseg_version(),
        "task": "total",
        "fast": bool(fast),
        "device": device,
        "seconds": round(seconds, 1),
        "ct_on_pet_grid": same_grid(labels.shape, affine, pet_shape, pet_affine),
        "total_classes_found": int(np.count_nonzero(np.bincount(on_pet.ravel())[1:])),
        "groups_present": int(present.sum()),
        "groups_absent": [GROUPS[g] for g in np.flatnonzero(~present)],
        "notes": notes,
    }
    write_text_atomic(cohort / ORGANS_LOG_DIR / f"{patient_id}.json", json.dumps(record, indent=1))
    save_nifti(out_path, on_pet, pet_affine, dtype=np.uint8)
    return record


def segment_cohort_organs(
    cohort: str | Path,
    patient_ids: Sequence[str] | None = None,
    *,
    device: str = "cpu",
    fast: bool = False,
    force: bool = False,
    weights_dir: str | Path | None = None,
    progress: Callable[[int, int, str, str], None] | None = None,
) -> OrganRun:
    """Produce the organ masks of a cohort with a locally installed TotalSegmentator.

    Resumable: a patient with ``cases/<patient_id>/organs.nii.gz`` is skipped unless
    ``force``, and an interrupted patient leaves no ``organs.nii.gz`` (see
    `segment_case_organs`), so rerunning the same call finishes the rest. One patient's
    failure is recorded and the others go on. Before any patient is touched,
    `check_totalsegmentator` must pass (nothing is checked when no patient needs a run).

    Parameters
    ----------
    cohort : str or Path
        The cohort folder (``clinical.csv``, ``cases/<patient_id>/{pet,ct}.nii.gz``).
    patient_ids : sequence of str, optional
        Only these patients (each must be in ``clinical.csv``); default: all, in table order.
    device, fast, weights_dir
        As in `run_totalsegmentator`.
    force : bool, default False
        Redo patients that already have organ masks (each is replaced atomically).
    progress : callable, optional
        Called as ``progress(done, total, patient_id, message)`` after each patient that
        needed a run.

    Returns
    -------
    OrganRun

    Raises
    ------
    TotalSegmentatorUnavailable
        TotalSegmentator or its weights not installed (nothing is written).
    OrganError
        A bad device,
        patient ids not in the table.
    CohortError
        A missing or malformed ``clinical.csv``.
    """
    cohort = Path(cohort)
    if device not in _DEVICES:
        raise OrganError(f"device: expected one of {_DEVICES}, got {device!r}")
    patients = _cohort_patients(cohort, patient_ids)
    todo = [p for p in patients if force or not case_path(cohort, p, "organs").exists()]
    skipped = tuple(p for p in patients if p not in set(todo))
    if todo:
        check_totalsegmentator(fast, weights_dir=weights_dir)
    written: list[str] = []
    failed: dict[str, str] = {}
    records: dict[str, dict[str, Any]] = {}
    for n, pid in enumerate(todo, start=1):
        try:
            record = segment_case_organs(
                cohort, pid, device=device, fast=fast, weights_dir=weights_dir
            )
        except Exception as exc:  # one patient's failure must not stop the others
            why = str(exc) if isinstance(exc, LampError) else f"{type(exc).__name__}: {exc}"
            failed[pid] = why
            message = f"failed: {why}"
        else:
            written.append(pid)
            records[pid] = record
            message = (
                f"written ({record['groups_present']} of {N_GROUPS} groups present, "
                f"{record['seconds']:.0f} s)"
            )
        if progress is not None:
            progress(n, len(todo), pid, message)
    return OrganRun(tuple(patients), tuple(written), skipped, failed, records)


def check_cohort_organs(
    cohort: str | Path,
    patient_ids: Sequence[str] | None = None,
    *,
    min_voxels: int = 1,
) -> OrganCheck:
    """Check a cohort's organ masks without running anything.

    For each patient: is there a ``cases/<patient_id>/organs.nii.gz``, is it a 'total'
    map (ids 0..117), does it lie on the PET grid, and which of the 71 groups are present.

    Parameters
    ----------
    cohort : str or Path
        The cohort folder.
    patient_ids : sequence of str, optional
        Only these patients; default all of ``clinical.csv``.
    min_voxels : int, default 1
        Presence threshold, as in `organ_groups`.

    Returns
    -------
    OrganCheck

    Raises
    ------
    CohortError, OrganError
        A missing or malformed ``clinical.csv``, unknown patient ids.
    """
    cohort = Path(cohort)
    patients = _cohort_patients(cohort, patient_ids)
    missing: list[str] = []
    off_grid: dict[str, str] = {}
    unusable: dict[str, str] = {}
    absent = np.zeros(N_GROUPS, dtype=np.int64)
    n_present: dict[str, int] = {}
    for pid in patients:
        path = case_path(cohort, pid, "organs")
        if not path.exists():
            missing.append(pid)
            continue
        try:
            data, affine = load_nifti(path)
            labels = _total_ids(data, str(path))
            pet_shape, pet_affine = _grid_of(case_path(cohort, pid, "pet"), "PET image")
        except LampError as exc:
            unusable[pid] = str(exc)
            continue
        if not same_grid(labels.shape, affine, pet_shape, pet_affine):
            off_grid[pid] = (
                f"{_describe_grid(labels.shape, affine)}; the PET has "
                f"{_describe_grid(pet_shape, pet_affine)}"
            )
        present = groups_present(merge_to_groups(labels), min_voxels=min_voxels)
        absent += ~present
        n_present[pid] = int(present.sum())
    return OrganCheck(
        tuple(patients), tuple(missing), off_grid, unusable, absent, n_present, min_voxels
    )
