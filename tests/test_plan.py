"""The sharing Plan: JSON form, identity up to relabelling, validation, costs, drawing."""

from __future__ import annotations

import doctest
import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import branchbench.core.plan as plan_module  # noqa: E402
from branchbench.core.backbones import mlp_backbone  # noqa: E402
from branchbench.core.plan import Plan, PlanError  # noqa: E402
from branchbench.core.tasks import TaskSpec  # noqa: E402

TASKS = ["t0", "t1", "t2"]
BLOCKS = ["b0", "b1", "b2"]
EXAMPLE = {"t0": [0, 0, 0], "t1": [0, 0, 1], "t2": [0, 1, 2]}
EXAMPLE_JSON = (
    '{"version": 1, "tasks": ["t0", "t1", "t2"], "blocks": ["b0", "b1", "b2"],\n'
    ' "nodes": {"t0": [0, 0, 0], "t1": [0, 0, 1], "t2": [0, 1, 2]}}'
)


@pytest.fixture
def example() -> Plan:
    return Plan(TASKS, BLOCKS, EXAMPLE)


@pytest.fixture
def backbone():
    return mlp_backbone(8, (16, 16, 12))


def specs(names):
    return [TaskSpec(n, "binary") for n in names]


def test_docstrings_run():
    result = doctest.testmod(plan_module)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------ JSON form
def test_json_round_trip(example):
    again = Plan.from_json(example.to_json())
    assert again == example
    assert again.nodes == example.nodes and again.tasks == example.tasks
    assert again.blocks == example.blocks


def test_json_matches_design_form(example):
    assert json.loads(example.to_json()) == json.loads(EXAMPLE_JSON)
    assert Plan.from_json(EXAMPLE_JSON).nodes == example.nodes


def test_json_keeps_skips():
    plan = Plan(["a", "b"], ["b0", "b1"], {"a": [0, None], "b": [None, 0]})
    assert json.loads(plan.to_json())["nodes"] == {"a": [0, None], "b": [None, 0]}
    assert Plan.from_json(plan.to_json()).nodes == plan.nodes


def test_json_errors():
    with pytest.raises(PlanError, match="does not parse"):
        Plan.from_json("{not json")
    with pytest.raises(PlanError, match="version 7"):
        Plan.from_dict({"version": 7, "tasks": TASKS, "blocks": BLOCKS, "nodes": EXAMPLE})
    with pytest.raises(PlanError, match="lacks the key 'nodes'"):
        Plan.from_dict({"version": 1, "tasks": TASKS, "blocks": BLOCKS})


# ------------------------------------------------------------------ identity
def test_equal_up_to_relabelling(example):
    relabelled = Plan(TASKS, BLOCKS, {"t0": [5, 3, 9], "t1": [5, 3, 4], "t2": [5, 7, 0]})
    assert relabelled == example
    assert hash(relabelled) == hash(example)
    assert relabelled.canonical().nodes == example.nodes
    # task order does not matter either
    reordered = Plan(list(reversed(TASKS)), BLOCKS, EXAMPLE)
    assert reordered == example and hash(reordered) == hash(example)


def test_different_sharing_not_equal(example):
    other = Plan(TASKS, BLOCKS, {"t0": [0, 0, 0], "t1": [0, 1, 1], "t2": [0, 1, 2]})
    assert other != example
    skipping = Plan(TASKS, BLOCKS, {"t0": [0, 0, 0], "t1": [0, 0, 1], "t2": [0, None, 2]})
    assert skipping != example
    assert Plan(TASKS, ["x", "y", "z"], EXAMPLE) != example
    assert len({example, Plan(TASKS, BLOCKS, EXAMPLE), other}) == 2


# ----------------------------------------------------------------- structure
def test_partitions_of_docstring_example(example):
    assert example.partition(0) == [frozenset(TASKS)]
    assert set(example.partition(1)) == {frozenset({"t0", "t1"}), frozenset({"t2"})}
    assert set(example.partition(2)) == {frozenset({"t0"}), frozenset({"t1"}), frozenset({"t2"})}
    assert example.activations(1) == {(0, 0): ["t0", "t1"], (0, 1): ["t2"]}
    assert example.nodes_used(2) == [0, 1, 2]
    assert example.is_tree and example.require_tree() is example


