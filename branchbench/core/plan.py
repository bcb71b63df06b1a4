"""The sharing Plan: where each task shares and where it branches, as plain data.

A Plan says, for each task and each block of the backbone, which *node* (one
set of that block's weights) the task uses there, or ``None`` for a skip
(the block's shortcut). Two tasks share an *activation* at block ``l`` exactly
when their node ids agree at ``l`` and at every earlier block. Parameters
count each used (block, node) once. Every method ends in a Plan, and
:class:`~branchbench.core.net.BranchedNet` executes any Plan, so comparisons
differ only in the plan.

Worked example (three tasks, three blocks)::

    >>> plan = Plan(["t0", "t1", "t2"], ["b0", "b1", "b2"],
    ...             {"t0": [0, 0, 0], "t1": [0, 0, 1], "t2": [0, 1, 2]})
    >>> [sorted(map(sorted, plan.partition(l))) for l in range(3)]
    [[['t0', 't1', 't2']], [['t0', 't1'], ['t2']], [['t0'], ['t1'], ['t2']]]
    >>> plan.is_tree
    True
    >>> plan.nodes_used(2)     # block b2 holds three sets of weights
    [0, 1, 2]

Its JSON form (``plan.json``, logged with every run)::

    {"version": 1, "tasks": ["t0", "t1", "t2"], "blocks": ["b0", "b1", "b2"],
     "nodes": {"t0": [0, 0, 0], "t1": [0, 0, 1], "t2": [0, 1, 2]}}

A *tree* plan is one where equal ids imply equal paths, i.e. every block's
partition refines the one above; shared-bottom, independent networks and the
grouping methods all give trees. AdaShare's select-or-skip policies give
non-tree plans over shared weights, with skips. Plans compare equal up to
relabelling of node ids.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from branchbench.core.backbones import Backbone
    from branchbench.core.tasks import TaskSpec

PLAN_VERSION = 1
NodeId = int | None
Prefix = tuple[NodeId, ...]


class PlanError(ValueError):
    """A plan that is malformed or does not fit the benchmark it is used with."""


class Plan:
    """Per task and block, the node id used there (``None`` = skip the block)."""

    def __init__(
        self,
        tasks: Sequence[str],
        blocks: Sequence[str],
        nodes: Mapping[str, Sequence[NodeId]],
    ) -> None:
        self.tasks: tuple[str, ...] = tuple(tasks)
        self.blocks: tuple[str, ...] = tuple(blocks)
        if not self.tasks:
            raise PlanError("a plan needs at least one task")
        if not self.blocks:
            raise PlanError("a plan needs at least one block")
        if len(set(self.tasks)) != len(self.tasks):
            raise PlanError(f"task names repeat in {list(self.tasks)}; give each task once")
        unknown = sorted(set(nodes) - set(self.tasks))
        if unknown:
            raise PlanError(
                f"nodes are given for unknown task(s) {unknown}; the plan's tasks are "
                f"{list(self.tasks)}"
            )
        missing = [t for t in self.tasks if t not in nodes]
        if missing:
            raise PlanError(f"no nodes given for task(s) {missing}; give one id per block for each")
        self.nodes: dict[str, tuple[NodeId, ...]] = {}
        for task in self.tasks:
            ids = tuple(nodes[task])
            if len(ids) != len(self.blocks):
                raise PlanError(
                    f"task {task!r} has {len(ids)} node ids but the plan has "
                    f"{len(self.blocks)} blocks {list(self.blocks)}; give one id per block"
                )
            for block, node in zip(self.blocks, ids, strict=True):
                if node is not None and (
                    isinstance(node, bool) or not isinstance(node, int) or node < 0
                ):
                    raise PlanError(
                        f"task {task!r}, block {block!r}: node id {node!r} is not a "
                        "non-negative integer or null (skip)"
                    )
            self.nodes[task] = ids

    # ----------------------------------------------------------------- builders
    @classmethod
    def shared_bottom(cls, tasks: Sequence[str], blocks: Sequence[str]) -> Plan:
        """One node per block, shared by all tasks."""
        return cls(tasks, blocks, {t: [0] * len(blocks) for t in tasks})

    @classmethod
    def independent(cls, tasks: Sequence[str], blocks: Sequence[str]) -> Plan:
        """One node per task from the first block: T separate networks."""
        return cls(tasks, blocks, {t: [i] * len(blocks) for i, t in enumerate(tasks)})

    @classmethod
    def from_partitions(
        cls,
        tasks: Sequence[str],
        blocks: Sequence[str],
        partitions: Sequence[Iterable[Iterable[str]]],
    ) -> Plan:
        """A tree plan from one partition of the tasks per block.

        ``partitions[l]`` lists the groups of tasks that share block ``l``; each
        block's partition must refine the one above.

        >>> Plan.from_partitions(["a", "b", "c"], ["b0", "b1"],
        ...                      [[{"a", "b", "c"}], [{"a", "b"}, {"c"}]]).nodes["c"]
        (0, 1)
        """
        if len(partitions) != len(blocks):
            raise PlanError(
                f"{len(partitions)} partitions given for {len(blocks)} blocks; give one per block"
            )
        nodes: dict[str, list[int]] = {t: [] for t in tasks}
        for level, groups in enumerate(partitions):
            seen: set[str] = set()
            for gid, group in enumerate(groups):
                for task in group:
                    if task not in nodes:
                        raise PlanError(f"block {level}: unknown task {task!r} in a partition")
                    if task in seen:
                        raise PlanError(f"block {level}: task {task!r} is in two groups")
                    seen.add(task)
                    nodes[task].append(gid)
            if seen != set(tasks):
                raise PlanError(
                    f"block {level}: the partition misses task(s) {sorted(set(tasks) - seen)}"
                )
        plan = cls(tasks, blocks, nodes)
        plan.require_tree()
        return plan

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        version = data.get("version", PLAN_VERSION)
        if version != PLAN_VERSION:
            raise PlanError(f"plan version {version!r} is not supported; this code reads version 1")
        for key in ("tasks", "blocks", "nodes"):
            if key not in data:
                raise PlanError(f"plan JSON lacks the key {key!r}; see Plan's docstring for the form")
        return cls(data["tasks"], data["blocks"], data["nodes"])

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise PlanError(f"plan JSON does not parse: {err}") from err
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": PLAN_VERSION,
            "tasks": list(self.tasks),
            "blocks": list(self.blocks),
            "nodes": {t: list(self.nodes[t]) for t in self.tasks},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    # --------------------------------------------------------------- structure
    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def prefix(self, task: str, level: int) -> Prefix:
        """The path of node ids of ``task`` through blocks 0..level (its activation key)."""
        return self.nodes[task][: level + 1]

    def activations(self, level: int) -> dict[Prefix, list[str]]:
        """Distinct activations after block ``level`` and the tasks that share each.

        Ordered by first appearance in task order, so iteration is deterministic.
        """
        out: dict[Prefix, list[str]] = {}
        for task in self.tasks:
            out.setdefault(self.prefix(task, level), []).append(task)
        return out

    def partition(self, level: int) -> list[frozenset[str]]:
        """The partition of tasks by shared activation after block ``level``."""
        return [frozenset(group) for group in self.activations(level).values()]

    def nodes_used(self, level: int) -> list[int]:
        """Sorted distinct node ids (sets of weights) used at block ``level``."""
        return sorted({self.nodes[t][level] for t in self.tasks} - {None})

    def has_skip(self, level: int) -> bool:
        return any(self.nodes[t][level] is None for t in self.tasks)

    @property
    def has_skips(self) -> bool:
        return any(self.has_skip(level) for level in range(self.n_blocks))

    def tree_violation(self) -> str | None:
        """Why this is not a tree plan, or None if it is one."""
        for level, block in enumerate(self.blocks):
            owner: dict[NodeId, str] = {}
            for task in self.tasks:
                node = self.nodes[task][level]
                if node is None:
                    return f"task {task!r} skips block {block!r}; tree plans have no skips"
                first = owner.setdefault(node, task)
                if self.prefix(first, level) != self.prefix(task, level):
                    return (
                        f"tasks {first!r} and {task!r} share node {node} at block {block!r} "
                        f"but arrive by different paths {list(self.prefix(first, level - 1))} and "
                        f"{list(self.prefix(task, level - 1))}: block {block!r}'s partition does "
                        "not refine the one above. Give them different node ids there, or the "
                        "same path above."
                    )
        return None

    @property
    def is_tree(self) -> bool:
        return self.tree_violation() is None

    def require_tree(self) -> Plan:
        reason = self.tree_violation()
        if reason is not None:
            raise PlanError(f"not a tree plan: {reason}")
        return self

    def check_fits(self, tasks: Sequence[str], n_blocks: int) -> Plan:
        """Raise a clear error unless the plan covers exactly these tasks and blocks."""
        unknown = sorted(set(self.tasks) - set(tasks))
        if unknown:
            raise PlanError(f"plan has task(s) {unknown} that the benchmark lacks; its tasks are {list(tasks)}")
        missing = sorted(set(tasks) - set(self.tasks))
        if missing:
            raise PlanError(f"plan lacks the benchmark's task(s) {missing}")
        if self.n_blocks != n_blocks:
            raise PlanError(
                f"plan has {self.n_blocks} blocks but the backbone has {n_blocks}; "
                "give one node id per backbone block"
            )
        return self

    # --------------------------------------------------------------- identity
    def canonical(self) -> Plan:
        """The same plan with node ids renumbered by first use in task order."""
        relabelled: dict[str, list[NodeId]] = {t: [] for t in self.tasks}
        for level in range(self.n_blocks):
            mapping: dict[int, int] = {}
            for task in self.tasks:
                node = self.nodes[task][level]
                relabelled[task].append(None if node is None else mapping.setdefault(node, len(mapping)))
        return Plan(self.tasks, self.blocks, relabelled)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Plan):
            return NotImplemented
        if set(self.tasks) != set(other.tasks) or self.blocks != other.blocks:
            return False
        # relabelling is per block: equal iff the same tasks share the same weights per block
        for level in range(self.n_blocks):
            if _weight_groups(self, level) != _weight_groups(other, level):
                return False
            if {t for t in self.tasks if self.nodes[t][level] is None} != {
                t for t in other.tasks if other.nodes[t][level] is None
            }:
                return False
        return True

    def __hash__(self) -> int:
        return hash(
            (frozenset(self.tasks), self.blocks)
            + tuple(frozenset(_weight_groups(self, level)) for level in range(self.n_blocks))
        )

    def __repr__(self) -> str:
        return f"Plan({self.to_json()})"

    # ------------------------------------------------------------ cost counts
    def param_count(self, backbone: Backbone, heads: Sequence[TaskSpec] | None = None) -> int:
        """Backbone parameters from per-block counts: each used (block, node) once.

        A block where some task skips adds its shortcut's parameters once.
        Heads are excluded (budgets exclude them) unless their task specs are given.
        """
        self.check_fits(self.tasks, len(backbone.blocks))
        total = 0
        for level in range(self.n_blocks):
            total += len(self.nodes_used(level)) * backbone.block_params[level]
            if self.has_skip(level):
                total += backbone.shortcut_params[level]
        if heads is not None:
            total += sum(backbone.head_params(task) for task in heads)
        return total

    def flops(self, backbone: Backbone, heads: Sequence[TaskSpec] | None = None) -> int:
        """FLOPs of one sample's forward pass, each distinct activation counted once.

        Per-block FLOPs come from torch's FLOP counter (see Backbone); heads are
        added when their task specs are given.
        """
        total = 0
        for level in range(self.n_blocks):
            for key in self.activations(level):
                node = key[-1]
                total += backbone.block_flops[level] if node is not None else backbone.shortcut_flops[level]
        if heads is not None:
            total += sum(backbone.head_flops(task) for task in heads)
        return total

    def budget_ratio(self, backbone: Backbone) -> float:
        """Backbone parameters relative to shared-bottom's (1.0 .. T for trees)."""
        return self.param_count(backbone) / backbone.shared_bottom_params

    # ----------------------------------------------------------------- figure
    def draw(self, title: str | None = None, groups: Mapping[str, int] | None = None) -> Figure:
        """Draw the tree of distinct activations (the trie of node-id paths).

        Each drawn node is one activation: a set of weights applied to its
        parent's output (labelled ``b<l>:n<id>``) or a skip; leaves name the
        tasks. With known ``groups`` the task labels are coloured by group.
        """
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        leaves = list(self.activations(self.n_blocks - 1).items())
        xs: dict[Prefix, float] = {}
        for i, (key, _) in enumerate(leaves):
            xs[key] = float(i)
        for level in range(self.n_blocks - 2, -1, -1):
            children: dict[Prefix, list[float]] = {}
            for key, x in list(xs.items()):
                if len(key) == level + 2:
                    children.setdefault(key[:-1], []).append(x)
            for key, cx in children.items():
                xs[key] = sum(cx) / len(cx)
        xs[()] = sum(xs[k] for k in xs if len(k) == 1) / max(1, sum(1 for k in xs if len(k) == 1))

        width = max(4.0, 1.1 * len(leaves) + 1.5)
        fig, ax = plt.subplots(figsize=(width, 1.0 + 0.9 * (self.n_blocks + 2)))
        palette = plt.get_cmap("tab10")
        ax.scatter([xs[()]], [0], s=60, c="black", zorder=3)
        ax.annotate("input", (xs[()], 0), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
        for key, x in xs.items():
            if not key:
                continue
            depth = len(key)
            px = xs[key[:-1]]
            ax.plot([px, x], [-(depth - 1), -depth], color="0.5", lw=1, zorder=1)
            node = key[-1]
            skip = node is None
            if skip:
                ax.scatter([x], [-depth], s=80, marker="x", c="0.4", zorder=3)
            else:
                ax.scatter([x], [-depth], s=80, marker="s", c="white", edgecolors="black", zorder=3)
            label = "skip" if skip else f"n{node}"
            ax.annotate(label, (x, -depth), textcoords="offset points", xytext=(7, 2), fontsize=7)
        for i, (_, tasks) in enumerate(leaves):
            for j, task in enumerate(tasks):
                color = palette(groups[task] % 10) if groups and task in groups else "black"
                ax.annotate(task, (float(i), -self.n_blocks), textcoords="offset points",
                            xytext=(0, -14 - 10 * j), ha="center", fontsize=7, color=color)
        ax.set_yticks([-(level + 1) for level in range(self.n_blocks)], list(self.blocks))
        ax.set_xticks([])
        ax.set_ylim(-self.n_blocks - 0.4 - 0.25 * max(len(t) for _, t in leaves), 0.6)
        ax.set_xlim(-0.8, len(leaves) - 0.2)
        for side in ("top", "right", "bottom"):
            ax.spines[side].set_visible(False)
        ax.set_title(title or "sharing plan", fontsize=9)
        fig.tight_layout()
        return fig


def _weight_groups(plan: Plan, level: int) -> frozenset[frozenset[str]]:
    """Tasks grouped by the set of weights they use at ``level`` (skips excluded)."""
    groups: dict[int, set[str]] = {}
    for task in plan.tasks:
        node = plan.nodes[task][level]
        if node is not None:
            groups.setdefault(node, set()).add(task)
    return frozenset(frozenset(g) for g in groups.values())
