"""``lamp features``: per-patient lesion and organ features from the trained networks.

The segmentation network of fold k runs one sliding-window pass over a patient's whole
scan (nnU-Net's tiling and Gaussian weighting) and its 128-d decoder features are pooled,
streaming, over each lesion instance and each of the 71 organ groups (paper Eq. 1-2;
:mod:`lamp.features`). Every fold's network does this for **every** patient::

    WORK/features/<patient_id>.npz            by the network of the patient's own fold (the
                                              one that did not train on it): out of fold
    WORK/features/fold_<k>/<patient_id>.npz   by fold k's network, for the patients it
                                              trained on (the other folds)
    WORK/features/lesions.csv                 the lesion table of every patient
    WORK/features_reference/...               the same for the reference ("manual") masks

Why both: the five networks are trained separately, so their decoder channels do not
correspond and each spans its own feature space. Prognosis fold k (the same split, paper
§3) must train and test in one space: its model learns from network k's features of the
training folds (``fold_<k>/``) and scores the held-out fold with network k's out-of-fold
features (``<patient_id>.npz``); no outcome is involved in either, and no network has
seen a held-out patient (`lamp.model.train.train_cv`). The lesion regions are the
patient's out-of-fold predicted instances in every file, so training and held-out
lesions come from segmentations of the same quality. Each file's ``meta["network"]``
names its network. Cost: five passes per patient instead of one.

A patient outside the cohort (`extract_new_case_features`, ``lamp features --case``) was
held out by every network: its lesions are the ensemble prediction of the trained fold
networks (or a given mask), and each network pools its features over them, so that each
prognosis fold model again meets its own network's feature space.

The network sees what nnU-Net's preprocessing would give it: CT resampled onto the PET
grid, clipped to the 0.5-99.5 foreground percentiles and z-scored with the dataset's
foreground statistics (nnU-Net's CTNormalization), PET z-scored per image; arrays in
nnU-Net's axis order (SimpleITK's z, y, x = the NIfTI storage order reversed). A patient
whose PET spacing differs from the plan's (by more than 1 %) is handled as nnU-Net predicts
it: the normalised input is resampled (third-order splines) to the plan's spacing over the
PET field of view, the pass and the pooling run there (label maps by nearest neighbour; a
lesion lost by that is pooled at its nearest network voxels, never dropped), and the
lesion table stays on the PET grid (`lamp.features.extract_case_features`,
``target_spacing``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from lamp.cohort import (
    case_dir,
    case_path,
    file_digest,
    read_clinical,
    read_folds,
    write_text_atomic,
)
from lamp.segmentation.nnunet import SegmentConfig, SegmentError, nnunet_env, results_folder

__all__ = [
    "extract_cohort_features",
    "extract_new_case_features",
    "features_folder",
    "trained_folds",
]


def features_folder(work: Path, reference: bool) -> Path:
    return Path(work) / ("features_reference" if reference else "features")


def _load_fold_network(model_dir: Path, fold: int, device):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(device=device, verbose=False, allow_tqdm=False, use_mirroring=False)
    predictor.initialize_from_trained_model_folder(
        str(model_dir), use_folds=(fold,), checkpoint_name="checkpoint_final.pth"
    )
    net = predictor.network
    net.load_state_dict(predictor.list_of_parameters[0])
    net.eval()
    return net.to(device), predictor.plans_manager, predictor.configuration_manager


def _fold_pass(model_dir: Path, fold: int, dev):
    """What `extract_case_features` needs to run fold ``fold``'s network: the model
    function, its patch, the channel normalisation, the plan's spacing (in the PET's
    (i, j, k) order) and the ``meta["network"]`` entry."""
    import torch

    from lamp.features import ChannelNormalization

    net, plans, conf = _load_fold_network(model_dir, fold, dev)
    if list(plans.transpose_forward) != [0, 1, 2]:
        raise SegmentError(
            f"{model_dir}: plans transpose the axes "
            f"({plans.transpose_forward}); not supported by features yet"
        )
    props = plans.foreground_intensity_properties_per_channel["0"]
    norm = ChannelNormalization(
        ct_mean=float(props["mean"]),
        ct_std=float(props["std"]),
        ct_clip=(float(props["percentile_00_5"]), float(props["percentile_99_5"])),
    )
    patch = tuple(int(p) for p in reversed(conf.patch_size))  # (z,y,x) -> (i,j,k)
    # a patient's PET of another spacing is resampled to it for the pass
    spacing = np.array(list(reversed(conf.spacing)), dtype=float)

    @torch.inference_mode()
    def model_fn(x):
        # (B, C, i, j, k) -> nnU-Net's (B, C, z, y, x) and back
        prob, feats = net.forward_features(x.permute(0, 1, 4, 3, 2).contiguous())
        return prob.permute(0, 1, 4, 3, 2), feats.permute(0, 1, 4, 3, 2)

    network = {
        "fold": int(fold),
        "model_dir": str(model_dir),
        "checkpoint_sha256": file_digest(model_dir / f"fold_{fold}" / "checkpoint_final.pth"),
    }
    return model_fn, patch, norm, spacing, network


def extract_cohort_features(
    cohort: Path,
    work: Path,
    cfg: SegmentConfig,
    *,
    reference: bool = False,
    device: str = "cpu",
    folds: list[int] | None = None,
    training_patients: bool = True,
    progress=None,
) -> Path:
    """Write the features of every patient by the network of each fold in ``folds``
    (default all; finished files are skipped) and the cohort's ``lesions.csv``; returns
    the features folder.

    With ``training_patients=False`` only the out-of-fold files ``<patient_id>.npz`` are
    written (enough for reports and inspection, not for `train_cv` with these networks).

    A file counts as finished only while what made it is unchanged: each file records the
    SHA-256 of its network's ``checkpoint_final.pth`` (``meta["network"]``) and of its
    lesion and organ label maps (``meta["source_sha256"]``). After a fold is retrained,
    or ``lamp segment predict`` has rewritten a patient's instances, the files made from
    the old ones are computed again. (Files from before this record are kept.)
    """
    from lamp.features import extract_case_features, load_case_features
    from lamp.segmentation.nnunet import _device

    dev = _device(device)
    cohort, work = Path(cohort), Path(work)
    clinical = read_clinical(cohort / "clinical.csv")
    fold_table = read_folds(cohort / "folds.csv", clinical["patient_id"].tolist())
    out_dir = features_folder(work, reference)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_dir = results_folder(work, cfg, plain=False)
    inst_dir = work / "segmentation" / "lamp" / "instances"
    todo_folds = sorted(fold_table["fold"].unique()) if folds is None else folds
    jobs: dict[int, list[tuple[str, Path]]] = {}
    for k in todo_folds:
        in_fold = fold_table["fold"] == k
        jobs[k] = [(p, out_dir / f"{p}.npz") for p in fold_table.loc[in_fold, "patient_id"]]
        if training_patients:
            jobs[k] += [
                (p, out_dir / f"fold_{k}" / f"{p}.npz")
                for p in fold_table.loc[~in_fold, "patient_id"]
            ]
    total = sum(len(v) for v in jobs.values())
    done = 0

    def digest(path: Path) -> str | None:  # file_digest caches: each input hashed once
        return file_digest(path) if path.is_file() else None

    def lesions_of(pid: str) -> Path:
        return case_path(cohort, pid, "lesions") if reference else inst_dir / f"{pid}.nii.gz"

    def finished(pid: str, path: Path, ckpt: Path) -> bool:
        if not path.is_file():
            return False
        made = _made_from(path)
        if made is None:  # a file from before the record: kept
            return True
        net_sha, les_sha, org_sha = made
        return (
            (net_sha is None or not ckpt.is_file() or net_sha == digest(ckpt))
            and les_sha == digest(lesions_of(pid))
            and org_sha == digest(case_path(cohort, pid, "organs"))
        )

    with nnunet_env(work, cfg):
        for k in todo_folds:
            ckpt = model_dir / f"fold_{k}" / "checkpoint_final.pth"
            todo = [(p, path) for p, path in jobs[k] if not finished(p, path, ckpt)]
            done += len(jobs[k]) - len(todo)
            if not todo:
                continue
            if not ckpt.is_file():
                raise SegmentError(f"{ckpt}: fold {k} is not trained; run lamp segment train")
            model_fn, patch, norm, spacing, network = _fold_pass(model_dir, int(k), dev)
            for pid, path in todo:
                lesions = lesions_of(pid)
                if not Path(lesions).is_file():
                    raise SegmentError(
                        f"{lesions}: missing lesion instances of patient {pid}"
                        + ("" if reference else "; run lamp segment predict")
                    )
                organs = case_path(cohort, pid, "organs")
                extract_case_features(
                    model_fn,
                    case_dir(cohort, pid),
                    lesion_instances=lesions,
                    organ_labels=organs if organs.is_file() else None,
                    patch_size=patch,
                    normalization=norm,
                    out_path=path,
                    device=dev,
                    target_spacing=spacing,
                    step_size=cfg.tile_step_size,
                    network=network,
                )
                done += 1
                if progress:
                    progress("features", done, total)
    tables = [load_case_features(p).table for p in sorted(out_dir.glob("*.npz"))]
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    write_text_atomic(out_dir / "lesions.csv", table.to_csv(index=False, lineterminator="\n"))
    return out_dir


def _made_from(path: Path) -> tuple[str | None, str | None, str | None] | None:
    """The SHA-256 of the network checkpoint, lesion and organ maps a features file was
    made from, or None for a file that does not record them (or cannot be read: then it
    is made again)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
    except Exception:  # unreadable: not finished
        return (None, "unreadable", "unreadable")
    sources = meta.get("source_sha256")
    if not isinstance(sources, dict):
        return None
    network = meta.get("network") or {}
    return network.get("checkpoint_sha256"), sources.get("lesions"), sources.get("organs")


