"""Feature files to padded, masked batches for the prognosis network.

A feature file ``WORK/features/<patient_id>.npz`` (written by `lamp.features`) holds

===================  ================  ==========================================
key                  shape, dtype      meaning
===================  ================  ==========================================
``lesion_features``  (J, 128) float    one row per lesion (J may be 0)
``organ_features``   (71, 128) float   one row per organ group of `lamp.anatomy`
``organ_present``    (71,) bool        organ group found in the scan
``lesion_ids``       (J,) int          the lesion instance ids
===================  ================  ==========================================

The paper trains with batch size 1 and gradient accumulation over 32 patients because
the lesion counts differ. `collate` pads the lesions of several patients to the largest
count and returns masks; since the network masks padded lesions with ``-inf`` before
each softmax, the summed per-patient loss of a padded batch has exactly the gradient of
the accumulated batch-1 losses (shown in ``tests/test_model_batching.py``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from lamp.anatomy import GROUPS
from lamp.errors import LampError

__all__ = [
    "FEATURE_KEYS",
    "FeatureFileError",
    "PatientFeatures",
    "Batch",
    "Standardizer",
    "load_features",
    "collate",
    "StackedPatients",
]

FEATURE_KEYS: tuple[str, ...] = (
    "lesion_features",
    "organ_features",
    "organ_present",
    "lesion_ids",
)


class FeatureFileError(LampError):
    """A feature file that is missing, unreadable or breaks the contract."""


@dataclass(frozen=True)
class PatientFeatures:
    """The features of one patient (see the module doc for shapes)."""

    patient_id: str
    lesion_features: NDArray[np.float32]
    organ_features: NDArray[np.float32]
    organ_present: NDArray[np.bool_]
    lesion_ids: NDArray[np.int64]
    # the fold of the segmentation network that made the features (the file's
    # meta["network"]["fold"]); None for features that depend on no trained network
    network_fold: int | None = None

    @property
    def n_lesions(self) -> int:
        return int(self.lesion_features.shape[0])


@dataclass(frozen=True)
class Batch:
    """A padded batch of B patients.

    Attributes
    ----------
    lesions : Tensor, float32, shape (B, J_max, D), J_max >= 1
    lesion_mask : Tensor, bool, shape (B, J_max)
    organs : Tensor, float32, shape (B, K, D)
    organ_present : Tensor, bool, shape (B, K)
    patient_ids : tuple of str, length B
    """

    lesions: Tensor
    lesion_mask: Tensor
    organs: Tensor
    organ_present: Tensor
    patient_ids: tuple[str, ...]

    def inputs(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The positional arguments of `lamp.model.layers.LAMP.forward`."""
        return self.lesions, self.lesion_mask, self.organs, self.organ_present


def load_features(path: str | Path, patient_id: str | None = None) -> PatientFeatures:
    """Read and check one feature file.

    Parameters
    ----------
    path : str or Path
        ``<patient_id>.npz`` with the keys of `FEATURE_KEYS`.
    patient_id : str, optional
        Defaults to the file name without ``.npz``.

    Raises
    ------
    FeatureFileError
        Missing file or key, wrong shape, non-finite features.
    """
    path = Path(path)
    source = f"feature file {path}"
    if not path.is_file():
        raise FeatureFileError(f"{source}: file not found (expected the output of lamp features)")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in FEATURE_KEYS if k not in data.files]
            if missing:
                raise FeatureFileError(
                    f"{source}: expected keys {list(FEATURE_KEYS)}, missing {missing}"
                )
            arrays = {k: np.asarray(data[k]) for k in FEATURE_KEYS}
            meta_text = str(data["meta"]) if "meta" in data.files else "{}"
    except (OSError, ValueError) as exc:
        if isinstance(exc, FeatureFileError):
            raise
        raise FeatureFileError(f"{source}: unreadable npz: {exc}") from exc
    k = len(GROUPS)
    lesions = arrays["lesion_features"]
    organs = arrays["organ_features"]
    present = arrays["organ_present"]
    ids = arrays["lesion_ids"]
    if organs.ndim != 2 or organs.shape[0] != k:
        raise FeatureFileError(
            f"{source}: organ_features: expected shape ({k}, D), got {organs.shape}"
        )
    dim = organs.shape[1]
    if lesions.size == 0 and lesions.ndim in (1, 2):
        lesions = lesions.reshape(0, dim)
    if lesions.ndim != 2 or lesions.shape[1] != dim:
        raise FeatureFileError(
            f"{source}: lesion_features: expected shape (J, {dim}), got {lesions.shape}"
        )
    if present.shape != (k,):
        raise FeatureFileError(
            f"{source}: organ_present: expected shape ({k},), got {present.shape}"
        )
    if ids.shape != (lesions.shape[0],):
        raise FeatureFileError(
            f"{source}: lesion_ids: expected shape ({lesions.shape[0]},) like the lesions, "
            f"got {ids.shape}"
        )
    if not np.all(np.isfinite(lesions)) or not np.all(np.isfinite(organs[present.astype(bool)])):
        raise FeatureFileError(f"{source}: expected finite lesion and present-organ features")
    try:
        network = json.loads(meta_text).get("network") or {}
        network_fold = None if network.get("fold") is None else int(network["fold"])
    except (ValueError, TypeError, AttributeError) as exc:
        raise FeatureFileError(f"{source}: meta: expected a JSON object, got {exc}") from exc
    return PatientFeatures(
        patient_id=patient_id if patient_id is not None else path.stem,
        lesion_features=lesions.astype(np.float32),
        # Absent organs may hold anything (zeros or NaN); they are masked, so make them 0.
        organ_features=np.where(present[:, None].astype(bool), organs, 0.0).astype(np.float32),
        organ_present=present.astype(bool),
        lesion_ids=ids.astype(np.int64),
        network_fold=network_fold,
    )


