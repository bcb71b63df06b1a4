"""Controls matched in size and shape: permuted_tree and random_policy, in isolation, in a cell, in a sweep."""

from __future__ import annotations

import json
import random

import pytest
from _tiny import TINY, tiny_bench

from branchbench.baselines.controls import (
    PermutedTree,
    RandomPolicy,
    UndefinedControl,
    permutation_invariant,
    permute_plan,
    random_policy,
)
from branchbench.cell import CellConfig, run_cell
from branchbench.config import ConfigError, cell_configs, parse_config
from branchbench.context import LocalContext
from branchbench.core.budget import Budget
from branchbench.core.method import Reference
from branchbench.core.options import OptionError
from branchbench.core.plan import Plan, PlanError
from branchbench.resolve import Resolver

TASKS = ["a", "b", "c", "d", "e"]
BLOCKS = ["b0", "b1", "b2"]
TREE = Plan(TASKS, BLOCKS, {"a": [0, 0, 0], "b": [0, 0, 0], "c": [0, 1, 1], "d": [0, 1, 2], "e": [0, 1, 2]})


def _shape(plan: Plan) -> list[list[int]]:
    """Per block, the sizes of the groups of tasks sharing an activation (the tree without its labels)."""
    return [sorted(len(g) for g in plan.partition(level)) for level in range(plan.n_blocks)]


def _ctx_with_source(bench, plan: Plan, seed: int = 0) -> LocalContext:
    ref = Reference("src", None, plan, {}, {}, 0.0, False)
    return LocalContext(bench, seed=seed, references={"source": ref})


# ----------------------------------------------------------------- permuted
def _permuted(bench, source: Plan, seed: int) -> Plan:
    return PermutedTree(source="learn_to_branch").search(bench, Budget(None), _ctx_with_source(bench, source, seed)).plan


@pytest.mark.parametrize("seed", range(5))
def test_permuted_plan_has_the_same_size_and_shape_but_another_partition(seed):
    bench = tiny_bench(tasks=4, groups=2)
    source = Plan(bench.task_names, bench.backbone.block_names,
                  {"t0": [0, 0, 0], "t1": [0, 1, 1], "t2": [0, 1, 2], "t3": [0, 0, 0]})
    permuted = _permuted(bench, source, seed)
    backbone = bench.backbone
    assert permuted.param_count(backbone) == source.param_count(backbone)
    assert permuted.flops(backbone, heads=bench.tasks) == source.flops(backbone, heads=bench.tasks)
    assert _shape(permuted) == _shape(source)  # the same tree, other tasks on its paths
    assert any(set(permuted.partition(level)) != set(source.partition(level)) for level in range(source.n_blocks))
    again = _permuted(bench, source, seed)
    assert again == permuted  # seeded


def test_permutation_is_uniform_over_the_changing_ones():
    rng = random.Random(0)
    seen = {permute_plan(TREE, rng)[0] for _ in range(300)}
    assert TREE not in seen and len(seen) > 5  # many different controls, never the source itself


@pytest.mark.parametrize("make", [Plan.shared_bottom, Plan.independent])
def test_permuted_control_is_undefined_where_no_permutation_changes_the_plan(make):
    plan = make(TASKS, BLOCKS)
    assert permutation_invariant(plan)
    with pytest.raises(UndefinedControl, match="undefined"):
        permute_plan(plan, random.Random(0))
    # a plan that shares every block by all tasks or by none is invariant too; one split is not
    assert permutation_invariant(Plan(TASKS, BLOCKS, {t: [0, 0, i] for i, t in enumerate(TASKS)}))
    assert not permutation_invariant(TREE)


