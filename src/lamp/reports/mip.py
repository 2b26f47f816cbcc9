"""PET maximum-intensity projections with lesion overlays (paper Fig. 2C).

The projections are shown as a nuclear-medicine reader expects: inverted grey scale,
SUV window 0 to about 10, coronal (seen from the front, the patient's right on the
viewer's left, radiological convention) and sagittal (anterior on the viewer's left)
side by side, head up, at the true millimetre aspect ratio whatever the voxel size.

Arrays enter in storage order with their affine (voxel index -> RAS+ world mm, as
`lamp.images.load_nifti` returns them); `ras_volume` reorders them to RAS (axes towards
the patient's right, anterior, superior) before projecting, so any storage orientation
gives the same picture.

`attention_mip_figure` colours each lesion's projection by its ABMLA attention score
(Eq. 5) and numbers the most attended lesions; `segmentation_overlay_figure` draws
reference against predicted lesions with the autoPET notion of a hit (a component
touched by at least one voxel of the other mask, 18-connectivity): true positive
predictions, false positive predictions and missed (false negative) reference lesions in
three colours.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from lamp.reports.figures import save_png

__all__ = [
    "SUV_WINDOW",
    "VIEWS",
    "MipViews",
    "ras_volume",
    "mip_views",
    "project_labels",
    "attention_mip_figure",
    "segmentation_overlay_figure",
]

#: Default SUV display window (g/ml) of the MIP.
SUV_WINDOW: tuple[float, float] = (0.0, 10.0)
#: The two projections: name -> the RAS axis projected away.
VIEWS: dict[str, int] = {"coronal": 1, "sagittal": 0}
_SEG_COLOURS = {
    "reference": "#1f77b4",
    "prediction": "#ff7f0e",
    "tp": "#2ca02c",
    "fp": "#d62728",
    "fn": "#9467bd",
}


def ras_volume(volume: ArrayLike, affine: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Reorder a volume to RAS axis order; returns (array, voxel sizes in mm (3,)).

    Parameters
    ----------
    volume : array_like, shape (i, j, k)
    affine : array_like, shape (4, 4)
        Voxel index -> RAS+ world mm.
    """
    import nibabel as nib

    vol = np.asarray(volume)
    aff = np.asarray(affine, dtype=np.float64)
    if vol.ndim != 3 or aff.shape != (4, 4):
        raise ValueError(f"expected a 3D volume and a 4x4 affine, got {vol.shape}, {aff.shape}")
    ornt = nib.orientations.io_orientation(aff)
    zooms = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
    out = nib.orientations.apply_orientation(vol, ornt)
    sizes = np.empty(3)
    sizes[ornt[:, 0].astype(int)] = zooms
    return out, sizes


def _display(projection: np.ndarray) -> np.ndarray:
    # (horizontal RAS axis, k) -> rows from superior down, columns from the patient's
    # right (coronal) or anterior (sagittal) to the other side
    return projection[::-1, ::-1].T


@dataclass(frozen=True)
class MipViews:
    """Display-ready projections of one volume.

    Attributes
    ----------
    images : dict
        View name -> 2D array (rows superior to inferior).
    extents : dict
        View name -> (width_mm, height_mm) of the image.
    """

    images: dict[str, np.ndarray]
    extents: dict[str, tuple[float, float]]


def mip_views(suv: ArrayLike, affine: ArrayLike) -> MipViews:
    """Coronal and sagittal maximum-intensity projections of a PET (SUV) volume."""
    vol, sizes = ras_volume(suv, affine)
    images, extents = {}, {}
    for name, axis in VIEWS.items():
        proj = _display(np.asarray(vol, dtype=np.float32).max(axis=axis))
        horizontal = 1 - axis  # the RAS axis left on screen: x for coronal, y for sagittal
        images[name] = proj
        extents[name] = (proj.shape[1] * sizes[horizontal], proj.shape[0] * sizes[2])
    return MipViews(images, extents)


