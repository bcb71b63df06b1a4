"""Report figures (seaborn): quality vs cost with the Pareto front, per-task gains, learned trees.

Pure functions of the tables in :mod:`branchbench.reports.tables` (and of
``plan.json`` dicts for the trees); each returns a matplotlib Figure.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

QUALITY = "Δm (%)"
COST_AXES = {"params": "params", "flops": "FLOPs", "latency": "latency (ms)"}


def pareto_front(points: pd.DataFrame, cost: str, quality: str = QUALITY) -> pd.DataFrame:
    """Points not dominated by another that costs no more and is no worse (and better in one)."""
    ordered = points.dropna(subset=[cost, quality]).sort_values([cost, quality], ascending=[True, False])
    best = -np.inf
    keep = []
    for index, row in ordered.iterrows():
        if row[quality] > best:
            keep.append(index)
            best = row[quality]
    return ordered.loc[keep]


def pareto_figure(summary: pd.DataFrame, cost: str, title: str) -> Figure:
    """Mean Δm (± std over seeds) against a mean cost, one marker per (method, budget)."""
    points = pd.DataFrame({
        "method": summary.index.get_level_values("method"),
        "budget": summary.index.get_level_values("budget"),
        cost: summary[(cost, "mean")].to_numpy(),
        QUALITY: summary[(QUALITY, "mean")].to_numpy(),
        "std": summary[(QUALITY, "std")].fillna(0).to_numpy(),
    })
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.errorbar(points[cost], points[QUALITY], yerr=points["std"], fmt="none", ecolor="0.7", zorder=1)
    sns.scatterplot(data=points, x=cost, y=QUALITY, hue="method", style="budget", s=70, ax=ax, zorder=2)
    front = pareto_front(points, cost)
    ax.step(front[cost], front[QUALITY], where="post", ls="--", color="k", lw=1, label="Pareto front", zorder=0)
    ax.scatter(front[cost], front[QUALITY], s=180, facecolors="none", edgecolors="k", zorder=3)
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.set_title(title)
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return fig


def gains_heatmap(gains: pd.DataFrame, title: str) -> Figure:
    """Per-task gain (%) over the independent networks; rows (method, budget), columns tasks."""
    labels = [f"{m} @ {b}" for m, b in gains.index] if isinstance(gains.index, pd.MultiIndex) else gains.index
    data = gains.copy()
    data.index = labels
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * max(3, data.shape[1]), 1.2 + 0.45 * max(2, data.shape[0])))
    limit = float(np.nanmax(np.abs(data.to_numpy()))) if data.size else 1.0
    sns.heatmap(data, annot=True, fmt=".1f", cmap="RdBu", center=0.0, vmin=-limit, vmax=limit,
                cbar_kws={"label": "gain over independent (%)"}, ax=ax)
    ax.set_title(title)
    ax.set_xlabel("task")
    ax.set_ylabel("")
    fig.tight_layout()
    return fig


def trees_figure(plans: Mapping[str, tuple[Mapping[str, Any], Mapping[str, int] | None]], title: str) -> Figure:
    """Each labelled plan's tree (``Plan.draw``, tasks coloured by that cell's known groups), side by side."""
    from branchbench.core.plan import Plan

    images = []
    for label, (data, groups) in plans.items():
        drawn = Plan.from_dict(dict(data)).draw(title=label, groups=groups)
        buffer = io.BytesIO()
        drawn.savefig(buffer, format="png", dpi=80)
        plt.close(drawn)
        buffer.seek(0)
        images.append(plt.imread(buffer))
    cols = min(3, max(1, len(images)))
    rows = max(1, -(-len(images) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image in zip(axes.flat, images, strict=False):
        ax.imshow(image)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
