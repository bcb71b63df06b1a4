"""Whether the true grouping lies in a method's search space, and co-sharing precision and recall."""

from __future__ import annotations

import copy
import dataclasses

import pytest
from _tiny import TINY, tiny_bench

from branchbench.cell import CellConfig, run_cell
from branchbench.core.budget import Budget
from branchbench.core.metrics import co_sharing, grouping_scores, min_recovery_params
from branchbench.core.plan import Plan
from branchbench.plugins import create_method

# 6 tasks in 3 true groups over a 3-block MLP of equal blocks (a budget of b admits b block-copies' worth)
THREE = dict(TINY, tasks=6, groups=3)


def _bench(**options):
    return tiny_bench(**{**THREE, **options})


def test_dmtg_is_feasible_with_at_least_as_many_branches_as_groups():
    bench = _bench()
    assert create_method("dmtg", k=2).feasible(bench, Budget(None)) is False
    assert create_method("dmtg", k=3).feasible(bench, Budget(None)) is True
    # K from the budget: with an empty stem a branch is the whole backbone
    assert create_method("dmtg").feasible(bench, Budget(2.0)) is False
    assert create_method("dmtg").feasible(bench, Budget(3.0)) is True


def test_learn_to_branch_is_feasible_when_its_widths_can_hold_the_groups():
    bench = _bench()
    assert create_method("learn_to_branch", widths="1,2,2").feasible(bench, Budget(None)) is False
    assert create_method("learn_to_branch", widths="1,1,3").feasible(bench, Budget(None)) is True
    assert create_method("learn_to_branch").feasible(bench, Budget(1.0)) is False  # widths 1,1,1
    assert create_method("learn_to_branch_uncapped").feasible(bench, Budget(None)) is True


def test_branched_affinity_is_feasible_when_the_cheapest_recovering_tree_fits_its_budget():
    bench = _bench()
    block_params = bench.backbone.block_params
    need = min_recovery_params(block_params, 3) / bench.backbone.shared_bottom_params
    method = create_method("branched_affinity")
    assert method.feasible(bench, Budget(need * 0.99)) is False
    assert method.feasible(bench, Budget(need * 1.01)) is True
    # without a budget, its default budget decides
    assert create_method("branched_affinity", default_budget=need * 1.01).feasible(bench, Budget(None)) is True


def test_branched_affinity_is_feasible_only_at_its_branch_points():
    """Branching only after stages, the cheapest recovering tree copies the whole last stage."""
    bench = _bench()
    backbone = copy.copy(bench.backbone)
    backbone.stages = ["a", "b", "b"]  # blocks 1-2 one stage: a tree branches after block 0 or 2 only
    staged = dataclasses.replace(bench, backbone=backbone)
    block = bench.backbone.block_params
    assert len(set(block)) == 1  # equal blocks: shared-bottom is 3 of them
    every, stages = create_method("branched_affinity"), create_method("branched_affinity", branch_points="stages")
    assert every.feasible(staged, Budget(2.0)) is True  # 2 shared blocks + 3 copies of the last: 5/3x
    assert stages.feasible(staged, Budget(2.0)) is False  # 1 shared block + 3 copies of the stage: 7/3x
    assert stages.feasible(staged, Budget(7 / 3 + 0.01)) is True
    assert stages.feasible(bench, Budget(2.0)) is True  # an MLP's blocks are each a stage: the same as every_block


def test_adashare_is_feasible_when_skip_patterns_can_tell_the_groups_apart():
    assert create_method("adashare").feasible(_bench(), Budget(None)) is True  # 3 groups <= 2^2 patterns
    five = _bench(tasks=5, groups=5)
    assert create_method("adashare").feasible(five, Budget(None)) is False
    assert create_method("adashare", skip_first_block=True).feasible(five, Budget(None)) is True  # 2^3