@dataclass(frozen=True)
class Standardizer:
    """Per-feature z-scoring fitted on the training fold only.

    Lesions and organs get separate statistics: they are different populations (organ
    rows outnumber lesion rows 71 to a few) and LACF compares them only through the
    learned projections W_q and W_k. Organ statistics use present organs only.

    Attributes
    ----------
    lesion_mean, lesion_std, organ_mean, organ_std : ndarray, shape (D,)
    """

    lesion_mean: NDArray[np.float32]
    lesion_std: NDArray[np.float32]
    organ_mean: NDArray[np.float32]
    organ_std: NDArray[np.float32]

    @classmethod
    def fit(cls, patients: Sequence[PatientFeatures]) -> Standardizer:
        """Statistics of the given (training) patients; std floored at 1e-6."""
        if not patients:
            raise FeatureFileError("Standardizer.fit: expected at least one training patient")
        dim = patients[0].organ_features.shape[1]
        lesions = np.concatenate([p.lesion_features for p in patients] + [np.zeros((0, dim))])
        organs = np.concatenate([p.organ_features[p.organ_present] for p in patients])

        def stats(x: NDArray) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
            if x.shape[0] == 0:
                return np.zeros(dim, np.float32), np.ones(dim, np.float32)
            return (
                x.mean(axis=0).astype(np.float32),
                np.maximum(x.std(axis=0), 1e-6).astype(np.float32),
            )

        lm, ls = stats(lesions)
        om, os_ = stats(organs)
        return cls(lm, ls, om, os_)

    def to_dict(self) -> dict[str, list[float]]:
        """Plain lists (JSON and ``weights_only`` safe)."""
        return {k: getattr(self, k).tolist() for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> Standardizer:
        return cls(**{k: np.asarray(v, dtype=np.float32) for k, v in data.items()})


def collate(patients: Sequence[PatientFeatures], standardizer: Standardizer | None) -> Batch:
    """Stack patients into one padded batch.

    Parameters
    ----------
    patients : sequence of PatientFeatures, length B >= 1
    standardizer : Standardizer or None
        Applied to lesion rows and present organ rows; None leaves features as they are.

    Returns
    -------
    Batch with J_max = max(1, largest lesion count): padded rows are zero and masked, so
    a batch of patients without lesions still has a lesion axis.
    """
    if not patients:
        raise FeatureFileError("collate: expected at least one patient")
    b = len(patients)
    dim = patients[0].organ_features.shape[1]
    k = patients[0].organ_features.shape[0]
    j_max = max(1, max(p.n_lesions for p in patients))
    lesions = np.zeros((b, j_max, dim), np.float32)
    mask = np.zeros((b, j_max), bool)
    organs = np.zeros((b, k, dim), np.float32)
    present = np.zeros((b, k), bool)
    for i, p in enumerate(patients):
        f = p.lesion_features
        o = p.organ_features
        if standardizer is not None:
            f = (f - standardizer.lesion_mean) / standardizer.lesion_std
            o = np.where(
                p.organ_present[:, None], (o - standardizer.organ_mean) / standardizer.organ_std, 0
            )
        lesions[i, : p.n_lesions] = f
        mask[i, : p.n_lesions] = True
        organs[i] = o
        present[i] = p.organ_present
    return Batch(
        lesions=torch.from_numpy(lesions),
        lesion_mask=torch.from_numpy(mask),
        organs=torch.from_numpy(organs),
        organ_present=torch.from_numpy(present),
        patient_ids=tuple(p.patient_id for p in patients),
    )


class StackedPatients:
    """A training set collated once; `take` slices the padded batch of any subset.

    Equivalent to ``collate([patients[i] for i in idx], None)`` (same tensors, padded
    to the subset's own largest lesion count) without re-stacking numpy arrays at every
    optimiser step.

    Parameters
    ----------
    patients : sequence of PatientFeatures (already standardised if that is wanted)
    """

    def __init__(self, patients: Sequence[PatientFeatures]) -> None:
        self._all = collate(patients, None)
        self._n_lesions = np.array([p.n_lesions for p in patients], dtype=np.int64)

    def __len__(self) -> int:
        return len(self._n_lesions)

    def take(self, idx: Sequence[int] | np.ndarray) -> Batch:
        """The padded batch of the patients at positions ``idx``, in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        j = max(1, int(self._n_lesions[idx].max())) if idx.size else 1
        t = torch.from_numpy(idx)
        return Batch(
            lesions=self._all.lesions[t, :j],
            lesion_mask=self._all.lesion_mask[t, :j],
            organs=self._all.organs[t],
            organ_present=self._all.organ_present[t],
            patient_ids=tuple(self._all.patient_ids[i] for i in idx),
        )
