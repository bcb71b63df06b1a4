"""The AdaShare study: named schedules on development data seeds, selected by validation Δm.

Every cell (each adashare schedule, shared_bottom, independent) runs through
the sweep into one MLflow store (a temporary one unless ``--tracking-uri`` is
given; finished cells are reused), one torch thread per cell, in ``--workers``
processes, on *development* data seeds (``branchbench/seeds.py``; others are
refused). AdaShare is not budget-aware: one cell per schedule, data seed and
training seed (budget none). The seed rule: a schedule is **selected by its
mean validation Δm** (against the independent networks, from ``val.*``
metrics); test Δm, the recovery of the true groups, how often the policy
reproduces shared-bottom (``search.reproduces_shared_bottom``: no task skips a
block) and the blocks each task skips are *reported* and choose nothing.

Schedules: ``default`` (``epoch_factor=1`` since adashare version 3: the
reference's search/retrain length ratio, 48 policy phases on the default
synthetic cell; this study chose it, as ``factor1``, over version 2's
default), ``factor5`` (version 2's default, ``epoch_factor=5``, 240 phases),
``ref333`` (``policy_phases=333``, the reference's NYU-v2
temperature and curriculum schedule), ``cityscapes_reg`` (the reference's
CityScapes 2-task regulariser weights, ``reg_w`` 0.01 and ``reg_w_hamming``
0.1, against NYU-v2 3-task's 0.001 and 0.05) and, on request, ``sparse``
(a sparsity weight 100x the default's, a probe of whether skipping appears).

Usage::

    python scripts/adashare_study.py --data-seeds 1000 1001 1002 1003 1004 --workers 2 --out scripts/results/adashare_study.md
"""

from __future__ import annotations

import statistics

from _study import Column, Schedule, fmt_list, mean_std, recovered, study_main

from branchbench.seeds import development_seeds

SCHEDULES: dict[str, Schedule] = {
    "default": Schedule({}, "epoch_factor 1: the reference's proportions, search as long as retraining"),
    "factor5": Schedule({"epoch_factor": 5.0}, "version 2's default: 240 policy phases on the default synthetic cell"),
    "ref333": Schedule({"policy_phases": 333}, "the reference's ~333 phases (NYU-v2 3-task)"),
    "cityscapes_reg": Schedule({"sparsity_weight": 0.01, "sharing_weight": 0.1},
                               "the reference's CityScapes 2-task reg_w / reg_w_hamming"),
    "sparse": Schedule({"sparsity_weight": 0.1}, "sparsity 100x the default (a probe, not a reference value)"),
}


def skipped(m: dict[str, float]) -> list[float]:
    """Blocks each task skips in the final plan, in task order (reported only)."""
    return [m[k] for k in sorted((k for k in m if k.startswith("search.skipped.")), key=_task_order)]


def _task_order(key: str) -> tuple[str, int]:
    name = key[len("search.skipped."):]
    head = name.rstrip("0123456789")
    return head, int(name[len(head):] or -1)


COLUMNS = [
    Column("reproduces shared-bottom", lambda m: "yes" if m.get("search.reproduces_shared_bottom") else "no"),
    Column("fully shared", lambda m: "yes" if m.get("search.fully_shared") else "no"),
    Column("skipped blocks per task", lambda m: fmt_list(skipped(m), ".0f")),
    Column("skip fraction", lambda m: f"{m.get('search.skip_fraction', float('nan')):.3f}"),
    Column("curriculum complete", lambda m: "yes" if m.get("search.curriculum_complete") else "no"),
    Column("recovered", recovered),
    Column("test Δm", lambda m: f"{m['delta_m']:+.2f}"),
    Column("search s", lambda m: f"{m.get('search_seconds', float('nan')):.0f}"),
]
SUMMARIES = [
    Column("reproduces shared-bottom (reported)",
           lambda ms: f"{sum(bool(m.get('search.reproduces_shared_bottom')) for m in ms)}/{len(ms)}"),
    Column("skipped blocks per task, mean (reported)",
           lambda ms: mean_std([statistics.fmean(skipped(m)) for m in ms if skipped(m)], ".2f")),
]


if __name__ == "__main__":
    study_main(__doc__, "AdaShare schedule study (adashare-study)", "adashare-study", "adashare", SCHEDULES,
               ["default", "factor5", "ref333", "cityscapes_reg"], None, development_seeds(5), COLUMNS, SUMMARIES)
