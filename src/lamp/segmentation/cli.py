"""The ``lamp segment`` subcommand: ``train`` and ``predict`` through nnU-Net v2.

Wired into :mod:`lamp.cli` with :func:`add_parser`; heavy imports happen inside
:func:`run`, so ``lamp --help`` stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "segment",
        help="train / predict the lesion segmentation networks (nnU-Net v2)",
        description="Train LAMP's multimodal lesion segmentation network (or, with "
        "--plain, plain nnU-Net with CT and PET as two channels) on the cohort's 5 folds, "
        "and predict every patient with the model of the fold that held it out. nnU-Net's "
        "folders live under WORK/nnunet; nothing needs to be set in the environment.",
    )
    sub = p.add_subparsers(dest="segment_command", metavar="ACTION", required=True)
    for name, text in (
        ("train", "plan, preprocess and train (resumable)"),
        ("predict", "out-of-fold prediction, lesion instances, metrics"),
    ):
        s = sub.add_parser(name, help=text, description=text)
        s.add_argument("--cohort", required=True, type=Path)
        s.add_argument("--work", required=True, type=Path)
        s.add_argument(
            "--plain",
            action="store_true",
            help="the plain nnU-Net comparator instead of LAMP's network",
        )
        s.add_argument(
            "--config",
            default="tiny",
            choices=("tiny", "full"),
            help="tiny: CPU configuration (default); full: nnU-Net 3d_fullres (GPU)",
        )
        s.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
        if name == "train":
            s.add_argument("--fold", default="all", help="0-4 or all (default)")
            s.add_argument("--epochs", type=int, default=None, help="override the epochs")
            s.add_argument(
                "--iterations", type=int, default=None, help="override the iterations per epoch"
            )
            s.add_argument(
                "--patch-size",
                type=int,
                default=None,
                metavar="N",
                help="tiny only: train on N^3 patches (a multiple of 8; default 32). Larger "
                "patches see more anatomy around a hot spot (fewer false positives in brain, "
                "heart, bladder) at a cost of about (N/32)^3 per iteration or more (median "
                "epochs on a 2-core CPU against 32: plain network 48: 3.3x, 64: 12x; LAMP's "
                "48: 3.8x)",
            )
        else:
            _step_argument(s)
    p.set_defaults(handler=run)

    f = subparsers.add_parser(
        "features",
        help="pool per-lesion and per-organ features from the trained networks",
        description="One sliding-window pass per patient and fold network; 128-d features "
        "pooled (streaming) over each lesion instance and each of the 71 organ groups. "
        "WORK/features/<id>.npz: by the network of the fold that held the patient out; "
        "WORK/features/fold_<k>/<id>.npz: by fold k's network for the patients it trained "
        "on (prognosis fold k trains on these, in the same feature space as its held-out "
        "patients); WORK/features/lesions.csv. --reference: over the reference lesion "
        "masks -> WORK/features_reference/. --out-of-fold-only: only the <id>.npz files "
        "(one pass per patient; enough for reports, not for lamp train). --case DIR --out "
        "OUT: a patient outside the cohort (pet/ct/organs.nii.gz in DIR): lesions by the "
        "ensemble of the fold networks (or --lesions MASK), then OUT/fold_<k>/<id>.npz by "
        "each network, for lamp predict --features OUT/fold_0/<id>.npz.",
    )
    f.add_argument("--cohort", type=Path, help="the cohort folder (or --case)")
    f.add_argument("--work", required=True, type=Path)
    f.add_argument(
        "--case", type=Path, default=None, help="one case folder outside the cohort (new patient)"
    )
    f.add_argument("--out", type=Path, default=None, help="output folder of --case")
    f.add_argument(
        "--lesions",
        type=Path,
        default=None,
        help="with --case: pool over this lesion mask (PET grid) instead of the ensemble's",
    )
    f.add_argument("--reference", action="store_true", help="pool over the reference masks")
    f.add_argument(
        "--out-of-fold-only",
        action="store_true",
        help="skip the passes of each fold network over its own training patients",
    )
    f.add_argument("--config", default="tiny", choices=("tiny", "full"))
    f.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    _step_argument(f)
    f.set_defaults(handler=run, segment_command="features")
    return p


def _step_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--step",
        type=float,
        default=None,
        help="sliding-window step as a fraction of the patch, in (0, 1] (default 0.5, "
        "nnU-Net's; 1.0 runs about 4.4x fewer windows on a small scan)",
    )


def _config(args: argparse.Namespace):
    from lamp.segmentation.nnunet import SEG_CONFIGS, SegmentError

    cfg = SEG_CONFIGS[args.config]
    changes = {}
    for attr, key in (("epochs", "num_epochs"), ("iterations", "iterations_per_epoch")):
        value = getattr(args, attr, None)
        if value is not None:
            if value < 1:
                raise SegmentError(f"--{attr} must be >= 1, got {value}")
            changes[key] = value
    patch = getattr(args, "patch_size", None)
    if patch is not None:
        if cfg.patch_size is None:
            raise SegmentError(
                f"--patch-size applies to --config tiny only; {cfg.name} uses nnU-Net's "
                "planned patch"
            )
        if patch < 16 or patch % 8:
            raise SegmentError(
                f"--patch-size must be a multiple of 8 and at least 16 (the tiny network "
                f"halves the patch three times), got {patch}"
            )
        changes["patch_size"] = (patch, patch, patch)
    step = getattr(args, "step", None)
    if step is not None:
        if not 0.0 < step <= 1.0:
            raise SegmentError(f"--step must be in (0, 1], got {step}")
        changes["tile_step_size"] = float(step)
    return dataclasses.replace(cfg, **changes)


def run(args: argparse.Namespace) -> int:
    from lamp.errors import LampError

    try:
        return _run(args)
    except LampError as exc:
        print(f"lamp segment {args.segment_command}: error: {exc}")
        return 2


def _run(args: argparse.Namespace) -> int:
    from lamp.cohort import read_folds
    from lamp.segmentation.nnunet import (
        SegmentError,
        predict_out_of_fold,
        prepare_dataset,
        train_fold,
    )

    cfg = _config(args)
    if args.segment_command == "features" and (args.case is not None or args.cohort is None):
        return _new_case(args, cfg)
    if args.segment_command == "features" and (args.out is not None or args.lesions is not None):
        raise SegmentError("--out and --lesions go with --case (a patient outside the cohort)")
    if not (args.cohort / "clinical.csv").is_file():
        raise SegmentError(f"--cohort {args.cohort}: no clinical.csv (not a cohort folder)")
    if args.segment_command == "features":
        from lamp.segmentation.extract import extract_cohort_features

        out = extract_cohort_features(
            args.cohort,
            args.work,
            cfg,
            reference=args.reference,
            device=args.device,
            training_patients=not args.out_of_fold_only,
        )
        print(f"features written to {out}")
        return 0
    net = "plain" if args.plain else "lamp"
    if args.segment_command == "train":
        folds = sorted(read_folds(args.cohort / "folds.csv")["fold"].unique())
        if args.fold != "all":
            if not args.fold.isdigit() or int(args.fold) not in folds:
                raise SegmentError(f"--fold must be one of {folds} or all, got {args.fold!r}")
            folds = [int(args.fold)]
        t0 = time.perf_counter()
        prepare_dataset(args.cohort, args.work, cfg)
        print(f"prepared in {time.perf_counter() - t0:.0f} s")
        for k in folds:
            t0 = time.perf_counter()
            out = train_fold(args.work, cfg, int(k), plain=args.plain, device=args.device)
            print(f"fold {k} ({net}): {out} ({time.perf_counter() - t0:.0f} s)")
        return 0

    from lamp.segmentation.evaluate import NETWORKS, evaluate_network, write_comparison

    predict_out_of_fold(args.cohort, args.work, cfg, plain=args.plain, device=args.device)
    tables, summaries = {}, {}
    for name in NETWORKS:
        if (args.work / "segmentation" / name / "pred").is_dir() and (
            name == net or any((args.work / "segmentation" / name / "pred").glob("*.nii.gz"))
        ):
            try:
                tables[name], summaries[name] = evaluate_network(args.cohort, args.work, name)
            except SegmentError:
                if name == net:
                    raise
    print(json.dumps({NETWORKS[k]: v for k, v in summaries.items()}, indent=1, default=float))
    path = write_comparison(args.work, tables)
    if path:
        print(f"side-by-side metrics: {path}")
    return 0


def _new_case(args: argparse.Namespace, cfg) -> int:
    from lamp.segmentation.extract import extract_new_case_features
    from lamp.segmentation.nnunet import SegmentError

    if args.case is None:
        raise SegmentError("expected --cohort COHORT, or --case DIR --out OUT for a new patient")
    if args.cohort is not None:
        raise SegmentError("give --cohort or --case, not both")
    if args.out is None:
        raise SegmentError("--case needs --out OUT (where its feature files go)")
    if args.reference or args.out_of_fold_only:
        raise SegmentError(
            "--reference and --out-of-fold-only apply to a cohort; for a case, --lesions "
            "MASK pools over a given mask"
        )
    files = extract_new_case_features(
        args.case, args.work, cfg, args.out, lesions=args.lesions, device=args.device
    )
    first = files[min(files)]
    print(f"features of {args.case.name} by {len(files)} fold network(s) in {args.out}")
    print(f"next: lamp predict --work {args.work} --features {first}")
    return 0
