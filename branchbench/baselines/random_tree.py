"""Random tree: a random tree plan grown up to the budget cap.

The distribution: start from shared-bottom and repeat a random *split* until
no admissible one is left. A split picks uniformly a (block, group) among the
groups of two or more tasks whose split still fits under the cap, then a
uniformly random bipartition of that group (each task's side a fair coin,
redrawn until both sides are non-empty); the two sides get separate nodes at
that block and at every deeper block (deeper groups are cut along the same
line, so each block's partition still refines the one above). Growth stops
when no split fits, so the plan is as close to the cap as the blocks allow.
Without a cap it grows into independent networks. Different seeds give
different trees. It is the control a learned method must beat at the same
budget: a paired per-seed comparison in the reports.
"""

from __future__ import annotations

import random

from branchbench.core.method import Method, SearchResult
from branchbench.core.plan import Plan


def grow_random_tree(tasks: list[str], blocks: list[str], block_params: list[int], cap: float, rng: random.Random) -> Plan:
    partitions: list[list[frozenset[str]]] = [[frozenset(tasks)] for _ in blocks]
    params = sum(block_params)
    while True:
        candidates = []
        for level, groups in enumerate(partitions):
            for group in groups:
                if len(group) < 2:
                    continue
                # splitting `group` at `level` adds one node at `level` and one per deeper
                # group that straddles the cut; the cheapest case adds one node per block
                min_extra = sum(block_params[level:])
                if params + min_extra <= cap:
                    candidates.append((level, group))
        rng.shuffle(candidates)
        for level, group in candidates:
            members = sorted(group)
            while True:
                side = {t for t in members if rng.random() < 0.5}
                if 0 < len(side) < len(members):
                    break
            new_partitions = [list(p) for p in partitions]
            for deeper in range(level, len(blocks)):
                cut = []
                for g in partitions[deeper]:
                    if g <= group:
                        a, b = g & side, g - side
                        cut.extend(x for x in (frozenset(a), frozenset(b)) if x)
                    else:
                        cut.append(g)
                new_partitions[deeper] = cut
            new_params = sum(len(p) * c for p, c in zip(new_partitions, block_params, strict=True))
            if new_params <= cap:
                partitions, params = new_partitions, new_params
                break
        else:
            return Plan.from_partitions(tasks, blocks, [[set(g) for g in p] for p in partitions])


class RandomTree(Method):
    name = "random_tree"
    budget_aware = True
    tags = frozenset({"stochastic"})

    def search(self, bench, budget, ctx) -> SearchResult:
        rng = random.Random(f"random_tree-{ctx.seed}")
        backbone = bench.backbone
        plan = grow_random_tree(
            bench.task_names, backbone.block_names, backbone.block_params, budget.cap(backbone), rng
        )
        return SearchResult(plan)
