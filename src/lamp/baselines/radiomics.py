"""The radiomics baseline of Table 1: IBSI PET features, in-fold selection, penalised Cox.

What the source says and what is chosen here (``reference/baselines.md``, "Radiomics"):

* **Known** (Carlier et al., J Nucl Med 65:156, 2024; GAINED trial): baseline PET
  radiomics in DLBCL analysed with machine learning. Its full methods could not be read
  here; the reconstruction follows that group's published pipelines.
* **Lesion masks.** As every baseline of Table 1: the reference masks ("manual") or the
  segmentation network's instances ("automatic"), found by `lamp.baselines.lesions.mask_path`
  (the source segmented by a majority vote of SUV ≥ 4, SUV ≥ 2.5 and 41 % SUVmax; here
  the masks are those LAMP uses, so that the rows of Table 1 differ only by the method).
* **Regions.** Two per patient, as in the source: the *whole tumour volume* (the union of
  all lesion instances) and the *dominant lesion*, defined as the instance with the largest
  volume on the PET grid (voxel count; a tie goes to the lower label). The source also
  used the hottest lesion; it is left out (it is often the dominant one, and adds ~100
  mostly redundant features for a few hundred patients).
* **Features.** pyradiomics (IBSI-compliant [1]_) classes firstorder, shape, glcm, glrlm,
  glszm, gldm and ngtdm on the original image: 107 features per region. LoG (σ 2 and
  6 mm) and wavelet images, used by the source, are available through
  ``RadiomicsConfig.filters`` but off by default: they multiply the features by ~10 (more
  than the patients) and the extraction time by ~10 or more (measured with
  ``benchmarks/bench_baselines_radiomics.py`` on 3 ``small`` synthetic patients, 2-core
  machine: median 0.5 s per patient for the original image, ≈ 2 min for 229 patients;
  2-24 s, median 6 s, per patient with LoG + wavelet, ≈ 25 min).
* **Resampling.** Isotropic 4 mm (the source: 2 mm) with linear interpolation of the PET
  (IBSI's reference choice; no B-spline overshoot into negative SUV) and pyradiomics'
  nearest-neighbour resampling of the mask. Isotropic voxels make the texture matrices
  rotation-consistent across patients with different voxel sizes; 2 mm is not used
  because the PET grids here are 4-6 mm (the synthetic ``small`` PET is 6 mm): 2 mm makes
  27 times more voxels than 6 mm and ~8 times more than 4 mm without adding information
  (and costs 2.5 times the extraction time: median 1.3 s per patient, measured as above).
  ``resampled_spacing_mm=2.0`` gives the source's setting.
* **Discretisation.** Fixed bin width 0.3 SUV (the source allows bin count 64 or width 0.3
  SUV). A fixed width keeps a grey level tied to an SUV, which suits calibrated PET
  (IBSI; Leijenaar et al. 2015), where a fixed bin count would rescale each region's range.
* **No lesion.** A patient without lesions (or a region too small for pyradiomics: one
  voxel, or a line) gets NaN features; in each training fold NaNs are replaced by the
  training median and a ``no_lesion`` indicator (0/1) is one more candidate feature.
* **Huge regions** (a guard of this reconstruction, not of the source). A predicted mask
  can take in physiological uptake (the bladder, the brain, half the body). The cost of
  the texture classes grows with the region: GLSZM holds a (grey levels x largest zone)
  float64 matrix and copies it (measured: +0.7 GB for a 268 000-voxel region with one
  134 000-voxel zone and 333 grey levels), and GLCM's MCC feature takes an
  eigendecomposition of a (grey levels)² matrix for each of 13 directions (measured on
  the loaded 2-core machine: 5-34 s per region of 333 grey levels, 140 s for 1000). So
  a region with more than ``max_texture_voxels`` voxels (default `MAX_TEXTURE_VOXELS` =
  100 000 on the grid the features are computed on: 6.4 l at 4 mm, 0.8 l at 2 mm) or
  spanning more than ``max_texture_grey_levels`` bins (default
  `MAX_TEXTURE_GREY_LEVELS` = 256, an SUV range of 76.8 at 0.3 SUV) gets NaN for its
  texture classes (`TEXTURE_CLASSES`), imputed in each training fold like a missing
  region. Its firstorder and shape features are still computed, first, in a pass of
  their own (they give the voxel count and the SUV range the rule looks at; measured
  about 1 s and 14 s for a 900 000-voxel ball; the second pass, resampling again for the
  texture classes, costs about +30 % of the extraction time of an ordinary patient).
  Each such region is reported: a `TextureGuardWarning` naming the patient, the region
  and the reason, a 0/1 column ``texture_skipped_<region>`` in ``features.csv``, and the
  patients' ids under ``texture_skipped`` in the method's ``config.json``.
* **Model, fitted on the training fold only** (`RadiomicsSurvivalModel`): median
  imputation, constant features dropped, features ranked by their univariate Harrell
  concordance (``|C − 0.5|``, so a protective feature ranks as high as a harmful one),
  a greedy Spearman filter that drops a feature with ``|ρ| > 0.9`` to a better-ranked kept
  one (the source's correlation filter), the ``n_select`` best kept features, z-scores,
  then an elastic-net Cox model (scikit-survival ``CoxnetSurvivalAnalysis``, fixed
  ``l1_ratio``, the penalty ``alpha`` chosen by an inner cross-validated C-index on the
  training fold) or, with ``model="rsf"``, a random survival forest. The risk is the Cox
  linear predictor (or the forest's summed cumulative hazard).

Features are cached per patient in ``WORK/baselines/radiomics_<masks>/features.csv``
(with ``extraction.json``, the settings that made them): an interrupted run resumes, a
patient is redone when its mask or PET file changes, everything is redone when the
extraction settings change. The out-of-fold risks go through
`lamp.baselines.common.cross_validate` as methods "Radiomics (manual)" and
"Radiomics (automatic)".

This is the only module that imports pyradiomics (inside functions, so that importing it
costs nothing).

References
----------
.. [1] van Griethuysen et al., "Computational radiomics system to decode the radiographic
   phenotype", Cancer Res 77:e104, 2017; Zwanenburg et al., "The Image Biomarker
   Standardization Initiative", Radiology 295:328, 2020.
"""

