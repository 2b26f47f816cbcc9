"""Organ masks as TotalSegmentator writes them, mapped to its ``total`` ids (1-117).

TotalSegmentator [1]_ writes either

* one multilabel NIfTI (``--ml``) whose voxel values are class ids; since v2 it stores
  the id -> name table in a NIfTI header extension (an XML ``CaretExtension`` with a
  ``LabelTable`` of ``<Label Key="id">name</Label>``), or
* a folder with one binary mask per class, named ``<class name>.nii.gz``.

Both are mapped by class *name* to `lamp.anatomy.TOTAL_IDS` where names are known (the
label table, the file names), so a label map with another numbering (e.g. TotalSegmentator
v1's 104 classes) is renumbered rather than misread; a multilabel file without a table
must already hold ``total`` ids. Names that are not ``total`` classes, and ids above 117,
are errors: that is not TotalSegmentator's ``total`` map.

References
----------
.. [1] Wasserthal J, Breit H-C, Meyer MT, et al. TotalSegmentator: robust segmentation of
   104 anatomic structures in CT images. Radiol Artif Intell 2023;5(5):e230024.
"""

from __future__ import annotations

import difflib
import xml.etree.ElementTree as ET
from pathlib import Path

import nibabel as nib
import numpy as np

from lamp.anatomy import N_TOTAL_CLASSES, TOTAL_IDS
from lamp.cohort import CohortError
from lamp.images import load_nifti
from lamp.ingest.common import GRID_ATOL_MM, Image, IngestError

__all__ = ["read_organs", "read_label_table", "nifti_files"]

_NIFTI_SUFFIXES = (".nii.gz", ".nii")


