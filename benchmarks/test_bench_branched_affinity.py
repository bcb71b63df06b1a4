"""branched_affinity's tree search: beam search at 40 tasks, exact search at 6, and the beam's optimality gap.

Run with ``python -m pytest benchmarks/test_bench_branched_affinity.py --benchmark-enable``.
Instances: uniformly random symmetric dissimilarities in [0, 1] (no structure,
the hard case for a heuristic), 4 blocks of equal parameters. The gap test
records, in ``extra_info``, the mean and largest absolute and relative gaps of
the beam search's best score over the exact optimum on random 6-task instances
with budgets drawn uniformly from [1, 6], and how often it is optimal;
``max_children=1`` forces the heuristic refinements used at 40 tasks.
"""

from __future__ import annotations

import numpy as np
import pytest

from branchbench.methods._tree_search import TreeProblem, beam_search, exact_search

N_LEVELS = 4
BLOCK_PARAMS = [100] * N_LEVELS


def random_problem(n_tasks: int, ratio: float, rng: np.random.Generator) -> TreeProblem:
    a = rng.uniform(0, 1, (N_LEVELS, n_tasks, n_tasks))
    d = (a + a.transpose(0, 2, 1)) / 2
    for level in range(N_LEVELS):
        np.fill_diagonal(d[level], 0)
    return TreeProblem(d, BLOCK_PARAMS, ratio * sum(BLOCK_PARAMS))


@pytest.mark.parametrize("ratio", [2.0, 5.0, 20.0])
@pytest.mark.parametrize("beam", [4, 16])
def test_beam_search_40_tasks(benchmark, beam, ratio):
    d = random_problem(40, ratio, np.random.default_rng(0)).d

    def run():  # a fresh problem each round: its caches must not carry over
        return beam_search(TreeProblem(d, BLOCK_PARAMS, ratio * sum(BLOCK_PARAMS)), beam=beam)

    outcome = benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info.update(trees_evaluated=outcome.evaluated, score=outcome.best.score)
    assert outcome.best.params <= ratio * sum(BLOCK_PARAMS)


def test_exact_search_6_tasks(benchmark):
    d = random_problem(6, 6.0, np.random.default_rng(0)).d
    outcome = benchmark.pedantic(
        lambda: exact_search(TreeProblem(d, BLOCK_PARAMS, 6.0 * sum(BLOCK_PARAMS))), rounds=3, iterations=1
    )
    benchmark.extra_info.update(trees_evaluated=outcome.evaluated)


@pytest.mark.parametrize("beam,max_children", [(4, 1), (16, 1), (16, 256)])
def test_beam_optimality_gap_6_tasks(benchmark, beam, max_children):
    rng = np.random.default_rng(1)
    problems = [random_problem(6, rng.uniform(1, 6), rng) for _ in range(100)]
    optimum = [exact_search(p).best.score for p in problems]

    def run():
        return [beam_search(p, beam=beam, max_children=max_children).best.score for p in problems]

    found = benchmark.pedantic(run, rounds=1, iterations=1)
    gap = np.array(found) - np.array(optimum)
    relative = gap / np.array(optimum)
    benchmark.extra_info.update(
        instances=len(problems),
        optimal=int(np.sum(gap < 1e-9)),
        abs_gap_mean=float(gap.mean()),
        abs_gap_max=float(gap.max()),
        rel_gap_mean=float(relative.mean()),
        rel_gap_max=float(relative.max()),
    )
    assert np.all(gap > -1e-9)  # the exact search is a lower bound