from __future__ import annotations

import functools
import json
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from lamp.baselines.common import BaselineError, Split, cross_validate, outcome_table
from lamp.baselines.lesions import MASKS, mask_path
from lamp.cohort import CohortError, case_path, read_clinical, write_text_atomic
from lamp.images import load_nifti, same_grid

__all__ = [
    "METHODS",
    "REGIONS",
    "FEATURE_CLASSES",
    "TEXTURE_CLASSES",
    "MAX_TEXTURE_VOXELS",
    "MAX_TEXTURE_GREY_LEVELS",
    "TextureGuardWarning",
    "RadiomicsConfig",
    "region_masks",
    "extract_case_features",
    "case_radiomics",
    "cohort_radiomics",
    "feature_columns",
    "univariate_concordance",
    "RadiomicsSurvivalModel",
    "run_radiomics",
]

#: Method name in Table 1 for each kind of lesion mask.
METHODS: dict[str, str] = {
    "manual": "Radiomics (manual)",
    "automatic": "Radiomics (automatic)",
}
#: Region prefixes of the feature columns: whole tumour volume, dominant lesion.
REGIONS: tuple[str, ...] = ("wtv", "dom")
FEATURE_CLASSES: tuple[str, ...] = (
    "firstorder",
    "shape",
    "glcm",
    "glrlm",
    "glszm",
    "gldm",
    "ngtdm",
)
#: The texture classes: their matrices and run times grow with the region (the guard below).
TEXTURE_CLASSES: tuple[str, ...] = ("glcm", "glrlm", "glszm", "gldm", "ngtdm")
#: Default ``RadiomicsConfig.max_texture_voxels``: a region with more voxels than this, on
#: the grid the features are computed on (after resampling), gets NaN texture features.
#: Why: the GLSZM matrix is (grey levels x largest zone) float64, copied two to three
#: times, so a whole-body or whole-organ predicted mask (10⁵-10⁶ voxels at 2 mm) costs
#: gigabytes; at this limit and `MAX_TEXTURE_GREY_LEVELS` it is 0.2 GB a copy. What it
#: costs: 100 000 voxels are 6.4 l at the default 4 mm (above any plausible tumour
#: burden) but 0.8 l at 2 mm, where very bulky disease can lose its texture features.
MAX_TEXTURE_VOXELS = 100_000
#: Default ``RadiomicsConfig.max_texture_grey_levels``: a region spanning more fixed-width
#: bins than this gets NaN texture features. Why: GLCM's MCC feature decomposes a
#: (grey levels)² matrix for each of 13 directions, cubic in the grey levels (measured:
#: 140 s per region at 1000 levels, i.e. SUV 1-300 as a bladder full of urine can give).
#: What it costs: 256 bins of 0.3 SUV are an SUV range of 76.8, above the SUVmax of
#: lymphoma lesions in practice; a region reaching further loses its texture features.
MAX_TEXTURE_GREY_LEVELS = 256
#: Bookkeeping columns of ``features.csv`` in front of the features: the last ones are
#: 1 where the guard left a region's texture features NaN.
_SKIPPED_COLUMNS = tuple(f"texture_skipped_{region}" for region in REGIONS)
_INFO_COLUMNS = (
    "patient_id",
    "n_lesions",
    "dominant_label",
    "source_mtime_ns",
    *_SKIPPED_COLUMNS,
)


class TextureGuardWarning(UserWarning):
    """A region too large for the texture classes: their features are left NaN."""


_INDICATOR = "no_lesion"


