"""Write a synthetic cohort in the layout of DESIGN.md, resumably, and summarise it.

``COHORT/``
    ``synth_config.json`` the generator's settings (seed, size, configuration), written
    first; a rerun with other settings into the same folder is refused.
    ``cases/<id>/{ct,pet,organs,lesions}.nii.gz`` per patient (unless tables only).
    ``lesions.csv`` the generator's lesion list; ``truth.csv`` true risks (benchmarks only);
    ``folds.csv`` the one 5-fold split; ``clinical.csv`` written after the images, so its
    presence says the cohort is complete; ``nnunet_raw/`` the nnU-Net v2 raw dataset.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lamp import __version__
from lamp.cohort import (
    CASE_FILES,
    CLINICAL_COLUMNS,
    case_dir,
    make_folds,
    pfs_strata,
    write_folds,
    write_text_atomic,
)
from lamp.errors import LampError
from lamp.images import load_nifti, save_nifti
from lamp.synth.config import SIZES, SynthConfig, validate_config
from lamp.synth.disease import HAZARD_TERMS, Patient, _dmax, simulate_patient
from lamp.synth.render import render_patient

__all__ = ["SynthError", "SynthRequest", "generate_cohort", "simulate_tables", "summarize"]

N_FOLDS = 5
_PARALLEL_MIN = 2000  # below this, process start-up costs more than it saves


class SynthError(LampError):
    """An invalid request to the generator (names the argument or the folder)."""


@dataclass(frozen=True)
class SynthRequest:
    """What to generate: the arguments of ``lamp synth``."""

    out: Path
    n_patients: int = 229
    seed: int = 0
    size: str = "small"
    tables_only: bool = False
    export_nnunet: bool = True

    def check(self) -> None:
        if not isinstance(self.n_patients, int) or self.n_patients < N_FOLDS:
            raise SynthError(
                f"--patients must be an integer >= {N_FOLDS} (one per fold at least), "
                f"got {self.n_patients!r}"
            )
        if self.n_patients > 9999:
            if not self.tables_only:
                raise SynthError(
                    f"--patients {self.n_patients}: image cohorts are limited to 9999 "
                    "patients (patient ids SYN0000-SYN9999); use --tables-only for more"
                )
            if self.n_patients > 10_000_000:
                raise SynthError(f"--patients must be <= 10000000, got {self.n_patients}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise SynthError(f"--seed must be a non-negative integer, got {self.seed!r}")
        if self.size not in SIZES:
            raise SynthError(f"--size must be one of {', '.join(SIZES)}, got {self.size!r}")
        if self.out.exists() and not self.out.is_dir():
            raise SynthError(f"--out {self.out}: exists and is not a folder")


def _atomic_csv(path: Path, df: pd.DataFrame) -> None:
    write_text_atomic(path, df.to_csv(index=False, lineterminator="\n"))


def _simulate_range(args: tuple[dict, int, int, int]) -> list[Patient]:
    from lamp.synth.config import config_from_dict

    cfg_dict, seed, start, stop = args
    cfg = config_from_dict(cfg_dict)
    return [simulate_patient(cfg, seed, i) for i in range(start, stop)]


def simulate_tables(
    cfg: SynthConfig, n_patients: int, seed: int, workers: int = 1
) -> list[Patient]:
    """Simulate the patients' tables (no images); ``workers`` processes for large cohorts
    (the result does not depend on it)."""
    if workers <= 1 or n_patients < _PARALLEL_MIN:
        return [simulate_patient(cfg, seed, i) for i in range(n_patients)]
    edges = np.linspace(0, n_patients, 4 * workers + 1).astype(int)
    jobs = [
        (cfg.to_dict(), seed, int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return [p for chunk in pool.map(_simulate_range, jobs) for p in chunk]


def _clinical_frame(patients: list[Patient]) -> pd.DataFrame:
    rows = []
    for p in patients:
        rows.append(
            {
                "patient_id": p.patient_id,
                "age": p.age,
                "sex": p.sex,
                "ecog": p.ecog,
                "ldh_ratio": p.ldh_ratio,
                "ann_arbor": p.stage,
                "extranodal_sites": p.extranodal_sites,
                "ipi": p.ipi,
                "pfs_months": p.pfs_months if p.has_outcome else None,
                "pfs_event": p.pfs_event if p.has_outcome else None,
                "os_months": p.os_months if p.has_outcome else None,
                "os_event": p.os_event if p.has_outcome else None,
                "height_cm": round(p.body.height_cm, 1),
                "weight_kg": round(p.body.weight_kg, 1),
            }
        )
    df = pd.DataFrame(rows)
    for col in ("pfs_event", "os_event"):
        df[col] = df[col].astype("Int64")
    assert list(df.columns[: len(CLINICAL_COLUMNS)]) == list(CLINICAL_COLUMNS)
    return df


def _lesion_frame(
    patients: list[Patient], voxels: dict[str, np.ndarray] | None, voxel_ml: dict[str, float] | None
) -> pd.DataFrame:
    rows = []
    for p in patients:
        for j, les in enumerate(p.lesions, start=1):
            row = {
                "patient_id": p.patient_id,
                "lesion_id": j,
                "site": les.site,
                "site_type": les.site_type,
                "organ": les.organ,
                "side": les.side,
                "volume_ml": round(les.volume_ml, 3),
                "suvmax": round(les.suvmax, 2),
                "heterogeneity": round(les.heterogeneity, 4),
                "necrotic_fraction": round(les.necrotic_fraction, 4),
                "ct_hu": les.hu,
                "centroid_x_mm": round(float(les.center[0]), 2),
                "centroid_y_mm": round(float(les.center[1]), 2),
                "centroid_z_mm": round(float(les.center[2]), 2),
            }
            if voxels is not None and voxel_ml is not None:
                n = int(voxels[p.patient_id][j - 1])
                row["voxels"] = n
                row["rendered_ml"] = round(n * voxel_ml[p.patient_id], 3)
            rows.append(row)
    return pd.DataFrame(rows)


def _truth_frame(patients: list[Patient]) -> pd.DataFrame:
    rows = []
    for p in patients:
        row = {
            "patient_id": p.patient_id,
            "lp_pfs": round(p.lp_pfs, 6),
            "lp_os": round(p.lp_os, 6),
            "frailty_pfs": round(p.frailty_pfs, 6),
            "frailty_os": round(p.frailty_os, 6),
            "has_outcome": int(p.has_outcome),
            "biology": round(p.biology, 6),
            "diffuse_marrow": int(p.diffuse_marrow),
            "diffuse_spleen": int(p.diffuse_spleen),
            "tmtv_ml": round(p.tmtv_ml, 3),
            "dmax_mm": round(_dmax(p.lesions), 2),
            "nodal_regions": ";".join(p.nodal_regions),
            "extranodal": ";".join(p.extranodal_list),
        }
        row.update({f"cov_{k}": round(p.covariates[k], 6) for k in HAZARD_TERMS})
        rows.append(row)
    return pd.DataFrame(rows)


def _case_complete(cohort: Path, pid: str) -> bool:
    d = case_dir(cohort, pid)
    return all((d / name).is_file() for name in CASE_FILES.values())


def _render_and_write(args: tuple[Path, dict, int, str, int]) -> tuple[str, np.ndarray, float]:
    cohort, cfg_dict, seed, size, index = args
    from lamp.synth.config import config_from_dict

    cfg = config_from_dict(cfg_dict)
    patient = simulate_patient(cfg, seed, index)
    case = render_patient(patient, cfg, size, seed)
    d = case_dir(cohort, patient.patient_id)
    save_nifti(d / CASE_FILES["ct"], case.ct, case.ct_grid.affine, np.int16)
    save_nifti(d / CASE_FILES["organs"], case.organs, case.pet_grid.affine, np.uint8)
    save_nifti(d / CASE_FILES["lesions"], case.lesions, case.pet_grid.affine, np.uint16)
    # the PET last: its presence with the others marks the case as complete
    save_nifti(d / CASE_FILES["pet"], case.pet, case.pet_grid.affine, np.float32)
    return patient.patient_id, case.lesion_voxels, case.pet_grid.voxel_ml


def _count_existing(cohort: Path, pid: str, n_lesions: int) -> tuple[np.ndarray, float]:
    lab, affine = load_nifti(case_dir(cohort, pid) / CASE_FILES["lesions"])
    counts = np.bincount(lab.ravel().astype(np.int64), minlength=n_lesions + 1)[1 : n_lesions + 1]
    return counts, float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0


def _check_out(req: SynthRequest, cfg: SynthConfig) -> dict:
    settings = {
        "generator": f"lamp-pet {__version__}",
        "n_patients": req.n_patients,
        "seed": req.seed,
        "size": None if req.tables_only else req.size,
        "tables_only": req.tables_only,
        "config": cfg.to_dict(),
    }
    path = req.out / "synth_config.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = None
        same = old is not None and {k: v for k, v in old.items() if k != "generator"} == {
            k: v for k, v in json.loads(json.dumps(settings)).items() if k != "generator"
        }
        if not same:
            raise SynthError(
                f"--out {req.out}: holds a cohort made with other settings (see "
                f"{path}); choose a new folder or delete this one"
            )
    elif req.out.exists() and any(req.out.iterdir()):
        raise SynthError(
            f"--out {req.out}: the folder is not empty and holds no synth_config.json; "
            "refusing to write a cohort into it"
        )
    return settings


def generate_cohort(
    req: SynthRequest,
    cfg: SynthConfig | None = None,
    workers: int = 1,
    progress: Callable[[str, int, int], None] | None = None,
) -> Path:
    """Generate (or resume) a synthetic cohort; returns the cohort folder.

    Parameters
    ----------
    req : SynthRequest
        Output folder, number of patients, seed, size and options.
    cfg : SynthConfig, optional
        Generator configuration (defaults when None).
    workers : int
        Processes rendering cases in parallel (results do not depend on it).
    progress : callable, optional
        Called as ``progress(stage, done, total)`` after each case of a stage
        (``"render"``, then ``"export"``).
    """
    cfg = cfg or SynthConfig()
    req.check()
    validate_config(cfg)
    settings = _check_out(req, cfg)
    req.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(req.out / "synth_config.json", json.dumps(settings, indent=1) + "\n")

    patients = simulate_tables(cfg, req.n_patients, req.seed, workers)
    voxels: dict[str, np.ndarray] | None = None
    voxel_ml: dict[str, float] | None = None
    if not req.tables_only:
        voxels, voxel_ml = {}, {}
        todo = []
        for p in patients:
            if _case_complete(req.out, p.patient_id):
                voxels[p.patient_id], voxel_ml[p.patient_id] = _count_existing(
                    req.out, p.patient_id, len(p.lesions)
                )
            else:
                todo.append(p.index)
        done = len(patients) - len(todo)
        if progress:
            progress("render", done, len(patients))
        jobs = [(req.out, cfg.to_dict(), req.seed, req.size, i) for i in todo]
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                results = pool.map(_render_and_write, jobs, chunksize=1)
                for pid, counts, vml in results:
                    voxels[pid], voxel_ml[pid] = counts, vml
                    done += 1
                    if progress:
                        progress("render", done, len(patients))
        else:
            for job in jobs:
                pid, counts, vml = _render_and_write(job)
                voxels[pid], voxel_ml[pid] = counts, vml
                done += 1
                if progress:
                    progress("render", done, len(patients))

    clinical = _clinical_frame(patients)
    _atomic_csv(req.out / "lesions.csv", _lesion_frame(patients, voxels, voxel_ml))
    _atomic_csv(req.out / "truth.csv", _truth_frame(patients))
    folds = make_folds(clinical["patient_id"].tolist(), pfs_strata(clinical), N_FOLDS, req.seed)
    write_folds(req.out / "folds.csv", folds)
    _atomic_csv(req.out / "clinical.csv", clinical)
    if not req.tables_only and req.export_nnunet:
        from lamp.segmentation.dataset import export_nnunet_raw

        export_nnunet_raw(
            req.out,
            patient_ids=clinical["patient_id"].tolist(),
            progress=(lambda d, t: progress("export", d, t)) if progress else None,
        )
    return req.out


def summarize(cohort: Path) -> dict:
    """Descriptive statistics of a cohort from ``clinical.csv`` and ``lesions.csv``.

    Reads only what a model may read (never ``truth.csv``).
    """
    from lifelines import KaplanMeierFitter
    from lifelines.utils import concordance_index

    from lamp.clinical import ipi_group
    from lamp.cohort import has_outcome, read_clinical

    clin = read_clinical(cohort / "clinical.csv")
    out: dict = {"patients": len(clin)}
    known = has_outcome(clin)
    out["with_outcome"] = int(known.sum())
    c = clin[known]
    out["pfs_events"] = int(c["pfs_event"].sum())
    out["os_events"] = int(c["os_event"].sum())
    les_path = cohort / "lesions.csv"
    if les_path.exists():
        les = pd.read_csv(les_path)
        per = les.groupby("patient_id")
        tmtv = per["volume_ml"].sum().reindex(clin["patient_id"]).fillna(0.0)
        out["tmtv_ml_median"] = float(tmtv.median())
        out["tmtv_ml_iqr"] = [float(tmtv.quantile(0.25)), float(tmtv.quantile(0.75))]
        n = per.size().reindex(clin["patient_id"]).fillna(0)
        out["lesions_median"] = float(n.median())
        out["lesions_range"] = [int(n.min()), int(n.max())]
        tm_known = tmtv.to_numpy()[known.to_numpy()]
    else:
        tm_known = None
    out["stage"] = {
        int(k): int(v) for k, v in clin["ann_arbor"].value_counts().sort_index().items()
    }
    groups = ipi_group(clin["ipi"].to_numpy())
    out["ipi_group"] = {
        g: int((groups == g).sum())
        for g in ("low", "low-intermediate", "high-intermediate", "high")
    }
    if len(c) >= 2 and c["pfs_event"].sum() > 0:
        t, e = c["pfs_months"].to_numpy(float), c["pfs_event"].to_numpy(int)
        km = KaplanMeierFitter().fit(t, e)
        out["pfs_2y"] = float(km.predict(24.0))
        out["followup_median_months"] = float(
            KaplanMeierFitter().fit(t, 1 - e).median_survival_time_
        )
        out["cindex_ipi_pfs"] = float(concordance_index(t, -c["ipi"].to_numpy(float), e))
        if tm_known is not None:
            out["cindex_tmtv_pfs"] = float(concordance_index(t, -tm_known, e))
    return out