def test_non_refining_plan_is_not_a_tree():
    # a and b share node 0 at block b1 but arrive from different nodes at b0
    plan = Plan(["a", "b", "c"], ["b0", "b1"], {"a": [0, 0], "b": [1, 0], "c": [1, 1]})
    assert not plan.is_tree
    with pytest.raises(PlanError, match=r"not a tree plan.*'a' and 'b'.*block 'b1'"):
        plan.require_tree()
    # a non-tree plan still has well-defined activations: 3 distinct paths at b1
    assert len(plan.activations(1)) == 3


def test_skip_is_not_a_tree():
    plan = Plan(["a", "b"], ["b0", "b1"], {"a": [0, 0], "b": [0, None]})
    assert plan.has_skips and plan.has_skip(1) and not plan.has_skip(0)
    with pytest.raises(PlanError, match=r"'b' skips block 'b1'"):
        plan.require_tree()


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("nodes", "match"),
    [
        ({**EXAMPLE, "t9": [0, 0, 0]}, r"unknown task\(s\) \['t9'\]"),
        ({"t0": [0, 0, 0], "t1": [0, 0, 1]}, r"no nodes given for task\(s\) \['t2'\]"),
        ({**EXAMPLE, "t1": [0, 0]}, r"task 't1' has 2 node ids but the plan has 3 blocks"),
        ({**EXAMPLE, "t2": [0, -1, 2]}, r"task 't2', block 'b1': node id -1 is not a non-negative"),
        ({**EXAMPLE, "t2": [0, 1.5, 2]}, r"task 't2', block 'b1': node id 1.5 is not"),
        ({**EXAMPLE, "t2": [0, "1", 2]}, r"task 't2', block 'b1': node id '1' is not"),
        ({**EXAMPLE, "t0": [True, 0, 0]}, r"task 't0', block 'b0': node id True is not"),
    ],
)
def test_invalid_plans_raise(nodes, match):
    with pytest.raises(PlanError, match=match):
        Plan(TASKS, BLOCKS, nodes)


def test_empty_and_repeated_names_raise():
    with pytest.raises(PlanError, match="at least one task"):
        Plan([], BLOCKS, {})
    with pytest.raises(PlanError, match="at least one block"):
        Plan(TASKS, [], {t: [] for t in TASKS})
    with pytest.raises(PlanError, match="task names repeat"):
        Plan(["a", "a"], ["b0"], {"a": [0]})


def test_check_fits(example):
    assert example.check_fits(TASKS, 3) is example
    with pytest.raises(PlanError, match=r"task\(s\) \['t2'\] that the benchmark lacks"):
        example.check_fits(["t0", "t1"], 3)
    with pytest.raises(PlanError, match=r"lacks the benchmark's task\(s\) \['t3'\]"):
        example.check_fits([*TASKS, "t3"], 3)
    with pytest.raises(PlanError, match="3 blocks but the backbone has 4"):
        example.check_fits(TASKS, 4)


# ------------------------------------------------------------------ builders
def test_from_partitions_builds_the_expected_plan(example):
    plan = Plan.from_partitions(
        TASKS, BLOCKS, [[TASKS], [{"t0", "t1"}, {"t2"}], [{"t0"}, {"t1"}, {"t2"}]]
    )
    assert plan == example
    assert plan.nodes == example.nodes  # groups numbered in the order given


def test_from_partitions_rejects_bad_partitions():
    with pytest.raises(PlanError, match=r"not a tree plan.*block 'b1'"):
        Plan.from_partitions(TASKS, ["b0", "b1"], [[{"t0", "t1"}, {"t2"}], [{"t0", "t2"}, {"t1"}]])
    with pytest.raises(PlanError, match=r"partition misses task\(s\) \['t2'\]"):
        Plan.from_partitions(TASKS, ["b0"], [[{"t0", "t1"}]])
    with pytest.raises(PlanError, match="task 't0' is in two groups"):
        Plan.from_partitions(TASKS, ["b0"], [[{"t0", "t1"}, {"t0", "t2"}]])
    with pytest.raises(PlanError, match="unknown task 'zz'"):
        Plan.from_partitions(TASKS, ["b0"], [[{"t0", "t1", "t2", "zz"}]])
    with pytest.raises(PlanError, match="1 partitions given for 2 blocks"):
        Plan.from_partitions(TASKS, ["b0", "b1"], [[TASKS]])


