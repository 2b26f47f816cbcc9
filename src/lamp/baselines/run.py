"""Run the baselines of Table 1 on a cohort: which exist, what each needs, and their timings.

Every baseline writes ``WORK/baselines/<method>/oof_risk.csv`` through
`lamp.baselines.common.cross_validate`; `run_baselines` runs the ones asked for (all by
default) in the order of the paper's Table 1, skips those already done (``force`` reruns
them), and skips, with the reason, those whose inputs the cohort lacks:

* "manual" methods need the cohort's reference masks (``cases/<id>/lesions.nii.gz``);
* "automatic" methods need the network's lesion instances
  (``WORK/segmentation/lamp/instances/<id>.nii.gz``, from ``lamp segment predict``);
* Thiery2025 uses the same lesion masks as LAMP, the automatic ones (``thiery_masks``).

A method named explicitly whose inputs are missing is an error, not a skip. The wall time
of each method is written to ``WORK/baselines/timings.csv`` (appended per run).

"Already done" is checked, not assumed: after a method has run, ``request.json`` beside
its ``oof_risk.csv`` records the endpoints and seeds it ran and a stamp of its inputs (the
SHA-256 of ``clinical.csv``, ``folds.csv`` and each scored patient's PET, CT, organ and
lesion-mask files of the kind it reads). A later run reuses the method
only when ``oof_risk.csv`` and ``train_risk.csv`` exist and that record covers the
endpoints and seeds asked for, over the same inputs; otherwise it runs again and says why
(for instance after ``lamp segment predict`` has rewritten the automatic masks, or when
``--seeds 3`` follows ``--seeds 1``). A folder from before this record reruns.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lamp.baselines.common import BaselineError, outcome_table
from lamp.baselines.lesions import mask_path
from lamp.cohort import case_path, file_digest, write_text_atomic

__all__ = ["BASELINES", "Baseline", "RunReport", "run_baselines", "missing_masks"]


@dataclass(frozen=True)
class Baseline:
    """One row of Table 1: its name, the lesion masks it needs and how to run it."""

    name: str
    masks: str | None  # lesion masks "manual"/"automatic", "images" (PET/CT only) or None
    runner: Callable[..., Any]
    deterministic: bool = False  # the same risks whatever the seed: run once


def _clinical(name: str) -> Callable[..., Any]:
    def run(work, cohort, endpoints, seeds, progress):
        from lamp.baselines.clinical_indices import run_clinical_indices

        return run_clinical_indices(
            work, cohort, endpoints, seeds, methods=(name,), progress=progress
        )

    return run


def _staging_on(masks: str) -> Callable[..., Any]:
    def run(work, cohort, endpoints, seeds, progress):
        from lamp.baselines.staging import run_automatic_staging

        return run_automatic_staging(work, cohort, endpoints, seeds, masks=masks, progress=progress)

    return run


def _metabolic(masks: str) -> Callable[..., Any]:
    def run(work, cohort, endpoints, seeds, progress):
        from lamp.baselines.metabolic import metabolic_agreement, run_metabolic

        out = run_metabolic(
            work, cohort, masks=masks, endpoints=endpoints, seeds=seeds, progress=progress
        )
        if masks == "automatic" and not missing_masks(cohort, work, "manual"):
            metabolic_agreement(cohort, work, progress=progress)
        return out

    return run


def _radiomics(masks: str) -> Callable[..., Any]:
    def run(work, cohort, endpoints, seeds, progress):
        from lamp.baselines.radiomics import run_radiomics

        return run_radiomics(
            work, cohort, masks=masks, endpoints=endpoints, seeds=seeds, progress=progress
        )

    return run


def _guo(work, cohort, endpoints, seeds, progress):
    from lamp.baselines.guo2021 import run_guo2021

    return run_guo2021(work, cohort, endpoints, seeds, progress=progress)


def _liu(work, cohort, endpoints, seeds, progress):
    from lamp.baselines.liu2022 import run_liu2022

    return run_liu2022(work, cohort, endpoints, seeds, progress=progress)


def _thiery(masks: str) -> Callable[..., Any]:
    def run(work, cohort, endpoints, seeds, progress):
        from lamp.baselines.thiery2025 import run_thiery2025

        return run_thiery2025(work, cohort, endpoints, seeds, masks=masks, progress=progress)

    return run


#: Table 1's baselines in the paper's order (LAMP itself comes from ``lamp train``).
BASELINES: dict[str, Baseline] = {
    b.name: b
    for b in (
        Baseline("IPI", None, _clinical("IPI"), deterministic=True),
        Baseline("Ann Arbor", None, _clinical("Ann Arbor"), deterministic=True),
        Baseline(
            "Ann Arbor (automatic)", "automatic", _staging_on("automatic"), deterministic=True
        ),
        Baseline("Metabolic (manual)", "manual", _metabolic("manual"), deterministic=True),
        Baseline("Metabolic (automatic)", "automatic", _metabolic("automatic"), deterministic=True),
        Baseline("Radiomics (manual)", "manual", _radiomics("manual")),
        Baseline("Radiomics (automatic)", "automatic", _radiomics("automatic")),
        Baseline("Guo2021", "images", _guo),
        # Liu2022 learns segmentation from the reference masks (its training labels).
        Baseline("Liu2022", "manual", _liu),
        Baseline("Thiery2025", "automatic", _thiery("automatic")),
        # The same methods on the reference masks: not rows of the paper's Table 1, shown
        # where the network's masks do not exist yet (and to compare manual/automatic).
        Baseline("Ann Arbor (manual masks)", "manual", _staging_on("manual"), deterministic=True),
        Baseline("Thiery2025 (manual masks)", "manual", _thiery("manual")),
    )
}


def missing_masks(cohort: str | Path, work: str | Path, masks: str) -> list[str]:
    """Patients with outcome data whose inputs of kind ``masks`` are missing: lesion
    masks ("manual", "automatic"; the PET as well) or the images ("images": PET and CT)."""
    table, _ = outcome_table(cohort)

    def has(p: str) -> bool:
        if not case_path(cohort, p, "pet").is_file():
            return False
        if masks == "images":
            return case_path(cohort, p, "ct").is_file()
        return mask_path(cohort, work, p, masks).is_file()

    return [p for p in table["patient_id"] if not has(p)]


#: The file kinds each kind of input reads per patient (besides the clinical table and
#: the folds): lesion masks with the PET, and organs where a method may use them.
_INPUT_KINDS = {
    None: (),
    "images": ("pet", "ct"),
    "manual": ("pet", "ct", "organs"),
    "automatic": ("pet", "ct", "organs"),
}


def inputs_stamp(cohort: str | Path, work: str | Path, masks: str | None) -> str:
    """A digest of what a baseline reads: the contents (SHA-256) of ``clinical.csv``,
    ``folds.csv`` and, for each patient with outcome, the files of ``masks``'s kind
    (missing optional files, e.g. organs, count as absent). Paths enter relative to the
    cohort and work folders, so a moved or copied folder keeps its stamp."""
    cohort, work = Path(cohort).resolve(), Path(work).resolve()
    table, _ = outcome_table(cohort)
    files = [cohort / "clinical.csv", cohort / "folds.csv"]
    for pid in table["patient_id"]:
        files += [case_path(cohort, pid, kind) for kind in _INPUT_KINDS[masks]]
        if masks in ("manual", "automatic"):
            files.append(mask_path(cohort, work, pid, masks))
    digest = hashlib.sha256()
    for f in files:
        name = f.relative_to(work if f.is_relative_to(work) else cohort).as_posix()
        digest.update(f"{name}\t{file_digest(f) if f.is_file() else 'absent'}\n".encode())
    return digest.hexdigest()


def _why_rerun(
    out: Path, spec: Baseline, endpoints: Sequence[str], seeds: Sequence[int], stamp: str
) -> str | None:
    """None when ``out`` holds a finished run that covers this request, else the reason."""
    if not (out / "oof_risk.csv").is_file():
        return "not run yet"
    if not (out / "train_risk.csv").is_file():
        return "no train_risk.csv (a run from an older version)"
    req_path = out / "request.json"
    try:
        req = json.loads(req_path.read_text(encoding="utf-8"))
        done_endpoints = set(req["endpoints"])
        done_seeds = {int(s) for s in req["seeds"]}
        done_stamp = str(req["inputs"])
    except FileNotFoundError:
        return "no request.json (a run from an older version)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{req_path} unreadable ({exc})"
    lacking = [e for e in endpoints if e not in done_endpoints]
    if lacking:
        return f"endpoint(s) {lacking} not run before (had {sorted(done_endpoints)})"
    if not spec.deterministic:
        lacking_seeds = [int(s) for s in seeds if int(s) not in done_seeds]
        if lacking_seeds:
            return f"seed(s) {lacking_seeds} not run before (had {sorted(done_seeds)})"
    if done_stamp != stamp:
        return "its inputs changed since (clinical table, folds, images or lesion masks)"
    return None


@dataclass
class RunReport:
    """What `run_baselines` did: per method "done", "skipped: <why>" or "ran", and seconds."""

    status: dict[str, str]
    seconds: dict[str, float]


def run_baselines(
    work: str | Path,
    cohort: str | Path,
    methods: Sequence[str] | None = None,
    endpoints: Sequence[str] = ("pfs", "os"),
    seeds: Sequence[int] = (0, 1, 2),
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> RunReport:
    """Run baselines of Table 1 (all by default) on the cohort's folds.

    Parameters
    ----------
    work, cohort : str or Path
    methods : sequence of str, optional
        Names of `BASELINES`; default all of them, skipping those without their inputs.
    endpoints : sequence of {"pfs", "os"}
    seeds : sequence of int
        Seeds of the trained methods; the deterministic ones (clinical indices, Cox on
        metabolic parameters) run once with the first seed whatever is asked.
    force : bool
        Rerun methods even where a finished run covers the request (see the module's
        docstring for when one is reused).
    progress : callable, optional

    Raises
    ------
    BaselineError
        An unknown method, or a method asked for by name whose masks are missing.
    """
    work, cohort = Path(work), Path(cohort)
    explicit = methods is not None
    names = list(BASELINES) if methods is None else list(methods)
    unknown = [m for m in names if m not in BASELINES]
    if unknown:
        raise BaselineError(f"baselines: unknown {unknown}; expected some of {list(BASELINES)}")
    say = progress or (lambda _msg: None)
    status: dict[str, str] = {}
    seconds: dict[str, float] = {}
    lacking = {m: missing_masks(cohort, work, m) for m in ("manual", "automatic", "images")}

    def why_blocked(spec: Baseline) -> str | None:
        if spec.masks is None or not lacking[spec.masks]:
            return None
        miss = lacking[spec.masks]
        if spec.masks == "images":
            example = case_path(cohort, miss[0], "pet")
            return f"{len(miss)} patients lack PET/CT images, e.g. {example}"
        return (
            f"{len(miss)} patients lack {spec.masks} lesion masks or PET, e.g. "
            f"{mask_path(cohort, work, miss[0], spec.masks)}"
            + (" (run `lamp segment predict`)" if spec.masks == "automatic" else "")
        )

    if explicit:  # refuse before running anything
        for name in names:
            why = why_blocked(BASELINES[name])
            if why is not None:
                raise BaselineError(f"{name}: {why}")
    for name in names:
        spec = BASELINES[name]
        out = work / "baselines" / name
        why = why_blocked(spec)
        if why is not None:
            status[name] = f"skipped: {why}"
            say(f"{name}: skipped: {why}")
            continue
        stamp = inputs_stamp(cohort, work, spec.masks)
        rerun = "--force" if force else _why_rerun(out, spec, endpoints, seeds, stamp)
        if rerun is None:
            status[name] = "done before"
            continue
        run_seeds = list(seeds)[:1] if spec.deterministic else list(seeds)
        say(f"{name}: running ({len(run_seeds)} seed(s), {', '.join(endpoints)}; {rerun})")
        t0 = time.perf_counter()
        (out / "request.json").unlink(missing_ok=True)
        spec.runner(work, cohort, list(endpoints), run_seeds, progress)
        seconds[name] = time.perf_counter() - t0
        write_text_atomic(
            out / "request.json",
            json.dumps(
                {
                    "endpoints": list(endpoints),
                    "seeds": [int(x) for x in run_seeds],
                    "inputs": stamp,
                },
                indent=2,
            )
            + "\n",
        )
        status[name] = "ran"
        say(f"{name}: {seconds[name]:.1f} s")
    if seconds:
        path = work / "baselines" / "timings.csv"
        old = pd.read_csv(path) if path.is_file() else pd.DataFrame()
        new = pd.DataFrame(
            {"method": list(seconds), "seconds": list(seconds.values()), "seeds": len(seeds)}
        )
        write_text_atomic(path, pd.concat([old, new]).to_csv(index=False, lineterminator="\n"))
    return RunReport(status, seconds)
