"""Cross-validated training of the LAMP prognosis network (paper §3, Tables 1-2).

Protocol
--------
* One split for everything: the cohort's ``folds.csv`` (the folds of the segmentation).
  For fold k the network trains on the other folds and predicts fold k, so every
  out-of-fold risk comes from a model that never saw that patient.
* One feature space per fold. Features made by a trained segmentation network
  (``meta["network"]`` in the files of `lamp features`) lie in that network's space; the
  five fold networks are trained separately and their decoder channels do not
  correspond. Fold k therefore trains on fold k's network's features of the training
  patients (``WORK/features/fold_<k>/<id>.npz``) and scores the held-out patients with
  the same network's out-of-fold features (``WORK/features/<id>.npz``); mixing networks
  is refused (`fold_feature_paths`). Features that name no network (hand-crafted, or one
  network for every patient) are one space and serve every fold.
* Patients without outcome data are excluded from training and evaluation (their scans
  still serve segmentation); their number and ids are in the results and the JSON.
* Within a training fold only: feature standardisation (`Standardizer`), the time bins
  (quantiles of the training fold's event times) and the choice of the number of
  epochs. The epochs are chosen on an inner, event-stratified split of the training fold
  (``inner_val_fraction``): train for ``max_epochs``, score the inner validation
  C-index every ``eval_every`` epochs, keep the best epoch; then refit from scratch on
  the whole training fold for that many epochs. The held-out fold is never looked at.
* Adam, lr 1e-4 (paper); an optimiser step every 32 patients. The paper's batch size 1
  with gradient accumulation over 32 is reproduced by a padded, masked batch whose loss
  is the *sum* of the per-patient losses divided by 32 (= accumulating ``loss / 32``),
  also for a last, smaller batch of an epoch.

Outputs (``WORK/prognosis/``)
-----------------------------
``config.json``            the `TrainConfig` and the grid run, the excluded patients
``oof_risk.csv``           patient_id, endpoint, variant, seed, fold, risk
``train_risk.csv``         the same for the training patients of each fold, scored by
                           that fold's model (in-sample; for the KM risk-group median)
``fold_metrics.csv``       endpoint, variant, seed, fold, c_index, auc_12, auc_24, note
``lesion_attention.csv``   per held-out lesion: ABMLA score, rank, top organ attentions
``checkpoints/<endpoint>/<variant>/seed<s>_fold<k>.pt``
                           state dict + configurations + bins + standardiser + the
                           training ids; plain data, ``torch.load(weights_only=True)``
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lamp.anatomy import GROUPS
from lamp.cohort import (
    ENDPOINTS,
    atomic_output,
    has_outcome,
    read_clinical,
    read_folds,
    write_text_atomic,
)
from lamp.errors import LampError
from lamp.evaluation.metrics import MetricError, concordance_index, time_dependent_auc
from lamp.model.batching import (
    Batch,
    FeatureFileError,
    PatientFeatures,
    StackedPatients,
    Standardizer,
    collate,
    load_features,
)
from lamp.model.layers import LAMP, VARIANTS, ModelConfig
from lamp.model.loss import (
    assign_bins,
    hazards_and_survival,
    make_time_bins,
    nll_survival_loss,
    risk_from_logits,
)

__all__ = [
    "ENDPOINTS",
    "TrainConfig",
    "CVResults",
    "FittedModel",
    "fit_model",
    "predict",
    "train_cv",
    "fold_feature_paths",
    "load_checkpoint",
    "predict_patient",
]


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run (saved as ``config.json`` beside the outputs).

    Attributes
    ----------
    n_bins : int, default 4
        Survival time bins (MCAT's default; merged when quantiles tie).
    lr : float, default 1e-4
        Adam learning rate (paper §3).
    batch_size : int, default 32
        Patients per optimiser step (the paper's accumulation steps).
    max_epochs : int, default 100
        Epochs of the inner run that chooses the number of epochs (or the fixed number
        when ``select_epochs`` is false).
    eval_every : int, default 5
        Inner validation every this many epochs.
    select_epochs : bool, default True
        Choose the epochs on an inner split of the training fold, then refit.
    inner_val_fraction : float, default 0.2
    weight_decay : float, default 0.0
    attn_dim, gate_dim : int, default 128
    dropout : float, default 0.0
    alpha : float, default 0.0
        Uncensored re-weighting of the loss (`lamp.model.loss.nll_survival_loss`).
    top_organs : int, default 3
        Organ attentions written per lesion.
    auc_months : tuple of float, default (12.0, 24.0)
    head_init : {"marginal", "default"}, default "marginal"
        "marginal": the output layer starts with zero weights and the training fold's
        life-table hazards as bias (`marginal_hazards`); "default": PyTorch's random
        initialisation. The paper does not say; see docs/prognosis.md for why.
    """

    n_bins: int = 4
    lr: float = 1e-4
    batch_size: int = 32
    max_epochs: int = 100
    eval_every: int = 5
    select_epochs: bool = True
    inner_val_fraction: float = 0.2
    weight_decay: float = 0.0
    attn_dim: int = 128
    gate_dim: int = 128
    dropout: float = 0.0
    alpha: float = 0.0
    top_organs: int = 3
    auc_months: tuple[float, ...] = (12.0, 24.0)
    head_init: str = "marginal"

    def __post_init__(self) -> None:
        positive = ("n_bins", "batch_size", "max_epochs", "eval_every", "top_organs")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise LampError(f"TrainConfig.{name}: expected an integer >= 1, got {value!r}")
        if self.head_init not in ("marginal", "default"):
            raise LampError(
                f"TrainConfig.head_init: expected 'marginal' or 'default', got {self.head_init!r}"
            )
        if not self.lr > 0:
            raise LampError(f"TrainConfig.lr: expected > 0, got {self.lr!r}")
        if not 0.0 < self.inner_val_fraction < 1.0:
            raise LampError(
                f"TrainConfig.inner_val_fraction: expected in (0, 1), got "
                f"{self.inner_val_fraction!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["auc_months"] = list(self.auc_months)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise LampError(f"TrainConfig: unknown settings {unknown}")
        data = dict(data)
        if "auc_months" in data:
            data["auc_months"] = tuple(float(x) for x in data["auc_months"])
        return cls(**data)


@dataclass
class FittedModel:
    """A trained network with everything needed to apply it to new patients."""

    model: LAMP
    model_config: ModelConfig
    standardizer: Standardizer
    bin_edges: np.ndarray
    epochs: int
    train_ids: list[str]


@dataclass
class CVResults:
    """What `train_cv` returns (the same content as its files).

    Attributes
    ----------
    oof : DataFrame
        patient_id, endpoint, variant, seed, fold, risk.
    fold_metrics : DataFrame
        endpoint, variant, seed, fold, c_index, auc_12, auc_24, epochs, note.
    excluded_ids : list of str
        Patients without outcome data (not trained on, not evaluated).
    out_dir : Path
    """

    oof: pd.DataFrame
    fold_metrics: pd.DataFrame
    excluded_ids: list[str]
    out_dir: Path
    n_patients: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# One model
# --------------------------------------------------------------------------------------


def _standardize(patients: Sequence[PatientFeatures], std: Standardizer) -> list[PatientFeatures]:
    out = []
    for p in patients:
        organs = np.where(
            p.organ_present[:, None], (p.organ_features - std.organ_mean) / std.organ_std, 0
        )
        out.append(
            PatientFeatures(
                p.patient_id,
                ((p.lesion_features - std.lesion_mean) / std.lesion_std).astype(np.float32),
                organs.astype(np.float32),
                p.organ_present,
                p.lesion_ids,
            )
        )
    return out


def _train_epochs(
    model: LAMP,
    patients: list[PatientFeatures],
    bins: np.ndarray,
    events: np.ndarray,
    config: TrainConfig,
    epochs: int,
    rng: np.random.Generator,
    on_epoch: Callable[[int], None] | None = None,
) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    bins_t = torch.as_tensor(bins)
    events_t = torch.as_tensor(events, dtype=torch.float32)
    n = len(patients)
    stacked = StackedPatients(patients)
    for epoch in range(1, epochs + 1):
        model.train()
        order = rng.permutation(n)
        for start in range(0, n, config.batch_size):
            idx = order[start : start + config.batch_size]
            batch = stacked.take(idx)
            logits = model(*batch.inputs())["logits"]
            # Sum / 32 = the gradient of 32 accumulated batch-1 steps of loss / 32.
            loss = nll_survival_loss(
                logits, bins_t[idx], events_t[idx], alpha=config.alpha, reduction="sum"
            ) / float(config.batch_size)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if on_epoch is not None:
            on_epoch(epoch)


@torch.no_grad()
def _forward_all(model: LAMP, patients: Sequence[PatientFeatures], chunk: int = 64) -> list[dict]:
    model.eval()
    out: list[dict] = []
    for start in range(0, len(patients), chunk):
        batch: Batch = collate(list(patients[start : start + chunk]), None)
        res = model(*batch.inputs())
        for i, p in enumerate(batch.patient_ids):
            j = patients[start + i].n_lesions
            out.append(
                {
                    "patient_id": p,
                    "logits": res["logits"][i],
                    "lesion_attention": res["lesion_attention"][i, :j].numpy(),
                    "organ_attention": res["organ_attention"][i, :j].numpy(),
                }
            )
    return out


def _inner_split(events: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of the inner validation patients, stratified by event."""
    val = np.zeros(events.size, bool)
    for value in (True, False):
        idx = np.flatnonzero(events == value)
        rng.shuffle(idx)
        val[idx[: int(round(fraction * idx.size))]] = True
    return val


def fit_model(
    patients: Sequence[PatientFeatures],
    times: np.ndarray,
    events: np.ndarray,
    variant: str,
    config: TrainConfig,
    seed: int,
) -> FittedModel:
    """Train one network on one training fold (epoch choice inside it, see module doc).

    Parameters
    ----------
    patients : sequence of PatientFeatures, length n (raw features)
    times : ndarray, shape (n,), months
    events : ndarray, shape (n,), bool
    variant : str, one of `VARIANTS`
    config : TrainConfig
    seed : int
        Seeds the initialisation, the batch order and the inner split.
    """
    patients = list(patients)
    times = np.asarray(times, np.float64)
    events = np.asarray(events, bool)
    epochs = config.max_epochs
    if config.select_epochs:
        epochs = _select_epochs(patients, times, events, variant, config, seed)
    return _fit_fixed(patients, times, events, variant, config, seed, epochs)


def _fit_fixed(
    patients: list[PatientFeatures],
    times: np.ndarray,
    events: np.ndarray,
    variant: str,
    config: TrainConfig,
    seed: int,
    epochs: int,
    on_epoch: Callable[[LAMP, Standardizer], Callable[[int], None]] | None = None,
) -> FittedModel:
    std = Standardizer.fit(patients)
    edges = make_time_bins(times, events, config.n_bins)
    model_config = ModelConfig.for_variant(
        variant,
        n_bins=len(edges) - 1,
        feature_dim=int(patients[0].organ_features.shape[1]),
        attn_dim=config.attn_dim,
        gate_dim=config.gate_dim,
        dropout=config.dropout,
    )
    torch.manual_seed(seed)
    model = LAMP(model_config)
    bins = assign_bins(times, edges)
    if config.head_init == "marginal":
        _init_head(model, bins, events)
    rng = np.random.default_rng(seed)
    hook = on_epoch(model, std) if on_epoch is not None else None
    _train_epochs(
        model,
        _standardize(patients, std),
        bins,
        events,
        config,
        epochs,
        rng,
        hook,
    )
    model.eval()
    return FittedModel(model, model_config, std, edges, epochs, [p.patient_id for p in patients])


def marginal_hazards(bins: np.ndarray, events: np.ndarray, n_bins: int) -> np.ndarray:
    """Maximum-likelihood hazard per bin of a model without covariates.

    Under the discrete-time likelihood of `nll_survival_loss`, a patient whose event
    falls in bin y contributes h_y and (1 - h_k) for k < y, a patient censored in bin y
    contributes (1 - h_k) for k <= y; so the MLE is h_k = d_k / n_k with d_k the events
    in bin k and n_k the patients whose bin is >= k (the life-table estimate). Clipped
    to [0.01, 0.99] so that its logit stays finite.
    """
    bins = np.asarray(bins, np.int64)
    events = np.asarray(events, bool)
    d = np.bincount(bins[events], minlength=n_bins)[:n_bins].astype(np.float64)
    at_risk = np.array([(bins >= k).sum() for k in range(n_bins)], dtype=np.float64)
    h = np.divide(d, at_risk, out=np.full(n_bins, 0.5), where=at_risk > 0)
    return np.clip(h, 0.01, 0.99)


def _init_head(model: LAMP, bins: np.ndarray, events: np.ndarray) -> None:
    """Zero head weights and bias = logit of the marginal hazards: the untrained network
    predicts the training fold's life table for everyone (risk uninformative, not
    random), and training learns only the departures from it."""
    h = marginal_hazards(bins, events, model.head.out_features)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.as_tensor(np.log(h / (1.0 - h)), dtype=model.head.bias.dtype))


def _select_epochs(
    patients: list[PatientFeatures],
    times: np.ndarray,
    events: np.ndarray,
    variant: str,
    config: TrainConfig,
    seed: int,
) -> int:
    val = _inner_split(events, config.inner_val_fraction, np.random.default_rng(seed + 7919))
    tr = np.flatnonzero(~val)
    va = np.flatnonzero(val)
    val_patients = [patients[i] for i in va]
    scores: dict[int, float] = {}

    def make_hook(model: LAMP, std: Standardizer) -> Callable[[int], None]:
        val_std = _standardize(val_patients, std)

        def hook(epoch: int) -> None:
            if epoch % config.eval_every and epoch != config.max_epochs:
                return
            risk = np.array(
                [
                    float(risk_from_logits(r["logits"][None])[0])
                    for r in _forward_all(model, val_std)
                ]
            )
            try:
                scores[epoch] = concordance_index(events[va], times[va], risk)
            except MetricError:
                pass

        return hook

    _fit_fixed(
        [patients[i] for i in tr],
        times[tr],
        events[tr],
        variant,
        config,
        seed,
        config.max_epochs,
        make_hook,
    )
    if not scores:
        # No usable inner C-index (e.g. no event in the inner split): keep max_epochs.
        return config.max_epochs
    best = max(scores.values())
    # The earliest epoch within 0.005 of the best: later epochs rarely help on tiny sets.
    return min(e for e, s in scores.items() if s >= best - 0.005)


def predict(fitted: FittedModel, patients: Sequence[PatientFeatures]) -> list[dict[str, Any]]:
    """Apply a fitted network to patients (raw features).

    Returns
    -------
    list of dict, one per patient: ``patient_id``; ``risk`` (float, ``-Σ S``);
    ``survival`` (ndarray (n_bins,), S at the end of each bin); ``lesion_attention``
    (ndarray (J,)); ``organ_attention`` (ndarray (J, 71)).
    """
    out = []
    for r in _forward_all(fitted.model, _standardize(patients, fitted.standardizer)):
        logits = r["logits"][None]
        out.append(
            {
                "patient_id": r["patient_id"],
                "risk": float(risk_from_logits(logits)[0]),
                "survival": hazards_and_survival(logits)[1][0].numpy(),
                "lesion_attention": r["lesion_attention"],
                "organ_attention": r["organ_attention"],
            }
        )
    return out


# --------------------------------------------------------------------------------------
# Cross-validation
# --------------------------------------------------------------------------------------


def _checkpoint_path(out: Path, endpoint: str, variant: str, seed: int, fold: int) -> Path:
    return out / "checkpoints" / endpoint / variant / f"seed{seed}_fold{fold}.pt"


def _save_checkpoint(path: Path, fitted: FittedModel, meta: dict[str, Any]) -> None:
    payload = {
        "state_dict": fitted.model.state_dict(),
        "model_config": fitted.model_config.to_dict(),
        "standardizer": fitted.standardizer.to_dict(),
        "bin_edges": [float(x) for x in fitted.bin_edges],
        "epochs": int(fitted.epochs),
        "train_ids": list(fitted.train_ids),
        **meta,
    }
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> tuple[FittedModel, dict[str, Any]]:
    """Load a checkpoint written by `train_cv` (with ``weights_only=True``).

    Returns
    -------
    (FittedModel, dict of the whole payload)
    """
    path = Path(path)
    if not path.is_file():
        raise LampError(f"checkpoint {path}: file not found (expected the output of train_cv)")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model_config = ModelConfig(**payload["model_config"])
    model = LAMP(model_config)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    fitted = FittedModel(
        model,
        model_config,
        Standardizer.from_dict(payload["standardizer"]),
        np.asarray(payload["bin_edges"], np.float64),
        int(payload["epochs"]),
        list(payload["train_ids"]),
    )
    return fitted, payload


def _check_grid(endpoints: Sequence[str], variants: Sequence[str], seeds: Sequence[int]) -> None:
    bad = [e for e in endpoints if e not in ENDPOINTS]
    if bad or not endpoints:
        raise LampError(
            f"train_cv endpoints: expected some of {sorted(ENDPOINTS)}, got {list(endpoints)}"
        )
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise LampError(
            f"train_cv variants: expected some of {sorted(VARIANTS)}, got {list(variants)}"
        )
    if not seeds or any(not isinstance(s, int | np.integer) or s < 0 for s in seeds):
        raise LampError(f"train_cv seeds: expected integers >= 0, got {list(seeds)}")


def _fold_metrics(
    train: pd.DataFrame,
    test: pd.DataFrame,
    risk: np.ndarray,
    tcol: str,
    ecol: str,
    months: Sequence[float],
) -> tuple[dict[str, float], str]:
    out: dict[str, float] = {}
    notes = []
    try:
        out["c_index"] = concordance_index(test[ecol], test[tcol], risk)
    except MetricError as exc:
        out["c_index"] = float("nan")
        notes.append(str(exc))
    for m in months:
        key = f"auc_{m:g}"
        try:
            out[key] = float(
                time_dependent_auc(train[ecol], train[tcol], test[ecol], test[tcol], risk, [m])[0]
            )
        except MetricError as exc:
            out[key] = float("nan")
            notes.append(str(exc))
    return out, "; ".join(notes)


@dataclass(frozen=True)
class _Task:
    """One fold model of the grid: everything a worker process needs (plain data)."""

    endpoint: str
    variant: str
    seed: int
    fold: int
    train_ids: tuple[str, ...]
    train_times: tuple[float, ...]
    train_events: tuple[bool, ...]
    test_ids: tuple[str, ...]
    config: TrainConfig
    checkpoint: str


_WORKER_FEATURES: dict[int, dict[str, PatientFeatures]] = {}


def fold_feature_paths(work: Path, table: pd.DataFrame) -> dict[int, dict[str, str]]:
    """The feature file of every patient of ``table`` (patient_id, fold) for each fold's
    model: ``{fold k: {patient_id: path}}`` (module doc, "One feature space per fold").

    Raises
    ------
    FeatureFileError
        A missing file; an out-of-fold file made by another fold's network than the
        patient's; a training patient's file missing under ``fold_<k>/`` or made by
        another network than fold k's.
    """
    return _fold_features(work, table)[0]


def _fold_features(
    work: Path, table: pd.DataFrame
) -> tuple[dict[int, dict[str, str]], dict[str, PatientFeatures]]:
    """`fold_feature_paths` and the out-of-fold files it read (by path), to reuse."""
    base = Path(work) / "features"
    pids = table["patient_id"].tolist()
    fold_of = {p: int(k) for p, k in zip(table["patient_id"], table["fold"], strict=True)}
    folds = sorted(set(fold_of.values()))
    missing = [p for p in pids if not (base / f"{p}.npz").is_file()]
    if missing:
        raise FeatureFileError(
            f"{base}: expected a feature file for every patient with outcome data, "
            f"missing {len(missing)}: {missing[:10]}"
        )
    read = {str(base / f"{p}.npz"): load_features(base / f"{p}.npz", p) for p in pids}
    nets = {p: read[str(base / f"{p}.npz")].network_fold for p in pids}
    if all(v is None for v in nets.values()):
        return {k: {p: str(base / f"{p}.npz") for p in pids} for k in folds}, read
    wrong = [p for p in pids if nets[p] != fold_of[p]]
    if wrong:
        p = wrong[0]
        raise FeatureFileError(
            f"{base / f'{p}.npz'}: meta.network.fold: expected {fold_of[p]}, the fold of "
            f"patient {p} in folds.csv (out-of-fold features, as lamp features writes "
            f"them), got {nets[p]}; {len(wrong)} such file(s)"
        )
    paths = {
        k: {p: str(base / (f"{p}.npz" if fold_of[p] == k else f"fold_{k}/{p}.npz")) for p in pids}
        for k in folds
    }
    absent = [q for k in folds for q in paths[k].values() if not Path(q).is_file()]
    if absent:
        raise FeatureFileError(
            f"{absent[0]}: missing ({len(absent)} such file(s)); these features were made "
            "by trained segmentation networks, so each prognosis fold k needs fold k's "
            "network's features of its training patients under features/fold_<k>/ "
            "(lamp features writes them; --out-of-fold-only does not)"
        )
    return paths, read


def _load_fold_features(
    paths: dict[int, dict[str, str]],
    read: dict[str, PatientFeatures] | None = None,
) -> dict[int, dict[str, PatientFeatures]]:
    """Load the files of `fold_feature_paths` (each once; ``read``: those already read,
    by path) and check their network."""
    cache: dict[str, PatientFeatures] = dict(read or {})
    out: dict[int, dict[str, PatientFeatures]] = {}
    for k, by_patient in paths.items():
        out[k] = {}
        for p, path in by_patient.items():
            if path not in cache:
                cache[path] = load_features(path, p)
            feat = cache[path]
            if feat.network_fold is not None and feat.network_fold != k:
                raise FeatureFileError(
                    f"{path}: meta.network.fold: expected {k} (features for fold {k}'s "
                    f"model), got {feat.network_fold}"
                )
            out[k][p] = feat
    return out


def _init_worker(paths: dict[int, dict[str, str]], threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER_FEATURES.clear()
    _WORKER_FEATURES.update(_load_fold_features(paths))


def _run_task(
    task: _Task, features: dict[int, dict[str, PatientFeatures]] | None = None
) -> dict[str, Any]:
    """Fit, predict the held-out fold and save the checkpoint of one grid cell."""
    features = (_WORKER_FEATURES if features is None else features)[task.fold]
    fitted = fit_model(
        [features[p] for p in task.train_ids],
        np.array(task.train_times),
        np.array(task.train_events, dtype=bool),
        task.variant,
        task.config,
        seed=task.seed * 1000 + task.fold,
    )
    test_feats = [features[p] for p in task.test_ids]
    preds = predict(fitted, test_feats)
    key = {"endpoint": task.endpoint, "variant": task.variant, "seed": task.seed, "fold": task.fold}
    attention: list[dict[str, Any]] = []
    for feat, p in zip(test_feats, preds, strict=True):
        attention.extend(
            _attention_rows(feat, p, key, task.config.top_organs, fitted.model_config.use_lacf)
        )
    _save_checkpoint(Path(task.checkpoint), fitted, key)
    # In-sample risks of the training patients: the exact training-fold median for the
    # Kaplan-Meier risk groups (each fold model has its own time bins, hence risk scale).
    train_preds = predict(fitted, [features[p] for p in task.train_ids])
    return {
        "risks": [float(p["risk"]) for p in preds],
        "train_risks": [float(p["risk"]) for p in train_preds],
        "attention": attention,
        "epochs": fitted.epochs,
    }


def _run_tasks(
    tasks: list[_Task],
    features: dict[int, dict[str, PatientFeatures]],
    paths: dict[int, dict[str, str]],
    workers: int,
) -> Iterator[dict[str, Any]]:
    """The results of ``tasks`` in order, fitted here or in ``workers`` processes.

    Each fit is seeded by its own (seed, fold), so the results do not depend on the
    number of workers (up to floating-point summation order across thread counts).
    Worker processes are spawned (not forked: a forked OpenMP runtime can hang) and
    each uses ``cpu_count // workers`` torch threads.
    """
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield _run_task(task, features)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    workers = min(workers, len(tasks))
    threads = max(1, available_cpus() // workers)
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(paths, threads),
    ) as pool:
        yield from pool.map(_run_task, tasks)


def available_cpus() -> int:
    """CPUs this process may run on (affinity-aware where the OS tells)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def train_cv(
    work: str | Path,
    cohort: str | Path,
    endpoints: Sequence[str] = ("pfs", "os"),
    variants: Sequence[str] = tuple(VARIANTS),
    seeds: Sequence[int] = (0, 1, 2),
    config: TrainConfig | None = None,
    progress: Callable[[str], None] | None = None,
    workers: int = 1,
) -> CVResults:
    """Cross-validate every (endpoint, variant, seed) over the cohort's folds.

    Parameters
    ----------
    work : str or Path
        Work folder with ``features/<patient_id>.npz``; outputs go to ``prognosis/``.
    cohort : str or Path
        Cohort folder with ``clinical.csv`` and ``folds.csv``.
    endpoints : sequence of {"pfs", "os"}
    variants : sequence of names of `VARIANTS`
    seeds : sequence of int
    config : TrainConfig, optional
    progress : callable, optional
        Called with one line per fitted fold model.
    workers : int, default 1
        Fit the grid's fold models in this many processes (see `available_cpus`).

    Returns
    -------
    CVResults (also written to ``WORK/prognosis/``, see the module doc).

    Raises
    ------
    LampError
        Bad grid or config; CohortError for the tables; FeatureFileError when a patient
        with outcome data has no readable feature file.
    """
    config = config or TrainConfig()
    endpoints, variants, seeds = list(endpoints), list(variants), [int(s) for s in seeds]
    _check_grid(endpoints, variants, seeds)
    work, cohort = Path(work), Path(cohort)
    out = work / "prognosis"
    clinical = read_clinical(cohort / "clinical.csv")
    folds = read_folds(cohort / "folds.csv", clinical["patient_id"].tolist())
    with_outcome = has_outcome(clinical)
    excluded = clinical.loc[~with_outcome, "patient_id"].tolist()
    table = clinical[with_outcome].merge(folds, on="patient_id", how="left")
    paths, read = _fold_features(work, table)
    features = _load_fold_features(paths, read)
    write_text_atomic(
        out / "config.json",
        json.dumps(
            {
                "train": config.to_dict(),
                "endpoints": endpoints,
                "variants": variants,
                "seeds": seeds,
                "cohort": str(cohort),
                "folds": sorted(int(f) for f in folds["fold"].unique()),
                "n_patients": int(len(clinical)),
                "n_with_outcome": int(len(table)),
                "excluded_without_outcome": excluded,
            },
            indent=2,
        )
        + "\n",
    )
    tasks: list[_Task] = []
    frames: dict[tuple[str, int], tuple[pd.DataFrame, pd.DataFrame]] = {}
    for endpoint in endpoints:
        tcol, ecol = ENDPOINTS[endpoint]
        data = table.copy()
        data[ecol] = data[ecol].astype(int)
        for fold in sorted(data["fold"].unique()):
            train = data[data["fold"] != fold]
            test = data[data["fold"] == fold]
            if not test.empty:
                frames[(endpoint, int(fold))] = (train, test)
        for variant in variants:
            for seed in seeds:
                for fold in sorted(data["fold"].unique()):
                    if (endpoint, int(fold)) not in frames:
                        continue
                    train, test = frames[(endpoint, int(fold))]
                    tasks.append(
                        _Task(
                            endpoint=endpoint,
                            variant=variant,
                            seed=seed,
                            fold=int(fold),
                            train_ids=tuple(train["patient_id"]),
                            train_times=tuple(float(t) for t in train[tcol]),
                            train_events=tuple(bool(e) for e in train[ecol]),
                            test_ids=tuple(test["patient_id"]),
                            config=config,
                            checkpoint=str(
                                _checkpoint_path(out, endpoint, variant, seed, int(fold))
                            ),
                        )
                    )
    oof_rows: list[dict[str, Any]] = []
    train_rows: list[dict[str, Any]] = []
    metric_rows: list[dict[str, Any]] = []
    att_rows: list[dict[str, Any]] = []
    for task, result in zip(tasks, _run_tasks(tasks, features, paths, workers), strict=True):
        key = {
            "endpoint": task.endpoint,
            "variant": task.variant,
            "seed": task.seed,
            "fold": task.fold,
        }
        tcol, ecol = ENDPOINTS[task.endpoint]
        train, test = frames[(task.endpoint, task.fold)]
        risk = np.array(result["risks"])
        for pid, r in zip(task.test_ids, result["risks"], strict=True):
            oof_rows.append({"patient_id": pid, **key, "risk": r})
        for pid, r in zip(task.train_ids, result["train_risks"], strict=True):
            train_rows.append({"patient_id": pid, **key, "risk": r})
        att_rows.extend(result["attention"])
        values, note = _fold_metrics(train, test, risk, tcol, ecol, config.auc_months)
        metric_rows.append({**key, **values, "epochs": result["epochs"], "note": note})
        if progress is not None:
            progress(
                f"{task.endpoint} {task.variant} seed {task.seed} fold {task.fold}: "
                f"C-index {values['c_index']:.3f} ({result['epochs']} epochs)"
            )
    oof = pd.DataFrame(
        oof_rows, columns=["patient_id", "endpoint", "variant", "seed", "fold", "risk"]
    )
    metrics = pd.DataFrame(metric_rows)
    attention = pd.DataFrame(att_rows)
    train_risk = pd.DataFrame(train_rows, columns=list(oof.columns))
    # the out-of-fold risks last, after removing the old ones: a run cut short here never
    # leaves new oof_risk.csv beside an old train_risk.csv (lamp evaluate pairs them)
    (out / "oof_risk.csv").unlink(missing_ok=True)
    for name, df in (
        ("train_risk.csv", train_risk),
        ("fold_metrics.csv", metrics),
        ("lesion_attention.csv", attention),
        ("oof_risk.csv", oof),
    ):
        write_text_atomic(out / name, df.to_csv(index=False, lineterminator="\n"))
    return CVResults(oof, metrics, excluded, out, n_patients=int(len(clinical)))


def _attention_rows(
    feat: PatientFeatures, pred: dict[str, Any], key: dict[str, Any], top: int, use_lacf: bool
) -> list[dict[str, Any]]:
    rows = []
    a = pred["lesion_attention"]
    rank = np.argsort(-a, kind="stable")
    for r, j in enumerate(rank, start=1):
        row: dict[str, Any] = {
            "patient_id": feat.patient_id,
            **key,
            "lesion_id": int(feat.lesion_ids[j]),
            "attention": float(a[j]),
            "rank": r,
        }
        organ = pred["organ_attention"][j]
        order = np.argsort(-organ, kind="stable")[:top]
        for i, o in enumerate(order, start=1):
            row[f"organ_{i}"] = GROUPS[o] if use_lacf else ""
            row[f"organ_{i}_attention"] = float(organ[o]) if use_lacf else float("nan")
        rows.append(row)
    return rows


def _fold_of_checkpoint(path: Path) -> int:
    return int(path.stem.split("_fold")[-1])


def _features_for_fold(path: Path, fold: int) -> PatientFeatures:
    """``path``'s features as fold ``fold``'s model needs them (`predict_patient`)."""
    feat = load_features(path)
    if feat.network_fold is None or feat.network_fold == fold:
        return feat
    in_fold_dir = path.parent.name.startswith("fold_") and path.parent.name[5:].isdigit()
    root = path.parent.parent if in_fold_dir else path.parent
    for cand in (root / f"fold_{fold}" / path.name, root / path.name):
        if cand != path and cand.is_file():
            other = load_features(cand, feat.patient_id)
            if other.network_fold == fold:
                return other
    raise FeatureFileError(
        f"{path}: made by fold {feat.network_fold}'s segmentation network, but the model "
        f"of fold {fold} was trained on fold {fold}'s network's features; expected them in "
        f"{root / f'fold_{fold}' / path.name} (lamp features writes them)"
    )


def predict_patient(
    work: str | Path,
    features_npz: str | Path,
    endpoint: str = "pfs",
    variant: str = "full",
    seed: int | None = None,
) -> dict[str, Any]:
    """A new patient's prognosis from the fold models of one cross-validated run.

    Parameters
    ----------
    work : str or Path
        Work folder holding ``prognosis/checkpoints/`` from `train_cv`.
    features_npz : str or Path
        The patient's feature file. If it names the segmentation network that made it
        (``meta["network"]``, as `lamp features` writes), the model of fold k gets the
        features of fold k's network: this file where it is fold k's, else
        ``fold_<k>/<name>`` beside it (or beside its folder when it lies in a
        ``fold_<n>/`` folder).
    endpoint, variant : str
    seed : int, optional
        Which run's fold models; default the smallest seed trained.

    Returns
    -------
    dict with
        ``risk_mean``, ``risk_sd`` (float, over the fold models; ``-Σ S``);
        ``fold_risks`` (list of float); ``survival_months`` (list of float, a grid of
        times) and ``survival`` (list of float, the fold models' mean predicted S(t) on
        that grid; step function, S at the end of each bin); ``lesions`` (list of dict
        sorted by mean ABMLA attention: lesion_id, attention, attention_sd,
        top_organs [(name, weight)] when LACF is used).
    """
    folder = Path(work) / "prognosis" / "checkpoints" / endpoint / variant
    paths = sorted(folder.glob("seed*_fold*.pt"))
    if not paths:
        raise LampError(f"{folder}: no checkpoints (expected seed<s>_fold<k>.pt from train_cv)")
    seeds_found = sorted({int(p.stem.split("_")[0][4:]) for p in paths})
    seed = seeds_found[0] if seed is None else seed
    paths = [p for p in paths if p.stem.startswith(f"seed{seed}_")]
    if not paths:
        raise LampError(f"{folder}: no checkpoints for seed {seed}; found seeds {seeds_found}")
    feats = [_features_for_fold(Path(features_npz), _fold_of_checkpoint(p)) for p in paths]
    feat = feats[0]
    for f, p in zip(feats, paths, strict=True):
        if not np.array_equal(f.lesion_ids, feat.lesion_ids):
            raise FeatureFileError(
                f"{features_npz}: the feature files of the fold networks list different "
                f"lesions (for {p.name}: {f.lesion_ids.tolist()[:10]} against "
                f"{feat.lesion_ids.tolist()[:10]}); extract them over the same instances"
            )
    models = [load_checkpoint(p)[0] for p in paths]
    preds = [predict(m, [f])[0] for m, f in zip(models, feats, strict=True)]
    risks = np.array([p["risk"] for p in preds])
    finite = sorted({float(e) for m in models for e in m.bin_edges[1:-1]})
    grid = np.array([0.0, *finite])
    curves = []
    for m, p in zip(models, preds, strict=True):
        # S(t) = S at the end of the last bin that ended at or before t (1 before that).
        idx = np.searchsorted(m.bin_edges[1:-1], grid, side="right")
        curves.append(np.concatenate([[1.0], p["survival"]])[idx])
    lesion_att = (
        np.stack([p["lesion_attention"] for p in preds])
        if feat.n_lesions
        else np.zeros((len(preds), 0))
    )
    organ_att = np.mean([p["organ_attention"] for p in preds], axis=0) if feat.n_lesions else None
    lesions = []
    mean_att = lesion_att.mean(axis=0) if feat.n_lesions else np.zeros(0)
    for j in np.argsort(-mean_att, kind="stable"):
        entry: dict[str, Any] = {
            "lesion_id": int(feat.lesion_ids[j]),
            "attention": float(mean_att[j]),
            "attention_sd": float(lesion_att[:, j].std()),
        }
        if models[0].model_config.use_lacf and organ_att is not None:
            top = np.argsort(-organ_att[j], kind="stable")[:3]
            entry["top_organs"] = [(GROUPS[o], float(organ_att[j, o])) for o in top]
        lesions.append(entry)
    return {
        "patient_id": feat.patient_id,
        "endpoint": endpoint,
        "variant": variant,
        "seed": seed,
        "n_models": len(models),
        "risk_mean": float(risks.mean()),
        "risk_sd": float(risks.std(ddof=1)) if risks.size > 1 else 0.0,
        "fold_risks": risks.tolist(),
        "survival_months": grid.tolist(),
        "survival": np.mean(curves, axis=0).tolist(),
        "lesions": lesions,
    }
