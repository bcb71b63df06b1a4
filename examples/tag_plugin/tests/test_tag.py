"""The plugin's own tests: the branchbench conformance kit, plus what is special to TAG."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bb_tag import TAG
from bb_tag.grouping import best_groups, exact_groups, greedy_groups, grouping_score

from branchbench.testing import kit_benchmark, parametrize_with_checks, run_search


@parametrize_with_checks([TAG])
def test_conformance(method, check):
    check(method)


def _blocks(sizes: list[int], within: float = 0.5, across: float = -0.2) -> np.ndarray:
    """An affinity matrix with planted groups of the given sizes."""
    labels = np.repeat(np.arange(len(sizes)), sizes)
    z = np.where(labels[:, None] == labels[None, :], within, across)
    np.fill_diagonal(z, 0.0)
    return z


@pytest.mark.parametrize("sizes", [[2, 2], [3, 2, 1], [2, 2, 2, 2]])
def test_selection_recovers_planted_groups(sizes):
    z = _blocks(sizes)
    truth = sorted(tuple(int(i) for i in np.flatnonzero(np.repeat(np.arange(len(sizes)), sizes) == g)) for g in range(len(sizes)))
    assert best_groups(z, max_groups=len(sizes)) == truth


def test_exact_selection_is_the_best_of_all_groupings():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 6))
    for k in (1, 2, 3):
        found = exact_groups(z, k)
        assert len(found) <= k
        assert sorted(i for g in found for i in g) == list(range(6))
        # brute force over labelings (each task to one of k labels) agrees
        import itertools

        best = max(
            grouping_score(z, [tuple(i for i in range(6) if lab[i] == c) for c in set(lab)])
            for lab in itertools.product(range(k), repeat=6)
        )
        assert grouping_score(z, found) == pytest.approx(best)


def test_greedy_respects_the_group_limit():
    z = _blocks([3, 3, 3, 3])
    groups = greedy_groups(z, max_groups=2)
    assert len(groups) <= 2 and sorted(i for g in groups for i in g) == list(range(12))
    assert greedy_groups(z, max_groups=4) == best_groups(z, 4, exact_max_tasks=1)


def test_budget_sets_the_number_of_groups():
    torch.set_num_threads(1)
    bench = kit_benchmark()
    one, _ = run_search(TAG(), bench, budget=1.0)
    assert set(one.plan.partition(2)) == {frozenset(bench.task_names)}
    assert one.cost["supernet_steps"] == 0  # one group admitted: nothing to measure
    # branch at block 1 of 3 equal blocks: 1 + 2k <= 3 * ratio
    result, ctx = run_search(TAG(), bench, budget=2.0)
    assert len(result.plan.partition(1)) <= 2
    assert result.cost["lookahead_steps"] == result.cost["supernet_steps"] > 0
    z = result.artifacts["affinity.csv"]
    assert list(z.index) == bench.task_names and np.isfinite(z.to_numpy()).all()
    assert ctx.curve("tag/affinity_mean")


def test_affinity_is_positive_for_a_task_onto_itself():
    """A small step on a task's own loss lowers that loss: the diagonal of Z is positive."""
    torch.set_num_threads(1)
    result, _ = run_search(TAG(), kit_benchmark(), budget=None)
    diag = np.diag(result.artifacts["affinity.csv"].to_numpy())
    assert (diag > 0).all()
