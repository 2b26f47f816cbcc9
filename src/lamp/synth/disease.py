"""The synthetic patient: clinical variables, lesions, diffuse involvement and survival.

Everything here is drawn without images, so the same code serves ``--tables-only`` and
the image cohorts: a patient's tables depend only on the seed and the patient's index.
The generative model (every coefficient in :mod:`lamp.synth.config`) is documented in
``docs/synthetic.md``; in short:

1. demographics and body habitus; a hidden *biology* score ``b ~ N(0, 1)`` (tumour
   aggressiveness) and a burden score ``u ~ N(0, 1)`` with TMTV = median * exp(sd * u);
2. dissemination: the number of involved Lugano nodal regions and extranodal sites grows
   with the burden; lesions per region, volumes split by a Dirichlet draw, SUVmax,
   heterogeneity and necrotic cores grow with the biology score;
3. LDH and ECOG depend on burden, biology and age; Ann Arbor stage, extranodal sites and
   IPI are derived from the sites (:mod:`lamp.clinical`);
4. progression and death follow Weibull proportional-hazards models whose linear
   predictors combine clinical factors, burden, organ involvement, lesion traits and
   diffuse involvement, plus an unobserved Gaussian frailty; PFS = min(progression,
   death), OS = death, censored by staggered accrual and loss to follow-up.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from lamp.clinical import NODAL_REGIONS, ann_arbor_stage, count_extranodal_sites, ipi
from lamp.synth.config import HazardConfig, SynthConfig
from lamp.synth.phantom import (
    NODAL_ANCHORS,
    Body,
    organ_ellipsoids,
    sample_body,
    small_bowel_points,
    spine_y,
    vertebra_bodies,
)

__all__ = ["Lesion", "Patient", "simulate_patient", "linear_predictor", "HAZARD_TERMS"]

#: Prevalence weights of the nodal regions at diagnosis (relative).
NODAL_WEIGHTS = {
    "cervical_right": 0.5,
    "cervical_left": 0.5,
    "supraclavicular_right": 0.25,
    "supraclavicular_left": 0.25,
    "axillary_right": 0.3,
    "axillary_left": 0.3,
    "mediastinal": 0.5,
    "hilar_right": 0.12,
    "hilar_left": 0.12,
    "para_aortic": 0.55,
    "mesenteric": 0.35,
    "iliac_right": 0.3,
    "iliac_left": 0.3,
    "inguinal_right": 0.22,
    "inguinal_left": 0.22,
    "spleen": 0.2,
}
#: Relative frequency of extranodal sites at diagnosis.
EXTRANODAL_WEIGHTS = {
    "bone_marrow": 0.25,
    "liver": 0.12,
    "stomach": 0.15,
    "bowel": 0.12,
    "lung": 0.1,
    "kidney": 0.1,
    "adrenal": 0.08,
    "cns": 0.03,
}
#: Largest volume (ml) a focal lesion may reach at a site before the excess is dropped.
SITE_MAX_ML = {
    "bone_marrow": 25.0,
    "liver": 400.0,
    "stomach": 150.0,
    "bowel": 120.0,
    "lung": 250.0,
    "kidney": 90.0,
    "adrenal": 40.0,
    "cns": 40.0,
    "spleen": 120.0,
}
#: CT density (HU) of lesion tissue by site (unenhanced CT).
SITE_HU = {"bone_marrow": 120.0, "liver": 38.0, "lung": 35.0, "cns": 38.0}
NODE_HU = 38.0
GI_SITES = {"stomach", "bowel"}

HAZARD_TERMS = (
    "age_per_decade",
    "ecog_2plus",
    "log_ldh_ratio",
    "log_tmtv",
    "dmax_per_100mm",
    "stage_4",
    "marrow",
    "spleen",
    "liver",
    "cns",
    "lung",
    "gi",
    "kidney_adrenal",
    "necrosis",
    "heterogeneity",
    "log_suvmax",
    "diffuse_marrow",
    "diffuse_spleen",
)


@dataclass
class Lesion:
    """One lesion as the generator made it (world coordinates, RAS+ mm)."""

    site: str  # Lugano nodal region or extranodal site (lamp.clinical vocabulary)
    site_type: str  # "nodal" or "extranodal"
    organ: str  # TotalSegmentator group holding it, or the nodal region
    side: str  # "right", "left" or "midline"
    center: np.ndarray
    radii: np.ndarray  # main ellipsoid half-axes (mm)
    rot: np.ndarray
    volume_ml: float
    suvmax: float
    heterogeneity: float  # 0-1, amplitude of the internal uptake texture
    necrotic_fraction: float  # share of the volume that is a photopenic core (0 = none)
    hu: float
    satellites: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)


@dataclass
class Patient:
    """All the generator knows of one patient."""

    patient_id: str
    index: int
    body: Body
    age: int
    sex: str
    bmi: float
    ecog: int
    ldh_ratio: float
    stage: int
    extranodal_sites: int
    ipi: int
    nodal_regions: list[str]
    extranodal_list: list[str]
    lesions: list[Lesion]
    diffuse_marrow: bool
    diffuse_spleen: bool
    biology: float
    covariates: dict[str, float]
    lp_pfs: float
    lp_os: float
    frailty_pfs: float
    frailty_os: float
    pfs_months: float
    pfs_event: int
    os_months: float
    os_event: int
    has_outcome: bool

    @property
    def tmtv_ml(self) -> float:
        return float(sum(les.volume_ml for les in self.lesions))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random rotation matrix (from a random unit quaternion)."""
    w, x, y, z = rng.standard_normal(4)
    n = math.sqrt(w * w + x * x + y * y + z * z) or 1.0
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _pick(
    rng: np.random.Generator,
    weights: dict[str, float],
    k: int,
    boost: dict[str, float] | None = None,
) -> list[str]:
    names = list(weights)
    w = np.array([weights[n] * (boost or {}).get(n, 1.0) for n in names])
    k = min(k, len(names))
    idx = rng.choice(len(names), size=k, replace=False, p=w / w.sum())
    return [names[i] for i in sorted(idx)]


