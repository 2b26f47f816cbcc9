"""Driving nnU-Net v2 for LAMP: environment, planning, preprocessing, training, prediction.

This is the one module that imports ``nnunetv2`` (inside the functions, so that importing
LAMP stays light). nnU-Net reads its folders from environment variables; LAMP sets them
for the duration of each call (:func:`nnunet_env`) under the work folder -- the user never
has to::

    WORK/nnunet/raw/Dataset501_LAMPSynth/        the nnU-Net raw export of the cohort
    WORK/nnunet/preprocessed/Dataset501_.../     plans, fingerprint, preprocessed cases,
                                                 splits_final.json = the cohort's folds
    WORK/nnunet/results/Dataset501_.../<trainer>__nnUNetPlans__<configuration>/fold_k/

Two configurations (:data:`SEG_CONFIGS`): ``full`` is nnU-Net's own ``3d_fullres`` with
its own schedule (for a GPU); ``tiny`` adds a ``3d_lamp_tiny`` configuration to the plans
(same preprocessing and spacing as ``3d_fullres``; 4 stages of 32-96 features so that
the decoders' last blocks keep the 32/32/64 channels of the paper; a 32^3 patch; no
mirroring) with a short schedule, for CPU tests and the demo.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lamp.cohort import file_digest, read_folds, write_text_atomic
from lamp.errors import LampError
from lamp.segmentation.dataset import dataset_folder_name, export_nnunet_raw

__all__ = [
    "SEG_CONFIGS",
    "SegmentConfig",
    "SegmentError",
    "nnunet_env",
    "prepare_dataset",
    "train_fold",
    "predict_out_of_fold",
    "trainer_name",
    "results_folder",
]

PLANS = "nnUNetPlans"
TINY_CONFIGURATION = "3d_lamp_tiny"


class SegmentError(LampError):
    """A segmentation-stage input or setting a user got wrong."""


@dataclass(frozen=True)
class SegmentConfig:
    """Settings of the segmentation stage (saved beside its outputs)."""

    name: str
    configuration: str  # nnU-Net configuration trained
    num_epochs: int | None = None  # None: nnU-Net's default
    iterations_per_epoch: int | None = None
    val_iterations_per_epoch: int | None = None
    # epochs between nnU-Net's checkpoint_latest.pth (what an interrupted training resumes
    # from); None: nnU-Net's 50, more than the whole tiny schedule
    save_every: int | None = None
    mirroring: bool = True
    patch_size: tuple[int, int, int] | None = None  # tiny configuration only
    features_per_stage: tuple[int, ...] | None = None
    batch_size: int | None = None
    dataset_id: int = 501
    dataset_name: str = "LAMPSynth"
    data_augmentation_processes: int = 2
    # sliding-window step as a fraction of the patch (nnU-Net's tile_step_size): 0.5 is
    # nnU-Net's default (about 8 windows cover a voxel in 3D); 1.0 tiles without overlap
    # beyond rounding (4.4x fewer windows on a `small` scan: 36-42 instead of 165-180);
    # used by predict and features
    tile_step_size: float = 0.5
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


SEG_CONFIGS: dict[str, SegmentConfig] = {
    "tiny": SegmentConfig(
        name="tiny",
        configuration=TINY_CONFIGURATION,
        num_epochs=30,
        iterations_per_epoch=20,
        val_iterations_per_epoch=4,
        save_every=2,  # an epoch is 1.5-2 min on a 2-core CPU; a checkpoint is 39 MB
        mirroring=False,
        patch_size=(32, 32, 32),  # 48^3 costs 4x more per iteration on CPU
        features_per_stage=(32, 48, 64, 96),
        batch_size=2,
    ),
    "full": SegmentConfig(name="full", configuration="3d_fullres"),
}


def trainer_name(plain: bool) -> str:
    return "nnUNetTrainerLAMPPlain" if plain else "nnUNetTrainerLAMP"


def _folders(work: Path) -> dict[str, Path]:
    base = Path(work).resolve() / "nnunet"
    return {"raw": base / "raw", "preprocessed": base / "preprocessed", "results": base / "results"}


@contextlib.contextmanager
def nnunet_env(work: Path, cfg: SegmentConfig) -> Iterator[dict[str, Path]]:
    """Set nnU-Net's environment variables for the duration of a call, then restore them."""
    from lamp.segmentation.trainer import TRAINERS_DIR

    folders = _folders(work)
    for p in folders.values():
        p.mkdir(parents=True, exist_ok=True)
    values = {
        "nnUNet_raw": str(folders["raw"]),
        "nnUNet_preprocessed": str(folders["preprocessed"]),
        "nnUNet_results": str(folders["results"]),
        "nnUNet_extTrainer": str(TRAINERS_DIR),
        "nnUNet_n_proc_DA": str(cfg.data_augmentation_processes),
        "nnUNet_compile": "false",  # compiling costs more than it saves at these sizes
    }
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield folders
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _tiny_configuration(plans: dict, cfg: SegmentConfig) -> dict:
    """A plans configuration for CPU: nnU-Net's 3d_fullres, smaller."""
    base = plans["configurations"]["3d_fullres"]
    n = len(cfg.features_per_stage)
    arch = json.loads(json.dumps(base["architecture"]))
    kw = arch["arch_kwargs"]
    kw.update(
        n_stages=n,
        features_per_stage=list(cfg.features_per_stage),
        kernel_sizes=[[3, 3, 3]] * n,
        strides=[[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
        n_conv_per_stage=[2] * n,
        n_conv_per_stage_decoder=[2] * (n - 1),
    )
    return {
        "inherits_from": "3d_fullres",
        "patch_size": list(cfg.patch_size),
        "batch_size": cfg.batch_size,
        "architecture": arch,
    }


def prepare_dataset(cohort: Path, work: Path, cfg: SegmentConfig, num_processes: int = 2) -> Path:
    """Export the cohort, let nnU-Net fingerprint, plan and preprocess it, and install the
    cohort's folds as nnU-Net's ``splits_final.json``. Resumable: done steps are skipped.

    Returns the preprocessed dataset folder.
    """
    name = dataset_folder_name(cfg.dataset_id, cfg.dataset_name)
    with nnunet_env(work, cfg) as folders:
        export_nnunet_raw(cohort, folders["raw"], cfg.dataset_id, cfg.dataset_name)
        pre = folders["preprocessed"] / name
        plans_path = pre / f"{PLANS}.json"
        from nnunetv2.experiment_planning.plan_and_preprocess_api import (
            extract_fingerprint_dataset,
            plan_experiment_dataset,
            preprocess_dataset,
        )

        if not (pre / "dataset_fingerprint.json").is_file():
            extract_fingerprint_dataset(
                cfg.dataset_id,
                num_processes=num_processes,
                check_dataset_integrity=True,
                clean=True,
                verbose=False,
                show_progress_bar=False,
            )
        if not plans_path.is_file():
            plan_experiment_dataset(cfg.dataset_id)
        plans = json.loads(plans_path.read_text())
        if cfg.configuration == TINY_CONFIGURATION:
            plans["configurations"][TINY_CONFIGURATION] = _tiny_configuration(plans, cfg)
            write_text_atomic(plans_path, json.dumps(plans, indent=1))
        data_id = plans["configurations"]["3d_fullres"]["data_identifier"]
        done = pre / f".lamp_preprocessed_{data_id}"  # not inside: nnU-Net scans that folder
        if not done.is_file():
            preprocess_dataset(
                cfg.dataset_id,
                PLANS,
                ("3d_fullres",),
                (num_processes,),
                verbose=False,
                show_progress_bar=False,
            )
            done.write_text("ok\n")
        shutil.copyfile(folders["raw"] / name / "splits_final.json", pre / "splits_final.json")
        return pre


def results_folder(work: Path, cfg: SegmentConfig, plain: bool) -> Path:
    name = dataset_folder_name(cfg.dataset_id, cfg.dataset_name)
    return _folders(work)["results"] / name / f"{trainer_name(plain)}__{PLANS}__{cfg.configuration}"


def _device(device: str):
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise SegmentError("--device cuda: no CUDA device is available here; use --device cpu")
    if device not in ("cpu", "cuda"):
        raise SegmentError(f"--device must be cpu or cuda, got {device!r}")
    return torch.device(device)


def _check_same_patch(work: Path, cfg: SegmentConfig, plain: bool) -> None:
    """Refuse to add a fold trained on another patch size to a model folder: nnU-Net keeps
    one ``plans.json`` per model folder, and prediction would run every fold with it."""
    if cfg.patch_size is None:
        return
    model_dir = results_folder(work, cfg, plain)
    plans_path = model_dir / "plans.json"
    if not plans_path.is_file() or not any(model_dir.glob("fold_*/checkpoint_*.pth")):
        return
    try:
        conf = json.loads(plans_path.read_text())["configurations"][cfg.configuration]
        trained = tuple(int(v) for v in conf["patch_size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SegmentError(f"{plans_path}: unreadable nnU-Net plans ({exc})") from exc
    if trained != tuple(cfg.patch_size):
        raise SegmentError(
            f"{plans_path}: configurations.{cfg.configuration}.patch_size is "
            f"{list(trained)} (the folds already trained there) but this run asks for "
            f"{list(cfg.patch_size)}; use the same --patch-size or another --work"
        )


def train_fold(
    work: Path, cfg: SegmentConfig, fold: int, plain: bool = False, device: str = "cpu"
) -> Path:
    """Train one fold with nnU-Net (resumes from its latest checkpoint); returns the fold
    folder holding ``checkpoint_final.pth``."""
    import torch

    name = dataset_folder_name(cfg.dataset_id, cfg.dataset_name)
    dev = _device(device)
    _check_same_patch(work, cfg, plain)
    with nnunet_env(work, cfg) as folders:
        pre = folders["preprocessed"] / name
        if not (pre / f"{PLANS}.json").is_file():
            raise SegmentError(f"{pre}: the dataset is not prepared; run prepare first")
        from nnunetv2.run.run_training import get_trainer_from_args

        trainer = get_trainer_from_args(
            str(cfg.dataset_id), cfg.configuration, fold, trainer_name(plain), PLANS, device=dev
        )
        out = Path(trainer.output_folder)
        if (out / "checkpoint_final.pth").is_file():
            return out
        if cfg.num_epochs is not None:
            trainer.num_epochs = cfg.num_epochs
        if cfg.iterations_per_epoch is not None:
            trainer.num_iterations_per_epoch = cfg.iterations_per_epoch
        if cfg.val_iterations_per_epoch is not None:
            trainer.num_val_iterations_per_epoch = cfg.val_iterations_per_epoch
        if cfg.save_every is not None:
            trainer.save_every = cfg.save_every
        trainer.disable_mirroring = not cfg.mirroring
        latest = out / "checkpoint_latest.pth"
        if latest.is_file():
            trainer.load_checkpoint(str(latest))
        if dev.type == "cpu":
            torch.set_num_threads(max(1, os.cpu_count() or 1))
        trainer.run_training()
        write_text_atomic(out / "lamp_segment_config.json", json.dumps(cfg.to_dict(), indent=1))
        return out


def fold_predictor(model_dir: Path, folds, cfg: SegmentConfig, dev):
    """nnU-Net's predictor of the trained ``folds`` of ``model_dir`` (more than one: their
    ensemble, nnU-Net averaging the logits), with ``cfg``'s step and mirroring and
    Gaussian weighting."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(
        tile_step_size=cfg.tile_step_size,
        use_gaussian=True,
        use_mirroring=cfg.mirroring,
        perform_everything_on_device=dev.type == "cuda",
        device=dev,
        verbose=False,
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(
        str(model_dir), use_folds=tuple(folds), checkpoint_name="checkpoint_final.pth"
    )
    return predictor


def predict_out_of_fold(
    cohort: Path,
    work: Path,
    cfg: SegmentConfig,
    plain: bool = False,
    device: str = "cpu",
    folds: list[int] | None = None,
    patients: list[str] | None = None,
) -> Path:
    """Predict every patient (or only ``patients``) with the model of the fold that held
    it out.

    Writes ``WORK/segmentation/<lamp|plain>/pred/<patient_id>.nii.gz`` (binary lesion
    masks on the PET grid, as nnU-Net exports them back to the raw geometry); returns
    that folder. Patients already predicted are skipped while what predicted them is
    unchanged: ``pred/predictions.json`` records, per patient, the SHA-256 of the fold's
    ``checkpoint_final.pth``, the step and the mirroring; a patient predicted by a network
    since retrained, or with other settings, is predicted again. (A prediction from before
    that record is kept.)
    """
    name = dataset_folder_name(cfg.dataset_id, cfg.dataset_name)
    dev = _device(device)
    fold_table = read_folds(Path(cohort) / "folds.csv")
    out_dir = Path(work) / "segmentation" / ("plain" if plain else "lamp") / "pred"
    out_dir.mkdir(parents=True, exist_ok=True)
    model_dir = results_folder(work, cfg, plain)
    record_path = out_dir / "predictions.json"
    try:
        made = json.loads(record_path.read_text()) if record_path.is_file() else {}
    except ValueError:
        made = {}  # unreadable: every prediction without a record is kept, as before it
    with nnunet_env(work, cfg) as fold_env:
        raw = fold_env["raw"] / name / "imagesTr"
        for k in sorted(fold_table["fold"].unique()) if folds is None else folds:
            ckpt = model_dir / f"fold_{k}" / "checkpoint_final.pth"
            if not ckpt.is_file():
                raise SegmentError(f"{ckpt}: fold {k} is not trained; run lamp segment train")
            want = {
                "fold": int(k),
                "checkpoint_sha256": file_digest(ckpt),
                "step": cfg.tile_step_size,
                "mirroring": cfg.mirroring,
            }
            pids = [
                p
                for p in fold_table.loc[fold_table["fold"] == k, "patient_id"]
                if (patients is None or p in patients)
                and not ((out_dir / f"{p}.nii.gz").is_file() and made.get(p, want) == want)
            ]
            if not pids:
                continue
            predictor = fold_predictor(model_dir, (k,), cfg, dev)
            inputs = [[str(raw / f"{p}_0000.nii.gz"), str(raw / f"{p}_0001.nii.gz")] for p in pids]
            # nnU-Net writes in place: predict into a scratch folder, then move each
            # finished file, so an interrupted run leaves nothing that looks finished
            scratch = out_dir / ".partial"
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir()
            predictor.predict_from_files_sequential(
                inputs, [str(scratch / p) for p in pids], save_probabilities=False, overwrite=True
            )
            for p in pids:
                os.replace(scratch / f"{p}.nii.gz", out_dir / f"{p}.nii.gz")
            # recorded after the files: cut short in between, a patient keeps the record
            # of its former prediction and is predicted again next time
            made.update({p: want for p in pids})
            write_text_atomic(record_path, json.dumps(made, indent=1) + "\n")
            shutil.rmtree(scratch, ignore_errors=True)
    return out_dir