def test_feasibility_is_not_applicable_without_groups_or_for_baselines():
    hidden = dataclasses.replace(_bench(), groups=None)
    for name in ("dmtg", "learn_to_branch", "branched_affinity", "adashare"):
        assert create_method(name).feasible(hidden, Budget(None)) is None
    assert create_method("shared_bottom").feasible(_bench(), Budget(None)) is None


def test_min_recovery_params_is_the_tree_split_at_the_last_block():
    bench = _bench()
    tasks, blocks = bench.task_names, bench.backbone.block_names
    truth = bench.true_partition()
    plan = Plan.from_partitions(tasks, blocks, [[set(tasks)]] * 2 + [[set(g) for g in truth]])
    assert grouping_scores(plan, truth)["recovered"] == 1.0
    assert plan.param_count(bench.backbone) == min_recovery_params(bench.backbone.block_params, len(truth))


# ----------------------------------------------------------------- co-sharing
def test_co_sharing_precision_and_recall_on_hand_examples():
    truth = [frozenset("ab"), frozenset("cd")]
    assert co_sharing([frozenset("abcd")], truth) == (pytest.approx(2 / 6), 1.0)  # merged: every pair shares
    assert co_sharing([frozenset("a"), frozenset("b"), frozenset("cd")], truth) == (1.0, 0.5)  # fragmented
    assert co_sharing([frozenset("ac"), frozenset("bd")], truth) == (0.0, 0.0)  # wrong pairs
    assert co_sharing(truth, truth) == (1.0, 1.0)
    assert co_sharing([frozenset(t) for t in "abcd"], truth) == (None, 0.0)  # nothing shared: undefined
    assert co_sharing(truth, [frozenset(t) for t in "abcd"]) == (0.0, None)  # no true pair: undefined


def test_grouping_scores_give_co_sharing_per_block():
    tasks, blocks = ["a", "b", "c", "d"], ["b0", "b1"]
    plan = Plan.from_partitions(tasks, blocks, [[set("abcd")], [{"a"}, {"b"}, {"c", "d"}]])
    scores = grouping_scores(plan, [frozenset("ab"), frozenset("cd")])
    assert scores["precision.b0"] == pytest.approx(1 / 3) and scores["recall.b0"] == 1.0
    assert scores["precision.b1"] == 1.0 and scores["recall.b1"] == 0.5


# ---------------------------------------------------------------- in a cell
def test_cell_logs_feasibility_compute_and_the_epoch_cap_flag(tracking):
    fast = {"epochs": 3, "batch_size": 64, "early_stopping": 0}
    outcome = run_cell(CellConfig("synthetic", "dmtg", dict(TINY), {"k": 2}, protocol=fast), tracking)
    assert outcome.status == "finished", outcome.error
    run = tracking.get_run(outcome.run_id)
    m, tags = run.data.metrics, run.data.tags
    assert m["grouping.feasible"] == 1.0  # 2 groups, 2 branches
    assert {"grouping.precision.fc2", "grouping.recall.fc2"} <= set(m)
    assert m["search.steps"] == 3 * 4 and m["train.steps"] == 3 * 4  # 256 samples, batches of 64
    assert m["search.flops"] > m["train.flops"] > 0  # the supernet holds K copies and K x N heads
    assert m["reused.seconds"] == 0.0 and m["reused.flops"] == 0.0  # it reads no other cell
    assert tags["bb.hit_epoch_cap"] == str(m["best_epoch"] == m["epochs_run"] - 1).lower()
    assert tags["bb.search_hit_epoch_cap"] in ("true", "false") and tags["bb.stopped"] == "completed"
    refs = tracking.runs("tags.`bb.method` = 'independent'")
    assert {f"best_epoch.t{i}" for i in range(4)} <= set(refs[0].data.metrics)  # selected per task
    infeasible = run_cell(CellConfig("synthetic", "dmtg", dict(TINY), {"k": 1}, protocol=fast), tracking)
    assert tracking.get_run(infeasible.run_id).data.metrics["grouping.feasible"] == 0.0
