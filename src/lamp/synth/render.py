"""Image formation for a synthetic patient: CT (HU) and PET (SUV) on their own grids.

* CT: Hounsfield units of unenhanced tissue per label, lesions at soft-tissue density,
  a slight blur (partial volume) and Gaussian noise, on its own finer grid.
* PET: physiological SUV per label (brain, myocardium, kidneys and bladder high; liver,
  blood pool, spleen and marrow near the reference values of the EANM guideline),
  lesions with a central-peaked profile, texture (heterogeneity) and optional necrotic
  core, blurred to the scanner's FWHM (5-7 mm) and given intensity-dependent,
  spatially correlated noise.
* Diffuse organ involvement (spleen, bone marrow) raises the organ's uptake with no focal
  lesion.

The PET grid is the patient's reference grid: ``organs`` and ``lesions`` are written on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lamp.anatomy import MARROW_BONES, TOTAL_IDS
from lamp.synth.config import SIZES, SynthConfig
from lamp.synth.disease import Lesion, Patient
from lamp.synth.phantom import (
    CODE,
    FAT,
    GASTRIC_GAS,
    MUSCLE,
    MYOCARDIUM,
    ORGAN_OF_CODE,
    RENAL_PELVIS_L,
    RENAL_PELVIS_R,
    SCAN_DEPTH_MM,
    VISCERAL,
    Ellipsoid,
    Grid,
    build_shapes,
    open_mesh,
    paint,
)

__all__ = ["RenderedCase", "render_patient", "scan_grids"]

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))

#: Unenhanced CT density (HU) per label name; unlisted TotalSegmentator classes get 40.
HU = {
    "fat": -100.0,
    "muscle": 45.0,
    "visceral": -60.0,
    "brain": 35.0,
    "skull": 900.0,
    "lung": -850.0,
    "trachea": -900.0,
    "esophagus": 35.0,
    "heart": 40.0,
    "myocardium": 45.0,
    "vessel": 42.0,
    "liver": 58.0,
    "gallbladder": 10.0,
    "spleen": 48.0,
    "stomach": 30.0,
    "gastric_gas": -950.0,
    "pancreas": 40.0,
    "duodenum": 30.0,
    "kidney": 32.0,
    "renal_pelvis": 10.0,
    "adrenal": 30.0,
    "small_bowel": 30.0,
    "colon": 5.0,
    "urinary_bladder": 8.0,
    "prostate": 38.0,
    "thyroid_gland": 90.0,
    "spinal_cord": 30.0,
    "vertebra": 280.0,
    "sacrum": 300.0,
    "rib": 450.0,
    "costal_cartilages": 120.0,
    "sternum": 330.0,
    "clavicula": 500.0,
    "scapula": 450.0,
    "humerus": 550.0,
    "hip": 420.0,
    "femur": 550.0,
}
VESSELS = (
    "aorta",
    "inferior_vena_cava",
    "superior_vena_cava",
    "common_carotid_artery",
    "iliac_artery",
)
NODAL_ALLOWED = (FAT, MUSCLE, VISCERAL, *range(10, 15))  # nodes displace fat, muscle, lung


@dataclass
class RenderedCase:
    """Arrays of one case (NIfTI storage order (i, j, k)) with their grids."""

    pet: np.ndarray  # float32 SUV on pet_grid
    ct: np.ndarray  # int16 HU on ct_grid
    organs: np.ndarray  # uint8 TotalSegmentator ids on pet_grid
    lesions: np.ndarray  # uint16 instances 1..J on pet_grid (lesion_id order)
    pet_grid: Grid
    ct_grid: Grid
    lesion_voxels: np.ndarray  # (J,) voxels of each instance on the PET grid
    fwhm_mm: float


def _group(name: str) -> str:
    for prefix in (
        "vertebrae_",
        "rib_",
        "lung_",
        "kidney_",
        "adrenal_gland_",
        "clavicula_",
        "scapula_",
        "humerus_",
        "hip_",
        "femur_",
    ):
        if name.startswith(prefix):
            return {
                "vertebrae_": "vertebra",
                "lung_": "lung",
                "kidney_": "kidney",
                "adrenal_gland_": "adrenal",
                "rib_": "rib",
            }.get(prefix, prefix[:-1])
    if name.startswith(VESSELS):
        return "vessel"
    if name.startswith(("iliopsoas", "autochthon", "gluteus")):
        return "muscle"
    return name


def _hu_lut() -> np.ndarray:
    lut = np.full(256, 40.0)
    lut[0] = -1000.0
    for name, tid in TOTAL_IDS.items():
        lut[tid] = HU.get(_group(name), 40.0)
    lut[FAT], lut[MUSCLE], lut[VISCERAL] = HU["fat"], HU["muscle"], HU["visceral"]
    lut[MYOCARDIUM] = HU["myocardium"]
    lut[RENAL_PELVIS_R] = lut[RENAL_PELVIS_L] = HU["renal_pelvis"]
    lut[GASTRIC_GAS] = HU["gastric_gas"]
    return lut


_HU_LUT = _hu_lut()
_MARROW_CODES = np.array(
    [TOTAL_IDS[n] for n in MARROW_BONES if n.startswith(("vertebrae", "sacrum", "hip", "sternum"))]
)


def _suv_lut(rng: np.random.Generator, cfg: SynthConfig, patient: Patient) -> np.ndarray:
    im = cfg.imaging
    blood = max(rng.normal(im.blood_pool_suv, 0.15), 0.8)
    marrow = max(rng.normal(im.marrow_suv, 0.15), 0.6)
    base = {
        "fat": 0.35,
        "muscle": 0.7,
        "visceral": 0.5,
        "brain": max(rng.normal(im.brain_suv, 1.2), 3),
        "skull": 0.8,
        "lung": 0.45,
        "trachea": 0.1,
        "esophagus": 1.6,
        "heart": blood,
        "myocardium": rng.uniform(1.5, 9.0),
        "vessel": blood,
        "liver": max(rng.normal(im.liver_suv, 0.2), 1.0),
        "gallbladder": 0.6,
        "spleen": max(rng.normal(im.spleen_suv, 0.15), 0.9),
        "stomach": rng.normal(2.0, 0.3),
        "gastric_gas": 0.05,
        "pancreas": 1.4,
        "duodenum": 1.8,
        "kidney": 2.5,
        "renal_pelvis": rng.uniform(5.0, 15.0),
        "adrenal": 1.6,
        "small_bowel": max(rng.normal(1.8, 0.3), 1.0),
        "colon": rng.uniform(1.2, 3.5),
        "urinary_bladder": rng.uniform(im.bladder_suv_min, im.bladder_suv_max),
        "prostate": 1.8,
        "thyroid_gland": 1.5,
        "spinal_cord": 1.5,
        "vertebra": marrow,
        "sacrum": marrow,
        "rib": 0.9,
        "costal_cartilages": 0.5,
        "sternum": marrow,
        "clavicula": 0.9,
        "scapula": 0.9,
        "humerus": 0.9,
        "hip": marrow,
        "femur": 0.9,
    }
    lut = np.full(256, 1.0)
    lut[0] = 0.0
    for name, tid in TOTAL_IDS.items():
        lut[tid] = base.get(_group(name), 1.0)
    lut[FAT], lut[MUSCLE], lut[VISCERAL] = base["fat"], base["muscle"], base["visceral"]
    lut[MYOCARDIUM] = base["myocardium"]
    lut[RENAL_PELVIS_R] = lut[RENAL_PELVIS_L] = base["renal_pelvis"]
    lut[GASTRIC_GAS] = base["gastric_gas"]
    if patient.diffuse_marrow:
        lut[_MARROW_CODES] = rng.uniform(3.0, 5.5)
    if patient.diffuse_spleen:
        lut[CODE["spleen"]] = rng.uniform(3.0, 5.5)
    return lut


def scan_grids(patient: Patient, size: str, rng: np.random.Generator) -> tuple[Grid, Grid]:
    """The PET and CT grids of a patient: vertex (+ margin) to mid-thigh."""
    preset = SIZES[size]
    body = patient.body
    top = body.z_vertex + rng.uniform(10.0, 30.0)
    bottom = body.z_of(SCAN_DEPTH_MM)
    pet = Grid.covering((0.0, -10.0), preset.fov_mm, (bottom, top), preset.pet_spacing_mm)
    shift = rng.uniform(-3.0, 3.0, 3)
    ct = Grid.covering(
        (shift[0], -10.0 + shift[1]),
        preset.fov_mm,
        (bottom - 5.0 + shift[2], top + 5.0 + shift[2]),
        preset.ct_spacing_mm,
    )
    return pet, ct


def _lesion_shapes(les: Lesion) -> list[Ellipsoid]:
    shapes = [Ellipsoid(les.center, les.radii, les.rot)]
    shapes += [Ellipsoid(c, r, les.rot) for c, r in les.satellites]
    return shapes


def _lesion_rho2(grid: Grid, les: Lesion):
    """(slices, rho2) over the union bounding box: min over the lesion's ellipsoids."""
    shapes = _lesion_shapes(les)
    lo = np.min([s.bbox()[0] for s in shapes], axis=0)
    hi = np.max([s.bbox()[1] for s in shapes], axis=0)
    mesh = open_mesh(grid, lo, hi)
    if mesh is None:
        return None
    sl, X, Y, Z = mesh
    rho2 = np.min(np.broadcast_arrays(*[s.rho2(X, Y, Z) for s in shapes]), axis=0)
    return sl, rho2


