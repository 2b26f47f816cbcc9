"""Figures of the paper drawn with matplotlib's object API (no pyplot, no display).

`km_figure` draws the Kaplan–Meier curves of the high- and low-risk groups with censor
ticks, the log-rank p-value and a numbers-at-risk table under the plot, as in the
paper's Fig. 2A-B. The PNG is deterministic: matplotlib's Agg canvas with the
"Software" metadata removed (PNG files carry no timestamp otherwise), written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from lamp.cohort import atomic_output
from lamp.evaluation.survival import kaplan_meier, number_at_risk

__all__ = ["AT_RISK_MONTHS", "km_figure", "format_p"]

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
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    return path
