"""Baselines: their plans, the random tree's distribution and cap, and that grouping matters."""

from __future__ import annotations

import statistics

import pytest
from _tiny import tiny_bench

from branchbench.context import LocalContext
from branchbench.core.budget import Budget
from branchbench.core.plan import Plan
from branchbench.core.retrain import retrain
from branchbench.core.trainer import Trainer
from branchbench.datasets.synthetic import Synthetic
from branchbench.plugins import create_method


def _search(name, bench, budget=None, seed=0, **options):
    return create_method(name, **options).search(bench, Budget(budget), LocalContext(bench, seed=seed)).plan


def test_fixed_baselines(bench):
    tasks, blocks = bench.task_names, bench.backbone.block_names
    assert _search("shared_bottom", bench) == Plan.shared_bottom(tasks, blocks)
    assert _search("independent", bench) == Plan.independent(tasks, blocks)


def test_oracle_tree_is_the_true_grouping(bench):
    plan = _search("oracle_tree", bench, branch_block=1)
    assert set(plan.partition(0)) == {frozenset(bench.task_names)}
    assert set(plan.partition(1)) == set(bench.true_partition())
    assert plan.is_tree


def test_oracle_tree_refuses_data_without_groups(bench):
    import dataclasses

    with pytest.raises(ValueError, match="known task grouping"):
        _search("oracle_tree", dataclasses.replace(bench, groups=None))
    with pytest.raises(ValueError, match="branch_block=7"):
        _search("oracle_tree", bench, branch_block=7)


@pytest.mark.parametrize("budget", [1.0, 1.5, 2.0, 3.0, 4.0])
def test_random_tree_fills_the_cap_as_far_as_blocks_allow(budget):
    bench = tiny_bench(tasks=6, groups=2)
    backbone = bench.backbone
    cap = Budget(budget).cap(backbone)
    for seed in range(5):
        plan = _search("random_tree", bench, budget, seed)
        assert plan.is_tree
        used = plan.param_count(backbone)
        assert used <= cap
        # no admissible split left: the cheapest split (one more node in the last block)
        # would exceed the cap, unless every last-block group is a single task
        last = plan.partition(plan.n_blocks - 1)
        assert used + backbone.block_params[-1] > cap or all(len(g) == 1 for g in last)


def test_random_tree_seeds_give_different_trees():
    bench = tiny_bench(tasks=6, groups=2)
    plans = {_search("random_tree", bench, 3.0, seed) for seed in range(6)}
    assert len(plans) >= 3
    assert _search("random_tree", bench, 3.0, 4) == _search("random_tree", bench, 3.0, 4)


def _test_mse(bench, method, seed):
    plan = _search(method, bench, seed=seed)
    result = retrain(bench, plan, Trainer(bench.protocol, seed=seed), seed)
    return statistics.mean(v for k, v in result.metrics.items() if k.startswith("test.") and k.endswith(".mse"))


def _means(bench, methods, seeds=(0, 1, 2)):
    return {m: statistics.mean(_test_mse(bench, m, s) for s in seeds) for m in methods}


def test_grouping_matters_on_the_default_synthetic_data():
    """The default data is one where the true-group tree beats both extremes (means over 3 seeds)."""
    bench = Synthetic().load()
    mse = _means(bench, ["oracle_tree", "shared_bottom", "independent"])
    margin = 0.02 * mse["oracle_tree"]
    assert mse["oracle_tree"] + margin < mse["shared_bottom"], mse
    assert mse["oracle_tree"] + margin < mse["independent"], mse


def test_shared_bottom_beats_independent_when_all_tasks_are_one_group():
    bench = Synthetic(groups=1).load()
    mse = _means(bench, ["shared_bottom", "independent"])
    assert mse["shared_bottom"] < mse["independent"], mse
