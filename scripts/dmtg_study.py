"""The DMTG study: named schedules on development data seeds, selected by validation Δm.

Every cell (each dmtg schedule at each budget, shared_bottom, independent)
runs through the sweep into one MLflow store (a temporary one unless
``--tracking-uri`` is given; finished cells are reused, so a second invocation
only prints), one torch thread per cell, in ``--workers`` processes, on
*development* data seeds (``branchbench/seeds.py``; others are refused). The
seed rule: a schedule is **selected by its mean validation Δm** (against the
independent networks, from ``val.*`` metrics) per budget and overall; test Δm,
the recovery of the true groups, the ARI, the commitment (mean max assignment
probability) and K are *reported* beside it and choose nothing.

With the default empty stem a branch is the whole backbone, so the budget sets
K: 2 branches at 2.5x, 5 at 5x (nine synthetic tasks in three true groups).
The ``k3`` schedule gives K = 3, the number of true groups, read from the data:
it is a **feasibility check** (can the search find the groups when K is
right?), run at 5x only (3 branches do not fit 2.5x), reported and never
selectable as a default.

Usage::

    python scripts/dmtg_study.py --data-seeds 1000 1001 1002 1003 1004 --budgets 2.5 5.0 --workers 2 \\
        --out scripts/results/dmtg_study.md
    python scripts/dmtg_study.py --schedules default --variants '{"lr10": {"logit_lr_mult": 10.0}}'
"""

from __future__ import annotations

from _study import Column, Schedule, ari_blocks, fmt_list, mean_std, recovered, study_main

from branchbench.seeds import development_seeds

SCHEDULES: dict[str, Schedule] = {
    "default": Schedule({}, "since version 4: the protocol's optimiser and schedule, search = 1x its epochs"),
    "reference": Schedule({"search_optimizer": "reference"}, "the reference's CelebA search: Adam 8e-4 halved "
                          "every 15% (version 2-3's default)"),
    "lr3": Schedule({"logit_lr_mult": 3.0}, "logits' learning rate x3 (a deviation, Differences (2))"),
    "long": Schedule({"epoch_factor": 2.0}, "search 2x the protocol's epochs (the reference: 1x)"),
    "k3": Schedule({"k": 3}, "K = the true number of groups", budgets=(5.0,), selectable=False),
}

COLUMNS = [
    Column("K", lambda m: f"{m.get('search.k', float('nan')):.0f}"),
    Column("groups used", lambda m: f"{m.get('search.groups_used', float('nan')):.0f}"),
    Column("commitment", lambda m: f"{m.get('search.commitment', float('nan')):.3f}"),
    Column("ARI (last block)", lambda m: fmt_list(ari_blocks(m)[-1:], ".3f")),
    Column("feasible", lambda m: "yes" if m.get("grouping.feasible") else "no"),
    Column("recovered", recovered),
    Column("test Δm", lambda m: f"{m['delta_m']:+.2f}"),
    Column("search s", lambda m: f"{m.get('search_seconds', float('nan')):.0f}"),
]
SUMMARIES = [
    Column("commitment (reported)", lambda ms: mean_std([m.get("search.commitment", float("nan")) for m in ms],
                                                        ".3f")),
    Column("ARI last block (reported)", lambda ms: mean_std([ari_blocks(m)[-1] for m in ms], ".3f")),
]


if __name__ == "__main__":
    study_main(__doc__, "DMTG schedule study (dmtg-study)", "dmtg-study", "dmtg", SCHEDULES,
               ["default", "reference", "lr3", "long", "k3"], [2.5, 5.0], development_seeds(5), COLUMNS, SUMMARIES)
