"""Oracle tree: the true task grouping as a tree, on data with a known grouping.

Blocks before ``branch_block`` are shared by all tasks; from ``branch_block``
on, each true group has its own branch (the tasks of a group still share it
down to their heads). It is the reference a grouping method should approach,
and it is refused with a clear error on data without known groups.
"""

from __future__ import annotations

from branchbench.core.method import Method, Option, SearchResult
from branchbench.core.plan import Plan


class OracleTree(Method):
    name = "oracle_tree"
    budget_aware = False
    tags = frozenset({"needs_groups"})
    options = {
        "branch_block": Option(
            1, "index of the first block that is per group (0 = groups share nothing)", low=0
        ),
    }

    def search(self, bench, budget, ctx) -> SearchResult:
        truth = bench.true_partition()
        if truth is None:
            raise ValueError(
                f"oracle_tree needs data with a known task grouping; dataset {bench.name!r} has "
                "none. Use a dataset with known groups (e.g. synthetic, or an npz file with a "
                "'groups' array)."
            )
        blocks = bench.backbone.block_names
        at = self.params["branch_block"]
        if at >= len(blocks):
            raise ValueError(
                f"oracle_tree: branch_block={at} but the backbone has only {len(blocks)} blocks "
                f"{blocks}; choose 0..{len(blocks) - 1}"
            )
        everyone = [set(bench.task_names)]
        partitions = [everyone if level < at else [set(g) for g in truth] for level in range(len(blocks))]
        return SearchResult(Plan.from_partitions(bench.task_names, blocks, partitions))