@dataclass(frozen=True)
class RadiomicsConfig:
    """Settings of the radiomics baseline (saved in its ``config.json``).

    Attributes
    ----------
    resampled_spacing_mm : float or None
        Isotropic voxel size the regions are resampled to (pyradiomics
        ``resampledPixelSpacing``); None keeps the PET grid.
    bin_width : float
        Fixed bin width of the grey-level discretisation, SUV.
    interpolator : str
        SimpleITK interpolator of the PET when resampling (``"sitkLinear"``,
        ``"sitkBSpline"``, ...); the mask is always nearest-neighbour.
    filters : tuple of str
        Extra pyradiomics image types besides the original image: ``"LoG"``,
        ``"Wavelet"``. Off by default (see the module docstring for their cost).
    log_sigma_mm : tuple of float
        σ of the LoG filter, mm.
    max_texture_voxels : int or None
        A region with more voxels than this on the extraction grid gets NaN texture
        features (`TEXTURE_CLASSES`); None: no limit. See `MAX_TEXTURE_VOXELS`.
    max_texture_grey_levels : int or None
        A region spanning more ``bin_width`` bins than this gets NaN texture features;
        None: no limit. See `MAX_TEXTURE_GREY_LEVELS`.
    model : {"coxnet", "rsf"}
        Elastic-net Cox (scikit-survival ``CoxnetSurvivalAnalysis``) or random survival
        forest.
    corr_threshold : float
        A feature with Spearman ``|ρ|`` above this to a better-ranked kept feature is
        dropped.
    n_select : int
        Number of features kept after the correlation filter (the best by univariate
        concordance on the training fold).
    l1_ratio : float
        Elastic-net mixing of the Cox model (1 = lasso).
    n_alphas : int
        Length of the penalty path searched by the inner cross-validation.
    alpha_min_ratio : float
        Smallest penalty of the path relative to the largest.
    inner_folds : int
        Folds of the inner cross-validation that picks ``alpha`` (at most the number of
        events and of censored patients of the training fold).
    rsf_trees, rsf_min_samples_leaf : int
        Random survival forest settings.
    """

    resampled_spacing_mm: float | None = 4.0
    bin_width: float = 0.3
    interpolator: str = "sitkLinear"
    filters: tuple[str, ...] = ()
    log_sigma_mm: tuple[float, ...] = (2.0, 6.0)
    max_texture_voxels: int | None = MAX_TEXTURE_VOXELS
    max_texture_grey_levels: int | None = MAX_TEXTURE_GREY_LEVELS
    model: str = "coxnet"
    corr_threshold: float = 0.9
    n_select: int = 10
    l1_ratio: float = 0.5
    n_alphas: int = 30
    alpha_min_ratio: float = 0.01
    inner_folds: int = 3
    rsf_trees: int = 300
    rsf_min_samples_leaf: int = 5

    def check(self) -> None:
        """Raise `BaselineError` naming the first bad setting."""
        if self.resampled_spacing_mm is not None and not self.resampled_spacing_mm > 0:
            raise BaselineError(
                f"radiomics: resampled_spacing_mm must be > 0 or None, "
                f"got {self.resampled_spacing_mm!r}"
            )
        if not self.bin_width > 0:
            raise BaselineError(f"radiomics: bin_width must be > 0 SUV, got {self.bin_width!r}")
        for name in ("max_texture_voxels", "max_texture_grey_levels"):
            limit = getattr(self, name)
            if limit is not None and (not isinstance(limit, int | np.integer) or limit < 1):
                raise BaselineError(
                    f"radiomics: {name} must be an integer >= 1 or None, got {limit!r}"
                )
        bad = [f for f in self.filters if f not in ("LoG", "Wavelet")]
        if bad:
            raise BaselineError(f"radiomics: filters must be among LoG, Wavelet; got {bad}")
        if self.model not in ("coxnet", "rsf"):
            raise BaselineError(f"radiomics: model must be 'coxnet' or 'rsf', got {self.model!r}")
        if not 0 < self.corr_threshold <= 1:
            raise BaselineError(
                f"radiomics: corr_threshold must be in (0, 1], got {self.corr_threshold!r}"
            )
        if self.n_select < 1 or self.n_alphas < 2 or self.inner_folds < 2:
            raise BaselineError(
                "radiomics: expected n_select >= 1, n_alphas >= 2, inner_folds >= 2; got "
                f"{self.n_select}, {self.n_alphas}, {self.inner_folds}"
            )
        if not 0 < self.l1_ratio <= 1 or not 0 < self.alpha_min_ratio < 1:
            raise BaselineError(
                "radiomics: expected 0 < l1_ratio <= 1 and 0 < alpha_min_ratio < 1; got "
                f"{self.l1_ratio}, {self.alpha_min_ratio}"
            )

    def extraction(self) -> dict[str, Any]:
        """The settings that determine the features (what ``extraction.json`` records)."""
        return {
            "resampled_spacing_mm": self.resampled_spacing_mm,
            "bin_width": self.bin_width,
            "interpolator": self.interpolator,
            "filters": list(self.filters),
            "log_sigma_mm": list(self.log_sigma_mm) if "LoG" in self.filters else [],
            "feature_classes": list(FEATURE_CLASSES),
            "regions": list(REGIONS),
            "max_texture_voxels": self.max_texture_voxels,
            "max_texture_grey_levels": self.max_texture_grey_levels,
        }


# --------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------


def _radiomics() -> Any:
    """Import pyradiomics, silence its logger, or say how to install it."""
    try:
        import radiomics
    except ImportError as exc:
        raise BaselineError(
            "radiomics: pyradiomics is not installed; install it with "
            "`pip install --no-build-isolation pyradiomics==3.0.1` "
            f"(python3 bootstrap.py setup does it) ({exc})"
        ) from None
    # pyradiomics logs every step at DEBUG and prints notices at WARNING on stderr
    radiomics.setVerbosity(logging.ERROR)
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    return radiomics


