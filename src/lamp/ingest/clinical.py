"""The clinical table of a real cohort: CSV or Excel, with a small column map.

A researcher's spreadsheet rarely uses LAMP's column names. A column map (YAML or JSON)
says which of its columns is which, how some values are written, and in which unit the
survival times are::

    columns:            # LAMP column: the table's column
      patient_id: "Patient ID"
      pfs_months: "PFS (days)"
      pfs_event: "Progression"
    values:             # LAMP column: {the table's value: LAMP value}; case-insensitive
      sex: {male: M, female: F}
      pfs_event: {"yes": 1, "no": 0}     # quote yes/no: YAML reads them as booleans
    time_unit: days     # of pfs_months and os_months in the table: months|days|weeks|years
    sheet: Clinical     # Excel only: the sheet name or 0-based index (default: the first)

Unmapped columns keep their names (so a table already in LAMP's names needs no map), and
columns that are not LAMP's are kept as extras (``weight_kg`` and ``height_cm`` are used
by ``--sul`` for NIfTI layouts).

The mapped table is checked by `lamp.cohort.read_clinical`, the one validator of the
cohort contract: every problem at once, each with its line (the header is line 1; in a
spreadsheet the line is the sheet's row number) and column.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from lamp.cohort import CLINICAL_COLUMNS, CohortError, read_clinical, write_text_atomic
from lamp.ingest.common import IngestError

__all__ = [
    "TIME_UNITS",
    "TABLE_SUFFIXES",
    "ColumnMap",
    "load_column_map",
    "read_table",
    "apply_column_map",
    "read_clinical_table",
    "write_clinical",
]

#: Months per unit of the survival times in the table (a month is 365.25 / 12 days).
TIME_UNITS: dict[str, float] = {
    "months": 1.0,
    "days": 12.0 / 365.25,
    "weeks": 7.0 * 12.0 / 365.25,
    "years": 12.0,
}
#: Table file endings read, and how.
TABLE_SUFFIXES: dict[str, str] = {".csv": "csv", ".tsv": "tsv", ".xlsx": "excel", ".xlsm": "excel"}
_TIME_COLUMNS = ("pfs_months", "os_months")
_MAP_KEYS = {"columns", "values", "time_unit", "sheet"}


@dataclass(frozen=True)
class ColumnMap:
    """How a clinical table's columns and values map onto LAMP's (module docstring).

    Attributes
    ----------
    columns : dict of str to str
        LAMP column name -> the table's column name.
    values : dict of str to dict
        LAMP column name -> {the table's value (lower case) -> LAMP value}.
    time_unit : str
        Unit of the survival times in the table, a key of `TIME_UNITS`.
    sheet : str or int or None
        Excel sheet (name, or 0-based index); None for the first.
    source : str
        The file the map came from, for messages.
    """

    columns: dict[str, str] = field(default_factory=dict)
    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    time_unit: str = "months"
    sheet: str | int | None = None
    source: str = "column map"


def load_column_map(path: str | Path | None) -> ColumnMap:
    """Read and check a column map file (YAML or JSON); None gives the identity map.

    Raises
    ------
    IngestError
        A missing or unparsable file, unknown keys, a LAMP column mapped twice, values
        that are not strings, a YAML boolean used as a value key, an unknown time unit.
    """
    if path is None:
        return ColumnMap()
    path = Path(path)
    source = f"column map {path}"
    if not path.is_file():
        raise IngestError(f"{source}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise IngestError(f"{source}: not valid YAML/JSON: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise IngestError(
            f"{source}: expected a mapping with keys {sorted(_MAP_KEYS)}, got {type(data).__name__}"
        )
    problems: list[str] = []
    unknown = sorted(str(k) for k in data if k not in _MAP_KEYS)
    if unknown:
        problems.append(f"unknown key(s) {unknown}; expected {sorted(_MAP_KEYS)}")

    columns: dict[str, str] = {}
    raw_cols = data.get("columns") or {}
    if not isinstance(raw_cols, dict):
        problems.append("'columns' must map LAMP column names to the table's column names")
        raw_cols = {}
    for target, src in raw_cols.items():
        if not isinstance(target, str) or not isinstance(src, str | int) or isinstance(src, bool):
            problems.append(f"columns: {target!r}: expected a column name, got {src!r}")
            continue
        columns[target] = str(src).strip()
    reused = sorted({s for s in columns.values() if list(columns.values()).count(s) > 1})
    if reused:
        problems.append(
            f"columns: the table column(s) {reused} are mapped to more than one LAMP column"
        )

    values: dict[str, dict[str, Any]] = {}
    raw_vals = data.get("values") or {}
    if not isinstance(raw_vals, dict):
        problems.append("'values' must map LAMP column names to {table value: LAMP value}")
        raw_vals = {}
    for target, mapping in raw_vals.items():
        if not isinstance(mapping, dict):
            problems.append(f"values: {target!r}: expected a mapping of values, got {mapping!r}")
            continue
        clean: dict[str, Any] = {}
        for k, v in mapping.items():
            if isinstance(k, bool):
                problems.append(
                    f"values: {target!r}: key {k!r} is a YAML boolean; write the table's "
                    'value in quotes (e.g. "yes")'
                )
                continue
            clean[str(k).strip().lower()] = v
        values[str(target)] = clean

    unit = str(data.get("time_unit", "months")).strip().lower()
    if unit not in TIME_UNITS:
        problems.append(
            f"time_unit: expected one of {sorted(TIME_UNITS)}, got {data.get('time_unit')!r}"
        )
    sheet = data.get("sheet")
    if sheet is not None and (isinstance(sheet, bool) or not isinstance(sheet, str | int)):
        problems.append(f"sheet: expected a sheet name or 0-based index, got {sheet!r}")
    if problems:
        raise IngestError(f"{source}: {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))
    return ColumnMap(columns=columns, values=values, time_unit=unit, sheet=sheet, source=source)


def read_table(path: str | Path, sheet: str | int | None = None) -> pd.DataFrame:
    """Read a CSV, TSV or Excel table with every cell as text (empty cells as None).

    Text keeps what a spreadsheet shows: patient ids like ``007`` keep their zeros and no
    value is converted before the map is applied. Column names and cells are stripped.

    Raises
    ------
    IngestError
        A missing file, an unsupported ending (``.xls``: save as ``.xlsx``), an
        unreadable file, a missing sheet.
    """
    path = Path(path)
    source = f"clinical table {path}"
    if not path.is_file():
        raise IngestError(f"{source}: file not found")
    kind = TABLE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        hint = " (save it as .xlsx)" if path.suffix.lower() == ".xls" else ""
        raise IngestError(
            f"{source}: expected a table ending in {', '.join(TABLE_SUFFIXES)}, got "
            f"{path.suffix or 'no ending'!r}{hint}"
        )
    try:
        if kind == "excel":
            df = pd.read_excel(
                path,
                sheet_name=0 if sheet is None else sheet,
                dtype=str,
                keep_default_na=False,
                engine="openpyxl",
            )
        else:
            df = pd.read_csv(
                path,
                sep="\t" if kind == "tsv" else ",",
                dtype=str,
                keep_default_na=False,
                encoding="utf-8-sig",
            )
    except (
        ValueError,
        KeyError,
        OSError,
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
        UnicodeDecodeError,
    ) as exc:
        raise IngestError(f"{source}: unreadable table: {type(exc).__name__}: {exc}") from None
    except Exception as exc:  # openpyxl raises its own kinds for damaged workbooks
        raise IngestError(f"{source}: unreadable table: {type(exc).__name__}: {exc}") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df.apply(lambda col: col.map(_clean_cell))


def _clean_cell(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def apply_column_map(df: pd.DataFrame, cmap: ColumnMap, source: str) -> pd.DataFrame:
    """Rename, recode and rescale a raw table (all text) into LAMP's columns.

    Raises
    ------
    IngestError
        A mapped column absent from the table, or a LAMP column that would appear twice
        (mapped from one column while another already has its name).
    """
    problems: list[str] = []
    missing = {t: s for t, s in cmap.columns.items() if s not in df.columns}
    for target, src in missing.items():
        problems.append(
            f"column {src!r} (mapped to {target!r} by the {cmap.source}) not found; the "
            f"table has {list(df.columns)}"
        )
    renames = {s: t for t, s in cmap.columns.items() if s in df.columns}
    clash = sorted(t for s, t in renames.items() if t in df.columns and t != s)
    for target in clash:
        problems.append(
            f"the table already has a column {target!r} and the map also maps "
            f"{cmap.columns[target]!r} to it; drop one of the two"
        )
    if problems:
        raise IngestError(f"{source}: {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))
    out = df.rename(columns=renames)
    for target, mapping in cmap.values.items():
        if target not in out.columns:
            raise IngestError(
                f"{source}: the {cmap.source} recodes values of {target!r}, which is not a "
                "column of the table (after renaming)"
            )
        out[target] = out[target].map(
            lambda v, m=mapping: str(m[v.lower()]) if v is not None and v.lower() in m else v
        )
    factor = TIME_UNITS[cmap.time_unit]
    if factor != 1.0:
        for col in _TIME_COLUMNS:
            if col in out.columns:
                out[col] = out[col].map(lambda v: _scale_time(v, factor))
    return out


def _scale_time(value: str | None, factor: float) -> str | None:
    """A time converted to months; cells that are not numbers stay for the validator."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return value
    return repr(number * factor)


def read_clinical_table(
    path: str | Path, column_map: str | Path | ColumnMap | None = None
) -> pd.DataFrame:
    """Read a clinical table, map its columns and check it against the cohort contract.

    Parameters
    ----------
    path : str or Path
        ``.csv``, ``.tsv``, ``.xlsx`` or ``.xlsm``; one row per patient.
    column_map : str, Path, ColumnMap or None
        A map file (module docstring), a `ColumnMap`, or None when the table already
        uses LAMP's column names.

    Returns
    -------
    DataFrame
        As `lamp.cohort.read_clinical` returns it: one row per patient in table order,
        `lamp.cohort.CLINICAL_COLUMNS` typed, extra columns kept.

    Raises
    ------
    IngestError
        Problems of the file or of the map.
    CohortError
        Every problem of the mapped table at once (missing columns, empty/duplicate/
        malformed ids, out-of-range values, bad times, events not 0/1, OS < PFS, ...),
        each with its line and column; the message names ``path``.
    """
    path = Path(path)
    cmap = column_map if isinstance(column_map, ColumnMap) else load_column_map(column_map)
    source = f"clinical table {path}"
    raw = read_table(path, cmap.sheet)
    mapped = apply_column_map(raw, cmap, source)
    # The contract's validator reads a CSV: write the mapped table as one (rows in the
    # table's order, so its line numbers are the table's) and let it list the problems.
    with tempfile.TemporaryDirectory(prefix="lamp-ingest-") as tmp:
        tmp_path = Path(tmp) / "clinical.csv"
        mapped.to_csv(tmp_path, index=False, lineterminator="\n")
        try:
            return read_clinical(tmp_path)
        except CohortError as exc:
            via = f" (after the {cmap.source})" if cmap.source != "column map" else ""
            message = str(exc).replace(f"clinical table {tmp_path}", f"{source}{via}")
            if any(c not in mapped.columns for c in CLINICAL_COLUMNS) and not cmap.columns:
                message += (
                    "\n  hint: map the table's column names with --column-map FILE "
                    "(see docs/ingest.md)"
                )
            raise CohortError(message) from None


def write_clinical(path: str | Path, df: pd.DataFrame) -> Path:
    """Write a checked clinical table as the cohort's ``clinical.csv`` (atomic)."""
    return write_text_atomic(path, df.to_csv(index=False, lineterminator="\n"))
