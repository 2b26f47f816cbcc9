"""Configuration of the synthetic cohort: every number of the generator lives here.

The defaults come from the DLBCL literature of the rituximab era (see ``docs/synthetic.md``
for the sources and for what each coefficient means). A user overrides any subset in a
YAML or JSON file given to ``lamp synth --config FILE``; unknown keys, wrong types and
out-of-range values are rejected with a message naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from lamp.errors import LampError

__all__ = [
    "SIZES",
    "ConfigError",
    "GridPreset",
    "PopulationConfig",
    "DiseaseConfig",
    "HazardConfig",
    "SurvivalConfig",
    "ImagingConfig",
    "SynthConfig",
    "load_synth_config",
    "config_from_dict",
    "validate_config",
]


class ConfigError(LampError):
    """An invalid synthetic-cohort configuration (names the file and the key)."""


@dataclass(frozen=True)
class GridPreset:
    """Image grids of one size preset.

    PET and CT each have their own voxel spacing (mm, in i, j, k order = x, y, z) as in
    real studies; the transverse field of view (mm) is the same, the axial extent follows
    the patient (vertex to mid-thigh).
    """

    pet_spacing_mm: tuple[float, float, float]
    ct_spacing_mm: tuple[float, float, float]
    fov_mm: tuple[float, float] = (576.0, 384.0)


#: ``tiny`` is for tests, ``small`` for CPU demos, ``full`` resembles a clinical scan
#: (PET about 4 mm, CT on its own finer grid).
SIZES: dict[str, GridPreset] = {
    "tiny": GridPreset((12.0, 12.0, 12.0), (10.0, 10.0, 10.0)),
    "small": GridPreset((6.0, 6.0, 6.0), (5.0, 5.0, 5.0)),
    "full": GridPreset((4.0, 4.0, 4.0), (3.0, 3.0, 3.0)),
}


@dataclass(frozen=True)
class PopulationConfig:
    """Demographics and body habitus."""

    age_mean: float = 63.0  # DLBCL median age at diagnosis ~ 64-66
    age_sd: float = 13.0
    age_min: float = 18.0
    age_max: float = 90.0
    male_fraction: float = 0.55
    height_cm_male: float = 176.0
    height_cm_female: float = 163.0
    height_cm_sd: float = 7.0
    bmi_median: float = 25.0
    bmi_log_sd: float = 0.15
    missing_outcome_fraction: float = 0.15  # paper: 229 scans, 195 with outcomes


@dataclass(frozen=True)
class DiseaseConfig:
    """Lesion burden, dissemination, lesion traits and diffuse organ involvement."""

    tmtv_median_ml: float = 300.0  # baseline TMTV in DLBCL, median ~ 250-400 ml
    tmtv_log_sd: float = 1.1
    tmtv_min_ml: float = 3.0
    tmtv_max_ml: float = 4000.0
    nodal_regions_log_rate: float = 0.5  # log of the mean number of extra nodal regions
    nodal_regions_burden_slope: float = 0.45
    same_side_preference: float = 2.5  # regions on the first region's side are favoured
    extranodal_log_rate: float = -0.55
    extranodal_burden_slope: float = 0.5
    extranodal_only_probability: float = 0.10
    lesions_per_region_rate: float = 0.8
    max_lesions: int = 40
    lesion_min_ml: float = 0.8
    volume_dirichlet_alpha: float = 0.6
    suvmax_median: float = 17.0
    suvmax_patient_log_sd: float = 0.25
    suvmax_lesion_log_sd: float = 0.18
    suvmax_min: float = 8.0
    suvmax_max: float = 40.0
    heterogeneity_biology_weight: float = 0.8
    necrosis_min_ml: float = 25.0
    necrosis_log_odds: float = -1.0
    necrosis_biology_slope: float = 0.8
    diffuse_marrow_probability: float = 0.07
    diffuse_spleen_probability: float = 0.08
    ldh_log_intercept: float = -0.05
    ldh_tmtv_slope: float = 0.35
    ldh_biology_slope: float = 0.15
    ldh_log_sd: float = 0.35
    ecog_age_slope: float = 0.5
    ecog_burden_slope: float = 0.35
    ecog_biology_slope: float = 0.3
    ecog_cuts: tuple[float, float, float, float] = (0.3, 1.2, 2.2, 3.0)


@dataclass(frozen=True)
class HazardConfig:
    """Log-hazard coefficients of one endpoint (proportional hazards).

    The linear predictor is ``sum(coef * covariate)`` with the covariates of
    ``docs/synthetic.md`` (centred where stated), plus the patient's frailty.
    """

    age_per_decade: float = 0.10  # (age - 60) / 10
    ecog_2plus: float = 0.30
    log_ldh_ratio: float = 0.30
    log_tmtv: float = 0.30  # log(TMTV / 300 ml)
    dmax_per_100mm: float = 0.06
    stage_4: float = 0.10
    marrow: float = 0.45  # focal bone-marrow lesions
    spleen: float = 0.25
    liver: float = 0.35
    cns: float = 0.90
    lung: float = 0.30
    gi: float = 0.25  # stomach or bowel
    kidney_adrenal: float = 0.35
    necrosis: float = 0.35  # any lesion with a photopenic necrotic core
    heterogeneity: float = 0.45  # volume-weighted lesion heterogeneity, standardised
    log_suvmax: float = 0.25  # log(max SUVmax / 17)
    diffuse_marrow: float = 0.60
    diffuse_spleen: float = 0.35
    baseline_shape: float = 0.75  # Weibull shape: hazard falls with time (early relapses)
    baseline_scale_months: float = 1800.0  # Weibull scale at linear predictor 0


def _default_os_hazard() -> HazardConfig:
    return HazardConfig(
        age_per_decade=0.35,
        ecog_2plus=0.50,
        log_ldh_ratio=0.35,
        log_tmtv=0.30,
        dmax_per_100mm=0.06,
        stage_4=0.10,
        marrow=0.45,
        spleen=0.20,
        liver=0.40,
        cns=1.10,
        lung=0.30,
        gi=0.25,
        kidney_adrenal=0.40,
        necrosis=0.35,
        heterogeneity=0.45,
        log_suvmax=0.25,
        diffuse_marrow=0.60,
        diffuse_spleen=0.30,
        baseline_shape=0.85,
        baseline_scale_months=1400.0,
    )


@dataclass(frozen=True)
class SurvivalConfig:
    """Event-time model: two proportional-hazards processes and the censoring.

    Progression (or relapse) and death each follow a Weibull PH model; PFS is the
    earlier of the two, OS is the death time, so OS is never shorter than PFS. A shared
    Gaussian frailty (unobserved) makes the two correlated.
    """

    pfs: HazardConfig = field(default_factory=HazardConfig)
    os: HazardConfig = field(default_factory=_default_os_hazard)
    frailty_sd: float = 0.6
    os_frailty_correlation: float = 0.7
    accrual_months: float = 60.0  # staggered entry, uniform over this period
    min_followup_months: float = 12.0  # data cut-off this long after the last entry
    dropout_per_year: float = 0.03  # random loss to follow-up (exponential)


@dataclass(frozen=True)
class ImagingConfig:
    """Image formation: PET resolution and noise, CT noise, physiological uptake."""

    pet_fwhm_mm_min: float = 5.0
    pet_fwhm_mm_max: float = 7.0
    pet_noise_cov: float = 0.12  # coefficient of variation in liver at 4 mm voxels
    ct_noise_hu: float = 12.0
    liver_suv: float = 1.9
    blood_pool_suv: float = 1.6
    spleen_suv: float = 1.7
    marrow_suv: float = 1.5
    brain_suv: float = 8.0
    bladder_suv_min: float = 10.0
    bladder_suv_max: float = 60.0


@dataclass(frozen=True)
class SynthConfig:
    """The whole generator configuration (saved as ``synth_config.json`` in each cohort)."""

    population: PopulationConfig = field(default_factory=PopulationConfig)
    disease: DiseaseConfig = field(default_factory=DiseaseConfig)
    survival: SurvivalConfig = field(default_factory=SurvivalConfig)
    imaging: ImagingConfig = field(default_factory=ImagingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FRACTIONS = {
    "population.male_fraction",
    "population.missing_outcome_fraction",
    "disease.extranodal_only_probability",
    "disease.diffuse_marrow_probability",
    "disease.diffuse_spleen_probability",
    "survival.os_frailty_correlation",
}
_MAY_BE_NEGATIVE = {
    "disease.extranodal_log_rate",
    "disease.nodal_regions_log_rate",
    "disease.necrosis_log_odds",
    "disease.ldh_log_intercept",
    "disease.ecog_cuts",
}
_MAY_BE_ZERO = {
    "population.missing_outcome_fraction",
    "survival.dropout_per_year",
    "survival.frailty_sd",
    "survival.min_followup_months",
}


def _walk(obj: Any, prefix: str = ""):
    for f in fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _walk(value, key + ".")
        else:
            yield key, value


def validate_config(cfg: SynthConfig, source: str = "<configuration>") -> None:
    """Raise :class:`ConfigError` listing every out-of-range value of ``cfg``."""
    problems = []
    for key, value in _walk(cfg):
        section = key.split(".")[0]
        if section == "survival" and key.count(".") == 2:
            continue  # hazard coefficients may take any sign; shapes checked below
        if key in _FRACTIONS:
            if not 0.0 <= float(value) <= 1.0:
                problems.append(f"{key} must lie in [0, 1], got {value}")
        elif isinstance(value, tuple):
            if key == "disease.ecog_cuts" and list(value) != sorted(value):
                problems.append(f"{key} must be increasing, got {list(value)}")
        elif key not in _MAY_BE_NEGATIVE:
            ok = value >= 0 if key in _MAY_BE_ZERO else value > 0
            if not ok:
                need = ">= 0" if key in _MAY_BE_ZERO else "> 0"
                problems.append(f"{key} must be {need}, got {value}")
    for name in ("pfs", "os"):
        hz = getattr(cfg.survival, name)
        for attr in ("baseline_shape", "baseline_scale_months"):
            if getattr(hz, attr) <= 0:
                problems.append(f"survival.{name}.{attr} must be > 0, got {getattr(hz, attr)}")
    d, p, im = cfg.disease, cfg.population, cfg.imaging
    for lo, hi in (
        ("disease.tmtv_min_ml", "disease.tmtv_max_ml"),
        ("disease.suvmax_min", "disease.suvmax_max"),
        ("population.age_min", "population.age_max"),
        ("imaging.pet_fwhm_mm_min", "imaging.pet_fwhm_mm_max"),
        ("imaging.bladder_suv_min", "imaging.bladder_suv_max"),
    ):
        a = getattr(
            {"disease": d, "population": p, "imaging": im}[lo.split(".")[0]], lo.split(".")[1]
        )
        b = getattr(
            {"disease": d, "population": p, "imaging": im}[hi.split(".")[0]], hi.split(".")[1]
        )
        if a > b:
            problems.append(f"{lo} ({a}) must not exceed {hi} ({b})")
    if not isinstance(d.max_lesions, int) or d.max_lesions < 1:
        problems.append(f"disease.max_lesions must be an integer >= 1, got {d.max_lesions!r}")
    if problems:
        raise ConfigError(
            f"{source}: invalid synthetic-cohort configuration:\n  - " + "\n  - ".join(problems)
        )


def _build(cls: type, data: Any, source: str, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: '{prefix.rstrip('.') or '<top level>'}' must be a mapping of keys "
            f"to values, got {type(data).__name__}"
        )
    defaults = cls()
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys under '{prefix.rstrip('.') or '<top level>'}' are: "
            f"{', '.join(sorted(known))}"
        )
    values = {}
    for name, value in data.items():
        key = prefix + name
        current = getattr(defaults, name)
        if dataclasses.is_dataclass(current):
            values[name] = _build(type(current), value, source, key + ".")
        elif isinstance(current, tuple):
            if (
                not isinstance(value, list | tuple)
                or len(value) != len(current)
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            ):
                raise ConfigError(
                    f"{source}: {key} must be a list of {len(current)} numbers, got {value!r}"
                )
            values[name] = tuple(float(v) for v in value)
        elif (
            isinstance(current, bool)
            or not isinstance(value, int | float)
            or isinstance(value, bool)
        ):
            raise ConfigError(
                f"{source}: {key} must be a number, got {value!r} ({type(value).__name__})"
            )
        elif isinstance(current, int) and not isinstance(current, bool):
            if float(value) != int(value):
                raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
            values[name] = int(value)
        else:
            values[name] = float(value)
    return dataclasses.replace(defaults, **values)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_synth_config(path: str | Path | None = None) -> SynthConfig:
    """Load a configuration, overriding the defaults with what the file gives.

    Parameters
    ----------
    path : str or Path, optional
        A YAML (``.yaml``/``.yml``) or JSON file holding any subset of the keys of
        :class:`SynthConfig`, nested by section. ``None`` gives the defaults.

    Raises
    ------
    ConfigError
        The file is missing or unparsable, or a key is unknown, mistyped or out of range.
    """
    if path is None:
        return SynthConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot parse the configuration: {exc}") from None
    if data is None:
        data = {}
    # Merge into the full default tree first so that partial sections keep their own
    # defaults (the OS hazard's defaults differ from the PFS hazard's).
    full = _merge(SynthConfig().to_dict(), data) if isinstance(data, dict) else data
    cfg = _build(SynthConfig, full, str(path), "")
    validate_config(cfg, str(path))
    return cfg


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> SynthConfig:
    """Rebuild a configuration from :meth:`SynthConfig.to_dict` output."""
    full = _merge(SynthConfig().to_dict(), data)
    cfg = _build(SynthConfig, full, source, "")
    validate_config(cfg, source)
    return cfg
