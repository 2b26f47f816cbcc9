"""The LAMP prognosis model (paper §2.2-2.3, §3): layers, loss, batching, training."""

from lamp.model.batching import Batch, PatientFeatures, Standardizer, collate, load_features
from lamp.model.layers import LAMP, VARIANTS, ModelConfig
from lamp.model.loss import make_time_bins, nll_survival_loss, risk_from_logits
from lamp.model.train import TrainConfig, predict_patient, train_cv

__all__ = [
    "LAMP",
    "VARIANTS",
    "Batch",
    "ModelConfig",
    "PatientFeatures",
    "Standardizer",
    "TrainConfig",
    "collate",
    "load_features",
    "make_time_bins",
    "nll_survival_loss",
    "predict_patient",
    "risk_from_logits",
    "train_cv",
]