def trained_folds(model_dir: Path) -> list[int]:
    """The folds of ``model_dir`` whose training finished (``checkpoint_final.pth``).

    Raises
    ------
    SegmentError
        No trained fold, or a fold folder whose training has not finished.
    """
    folds, unfinished = [], []
    for d in sorted(Path(model_dir).glob("fold_*")):
        if not (d.is_dir() and d.name[5:].isdigit()):
            continue
        (folds if (d / "checkpoint_final.pth").is_file() else unfinished).append(int(d.name[5:]))
    if unfinished:
        raise SegmentError(
            f"{model_dir}: the training of fold(s) {unfinished} has not finished (no "
            "checkpoint_final.pth); finish it with lamp segment train"
        )
    if not folds:
        raise SegmentError(f"{model_dir}: no trained fold; run lamp segment train")
    return sorted(folds)


def extract_new_case_features(
    case: Path,
    work: Path,
    cfg: SegmentConfig,
    out: Path,
    *,
    lesions: Path | None = None,
    device: str = "cpu",
    progress=None,
) -> dict[int, Path]:
    """Features of a patient outside the cohort, by every trained fold network.

    A new patient was held out by all five networks, so (nnU-Net's rule for new cases)
    its lesions are the **ensemble** prediction of every trained fold network (nnU-Net's
    predictor, which averages the networks' logits, as for the cohort: ``cfg``'s step and
    mirroring). Then each fold network k pools its features over those lesions, as
    ``lamp features`` does for the cohort, because prognosis fold model k was trained in
    network k's feature space (see the module doc). Written under ``out``::

        <id>_lesion_mask.nii.gz     the ensemble's binary lesion mask (PET grid; not
                                    written when ``lesions`` is given)
        <id>_instances.nii.gz       lesion instances 1..J (18-connected components)
        fold_<k>/<id>.npz           features by fold k's network, one per trained fold
        <id>_lesions.csv            the lesion table (volume, SUV, TLG, site, ...)
        <id>_request.json           what they were made from (lesion source, images,
                                    networks, settings)

    ``lamp predict --features out/fold_0/<id>.npz`` then pairs each fold model with its
    network's file. Cost: one ensemble prediction (a pass per network) and one feature
    pass per network. Each file is written atomically. A rerun of the same request skips
    the finished files; a rerun with another lesion source, changed images, retrained or
    more networks, or other settings removes the old outputs and starts again. Every
    fold folder of the model must hold a finished training; folds never started are not
    in the ensemble (``lamp predict`` then says which fold's features are missing).

    Parameters
    ----------
    case : Path
        A case folder with ``pet.nii.gz`` (SUV), ``ct.nii.gz`` (HU) and ``organs.nii.gz``
        (TotalSegmentator 'total' ids on the PET grid; ``lamp organs`` or
        ``lamp ingest``); its name is the patient id.
    work : Path
        The work folder of the trained segmentation networks (``lamp segment train``).
    cfg : SegmentConfig
        The configuration they were trained with (and the sliding-window step).
    out : Path
        Output folder.
    lesions : Path, optional
        A lesion mask or instance map on the PET grid (whole numbers >= 0) to pool over
        instead of the ensemble's prediction (e.g. a manual delineation). An instance map
        (values above 1) keeps its ids; a binary mask is split into its 18-connected
        components.

    Returns
    -------
    dict fold -> feature file.
    """
    from lamp.features import (
        FeatureError,
        _check_case,
        extract_case_features,
        load_case_features,
        load_case_images,
    )
    from lamp.images import load_nifti, save_nifti
    from lamp.segmentation.instances import lesion_instances
    from lamp.segmentation.nnunet import _device

    case, work, out = Path(case), Path(work), Path(out)
    if not case.is_dir():
        raise SegmentError(f"--case {case}: no such folder (expected pet.nii.gz, ct.nii.gz, ...)")
    images = load_case_images(case)  # names the patient and file on a missing/bad image
    _check_case(images)
    pid = images.patient_id
    organs = case / "organs.nii.gz"
    if not organs.is_file():
        raise FeatureError(
            f"patient {pid}: organs: {organs}: no such file (organ masks are TotalSegmentator "
            "'total' ids on the PET grid: lamp organs makes them where TotalSegmentator is "
            "installed, or lamp ingest imports them)"
        )
    dev = _device(device)
    model_dir = results_folder(work, cfg, plain=False)
    folds = trained_folds(model_dir)
    _check_on_pet_grid(organs, images, "organs", pid)
    lesion_map = None
    if lesions is not None:
        lesions = Path(lesions)
        lesion_map = _check_on_pet_grid(lesions, images, "--lesions", pid)
    out.mkdir(parents=True, exist_ok=True)
    mask_path = out / f"{pid}_lesion_mask.nii.gz"
    inst_path = out / f"{pid}_instances.nii.gz"
    table_path = out / f"{pid}_lesions.csv"
    feature_paths = {k: out / f"fold_{k}" / f"{pid}.npz" for k in folds}
    # What the outputs are made of. A rerun reuses finished files only when this is
    # unchanged (same lesion source, images, networks and settings); otherwise the old
    # outputs are removed first, so none of them can stand for another request.
    request = {
        "lesions": "ensemble" if lesions is None else _stamp(lesions),
        "images": {k: _stamp(case / f"{k}.nii.gz") for k in ("pet", "ct", "organs")},
        "networks": {
            str(k): _stamp(model_dir / f"fold_{k}" / "checkpoint_final.pth") for k in folds
        },
        "model_dir": str(model_dir.resolve()),
        "step": cfg.tile_step_size,
        "mirroring": cfg.mirroring,
    }
    request_path = out / f"{pid}_request.json"
    old = None
    if request_path.is_file():
        try:
            old = json.loads(request_path.read_text())
        except ValueError:
            old = None
    if old != json.loads(json.dumps(request)):
        stale = [mask_path, inst_path, table_path, *out.glob(f"fold_*/{pid}.npz")]
        for path in stale:
            path.unlink(missing_ok=True)
        write_text_atomic(request_path, json.dumps(request, indent=2) + "\n")
    voxel_ml = float(abs(np.linalg.det(images.pet_affine[:3, :3]))) / 1000.0
    if not inst_path.is_file():
        if lesion_map is None:
            with nnunet_env(work, cfg):
                if not mask_path.is_file():
                    _predict_ensemble(case, pid, model_dir, folds, cfg, dev, mask_path)
            lesion_map, _ = load_nifti(mask_path)
        if lesions is not None and lesion_map.max() > 1:
            if lesion_map.max() > np.iinfo(np.uint16).max:
                raise SegmentError(
                    f"patient {pid}: --lesions {lesions}: expected instance ids <= 65535, got "
                    f"{int(lesion_map.max())}"
                )
            instances = lesion_map  # an instance map: its own ids
        else:
            instances = lesion_instances(lesion_map > 0, voxel_ml)
        save_nifti(inst_path, instances, images.pet_affine, np.uint16)
    with nnunet_env(work, cfg):
        for i, (k, path) in enumerate(feature_paths.items()):
            if not path.is_file():
                model_fn, patch, norm, spacing, network = _fold_pass(model_dir, k, dev)
                extract_case_features(
                    model_fn,
                    images,
                    lesion_instances=inst_path,
                    organ_labels=organs,
                    patch_size=patch,
                    normalization=norm,
                    out_path=path,
                    device=dev,
                    target_spacing=spacing,
                    step_size=cfg.tile_step_size,
                    network=network,
                )
            if progress:
                progress("features", i + 1, len(folds))
    table = load_case_features(feature_paths[folds[0]]).table
    write_text_atomic(table_path, table.to_csv(index=False, lineterminator="\n"))
    return feature_paths