def test_permuted_control_changes_who_shares_not_only_the_plan():
    """With skips a swap can change the plan but not the partition: such a draw is no control of the grouping."""
    only_skips = Plan(["a", "b"], BLOCKS, {"a": [0, None, 0], "b": [0, 0, 0]})  # a swap keeps {a} | {b}
    assert permutation_invariant(only_skips)
    with pytest.raises(UndefinedControl, match="undefined"):
        permute_plan(only_skips, random.Random(0))
    # a <-> b keeps every partition ({a} | {b} | {c, d} below block 0); other permutations regroup
    source = Plan(["a", "b", "c", "d"], BLOCKS, {"a": [0, None, 0], "b": [0, 0, 0], "c": [0, 1, 1], "d": [0, 1, 1]})
    assert not permutation_invariant(source)
    for seed in range(50):
        permuted = permute_plan(source, random.Random(seed))[0]
        assert any(set(permuted.partition(level)) != set(source.partition(level)) for level in range(3)), seed


def test_control_options_are_checked_while_resolving():
    with pytest.raises(OptionError, match="source is required"):
        PermutedTree()
    with pytest.raises(OptionError, match="not JSON"):
        PermutedTree(source="dmtg", source_options="{k: 3}")
    with pytest.raises(OptionError, match="unknown method"):
        PermutedTree(source="nope")
    with pytest.raises(OptionError, match="itself a control"):
        PermutedTree(source="random_policy")
    with pytest.raises(OptionError, match="option k"):
        PermutedTree(source="dmtg", source_options='{"k": 2.5}')
    # budget-aware exactly when its source is
    assert PermutedTree(source="learn_to_branch").budget_aware
    assert not PermutedTree(source="learn_to_branch_uncapped").budget_aware


# ------------------------------------------------------------ random policy
def test_random_policy_keeps_each_tasks_number_of_skips():
    source = Plan(TASKS, ["s", *BLOCKS], {"a": [0, None, 0, 0], "b": [0, 0, None, None], "c": [0, 0, 0, 0],
                                          "d": [0, None, None, None], "e": [0, 0, 0, None]})
    drawn = {random_policy(source, random.Random(seed))[0] for seed in range(30)}
    assert source not in drawn
    assert len(drawn) > 1  # random
    for plan in drawn:
        for task in TASKS:
            assert plan.nodes[task].count(None) == source.nodes[task].count(None)
            assert plan.nodes[task][0] == 0  # the stem is never skipped
    assert {n for p in drawn for t in TASKS for n in p.nodes[t]} == {0, None}  # shared weights only


def test_random_policy_is_never_the_source_itself():
    source = Plan(TASKS, ["s", *BLOCKS], {"a": [0, None, 0, 0], **{t: [0, 0, 0, 0] for t in TASKS[1:]}})
    draws = [random_policy(source, random.Random(seed)) for seed in range(50)]  # a's skip: 1 of 3 blocks
    assert all(plan != source for plan, _, _ in draws)
    assert {n for _, _, n in draws} > {1}  # some first draws were the source's own policy, drawn again
    assert {plan.nodes["a"].index(None) for plan, _, _ in draws} == {2, 3}


def test_random_policy_is_undefined_or_refused_where_it_cannot_differ():
    with pytest.raises(UndefinedControl):  # AdaShare committing to select everywhere
        random_policy(Plan.shared_bottom(TASKS, BLOCKS), random.Random(0))
    with pytest.raises(PlanError, match="permuted_tree"):
        random_policy(TREE, random.Random(0))


def test_random_policy_method_reads_the_source_plan():
    bench = tiny_bench()
    source = Plan(bench.task_names, bench.backbone.block_names,
                  {"t0": [0, None, 0], "t1": [0, 0, 0], "t2": [0, 0, None], "t3": [0, 0, 0]})
    result = RandomPolicy(source="adashare").search(bench, Budget(None), _ctx_with_source(bench, source))
    assert [result.plan.nodes[t].count(None) for t in result.plan.tasks] == [1, 0, 1, 0]
    assert result.plan != source and result.cost["policy_draws"] >= 1


# ---------------------------------------------------------------- in a cell
FAST = {"epochs": 3, "batch_size": 64, "early_stopping": 0}


