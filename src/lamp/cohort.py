"""The cohort contract: the clinical table, case paths, validation and the one fold split.

A cohort folder (DESIGN.md, "Files between stages")::

    COHORT/
      clinical.csv                     one row per patient (`CLINICAL_COLUMNS` + extras)
      folds.csv                        patient_id, fold: the one patient-level split
      cases/<patient_id>/pet.nii.gz    PET in SUVbw; its grid is the reference grid
      cases/<patient_id>/ct.nii.gz     CT in HU, on its own grid or on the PET grid
      cases/<patient_id>/organs.nii.gz TotalSegmentator 'total' ids on the PET grid
      cases/<patient_id>/lesions.nii.gz reference lesion instances 1..J on the PET grid

Every reader here checks what it reads where it enters and reports *all* problems of a
file at once, naming the file, the line, the column, what was expected and what came.
Every writer is atomic (`atomic_output`).
"""

from __future__ import annotations

import csv
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lamp.errors import LampError

__all__ = [
    "CLINICAL_COLUMNS",
    "SURVIVAL_COLUMNS",
    "ENDPOINTS",
    "CASE_FILES",
    "PATIENT_ID_PATTERN",
    "CohortError",
    "atomic_output",
    "write_text_atomic",
    "file_digest",
    "check_patient_id",
    "case_dir",
    "case_path",
    "read_clinical",
    "has_outcome",
    "pfs_strata",
    "make_folds",
    "write_folds",
    "read_folds",
    "nnunet_splits",
]

#: Required columns of ``clinical.csv``, in the order the generator writes them.
CLINICAL_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "age",
    "sex",
    "ecog",
    "ldh_ratio",
    "ann_arbor",
    "extranodal_sites",
    "ipi",
    "pfs_months",
    "pfs_event",
    "os_months",
    "os_event",
)
#: The outcome columns: all four present (a patient with outcome) or all four empty.
SURVIVAL_COLUMNS: tuple[str, ...] = ("pfs_months", "pfs_event", "os_months", "os_event")
#: Endpoint name -> (time column in months, event column) of ``clinical.csv``.
ENDPOINTS: dict[str, tuple[str, str]] = {
    "pfs": ("pfs_months", "pfs_event"),
    "os": ("os_months", "os_event"),
}
#: File name of each kind of image in ``cases/<patient_id>/``.
CASE_FILES: dict[str, str] = {
    "pet": "pet.nii.gz",
    "ct": "ct.nii.gz",
    "organs": "organs.nii.gz",
    "lesions": "lesions.nii.gz",
}
#: A patient id: letters, digits, ``_`` and ``-``, not starting with ``_`` or ``-`` (it
#: names a folder and, for nnU-Net, the start of file names).
PATIENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
_PID_RE = re.compile(PATIENT_ID_PATTERN)

# Cells read as missing in the numeric columns (pandas' default NA strings); the
# patient_id column treats only the empty cell as missing, so an id "NA" stays an id.
_NA_CELLS = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
    "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
]  # fmt: skip
# Integer columns and their inclusive ranges (None = unbounded).
_INT_RANGES: dict[str, tuple[int, int | None]] = {
    "ecog": (0, 4),
    "ann_arbor": (1, 4),
    "ipi": (0, 5),
    "extranodal_sites": (0, None),
}
_MAX_AGE = 120.0
# Problems listed in one error message before "... and N more".
_MAX_LISTED = 50
_LINE_RE = re.compile(r"line (\d+)")


class CohortError(LampError):
    """A cohort file or value breaks the contract; the message says which file, which
    field, what was expected and what came. A `ValueError` (through `LampError`)."""


