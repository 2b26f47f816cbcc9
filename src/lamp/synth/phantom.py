"""An analytic whole-body phantom (vertex to mid-thigh) labelled with TotalSegmentator ids.

The anatomy is written in a *reference frame* of a 175 cm adult: ``x_ref`` in mm towards
the patient's right, ``y_ref`` in mm towards anterior, ``d`` in mm downwards from the
vertex. A patient (:class:`Body`) scales that frame by height and build, shifts it on the
table, jitters every organ a little and adds a subcutaneous fat layer whose thickness
follows the BMI. World coordinates are RAS+ millimetres (nibabel's convention: +x right,
+y anterior, +z superior).

Organs are ellipsoids, shells and tubes (capsules along polylines), painted in a fixed
order onto a label grid; each shape is evaluated only inside its bounding box, so
painting costs in proportion to the organ, not to the volume. Label codes:

* 1-117: TotalSegmentator ``total`` ids (see :mod:`lamp.anatomy`);
* 118-121: sub-regions with their own intensity that belong to an organ (myocardium,
  renal pelvis right/left, gastric gas) -- :data:`ORGAN_OF_CODE` maps them to the organ;
* 201 subcutaneous fat, 202 muscle / soft tissue, 203 visceral soft tissue (fat and
  connective tissue between the organs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lamp.anatomy import TOTAL_IDS

__all__ = [
    "Grid",
    "Body",
    "Ellipsoid",
    "Capsule",
    "sample_body",
    "build_shapes",
    "paint",
    "rasterize",
    "open_mesh",
    "ORGAN_OF_CODE",
    "CODE",
    "NODAL_ANCHORS",
    "spine_y",
]

# ---------------------------------------------------------------------------------------
# label codes
MYOCARDIUM, RENAL_PELVIS_R, RENAL_PELVIS_L, GASTRIC_GAS = 118, 119, 120, 121
FAT, MUSCLE, VISCERAL = 201, 202, 203
CODE: dict[str, int] = dict(TOTAL_IDS)
CODE.update(
    myocardium=MYOCARDIUM,
    renal_pelvis_right=RENAL_PELVIS_R,
    renal_pelvis_left=RENAL_PELVIS_L,
    gastric_gas=GASTRIC_GAS,
    fat=FAT,
    muscle=MUSCLE,
    visceral=VISCERAL,
)

#: code -> TotalSegmentator id written to ``organs.nii.gz`` (0 for generic tissue)
ORGAN_OF_CODE = np.zeros(256, dtype=np.uint8)
ORGAN_OF_CODE[1:118] = np.arange(1, 118)
ORGAN_OF_CODE[MYOCARDIUM] = TOTAL_IDS["heart"]
ORGAN_OF_CODE[RENAL_PELVIS_R] = TOTAL_IDS["kidney_right"]
ORGAN_OF_CODE[RENAL_PELVIS_L] = TOTAL_IDS["kidney_left"]
ORGAN_OF_CODE[GASTRIC_GAS] = TOTAL_IDS["stomach"]


# ---------------------------------------------------------------------------------------
# grids
@dataclass(frozen=True)
class Grid:
    """An axis-aligned voxel grid (affine diagonal up to sign).

    ``origin`` is the world position (mm, RAS+) of voxel (0, 0, 0); ``signs`` the
    direction of each index axis in world space. The synthetic scans use (-1, -1, +1),
    the orientation of a DICOM-derived NIfTI (i runs to the patient's left, j to
    posterior, k to superior).
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    signs: tuple[int, int, int] = (-1, -1, 1)

    @property
    def affine(self) -> np.ndarray:
        a = np.eye(4)
        for ax in range(3):
            a[ax, ax] = self.signs[ax] * self.spacing[ax]
            a[ax, 3] = self.origin[ax]
        return a

    def axis_coords(self, ax: int) -> np.ndarray:
        """World coordinate (mm) of each voxel centre along index axis ``ax``."""
        n = self.shape[ax]
        return self.origin[ax] + self.signs[ax] * self.spacing[ax] * np.arange(n)

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    @classmethod
    def covering(
        cls,
        center_xy: tuple[float, float],
        fov_xy: tuple[float, float],
        z_range: tuple[float, float],
        spacing: tuple[float, float, float],
        signs: tuple[int, int, int] = (-1, -1, 1),
    ) -> Grid:
        """The grid of ``spacing`` covering a transverse FOV centred on ``center_xy``
        and the axial range ``z_range`` = (bottom, top) in mm."""
        nx = int(round(fov_xy[0] / spacing[0]))
        ny = int(round(fov_xy[1] / spacing[1]))
        nz = int(np.ceil((z_range[1] - z_range[0]) / spacing[2])) + 1
        half = [(nx - 1) * spacing[0] / 2, (ny - 1) * spacing[1] / 2]
        origin = (
            center_xy[0] - signs[0] * half[0],
            center_xy[1] - signs[1] * half[1],
            z_range[0],
        )
        return cls((nx, ny, nz), tuple(spacing), origin, signs)