def project_labels(labels: ArrayLike, affine: ArrayLike) -> dict[str, dict[int, np.ndarray]]:
    """Each label's projected footprint per view (display orientation, boolean).

    Returns
    -------
    dict
        View name -> {label id: bool array of the view's image shape}, label ids > 0.
    """
    vol, _ = ras_volume(labels, affine)
    vol = np.asarray(vol).astype(np.int64, copy=False)
    out: dict[str, dict[int, np.ndarray]] = {name: {} for name in VIEWS}
    if vol.max(initial=0) <= 0:
        return out
    for index, box in enumerate(ndimage.find_objects(np.clip(vol, 0, None)), start=1):
        if box is None:
            continue
        inside = vol[box] == index
        for name, axis in VIEWS.items():
            full = np.zeros(np.delete(vol.shape, axis), dtype=bool)
            keep = [s for a, s in enumerate(box) if a != axis]
            full[tuple(keep)] = inside.any(axis=axis)
            out[name][index] = _display(full)
    return out


def _pixel_grid(shape: tuple[int, int], extent: tuple[float, float]):
    rows, cols = shape
    x = (np.arange(cols) + 0.5) * extent[0] / cols
    y = (np.arange(rows) + 0.5) * extent[1] / rows
    return x, y


def _panel_inches(views: MipViews, height: float, max_width: float = 6.0) -> list[float]:
    """Widths (inches) of the coronal and sagittal panels at true aspect for ``height``."""
    widths = [height * views.extents[n][0] / views.extents[n][1] for n in VIEWS]
    scale = min(1.0, max_width / max(widths))
    return [w * scale for w in widths]


def _mip_axes(fig, rects, views: MipViews, window: tuple[float, float]):
    axes = {}
    for rect, name in zip(rects, VIEWS, strict=True):
        ax = fig.add_axes(rect)
        w, h = views.extents[name]
        ax.imshow(
            views.images[name],
            cmap="gray_r",
            vmin=window[0],
            vmax=window[1],
            extent=(0.0, w, h, 0.0),
            interpolation="bilinear",
        )
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name.capitalize(), fontsize=10)
        axes[name] = ax
    cor = axes["coronal"]
    w, h = views.extents["coronal"]
    cor.text(0.01 * w, 0.99 * h, "R", fontsize=9, color="#555555", va="bottom")
    cor.text(0.99 * w, 0.99 * h, "L", fontsize=9, color="#555555", va="bottom", ha="right")
    sag = axes["sagittal"]
    w, h = views.extents["sagittal"]
    sag.text(0.01 * w, 0.99 * h, "A", fontsize=9, color="#555555", va="bottom")
    sag.text(0.99 * w, 0.99 * h, "P", fontsize=9, color="#555555", va="bottom", ha="right")
    return axes


