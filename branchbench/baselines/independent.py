"""Independent networks: one copy of the backbone per task, nothing shared.

It is also the reference of the multi-task gain Δm, and the source of the
single-task networks that Vandenhende et al.'s method measures affinity on.
"""

from __future__ import annotations

from branchbench.core.method import Method, SearchResult
from branchbench.core.plan import Plan


class Independent(Method):
    """The T-times-budget end of the spectrum."""

    name = "independent"
    budget_aware = False

    def search(self, bench, budget, ctx) -> SearchResult:
        return SearchResult(Plan.independent(bench.task_names, bench.backbone.block_names))
