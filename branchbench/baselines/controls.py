"""Controls matched in size and shape to a learned method's own plan.

A control reads the plan that a learned method (its *source*) found in the
same cell (same data, data seed, training seed, protocol and budget), changes
only *which tasks* go where, and is retrained by the same trainer. Its
difference to the method therefore isolates the choice of grouping from the
network's size and shape:

* ``permuted_tree``: the source's plan with its task labels permuted by a
  seeded random permutation that changes the partition (each task takes
  another task's path, and at some block the groups of tasks sharing an
  activation differ from the source's). It has exactly the source's
  parameters, FLOPs and shape. A plan whose partitions no permutation changes
  (shared-bottom, independent networks, any plan whose every block is shared
  by all tasks or by none, or whose tasks differ only in skipping rather than
  branching) has no such control: the cell fails with
  :class:`UndefinedControl` (failure kind ``undefined``, tag
  ``bb.control_undefined``), which reports count as "undefined", not as a
  failure of the method.
* ``random_policy`` (for select-or-skip methods, AdaShare): every task keeps
  the number of blocks it skips in the source's plan, at blocks drawn at
  random (seeded), and a draw equal to the source's plan is drawn again
  (``policy_draws``). Undefined when each task skips none or all of the
  skippable blocks (only one such policy exists: the source's own). It matches
  the number of skips per task only, not the parameters or FLOPs: which
  blocks some task runs, and which activations tasks share, change with the
  draw.

Seeds: a control draws from a generator seeded by its kind and the cell's
training seed. The data seed enters through the source's plan, which the draw
is conditioned on (a draw is kept only when it differs from that plan); two
cells with the same training seed and the same source plan get the same
control.

Declaring one in a sweep config (the source's name, its registered kind when
the name is a labelled variant, and its options as JSON, exactly as the
source's cell has them, so the control reads that very cell)::

    [methods.dmtg_k3]
    kind = "dmtg"
    k = 3

    [methods.dmtg_k3_permuted]
    kind = "permuted_tree"
    source = "dmtg_k3"
    source_kind = "dmtg"
    source_options = '{"k": 3}'

or, for every learned method of a sweep at once, ``[sweep] controls =
["permuted_tree", "random_policy"]`` (see :func:`branchbench.config.cell_configs`).
The run is tagged ``bb.control_of`` = the source's name; a control is
budget-aware exactly when its source is, and is charged the source's cost in
the ``reused.*`` columns.
"""

from __future__ import annotations

import json
import random
from typing import Any, ClassVar

from branchbench.core.method import Method, Option, OptionError, Requirement, SearchResult
from branchbench.core.plan import Plan, PlanError

SOURCE_ROLE = "source"
MAX_DRAWS = 10_000


class UndefinedControl(PlanError):
    """No control of this kind differs from the source's plan (e.g. a permuted shared-bottom)."""


# ------------------------------------------------------------------ permuted
def partitions(plan: Plan) -> tuple[frozenset[frozenset[str]], ...]:
    """Each block's partition of the tasks by shared activation."""
    return tuple(frozenset(plan.partition(level)) for level in range(plan.n_blocks))


def permutation_invariant(plan: Plan) -> bool:
    """Whether every permutation of the task labels leaves every block's partition of ``plan`` unchanged.

    The permutations that keep the partitions form a group, and transpositions
    generate every permutation, so it is enough that none changes them. True
    for shared-bottom and independent networks, for any plan whose every block
    is shared by all tasks or by none, and for plans whose tasks differ only in
    skips that no swap regroups (two tasks, one skipping a block: swapping
    them changes the plan, not who shares with whom).
    """
    tasks = list(plan.tasks)
    source = partitions(plan)
    for i, a in enumerate(tasks):
        for b in tasks[i + 1 :]:
            if partitions(relabel(plan, {**{t: t for t in tasks}, a: b, b: a})) != source:
                return False
    return True


def relabel(plan: Plan, mapping: dict[str, str]) -> Plan:
    """The plan in which task ``mapping[t]`` takes task ``t``'s path."""
    return Plan(plan.tasks, plan.blocks, {mapping[t]: plan.nodes[t] for t in plan.tasks})