def test_control_cell_reads_its_source_and_is_tagged(tracking):
    options = {"source": "random_tree"}
    outcome = run_cell(CellConfig("synthetic", "permuted_tree", dict(TINY), options, budget=2.0, protocol=FAST),
                       tracking)
    assert outcome.status == "finished", outcome.error
    run = tracking.get_run(outcome.run_id)
    assert run.data.tags["bb.control_of"] == "random_tree"
    assert run.data.tags["bb.budget"] == "2"
    source = tracking.runs("tags.`bb.method` = 'random_tree'")
    assert len(source) == 1
    source_metrics = source[0].data.metrics
    assert run.data.metrics["params"] == source_metrics["params"]
    assert run.data.metrics["flops"] == source_metrics["flops"]
    assert tracking.load_json(outcome.run_id, "plan.json") != tracking.load_json(source[0].info.run_id, "plan.json")
    # charged the source's run in its own columns
    assert run.data.metrics["reused.seconds"] > 0
    assert run.data.metrics["reused.flops"] == pytest.approx(source_metrics["search.flops"] + source_metrics["train.flops"])


def test_undefined_control_fails_with_its_own_kind(tracking):
    outcome = run_cell(CellConfig("synthetic", "permuted_tree", dict(TINY), {"source": "shared_bottom"},
                                  protocol=FAST), tracking)
    assert outcome.status == "failed" and outcome.failure_kind == "undefined"
    tags = tracking.get_run(outcome.run_id).data.tags
    assert tags["bb.control_undefined"] == "true" and tags["bb.control_of"] == "shared_bottom"


# ------------------------------------------------------------------- sweeps
SWEEP = {
    "sweep": {"seeds": [0], "budgets": [1.5, 2.0], "controls": ["permuted_tree", "random_policy"]},
    "datasets": {"synthetic": {"tasks": 4, "groups": 2}},
    "methods": {"learn_to_branch": {}, "dmtg_k2": {"kind": "dmtg", "k": 2}, "adashare": {},
                "shared_bottom": {}, "random_tree": {}},
}


def test_sweep_controls_add_one_control_per_learned_method_reading_its_cell():
    configs = cell_configs(parse_config(SWEEP))
    resolver = Resolver()
    cells = [resolver.resolve(c) for c in configs]
    controls = [c for c in cells if c.method in ("permuted_tree", "random_policy")]
    got = sorted((c.method, c.method_options["source"], str(c.budget)) for c in controls)
    assert got == [("permuted_tree", "dmtg_k2", "1.5"), ("permuted_tree", "dmtg_k2", "2"),
                   ("permuted_tree", "learn_to_branch", "1.5"), ("permuted_tree", "learn_to_branch", "2"),
                   ("random_policy", "adashare", "none")]
    by_key = {(c.method, str(c.budget)): c.hash for c in cells}
    for control in controls:  # the very cell of the sweep, not a copy of it
        source = control.dependency("source")
        assert by_key[(control.method_options["source"], str(control.budget))] == source.hash
    assert json.loads(next(c for c in controls if c.method_options["source"] == "dmtg_k2")
                      .method_options["source_options"]) == {"k": 2}


def test_sweep_controls_of_a_finetuning_method_are_refused():
    """A control retrains from scratch: against a fine-tuned source it would differ in training too."""
    finetuned = {**SWEEP, "methods": {"dmtg_k2": {"kind": "dmtg", "k": 2, "finetune": True}}}
    with pytest.raises(ConfigError, match="'dmtg_k2' fine-tunes.*permuted_tree"):
        cell_configs(parse_config(finetuned))
    with pytest.raises(ConfigError, match="fine-tunes"):  # the sweep's setting
        cell_configs(parse_config({**SWEEP, "sweep": {**SWEEP["sweep"], "finetune": True}}))
    from branchbench.config import control_components

    config = parse_config(SWEEP)
    with pytest.raises(ConfigError, match="fine-tunes"):  # the command line's
        control_components(config, ["learn_to_branch"], {}, finetune=True)
    assert control_components(config, ["learn_to_branch"], {}, finetune=False)


def test_sweep_controls_must_be_controls():
    with pytest.raises(ConfigError, match="not a control"):
        cell_configs(parse_config({**SWEEP, "sweep": {"controls": ["random_tree"]}}))
    with pytest.raises(ConfigError, match="list of control names"):
        parse_config({**SWEEP, "sweep": {"controls": "permuted_tree"}})