@functools.lru_cache(maxsize=8)
def _extractor(extraction_json: str, classes: tuple[str, ...] | None = None) -> Any:
    """The pyradiomics extractor of the settings, for ``classes`` (default: all of them)."""
    _radiomics()
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    ex = json.loads(extraction_json)
    settings: dict[str, Any] = {
        "binWidth": ex["bin_width"],
        "interpolator": ex["interpolator"],
        "additionalInfo": False,  # no diagnostics_* entries
        "preCrop": True,  # crop to the region before filtering (LoG/wavelet)
    }
    if ex["resampled_spacing_mm"] is not None:
        settings["resampledPixelSpacing"] = [float(ex["resampled_spacing_mm"])] * 3
    extractor = RadiomicsFeatureExtractor(**settings)
    extractor.disableAllFeatures()
    for name in ex["feature_classes"] if classes is None else classes:
        extractor.enableFeatureClassByName(name)
    types: dict[str, dict[str, Any]] = {"Original": {}}
    if "LoG" in ex["filters"]:
        types["LoG"] = {"sigma": [float(s) for s in ex["log_sigma_mm"]]}
    if "Wavelet" in ex["filters"]:
        types["Wavelet"] = {}
    extractor.disableAllImageTypes()
    extractor.enableImageTypes(**types)
    return extractor


def _execute(
    pet: NDArray,
    mask: NDArray[np.bool_],
    spacing: Sequence[float],
    extraction_json: str,
    classes: tuple[str, ...] | None = None,
) -> dict[str, float]:
    """pyradiomics on one region (``classes``, default all); raises ValueError for a region
    it cannot describe."""
    import SimpleITK as sitk

    # SimpleITK arrays are (z, y, x); the spacing is what the features depend on
    image = sitk.GetImageFromArray(np.ascontiguousarray(pet.transpose(2, 1, 0), np.float32))
    image.SetSpacing([float(s) for s in spacing])
    label = sitk.GetImageFromArray(np.ascontiguousarray(mask.transpose(2, 1, 0), np.uint8))
    label.CopyInformation(image)
    with warnings.catch_warnings():
        # numpy warnings inside pyradiomics (0/0 on degenerate matrices give NaN features,
        # imputed later) are not actionable for a user
        warnings.simplefilter("ignore", RuntimeWarning)
        result = _extractor(extraction_json, classes).execute(image, label, label=1)
    return {k: float(v) for k, v in result.items() if not k.startswith("diagnostics_")}


@functools.lru_cache(maxsize=8)
def _feature_names(extraction_json: str) -> tuple[str, ...]:
    """The pyradiomics feature names of one region, learnt once on a small cube."""
    pet = np.linspace(1.0, 10.0, 12**3, dtype=np.float32).reshape(12, 12, 12)
    mask = np.zeros(pet.shape, bool)
    mask[3:9, 3:9, 3:9] = True
    return tuple(_execute(pet, mask, (4.0, 4.0, 4.0), extraction_json))


def feature_columns(config: RadiomicsConfig | None = None) -> list[str]:
    """The feature columns of ``features.csv``: ``<region>_<pyradiomics name>``."""
    config = config or RadiomicsConfig()
    names = _feature_names(json.dumps(config.extraction(), sort_keys=True))
    return [f"{region}_{name}" for region in REGIONS for name in names]


def region_masks(instances: NDArray[np.integer]) -> tuple[dict[str, NDArray[np.bool_]], int, int]:
    """The whole tumour volume and the dominant lesion of one patient.

    Parameters
    ----------
    instances : ndarray of int, shape (i, j, k)
        Lesion instances 1..J, 0 = background.

    Returns
    -------
    masks : dict
        ``{"wtv": union of all lesions, "dom": the largest lesion}`` (empty if no lesion).
    n_lesions : int
    dominant_label : int
        Label of the dominant lesion (largest voxel count, the lower label on a tie);
        0 if there is no lesion.
    """
    labels, counts = np.unique(instances[instances > 0], return_counts=True)
    if len(labels) == 0:
        empty = np.zeros(instances.shape, bool)
        return {"wtv": empty, "dom": empty}, 0, 0
    dominant = int(labels[int(np.argmax(counts))])
    return {"wtv": instances > 0, "dom": instances == dominant}, len(labels), dominant


def _texture_guard(
    values: dict[str, float], spacing: Sequence[float], ex: dict[str, Any]
) -> str | None:
    """Why a region is too large for the texture classes (None: it is not).

    ``values`` are the region's original firstorder and shape features: the voxel count
    is ``VoxelVolume`` over the voxel volume of the extraction grid, the grey levels the
    bins of width ``bin_width`` that ``[Minimum, Maximum]`` spans (pyradiomics' Ng, up to
    rounding; its texture matrices then drop the empty levels).
    """
    step = ex["resampled_spacing_mm"]
    voxel_mm3 = float(step) ** 3 if step is not None else float(np.prod(spacing))
    n_voxels = int(round(values["original_shape_VoxelVolume"] / voxel_mm3))
    width = ex["bin_width"]
    low, high = values["original_firstorder_Minimum"], values["original_firstorder_Maximum"]
    n_levels = int(np.floor(high / width) - np.floor(low / width)) + 1
    reasons = []
    if ex["max_texture_voxels"] is not None and n_voxels > ex["max_texture_voxels"]:
        reasons.append(f"{n_voxels} voxels > max_texture_voxels {ex['max_texture_voxels']}")
    limit = ex["max_texture_grey_levels"]
    if limit is not None and n_levels > limit:
        reasons.append(
            f"{n_levels} grey levels (SUV {low:.3g}-{high:.3g} in bins of {width:g}) > "
            f"max_texture_grey_levels {limit}"
        )
    return " and ".join(reasons) or None


