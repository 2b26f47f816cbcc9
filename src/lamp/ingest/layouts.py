"""Where each input layout keeps a patient's images, and how they are read.

``dicom``
    ``INPUT/<patient_id>/**``: any tree of DICOM files holding one attenuation-corrected
    PET series and one CT series of one patient (`lamp.ingest.dicom.select_pet_ct`);
    optional ``organs.nii.gz`` (or an ``organs/`` folder of per-class masks) and
    ``lesions.nii.gz`` directly in the patient folder.
``nifti``
    ``INPUT/<patient_id>/{ct,pet}.nii.gz`` (CT in HU, PET in SUVbw), optional
    ``organs.nii.gz`` or ``organs/``, optional ``lesions.nii.gz`` (``.nii`` also read).
``autopet``
    The autoPET / TCIA FDG-PET-CT-Lesions NIfTI layout:
    ``INPUT/<patient_id>/<study>/{CTres,SUV,SEG}.nii.gz``, one study per patient
    (``CT.nii.gz`` is used when ``CTres.nii.gz`` is absent); optional ``organs.nii.gz``
    or ``organs/`` in the study folder.
``nnunet``
    An nnU-Net v2 raw dataset folder: ``imagesTr/<case>_0000.nii.gz`` (CT),
    ``imagesTr/<case>_0001.nii.gz`` (PET in SUV), ``labelsTr/<case>.nii.gz`` (lesions);
    ``imagesTs`` cases without labels too. ``dataset.json``'s ``channel_names``, where
    present, says which channel is CT and which PET. Optional organ masks in
    ``organs/<case>.nii.gz`` or ``organs/<case>/``.

The patient id is the folder name (nnU-Net: the case name) and must be the table's id.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lamp.cohort import PATIENT_ID_PATTERN, CohortError
from lamp.images import load_nifti
from lamp.ingest.common import Image, IngestError
from lamp.ingest.dicom import (
    is_dicom_file,
    read_ct,
    read_pet,
    scan_dicom_folder,
    select_pet_ct,
)
from lamp.ingest.suv import Body

__all__ = [
    "LAYOUTS",
    "PatientSource",
    "LoadedPatient",
    "discover",
    "load_patient",
]

#: The input layouts ``lamp ingest --layout`` reads.
LAYOUTS: tuple[str, ...] = ("dicom", "nifti", "autopet", "nnunet")

_PID_RE = re.compile(PATIENT_ID_PATTERN)
_NNUNET_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})(?P<ending>\.nii\.gz|\.nii)$")
_PET_CHANNEL_NAMES = {"PET", "PT", "SUV", "FDG", "FDG-PET", "PET_SUV"}


@dataclass(frozen=True)
class PatientSource:
    """Where one patient's inputs are.

    Attributes
    ----------
    patient_id : str
    layout : str
    folder : Path
        The patient's folder (the dataset folder for nnU-Net), for messages.
    pet, ct : Path or None
        NIfTI files (None for ``dicom``: the series are found in ``folder``).
    organs, lesions : Path or None
        Optional masks (a file, or for organs a folder of per-class masks).
    problem : str or None
        Why the patient cannot be read, found while looking (the patient fails).
    notes : tuple of str
    """

    patient_id: str
    layout: str
    folder: Path
    pet: Path | None = None
    ct: Path | None = None
    organs: Path | None = None
    lesions: Path | None = None
    problem: str | None = None
    notes: tuple[str, ...] = ()


@dataclass
class LoadedPatient:
    """A patient's images as read, each on its own grid.

    Attributes
    ----------
    pet : Image
        SUVbw (g/ml), float32.
    ct : Image
        HU, float32.
    organs, lesions : Image or None
        TotalSegmentator 'total' ids (uint8); lesion labels (integers, binary or instances).
    suv : dict
        How the SUV was obtained (`SuvScale.to_dict` for DICOM).
    body : Body or None
        Weight/height/sex from the DICOM header (for SUL); None for NIfTI layouts.
    notes : list of str
    """

    pet: Image
    ct: Image
    organs: Image | None = None
    lesions: Image | None = None
    suv: dict = field(default_factory=dict)
    body: Body | None = None
    notes: list[str] = field(default_factory=list)


def _nifti(folder: Path, stem: str) -> Path | None:
    for ending in (".nii.gz", ".nii"):
        p = folder / f"{stem}{ending}"
        if p.is_file():
            return p
    return None


def _organs_in(folder: Path, stem: str = "organs") -> Path | None:
    if (folder / stem).is_dir():
        return folder / stem
    return _nifti(folder, stem)


def _patient_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _bad_id(pid: str) -> str | None:
    if _PID_RE.match(pid):
        return None
    return (
        f"folder name {pid!r} is not a valid patient id (letters, digits, '_' and '-', "
        "starting with a letter or digit); rename it to the id used in the clinical table"
    )


def _discover_dicom(root: Path) -> list[PatientSource]:
    top_files = [p for p in root.iterdir() if p.is_file() and is_dicom_file(p)]
    if top_files:
        raise IngestError(
            f"--input {root}: holds DICOM files directly ({len(top_files)}, e.g. "
            f"{top_files[0].name}); expected one folder per patient, named by patient id, "
            "each holding that patient's PET and CT series"
        )
    out = []
    for folder in _patient_folders(root):
        pid = folder.name
        out.append(
            PatientSource(
                patient_id=pid,
                layout="dicom",
                folder=folder,
                organs=_organs_in(folder),
                lesions=_nifti(folder, "lesions"),
                problem=_bad_id(pid),
            )
        )
    return out


def _discover_nifti(root: Path) -> list[PatientSource]:
    out = []
    for folder in _patient_folders(root):
        pid = folder.name
        pet, ct = _nifti(folder, "pet"), _nifti(folder, "ct")
        problem = _bad_id(pid)
        if problem is None and (pet is None or ct is None):
            missing = [n for n, p in (("pet.nii.gz", pet), ("ct.nii.gz", ct)) if p is None]
            problem = f"{folder}: missing {' and '.join(missing)} (the nifti layout needs both)"
        out.append(
            PatientSource(
                pid,
                "nifti",
                folder,
                pet=pet,
                ct=ct,
                organs=_organs_in(folder),
                lesions=_nifti(folder, "lesions"),
                problem=problem,
            )
        )
    return out


def _discover_autopet(root: Path) -> list[PatientSource]:
    out = []
    for folder in _patient_folders(root):
        pid = folder.name
        studies = [
            s
            for s in _patient_folders(folder)
            if _nifti(s, "SUV") or _nifti(s, "CTres") or _nifti(s, "SEG") or _nifti(s, "CT")
        ]
        problem = _bad_id(pid)
        if problem is None and not studies:
            problem = (
                f"{folder}: no study folder with SUV.nii.gz found (autoPET layout: "
                "<patient>/<study>/{CTres,SUV,SEG}.nii.gz)"
            )
        if problem is None and len(studies) > 1:
            problem = (
                f"{folder}: {len(studies)} studies ({', '.join(s.name for s in studies)}); "
                "expected one baseline study per patient: move the others out"
            )
        if problem is not None:
            out.append(PatientSource(pid, "autopet", folder, problem=problem))
            continue
        study = studies[0]
        pet = _nifti(study, "SUV")
        ct = _nifti(study, "CTres")
        notes: tuple[str, ...] = ()
        if ct is None and _nifti(study, "CT") is not None:
            ct = _nifti(study, "CT")
            notes = ("CTres.nii.gz absent: CT.nii.gz resampled onto the PET grid",)
        if pet is None or ct is None:
            missing = [n for n, p in (("SUV.nii.gz", pet), ("CTres.nii.gz", ct)) if p is None]
            problem = f"{study}: missing {' and '.join(missing)}"
        out.append(
            PatientSource(
                pid,
                "autopet",
                study,
                pet=pet,
                ct=ct,
                organs=_organs_in(study),
                lesions=_nifti(study, "SEG"),
                problem=problem,
                notes=notes,
            )
        )
    return out


def _nnunet_channels(root: Path) -> tuple[str, str, list[str]]:
    """The CT and PET channel suffixes (``"0000"``) and the file endings to read."""
    ds = root / "dataset.json"
    if not ds.is_file():
        return "0000", "0001", [".nii.gz", ".nii"]
    try:
        meta = json.loads(ds.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IngestError(f"{ds}: not valid JSON: {exc}") from None
    names = meta.get("channel_names") or meta.get("modality") or {}
    if not isinstance(names, dict):
        raise IngestError(f"{ds}: 'channel_names' must map channel numbers to names, got {names!r}")
    ct = [k for k, v in names.items() if str(v).strip().upper() == "CT"]
    pet = [k for k, v in names.items() if str(v).strip().upper() in _PET_CHANNEL_NAMES]
    if len(ct) != 1 or len(pet) != 1:
        raise IngestError(
            f"{ds}: channel_names {names}: expected exactly one channel named CT and one "
            f"named PET (or SUV)"
        )
    ending = str(meta.get("file_ending", ".nii.gz"))
    if ending not in (".nii.gz", ".nii"):
        raise IngestError(f"{ds}: file_ending {ending!r}: only NIfTI (.nii.gz, .nii) is read")
    return f"{int(ct[0]):04d}", f"{int(pet[0]):04d}", [ending]


def _discover_nnunet(root: Path) -> list[PatientSource]:
    image_dirs = [root / d for d in ("imagesTr", "imagesTs") if (root / d).is_dir()]
    if not image_dirs:
        raise IngestError(
            f"--input {root}: no imagesTr or imagesTs folder; expected an nnU-Net v2 raw "
            "dataset folder (Dataset###_Name)"
        )
    ct_ch, pet_ch, endings = _nnunet_channels(root)
    cases: dict[str, dict[str, Path]] = {}
    where: dict[str, Path] = {}
    for d in image_dirs:
        for p in sorted(d.iterdir()):
            m = _NNUNET_RE.match(p.name)
            if m is None or m.group("ending") not in endings:
                continue
            case = m.group("case")
            if case in where and where[case] != d:
                continue  # reported below as a duplicate
            cases.setdefault(case, {})[m.group("channel")] = p
            where[case] = d
    out = []
    for case in sorted(cases):
        files = cases[case]
        problem = _bad_id(case)
        missing = [f"{case}_{ch}" for ch in (ct_ch, pet_ch) if ch not in files]
        if problem is None and missing:
            problem = (
                f"{where[case]}: missing {', '.join(missing)} (CT is {ct_ch}, PET is {pet_ch})"
            )
        label = None
        if where[case].name == "imagesTr":
            label = next(
                (
                    root / "labelsTr" / f"{case}{e}"
                    for e in endings
                    if (root / "labelsTr" / f"{case}{e}").is_file()
                ),
                None,
            )
        organs = _organs_in(root / "organs", case) if (root / "organs").is_dir() else None
        extra = sorted(set(files) - {ct_ch, pet_ch})
        notes = (f"channel(s) {extra} ignored",) if extra else ()
        out.append(
            PatientSource(
                case,
                "nnunet",
                root,
                pet=files.get(pet_ch),
                ct=files.get(ct_ch),
                organs=organs,
                lesions=label,
                problem=problem,
                notes=notes,
            )
        )
    return out


def discover(input_path: str | Path, layout: str) -> list[PatientSource]:
    """Find every patient of an input folder in the given layout.

    Returns
    -------
    list of PatientSource
        One per patient found, sorted by id; a patient whose files are incomplete or
        ambiguous carries a ``problem`` (it fails; the others go on).

    Raises
    ------
    IngestError
        An unknown layout, a missing input folder, a folder that does not have the
        layout's shape, or one in which no patient is found.
    """
    root = Path(input_path)
    if layout not in LAYOUTS:
        raise IngestError(f"--layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not root.is_dir():
        raise IngestError(f"--input {root}: folder not found")
    finder = {
        "dicom": _discover_dicom,
        "nifti": _discover_nifti,
        "autopet": _discover_autopet,
        "nnunet": _discover_nnunet,
    }[layout]
    sources = finder(root)
    if not sources:
        raise IngestError(
            f"--input {root}: no patient found in the {layout} layout (see docs/ingest.md "
            "for the expected folders and file names)"
        )
    return sorted(sources, key=lambda s: s.patient_id)


def _read_nifti(path: Path, what: str) -> Image:
    try:
        data, affine = load_nifti(path)
    except CohortError as exc:
        raise IngestError(f"{what}: {exc}") from None
    return Image(data, affine, str(path))


def load_patient(source: PatientSource) -> LoadedPatient:
    """Read one patient's images (PET as SUVbw, CT in HU, masks as stored).

    Raises
    ------
    IngestError
        Whatever makes the images unusable: unreadable or non-3D files, NaNs, a DICOM
        series or SUV tag problem (named), organ masks that are not TotalSegmentator's.
    """
    from lamp.ingest.organs import read_organs

    if source.problem is not None:
        raise IngestError(source.problem)
    notes = list(source.notes)
    if source.layout == "dicom":
        folder = scan_dicom_folder(source.folder)
        pet_series, ct_series, pick_notes = select_pet_ct(folder, source.patient_id)
        notes += pick_notes
        pet_result = read_pet(pet_series)
        pet = pet_result.image
        ct = read_ct(ct_series)
        suv = pet_result.scale.to_dict()
        notes += list(pet_result.scale.notes)
        body: Body | None = pet_result.body
        if pet_series.first("FrameOfReferenceUID") != ct_series.first("FrameOfReferenceUID"):
            notes.append("PET and CT have different FrameOfReferenceUIDs")
    else:
        assert source.pet is not None and source.ct is not None
        pet = _read_nifti(source.pet, "PET")
        ct = _read_nifti(source.ct, "CT")
        pet = Image(pet.array.astype(np.float32), pet.affine, pet.source)
        ct = Image(ct.array.astype(np.float32), ct.affine, ct.source)
        suv = {"units": "SUVbw", "method": f"{source.layout} layout: PET given in SUVbw"}
        body = None
    organs = None
    if source.organs is not None:
        organs, organ_notes = read_organs(source.organs)
        notes += organ_notes
    lesions = None
    if source.lesions is not None:
        lesions = _read_nifti(source.lesions, "lesion mask")
    return LoadedPatient(
        pet=pet, ct=ct, organs=organs, lesions=lesions, suv=suv, body=body, notes=notes
    )
