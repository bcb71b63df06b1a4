"""Shared-bottom: every task shares every block; only the heads are per task."""

from __future__ import annotations

from branchbench.core.method import Method, SearchResult


class SharedBottom(Method):
    """The 1.0x-budget end of the spectrum (Caruana's hard parameter sharing)."""

    name = "shared_bottom"
    budget_aware = False

    def search(self, bench, budget, ctx) -> SearchResult:
        from branchbench.core.plan import Plan

        return SearchResult(Plan.shared_bottom(bench.task_names, bench.backbone.block_names))
