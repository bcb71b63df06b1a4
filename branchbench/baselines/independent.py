"""Independent networks: one copy of the backbone per task, nothing shared.

It is also the reference of the multi-task gain Δm, and the source of the
single-task networks that Vandenhende et al.'s method measures affinity on.

Its tasks share no weights, so the trainer trains and selects it per task, as
separate single-task trainings would: each task keeps the weights of its own
best validation epoch (version 2; version 1 kept one epoch for all tasks,
chosen on the total validation loss), and, since version 3, trains on its
unweighted loss and stops after its own ``early_stopping`` epochs without
improving (version 2 went on selecting a task after its patience, while
others still trained). Training runs until every task has stopped.
"""

from __future__ import annotations

from branchbench.core.method import Method, SearchResult
from branchbench.core.plan import Plan


class Independent(Method):
    """The T-times-budget end of the spectrum."""

    name = "independent"
    budget_aware = False
    # 2: per-task best-validation-epoch selection (core/retrain.py: task_owned_keys);
    # 3: each task stops after its own patience (its selection frozen) and trains on its unweighted loss
    version = 3

    def search(self, bench, budget, ctx) -> SearchResult:
        return SearchResult(Plan.independent(bench.task_names, bench.backbone.block_names))
