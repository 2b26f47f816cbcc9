"""Real studies in: DICOM PET/CT with SUV conversion, NIfTI, autoPET and nnU-Net layouts,
TotalSegmentator organ masks and clinical tables, checked, into the cohort layout.

The pieces, in the order a run uses them:

* `lamp.ingest.clinical` -- the clinical table (CSV/Excel) and its column map;
* `lamp.ingest.layouts` -- where each layout keeps a patient's files, and reading them;
* `lamp.ingest.dicom` and `lamp.ingest.suv` -- DICOM series and PET to SUV;
* `lamp.ingest.organs` -- TotalSegmentator masks to 'total' ids;
* `lamp.ingest.case` -- checks and resampling onto the PET grid;
* `lamp.ingest.run` -- the resumable driver and its summary (`ingest_cohort`);
* `lamp.ingest.export` -- a cohort written back out as DICOM or autoPET (for trying it);
* `lamp.ingest.cli` -- the ``lamp ingest`` subcommand.

The names below are imported on first use, so that ``import lamp.ingest.cli`` (and hence
``lamp --help``) does not load pydicom, pandas or scipy.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "IngestError",
    "IngestRequest",
    "IngestSummary",
    "ingest_cohort",
    "LAYOUTS",
    "ColumnMap",
    "load_column_map",
    "read_clinical_table",
    "read_organs",
    "scan_dicom_folder",
    "read_pet",
    "read_ct",
    "SuvScale",
    "suv_scale",
    "lean_body_mass_kg",
    "export_cohort",
    "write_dicom_series",
]

_WHERE = {
    "IngestError": "common",
    "IngestRequest": "run",
    "IngestSummary": "run",
    "ingest_cohort": "run",
    "LAYOUTS": "layouts",
    "ColumnMap": "clinical",
    "load_column_map": "clinical",
    "read_clinical_table": "clinical",
    "read_organs": "organs",
    "scan_dicom_folder": "dicom",
    "read_pet": "dicom",
    "read_ct": "dicom",
    "SuvScale": "suv",
    "suv_scale": "suv",
    "lean_body_mass_kg": "suv",
    "export_cohort": "export",
    "write_dicom_series": "export",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(import_module(f"lamp.ingest.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lamp.ingest' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
