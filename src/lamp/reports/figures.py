"""Figures of the paper drawn with matplotlib's object API (no pyplot, no display).

`km_figure` draws the Kaplan–Meier curves of the high- and low-risk groups with censor
ticks, the log-rank p-value and a numbers-at-risk table under the plot, as in the
paper's Fig. 2A-B. `organ_tsne` and `tsne_figure` draw the t-SNE map of the organ
features coloured by organ (Fig. 2D); `risk_histogram_figure` and
`survival_curve_figure` are the per-patient report's views of the model. The lesion
attention MIP (Fig. 2C) and the segmentation overlays are in `lamp.reports.mip`.

Every PNG is deterministic (`save_png`): matplotlib's Agg canvas with the "Software"
metadata removed (PNG files carry no timestamp otherwise), written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from lamp.cohort import atomic_output
from lamp.evaluation.survival import kaplan_meier, number_at_risk

__all__ = [
    "AT_RISK_MONTHS",
    "ORGAN_CATEGORIES",
    "KEY_ORGANS",
    "save_png",
    "km_figure",
    "format_p",
    "organ_category",
    "organ_feature_points",
    "organ_tsne",
    "tsne_figure",
    "risk_histogram_figure",
    "survival_curve_figure",
]

AT_RISK_MONTHS: tuple[float, ...] = (0.0, 12.0, 24.0, 36.0, 48.0, 60.0)
_COLOURS = {"High risk": "#c0392b", "Low risk": "#2471a3"}


def format_p(p: float) -> str:
    """A p-value as printed on KM plots: ``p = 0.012``, ``p < 0.001``, ``p = n/a``."""
    if p is None or not np.isfinite(p):
        return "p = n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def km_figure(
    path: str | Path,
    groups: dict[str, tuple[ArrayLike, ArrayLike]],
    title: str,
    p_value: float | None = None,
    at_risk_months: Sequence[float] = AT_RISK_MONTHS,
    xlabel: str = "Time (months)",
    ylabel: str = "Survival probability",
) -> Path:
    """Kaplan–Meier curves with censor ticks and a numbers-at-risk table; writes a PNG.

    Parameters
    ----------
    path : str or Path
        The PNG to write (atomically).
    groups : dict
        ``{name: (times, events)}`` in legend order, e.g. ``{"High risk": ..., "Low
        risk": ...}``; times in months, events 1 = event. An empty group is drawn as
        absent (named in the legend with n = 0).
    title : str
    p_value : float, optional
        Log-rank p-value, shown in the legend title.
    at_risk_months : sequence of float
        Times of the numbers-at-risk table (default 0, 12, ..., 60 months).

    Returns
    -------
    Path of the written PNG.
    """
    from matplotlib.figure import Figure  # matplotlib is imported only when drawing

    path = Path(path)
    ticks = np.asarray(at_risk_months, dtype=np.float64)
    fig = Figure(figsize=(6.0, 5.2), dpi=120)
    # fixed margins rather than bbox_inches="tight", which draws the figure twice
    grid = fig.add_gridspec(
        2, 1, height_ratios=(4.0, 1.15), hspace=0.42, left=0.17, right=0.97, top=0.94, bottom=0.04
    )
    ax = fig.add_subplot(grid[0])
    tab = fig.add_subplot(grid[1], sharex=ax)
    t_max = 0.0
    names = list(groups)
    for i, name in enumerate(names):
        t = np.asarray(groups[name][0], dtype=np.float64)
        e = np.asarray(groups[name][1]).astype(bool)
        colour = _COLOURS.get(name, f"C{i}")
        if t.size == 0:
            ax.plot([], [], color=colour, label=f"{name} (n = 0)")
            continue
        t_max = max(t_max, float(t.max()))
        km = kaplan_meier(t, e)
        x = np.concatenate([[0.0], km.time])
        y = np.concatenate([[1.0], km.survival])
        ax.step(x, y, where="post", color=colour, lw=1.8, label=f"{name} (n = {t.size})")
        cens = t[~e]
        if cens.size:
            ax.plot(cens, km(cens), ls="none", marker="|", ms=8, mew=1.3, color=colour)
    # the plot spans the at-risk table's horizon (the data beyond it still count in the
    # log-rank test); a small left margin keeps the first counts clear of the axis labels
    x_hi = float(ticks.max()) if ticks.size and ticks.max() > 0 else max(t_max, 1.0)
    ax.set_xlim(-0.04 * x_hi, 1.03 * x_hi)
    ax.set_ylim(0.0, 1.03)
    ax.set_ylabel(ylabel)
    ax.set_xticks(ticks)
    ax.tick_params(labelbottom=True)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.25)
    ax.set_title(title)
    legend_title = "log-rank " + format_p(p_value) if p_value is not None else None
    ax.legend(loc="lower left", title=legend_title, frameon=False)

    # numbers at risk: one text row per group, aligned with the time ticks
    tab.set_ylim(-0.5, len(names) - 0.5)
    tab.set_yticks(range(len(names)), labels=list(reversed(names)))
    tab.tick_params(axis="x", labelbottom=False, length=0)
    tab.tick_params(axis="y", length=0, pad=10)
    for side in ("top", "right", "bottom", "left"):
        tab.spines[side].set_visible(False)
    tab.set_title("Number at risk", fontsize=9, loc="left")
    for i, name in enumerate(names):
        row = len(names) - 1 - i
        t = np.asarray(groups[name][0], dtype=np.float64)
        counts = number_at_risk(t, ticks)
        colour = _COLOURS.get(name, f"C{i}")
        for x, n in zip(ticks, counts, strict=True):
            tab.text(x, row, str(int(n)), ha="center", va="center", fontsize=9, color=colour)
    return save_png(fig, path)


def save_png(fig, path: str | Path) -> Path:
    """Write a matplotlib ``Figure`` as a deterministic PNG (no "Software" stamp), atomically."""
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    return path


# --------------------------------------------------------------------------------------
# t-SNE of the organ features (Fig. 2D)
# --------------------------------------------------------------------------------------

#: Coarse categories of the 71 organ groups (`lamp.anatomy.GROUPS`) for colouring; the
#: spleen and the marrow-bearing bones get their own, as the paper's Fig. 2C-D single
#: them out (lymphoma involvement there carries a poor prognosis).
ORGAN_CATEGORIES: dict[str, tuple[str, ...]] = {
    "Spleen": ("spleen",),
    "Bone / marrow": (
        "sacrum", "vertebrae_S", "vertebrae_L", "vertebrae_T", "vertebrae_C", "humerus_left",
        "humerus_right", "scapula_left", "scapula_right", "clavicula_left", "clavicula_right",
        "femur_left", "femur_right", "hip_left", "hip_right", "skull", "rib_left",
        "rib_right", "sternum", "costal_cartilages",
    ),
    "Liver, gallbladder, pancreas": ("liver", "gallbladder", "pancreas"),
    "GI tract": ("esophagus", "stomach", "small_bowel", "duodenum", "colon"),
    "Kidney, adrenal, pelvic organs": (
        "kidney_right", "kidney_left", "kidney_cyst_left", "kidney_cyst_right",
        "adrenal_gland_right", "adrenal_gland_left", "urinary_bladder", "prostate",
    ),
    "Lung, airway, thyroid": ("lung_left", "lung_right", "trachea", "thyroid_gland"),
    "Heart and vessels": (
        "heart", "atrial_appendage_left", "aorta", "pulmonary_vein", "brachiocephalic_trunk",
        "subclavian_artery_right", "subclavian_artery_left", "common_carotid_artery_right",
        "common_carotid_artery_left", "brachiocephalic_vein_left", "brachiocephalic_vein_right",
        "superior_vena_cava", "inferior_vena_cava", "portal_vein_and_splenic_vein",
        "iliac_artery_left", "iliac_artery_right", "iliac_vena_left", "iliac_vena_right",
    ),
    "Muscle": (
        "gluteus_maximus_left", "gluteus_maximus_right", "gluteus_medius_left",
        "gluteus_medius_right", "gluteus_minimus_left", "gluteus_minimus_right",
        "autochthon_left", "autochthon_right", "iliopsoas_left", "iliopsoas_right",
    ),
    "Brain, spinal cord": ("brain", "spinal_cord"),
}  # fmt: skip
_CATEGORY_OF = {g: c for c, groups in ORGAN_CATEGORIES.items() for g in groups}
#: Groups whose centroids are labelled on the t-SNE map (where present).
KEY_ORGANS: tuple[str, ...] = (
    "spleen", "liver", "brain", "heart", "lung_left", "kidney_right", "urinary_bladder",
    "vertebrae_L", "femur_left", "aorta", "stomach", "gluteus_maximus_left",
)  # fmt: skip


def organ_category(group: str) -> str:
    """The coarse category (`ORGAN_CATEGORIES`) of an organ group name; "Other" if none."""
    return _CATEGORY_OF.get(group, "Other")


def organ_feature_points(
    feature_files: Sequence[str | Path], max_points: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The organ feature vectors of the organs present, pooled over patients.

    Parameters
    ----------
    feature_files : sequence of path
        ``WORK/features/<patient_id>.npz`` files (`lamp.model.batching.load_features`).
    max_points : int, default 2000
        A uniform random subsample (``seed``) keeps t-SNE fast on a large cohort.
    seed : int

    Returns
    -------
    features : ndarray, shape (n, D), float64
    organ : ndarray, shape (n,), int
        Index into `lamp.anatomy.GROUPS` (group id - 1).
    patient : ndarray, shape (n,), str
    """
    from lamp.model.batching import load_features

    feats, organs, patients = [], [], []
    for path in feature_files:
        f = load_features(path)
        idx = np.flatnonzero(f.organ_present)
        feats.append(np.asarray(f.organ_features, dtype=np.float64)[idx])
        organs.append(idx)
        patients.append(np.full(idx.size, f.patient_id, dtype=object))
    if not feats:
        return np.zeros((0, 0)), np.zeros(0, dtype=int), np.zeros(0, dtype=object)
    x, o, p = np.concatenate(feats), np.concatenate(organs), np.concatenate(patients)
    if len(x) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(x), max_points, replace=False))
        x, o, p = x[keep], o[keep], p[keep]
    return x, o, p.astype(str)