def permute_plan(plan: Plan, rng: random.Random) -> tuple[Plan, dict[str, str], int]:
    """A uniformly random task permutation among those that change a partition of ``plan``; (plan, mapping, draws).

    Rejection sampling (each draw a uniform permutation, kept when some
    block's partition changes) is uniform over those permutations. Raises
    :class:`UndefinedControl` when none changes a partition.
    """
    if permutation_invariant(plan):
        raise UndefinedControl(
            "permuted_tree: no permutation of the task labels changes which tasks share at any block of the "
            "source's plan (at every block all tasks share, or none do: e.g. shared-bottom or independent "
            "networks; or its tasks differ only in skips), so it has no permuted control; the control is "
            "undefined for this cell"
        )
    tasks = list(plan.tasks)
    source = partitions(plan)
    for draw in range(1, MAX_DRAWS + 1):
        order = tasks[:]
        rng.shuffle(order)
        mapping = dict(zip(tasks, order, strict=True))
        permuted = relabel(plan, mapping)
        if partitions(permuted) != source:
            return permuted, mapping, draw
    raise UndefinedControl(  # pragma: no cover - the keeping permutations are a proper subgroup: at most half
        f"permuted_tree: no permutation changing a partition in {MAX_DRAWS} draws"
    )


# -------------------------------------------------------------- random policy
def skippable_blocks(plan: Plan, stem: int) -> list[int]:
    """Blocks a random policy may skip: all but the first ``stem`` (unless the source skips there)."""
    skipped_in_stem = any(plan.nodes[t][level] is None for t in plan.tasks for level in range(min(stem, plan.n_blocks)))
    first = 0 if skipped_in_stem else stem
    return list(range(first, plan.n_blocks))


def random_policy(plan: Plan, rng: random.Random, stem: int = 1) -> tuple[Plan, dict[str, int], int]:
    """Select-or-skip over shared weights with each task's number of skips kept, other than ``plan``;
    (plan, skips per task, draws).

    Each task's skipped blocks are drawn uniformly; a draw equal to ``plan`` is
    drawn again (rejection sampling: uniform over the other policies). Raises
    :class:`UndefinedControl` when each task skips none or all of the
    skippable blocks (no other policy exists), and :class:`PlanError` when the
    source is not a select-or-skip plan (it uses two sets of weights at a block).
    """
    for level, block in enumerate(plan.blocks):
        if len(plan.nodes_used(level)) > 1:
            raise PlanError(
                f"random_policy: the source's plan uses {len(plan.nodes_used(level))} sets of weights at block "
                f"{block!r}; a random select-or-skip policy needs one shared set per block (AdaShare's plans). "
                "Use permuted_tree for tree plans"
            )
    eligible = skippable_blocks(plan, stem)
    skips = {t: sum(plan.nodes[t][level] is None for level in eligible) for t in plan.tasks}
    if all(k in (0, len(eligible)) for k in skips.values()):
        raise UndefinedControl(
            f"random_policy: every task of the source's plan skips none or all of the {len(eligible)} skippable "
            "blocks, so the only policy with its numbers of skips is the source's own; the control is undefined "
            "for this cell"
        )
    for draw in range(1, MAX_DRAWS + 1):
        nodes = {}
        for task in plan.tasks:
            skipped = set(rng.sample(eligible, skips[task]))
            nodes[task] = [None if level in skipped else 0 for level in range(plan.n_blocks)]
        drawn = Plan(plan.tasks, plan.blocks, nodes)
        if drawn != plan:
            return drawn, skips, draw
    raise UndefinedControl(  # pragma: no cover - a draw equals the source with probability at most 1/2
        f"random_policy: no policy other than the source's in {MAX_DRAWS} draws"
    )