def _point_in(
    rng: np.random.Generator, center: np.ndarray, radii: np.ndarray, max_frac: float
) -> np.ndarray:
    v = rng.standard_normal(3)
    v /= np.linalg.norm(v) or 1.0
    return center + v * radii * max_frac * rng.uniform() ** (1 / 3)


def _side_of(x_world: float, body: Body) -> str:
    return "right" if x_world >= body.origin[0] else "left"


def _place(
    rng: np.random.Generator, site: str, body: Body, organs: dict, vertebrae: dict
) -> tuple[np.ndarray, str, str]:
    """A lesion centre (world mm), the organ/region holding it, and its side."""
    if site in NODAL_ANCHORS:
        (x, y, d), sd = NODAL_ANCHORS[site]
        if site == "para_aortic":
            y = float(spine_y(d)) + 30.0
        jit = rng.normal(0.0, 1.0, 3) * np.array(sd)
        c = body.world(x + jit[0], y + jit[1], d + jit[2])
        side = (
            "midline"
            if site in ("mediastinal", "para_aortic", "mesenteric")
            else ("right" if site.endswith("right") else "left")
        )
        return c, site, side
    if site == "spleen":
        e = organs["spleen"]
        return _point_in(rng, e.center, e.radii, 0.5), "spleen", "left"
    if site == "liver":
        e = organs["liver"]
        c = _point_in(rng, e.center, e.radii, 0.55)
        c[0] = max(c[0], e.center[0] - 0.5 * e.radii[0])
        return c, "liver", "midline"
    if site == "stomach":
        e = organs["stomach"]
        return _point_in(rng, e.center, e.radii, 0.5), "stomach", "left"
    if site == "bowel":
        pts = small_bowel_points(body)
        c = pts[rng.integers(len(pts))] + rng.normal(0.0, 5.0, 3)
        return c, "small_bowel", "midline"
    if site == "lung":
        name = "lung_right" if rng.uniform() < 0.55 else "lung_left"
        e = organs[name]
        c = _point_in(rng, e.center, e.radii, 0.55)
        c[0] = e.center[0] + np.sign(e.center[0] - body.origin[0]) * abs(c[0] - e.center[0])
        c[2] = min(c[2], e.center[2] + 0.3 * e.radii[2])
        return c, name, name.split("_")[1]
    if site in ("kidney", "adrenal"):
        side = "right" if rng.uniform() < 0.5 else "left"
        name = f"{site}_{side}" if site == "kidney" else f"adrenal_gland_{side}"
        e = organs[name]
        return _point_in(rng, e.center, e.radii, 0.4), name, side
    if site == "cns":
        e = organs["brain"]
        c = _point_in(rng, e.center, e.radii, 0.5)
        return c, "brain", _side_of(c[0], body)
    if site == "bone_marrow":
        u = rng.uniform()
        if u < 0.6:
            names = [n for n in vertebrae if not n.startswith("vertebrae_C")]
            name = names[rng.integers(len(names))]
            group = "vertebrae_" + name.split("_")[1][0]  # vertebrae_T7 -> vertebrae_T
            return vertebrae[name].center.copy(), group, "midline"
        if u < 0.85:
            side = "right" if rng.uniform() < 0.5 else "left"
            e = organs[f"hip_{side}"]
            return (
                _point_in(rng, e.center, e.radii * np.array([0.6, 0.5, 0.6]), 0.5),
                f"hip_{side}",
                side,
            )
        e = organs["sacrum"]
        return _point_in(rng, e.center, e.radii, 0.3), "sacrum", "midline"
    raise ValueError(f"unknown lesion site {site!r}")