def nifti_files(folder: Path) -> list[Path]:
    """The ``.nii``/``.nii.gz`` files directly in ``folder``, sorted by name."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.name.endswith(_NIFTI_SUFFIXES) and not p.name.startswith(".")
    )


def _stem(path: Path) -> str:
    name = path.name
    for suffix in _NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        return load_nifti(path)
    except CohortError as exc:
        raise IngestError(str(exc)) from None


def read_label_table(path: str | Path) -> dict[int, str] | None:
    """The id -> class-name table TotalSegmentator stores in a NIfTI header extension.

    Returns
    -------
    dict of int to str, or None
        None when the file carries no such table.

    Raises
    ------
    IngestError
        A table that is present but cannot be parsed.
    """
    path = Path(path)
    try:
        img = nib.load(str(path))
        extensions = list(img.header.extensions)
    except Exception:  # unreadable files are reported by the image reader
        return None
    for ext in extensions:
        raw = ext.get_content()
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
        if "<LabelTable" not in text:
            continue
        try:
            root = ET.fromstring(text.strip().rstrip("\x00").strip())
        except ET.ParseError as exc:
            raise IngestError(
                f"{path}: the label table in the NIfTI header extension is not valid XML: {exc}"
            ) from None
        table: dict[int, str] = {}
        for label in root.iter("Label"):
            key = label.get("Key")
            try:
                table[int(key)] = (label.text or "").strip()  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise IngestError(
                    f"{path}: label table entry with Key={key!r}; expected an integer id"
                ) from None
        return table
    return None


def _unknown_names(names: list[str]) -> str:
    hints = []
    for n in names[:10]:
        close = difflib.get_close_matches(n, list(TOTAL_IDS), n=1)
        hints.append(f"{n!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    more = f" and {len(names) - 10} more" if len(names) > 10 else ""
    return ", ".join(hints) + more


def _whole_numbers(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype.kind == "b":
        return array.astype(np.int64)
    if array.dtype.kind == "f":
        if np.any(array != np.round(array)):
            raise IngestError(f"{what}: expected integer label values, got fractions")
        return array.astype(np.int64)
    if array.dtype.kind not in "iu":
        raise IngestError(f"{what}: expected integer labels, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _read_multilabel(path: Path) -> tuple[Image, list[str]]:
    data, affine = _load(path)
    what = f"organ mask {path}"
    labels = _whole_numbers(data, what)
    if labels.size and labels.min() < 0:
        raise IngestError(f"{what}: expected label ids >= 0, got {int(labels.min())}")
    present = [int(v) for v in np.unique(labels) if v != 0]
    table = read_label_table(path)
    notes: list[str] = []
    if table is None:
        above = [v for v in present if v > N_TOTAL_CLASSES]
        if above:
            raise IngestError(
                f"{what}: ids {above[:10]} above {N_TOTAL_CLASSES}: not TotalSegmentator's "
                f"'total' label map (ids 1-{N_TOTAL_CLASSES}); write the masks of the "
                "'total' task, or a folder of per-class masks named by class"
            )
        out = labels.astype(np.uint8)
        notes.append("organ ids taken as TotalSegmentator 'total' ids (no label table in the file)")
        return Image(out, affine, str(path)), notes
    unknown = sorted({table[v] for v in present if v in table and table[v] not in TOTAL_IDS})
    if unknown:
        raise IngestError(
            f"{what}: class names {_unknown_names(unknown)} in the file's label table are not "
            "TotalSegmentator 'total' classes; expected the 'total' task's masks"
        )
    missing = [v for v in present if v not in table]
    if missing:
        raise IngestError(
            f"{what}: ids {missing[:10]} occur in the image but not in its label table"
        )
    lookup = np.zeros(max(present, default=0) + 1, dtype=np.uint8)
    renumbered = 0
    for v in present:
        lookup[v] = TOTAL_IDS[table[v]]
        renumbered += int(lookup[v] != v)
    if renumbered:
        notes.append(f"{renumbered} class id(s) renumbered to 'total' ids by name")
    return Image(lookup[labels], affine, str(path)), notes


def _read_folder(folder: Path) -> tuple[Image, list[str]]:
    what = f"organ mask folder {folder}"
    files = nifti_files(folder)
    if not files:
        raise IngestError(f"{what}: no .nii.gz masks found; expected one mask per class")
    names = {_stem(p): p for p in files}
    unknown = sorted(n for n in names if n not in TOTAL_IDS)
    if unknown:
        raise IngestError(
            f"{what}: mask file names {_unknown_names(unknown)} are not TotalSegmentator "
            "'total' class names; expected files like liver.nii.gz, spleen.nii.gz"
        )
    out: np.ndarray | None = None
    ref_affine: np.ndarray | None = None
    overlap = 0
    notes: list[str] = []
    # lower ids first, so that where masks overlap the lower 'total' id wins (stable)
    for name in sorted(names, key=lambda n: TOTAL_IDS[n]):
        path = names[name]
        data, affine = _load(path)
        mask = _whole_numbers(data, f"organ mask {path}")
        values = np.unique(mask)
        if not np.all(np.isin(values, (0, 1))):
            raise IngestError(
                f"organ mask {path}: expected a binary mask (0/1), got values "
                f"{values[:10].tolist()}; a per-class folder holds one binary mask per class"
            )
        if out is None:
            out = np.zeros(mask.shape, dtype=np.uint8)
            ref_affine = affine
            ref_path = path
        elif mask.shape != out.shape or not np.allclose(affine, ref_affine, atol=GRID_ATOL_MM):
            raise IngestError(
                f"organ mask {path}: expected the grid of {ref_path.name} (shape {out.shape}), "
                f"got shape {mask.shape} and another affine; all masks of a folder share a grid"
            )
        hit = mask.astype(bool)
        overlap += int(np.count_nonzero(hit & (out > 0)))
        out[hit & (out == 0)] = TOTAL_IDS[name]
    assert out is not None and ref_affine is not None
    if overlap:
        notes.append(f"{overlap} voxel(s) in two masks kept the lower 'total' id")
    notes.append(f"{len(files)} per-class masks merged")
    return Image(out, ref_affine, str(folder)), notes


def read_organs(path: str | Path) -> tuple[Image, list[str]]:
    """Read TotalSegmentator organ masks as one ``total`` label map (uint8, ids 0-117).

    Parameters
    ----------
    path : str or Path
        A multilabel ``.nii.gz`` file, or a folder of per-class binary masks named by
        class (``liver.nii.gz``, ...).

    Returns
    -------
    image : Image
        ``total`` ids (uint8) on the masks' own grid.
    notes : list of str
        What was assumed or changed.

    Raises
    ------
    IngestError
        Unreadable, non-3D or non-finite files; non-integer labels; unknown class names
        (with the closest ``total`` name as a hint); ids above 117; a non-binary per-class
        mask; per-class masks on different grids.
    """
    path = Path(path)
    if path.is_dir():
        return _read_folder(path)
    return _read_multilabel(path)
