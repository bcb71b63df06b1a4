"""The Vandenhende et al. (branched_affinity) study: named schedules on development data seeds, selected by
validation Δm.

Every cell (each branched_affinity schedule at each budget, shared_bottom,
independent, whose networks the search reuses) runs through the sweep into one
MLflow store (a temporary one unless ``--tracking-uri`` is given; finished
cells are reused), one torch thread per cell, in ``--workers`` processes, on
*development* data seeds (``branchbench/seeds.py``; others are refused). The
seed rule: a schedule is **selected by its mean validation Δm** (against the
independent networks, from ``val.*`` metrics) per budget and overall; test Δm,
the recovery of the true groups and the true tree's rank among the trees the
search scored (``search.true_tree_rank``, 1 = it would have been chosen) are
*reported* and choose nothing.

Schedules: ``default`` (the paper's clustering cost, a branch point after
every block, 500 samples), ``size_weighted`` (``cluster_cost``), ``stages``
(``branch_points``, the paper's few locations; on the synthetic MLP every
block is a stage of its own, so the same trees as ``default``), ``n200``
(``n_samples=200``).

Usage::

    python scripts/branched_affinity_study.py --data-seeds 1000 1001 1002 1003 1004 --budgets 2.5 5.0 --workers 2 \\
        --out scripts/results/branched_affinity_study.md
"""

from __future__ import annotations

import statistics

from _study import Column, Schedule, ari_blocks, fmt_list, recovered, study_main

from branchbench.seeds import development_seeds

SCHEDULES: dict[str, Schedule] = {
    "default": Schedule({}, "the paper's cost, every block a branch point, 500 samples"),
    "size_weighted": Schedule({"cluster_cost": "size_weighted"}, "cluster diameters weighted by their task share"),
    "stages": Schedule({"branch_points": "stages"}, "the paper's branch points (each MLP block is a stage)"),
    "n200": Schedule({"n_samples": 200}, "200 RDM samples instead of 500"),
}


def rank(m: dict[str, float]) -> str:
    if "search.true_tree_rank" not in m:
        return "-"
    return f"{m['search.true_tree_rank']:.0f}/{m.get('search.trees_evaluated', float('nan')):.0f}"


COLUMNS = [
    Column("true tree rank / trees scored", rank),
    Column("true tree cost", lambda m: f"{m.get('search.true_tree_cost', float('nan')):.2f}"),
    Column("ARI per block", lambda m: fmt_list(ari_blocks(m))),
    Column("recovered", recovered),
    Column("test Δm", lambda m: f"{m['delta_m']:+.2f}"),
    Column("search s", lambda m: f"{m.get('search_seconds', float('nan')):.0f}"),
]
SUMMARIES = [
    Column("true tree rank, median (reported)",
           lambda ms: f"{statistics.median(r):.0f}" if (r := [m["search.true_tree_rank"] for m in ms
                                                              if "search.true_tree_rank" in m]) else "-"),
]


if __name__ == "__main__":
    study_main(__doc__, "Vandenhende et al. (branched_affinity) schedule study (branched-affinity-study)",
               "branched-affinity-study", "branched_affinity", SCHEDULES,
               ["default", "size_weighted", "stages", "n200"], [2.5, 5.0], development_seeds(5), COLUMNS, SUMMARIES)
