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

from pathlib import Path

import numpy as np
import pandas as pd

from lamp.cohort import case_dir, case_path, read_clinical, read_folds, write_text_atomic
from lamp.segmentation.nnunet import SegmentConfig, SegmentError, nnunet_env, results_folder

__all__ = ["extract_cohort_features", "features_folder"]


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
    """
    import torch

    from lamp.features import ChannelNormalization, extract_case_features, load_case_features
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
    with nnunet_env(work, cfg):
        for k in todo_folds:
            todo = [(p, path) for p, path in jobs[k] if not path.is_file()]
            done += len(jobs[k]) - len(todo)
            if not todo:
                continue
            ckpt = model_dir / f"fold_{k}" / "checkpoint_final.pth"
            if not ckpt.is_file():
                raise SegmentError(f"{ckpt}: fold {k} is not trained; run lamp segment train")
            net, plans, conf = _load_fold_network(model_dir, int(k), dev)
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
            # the plan's spacing in the PET's (i, j, k) order; a patient's PET of another
            # spacing is resampled to it for the pass (extract_case_features)
            spacing = np.array(list(reversed(conf.spacing)), dtype=float)

            @torch.inference_mode()
            def model_fn(x, net=net):
                # (B, C, i, j, k) -> nnU-Net's (B, C, z, y, x) and back
                prob, feats = net.forward_features(x.permute(0, 1, 4, 3, 2).contiguous())
                return prob.permute(0, 1, 4, 3, 2), feats.permute(0, 1, 4, 3, 2)

            network = {"fold": int(k), "model_dir": str(model_dir)}
            for pid, path in todo:
                lesions = (
                    case_path(cohort, pid, "lesions") if reference else inst_dir / f"{pid}.nii.gz"
                )
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
