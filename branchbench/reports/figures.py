"""Report figures (seaborn): quality vs cost with the Pareto front, per-task gains, learned trees.

Pure functions of the tables in :mod:`branchbench.reports.tables` (and of
``plan.json`` dicts for the trees); each returns a matplotlib Figure.
"""

from __future__ import annotations

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
    """Mean Δm (± std over seeds) against a mean cost, one marker per (method, budget); each error
    bar has its method's colour."""
    points = pd.DataFrame({
        "method": summary.index.get_level_values("method"),
        "budget": summary.index.get_level_values("budget"),
        cost: summary[(cost, "mean")].to_numpy(),
        QUALITY: summary[(QUALITY, "mean")].to_numpy(),
        "std": summary[(QUALITY, "std")].fillna(0).to_numpy(),
    })
    methods = list(dict.fromkeys(points["method"]))
    palette = dict(zip(methods, sns.color_palette(n_colors=len(methods)), strict=True))
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for method, rows in points.groupby("method", sort=False):
        ax.errorbar(rows[cost], rows[QUALITY], yerr=rows["std"], fmt="none", ecolor=palette[method], alpha=0.6,
                    capsize=3, zorder=1)
    sns.scatterplot(data=points, x=cost, y=QUALITY, hue="method", hue_order=methods, palette=palette,
                    style="budget", s=70, ax=ax, zorder=2)
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
    """Each labelled plan's tree drawn sideways, side by side, readable from a few to 40 tasks.

    One row per task (the leaves, at the right, in the tree's order so that
    tasks sharing a branch sit together); each block is a column, each drawn
    node one activation (a square: a set of weights; a cross: a skip), its
    children joined as in a dendrogram. Task names are coloured by that cell's
    known groups, with one legend for the figure. Node ids are written only
    for plans that are not trees, where one set of weights serves several
    branches.
    """
    from branchbench.core.plan import Plan

    panels = [(label, Plan.from_dict(dict(data)), groups) for label, (data, groups) in plans.items()]
    known = sorted({g for _, _, groups in panels if groups for g in groups.values()})
    colors = dict(zip(known, sns.color_palette("tab10" if len(known) <= 10 else "husl", len(known)), strict=True))
    n_tasks = max(len(plan.tasks) for _, plan, _ in panels)
    n_blocks = max(plan.n_blocks for _, plan, _ in panels)
    name_chars = max(len(task) for _, plan, _ in panels for task in plan.tasks)
    font = 8 if n_tasks <= 20 else 7
    width = 1.0 + 0.55 * (n_blocks + 1) + 0.075 * font / 7 * name_chars
    height = 1.0 + (0.24 if n_tasks <= 20 else 0.17) * n_tasks
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    legend_rows = -(-len(known) // 10) if known else 0
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows + 0.3 * legend_rows + 0.4),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (label, plan, groups) in zip(axes.flat, panels, strict=False):
        _draw_tree(ax, plan, groups, colors, font)
        ax.set_title(label, fontsize=9)
    if known:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], ls="", marker="o", color=colors[g], label=f"group {g}") for g in known]
        fig.legend(handles=handles, loc="lower center", ncol=min(10, len(known)), fontsize=8, frameon=False,
                   title="known task groups", title_fontsize=8)
    fig.suptitle(title)
    inches = fig.get_figheight()
    fig.tight_layout(rect=(0, (0.3 * legend_rows + (0.3 if known else 0)) / inches, 1, 1 - 0.15 / inches))
    return fig


def tree_order(plan: Any) -> list[str]:
    """The tasks in depth-first order of the plan's tree: tasks that share a branch are adjacent."""
    first: dict[tuple, int] = {}
    for index, task in enumerate(plan.tasks):
        for level in range(plan.n_blocks):
            first.setdefault(plan.prefix(task, level), index)
    return sorted(plan.tasks, key=lambda t: [first[plan.prefix(t, level)] for level in range(plan.n_blocks)])


def _draw_tree(ax: Any, plan: Any, groups: Mapping[str, int] | None, colors: Mapping[int, Any], font: int) -> None:
    order = tree_order(plan)
    row = {task: float(i) for i, task in enumerate(order)}
    last = plan.n_blocks + 1  # x of the task names
    label_ids = not plan.is_tree

    def y_of(tasks: list[str]) -> float:
        return float(np.mean([row[t] for t in tasks]))

    parents: list[tuple[float, float, list[tuple[float, float]]]] = []  # (x, y, children's (x, y))
    level_nodes = {(): (0.0, y_of(order))}
    for level in range(plan.n_blocks):
        nodes = {key: (level + 1.0, y_of(tasks)) for key, tasks in plan.activations(level).items()}
        by_parent: dict[tuple, list[tuple[float, float]]] = {}
        for key, xy in nodes.items():
            by_parent.setdefault(key[:-1], []).append(xy)
        parents += [(*level_nodes[key], children) for key, children in by_parent.items()]
        level_nodes = nodes
    heads: dict[tuple, list[tuple[float, float]]] = {}
    for task in plan.tasks:
        heads.setdefault(plan.prefix(task, plan.n_blocks - 1), []).append((last - 0.35, row[task]))
    parents += [(*level_nodes[key], children) for key, children in heads.items()]
    for x, y, children in parents:  # dendrogram joints: a vertical at the parent, a horizontal to each child
        ys = [cy for _, cy in children] + [y]
        ax.plot([x, x], [min(ys), max(ys)], color="0.55", lw=0.9, zorder=1)
        for cx, cy in children:
            ax.plot([x, cx], [cy, cy], color="0.55", lw=0.9, zorder=1)
    ax.scatter([0.0], [y_of(order)], s=30, c="black", zorder=3)
    for level in range(plan.n_blocks):
        for key, tasks in plan.activations(level).items():
            x, y = level + 1.0, y_of(tasks)
            if key[-1] is None:
                ax.scatter([x], [y], s=40, marker="x", c="0.3", zorder=3)
            else:
                ax.scatter([x], [y], s=36, marker="s", c="white", edgecolors="black", linewidths=0.8, zorder=3)
                if label_ids:
                    ax.annotate(f"n{key[-1]}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=font - 1)
    for task in order:
        color = colors.get(groups[task], "black") if groups and task in groups else "black"
        ax.scatter([last - 0.35], [row[task]], s=14, c=[color], zorder=3)
        ax.text(last - 0.25, row[task], task, va="center", ha="left", fontsize=font, color=color)
    ax.axis("on")
    ax.set_xticks([0.0] + [level + 1.0 for level in range(plan.n_blocks)],
                  ["input"] + [f"{block}\n({len(plan.nodes_used(i))})" for i, block in enumerate(plan.blocks)],
                  fontsize=font)
    ax.tick_params(axis="x", length=0)
    ax.set_yticks([])
    ax.set_xlim(-0.3, last + 0.2)
    ax.set_ylim(len(order) - 0.4, -0.6)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.set_xlabel("block (sets of weights)", fontsize=font)