# --------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Write ``path`` all at once: yield a temporary path beside it, then rename.

    The temporary file (``.<name>.<random>.tmp`` in the same folder, so the rename is
    atomic and no ``*.nii.gz`` or ``*.csv`` pattern matches it) replaces ``path`` with
    `os.replace` when the ``with`` block ends without error and is removed otherwise.
    An interrupted run therefore never leaves a file that looks finished. The parent
    folder is created.

    Examples
    --------
    >>> with atomic_output(folder / "table.csv") as tmp:  # doctest: +SKIP
    ...     df.to_csv(tmp, index=False)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        # mkstemp creates 0600; give the finished file the permissions of a normal write
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a UTF-8 text file atomically (see `atomic_output`); returns ``path``."""
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


#: Digests computed in this process, by (path, size, mtime): a file read by several
#: stages or methods of one run is hashed once.
_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex): what a stage records of an input, so that a
    rerun can tell a changed input (a retrained network, new masks) from the same one.
    Cached per process while the file's size and modification time are unchanged."""
    import hashlib

    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


# --------------------------------------------------------------------------------------
# Case paths
# --------------------------------------------------------------------------------------


def check_patient_id(patient_id: Any, where: str = "patient_id") -> str:
    """Return ``patient_id`` if it matches `PATIENT_ID_PATTERN`, else raise CohortError."""
    if not isinstance(patient_id, str) or not _PID_RE.match(patient_id):
        raise CohortError(
            f"{where}: expected a patient id matching {PATIENT_ID_PATTERN} "
            f"(letters, digits, '_', '-'), got {patient_id!r}"
        )
    return patient_id


def case_dir(cohort: str | Path, patient_id: str) -> Path:
    """The folder of one case: ``cohort / "cases" / patient_id``."""
    return Path(cohort) / "cases" / check_patient_id(patient_id)


def case_path(cohort: str | Path, patient_id: str, kind: str) -> Path:
    """The image file of one kind (``"pet"``, ``"ct"``, ``"organs"``, ``"lesions"``)."""
    if kind not in CASE_FILES:
        raise CohortError(f"case_path: expected kind one of {sorted(CASE_FILES)}, got {kind!r}")
    return case_dir(cohort, patient_id) / CASE_FILES[kind]


# --------------------------------------------------------------------------------------
# clinical.csv
# --------------------------------------------------------------------------------------


def _raise_problems(source: str, problems: list[str]) -> None:
    if not problems:
        return
    # file order: table-level problems first, then by line (stable within a line)
    problems = sorted(problems, key=lambda p: int(m.group(1)) if (m := _LINE_RE.match(p)) else 0)
    shown = problems[:_MAX_LISTED]
    more = len(problems) - len(shown)
    tail = f"\n  ... and {more} more" if more else ""
    raise CohortError(f"{source}: {len(problems)} problem(s):\n  - " + "\n  - ".join(shown) + tail)