def organ_tsne(features: ArrayLike, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2D t-SNE embedding of standardised feature vectors (scikit-learn, deterministic).

    Parameters
    ----------
    features : array_like, shape (n, D), n >= 5
    seed : int
        ``random_state`` of the PCA initialisation and the optimisation.
    perplexity : float, default 30
        Reduced to (n - 1) / 3 for small n (t-SNE needs perplexity < n).

    Returns
    -------
    ndarray, shape (n, 2)
    """
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 5:
        raise ValueError(f"t-SNE needs at least 5 feature vectors, got shape {x.shape}")
    sd = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    tsne = TSNE(
        n_components=2,
        perplexity=min(perplexity, (len(x) - 1) / 3.0),
        init="pca",
        learning_rate="auto",
        random_state=seed,
    )
    return tsne.fit_transform(x)


def tsne_figure(
    path: str | Path,
    embedding: ArrayLike,
    organ: ArrayLike,
    title: str = "Organ features (t-SNE)",
    annotate: Sequence[str] = KEY_ORGANS,
) -> Path:
    """Scatter of a t-SNE embedding coloured by organ category, key organs labelled.

    Parameters
    ----------
    path : str or Path
    embedding : array_like, shape (n, 2)
    organ : array_like, shape (n,), int
        Index into `lamp.anatomy.GROUPS` of each point.
    title : str
    annotate : sequence of str
        Group names whose centroid (median point) gets a label.
    """
    from matplotlib.figure import Figure

    from lamp.anatomy import GROUPS

    emb = np.asarray(embedding, dtype=np.float64)
    org = np.asarray(organ, dtype=int)
    cats = np.array([organ_category(GROUPS[o]) for o in org])
    fig = Figure(figsize=(7.5, 6.0), dpi=110)
    ax = fig.add_axes((0.06, 0.06, 0.6, 0.86))
    names = [*ORGAN_CATEGORIES, "Other"]
    for i, cat in enumerate(names):
        sel = cats == cat
        if sel.any():
            ax.scatter(
                emb[sel, 0], emb[sel, 1], s=7, color=f"C{i % 10}", alpha=0.75,
                linewidths=0, label=f"{cat} ({int(sel.sum())})",
            )  # fmt: skip
    for name in annotate:
        if name not in GROUPS:
            continue
        sel = org == GROUPS.index(name)
        if sel.any():
            cx, cy = np.median(emb[sel], axis=0)
            # the label sits just above its cluster, which it would hide if centred on it
            ax.annotate(
                name, (cx, cy), xytext=(0, 7), textcoords="offset points", fontsize=7.5,
                ha="center", va="bottom",
                bbox={"boxstyle": "round,pad=0.12", "fc": "white", "ec": "#888888",
                      "lw": 0.4, "alpha": 0.7},
            )  # fmt: skip
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.set_title(title, fontsize=11)
    fig.legend(
        *ax.get_legend_handles_labels(), loc="center left", bbox_to_anchor=(0.67, 0.5),
        fontsize=8, frameon=False, markerscale=2.0, title="Organ category",
    )  # fmt: skip
    return save_png(fig, path)


# --------------------------------------------------------------------------------------
# The per-patient views of the model
# --------------------------------------------------------------------------------------


def risk_histogram_figure(
    path: str | Path,
    cohort_risks: ArrayLike,
    patient_risk: float,
    title: str = "",
    xlabel: str = "Risk score (out-of-fold)",
) -> Path:
    """The cohort's risk distribution with the median and one patient marked.

    Parameters
    ----------
    path : str or Path
    cohort_risks : array_like, shape (n,)
    patient_risk : float
    title, xlabel : str
    """
    from matplotlib.figure import Figure

    r = np.asarray(cohort_risks, dtype=np.float64)
    r = r[np.isfinite(r)]
    fig = Figure(figsize=(5.0, 3.0), dpi=110)
    ax = fig.add_axes((0.12, 0.2, 0.84, 0.66))
    if r.size:
        lo, hi = min(r.min(), patient_risk), max(r.max(), patient_risk)
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, min(30, max(5, r.size // 3)) + 1)
        ax.hist(r, bins=bins, color="#b0bec5", edgecolor="white")
        med = float(np.median(r))
        ax.axvline(med, color="#455a64", ls="--", lw=1.2, label=f"cohort median {med:.3f}")
    colour = "#c0392b" if r.size and patient_risk > np.median(r) else "#2471a3"
    ax.axvline(patient_risk, color=colour, lw=2.2, label=f"this patient {patient_risk:.3f}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Patients")
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    if title:
        ax.set_title(title, fontsize=10)
    return save_png(fig, path)


def survival_curve_figure(
    path: str | Path,
    curves: dict[str, tuple[ArrayLike, ArrayLike, ArrayLike | None]],
    title: str = "Predicted survival",
    xlabel: str = "Time (months)",
) -> Path:
    """Predicted survival step curves with the fold-ensemble spread as a band.

    Parameters
    ----------
    path : str or Path
    curves : dict
        ``{label: (months (m,), mean S(t) (m,), per-model S(t) (n_models, m) or None)}``;
        S(t) holds from each time to the next (a step function). The band spans the
        fold models' minimum to maximum.
    title, xlabel : str
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 3.4), dpi=110)
    ax = fig.add_axes((0.13, 0.16, 0.83, 0.72))
    x_max = 0.0
    for i, (label, (t, s, per_model)) in enumerate(curves.items()):
        t = np.asarray(t, dtype=np.float64)
        s = np.asarray(s, dtype=np.float64)
        # extend the last step a little so that the final survival value is visible
        end = t[-1] * 1.15 if t[-1] > 0 else 12.0
        tt = np.append(t, end)
        colour = f"C{i}"
        ax.step(tt, np.append(s, s[-1]), where="post", color=colour, lw=2.0, label=label)
        if per_model is not None and np.ndim(per_model) == 2 and len(per_model) > 1:
            pm = np.asarray(per_model, dtype=np.float64)
            lo, hi = pm.min(axis=0), pm.max(axis=0)
            ax.fill_between(
                tt, np.append(lo, lo[-1]), np.append(hi, hi[-1]), step="post",
                color=colour, alpha=0.2, lw=0,
                label=f"{label}: range over {len(pm)} fold models",
            )  # fmt: skip
        x_max = max(x_max, end)
    for m in (12.0, 24.0):
        if m < x_max:
            ax.axvline(m, color="#999999", lw=0.6, ls=":")
    ax.set_xlim(0.0, max(x_max, 1.0))
    ax.set_ylim(0.0, 1.03)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Predicted survival S(t)")
    ax.grid(alpha=0.25)
    ax.legend(fontsize=7.5, frameon=False, loc="lower left")
    ax.set_title(title, fontsize=10)
    return save_png(fig, path)
