"""``lamp train`` and ``lamp predict``: the prognosis stage (lamp.model) on the command line.

Wired into :mod:`lamp.cli` with :func:`add_parsers`; heavy imports happen in the handlers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_parsers"]

VARIANT_CHOICES = ("baseline", "abmla", "lacf", "full", "all")


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    t = subparsers.add_parser(
        "train",
        help="cross-validated training of LAMP and its ablations (PFS, OS)",
        description="Train the LAMP prognosis model and its ablation variants on the "
        "cohort's 5 folds from WORK/features/*.npz, for PFS and/or OS and several seeds; "
        "writes WORK/prognosis/ and prints the Table-2 layout (mean over folds ± sd over "
        "seeds).",
    )
    t.add_argument("--work", required=True, type=Path)
    t.add_argument("--cohort", required=True, type=Path)
    t.add_argument("--endpoint", default="both", choices=("pfs", "os", "both"))
    t.add_argument("--variant", default="all", choices=VARIANT_CHOICES)
    t.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    t.add_argument("--max-epochs", type=int, default=None)
    t.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes fitting fold models in parallel (default: one per CPU)",
    )
    t.set_defaults(handler=_train)

    p = subparsers.add_parser(
        "predict",
        help="a new patient's risk, survival curve and lesions ranked by attention",
        description="Apply the five fold models of a trained run to one patient's "
        "features file (WORK/features/<id>.npz layout; for a patient outside the cohort, "
        "lamp features --case DIR --out OUT writes OUT/fold_<k>/<id>.npz first).",
    )
    p.add_argument("--work", required=True, type=Path)
    p.add_argument("--features", required=True, type=Path, help="the patient's .npz file")
    p.add_argument("--endpoint", default="pfs", choices=("pfs", "os"))
    p.add_argument("--variant", default="full", choices=VARIANT_CHOICES[:-1])
    p.add_argument(
        "--top",
        type=int,
        default=20,
        help="lesions listed, highest attention first (default 20; 0 = all)",
    )
    p.set_defaults(handler=_predict)


def _train(args: argparse.Namespace) -> int:
    import dataclasses

    from lamp.errors import LampError
    from lamp.evaluation.metrics import format_table
    from lamp.model.layers import VARIANTS
    from lamp.model.train import TrainConfig, available_cpus, train_cv

    if args.seeds < 1:
        raise LampError(f"--seeds must be >= 1, got {args.seeds}")
    cfg = TrainConfig()
    if args.max_epochs is not None:
        if args.max_epochs < 1:
            raise LampError(f"--max-epochs must be >= 1, got {args.max_epochs}")
        cfg = dataclasses.replace(cfg, max_epochs=args.max_epochs)
    if args.workers is not None and args.workers < 1:
        raise LampError(f"--workers must be >= 1, got {args.workers}")
    workers = available_cpus() if args.workers is None else args.workers
    endpoints = ("pfs", "os") if args.endpoint == "both" else (args.endpoint,)
    variants = tuple(VARIANTS) if args.variant == "all" else (args.variant,)
    res = train_cv(
        args.work, args.cohort, endpoints, variants, tuple(range(args.seeds)), cfg, print, workers
    )
    print(f"{res.n_patients} patients, {len(res.excluded_ids)} without outcome left out")
    print(format_table(res.fold_metrics).to_string())
    print(f"outputs: {res.out_dir}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from lamp.errors import LampError
    from lamp.model.train import predict_patient

    if args.top < 0:
        raise LampError(f"--top must be >= 0, got {args.top}")
    out = predict_patient(args.work, args.features, args.endpoint, args.variant)
    n = len(out["lesions"])
    out["n_lesions"] = n
    if args.top and n > args.top:
        out["lesions"] = out["lesions"][: args.top]
        out["lesions_not_listed"] = n - args.top
    print(json.dumps(out, indent=1, default=_plain))
    return 0


def _plain(value):
    import numpy as np

    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