def test_shared_bottom_and_independent_builders():
    shared = Plan.shared_bottom(TASKS, BLOCKS)
    indep = Plan.independent(TASKS, BLOCKS)
    assert all(len(shared.partition(level)) == 1 for level in range(3))
    assert all(len(indep.partition(level)) == 3 for level in range(3))
    assert shared.is_tree and indep.is_tree


# ---------------------------------------------------------------------- costs
def test_param_count_shared_and_independent(backbone):
    blocks = backbone.block_names
    shared = Plan.shared_bottom(TASKS, blocks)
    indep = Plan.independent(TASKS, blocks)
    assert shared.param_count(backbone) == backbone.shared_bottom_params
    assert indep.param_count(backbone) == len(TASKS) * backbone.shared_bottom_params
    assert shared.budget_ratio(backbone) == 1.0
    assert indep.budget_ratio(backbone) == len(TASKS)
    heads = specs(TASKS)
    head_params = sum(backbone.head_params(t) for t in heads)
    assert shared.param_count(backbone, heads=heads) == backbone.shared_bottom_params + head_params


def test_skip_adds_the_shortcut_once(backbone):
    blocks = backbone.block_names
    assert backbone.shortcut_params == [8 * 16, 0, 16 * 12]  # projections where shape changes
    base = backbone.shared_bottom_params
    # two tasks skip block 0 (a projection); the shortcut is counted once
    one_skip = Plan(TASKS, blocks, {"t0": [0, 0, 0], "t1": [None, 0, 0], "t2": [None, 0, 0]})
    assert one_skip.param_count(backbone) == base + backbone.shortcut_params[0]
    # everyone skips block 2: no node there, only its shortcut
    all_skip = Plan(TASKS, blocks, {t: [0, 0, None] for t in TASKS})
    assert all_skip.param_count(backbone) == (
        backbone.block_params[0] + backbone.block_params[1] + backbone.shortcut_params[2]
    )


def test_flops_count_each_distinct_activation_once(backbone, example):
    blocks = backbone.block_names
    heads = specs(TASKS)
    head_flops = sum(backbone.head_flops(t) for t in heads)
    per_net = sum(backbone.block_flops)
    assert per_net > 0
    assert Plan.shared_bottom(TASKS, blocks).flops(backbone) == per_net
    assert Plan.shared_bottom(TASKS, blocks).flops(backbone, heads=heads) == per_net + head_flops
    assert Plan.independent(TASKS, blocks).flops(backbone, heads=heads) == 3 * per_net + head_flops
    tree = Plan(TASKS, blocks, EXAMPLE)
    bf = backbone.block_flops
    assert tree.flops(backbone) == bf[0] + 2 * bf[1] + 3 * bf[2]
    # non-tree: a shared node reached by two paths is two activations
    shared_weights = Plan(TASKS, blocks, {"t0": [0, 0, 0], "t1": [1, 0, 0], "t2": [1, None, 0]})
    assert shared_weights.flops(backbone) == (
        2 * bf[0] + 2 * bf[1] + backbone.shortcut_flops[1] + 3 * bf[2]
    )


# ---------------------------------------------------------------------- figure
def test_draw_tree_plan(example):
    fig = example.draw(title="example", groups={"t0": 0, "t1": 0, "t2": 1})
    try:
        assert isinstance(fig, Figure)
        assert fig.axes[0].get_title() == "example"
    finally:
        plt.close(fig)


def test_draw_plan_with_skips():
    plan = Plan(TASKS, BLOCKS, {"t0": [0, None, 0], "t1": [0, 0, None], "t2": [None, 0, 0]})
    fig = plan.draw()
    try:
        assert isinstance(fig, Figure)
        texts = [t.get_text() for t in fig.axes[0].texts]
        assert "skip" in texts and {"t0", "t1", "t2"} <= set(texts)
    finally:
        plt.close(fig)
