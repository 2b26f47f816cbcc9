"""DICOM PET and CT series: find them in a folder tree, stack their slices, read them.

Series are found by ``SeriesInstanceUID`` wherever their files lie under the folder, and
their slices are ordered by position along the slice normal (``ImagePositionPatient``
projected on ``row x column`` of ``ImageOrientationPatient``), never by file name or
``InstanceNumber``. A series is read only if it is a regular stack: one orientation,
one pixel grid, distinct and equally spaced positions along the normal, no gantry tilt.

Grids follow `lamp.images`: the voxel ``(i, j, k)`` is column ``i``, row ``j`` of the
``k``-th slice in ascending position along the normal, and the affine maps it to RAS+ mm
(DICOM's patient coordinates are LPS+, so x and y change sign).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from lamp.ingest.common import Image, IngestError
from lamp.ingest.suv import Body, SuvScale, body_from_header, element_text, suv_scale, tag_name

__all__ = [
    "DicomSeries",
    "DicomFolder",
    "PetSeriesResult",
    "is_dicom_file",
    "scan_dicom_folder",
    "stack_geometry",
    "read_series",
    "select_pet_ct",
    "read_pet",
    "read_ct",
]

# Geometry tolerances. Positions and cosines are decimal strings of at most 16 characters.
_IOP_ATOL = 1e-4  # direction cosines of two slices that agree to this are the same
_UNIT_ATOL = 1e-3  # a direction cosine vector this close to unit length / orthogonal
_SPACING_RTOL = 0.01  # slice gaps may differ by 1 % of the gap ...
_SPACING_ATOL_MM = 0.01  # ... plus 0.01 mm
_TILT_RTOL = 1e-3  # in-plane drift of the stack per mm along the normal (gantry tilt)
_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # a DICOMDIR, not an image


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` starts with the DICOM Part 10 preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


@dataclass
class DicomSeries:
    """One series: its files and their headers (pixel data not read).

    Attributes
    ----------
    uid : str
        ``SeriesInstanceUID``.
    modality : str
        ``Modality`` (``"PT"``, ``"CT"``, ...).
    description : str
        ``SeriesDescription`` (may be empty).
    files : list of Path
        One file per instance, in discovery order (not slice order).
    headers : list of Dataset
        The header of each file, same order.
    """

    uid: str
    modality: str
    description: str
    files: list[Path] = field(default_factory=list)
    headers: list[Dataset] = field(default_factory=list)

    @property
    def name(self) -> str:
        """``"PET series <uid> ('<description>', <n> files in <folder>)"`` for messages."""
        kind = {"PT": "PET", "CT": "CT"}.get(self.modality, self.modality)
        folder = Path(os.path.commonpath([str(f.parent) for f in self.files])) if self.files else ""
        return (
            f"{kind} series {self.uid} ({self.description!r}, {len(self.files)} files in {folder})"
        )

    def first(self, keyword: str) -> str | None:
        """The value of ``keyword`` in the first header, as text (None if absent)."""
        return element_text(self.headers[0].get(keyword)) if self.headers else None


@dataclass
class DicomFolder:
    """Every series under a folder.

    Attributes
    ----------
    root : Path
        The folder searched (recursively).
    series : list of DicomSeries
        In order of ``SeriesInstanceUID``.
    notes : list of str
        Files that were skipped and why (non-DICOM files, DICOMDIR, duplicates).
    """

    root: Path
    series: list[DicomSeries]
    notes: list[str] = field(default_factory=list)


def _walk_files(root: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def scan_dicom_folder(root: str | Path) -> DicomFolder:
    """Find every DICOM series under ``root`` (headers only; pixel data are not read).

    Files without the DICOM preamble (NIfTI masks, text, images) and DICOMDIR files are
    skipped and counted in the notes; a second copy of an instance (same
    ``SOPInstanceUID``) is skipped with a note.

    Raises
    ------
    IngestError
        A file with the DICOM preamble that cannot be parsed (truncated or corrupt),
        naming the file, or a DICOM image without ``SeriesInstanceUID``.
    """
    root = Path(root)
    by_uid: dict[str, DicomSeries] = {}
    seen_sop: dict[str, Path] = {}
    skipped = Counter[str]()
    duplicates: list[str] = []
    for path in _walk_files(root):
        if not is_dicom_file(path):
            if not path.name.endswith((".nii", ".nii.gz")):
                skipped["non-DICOM"] += 1
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
            raise IngestError(
                f"unreadable DICOM file {path}: {type(exc).__name__}: {exc}; remove or "
                "replace the file"
            ) from None
        sop_class = str(getattr(ds, "file_meta", Dataset()).get("MediaStorageSOPClassUID", ""))
        if sop_class == _MEDIA_STORAGE_DIRECTORY or path.name.upper() == "DICOMDIR":
            skipped["DICOMDIR"] += 1
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
        if not uid:
            # pydicom reads a truncated file as far as it goes: what is left has no series
            raise IngestError(
                f"unreadable or incomplete DICOM file {path}: tag "
                f"{tag_name('SeriesInstanceUID')} is missing (a truncated file?); remove or "
                "replace the file"
            )
        sop = str(ds.get("SOPInstanceUID", "") or "").strip()
        if sop and sop in seen_sop:
            duplicates.append(f"{path} (same SOPInstanceUID as {seen_sop[sop]})")
            continue
        if sop:
            seen_sop[sop] = path
        series = by_uid.get(uid)
        if series is None:
            series = by_uid[uid] = DicomSeries(
                uid=uid,
                modality=str(ds.get("Modality", "") or "").strip().upper(),
                description=str(ds.get("SeriesDescription", "") or "").strip(),
            )
        series.files.append(path)
        series.headers.append(ds)
    notes = [f"{n} {kind} file(s) skipped" for kind, n in sorted(skipped.items())]
    if duplicates:
        notes.append(f"{len(duplicates)} duplicate instance file(s) skipped, e.g. {duplicates[0]}")
    return DicomFolder(root=root, series=[by_uid[u] for u in sorted(by_uid)], notes=notes)


# --------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------


def _floats(ds: Dataset, keyword: str, n: int, series: DicomSeries, path: Path) -> np.ndarray:
    value = ds.get(keyword)
    try:
        values = [float(v) for v in (value if value is not None else [])]
    except (TypeError, ValueError):
        values = []
    if len(values) != n or not np.all(np.isfinite(values)):
        got = "nothing" if value is None else repr(str(value))
        raise IngestError(
            f"{series.name}: file {path.name}: tag {tag_name(keyword)}: expected {n} "
            f"numbers, got {got}"
        )
    return np.asarray(values, dtype=np.float64)


def stack_geometry(series: DicomSeries) -> tuple[list[int], np.ndarray, tuple[int, int, int]]:
    """Order the slices of a series and build its grid.

    Returns
    -------
    order : list of int
        Indices into ``series.files`` in ascending position along the slice normal.
    affine : ndarray, shape (4, 4)
        Voxel ``(column i, row j, slice k)`` -> RAS+ world mm.
    shape : tuple of 3 int
        ``(Columns, Rows, number of slices)``.

    Raises
    ------
    IngestError
        Naming the series: a multi-frame file, a single slice (2D), missing
        ``ImagePositionPatient`` / ``ImageOrientationPatient`` / ``PixelSpacing``,
        orientations or pixel grids that differ between slices, non-orthogonal direction
        cosines, two slices at one position (a 4D/dynamic series or two series merged),
        unequal slice gaps (a missing slice), or a tilted stack.
    """
    name = series.name
    headers, files = series.headers, series.files
    for ds, path in zip(headers, files, strict=True):
        frames = ds.get("NumberOfFrames")
        if frames is not None and str(frames).strip() not in ("", "1"):
            raise IngestError(
                f"{name}: file {path.name} is a multi-frame image ({frames} frames); only "
                "one slice per file is supported: convert the series with dcm2niix and use "
                "--layout nifti"
            )
    if len(files) < 2:
        raise IngestError(
            f"{name}: a single slice (a 2D image); expected a 3D stack of at least 2 slices"
        )
    iops = [
        _floats(ds, "ImageOrientationPatient", 6, series, p)
        for ds, p in zip(headers, files, strict=True)
    ]
    ipps = np.stack(
        [
            _floats(ds, "ImagePositionPatient", 3, series, p)
            for ds, p in zip(headers, files, strict=True)
        ]
    )
    spacings = [
        _floats(ds, "PixelSpacing", 2, series, p) for ds, p in zip(headers, files, strict=True)
    ]
    sizes = {(int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)) for ds in headers}

    # the orientation most slices share is the series'; the others are named
    votes = Counter(tuple(np.round(o / _IOP_ATOL).astype(int)) for o in iops)
    common = np.asarray(votes.most_common(1)[0][0], dtype=np.float64) * _IOP_ATOL
    iop = next(o for o in iops if np.abs(o - common).max() <= _IOP_ATOL)
    off = sorted(files[i].name for i, o in enumerate(iops) if np.abs(o - iop).max() > _IOP_ATOL)
    if off:
        raise IngestError(
            f"{name}: tag {tag_name('ImageOrientationPatient')} differs between slices "
            f"({len(off)} of {len(files)} differ from the others, e.g. {off[0]}); "
            "expected one orientation per series (a localizer or a second series mixed in?)"
        )
    row, col = iop[:3], iop[3:]
    if (
        abs(np.linalg.norm(row) - 1) > _UNIT_ATOL
        or abs(np.linalg.norm(col) - 1) > _UNIT_ATOL
        or abs(row @ col) > _UNIT_ATOL
    ):
        raise IngestError(
            f"{name}: tag {tag_name('ImageOrientationPatient')} {iop.tolist()}: expected two "
            "orthogonal unit vectors"
        )
    if len(sizes) != 1 or min(next(iter(sizes))) < 1:
        raise IngestError(
            f"{name}: tags Rows/Columns: expected one positive image size for all slices, "
            f"got {sorted(sizes)}"
        )
    if any(np.abs(s - spacings[0]).max() > 1e-4 for s in spacings) or np.any(spacings[0] <= 0):
        raise IngestError(
            f"{name}: tag {tag_name('PixelSpacing')}: expected one positive pixel spacing for "
            f"all slices, got {sorted({tuple(s.tolist()) for s in spacings})}"
        )
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    pos = ipps @ normal
    order = [int(i) for i in np.argsort(pos, kind="stable")]
    pos_sorted = pos[order]
    gaps = np.diff(pos_sorted)
    gap = float(np.median(gaps))
    if gaps.min() < max(_SPACING_ATOL_MM, 1e-3 * abs(gap)):
        k = int(np.argmin(gaps))
        n_dup = int(np.sum(gaps < max(_SPACING_ATOL_MM, 1e-3 * abs(gap))))
        raise IngestError(
            f"{name}: {n_dup + 1} or more slices share a position along the slice normal "
            f"(e.g. {files[order[k]].name} and {files[order[k + 1]].name} at "
            f"{pos_sorted[k]:.2f} mm): a 4D (dynamic or gated) series or two acquisitions "
            "in one series; expected one static 3D stack"
        )
    tol = _SPACING_RTOL * gap + _SPACING_ATOL_MM
    if np.abs(gaps - gap).max() > tol:
        k = int(np.argmax(np.abs(gaps - gap)))
        raise IngestError(
            f"{name}: expected equally spaced slices ({gap:.3f} mm apart), got a gap of "
            f"{gaps[k]:.3f} mm between {files[order[k]].name} and {files[order[k + 1]].name} "
            f"(gaps {gaps.min():.3f}-{gaps.max():.3f} mm): a missing or extra slice?"
        )
    span = ipps[order[-1]] - ipps[order[0]]
    along = float(span @ normal)
    drift = float(np.linalg.norm(span - along * normal))
    if drift > _TILT_RTOL * abs(along) + _SPACING_ATOL_MM:
        raise IngestError(
            f"{name}: the slice positions drift {drift:.2f} mm sideways over {along:.1f} mm "
            "(gantry tilt or a sheared stack); expected positions along the slice normal: "
            "convert with dcm2niix (tilt correction) and use --layout nifti"
        )
    row_spacing, col_spacing = float(spacings[0][0]), float(spacings[0][1])
    lps = np.eye(4)
    # PixelSpacing = (between rows, between columns); i runs along a row (column index)
    lps[:3, 0] = row * col_spacing
    lps[:3, 1] = col * row_spacing
    lps[:3, 2] = normal * (along / (len(files) - 1))
    lps[:3, 3] = ipps[order[0]]
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    rows, cols = next(iter(sizes))
    return order, ras, (cols, rows, len(files))


def _rescale(ds: Dataset, series: DicomSeries, path: Path, required: bool) -> tuple[float, float]:
    values = []
    for kw, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)):
        raw = ds.get(kw)
        if raw is None or str(raw).strip() == "":
            if required:
                raise IngestError(
                    f"{series.name}: file {path.name}: tag {tag_name(kw)} is missing; PET "
                    "pixel values are meaningless without it"
                )
            values.append(default)
            continue
        try:
            values.append(float(raw))
        except (TypeError, ValueError):
            raise IngestError(
                f"{series.name}: file {path.name}: tag {tag_name(kw)}: expected a number, "
                f"got {raw!r}"
            ) from None
    if values[0] == 0 or not np.all(np.isfinite(values)):
        raise IngestError(
            f"{series.name}: file {path.name}: tag {tag_name('RescaleSlope')} is {values[0]}; "
            "expected a finite non-zero number"
        )
    return values[0], values[1]


def read_series(series: DicomSeries, rescale_required: bool = False) -> tuple[Image, list[Dataset]]:
    """Read the pixel data of a series into a 3D image in modality units.

    Parameters
    ----------
    series : DicomSeries
        From `scan_dicom_folder`.
    rescale_required : bool
        Whether a missing ``RescaleSlope``/``RescaleIntercept`` is an error (PET) or means
        1 and 0 (CT).

    Returns
    -------
    image : Image
        ``array`` shape ``(Columns, Rows, slices)`` float64 (``stored * RescaleSlope +
        RescaleIntercept``, per slice), ``affine`` RAS+ from `stack_geometry`.
    headers : list of Dataset
        The slice headers in slice order.

    Raises
    ------
    IngestError
        A geometry problem (`stack_geometry`), unreadable or compressed pixel data that
        cannot be decoded, a pixel array of the wrong shape.
    """
    order, affine, shape = stack_geometry(series)
    volume = np.empty(shape, dtype=np.float64)
    headers = []
    for k, idx in enumerate(order):
        path = series.files[idx]
        ds: Dataset | None = None
        try:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array
        except Exception as exc:  # pydicom raises many kinds for undecodable pixel data
            meta = getattr(ds, "file_meta", None)
            ts = getattr(meta, "TransferSyntaxUID", "?")
            raise IngestError(
                f"{series.name}: file {path.name}: cannot read the pixel data (transfer syntax "
                f"{ts}): {type(exc).__name__}: {exc}; decompress the series (e.g. gdcmconv "
                "--raw) or convert it to NIfTI"
            ) from None
        if pixels.shape != (shape[1], shape[0]):
            raise IngestError(
                f"{series.name}: file {path.name}: expected a {shape[1]}x{shape[0]} pixel "
                f"array (Rows x Columns), got shape {pixels.shape}"
            )
        slope, intercept = _rescale(ds, series, path, rescale_required)
        # DICOM PS3.3 C.7.6.16.2.11: output units = m * stored value + b, per slice
        volume[:, :, k] = pixels.T.astype(np.float64) * slope + intercept
        headers.append(ds)
    return Image(volume, affine, series.name), headers


# --------------------------------------------------------------------------------------
# Choosing the PET and CT of a patient
# --------------------------------------------------------------------------------------


def _flags(series: DicomSeries, keyword: str) -> set[str]:
    """The values of a multi-valued code string (ImageType, CorrectedImage), upper case."""
    text = series.first(keyword) or ""
    return {v.strip().upper() for v in text.split("\\") if v.strip()}


def _attenuation_corrected(series: DicomSeries) -> bool:
    return "ATTN" in _flags(series, "CorrectedImage")


def _listing(series: Sequence[DicomSeries]) -> str:
    return "; ".join(s.name for s in series)


def select_pet_ct(folder: DicomFolder, patient: str) -> tuple[DicomSeries, DicomSeries, list[str]]:
    """The one attenuation-corrected PET series and the one CT series of a patient folder.

    Rules: all DICOM files must belong to one patient (``PatientID``). PET candidates
    are ``Modality PT`` series whose ``CorrectedImage`` contains ``ATTN`` (non-corrected
    NAC series are skipped with a note). CT candidates are ``Modality CT`` series of
    more than one file that are not localizers (``ImageType`` LOCALIZER); where several
    remain, those sharing the PET's ``FrameOfReferenceUID`` are preferred. Other
    modalities (SEG, RTSTRUCT, SR, ...) are skipped with a note.

    Returns
    -------
    pet, ct : DicomSeries
    notes : list of str

    Raises
    ------
    IngestError
        Several patients in the folder, no PET or no CT, only NAC PET, or several
        candidates left (each listed, so that the user can move the others out).
    """
    where = f"patient {patient!r} ({folder.root})"
    notes = list(folder.notes)
    if not folder.series:
        raise IngestError(f"{where}: no DICOM files found; expected a PET and a CT series")
    ids = sorted({s.first("PatientID") or "" for s in folder.series} - {""})
    if len(ids) > 1:
        raise IngestError(
            f"{where}: the folder holds DICOM files of {len(ids)} patients (PatientID "
            f"{', '.join(repr(i) for i in ids)}); expected one patient per folder"
        )
    pet_all = [s for s in folder.series if s.modality == "PT"]
    pet = [s for s in pet_all if _attenuation_corrected(s)]
    nac = [s for s in pet_all if s not in pet]
    if nac:
        notes.append(f"{len(nac)} non-attenuation-corrected PET series skipped: {_listing(nac)}")
    ct_all = [s for s in folder.series if s.modality == "CT"]
    ct = [s for s in ct_all if "LOCALIZER" not in _flags(s, "ImageType") and len(s.files) > 1]
    others = [s for s in folder.series if s.modality not in ("PT", "CT")]
    if others:
        notes.append(
            f"{len(others)} series of other modalities skipped "
            f"({', '.join(sorted({s.modality or '?' for s in others}))})"
        )
    if len(ct) < len(ct_all):
        notes.append(f"{len(ct_all) - len(ct)} CT localizer/single-image series skipped")
    found = ", ".join(f"{s.modality or '?'} x{len(s.files)}" for s in folder.series)
    if not pet:
        if nac:
            raise IngestError(
                f"{where}: only non-attenuation-corrected PET found (CorrectedImage without "
                f"ATTN): {_listing(nac)}; SUV needs the attenuation-corrected series"
            )
        raise IngestError(f"{where}: no PET series (Modality PT) found; found series: {found}")
    if len(pet) > 1:
        raise IngestError(
            f"{where}: {len(pet)} attenuation-corrected PET series found, expected one: "
            f"{_listing(pet)}; keep the baseline whole-body series and move the others out"
        )
    if not ct:
        raise IngestError(f"{where}: no CT series (Modality CT) found; found series: {found}")
    if len(ct) > 1:
        frame = pet[0].first("FrameOfReferenceUID")
        same = [s for s in ct if frame and s.first("FrameOfReferenceUID") == frame]
        if len(same) == 1:
            notes.append(
                f"{len(ct) - 1} other CT series skipped (not in the PET's frame of reference)"
            )
            ct = same
        else:
            raise IngestError(
                f"{where}: {len(ct)} CT series found, expected one: {_listing(ct)}; keep "
                "the CT of the PET/CT and move the others out"
            )
    return pet[0], ct[0], notes


@dataclass(frozen=True)
class PetSeriesResult:
    """A PET series read as SUVbw.

    Attributes
    ----------
    image : Image
        SUVbw (g/ml), float32, shape (Columns, Rows, slices).
    scale : SuvScale
        How the pixel values were converted.
    body : Body
        Weight, height and sex from the header (for SUL).
    """

    image: Image
    scale: SuvScale
    body: Body


def read_pet(series: DicomSeries) -> PetSeriesResult:
    """Read a PET series and convert it to body-weight SUV (`lamp.ingest.suv`).

    Raises
    ------
    IngestError
        Any geometry, pixel or SUV tag problem, naming the series and the tag.
    """
    if series.modality != "PT":
        raise IngestError(f"{series.name}: expected Modality PT, got {series.modality!r}")
    scale = suv_scale(series.headers, series.name)
    image, headers = read_series(series, rescale_required=True)
    suv = (image.array * scale.factor).astype(np.float32)
    return PetSeriesResult(
        image=Image(suv, image.affine, series.name),
        scale=scale,
        body=body_from_header(headers[0], series.name),
    )


def read_ct(series: DicomSeries) -> Image:
    """Read a CT series in HU (float32), after checking ``RescaleType`` where given."""
    if series.modality != "CT":
        raise IngestError(f"{series.name}: expected Modality CT, got {series.modality!r}")
    rtype = (series.first("RescaleType") or "HU").upper()
    if rtype not in ("HU", "US"):
        raise IngestError(f"{series.name}: tag {tag_name('RescaleType')} is {rtype!r}; expected HU")
    image, _ = read_series(series, rescale_required=False)
    return Image(image.array.astype(np.float32), image.affine, series.name)
