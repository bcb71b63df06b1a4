"""Independent networks: one copy of the backbone per task, nothing shared.

It is also the reference of the multi-task gain Δm, and the source of the
single-task networks that Vandenhende et al.'s method measures affinity on.

Its tasks share no weights, so the trainer selects it per task: each task
keeps the weights of its own best validation epoch, as separate single-task
training would (version 2; version 1 kept one epoch for all tasks, chosen on
the total validation loss). Training runs until every task has stopped
improving.
"""

from __future__ import annotations

from branchbench.core.method import Method, SearchResult
from branchbench.core.plan import Plan


class Independent(Method):
    """The T-times-budget end of the spectrum."""

    name = "independent"
    budget_aware = False
    version = 2  # per-task best-validation-epoch selection (core/retrain.py: task_owned_keys)

    def search(self, bench, budget, ctx) -> SearchResult:
        return SearchResult(Plan.independent(bench.task_names, bench.backbone.block_names))