def _region_features(
    pet: NDArray, mask: NDArray[np.bool_], spacing: Sequence[float], extraction_json: str
) -> tuple[dict[str, float], str | None]:
    """One region's features and why its texture features were skipped (None: they were not).

    Two pyradiomics passes: firstorder and shape, then the texture classes unless the
    region is too large for them (`_texture_guard`). Raises ValueError for a region
    pyradiomics cannot describe.
    """
    ex = json.loads(extraction_json)
    base = tuple(c for c in ex["feature_classes"] if c not in TEXTURE_CLASSES)
    texture = tuple(c for c in ex["feature_classes"] if c in TEXTURE_CLASSES)
    values = _execute(pet, mask, spacing, extraction_json, base)
    skipped = _texture_guard(values, spacing, ex)
    if skipped is None and texture:
        values.update(_execute(pet, mask, spacing, extraction_json, texture))
    return values, skipped


def extract_case_features(
    pet: NDArray[np.floating],
    instances: NDArray[np.integer],
    spacing_mm: Sequence[float],
    config: RadiomicsConfig | None = None,
    patient_id: str | None = None,
) -> dict[str, float]:
    """Radiomics features of one patient's two regions.

    Parameters
    ----------
    pet : ndarray, shape (i, j, k), SUV (g/ml)
    instances : ndarray of int, shape (i, j, k)
        Lesion instances on the PET grid.
    spacing_mm : sequence of 3 float
        Voxel size along i, j, k, mm.
    config : RadiomicsConfig, optional
    patient_id : str, optional
        Named in the warnings.

    Returns
    -------
    dict
        ``n_lesions``, ``dominant_label``, ``texture_skipped_<region>`` (1 where the region
        was too large for the texture classes, else 0) and every column of
        `feature_columns` (NaN for a region that is empty, or that pyradiomics cannot
        describe: one voxel, or a line; NaN for the texture classes of a skipped region).

    Warns
    -----
    TextureGuardWarning
        Once per region whose texture features were skipped, with the reason.
    """
    config = config or RadiomicsConfig()
    if pet.shape != instances.shape:
        raise BaselineError(
            f"radiomics: PET shape {pet.shape} and lesion mask shape {instances.shape} differ"
        )
    extraction_json = json.dumps(config.extraction(), sort_keys=True)
    names = _feature_names(extraction_json)
    masks, n_lesions, dominant = region_masks(instances)
    out: dict[str, float] = {"n_lesions": n_lesions, "dominant_label": dominant}
    for region in REGIONS:
        values: dict[str, float] = {}
        skipped = None
        if masks[region].any():
            try:
                values, skipped = _region_features(pet, masks[region], spacing_mm, extraction_json)
            except ValueError:
                # pyradiomics refuses single-voxel and 1-D regions (its checkMask); such a
                # region is described by the imputed features, as a missing one
                values = {}
        out[f"texture_skipped_{region}"] = int(skipped is not None)
        if skipped is not None:
            who = f"patient {patient_id}: " if patient_id is not None else ""
            warnings.warn(
                f"radiomics: {who}region {region}: {skipped}: its texture features "
                f"({', '.join(TEXTURE_CLASSES)}) are left NaN (imputed like a missing "
                "region), firstorder and shape are computed",
                TextureGuardWarning,
                stacklevel=2,
            )
        for name in names:
            out[f"{region}_{name}"] = values.get(name, np.nan)
    return out


def _mtime_ns(*paths: Path) -> int:
    return max(p.stat().st_mtime_ns for p in paths)


def case_radiomics(
    cohort: str | Path,
    work: str | Path,
    patient_id: str,
    masks: str = "manual",
    config: RadiomicsConfig | None = None,
) -> dict[str, Any]:
    """The radiomics features of one patient of a cohort (one row of ``features.csv``).

    Raises
    ------
    BaselineError
        A missing or unreadable PET or lesion mask, or a mask off the PET grid; the
        message names the patient and the file.
    """
    les_path = mask_path(cohort, work, patient_id, masks)
    pet_path = case_path(cohort, patient_id, "pet")
    if not les_path.is_file():
        hint = (
            "run `lamp segment predict` first"
            if masks == "automatic"
            else "the cohort has no reference lesion masks"
        )
        raise BaselineError(f"patient {patient_id}: {les_path}: no such file ({hint})")
    if not pet_path.is_file():
        raise BaselineError(f"patient {patient_id}: {pet_path}: no such file (the PET in SUV)")
    try:
        pet, pet_aff = load_nifti(pet_path)
        les, les_aff = load_nifti(les_path)
    except CohortError as exc:
        raise BaselineError(f"patient {patient_id}: {exc}") from None
    if not same_grid(les.shape, les_aff, pet.shape, pet_aff):
        raise BaselineError(
            f"patient {patient_id}: {les_path}: the lesion mask is not on the PET grid "
            f"({pet_path}: shape {pet.shape})"
        )
    spacing = np.linalg.norm(pet_aff[:3, :3], axis=0)
    row: dict[str, Any] = {"patient_id": patient_id}
    row.update(
        extract_case_features(
            pet.astype(np.float32), np.rint(les).astype(np.int64), spacing, config, patient_id
        )
    )
    row["source_mtime_ns"] = _mtime_ns(les_path, pet_path)
    return row