def _stamp(path: Path) -> list:
    """A file's identity for `extract_new_case_features`' rerun check."""
    st = Path(path).stat()
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


def _check_on_pet_grid(path: Path, images, what: str, pid: str) -> np.ndarray:
    """Read a label map of a new case and check it: on the PET grid, whole numbers >= 0."""
    from lamp.images import load_nifti, same_grid

    arr, aff = load_nifti(path)
    if not same_grid(arr.shape, aff, images.pet.shape, images.pet_affine):
        raise SegmentError(
            f"patient {pid}: {what} {path}: expected the PET grid of "
            f"{images.sources.get('pet', 'the PET')} (shape {images.pet.shape}), got shape "
            f"{arr.shape} (or another affine); resample it onto the PET grid (nearest "
            "neighbour)"
        )
    values = np.unique(arr)
    bad = values[~np.isfinite(values) | (values < 0) | (values != np.round(values))]
    if bad.size:
        raise SegmentError(
            f"patient {pid}: {what} {path}: expected a label map (whole numbers >= 0), got "
            f"values such as {bad[:5].tolist()}"
        )
    return arr


def _predict_ensemble(
    case: Path, pid: str, model_dir: Path, folds: list[int], cfg: SegmentConfig, dev, mask_path
) -> None:
    """nnU-Net's prediction of one case by the ensemble of ``folds``' networks (their mean
    logits) -> ``mask_path``."""
    import os
    import shutil

    from lamp.segmentation.dataset import write_channels
    from lamp.segmentation.nnunet import fold_predictor

    scratch = mask_path.parent / f".partial_{pid}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    inputs = [str(scratch / f"{pid}_0000.nii.gz"), str(scratch / f"{pid}_0001.nii.gz")]
    write_channels(case / "pet.nii.gz", case / "ct.nii.gz", pid, Path(inputs[0]), Path(inputs[1]))
    predictor = fold_predictor(model_dir, folds, cfg, dev)
    predictor.predict_from_files_sequential(
        [inputs], [str(scratch / pid)], save_probabilities=False, overwrite=True
    )
    os.replace(scratch / f"{pid}.nii.gz", mask_path)
    shutil.rmtree(scratch, ignore_errors=True)