def attention_mip_figure(
    path: str | Path,
    suv: ArrayLike,
    affine: ArrayLike,
    instances: ArrayLike,
    attention: Mapping[int, float],
    labels: Mapping[int, str] | None = None,
    title: str = "",
    n_labels: int = 5,
    window: tuple[float, float] = SUV_WINDOW,
) -> Path:
    """PET MIP with each lesion filled in the colour of its ABMLA attention (Fig. 2C).

    Parameters
    ----------
    path : str or Path
        The PNG to write (atomically, deterministic bytes).
    suv : array_like, shape (i, j, k)
        PET in SUVbw (g/ml), storage order.
    affine : array_like, shape (4, 4)
        Voxel index -> RAS+ world mm of ``suv`` (and ``instances``).
    instances : array_like, shape (i, j, k), int
        Lesion instance ids (0 = background) on the PET grid.
    attention : mapping of int to float
        Lesion id -> attention score a_j (Eq. 5; they sum to 1 over a patient's lesions).
        Lesions of the map without a score are outlined but not filled.
    labels : mapping of int to str, optional
        Text for the most attended lesions (e.g. "L3 spleen -> vertebrae_L"), listed
        under the projections with the number drawn on the lesion; default "L<id>".
    title : str
    n_labels : int, default 5
        How many of the most attended lesions are numbered.
    window : (float, float)
        SUV display window.

    Returns
    -------
    Path of the written PNG.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    views = mip_views(suv, affine)
    footprints = project_labels(instances, affine)
    scores = {int(k): float(v) for k, v in attention.items()}
    top = max(scores.values(), default=0.0)
    norm = Normalize(0.0, top if top > 0 else 1.0)
    cmap = colormaps["plasma"]
    ranked = sorted(scores, key=lambda j: (-scores[j], j))[: max(0, n_labels)]
    labels = dict(labels or {})

    # panels at their true aspect, placed in inches: key text below, colour bar right
    height, key_h, top_h = 5.6, 1.3, 0.6
    wc, ws = _panel_inches(views, height)
    fw = max(7.5, 0.3 + wc + 0.3 + ws + 0.3 + 0.2 + 1.0)
    fh = key_h + 0.1 + height + top_h
    fig = Figure(figsize=(fw, fh), dpi=100)

    def rect(x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
        return (x / fw, y / fh, w / fw, h / fh)

    y0 = key_h + 0.1
    axes = _mip_axes(
        fig, [rect(0.3, y0, wc, height), rect(0.6 + wc, y0, ws, height)], views, window
    )
    for name, ax in axes.items():
        shape = views.images[name].shape
        x, y = _pixel_grid(shape, views.extents[name])
        value = np.full(shape, np.nan)
        union = np.zeros(shape, dtype=bool)
        for j, fp in footprints[name].items():
            union |= fp
            if j in scores:
                value[fp] = np.fmax(value[fp], scores[j])
        rgba = cmap(norm(np.nan_to_num(value, nan=0.0)))
        rgba[..., 3] = np.where(np.isnan(value), 0.0, 0.75)
        w, h = views.extents[name]
        ax.imshow(rgba, extent=(0.0, w, h, 0.0), interpolation="nearest")
        if union.any():
            ax.contour(x, y, union.astype(float), levels=[0.5], colors="#222222", linewidths=0.5)
        for rank, j in enumerate(ranked, start=1):
            fp = footprints[name].get(j)
            if fp is None or not fp.any():
                continue
            rr, cc = np.nonzero(fp)
            ax.annotate(
                str(rank),
                (x[int(np.round(cc.mean()))], y[int(np.round(rr.mean()))]),
                xytext=(6, 6),
                textcoords="offset points",
                fontsize=8,
                fontweight="bold",
                color="#111111",
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "#444444", "lw": 0.5},
                arrowprops={"arrowstyle": "-", "lw": 0.6, "color": "#333333"},
            )
    cax = fig.add_axes(rect(0.9 + wc + ws, y0, 0.2, height))
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax, label="ABMLA attention")
    key = fig.add_axes(rect(0.3, 0.05, fw - 0.6, key_h - 0.05))
    key.axis("off")
    if ranked:
        lines = [
            f"{rank}. {labels.get(j, f'L{j}')}  (attention {scores[j]:.3f})"
            for rank, j in enumerate(ranked, start=1)
        ]
    else:
        lines = ["no lesion with an attention score"]
    key.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", fontsize=8.5, family="monospace")
    if title:
        fig.suptitle(title, fontsize=11)
    return save_png(fig, path)


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    import cc3d

    from lamp.segmentation.instances import AUTOPET_CONNECTIVITY

    labels = cc3d.connected_components(mask.astype(np.uint8), connectivity=AUTOPET_CONNECTIVITY)
    return labels, int(labels.max())


def segmentation_overlay_figure(
    path: str | Path,
    suv: ArrayLike,
    affine: ArrayLike,
    reference: ArrayLike,
    prediction: ArrayLike,
    title: str = "",
    window: tuple[float, float] = SUV_WINDOW,
) -> tuple[Path, dict[str, int]]:
    """PET MIP with reference and predicted lesions: TP, FP and FN visible.

    Components are 18-connected (autoPET); a predicted component is a true positive
    when it overlaps the reference by at least one voxel, else a false positive; a
    reference component without any predicted voxel is a false negative (missed).
    Fills: TP green, FP red, FN purple; outlines: reference blue, prediction orange.

    Parameters
    ----------
    path : str or Path
        The PNG to write.
    suv : array_like, shape (i, j, k)
        PET in SUVbw, storage order; ``reference`` and ``prediction`` on the same grid.
    affine : array_like, shape (4, 4)
    reference, prediction : array_like, shape (i, j, k)
        Lesion masks or instance maps (> 0 = lesion).
    title : str
    window : (float, float)

    Returns
    -------
    Path
        The PNG written.
    dict
        ``{"tp": n, "fp": n, "fn": n, "n_ref": n, "n_pred": n}`` (component counts).
    """
    from matplotlib.colors import to_rgba
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ref = np.asarray(reference) > 0
    pred = np.asarray(prediction) > 0
    if ref.shape != pred.shape or ref.shape != np.shape(suv):
        raise ValueError(
            f"PET {np.shape(suv)}, reference {ref.shape} and prediction {pred.shape}: "
            "expected one grid"
        )
    ref_cc, n_ref = _components(ref)
    pred_cc, n_pred = _components(pred)
    hit_pred = set(np.unique(pred_cc[ref & pred]).tolist()) - {0}
    hit_ref = set(np.unique(ref_cc[ref & pred]).tolist()) - {0}
    # class map: 1 = TP prediction, 2 = FP prediction, 3 = FN reference lesion
    classes = np.zeros(ref.shape, dtype=np.uint8)
    if n_pred:
        is_tp = np.isin(pred_cc, list(hit_pred)) & pred
        classes[is_tp] = 1
        classes[pred & ~is_tp] = 2
    if n_ref:
        classes[(ref_cc > 0) & ~np.isin(ref_cc, list(hit_ref)) & (classes == 0)] = 3
    counts = {
        "tp": len(hit_pred),
        "fp": n_pred - len(hit_pred),
        "fn": n_ref - len(hit_ref),
        "n_ref": n_ref,
        "n_pred": n_pred,
    }
    views = mip_views(suv, affine)
    class_views = project_labels(classes, affine)
    ref_views = project_labels(ref.astype(np.uint8), affine)
    pred_views = project_labels(pred.astype(np.uint8), affine)

    height, legend_h, top_h = 5.2, 0.8, 0.6
    wc, ws = _panel_inches(views, height)
    fw = max(6.5, 0.2 + wc + 0.3 + ws + 0.2)
    fh = legend_h + height + top_h
    fig = Figure(figsize=(fw, fh), dpi=100)
    x0 = (fw - (wc + 0.3 + ws)) / 2.0
    rects = [
        (x0 / fw, legend_h / fh, wc / fw, height / fh),
        ((x0 + wc + 0.3) / fw, legend_h / fh, ws / fw, height / fh),
    ]
    axes = _mip_axes(fig, rects, views, window)
    fills = {1: _SEG_COLOURS["tp"], 2: _SEG_COLOURS["fp"], 3: _SEG_COLOURS["fn"]}

    for name, ax in axes.items():
        shape = views.images[name].shape
        w, h = views.extents[name]
        x, y = _pixel_grid(shape, views.extents[name])
        rgba = np.zeros((*shape, 4))
        # draw FN first, then FP, then TP on top (a TP hides what lies behind it)
        for c in (3, 2, 1):
            fp = class_views[name].get(c)
            if fp is not None:
                rgba[fp] = to_rgba(fills[c], 0.55)
        ax.imshow(rgba, extent=(0.0, w, h, 0.0), interpolation="nearest")
        for src, colour in ((ref_views, "reference"), (pred_views, "prediction")):
            fp = src[name].get(1)
            if fp is not None and fp.any():
                ax.contour(
                    x, y, fp.astype(float), levels=[0.5], colors=_SEG_COLOURS[colour],
                    linewidths=1.0, linestyles="solid" if colour == "reference" else "dashed",
                )  # fmt: skip
    handles = [
        Line2D([], [], color=_SEG_COLOURS["reference"], lw=1.2, label="reference outline"),
        Line2D([], [], color=_SEG_COLOURS["prediction"], lw=1.2, ls="--", label="prediction"),
        Patch(color=_SEG_COLOURS["tp"], alpha=0.6, label=f"true positive ({counts['tp']})"),
        Patch(color=_SEG_COLOURS["fp"], alpha=0.6, label=f"false positive ({counts['fp']})"),
        Patch(color=_SEG_COLOURS["fn"], alpha=0.6, label=f"missed lesion ({counts['fn']})"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_png(fig, path), counts