def cohort_radiomics(
    cohort: str | Path,
    work: str | Path,
    masks: str = "manual",
    patient_ids: Sequence[str] | None = None,
    config: RadiomicsConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """The radiomics features of the cohort's patients (all, or ``patient_ids``).

    Cached in ``WORK/baselines/radiomics_<masks>/features.csv``, rewritten atomically
    after each new patient, so an interrupted run resumes where it stopped. A cached row
    is reused while its PET and mask files are unchanged (``source_mtime_ns``) and the
    extraction settings equal those of ``extraction.json``.

    Returns
    -------
    DataFrame
        One row per patient, in the order of ``patient_ids``: ``patient_id``,
        ``n_lesions``, ``dominant_label``, ``source_mtime_ns``, ``texture_skipped_wtv``,
        ``texture_skipped_dom`` (1 where the texture features of that region were left
        NaN as too large, see `MAX_TEXTURE_VOXELS`) and `feature_columns`.
    """
    if masks not in MASKS:
        raise BaselineError(f"radiomics: lesion masks: expected one of {MASKS}, got {masks!r}")
    config = config or RadiomicsConfig()
    config.check()
    cohort, work = Path(cohort), Path(work)
    if patient_ids is None:
        patient_ids = read_clinical(cohort / "clinical.csv")["patient_id"].tolist()
    columns = [*_INFO_COLUMNS, *feature_columns(config)]
    folder = work / "baselines" / f"radiomics_{masks}"
    cache, settings_file = folder / "features.csv", folder / "extraction.json"
    want = json.dumps(config.extraction(), indent=2, sort_keys=True) + "\n"
    rows: dict[str, dict[str, Any]] = {}
    same_settings = settings_file.is_file() and settings_file.read_text() == want
    if cache.is_file() and same_settings:
        old = pd.read_csv(cache, dtype={"patient_id": str})
        if list(old.columns) == columns:
            rows = {r["patient_id"]: r for r in old.to_dict("records")}
    elif not same_settings:
        # features of other settings must not outlive the new extraction.json
        cache.unlink(missing_ok=True)
    todo = []
    for pid in patient_ids:
        row = rows.get(pid)
        les_path = mask_path(cohort, work, pid, masks)
        pet_path = case_path(cohort, pid, "pet")
        fresh = (
            row is not None
            and les_path.is_file()
            and pet_path.is_file()
            and int(row["source_mtime_ns"]) == _mtime_ns(les_path, pet_path)
        )
        if not fresh:
            todo.append(pid)
    if todo:
        write_text_atomic(settings_file, want)
    for i, pid in enumerate(todo):
        rows[pid] = case_radiomics(cohort, work, pid, masks, config)
        table = pd.DataFrame(list(rows.values()), columns=columns)
        write_text_atomic(cache, table.to_csv(index=False, lineterminator="\n"))
        if progress is not None:
            progress(f"radiomics ({masks}) {i + 1}/{len(todo)}: {pid}")
    out = pd.DataFrame([rows[p] for p in patient_ids], columns=columns)
    counts = ["n_lesions", "dominant_label", *_SKIPPED_COLUMNS]
    out[counts] = out[counts].astype(int)
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


def univariate_concordance(
    x: NDArray[np.floating], time: NDArray[np.floating], event: NDArray
) -> NDArray[np.float64]:
    """Harrell's C-index of each column of ``x`` used alone as a risk score.

    Parameters
    ----------
    x : ndarray, shape (n, p)
        Candidate risk scores (higher = worse), no NaN.
    time : ndarray, shape (n,), months
    event : ndarray, shape (n,), 0/1 or bool

    Returns
    -------
    ndarray, shape (p,)
        ``(concordant + ties / 2) / comparable`` over the pairs (i, j) with an event at
        ``time[i]`` and ``time[i] < time[j]``, or ``time[i] == time[j]`` with j censored;
        scores within 1e-8 are tied (as ``sksurv.metrics.concordance_index_censored``).
        0.5 for every column when no pair is comparable.
    """
    x = np.asarray(x, dtype=np.float64)
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event).astype(bool)
    later = time[:, None] < time[None, :]
    censored_same_time = (time[:, None] == time[None, :]) & ~event[None, :]
    comparable = event[:, None] & (later | censored_same_time)
    n_pairs = int(comparable.sum())
    if n_pairs == 0:
        return np.full(x.shape[1], 0.5)
    i, j = np.nonzero(comparable)
    out = np.empty(x.shape[1])
    step = max(1, 2_000_000 // n_pairs)  # bound the (pairs, columns) temporaries
    for start in range(0, x.shape[1], step):
        xi, xj = x[i, start : start + step], x[j, start : start + step]
        tied = np.abs(xi - xj) <= 1e-8
        out[start : start + step] = ((xi > xj) & ~tied).sum(0) + 0.5 * tied.sum(0)
    out /= n_pairs
    return out


def _spearman(x: NDArray[np.float64]) -> NDArray[np.float64]:
    ranks = pd.DataFrame(x).rank().to_numpy()
    ranks -= ranks.mean(0)
    norms = np.linalg.norm(ranks, axis=0)
    norms[norms == 0] = 1.0
    ranks /= norms
    return ranks.T @ ranks


def _as_float(x: pd.DataFrame) -> pd.DataFrame:
    try:
        return x.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise BaselineError(f"radiomics: expected numeric features, got {exc}") from None


def _impute(x: pd.DataFrame, medians: pd.Series) -> pd.DataFrame:
    """``x[medians.index]`` with each NaN replaced by its column's training median."""
    values = x[medians.index].to_numpy(copy=True)
    values = np.where(np.isnan(values), medians.to_numpy()[None, :], values)
    return pd.DataFrame(values, index=x.index, columns=medians.index)


class RadiomicsSurvivalModel:
    """In-fold feature filtering, selection and a penalised Cox model (or forest).

    Everything is learnt in `fit` from the training rows only: the imputation medians,
    the constant and correlated features, the selection, the z-scores, the penalty.

    Parameters
    ----------
    config : RadiomicsConfig, optional
    seed : int
        Seed of the inner cross-validation split and of the forest.

    Attributes
    ----------
    medians_ : Series
        Training median of each feature (the imputation of NaN).
    selected_ : list of str
        The features the model uses, best univariate concordance first.
    concordance_ : Series
        Univariate training C-index of each non-constant feature.
    alpha_ : float or None
        The Cox penalty chosen by the inner cross-validation (None for the forest).
    estimator_ : object
        The fitted scikit-survival estimator.
    """

    def __init__(self, config: RadiomicsConfig | None = None, seed: int = 0) -> None:
        self.config = config or RadiomicsConfig()
        self.config.check()
        self.seed = int(seed)

    def fit(
        self, x: pd.DataFrame, time: Sequence[float], event: Sequence[int]
    ) -> RadiomicsSurvivalModel:
        """Fit on the training rows ``x`` (features only) with their outcome.

        Raises
        ------
        BaselineError
            No event among the training rows, or no feature that varies.
        """
        cfg = self.config
        time_a = np.asarray(time, dtype=np.float64)
        event_a = np.asarray(event).astype(bool)
        if len(time_a) != len(x) or len(event_a) != len(x):
            raise BaselineError(
                f"radiomics: {len(x)} training rows but {len(time_a)} times, {len(event_a)} events"
            )
        if not event_a.any():
            raise BaselineError(
                f"radiomics: no event among the {len(x)} training patients; a survival "
                "model cannot be fitted"
            )
        numeric = _as_float(x)
        self.medians_ = numeric.median(skipna=True).dropna()  # all-NaN columns leave here
        filled = _impute(numeric, self.medians_)
        varying = (filled.max(0) > filled.min(0)).to_numpy()
        if not varying.any():
            raise BaselineError(
                f"radiomics: no feature varies among the {len(x)} training patients"
            )
        names = self.medians_.index[varying]
        values = filled.to_numpy()[:, varying]
        conc = univariate_concordance(values, time_a, event_a)
        self.concordance_ = pd.Series(conc, index=names)
        order = np.argsort(-np.abs(conc - 0.5), kind="stable")
        rho = _spearman(values)
        kept: list[int] = []
        for j in order:
            if all(abs(rho[j, k]) <= cfg.corr_threshold for k in kept):
                kept.append(int(j))
                if len(kept) == cfg.n_select:
                    break
        self.selected_ = [str(names[k]) for k in kept]
        z = filled[self.selected_].to_numpy()
        self.mean_ = z.mean(0)
        self.std_ = z.std(0)
        z = (z - self.mean_) / self.std_
        from sksurv.util import Surv

        y = Surv.from_arrays(event=event_a, time=time_a)
        if cfg.model == "rsf":
            from sksurv.ensemble import RandomSurvivalForest

            self.alpha_ = None
            self.estimator_ = RandomSurvivalForest(
                n_estimators=cfg.rsf_trees,
                min_samples_leaf=cfg.rsf_min_samples_leaf,
                max_features="sqrt",
                n_jobs=1,
                random_state=self.seed,
            ).fit(z, y)
        else:
            self.alpha_, self.estimator_ = self._fit_coxnet(z, y, time_a, event_a)
        return self

    def _coxnet(self, alphas: NDArray | None, alpha_min_ratio: float = 0.01) -> Any:
        from sksurv.linear_model import CoxnetSurvivalAnalysis

        cfg = self.config
        if alphas is None:
            return CoxnetSurvivalAnalysis(
                l1_ratio=cfg.l1_ratio, n_alphas=cfg.n_alphas, alpha_min_ratio=alpha_min_ratio
            )
        return CoxnetSurvivalAnalysis(l1_ratio=cfg.l1_ratio, alphas=alphas)

    def _penalty_path(self, z: NDArray, y: NDArray) -> NDArray[np.float64]:
        """The decreasing alphas of the full training fold's path (shortened if it diverges)."""
        ratio = self.config.alpha_min_ratio
        while True:
            try:
                path = self._coxnet(None, ratio).fit(z, y).alphas_
                return np.asarray(path, dtype=np.float64)
            except ArithmeticError:  # sksurv: weights too large at the smallest alphas
                if ratio >= 0.5:
                    raise BaselineError(
                        "radiomics: the penalised Cox model diverges on this training fold"
                    ) from None
                ratio = min(0.5, ratio * 10)

    def _fit_coxnet(
        self, z: NDArray, y: NDArray, time: NDArray, event: NDArray[np.bool_]
    ) -> tuple[float, Any]:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.model_selection import KFold, StratifiedKFold

        with warnings.catch_warnings():
            # a path stopped at max_iter still gives usable coefficients, and an all-zero
            # model (the largest alpha, chosen when no feature helps) a constant risk; the
            # inner CV judges them like any other
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.filterwarnings("ignore", "all coefficients are zero", UserWarning)
            alphas = self._penalty_path(z, y)
            n_ev, n_cens = int(event.sum()), int((~event).sum())
            k = min(self.config.inner_folds, n_ev, n_cens)
            if k >= 2:
                cv: Any = StratifiedKFold(k, shuffle=True, random_state=self.seed)
            else:  # too few events or censored patients to stratify
                n_splits = min(self.config.inner_folds, len(z))
                cv = KFold(n_splits, shuffle=True, random_state=self.seed)
            splits = list(cv.split(z, event))
            scores = np.full((len(splits), len(alphas)), np.nan)
            for f, (tr, va) in enumerate(splits):
                if not event[tr].any() or not event[va].any():
                    continue  # nothing to fit on, or nothing to score
                try:
                    inner = self._coxnet(alphas).fit(z[tr], y[tr])
                except ArithmeticError:  # sksurv: weights too large at the smallest alphas
                    continue
                preds = np.stack([inner.predict(z[va], alpha=a) for a in alphas], axis=1)
                scores[f] = univariate_concordance(preds, time[va], event[va])
            mean = np.nanmean(scores, axis=0) if np.isfinite(scores).any() else None
            if mean is None:
                best = len(alphas) // 2  # no inner fold could be scored
            else:
                mean = np.where(np.isfinite(mean), mean, -np.inf)
                best = int(np.argmax(mean))  # alphas decrease: a tie keeps the larger penalty
            while True:
                try:
                    final = self._coxnet(alphas[: best + 1]).fit(z, y)
                    break
                except ArithmeticError:
                    if best == 0:
                        raise BaselineError(
                            "radiomics: the penalised Cox model diverges on this training fold"
                        ) from None
                    best -= 1
        return float(alphas[best]), final

    def predict(self, x: pd.DataFrame) -> NDArray[np.float64]:
        """Risk of each row of ``x`` (higher = worse): Cox linear predictor or forest risk."""
        missing = [c for c in self.selected_ if c not in x.columns]
        if missing:
            raise BaselineError(f"radiomics: rows lack the selected features {missing[:5]}")
        z = _impute(_as_float(x[self.selected_]), self.medians_[self.selected_]).to_numpy()
        z = (z - self.mean_) / self.std_
        if self.alpha_ is None:
            return np.asarray(self.estimator_.predict(z), dtype=np.float64)
        return np.asarray(self.estimator_.predict(z, alpha=self.alpha_), dtype=np.float64)


def _model_table(features: pd.DataFrame) -> pd.DataFrame:
    """The candidate features of each patient: region features and the no-lesion flag."""
    cols = [c for c in features.columns if c.split("_", 1)[0] in REGIONS]
    table = features[cols].copy()
    table[_INDICATOR] = (features["n_lesions"].to_numpy() == 0).astype(np.float64)
    table.index = features["patient_id"].to_numpy()
    return table


def run_radiomics(
    work: str | Path,
    cohort: str | Path,
    masks: str = "manual",
    endpoints: Sequence[str] = ("pfs", "os"),
    seeds: Sequence[int] = (0,),
    config: RadiomicsConfig | None = None,
    features: pd.DataFrame | None = None,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Cross-validate the radiomics baseline; write ``WORK/baselines/<method>/oof_risk.csv``.

    Parameters
    ----------
    work, cohort : str or Path
    masks : {"manual", "automatic"}
        Reference lesion masks or the segmentation network's; the method is
        ``METHODS[masks]`` ("Radiomics (manual)" / "Radiomics (automatic)").
    endpoints : sequence of {"pfs", "os"}
    seeds : sequence of int
        Only the inner cross-validation split (Cox) or the forest depend on it.
    config : RadiomicsConfig, optional
    features : DataFrame, optional
        Precomputed features (the output of `cohort_radiomics`); by default those of the
        patients with outcome, extracted or read from the cache.
    progress : callable, optional

    Returns
    -------
    DataFrame with `lamp.baselines.common.OOF_COLUMNS`.
    """
    if masks not in MASKS:
        raise BaselineError(f"radiomics: lesion masks: expected one of {MASKS}, got {masks!r}")
    config = config or RadiomicsConfig()
    config.check()
    if features is None:
        table, _ = outcome_table(cohort)
        features = cohort_radiomics(
            cohort, work, masks, table["patient_id"].tolist(), config, progress
        )
    missing = [c for c in ("patient_id", "n_lesions") if c not in features.columns]
    if missing:
        raise BaselineError(f"radiomics: the feature table lacks the columns {missing}")
    candidates = _model_table(features)

    def fit_predict(split: Split) -> NDArray[np.float64]:
        absent = sorted(
            set(split.train["patient_id"]).union(split.test["patient_id"]) - set(candidates.index)
        )
        if absent:
            raise BaselineError(f"radiomics: no features for patients {absent[:10]}")
        model = RadiomicsSurvivalModel(config, seed=split.seed)
        model.fit(
            candidates.loc[split.train["patient_id"].to_numpy()],
            split.train["time"].to_numpy(),
            split.train["event"].to_numpy(),
        )
        return model.predict(candidates.loc[split.test["patient_id"].to_numpy()])

    settings: dict[str, Any] = {"masks": masks, **asdict(config)}
    # the patients whose region was too large for the texture classes (their NaN imputed)
    settings["texture_skipped"] = {
        region: features.loc[features[col] == 1, "patient_id"].tolist()
        for region, col in zip(REGIONS, _SKIPPED_COLUMNS, strict=True)
        if col in features.columns
    }
    return cross_validate(
        METHODS[masks], fit_predict, work, cohort, endpoints, seeds, settings, progress
    )
