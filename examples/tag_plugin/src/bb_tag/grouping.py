"""TAG's network selection: the task groups of largest total inter-task affinity.

``affinity[i, j]`` is Z_{i->j}, the relative decrease of task j's loss after a
step on task i alone (row = source, column = target; the diagonal is unused).
A task's score inside a group is the mean affinity onto it from the group's
other members, as in the paper's network-selection code; a task alone scores
0 (nothing is transferred to it). A grouping's score is the sum of its tasks'
scores, and we look for the best grouping into at most ``max_groups`` groups.

Worked example: tasks 0 and 1 help each other, task 2 helps nobody::

    >>> import numpy as np
    >>> z = np.array([[0, .5, -.1], [.4, 0, -.2], [-.1, -.3, 0]])
    >>> best_groups(z, max_groups=2)
    [(0, 1), (2,)]
    >>> best_groups(z, max_groups=1)
    [(0, 1, 2)]
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

Group = tuple[int, ...]
TIE = 1e-12  # a grouping must beat another by more than this to replace it


def group_score(affinity: np.ndarray, group: Sequence[int]) -> float:
    """Sum over members j of the mean affinity onto j from the group's other members."""
    if len(group) < 2:
        return 0.0
    idx = np.asarray(group)
    block = affinity[np.ix_(idx, idx)]
    onto = block.sum(axis=0) - np.diag(block)  # column j: sum over sources i != j
    return float(onto.sum() / (len(group) - 1))


def grouping_score(affinity: np.ndarray, groups: Sequence[Sequence[int]]) -> float:
    return sum(group_score(affinity, g) for g in groups)


def _members(mask: int) -> Group:
    return tuple(i for i in range(mask.bit_length()) if mask >> i & 1)


def exact_groups(affinity: np.ndarray, max_groups: int) -> list[Group]:
    """The best grouping into at most ``max_groups`` groups, by dynamic programming over subsets.

    Equivalent to the paper's exhaustive search over groupings (which it prunes
    by branch-and-bound), in O(3^T * max_groups) time; fewer groups win ties.
    """
    n = affinity.shape[0]
    full = (1 << n) - 1
    score = [group_score(affinity, _members(mask)) for mask in range(full + 1)]
    best = list(score)  # best[mask]: best grouping of `mask` into at most k groups (k = 1 now)
    choice: list[list[int]] = [[mask for mask in range(full + 1)]]  # per k, the group holding mask's lowest task
    for _ in range(2, min(max_groups, n) + 1):
        prev, best, picks = best, list(best), list(choice[-1])
        for mask in range(1, full + 1):
            low = mask & -mask
            rest = mask ^ low
            sub = rest
            while True:
                group = sub | low
                other = mask ^ group
                if other:
                    value = score[group] + prev[other]
                    if value > best[mask] + TIE:
                        best[mask], picks[mask] = value, group
                if sub == 0:
                    break
                sub = (sub - 1) & rest
        choice.append(picks)
    # unwind: at level k, mask splits into choice[k][mask] and the rest at level k - 1
    groups, mask, k = [], full, len(choice) - 1
    while mask:
        group = choice[k][mask]
        groups.append(_members(group))
        mask ^= group
        k -= 1
    return sorted(groups)


def greedy_groups(affinity: np.ndarray, max_groups: int) -> list[Group]:
    """An approximation for many tasks: agglomerative merging from singletons.

    Repeatedly merges the two groups whose union gains most score; it keeps
    merging while there are more than ``max_groups`` groups (even at a loss)
    or while a merge still gains.
    """
    groups: list[Group] = [(i,) for i in range(affinity.shape[0])]
    while len(groups) > 1:
        gains = [
            (group_score(affinity, a + b) - group_score(affinity, a) - group_score(affinity, b), x, y)
            for (x, a), (y, b) in itertools.combinations(enumerate(groups), 2)
        ]
        gain, x, y = max(gains, key=lambda g: (g[0], -g[1], -g[2]))
        if len(groups) <= max_groups and gain <= TIE:
            break
        merged = tuple(sorted(groups[x] + groups[y]))
        groups = [g for i, g in enumerate(groups) if i not in (x, y)] + [merged]
    return sorted(groups)


def best_groups(affinity: np.ndarray, max_groups: int, exact_max_tasks: int = 10) -> list[Group]:
    """Exact selection up to ``exact_max_tasks`` tasks, greedy merging beyond."""
    affinity = np.asarray(affinity, dtype=np.float64)
    if affinity.ndim != 2 or affinity.shape[0] != affinity.shape[1]:
        raise ValueError(f"affinity must be a square task x task matrix, got shape {affinity.shape}")
    if max_groups < 1:
        raise ValueError(f"max_groups={max_groups}; allow at least one group")
    if affinity.shape[0] <= exact_max_tasks:
        return exact_groups(affinity, max_groups)
    return greedy_groups(affinity, max_groups)