def _lesion_radii(rng: np.random.Generator, volume_ml: float) -> np.ndarray:
    r = (3.0 * volume_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    aspect = np.exp(rng.normal(0.0, 0.18, 3))
    aspect /= np.prod(aspect) ** (1.0 / 3.0)
    return r * aspect


def _sample_lesions(
    rng: np.random.Generator,
    cfg: SynthConfig,
    body: Body,
    u: float,
    biology: float,
    nodal: list[str],
    extranodal: list[str],
) -> list[Lesion]:
    d = cfg.disease
    needs_organs = bool(extranodal) or "spleen" in nodal
    organs = organ_ellipsoids(body) if needs_organs else {}
    vertebrae = vertebra_bodies(body) if "bone_marrow" in extranodal else {}
    sites: list[tuple[str, str]] = []
    for region in nodal:
        n = 1 + rng.poisson(d.lesions_per_region_rate * np.exp(0.3 * u))
        sites += [(region, "nodal")] * int(min(n, 6))
    for site in extranodal:
        rate = 2.0 if site == "bone_marrow" else 0.7
        n = 1 + rng.poisson(rate)
        sites += [(site, "extranodal")] * int(min(n, 6))
    if len(sites) > d.max_lesions:
        keep = np.sort(rng.choice(len(sites), d.max_lesions, replace=False))
        sites = [sites[i] for i in keep]
    tmtv = float(
        np.clip(d.tmtv_median_ml * np.exp(d.tmtv_log_sd * u), d.tmtv_min_ml, d.tmtv_max_ml)
    )
    share = rng.dirichlet(np.full(len(sites), d.volume_dirichlet_alpha))
    mu_suv = np.log(d.suvmax_median) + d.suvmax_patient_log_sd * (0.8 * biology + 0.4 * u)
    lesions = []
    for (site, stype), frac in zip(sites, share, strict=True):
        vol = max(d.lesion_min_ml, tmtv * float(frac))
        vol = min(vol, SITE_MAX_ML.get(site, d.tmtv_max_ml))
        center, organ, side = _place(rng, site, body, organs, vertebrae)
        suv = math.exp(rng.normal(mu_suv, d.suvmax_lesion_log_sd))
        suv = min(max(suv, d.suvmax_min), d.suvmax_max)
        het = _sigmoid(d.heterogeneity_biology_weight * biology + rng.normal(0.0, 0.7))
        necro = 0.0
        if vol >= d.necrosis_min_ml and rng.uniform() < _sigmoid(
            d.necrosis_log_odds + d.necrosis_biology_slope * biology
        ):
            necro = float(rng.uniform(0.08, 0.35))
        radii = _lesion_radii(rng, vol)
        rot = _random_rotation(rng)
        sats = []
        if vol > 60.0:  # bulky masses are lobulated: two overlapping satellites
            offs = [rot @ (rng.normal(0.0, 1.0, 3) * radii * 0.55) for _ in range(2)]
            facs = [rng.uniform(0.45, 0.6) for _ in range(2)]
            # shrink the whole cluster so that the union keeps the lesion's volume
            k = (vol / _union_volume_ml(radii, rot, offs, facs)) ** (1.0 / 3.0)
            radii = radii * k
            sats = [(center + k * o, radii * f) for o, f in zip(offs, facs, strict=True)]
        lesions.append(
            Lesion(
                site,
                stype,
                organ,
                side,
                center,
                radii,
                rot,
                vol,
                suv,
                het,
                necro,
                SITE_HU.get(site, NODE_HU),
                sats,
            )
        )
    return lesions


#: Fixed quasi-random points in [-1, 1]^3 for lesion-cluster volumes (no RNG draws).
_MC_POINTS = np.random.default_rng(12345).uniform(-1.0, 1.0, (2000, 3))


def _union_volume_ml(
    radii: np.ndarray, rot: np.ndarray, offsets: list[np.ndarray], factors: list[float]
) -> float:
    """Monte-Carlo volume (ml) of a main ellipsoid and its satellites (centre at 0)."""
    centres = [np.zeros(3), *offsets]
    rads = [radii, *(radii * f for f in factors)]
    ext = np.max([np.abs(c) + r.max() for c, r in zip(centres, rads, strict=True)], axis=0)
    local = (_MC_POINTS * ext) @ rot  # points in the lesion's own frame
    inside = np.zeros(len(local), dtype=bool)
    for c, r in zip(centres, rads, strict=True):
        inside |= (((local - c @ rot) / r) ** 2).sum(axis=1) <= 1.0
    return float(inside.mean() * np.prod(2.0 * ext) / 1000.0)


def _dmax(lesions: list[Lesion]) -> float:
    if len(lesions) < 2:
        return 0.0
    c = np.array([les.center for les in lesions])
    diff = c[:, None, :] - c[None, :, :]
    return float(np.sqrt((diff**2).sum(-1)).max())


def linear_predictor(cov: dict[str, float], hz: HazardConfig) -> float:
    """``sum(coef * covariate)`` over :data:`HAZARD_TERMS` (no frailty)."""
    return float(sum(getattr(hz, k) * cov[k] for k in HAZARD_TERMS))


def _weibull_time(rng: np.random.Generator, lp: float, hz: HazardConfig) -> float:
    # S(t) = exp(-(t / scale)^shape * exp(lp))  =>  t = scale * (E / exp(lp))^(1 / shape)
    e = rng.exponential()
    return float(hz.baseline_scale_months * (e / np.exp(lp)) ** (1.0 / hz.baseline_shape))


def simulate_patient(cfg: SynthConfig, seed: int, index: int) -> Patient:
    """Draw one patient's tables (no images) from the seed and the patient's index.

    Two independent random streams per patient (anatomy/disease and survival) are
    derived from ``(seed, index)``, so a patient is the same whatever the cohort size
    and whether or not images are rendered.
    """
    ss = np.random.SeedSequence(entropy=seed, spawn_key=(index,))
    rng, rng_surv = (np.random.default_rng(s) for s in ss.spawn(2))
    p, d, sv = cfg.population, cfg.disease, cfg.survival

    sex = "M" if rng.uniform() < p.male_fraction else "F"
    age_f = rng.normal(p.age_mean, p.age_sd)
    while not p.age_min <= age_f <= p.age_max:
        age_f = rng.normal(p.age_mean, p.age_sd)
    age = int(round(age_f))
    height = rng.normal(p.height_cm_male if sex == "M" else p.height_cm_female, p.height_cm_sd)
    height = float(np.clip(height, 140.0, 205.0))
    bmi = float(
        np.clip(np.exp(np.log(p.bmi_median) + p.bmi_log_sd * rng.standard_normal()), 16.0, 45.0)
    )
    body = sample_body(rng, sex, height, bmi)

    biology = float(rng.standard_normal())
    u = float(rng.standard_normal())
    diffuse_marrow = bool(rng.uniform() < d.diffuse_marrow_probability * np.exp(0.4 * biology))
    diffuse_spleen = bool(rng.uniform() < d.diffuse_spleen_probability * np.exp(0.3 * u))
    if diffuse_spleen:  # diffuse splenic involvement comes with splenomegaly
        body = dataclasses.replace(body, spleen_factor=float(rng.uniform(1.15, 1.35)))

    # dissemination
    extra_regions = rng.poisson(np.exp(d.nodal_regions_log_rate + d.nodal_regions_burden_slope * u))
    n_extranodal = rng.poisson(np.exp(d.extranodal_log_rate + d.extranodal_burden_slope * u))
    nodal: list[str] = []
    if not (n_extranodal > 0 and rng.uniform() < d.extranodal_only_probability):
        first = _pick(rng, NODAL_WEIGHTS, 1)[0]
        boost = {
            r: d.same_side_preference
            for r in NODAL_WEIGHTS
            if NODAL_REGIONS[r] == NODAL_REGIONS[first]
        }
        rest = {r: w for r, w in NODAL_WEIGHTS.items() if r != first}
        nodal = sorted([first, *_pick(rng, rest, int(extra_regions), boost)])
    extranodal = _pick(rng, EXTRANODAL_WEIGHTS, int(n_extranodal)) if n_extranodal else []
    if not nodal and not extranodal:
        nodal = [_pick(rng, NODAL_WEIGHTS, 1)[0]]
    lesions = _sample_lesions(rng, cfg, body, u, biology, nodal, extranodal)

    staging_nodal = sorted(set(nodal) | ({"spleen"} if diffuse_spleen else set()))
    staging_extra = sorted(set(extranodal) | ({"bone_marrow"} if diffuse_marrow else set()))
    stage = ann_arbor_stage(staging_nodal, staging_extra)
    n_en = count_extranodal_sites(staging_extra)

    tmtv = float(sum(les.volume_ml for les in lesions))
    ldh = float(
        np.exp(
            d.ldh_log_intercept
            + d.ldh_tmtv_slope * np.log(tmtv / 300.0)
            + d.ldh_biology_slope * biology
            + d.ldh_log_sd * rng.standard_normal()
        )
    )
    ldh = round(max(ldh, 0.2), 2)
    e = (
        d.ecog_age_slope * (age - 63.0) / 13.0
        + d.ecog_burden_slope * u
        + d.ecog_biology_slope * biology
        + rng.standard_normal()
    )
    ecog = int(np.searchsorted(np.asarray(d.ecog_cuts), e))
    score = ipi(age, ecog, ldh, stage, n_en)

    vols = np.array([les.volume_ml for les in lesions])
    het = float(np.average([les.heterogeneity for les in lesions], weights=vols))
    focal = {les.site for les in lesions}
    cov = {
        "age_per_decade": (age - 60.0) / 10.0,
        "ecog_2plus": float(ecog >= 2),
        "log_ldh_ratio": float(np.log(ldh)),
        "log_tmtv": float(np.log(tmtv / 300.0)),
        "dmax_per_100mm": _dmax(lesions) / 100.0,
        "stage_4": float(stage == 4),
        "marrow": float("bone_marrow" in focal),
        "spleen": float("spleen" in focal),
        "liver": float("liver" in focal),
        "cns": float("cns" in focal),
        "lung": float("lung" in focal),
        "gi": float(bool(focal & GI_SITES)),
        "kidney_adrenal": float(bool(focal & {"kidney", "adrenal"})),
        "necrosis": float(any(les.necrotic_fraction > 0 for les in lesions)),
        "heterogeneity": (het - 0.5) / 0.2,
        "log_suvmax": float(np.log(max(les.suvmax for les in lesions) / 17.0)),
        "diffuse_marrow": float(diffuse_marrow),
        "diffuse_spleen": float(diffuse_spleen),
    }
    lp_pfs = linear_predictor(cov, sv.pfs)
    lp_os = linear_predictor(cov, sv.os)

    # survival: its own stream, so image settings never change outcomes
    f_pfs = sv.frailty_sd * rng_surv.standard_normal()
    rho = sv.os_frailty_correlation
    f_os = rho * f_pfs + np.sqrt(1.0 - rho**2) * sv.frailty_sd * rng_surv.standard_normal()
    t_prog = _weibull_time(rng_surv, lp_pfs + f_pfs, sv.pfs)
    t_death = _weibull_time(rng_surv, lp_os + f_os, sv.os)
    entry = rng_surv.uniform(0.0, sv.accrual_months)
    admin = sv.accrual_months + sv.min_followup_months - entry
    dropout = (
        rng_surv.exponential(12.0 / sv.dropout_per_year) if sv.dropout_per_year > 0 else np.inf
    )
    censor = min(admin, dropout)
    pfs_t, os_t = min(t_prog, t_death), t_death
    pfs_months = round(max(min(pfs_t, censor), 0.03), 2)
    os_months = round(max(min(os_t, censor), 0.03), 2)
    os_months = max(os_months, pfs_months)
    has_outcome = bool(rng_surv.uniform() >= p.missing_outcome_fraction)

    return Patient(
        patient_id=f"SYN{index:04d}",
        index=index,
        body=body,
        age=age,
        sex=sex,
        bmi=bmi,
        ecog=ecog,
        ldh_ratio=ldh,
        stage=stage,
        extranodal_sites=n_en,
        ipi=int(score),
        nodal_regions=nodal,
        extranodal_list=extranodal,
        lesions=lesions,
        diffuse_marrow=diffuse_marrow,
        diffuse_spleen=diffuse_spleen,
        biology=biology,
        covariates=cov,
        lp_pfs=lp_pfs,
        lp_os=lp_os,
        frailty_pfs=float(f_pfs),
        frailty_os=float(f_os),
        pfs_months=pfs_months,
        pfs_event=int(pfs_t <= censor),
        os_months=os_months,
        os_event=int(os_t <= censor),
        has_outcome=has_outcome,
    )