def _index_range(coords: np.ndarray, lo: float, hi: float) -> slice | None:
    idx = np.nonzero((coords >= lo) & (coords <= hi))[0]
    if idx.size == 0:
        return None
    return slice(int(idx[0]), int(idx[-1]) + 1)


# ---------------------------------------------------------------------------------------
# shapes (world coordinates)
Keep = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Ellipsoid:
    """Solid ellipsoid ``sum(((R^T (p - c)) / r)^2) <= 1``; optional ``keep`` predicate."""

    center: np.ndarray
    radii: np.ndarray
    rot: np.ndarray | None = None
    keep: Keep | None = None

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        if self.rot is None:
            ext = self.radii
        else:  # half-extent of a rotated ellipsoid along each world axis
            ext = np.sqrt(((self.rot * self.radii[None, :]) ** 2).sum(axis=1))
        return self.center - ext, self.center + ext

    def rho2(self, X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> np.ndarray:
        dx, dy, dz = X - self.center[0], Y - self.center[1], Z - self.center[2]
        if self.rot is not None:
            r = self.rot
            dx, dy, dz = (
                r[0, 0] * dx + r[1, 0] * dy + r[2, 0] * dz,
                r[0, 1] * dx + r[1, 1] * dy + r[2, 1] * dz,
                r[0, 2] * dx + r[1, 2] * dy + r[2, 2] * dz,
            )
        return (dx / self.radii[0]) ** 2 + (dy / self.radii[1]) ** 2 + (dz / self.radii[2]) ** 2

    def inside(self, X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> np.ndarray:
        m = self.rho2(X, Y, Z) <= 1.0
        if self.keep is not None:
            m &= self.keep(X, Y, Z)
        return m


@dataclass(frozen=True)
class Capsule:
    """Union of round-capped tubes of ``radius`` along the polyline ``points`` (n, 3)."""

    points: np.ndarray
    radius: float
    keep: Keep | None = None

    def segments(self):
        yield from zip(self.points[:-1], self.points[1:], strict=True)

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        return self.points.min(axis=0) - self.radius, self.points.max(axis=0) + self.radius


@dataclass(frozen=True)
class Profile:
    """An elliptic cylinder whose half-axes vary with z (the body outline)."""

    z: np.ndarray  # increasing world z of the knots
    a: np.ndarray  # half-width along x at the knots (mm)
    b: np.ndarray  # half-depth along y at the knots (mm)
    xc: float
    yc: float

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        amax, bmax = float(self.a.max()), float(self.b.max())
        return (
            np.array([self.xc - amax, self.yc - bmax, self.z[0]]),
            np.array([self.xc + amax, self.yc + bmax, self.z[-1]]),
        )

    def inside(self, X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> np.ndarray:
        zf = Z.ravel()
        a = np.interp(zf, self.z, self.a).reshape(Z.shape)
        b = np.interp(zf, self.z, self.b).reshape(Z.shape)
        return ((X - self.xc) / a) ** 2 + ((Y - self.yc) / b) ** 2 <= 1.0


Shape = Ellipsoid | Capsule | Profile


def open_mesh(grid: Grid, lo: np.ndarray, hi: np.ndarray):
    """(slices, X, Y, Z): the grid's voxel centres inside the world box [lo, hi],
    as broadcastable 1-D coordinate arrays; None when the box misses the grid."""
    sl = []
    for ax in range(3):
        s = _index_range(grid.axis_coords(ax), lo[ax], hi[ax])
        if s is None:
            return None
        sl.append(s)
    X = grid.axis_coords(0)[sl[0]][:, None, None]
    Y = grid.axis_coords(1)[sl[1]][None, :, None]
    Z = grid.axis_coords(2)[sl[2]][None, None, :]
    return tuple(sl), X, Y, Z


def rasterize(grid: Grid, shape: Shape):
    """Evaluate ``shape`` on ``grid`` inside its bounding box.

    Returns
    -------
    (slices, mask) or None
        ``mask`` (bool) covers ``array[slices]``; None when the shape misses the grid.
    """
    if isinstance(shape, Capsule):
        lo, hi = shape.bbox()
        mesh = open_mesh(grid, lo, hi)
        if mesh is None:
            return None
        sl, X, Y, Z = mesh
        mask = np.zeros((X.shape[0], Y.shape[1], Z.shape[2]), dtype=bool)
        r2 = shape.radius**2
        for a, b in shape.segments():
            slo, shi = np.minimum(a, b) - shape.radius, np.maximum(a, b) + shape.radius
            sub = [
                np.nonzero((c.ravel() >= slo[ax]) & (c.ravel() <= shi[ax]))[0]
                for ax, c in enumerate((X, Y, Z))
            ]
            if any(s.size == 0 for s in sub):
                continue
            ss = tuple(slice(int(s[0]), int(s[-1]) + 1) for s in sub)
            x, y, z = X[ss[0]], Y[:, ss[1]], Z[:, :, ss[2]]
            d = b - a
            dd = float(d @ d) or 1.0
            t = ((x - a[0]) * d[0] + (y - a[1]) * d[1] + (z - a[2]) * d[2]) / dd
            np.clip(t, 0.0, 1.0, out=t)
            dist2 = (x - a[0] - t * d[0]) ** 2 + (y - a[1] - t * d[1]) ** 2
            dist2 += (z - a[2] - t * d[2]) ** 2
            mask[ss] |= dist2 <= r2
        if shape.keep is not None:
            mask &= shape.keep(X, Y, Z)
        return sl, mask
    lo, hi = shape.bbox()
    mesh = open_mesh(grid, lo, hi)
    if mesh is None:
        return None
    sl, X, Y, Z = mesh
    return sl, np.broadcast_to(shape.inside(X, Y, Z), (X.shape[0], Y.shape[1], Z.shape[2]))


def paint(labels: np.ndarray, grid: Grid, shape: Shape, code: int) -> None:
    """Write ``code`` into ``labels`` wherever ``shape`` is (later shapes win)."""
    hit = rasterize(grid, shape)
    if hit is None:
        return
    sl, mask = hit
    view = labels[sl]
    view[mask] = code


# ---------------------------------------------------------------------------------------
# the patient's body
@dataclass(frozen=True)
class Body:
    """Everything that places one patient's anatomy in the world.

    Attributes
    ----------
    height_cm, weight_kg, sex : float, float, str
    s_z, s_lat : float
        Axial and lateral scale of the reference anatomy.
    fat_mm : float
        Subcutaneous fat thickness (thicker on the abdomen).
    origin : ndarray, shape (3,)
        World position (mm) of the reference point (x_ref = y_ref = 0 at the vertex).
    jitter : dict
        Per-organ (offset mm (3,), radius factor) drawn once per patient.
    bladder_fill : float
        Radius factor of the urinary bladder (filling varies).
    """

    height_cm: float
    weight_kg: float
    sex: str
    s_z: float
    s_lat: float
    fat_mm: float
    origin: np.ndarray
    jitter: dict[str, tuple[np.ndarray, float]]
    bladder_fill: float
    spleen_factor: float = 1.0

    def world(self, x_ref: float, y_ref: float, d: float, organ: str | None = None) -> np.ndarray:
        off = self.jitter[organ][0] if organ in self.jitter else 0.0
        return self.origin + np.array([self.s_lat * x_ref, self.s_lat * y_ref, -self.s_z * d]) + off

    def radii(self, rx: float, ry: float, rz: float, organ: str | None = None) -> np.ndarray:
        f = self.jitter[organ][1] if organ in self.jitter else 1.0
        return f * np.array([self.s_lat * rx, self.s_lat * ry, self.s_z * rz])

    @property
    def z_vertex(self) -> float:
        return float(self.origin[2])

    def z_of(self, d: float) -> float:
        return float(self.origin[2] - self.s_z * d)


#: Organs that get their own jitter (offset and size) per patient.
JITTERED = (
    "brain",
    "lung_right",
    "lung_left",
    "heart",
    "liver",
    "gallbladder",
    "spleen",
    "stomach",
    "pancreas",
    "kidney_right",
    "kidney_left",
    "adrenal_right",
    "adrenal_left",
    "bladder",
    "prostate",
    "thyroid",
    "bowel",
    "colon",
    "hips",
    "sacrum",
    "glutes",
    "scapulae",
)

REFERENCE_HEIGHT_CM = 175.0
#: Axial extent of the scan below the vertex in the reference frame (mid-thigh).
SCAN_DEPTH_MM = 1150.0


def sample_body(rng: np.random.Generator, sex: str, height_cm: float, bmi: float) -> Body:
    """Draw a patient's body placement and organ jitter (always the same number of draws)."""
    s_z = height_cm / REFERENCE_HEIGHT_CM
    s_lat = s_z**0.8 * (1.0 + 0.04 * rng.standard_normal())
    fat_mm = float(np.clip(6.0 + 1.6 * (bmi - 20.0) + 2.0 * rng.standard_normal(), 4.0, 45.0))
    origin = np.array([rng.normal(0.0, 10.0), rng.normal(-10.0, 8.0), 0.0])
    offsets = rng.normal(0.0, 3.0, size=(len(JITTERED), 3))
    factors = np.clip(1.0 + 0.06 * rng.standard_normal(len(JITTERED)), 0.85, 1.15)
    jitter = {name: (offsets[i], float(factors[i])) for i, name in enumerate(JITTERED)}
    bladder_fill = float(np.clip(rng.lognormal(0.0, 0.15), 0.7, 1.4))
    weight = bmi * (height_cm / 100.0) ** 2
    return Body(height_cm, weight, sex, s_z, s_lat, fat_mm, origin, jitter, bladder_fill)


# ---------------------------------------------------------------------------------------
# reference anatomy (175 cm adult; x_ref > 0 is the patient's right)
_SPINE_D = np.array([180.0, 300.0, 330.0, 450.0, 600.0, 700.0, 790.0])
_SPINE_Y = np.array([-10.0, -20.0, -35.0, -60.0, -45.0, -30.0, -40.0])


def spine_y(d: float | np.ndarray) -> float | np.ndarray:
    """Reference y (mm) of the vertebral body centres at depth ``d`` below the vertex."""
    return np.interp(d, _SPINE_D, _SPINE_Y)


#: Levels (name, top depth, bottom depth, rx, ry) of the vertebral bodies.
def _vertebra_levels() -> list[tuple[str, float, float, float, float]]:
    levels = []
    for i, (d0, d1) in enumerate(_split(185.0, 330.0, 7)):
        levels.append((f"vertebrae_C{i + 1}", d0, d1, 10.0, 8.0))
    for i, (d0, d1) in enumerate(_split(330.0, 600.0, 12)):
        levels.append((f"vertebrae_T{i + 1}", d0, d1, 14.0 + 0.4 * i, 12.0 + 0.3 * i))
    for i, (d0, d1) in enumerate(_split(600.0, 790.0, 5)):
        levels.append((f"vertebrae_L{i + 1}", d0, d1, 21.0, 16.0))
    return levels


def _split(d0: float, d1: float, n: int) -> list[tuple[float, float]]:
    edges = np.linspace(d0, d1, n + 1)
    return list(zip(edges[:-1], edges[1:], strict=True))


VERTEBRA_LEVELS = _vertebra_levels()

# lean torso outline: depth, half-width, half-depth (reference mm)
_TORSO = np.array(
    [
        [300.0, 55.0, 50.0],
        [330.0, 140.0, 85.0],
        [360.0, 140.0, 95.0],
        [450.0, 135.0, 100.0],
        [560.0, 130.0, 95.0],
        [650.0, 125.0, 90.0],
        [760.0, 125.0, 85.0],
        [820.0, 140.0, 85.0],
        [900.0, 140.0, 90.0],
        [960.0, 115.0, 70.0],
    ]
)
# rib k (1-12): half-width and half-depth of its arc
_RIB_A = [70, 95, 110, 118, 122, 124, 125, 125, 124, 122, 118, 112]
_RIB_B = [55, 70, 80, 85, 88, 90, 90, 88, 86, 84, 80, 75]
_RIB_END_DEG = [75, 75, 75, 75, 75, 75, 72, 55, 50, 45, 20, -10]

#: Lugano nodal regions: reference centre (x_ref, y_ref, d) and jitter sd (mm).
NODAL_ANCHORS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cervical_right": ((42.0, 5.0, 260.0), (6.0, 8.0, 22.0)),
    "cervical_left": ((-42.0, 5.0, 260.0), (6.0, 8.0, 22.0)),
    "supraclavicular_right": ((55.0, 15.0, 318.0), (8.0, 6.0, 6.0)),
    "supraclavicular_left": ((-55.0, 15.0, 318.0), (8.0, 6.0, 6.0)),
    "axillary_right": ((120.0, -15.0, 380.0), (6.0, 12.0, 18.0)),
    "axillary_left": ((-120.0, -15.0, 380.0), (6.0, 12.0, 18.0)),
    "mediastinal": ((0.0, 50.0, 400.0), (10.0, 8.0, 25.0)),
    "hilar_right": ((36.0, -8.0, 425.0), (4.0, 6.0, 10.0)),
    "hilar_left": ((-36.0, -8.0, 425.0), (4.0, 6.0, 10.0)),
    "para_aortic": ((-5.0, -5.0, 700.0), (15.0, 6.0, 40.0)),  # y set from the spine below
    "mesenteric": ((0.0, 45.0, 735.0), (30.0, 12.0, 25.0)),
    "iliac_right": ((58.0, 0.0, 850.0), (6.0, 8.0, 18.0)),
    "iliac_left": ((-58.0, 0.0, 850.0), (6.0, 8.0, 18.0)),
    "inguinal_right": ((85.0, 50.0, 955.0), (8.0, 6.0, 10.0)),
    "inguinal_left": ((-85.0, 50.0, 955.0), (8.0, 6.0, 10.0)),
}


def _rot_z(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_x(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def organ_ellipsoids(body: Body) -> dict[str, Ellipsoid]:
    """The organs used to place extranodal lesions and to paint the phantom (world mm)."""
    w, r = body.world, body.radii
    e = {}

    def ell(name, c, rad, organ, rot=None, keep=None):
        e[name] = Ellipsoid(w(*c, organ=organ), r(*rad, organ=organ), rot, keep)

    ell("brain", (0, 5, 95), (64, 80, 62), "brain")
    ell("lung_right", (68, -8, 450), (72, 88, 120), "lung_right")
    ell("lung_left", (-70, -8, 455), (66, 88, 115), "lung_left")
    ell("heart", (-20, 30, 490), (62, 52, 58), "heart")
    ell("liver", (45, 10, 600), (105, 90, 85), "liver")
    ell("gallbladder", (55, 65, 655), (16, 15, 32), "gallbladder")
    sf = body.spleen_factor
    ell("spleen", (-95, -45, 600), (28 * sf, 45 * sf, 55 * sf), "spleen")
    ell("stomach", (-60, 40, 610), (45, 35, 55), "stomach")
    ell("kidney_right", (72, -45, 700), (30, 28, 55), "kidney_right")
    ell("kidney_left", (-72, -45, 685), (30, 28, 55), "kidney_left")
    ell("adrenal_gland_right", (50, -30, 630), (9, 6, 15), "adrenal_right")
    ell("adrenal_gland_left", (-50, -30, 625), (9, 6, 15), "adrenal_left")
    f = body.bladder_fill
    ell("urinary_bladder", (0, 45, 905), (38 * f, 32 * f, 28 * f), "bladder")
    ell("hip_right", (85, -25, 820), (55, 12, 55), "hips", _rot_z(30))
    ell("hip_left", (-85, -25, 820), (55, 12, 55), "hips", _rot_z(-30))
    ell("sacrum", (0, -70, 835), (45, 18, 45), "sacrum", _rot_x(30))
    return e


def vertebra_bodies(body: Body) -> dict[str, Ellipsoid]:
    """Vertebral bodies as short ellipsoids (for painting and for marrow lesions)."""
    out = {}
    for name, d0, d1, rx, ry in VERTEBRA_LEVELS:
        dm = 0.5 * (d0 + d1)
        c = body.world(0.0, float(spine_y(dm)), dm)
        out[name] = Ellipsoid(c, body.radii(rx, ry, 0.42 * (d1 - d0)))
    return out


def _poly(body: Body, pts, organ=None) -> np.ndarray:
    return np.array([body.world(*p, organ=organ) for p in pts])


def build_shapes(body: Body) -> list[tuple[Shape, int]]:
    """The phantom as an ordered list of (shape, label code); later entries win."""
    w, s, sz = body.world, body.s_lat, body.s_z
    out: list[tuple[Shape, int]] = []
    fat = body.fat_mm

    # --- body outline: fat layer, lean body (muscle), trunk cavity ------------------
    d = _TORSO[:, 0]
    z = body.z_of(0.0) - sz * d  # decreasing with d; Profile needs increasing z
    belly = 1.0 + 0.6 * np.exp(-(((d - 760.0) / 120.0) ** 2))
    xc, yc = float(body.origin[0]), float(body.origin[1])
    torso_a, torso_b = s * _TORSO[:, 1], s * _TORSO[:, 2]
    order = np.argsort(z)
    z_lo_ext = np.r_[z[order][0] - 60.0 * sz, z[order]]  # torso continues into the pelvis
    a_ext = np.r_[torso_a[order][0], torso_a[order]]
    b_ext = np.r_[torso_b[order][0], torso_b[order]]
    belly_ext = np.r_[belly[order][0], belly[order]]
    outer = Profile(z_lo_ext, a_ext + fat * belly_ext, b_ext + fat * belly_ext, xc, yc)
    lean = Profile(z_lo_ext, a_ext, b_ext, xc, yc)
    cavity = Profile(z_lo_ext, np.maximum(a_ext - 15.0, 5.0), np.maximum(b_ext - 15.0, 5.0), xc, yc)
    head = (0.0, 5.0, 110.0)
    limbs_lean = [
        Capsule(_poly(body, [(0, -5, 200), (0, -5, 310)]), 50.0 * s),  # neck
        Capsule(_poly(body, [(170, -10, 345), (185, 0, 620), (175, 15, 850)]), 36.0 * s),
        Capsule(_poly(body, [(-170, -10, 345), (-185, 0, 620), (-175, 15, 850)]), 36.0 * s),
        Capsule(_poly(body, [(85, 0, 900), (95, 0, 1250)]), 72.0 * s),
        Capsule(_poly(body, [(-85, 0, 900), (-95, 0, 1250)]), 72.0 * s),
    ]
    head_lean = Ellipsoid(w(*head), np.array([72.0 * s, 90.0 * s, 112.0 * sz]))
    limb_fat = 0.6 * fat
    out.append((Ellipsoid(w(*head), head_lean.radii + 4.0), FAT))
    out.append((outer, FAT))
    for c in limbs_lean:
        out.append((Capsule(c.points, c.radius + limb_fat), FAT))
    out.append((head_lean, MUSCLE))
    out.append((lean, MUSCLE))
    out.extend((c, MUSCLE) for c in limbs_lean)
    trunk_top, trunk_bottom = body.z_of(335.0), body.z_of(950.0)
    out.append((_clip_z(cavity, trunk_bottom, trunk_top), VISCERAL))

    # --- thorax ----------------------------------------------------------------------
    org = organ_ellipsoids(body)
    lr, ll = org["lung_right"], org["lung_left"]
    xr_min = w(20.0, 0, 0)[0]
    xl_max = w(-20.0, 0, 0)[0]
    zc_r, zc_l = float(lr.center[2]), float(ll.center[2])
    yc_r, yc_l = float(lr.center[1]), float(ll.center[1])
    apex_r, apex_l = body.z_of(330.0), body.z_of(335.0)
    # oblique fissure: lower lobe where (depth below centre) - 0.9 * (y - yc) > 0
    # (posterior-superior to anterior-inferior); right horizontal fissure at d = 445.
    z_hf = body.z_of(445.0)

    def lower(zc, ycc):
        return lambda X, Y, Z: (zc - Z) - 0.9 * (Y - ycc) > 0

    def right_side(X, Y, Z):
        return (X >= xr_min) & (Z <= apex_r)

    def left_side(X, Y, Z):
        return (X <= xl_max) & (Z <= apex_l)

    lo_r, lo_l = lower(zc_r, yc_r), lower(zc_l, yc_l)
    out.append((Ellipsoid(lr.center, lr.radii, keep=right_side), CODE["lung_upper_lobe_right"]))
    out.append(
        (
            Ellipsoid(lr.center, lr.radii, keep=lambda X, Y, Z: right_side(X, Y, Z) & (Z < z_hf)),
            CODE["lung_middle_lobe_right"],
        )
    )
    out.append(
        (
            Ellipsoid(
                lr.center, lr.radii, keep=lambda X, Y, Z: right_side(X, Y, Z) & lo_r(X, Y, Z)
            ),
            CODE["lung_lower_lobe_right"],
        )
    )
    out.append((Ellipsoid(ll.center, ll.radii, keep=left_side), CODE["lung_upper_lobe_left"]))
    out.append(
        (
            Ellipsoid(ll.center, ll.radii, keep=lambda X, Y, Z: left_side(X, Y, Z) & lo_l(X, Y, Z)),
            CODE["lung_lower_lobe_left"],
        )
    )
    heart = org["heart"]
    out.append((heart, MYOCARDIUM))
    out.append((Ellipsoid(heart.center, heart.radii - 10.0 * s), CODE["heart"]))
    ys = spine_y
    aorta = [(5, 30, 445), (5, 30, 410), (-3, 18, 378), (-18, -8, 380)]
    aorta += [(-22, float(ys(dd)) + 30, dd) for dd in (430, 500, 570, 640, 710, 780)]
    out.append((Capsule(_poly(body, aorta), 12.5 * s), CODE["aorta"]))
    ivc = [(18, float(ys(dd)) + 32, dd) for dd in (790, 730, 680)]
    ivc += [(25, -2, 600), (22, 12, 530)]
    out.append((Capsule(_poly(body, ivc), 10.5 * s), CODE["inferior_vena_cava"]))
    out.append(
        (Capsule(_poly(body, [(28, 25, 360), (25, 28, 445)]), 8.5 * s), CODE["superior_vena_cava"])
    )
    for side, sign in (("right", 1.0), ("left", -1.0)):
        pts = [(sign * 22, 12, 235), (sign * 22, 12, 330), (sign * 10, 20, 365)]
        out.append((Capsule(_poly(body, pts), 4.0 * s), CODE[f"common_carotid_artery_{side}"]))
        pts = [(-10, float(ys(780)) + 28, 785), (sign * 60, -5, 860), (sign * 75, 15, 910)]
        out.append((Capsule(_poly(body, pts), 6.0 * s), CODE[f"iliac_artery_{side}"]))
    out.append((Capsule(_poly(body, [(0, 18, 235), (0, 5, 380)]), 9.0 * s), CODE["trachea"]))
    eso = [
        (0, -5, 250),
        (3, -12, 330),
        (-2, -22, 400),
        (-12, -25, 480),
        (-30, 5, 560),
        (-45, 30, 590),
    ]
    out.append((Capsule(_poly(body, eso), 7.5 * s), CODE["esophagus"]))

    # --- abdomen and pelvis -------------------------------------------------------------
    liver = org["liver"]
    x_liver_min = w(-70.0, 0, 0)[0]
    out.append(
        (Ellipsoid(liver.center, liver.radii, keep=lambda X, Y, Z: X >= x_liver_min), CODE["liver"])
    )
    out.append((org["gallbladder"], CODE["gallbladder"]))
    out.append((org["spleen"], CODE["spleen"]))
    stomach = org["stomach"]
    out.append((stomach, CODE["stomach"]))
    y_gas = float(stomach.center[1] + 0.45 * stomach.radii[1])
    z_gas = float(stomach.center[2] + 0.1 * stomach.radii[2])
    out.append(
        (
            Ellipsoid(
                stomach.center, stomach.radii * 0.9, keep=lambda X, Y, Z: (Y > y_gas) & (Z > z_gas)
            ),
            GASTRIC_GAS,
        )
    )
    panc = [(28, 25, 665), (0, 15, 655), (-45, 0, 640), (-85, -25, 615)]
    out.append((Capsule(_poly(body, panc, "pancreas"), 11.0 * s), CODE["pancreas"]))
    duo = [(35, 35, 625), (55, 30, 650), (50, 25, 690), (20, 20, 700), (-5, 20, 690)]
    out.append((Capsule(_poly(body, duo, "pancreas"), 10.0 * s), CODE["duodenum"]))
    for side, code in (("right", RENAL_PELVIS_R), ("left", RENAL_PELVIS_L)):
        k = org[f"kidney_{side}"]
        out.append((k, CODE[f"kidney_{side}"]))
        pelvis_c = k.center + np.array([-np.sign(k.center[0] - xc) * 0.35 * k.radii[0], 0, 0])
        out.append((Ellipsoid(pelvis_c, k.radii * np.array([0.3, 0.3, 0.35])), code))
        out.append((org[f"adrenal_gland_{side}"], CODE[f"adrenal_gland_{side}"]))
    out.append((Capsule(_poly(body, _small_bowel_path(), "bowel"), 12.0 * s), CODE["small_bowel"]))
    colon = [
        (90, 20, 820),
        (95, 25, 760),
        (90, 40, 700),
        (40, 60, 690),
        (-40, 60, 690),
        (-90, 30, 690),
        (-95, 10, 760),
        (-90, 0, 830),
        (-45, -20, 870),
        (0, -45, 900),
        (0, -50, 950),
    ]
    out.append((Capsule(_poly(body, colon, "colon"), 17.0 * s), CODE["colon"]))
    out.append((org["urinary_bladder"], CODE["urinary_bladder"]))
    if body.sex == "M":
        out.append(
            (
                Ellipsoid(w(0, 25, 945, "prostate"), body.radii(17, 14, 15, "prostate")),
                CODE["prostate"],
            )
        )

    # --- muscles --------------------------------------------------------------------------
    for side, sign in (("right", 1.0), ("left", -1.0)):
        pts = [
            (sign * 32, float(ys(640)) + 5, 640),
            (sign * 55, float(ys(760)) + 10, 780),
            (sign * 70, 10, 870),
            (sign * 80, 35, 935),
        ]
        out.append((Capsule(_poly(body, pts), 19.0 * s), CODE[f"iliopsoas_{side}"]))
        pts = [(sign * 30, float(ys(dd)) - 42, dd) for dd in (335, 450, 600, 700, 800)]
        out.append((Capsule(_poly(body, pts), 20.0 * s), CODE[f"autochthon_{side}"]))
        out.append(
            (
                Ellipsoid(w(sign * 80, -95, 900, "glutes"), body.radii(60, 32, 75, "glutes")),
                CODE[f"gluteus_maximus_{side}"],
            )
        )
        out.append(
            (
                Ellipsoid(w(sign * 110, -45, 830, "glutes"), body.radii(35, 28, 45, "glutes")),
                CODE[f"gluteus_medius_{side}"],
            )
        )

    # --- skeleton -------------------------------------------------------------------------
    for name, d0, d1, rx, ry in VERTEBRA_LEVELS:
        dm = 0.5 * (d0 + d1)
        yb = float(ys(dm))
        h = 0.42 * (d1 - d0)
        code = CODE[name]
        out.append((Ellipsoid(w(0.0, yb, dm), body.radii(rx, ry, h)), code))
        canal_y = w(0.0, yb - ry - 9.0, dm)[1]
        canal_r = 8.0 * s

        def no_canal(X, Y, Z, cy=canal_y, cx=xc, cr=canal_r):
            return (X - cx) ** 2 + (Y - cy) ** 2 > cr**2

        out.append(
            (
                Ellipsoid(w(0.0, yb - ry - 14.0, dm), body.radii(rx + 6.0, 12.0, h), keep=no_canal),
                code,
            )
        )
    out.append(
        (
            Ellipsoid(w(0, -55, 800, "sacrum"), body.radii(24, 16, 11, "sacrum")),
            CODE["vertebrae_S1"],
        )
    )
    out.append((org["sacrum"], CODE["sacrum"]))
    for k in range(1, 13):
        d_k = 0.5 * sum(VERTEBRA_LEVELS[6 + k][1:3])
        a, b = _RIB_A[k - 1], _RIB_B[k - 1]
        phis = np.deg2rad(np.linspace(-75.0, _RIB_END_DEG[k - 1], 8))
        drop = 45.0 * (phis - phis[0]) / np.deg2rad(150.0)
        for side, sign in (("right", 1.0), ("left", -1.0)):
            pts = [
                (sign * a * np.cos(p), -5.0 + b * np.sin(p), d_k + dd)
                for p, dd in zip(phis, drop, strict=True)
            ]
            out.append((Capsule(_poly(body, pts), 5.0 * s), CODE[f"rib_{side}_{k}"]))
            if k <= 7:
                end = pts[-1]
                st = (sign * 14.0, 80.0, 345.0 + 25.0 * (k - 1))
                out.append((Capsule(_poly(body, [end, st]), 4.5 * s), CODE["costal_cartilages"]))
    out.append((Capsule(_poly(body, [(0, 78, 340), (0, 88, 520)]), 11.0 * s), CODE["sternum"]))
    for side, sign in (("right", 1.0), ("left", -1.0)):
        pts = [(sign * 18, 60, 335), (sign * 80, 55, 330), (sign * 150, -5, 328)]
        out.append((Capsule(_poly(body, pts), 7.5 * s), CODE[f"clavicula_{side}"]))
        out.append(
            (
                Ellipsoid(
                    w(sign * 95, -100, 400, "scapulae"),
                    body.radii(45, 9, 75, "scapulae"),
                    _rot_z(sign * 25),
                ),
                CODE[f"scapula_{side}"],
            )
        )
        out.append(
            (
                Capsule(_poly(body, [(sign * 168, -10, 350), (sign * 185, 0, 620)]), 12.0 * s),
                CODE[f"humerus_{side}"],
            )
        )
        out.append(
            (Ellipsoid(w(sign * 168, -10, 350), body.radii(22, 22, 22)), CODE[f"humerus_{side}"])
        )
        out.append((org[f"hip_{side}"], CODE[f"hip_{side}"]))
        out.append(
            (
                Ellipsoid(w(sign * 88, 5, 890, "hips"), body.radii(24, 24, 24, "hips")),
                CODE[f"hip_{side}"],
            )
        )
        for pts in (
            [(sign * 88, 5, 890), (sign * 50, 20, 935), (sign * 15, 40, 940)],
            [(sign * 88, 0, 890), (sign * 65, -25, 960)],
        ):
            out.append((Capsule(_poly(body, pts, "hips"), 11.0 * s), CODE[f"hip_{side}"]))
        out.append(
            (Ellipsoid(w(sign * 92, 5, 895, "hips"), body.radii(23, 23, 23)), CODE[f"femur_{side}"])
        )
        pts = [(sign * 92, 5, 895), (sign * 120, 0, 915), (sign * 105, 10, 1250)]
        out.append((Capsule(_poly(body, pts, "hips"), 14.0 * s), CODE[f"femur_{side}"]))
    cord = [(0.0, float(ys(dd)) - _ry_at(dd) - 9.0, dd) for dd in np.linspace(185, 620, 12)]
    out.append((Capsule(_poly(body, cord), 5.5 * s), CODE["spinal_cord"]))

    # --- head and neck ------------------------------------------------------------------
    brain = org["brain"]
    z_skull_base = body.z_of(165.0)
    out.append(
        (
            Ellipsoid(
                brain.center,
                brain.radii + np.array([8.0, 8.0, 8.0]) * s,
                keep=lambda X, Y, Z: Z >= z_skull_base,
            ),
            CODE["skull"],
        )
    )
    out.append((brain, CODE["brain"]))
    for sign in (1.0, -1.0):
        out.append(
            (
                Ellipsoid(w(sign * 18, 28, 295, "thyroid"), body.radii(9, 9, 20, "thyroid")),
                CODE["thyroid_gland"],
            )
        )
    return out


def _ry_at(d: float) -> float:
    for _, d0, d1, _, ry in VERTEBRA_LEVELS:
        if d0 <= d <= d1:
            return ry
    return 16.0


def _clip_z(p: Profile, z_lo: float, z_hi: float) -> Profile:
    zs = np.clip(p.z, z_lo, z_hi)
    keep = np.r_[True, np.diff(zs) > 0]
    return Profile(zs[keep], p.a[keep], p.b[keep], p.xc, p.yc)


def _small_bowel_path() -> list[tuple[float, float, float]]:
    pts = []
    for i, dd in enumerate((715.0, 745.0, 775.0, 805.0, 835.0)):
        xs = (-70.0, 70.0) if i % 2 == 0 else (70.0, -70.0)
        pts.append((xs[0], 30.0 + 10.0 * (i % 2), dd))
        pts.append((0.0, 55.0, dd + 5.0))
        pts.append((xs[1], 30.0 + 10.0 * ((i + 1) % 2), dd + 10.0))
    return pts


def small_bowel_points(body: Body) -> np.ndarray:
    """World points along the small-bowel and colon centre lines (for GI lesions)."""
    return _poly(body, _small_bowel_path(), "bowel")