# ------------------------------------------------------------------ methods
class _Control(Method):
    """A control of another method's plan in the same cell (see the module docstring)."""

    budget_aware = False  # per instance: the source's (set in check)
    options: ClassVar[dict[str, Option]] = {
        "source": Option("", "name of the method whose plan this controls (its name in the sweep; required)"),
        "source_kind": Option("", "registered kind of the source when its name is a labelled variant "
                              "(default: the name)"),
        "source_options": Option("{}", "the source's options as a JSON object, exactly as its cell has them"),
    }

    def check(self) -> None:
        from branchbench.plugins import RegistryError, get_method_class

        p = self.params
        if not p["source"]:
            raise OptionError(f"{self.owner}: option source is required: the name of the learned method whose "
                              "plan it controls, e.g. source = \"learn_to_branch\"")
        try:
            options = json.loads(p["source_options"])
        except ValueError as err:
            raise OptionError(f"{self.owner}: source_options={p['source_options']!r} is not JSON ({err}); give "
                              "the source's options as a JSON object, e.g. '{\"k\": 3}'") from None
        if not isinstance(options, dict):
            raise OptionError(f"{self.owner}: source_options must be a JSON object, e.g. '{{\"k\": 3}}'")
        try:
            source_cls = get_method_class(self.source_kind)
        except RegistryError as err:
            raise OptionError(f"{self.owner}: source {self.source_kind!r}: {err}") from None
        if "control" in source_cls.tags:
            raise OptionError(f"{self.owner}: source {self.source_kind!r} is itself a control; give the learned "
                              "method it controls")
        source = source_cls(**options)
        self.budget_aware = bool(source.budget_aware)

    @property
    def source_kind(self) -> str:
        return self.params["source_kind"] or self.params["source"]

    def source_options(self) -> dict[str, Any]:
        return json.loads(self.params["source_options"])

    def requires(self) -> dict[str, Requirement]:
        options = tuple(sorted(self.source_options().items()))
        return {SOURCE_ROLE: Requirement(self.params["source"], options, same_budget=True, kind=self.source_kind)}

    def control_of(self) -> str:
        return self.params["source"]

    def source_plan(self, bench, ctx) -> Plan:
        plan = ctx.reference(SOURCE_ROLE).plan
        plan.check_fits(bench.task_names, len(bench.backbone.blocks))
        return plan


def _kit_options(nodes: dict[str, list[int | None]]) -> dict[str, str]:
    """The conformance kit's source: a fixed plan over its benchmark (4 tasks, 3 blocks fc0..fc2)."""
    plan = {"tasks": list(nodes), "blocks": ["fc0", "fc1", "fc2"], "nodes": nodes}
    return {"source": "fixed_plan", "source_options": json.dumps({"plan": json.dumps(plan)})}


class PermutedTree(_Control):
    """The source's plan with its task labels permuted: same parameters, FLOPs and shape."""

    name = "permuted_tree"
    version = 2  # a draw must change some block's partition, not only the plan (they differ only with skips)
    tags = frozenset({"needs_reference", "control", "stochastic"})
    check_options = _kit_options({"t0": [0, 0, 0], "t1": [0, 0, 0], "t2": [0, 0, 1], "t3": [0, 0, 1]})

    def search(self, bench, budget, ctx) -> SearchResult:
        del budget  # the source's plan already meets it; the permuted one has the same parameters
        plan = self.source_plan(bench, ctx)
        permuted, mapping, draws = permute_plan(plan, random.Random(f"permuted_tree-{ctx.seed}"))
        moved = sum(a != b for a, b in mapping.items())
        return SearchResult(permuted, cost={"permutation_draws": float(draws), "tasks_moved": float(moved)},
                            artifacts={"permutation.json": {"takes_path_of": {b: a for a, b in mapping.items()},
                                                            "source_plan": plan.to_dict()}})


class RandomPolicy(_Control):
    """A random select-or-skip policy with each task's number of skips in the source's plan."""

    name = "random_policy"
    version = 2  # a draw equal to the source's own plan is drawn again
    tags = frozenset({"needs_reference", "control", "stochastic", "skips"})
    check_options = _kit_options({"t0": [0, None, 0], "t1": [0, 0, None], "t2": [0, 0, 0], "t3": [0, None, None]})

    def stem(self) -> int:
        """Blocks every task executes (AdaShare's stem, block 0, unless its ``skip_first_block``)."""
        return 0 if self.source_options().get("skip_first_block", False) else 1

    def search(self, bench, budget, ctx) -> SearchResult:
        del budget  # not used: the policy keeps the source's skips per task
        plan = self.source_plan(bench, ctx)
        drawn, skips, draws = random_policy(plan, random.Random(f"random_policy-{ctx.seed}"), self.stem())
        return SearchResult(drawn, cost={"skips": float(sum(skips.values())), "policy_draws": float(draws)},
                            artifacts={"policy.json": {"skips_per_task": skips, "source_plan": plan.to_dict()}})
