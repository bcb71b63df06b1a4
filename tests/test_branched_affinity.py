"""branched_affinity: RDM/RSA by hand, the tree search (exact vs beam, caps), and the method on data with groups."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch

from branchbench.context import LocalContext
from branchbench.core.budget import Budget, BudgetError
from branchbench.datasets.synthetic import Synthetic
from branchbench.methods._tree_search import (
    TreeProblem,
    beam_search,
    canonical,
    exact_search,
    search_trees,
)
from branchbench.methods.branched_affinity import BranchedAffinity, rdm, rsa_affinity


# ------------------------------------------------------------------ RDM / RSA
def test_rdm_is_one_minus_pearson_between_samples():
    feats = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [1.0, 2.0, 4.0], [5.0, 5.0, 5.0]])
    r = 9 / math.sqrt(84)  # Pearson of (1,2,3) and (1,2,4), by hand
    expected = np.array(
        [
            [0, 2, 1 - r, 1],
            [2, 0, 1 + r, 1],
            [1 - r, 1 + r, 0, 1],
            [1, 1, 1, 1],  # a constant sample correlates with nothing (its own entry is unused)
        ]
    )
    np.testing.assert_allclose(rdm(feats), expected, atol=1e-12)


def _from_upper(values: list[float], k: int) -> np.ndarray:
    m = np.zeros((k, k))
    m[np.triu_indices(k, 1)] = values
    return m + m.T


def test_rsa_is_spearman_on_ranks_of_the_upper_triangles():
    base = _from_upper([1, 2, 3, 4, 5, 6], 4)
    cubed = _from_upper([1, 8, 27, 64, 125, 216], 4)  # same order, not linear: Pearson < 1
    swapped = _from_upper([2, 1, 3, 4, 6, 5], 4)  # rank differences 1,1,0,0,1,1
    flat = _from_upper([3] * 6, 4)
    a = rsa_affinity([base, cubed, swapped, flat])
    assert np.corrcoef([1, 2, 3, 4, 5, 6], [1, 8, 27, 64, 125, 216])[0, 1] < 0.99
    assert a[0, 1] == pytest.approx(1.0)
    assert a[0, 2] == pytest.approx(1 - 6 * 4 / (6 * 35))  # Spearman's formula, no ties
    assert a[0, 3] == 0.0 and a[3, 3] == 1.0  # a constant RDM: affinity 0, diagonal 1
    np.testing.assert_allclose(a, a.T)


# ---------------------------------------------------------------- tree search
def test_score_is_sum_over_blocks_of_mean_cluster_diameter():
    d = np.array([[[0, 0.2, 0.4], [0.2, 0, 0.6], [0.4, 0.6, 0]]] * 2)
    problem = TreeProblem(d, [10, 10], cap=60)
    chain = (((0, 1, 2),), ((0, 1), (2,)))
    assert problem.score(chain) == pytest.approx(0.6 + (0.2 + 0.0) / 2)
    assert problem.params(chain) == 30


def planted(n_tasks: int, n_groups: int, n_levels: int, seed: int) -> tuple[np.ndarray, list[list[int]]]:
    """Dissimilarities where tasks agree at block 0 and split into groups below."""
    rng = np.random.default_rng(seed)
    group = rng.permutation(np.arange(n_tasks) % n_groups)
    same = group[:, None] == group[None, :]
    d = np.empty((n_levels, n_tasks, n_tasks))
    d[0] = 0.1
    d[1:] = np.where(same, 0.1, 0.9)
    d += rng.uniform(0, 0.05, d.shape)
    d = (d + d.transpose(0, 2, 1)) / 2
    for level in range(n_levels):
        np.fill_diagonal(d[level], 0)
    return d, [np.flatnonzero(group == g).tolist() for g in range(n_groups)]


@pytest.mark.parametrize("n_tasks,n_groups", [(6, 2), (6, 3), (12, 3), (40, 4)])
def test_exact_and_beam_recover_planted_groups(n_tasks, n_groups):
    d, groups = planted(n_tasks, n_groups, 3, seed=n_tasks)
    truth = canonical(groups)
    root = (tuple(range(n_tasks)),)
    problem = TreeProblem(d, [100, 100, 100], cap=100 + 2 * 100 * n_groups)  # the planted tree's size
    beam = beam_search(problem, beam=4, max_children=1)  # heuristic refinements only
    assert beam.best.chain == (root, truth, truth)
    if n_tasks <= 6:
        assert exact_search(problem).best.chain == beam.best.chain


def random_problem(n_tasks: int, n_levels: int, ratio: float, seed: int, block_params=None) -> TreeProblem:
    rng = np.random.default_rng(seed)
    a = rng.uniform(0, 1, (n_levels, n_tasks, n_tasks))
    d = (a + a.transpose(0, 2, 1)) / 2
    for level in range(n_levels):
        np.fill_diagonal(d[level], 0)
    block_params = block_params or [100] * n_levels
    return TreeProblem(d, block_params, ratio * sum(block_params))


@pytest.mark.parametrize("seed", range(4))
def test_unbounded_beam_is_the_exact_search(seed):
    ratio = [1.5, 2.5, 4.0, 6.0][seed]
    problem = random_problem(5 + seed % 2, 3, ratio, seed, block_params=[50, 100, 200])
    exact, beam = exact_search(problem, top_k=20), beam_search(problem, beam=None, top_k=20)
    assert [c.chain for c in beam.top] == [c.chain for c in exact.top]
    assert beam.evaluated == exact.evaluated


def test_searches_never_exceed_the_cap():
    for ratio in (1.0, 1.3, 2.0, 3.7, 10.0):
        for n_tasks in (5, 40):
            problem = random_problem(n_tasks, 4, ratio, seed=int(ratio * 10) + n_tasks)
            outcome = search_trees(problem, beam=4)
            assert all(c.params <= problem.cap for c in outcome.top)
            assert outcome.best.params <= problem.cap
            assert outcome.best == outcome.top[0]


def test_an_impossible_cap_is_a_clear_budget_error():
    d = np.zeros((2, 3, 3))
    with pytest.raises(BudgetError, match="below shared-bottom's 30 backbone parameters.*at least 1.0"):
        TreeProblem(d, [10, 20], cap=29)
    with pytest.raises(BudgetError, match="below 1.0"):
        Budget(0.5)


def test_growing_budget_never_shrinks_the_tree_nor_worsens_its_score():
    previous = None
    for ratio in np.arange(1.0, 5.01, 0.25):  # the same dissimilarities (seed), a growing cap
        best = exact_search(random_problem(5, 4, ratio, seed=7, block_params=[10, 40, 40, 80])).best
        if previous is not None:
            assert best.params >= previous.params
            assert best.score <= previous.score + 1e-12
        previous = best


# ------------------------------------------------------- the method, end to end
@pytest.fixture(scope="module")
def grouped():
    """6 tasks in 2 groups, low noise; single-task networks trained once (a few seconds)."""
    torch.set_num_threads(1)
    options = dict(tasks=6, groups=2, input_dim=8, n_train=512, n_val=128, n_test=64, width=16,
                   depth=3, noise=0.1, n_sines=2, frequency=1.0)
    bench = Synthetic(**options).load()
    bench = dataclasses.replace(bench, protocol=bench.protocol.replace(epochs=20, batch_size=64, early_stopping=0))
    ctx = LocalContext(bench, seed=0)
    ctx.reference("independent")
    return bench, ctx


def test_affinity_is_higher_within_true_groups_at_deeper_blocks(grouped):
    bench, ctx = grouped
    result = BranchedAffinity(n_samples=128).search(bench, Budget(None), ctx)
    group = np.array([bench.groups[t] for t in bench.task_names])
    same = group[:, None] == group[None, :]
    off_diagonal = ~np.eye(len(group), dtype=bool)
    for block in bench.backbone.block_names[1:]:
        table = result.artifacts[f"affinity_{block}.csv"]
        assert list(table.index) == bench.task_names
        a = table.to_numpy()
        assert a[same & off_diagonal].mean() > a[~same].mean() + 0.05, block
    # what a user reads: heatmaps, the top candidates, the search summary; default budget 2x
    assert {f"affinity_{b}.png" for b in bench.backbone.block_names} <= set(result.artifacts)
    candidates = result.artifacts["candidates.csv"]
    assert isinstance(candidates, pd.DataFrame) and candidates["score"].is_monotonic_increasing
    summary = result.artifacts["search.json"]
    assert summary["budget_ratio"] == 2.0 and not summary["budget_given"]
    assert summary["trees_evaluated"] == result.cost["trees_evaluated"] > 0
    assert result.plan.is_tree and result.plan.budget_ratio(bench.backbone) <= 2.0 + 1e-9
    assert result.plan.budget_ratio(bench.backbone) == pytest.approx(candidates["budget_ratio"].iloc[0])


def test_method_budgets_from_one_to_t(grouped):
    bench, ctx = grouped
    method = BranchedAffinity(n_samples=64)
    previous = None
    for ratio in np.arange(1.0, len(bench.tasks) + 0.01, 0.5):
        result = method.search(bench, Budget(float(ratio)), ctx)
        params = result.plan.param_count(bench.backbone)
        score = result.artifacts["search.json"]["chosen_score"]
        assert params <= Budget(float(ratio)).cap(bench.backbone)
        if ratio == 1.0:
            assert result.plan.budget_ratio(bench.backbone) == 1.0  # only shared-bottom fits
        if previous is not None:
            assert params >= previous[0] and score <= previous[1] + 1e-12
        previous = (params, score)


# ------------------------------------------- issue 13: cost variant, stages, true tree
def test_size_weighted_cost_weights_each_cluster_by_its_share_of_the_tasks():
    d = np.array([[[0, 0.2, 0.4], [0.2, 0, 0.6], [0.4, 0.6, 0]]])
    paper, weighted = TreeProblem(d, [10], cap=30), TreeProblem(d, [10], cap=30, cost="size_weighted")
    peel = ((0, 1), (2,))  # peel task 2 off: the paper halves the cost, size weighting only drops 1/3
    assert paper.level_cost(0, peel) == pytest.approx((0.2 + 0.0) / 2)
    assert weighted.level_cost(0, peel) == pytest.approx(2 / 3 * 0.2 + 1 / 3 * 0.0)
    for problem in (paper, weighted):
        assert problem.level_cost(0, ((0, 1, 2),)) == pytest.approx(0.6)
        assert problem.level_cost(0, ((0,), (1,), (2,))) == 0.0
    with pytest.raises(ValueError, match="size_weighted"):
        TreeProblem(d, [10], cap=30, cost="mean")


def test_probe_rank_counts_the_trees_ordered_before_it():
    problem = random_problem(5, 3, 2.5, seed=3, block_params=[50, 100, 200])
    everything = exact_search(problem, top_k=10**6).top
    for position in (0, 7, len(everything) - 1):
        probe = everything[position].chain
        assert exact_search(problem, probe=probe).probe_rank == position + 1
        assert beam_search(problem, beam=None, probe=probe).probe_rank == position + 1
        assert exact_search(problem, probe=probe).best == everything[0]  # the probe never chooses
    assert exact_search(problem).probe_rank is None


def test_probe_scored_says_whether_the_search_reached_the_probe():
    """A narrow beam ranks a tree it never scored among the few it did: the rank alone cannot say so."""
    problem = random_problem(5, 3, 2.5, seed=3, block_params=[50, 100, 200])
    everything = exact_search(problem, top_k=10**6).top
    probe = everything[len(everything) // 2].chain
    assert exact_search(problem, probe=probe).probe_scored is True
    narrow = beam_search(problem, beam=1, max_children=1, probe=probe)
    assert narrow.probe_scored is False and narrow.probe_rank <= narrow.evaluated
    assert beam_search(problem, beam=None, probe=probe).probe_scored is True
    assert exact_search(problem).probe_scored is None


def test_stages_come_from_block_names_or_a_backbone_attribute():
    from branchbench.core.backbones import mlp_backbone, resnet18_backbone, tag_celeba_backbone
    from branchbench.methods.branched_affinity import point_params, stage_ends, stage_of

    assert [stage_of(n) for n in ("res1a", "res4b", "layer2.3", "stem", "res1", "fc0")] == [
        "res1", "res4", "layer2", "stem", "res1", "fc0"]
    resnet = resnet18_backbone(image_size=16, width=4)
    assert stage_ends(resnet) == [0, 2, 4, 6, 8]  # after the stem and after each of 4 stages
    assert stage_ends(tag_celeba_backbone(image_size=16, width=4)) == [0, 1]
    mlp = mlp_backbone(4, (8, 8, 8))
    assert stage_ends(mlp) == [0, 1, 2]  # every MLP block is a stage
    assert point_params([1, 2, 3, 4, 5], [0, 2, 4]) == [1, 5, 9]
    mlp.stages = ["a", "a", "b"]
    assert stage_ends(mlp) == [1, 2]


def _with_stages(bench, labels):
    backbone = copy.copy(bench.backbone)
    backbone.stages = labels
    return dataclasses.replace(bench, backbone=backbone)


def test_stage_branch_points_branch_only_after_a_stage(grouped):
    bench, ctx = grouped
    staged = _with_stages(bench, ["s0", "s0", "s1"])  # blocks 0-1 one stage: a tree may branch after 1 only
    for ratio in (1.5, 2.0, 3.0):
        result = BranchedAffinity(n_samples=64, branch_points="stages").search(staged, Budget(ratio), ctx)
        plan = result.plan
        assert plan.partition(0) == plan.partition(1), ratio
        assert plan.budget_ratio(bench.backbone) <= ratio + 1e-9
        assert result.cost["branch_points"] == 2
        assert set(result.artifacts["search.json"]["branch_points"]) == {"fc1", "fc2"}
    every = BranchedAffinity(n_samples=64).search(bench, Budget(2.0), ctx)
    stages = BranchedAffinity(n_samples=64, branch_points="stages").search(bench, Budget(2.0), ctx)
    assert every.plan == stages.plan  # an MLP's blocks are each a stage: the same search


def test_true_tree_is_reported_and_never_changes_the_plan(grouped):
    bench, ctx = grouped
    hidden = dataclasses.replace(bench, groups=None)
    for cost in ("paper", "size_weighted"):
        method = BranchedAffinity(n_samples=64, cluster_cost=cost)
        for ratio in (1.0, 1.5, 2.0, 4.0):
            known = method.search(bench, Budget(ratio), ctx)
            blind = method.search(hidden, Budget(ratio), ctx)
            assert known.plan == blind.plan, (cost, ratio)
            assert not any(k.startswith("true_tree") for k in blind.cost)
            if ratio == 1.0:  # two groups never fit shared-bottom's size
                assert known.cost["true_tree_feasible"] == 0 and "true_tree_rank" not in known.cost
                continue
            assert known.cost["true_tree_feasible"] == 1
            assert known.cost["true_tree_scored"] == 1  # 6 tasks: the exact search scores every tree
            rank, true_cost = known.cost["true_tree_rank"], known.cost["true_tree_cost"]
            assert rank >= 1 and rank == int(rank)
            chosen = known.artifacts["search.json"]["chosen_score"]
            assert true_cost >= chosen - 1e-9  # the search chose the best tree
            if rank == 1:  # nothing orders before the true tree: it is the chosen one
                assert true_cost == pytest.approx(chosen)
    known = BranchedAffinity(n_samples=64).search(bench, Budget(2.0), ctx)  # groups of 3: 2x fits from block 0
    assert known.cost["true_tree_block"] == 0
    assert known.artifacts["search.json"]["true_tree_rank"] == known.cost["true_tree_rank"]