def _allowed(codes: np.ndarray, les: Lesion) -> np.ndarray:
    if les.site_type == "nodal" and les.site != "spleen":
        return np.isin(codes, NODAL_ALLOWED)
    return codes != 0


def _paint_labels(grid: Grid, shapes) -> np.ndarray:
    codes = np.zeros(grid.shape, dtype=np.uint8)
    for shape, code in shapes:
        paint(codes, grid, shape, code)
    return codes


def _correlated_noise(rng: np.random.Generator, shape, sigma_vox: float) -> np.ndarray:
    n = rng.standard_normal(shape, dtype=np.float32)
    if sigma_vox > 0:
        n = ndimage.gaussian_filter(n, sigma_vox)
        n /= max(float(n.std()), 1e-6)
    return n


def render_patient(patient: Patient, cfg: SynthConfig, size: str, seed: int) -> RenderedCase:
    """Render CT, PET, organ labels and lesion instances of one patient.

    The image random stream is derived from ``(seed, index, "images")`` and never
    touches the tables' streams.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    ss = np.random.SeedSequence(entropy=seed, spawn_key=(patient.index, 1_000_003))
    rng = np.random.default_rng(ss)
    im = cfg.imaging
    pet_grid, ct_grid = scan_grids(patient, size, rng)
    shapes = build_shapes(patient.body)
    codes_pet = _paint_labels(pet_grid, shapes)
    codes_ct = _paint_labels(ct_grid, shapes)

    suv_lut = _suv_lut(rng, cfg, patient)
    act = suv_lut.astype(np.float32)[codes_pet]
    hu = _HU_LUT.astype(np.float32)[codes_ct]
    organs = ORGAN_OF_CODE[codes_pet]
    lesions = np.zeros(pet_grid.shape, dtype=np.uint16)
    ct_taken = np.zeros(ct_grid.shape, dtype=bool)

    for j, les in enumerate(patient.lesions, start=1):
        hit = _lesion_rho2(pet_grid, les)
        if hit is not None:
            sl, rho2 = hit
            inside = (rho2 <= 1.0) & _allowed(codes_pet[sl], les) & (lesions[sl] == 0)
            if inside.any():
                profile = 0.6 + 0.4 * (1.0 - np.clip(rho2, 0.0, 1.0))
                tex = _correlated_noise(rng, rho2.shape, 1.0)
                profile *= np.clip(1.0 + 0.6 * les.heterogeneity * tex, 0.25, None)
                if les.necrotic_fraction > 0:
                    core = rho2 <= les.necrotic_fraction ** (2.0 / 3.0)
                    profile[core] = 0.0
                peak = float(profile[inside].max())
                vals = les.suvmax * profile / peak if peak > 0 else profile
                if les.necrotic_fraction > 0:
                    vals[core] = 0.8  # photopenic necrosis, a little above background
                a = act[sl]
                a[inside] = vals[inside]
                lesions[sl][inside] = j
                if les.site_type == "nodal" and les.site != "spleen":
                    organs[sl][inside] = 0
        hit = _lesion_rho2(ct_grid, les)
        if hit is not None:
            sl, rho2 = hit
            inside = (rho2 <= 1.0) & _allowed(codes_ct[sl], les) & ~ct_taken[sl]
            h = hu[sl]
            h[inside] = les.hu
            if les.necrotic_fraction > 0:
                h[inside & (rho2 <= les.necrotic_fraction ** (2.0 / 3.0))] = 20.0
            ct_taken[sl] |= inside

    # PET: scanner resolution, then intensity-dependent correlated noise
    fwhm = float(rng.uniform(im.pet_fwhm_mm_min, im.pet_fwhm_mm_max))
    sigma = [fwhm * FWHM_TO_SIGMA / sp for sp in pet_grid.spacing]
    blurred = ndimage.gaussian_filter(act, sigma)
    vox_scale = (4.0**3 / float(np.prod(pet_grid.spacing))) ** 0.5  # bigger voxels, less noise
    noise = _correlated_noise(rng, pet_grid.shape, 0.6)
    sd = im.pet_noise_cov * vox_scale * np.sqrt(np.maximum(blurred, 0.0) * im.liver_suv)
    pet = np.maximum(blurred + sd * noise, 0.0).astype(np.float32)

    # CT: slight partial-volume blur and noise
    hu = ndimage.gaussian_filter(hu, 0.5)
    hu += rng.normal(0.0, im.ct_noise_hu, hu.shape).astype(np.float32)
    ct = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)

    counts = np.bincount(lesions.ravel(), minlength=len(patient.lesions) + 1)[1:]
    return RenderedCase(pet, ct, organs, lesions, pet_grid, ct_grid, counts, fwhm)