def read_clinical(path: str | Path) -> pd.DataFrame:
    """Read and check ``clinical.csv``.

    Parameters
    ----------
    path : str or Path
        The CSV file: a header row with at least `CLINICAL_COLUMNS`, one row per patient.

    Returns
    -------
    DataFrame
        One row per patient in file order (RangeIndex), extra columns kept as pandas
        reads them. Dtypes: ``patient_id`` and ``sex`` str; ``age``, ``ldh_ratio`` float64
        (years; LDH / upper limit of normal); ``ecog``, ``ann_arbor``, ``extranodal_sites``,
        ``ipi`` int64; ``pfs_months``, ``os_months`` float64 (NaN without outcome);
        ``pfs_event``, ``os_event`` pandas nullable ``Int64`` (1 = event, 0 = censored,
        ``<NA>`` without outcome: take ``df[has_outcome(df)]`` before ``.astype(int)``).

    Raises
    ------
    CohortError
        Listing every problem at once, each with its line number (the header is line 1),
        patient and column: missing columns; empty, malformed or duplicate patient ids;
        sex not M/F; age not in (0, 120]; ecog not an integer 0-4; ldh_ratio not > 0;
        ann_arbor not 1-4; ipi not 0-5; extranodal_sites not an integer >= 0; survival
        columns partly empty; times not > 0; events not 0/1; os_months < pfs_months; an
        OS event without a PFS event (death is a PFS event).
    """
    path = Path(path)
    source = f"clinical table {path}"
    if not path.is_file():
        raise CohortError(f"{source}: file not found (expected a CSV with {CLINICAL_COLUMNS})")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
        na = {c: (_NA_CELLS if c != "patient_id" else [""]) for c in header}
        df = pd.read_csv(
            path,
            dtype={"patient_id": str, "sex": str},
            keep_default_na=False,
            na_values=na,
            skipinitialspace=True,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CohortError(f"{source}: unreadable CSV: {exc}") from exc

    problems: list[str] = []
    dup_cols = sorted({c for c in header if header.count(c) > 1})
    if dup_cols:
        problems.append(f"expected unique column names, got duplicates {dup_cols}")
    missing = [c for c in CLINICAL_COLUMNS if c not in df.columns]
    if missing:
        problems.append(f"missing column(s) {missing}; found {list(df.columns)}")
    if len(df) == 0:
        problems.append("expected one row per patient, got no rows")
        _raise_problems(source, problems)

    ids = df["patient_id"] if "patient_id" in df.columns else pd.Series([None] * len(df))

    def where(row: int, col: str) -> str:
        pid = ids.iloc[row]
        who = f" (patient {pid!r})" if isinstance(pid, str) and pid else ""
        return f"line {row + 2}{who}, column {col!r}"

    # --- patient ids
    if "patient_id" in df.columns:
        seen: dict[str, int] = {}
        for r, pid in enumerate(ids):
            if not isinstance(pid, str) or pid.strip() == "":
                problems.append(
                    f"{where(r, 'patient_id')}: expected a patient id, got an empty cell"
                )
            elif not _PID_RE.match(pid):
                problems.append(
                    f"{where(r, 'patient_id')}: expected an id matching {PATIENT_ID_PATTERN}, "
                    f"got {pid!r}"
                )
            elif pid in seen:
                problems.append(
                    f"{where(r, 'patient_id')}: expected unique ids, got {pid!r} again "
                    f"(first on line {seen[pid] + 2})"
                )
            else:
                seen[pid] = r

    # --- numeric columns: coerce, listing cells that are not numbers
    num: dict[str, pd.Series] = {}
    for col in CLINICAL_COLUMNS:
        if col in ("patient_id", "sex") or col not in df.columns:
            continue
        values = pd.to_numeric(df[col], errors="coerce").astype(np.float64)
        for r in np.flatnonzero(values.isna().to_numpy() & df[col].notna().to_numpy()):
            problems.append(f"{where(r, col)}: expected a number, got {df[col].iloc[r]!r}")
        for r in np.flatnonzero(np.isinf(values.to_numpy())):
            problems.append(f"{where(r, col)}: expected a finite number, got {values[r]}")
        num[col] = values

    def bad_rows(col: str, ok: pd.Series) -> list[int]:
        v = num[col]
        return list(np.flatnonzero((v.notna() & ~ok).to_numpy()))

    def require(col: str) -> None:
        if col in num:
            given = df[col].notna().to_numpy()
            for r in np.flatnonzero(~given):
                problems.append(f"{where(r, col)}: expected a value, got an empty cell")

    # --- baseline variables (required for every patient)
    if "sex" in df.columns:
        for r, s in enumerate(df["sex"]):
            if s not in ("M", "F"):
                got = "an empty cell" if not isinstance(s, str) else repr(s)
                problems.append(f"{where(r, 'sex')}: expected 'M' or 'F', got {got}")
    for col in ("age", "ldh_ratio", *_INT_RANGES):
        require(col)
    if "age" in num:
        a = num["age"]
        for r in bad_rows("age", (a > 0) & (a <= _MAX_AGE)):
            problems.append(f"{where(r, 'age')}: expected years in (0, {_MAX_AGE:g}], got {a[r]:g}")
    if "ldh_ratio" in num:
        v = num["ldh_ratio"]
        for r in bad_rows("ldh_ratio", v > 0):
            problems.append(f"{where(r, 'ldh_ratio')}: expected LDH / ULN > 0, got {v[r]:g}")
    for col, (lo, hi) in _INT_RANGES.items():
        if col not in num:
            continue
        v = num[col]
        ok = (v == np.round(v)) & (v >= lo) & (v <= (np.inf if hi is None else hi))
        span = f"an integer {lo}-{hi}" if hi is not None else f"an integer >= {lo}"
        for r in bad_rows(col, ok):
            problems.append(f"{where(r, col)}: expected {span}, got {v[r]:g}")

    # --- survival: all four or none, then values, then consistency
    if all(c in num for c in SURVIVAL_COLUMNS):
        given = pd.DataFrame({c: df[c].notna() for c in SURVIVAL_COLUMNS})
        n_given = given.sum(axis=1).to_numpy()
        partial = (n_given > 0) & (n_given < len(SURVIVAL_COLUMNS))
        for r in np.flatnonzero(partial):
            empty = [c for c in SURVIVAL_COLUMNS if not given[c].iloc[r]]
            problems.append(
                f"{where(r, ', '.join(SURVIVAL_COLUMNS))}: expected all four survival values "
                f"or none (no outcome), got empty {empty}"
            )
        valid = pd.Series(n_given == len(SURVIVAL_COLUMNS))
        for col in ("pfs_months", "os_months"):
            v = num[col]
            bad = (v <= 0) & df[col].notna()
            valid &= ~bad
            for r in np.flatnonzero(bad.to_numpy()):
                problems.append(f"{where(r, col)}: expected a time > 0 months, got {v[r]:g}")
        for col in ("pfs_event", "os_event"):
            v = num[col]
            bad = ~v.isin([0.0, 1.0]) & v.notna()
            valid &= ~bad & v.notna()
            for r in np.flatnonzero(bad.to_numpy()):
                problems.append(
                    f"{where(r, col)}: expected 0 (censored) or 1 (event), got {v[r]:g}"
                )
        valid = valid.to_numpy()
        pfs, os_ = num["pfs_months"].to_numpy(), num["os_months"].to_numpy()
        for r in np.flatnonzero(valid & (os_ < pfs)):
            problems.append(
                f"{where(r, 'os_months')}: expected os_months >= pfs_months "
                f"({pfs[r]:g}), got {os_[r]:g}"
            )
        pe, oe = num["pfs_event"].to_numpy(), num["os_event"].to_numpy()
        for r in np.flatnonzero(valid & (oe == 1) & (pe == 0)):
            problems.append(
                f"{where(r, 'pfs_event')}: expected 1 when os_event is 1 (death is a PFS "
                "event), got 0"
            )

    _raise_problems(source, problems)

    out = df.copy()
    out["patient_id"] = out["patient_id"].astype(str)
    out["sex"] = out["sex"].astype(str)
    for col in ("age", "ldh_ratio", "pfs_months", "os_months"):
        out[col] = num[col]
    for col in _INT_RANGES:
        out[col] = num[col].astype(np.int64)
    for col in ("pfs_event", "os_event"):
        out[col] = num[col].astype("Int64")
    return out


def has_outcome(df: pd.DataFrame) -> pd.Series:
    """Whether each patient has an outcome (all `SURVIVAL_COLUMNS` filled).

    Returns
    -------
    Series of bool, indexed like ``df``.
    """
    missing = [c for c in SURVIVAL_COLUMNS if c not in df.columns]
    if missing:
        raise CohortError(
            f"has_outcome: expected columns {list(SURVIVAL_COLUMNS)}, missing {missing}"
        )
    return df[list(SURVIVAL_COLUMNS)].notna().all(axis=1).rename("has_outcome")


def pfs_strata(df: pd.DataFrame) -> pd.Series:
    """The stratum of each patient for the fold split, from the PFS columns.

    Returns
    -------
    Series of str, indexed like ``df``
        ``"event"`` (pfs_event 1), ``"censored"`` (pfs_event 0) or ``"no_outcome"``
        (no PFS time or event).
    """
    missing = [c for c in ("pfs_months", "pfs_event") if c not in df.columns]
    if missing:
        raise CohortError(f"pfs_strata: expected columns pfs_months, pfs_event, missing {missing}")
    event = pd.to_numeric(df["pfs_event"], errors="coerce").astype(np.float64)
    known = event.notna() & df["pfs_months"].notna()
    bad = known & ~event.isin([0.0, 1.0])
    if bad.any():
        raise CohortError(
            f"pfs_strata: expected pfs_event 0 or 1, got {sorted(set(event[bad]))} "
            f"(rows {list(df.index[bad])[:10]})"
        )
    strata = np.where(~known, "no_outcome", np.where(event == 1.0, "event", "censored"))
    return pd.Series(strata, index=df.index, name="stratum", dtype=object)


# --------------------------------------------------------------------------------------
# Folds
# --------------------------------------------------------------------------------------


def make_folds(
    patient_ids: Sequence[str],
    strata: Sequence[Any] | pd.Series,
    n_folds: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """A stratified, balanced, reproducible patient-level split into ``n_folds`` folds.

    The patients of each stratum are shuffled (`numpy.random.default_rng` of ``seed``),
    the strata are laid end to end in sorted order and folds are dealt round-robin along
    that sequence, starting from a random fold order. Hence every stratum is spread over
    the folds with counts that differ by at most one, and fold sizes differ by at most one.

    Parameters
    ----------
    patient_ids : sequence of str, length n
        Unique patient ids.
    strata : sequence, length n
        Stratum label of each patient, e.g. `pfs_strata`.
    n_folds : int, default 5
        Number of folds, 2 <= n_folds <= n.
    seed : int, default 0
        The same ids, strata and seed give the same split.

    Returns
    -------
    DataFrame with columns ``patient_id`` (str) and ``fold`` (int64, 0..n_folds-1), one
    row per patient in the order of ``patient_ids``.
    """
    ids = [check_patient_id(p, "make_folds patient_ids") for p in patient_ids]
    labels = list(strata.tolist() if isinstance(strata, pd.Series) else strata)
    if len(labels) != len(ids):
        raise CohortError(
            f"make_folds: expected one stratum per patient ({len(ids)}), got {len(labels)}"
        )
    unlabelled = [p for p, s in zip(ids, labels, strict=True) if pd.isna(s)]
    if unlabelled:
        raise CohortError(
            f"make_folds: expected a stratum for every patient, got none for {unlabelled[:10]}"
        )
    dups = sorted(p for p, n in Counter(ids).items() if n > 1)
    if dups:
        raise CohortError(f"make_folds: expected unique patient ids, got duplicates {dups[:10]}")
    if not isinstance(n_folds, int | np.integer) or n_folds < 2:
        raise CohortError(f"make_folds: expected n_folds an integer >= 2, got {n_folds!r}")
    if len(ids) < n_folds:
        raise CohortError(
            f"make_folds: expected at least as many patients as folds ({n_folds}), got {len(ids)}"
        )
    rng = np.random.default_rng(seed)
    order: list[int] = []
    for label in sorted(set(labels), key=lambda x: (str(type(x)), str(x))):
        members = [i for i, s in enumerate(labels) if s == label]
        order.extend(members[j] for j in rng.permutation(len(members)))
    fold_of = rng.permutation(n_folds)
    fold = np.empty(len(ids), dtype=np.int64)
    for pos, i in enumerate(order):
        fold[i] = fold_of[pos % n_folds]
    return pd.DataFrame({"patient_id": pd.Series(ids, dtype=object), "fold": fold})


def _check_folds(df: pd.DataFrame, source: str, patient_ids: Sequence[str] | None) -> pd.DataFrame:
    """Validate a fold table; return it as (patient_id str, fold int64), RangeIndex."""
    missing = [c for c in ("patient_id", "fold") if c not in df.columns]
    if missing:
        raise CohortError(
            f"{source}: expected columns patient_id, fold; missing {missing}, "
            f"found {list(df.columns)}"
        )
    problems: list[str] = []
    if len(df) == 0:
        problems.append("expected one row per patient, got no rows")
    ids = df["patient_id"]
    fold = pd.to_numeric(df["fold"], errors="coerce")
    for r in range(len(df)):
        pid = ids.iloc[r]
        if not isinstance(pid, str) or not _PID_RE.match(pid):
            problems.append(
                f"line {r + 2}, column 'patient_id': expected an id matching "
                f"{PATIENT_ID_PATTERN}, got {pid!r}"
            )
        f = fold.iloc[r]
        if pd.isna(f) or f != round(f) or f < 0:
            problems.append(
                f"line {r + 2}, column 'fold': expected an integer >= 0, got {df['fold'].iloc[r]!r}"
            )
    counts = ids.value_counts()
    dups = sorted(counts.index[counts > 1].tolist())
    if dups:
        problems.append(f"expected each patient exactly once, got repeated ids {dups}")
    _raise_problems(source, problems)

    fold = fold.astype(np.int64)
    k = int(fold.max()) + 1
    empty = sorted(set(range(k)) - set(fold.tolist()))
    if empty:
        problems.append(
            f"expected folds 0..{k - 1} each with at least one patient, got empty fold(s) {empty}"
        )
    if k < 2:
        problems.append(f"expected at least 2 folds, got {k}")
    if patient_ids is not None:
        want, have = set(patient_ids), set(ids)
        if want - have:
            problems.append(
                f"patients missing from the split (in the clinical table): {sorted(want - have)}"
            )
        if have - want:
            problems.append(
                f"patients in the split but not in the clinical table: {sorted(have - want)}"
            )
    _raise_problems(source, problems)
    return pd.DataFrame(
        {"patient_id": ids.astype(str).to_numpy(dtype=object), "fold": fold.to_numpy()}
    )


def write_folds(path: str | Path, folds_df: pd.DataFrame) -> Path:
    """Check a fold table (as `read_folds` does) and write it atomically as CSV.

    Parameters
    ----------
    path : str or Path
        Output CSV, usually ``COHORT / "folds.csv"``.
    folds_df : DataFrame
        Columns ``patient_id`` and ``fold`` (e.g. from `make_folds`); others are dropped.
    """
    path = Path(path)
    clean = _check_folds(folds_df, f"write_folds {path}", None)
    return write_text_atomic(path, clean.to_csv(index=False, lineterminator="\n"))


def read_folds(path: str | Path, patient_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Read and check a fold table (``folds.csv``).

    Parameters
    ----------
    path : str or Path
        CSV with columns ``patient_id`` and ``fold``.
    patient_ids : sequence of str, optional
        If given, the split must hold exactly these patients (e.g. those of
        ``clinical.csv``); the error names the missing and the extra ids.

    Returns
    -------
    DataFrame with columns ``patient_id`` (str) and ``fold`` (int64), in file order.

    Raises
    ------
    CohortError
        Missing file or columns, a fold that is not an integer >= 0, folds 0..k-1 not
        all used, a patient listed twice, or a patient set different from ``patient_ids``.
    """
    path = Path(path)
    source = f"fold table {path}"
    if not path.is_file():
        raise CohortError(
            f"{source}: file not found (expected a CSV with columns patient_id, fold; "
            "write one with lamp.cohort.make_folds and write_folds)"
        )
    try:
        df = pd.read_csv(
            path,
            dtype={"patient_id": str},
            keep_default_na=False,
            na_values={"patient_id": [""], "fold": [""]},
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CohortError(f"{source}: unreadable CSV: {exc}") from exc
    return _check_folds(df, source, patient_ids)


def nnunet_splits(folds_df: pd.DataFrame) -> list[dict[str, list[str]]]:
    """The split in nnU-Net v2's ``splits_final.json`` format.

    Parameters
    ----------
    folds_df : DataFrame
        Columns ``patient_id`` and ``fold`` (checked as in `read_folds`).

    Returns
    -------
    list of dict
        ``[{"train": [...], "val": [...]}, ...]``, element k for fold k; ids in the
        order of ``folds_df``. nnU-Net's case identifiers are the patient ids.
    """
    df = _check_folds(folds_df, "nnunet_splits", None)
    k = int(df["fold"].max()) + 1
    pids = df["patient_id"].tolist()
    folds = df["fold"].tolist()
    return [
        {
            "train": [p for p, f in zip(pids, folds, strict=True) if f != i],
            "val": [p for p, f in zip(pids, folds, strict=True) if f == i],
        }
        for i in range(k)
    ]
