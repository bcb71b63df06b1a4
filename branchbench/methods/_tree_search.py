"""Search over tree plans scored by per-branch-point task dissimilarities, under a parameter cap.

A tree plan over ``L`` blocks is a *chain* of partitions ``P_0, ..., P_{L-1}`` of
the tasks, each refining the one above (``P_l`` groups the tasks that share
block ``l``). Tasks are integers ``0..T-1`` here; a partition is canonical (each
cluster a sorted tuple, clusters sorted), so equal partitions compare equal.

Score of a chain (Vandenhende et al., BMVC 2020, the clustering cost)::

    cost_l(P) = (1/|P|) * sum_{C in P} max_{i, j in C} D[l, i, j]   (a singleton costs D[l,i,i] = 0)
    score     = sum_l cost_l(P_l)                                   (lower is better)

The labelled variant ``cost="size_weighted"`` (not the paper's) weights each
cluster by its share of the tasks instead of averaging over clusters, so peeling
a single task off saves only ``1/T`` of that cluster's diameter::

    cost_l(P) = sum_{C in P} (|C| / T) * max_{i, j in C} D[l, i, j]

``params = sum_l |P_l| * block_params[l]``, which is what
:meth:`Plan.param_count` gives for a tree plan. Candidates are ordered by score
(rounded to 1e-9, so float summation order cannot break a tie), then fewer
parameters, then the partitions themselves, so every search is deterministic.

Worked example (3 tasks, 2 blocks)::

    >>> import numpy as np
    >>> D = np.array([[[0, .2, .4], [.2, 0, .6], [.4, .6, 0]]] * 2)
    >>> problem = TreeProblem(D, [10, 10], cap=30)
    >>> best = exact_search(problem).best
    >>> best.chain, round(best.score, 3), best.params     # share block 0, split {0,1} | {2} after
    ((((0, 1, 2),), ((0, 1), (2,))), 0.7, 30)

Two searches:

* :func:`exact_search` enumerates every admissible chain (depth-first, pruning
  a branch as soon as even never splitting again would break the cap). There
  are 44,590 chains for 6 tasks over 4 blocks; it is the default up to 6 tasks.
* :func:`beam_search` builds chains block by block. Each kept state (a chain
  down to block ``l``) is extended by refinements of its last partition at block
  ``l+1``: *all* of them when there are at most ``max_children`` (the count is
  a product of Bell numbers, known beforehand), otherwise the ``T - |P_l| + 1``
  partitions met by complete-linkage agglomerative clustering of
  ``D[l+1]`` constrained to merge only inside a cluster of ``P_l`` (complete
  linkage greedily keeps cluster diameters small, which is what the cost
  charges). Every extended state is also scored as a full tree by never
  splitting again (its *completion*), and states are ranked by that completion
  score. The beam keeps the ``beam`` best states *per number of clusters at the
  current block*, because the number of clusters is what decides how much of
  the budget is left for deeper blocks: a global beam would fill with early
  splits that exhaust the budget. With ``beam=None`` nothing is pruned and all
  refinements are expanded, so it enumerates every admissible chain and returns
  exactly what :func:`exact_search` returns.

A *probe* chain (e.g. the true tree, on data with known groups) can be handed to
either search; it never changes what the search chooses, and the outcome says
how many of the distinct trees the search scored order before it
(:attr:`SearchOutcome.probe_rank` = that count + 1) and whether it scored the
probe itself (:attr:`SearchOutcome.probe_scored`). Exact enumeration scores
every admissible tree, so there the rank is exact; a beam search scores some of
them, so the rank is among those (at most the exact rank: 1 means that no tree
the search scored beats the probe, not that the probe was chosen, which needs
the beam to have reached it).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache

import numpy as np

from branchbench.core.budget import BudgetError

Cluster = tuple[int, ...]
Partition = tuple[Cluster, ...]
Chain = tuple[Partition, ...]

SCORE_DECIMALS = 9
COSTS = ("paper", "size_weighted")


def canonical(groups: Iterable[Iterable[int]]) -> Partition:
    """The canonical form of a partition: sorted clusters of sorted task indices."""
    return tuple(sorted(tuple(sorted(group)) for group in groups))


def set_partitions(items: Sequence[int]) -> Iterator[list[list[int]]]:
    """Every partition of ``items``, each exactly once (Bell(n) of them)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in set_partitions(rest):
        yield [[first], *part]
        for i in range(len(part)):
            yield [*part[:i], [first, *part[i]], *part[i + 1 :]]


@cache
def bell(n: int) -> int:
    """The number of partitions of an n-set (Bell triangle)."""
    row = [1]
    for _ in range(n):
        nxt = [row[-1]]
        for value in row:
            nxt.append(nxt[-1] + value)
        row = nxt
    return row[0]


def n_refinements(partition: Partition) -> int:
    return math.prod(bell(len(cluster)) for cluster in partition)


@dataclass(frozen=True)
class Candidate:
    """A full tree: its chain of partitions, score and backbone parameters."""

    chain: Chain
    score: float
    params: int

    @property
    def key(self) -> tuple[float, int, Chain]:
        return (round(self.score, SCORE_DECIMALS), self.params, self.chain)


@dataclass
class SearchOutcome:
    """The best tree, the ``top`` best (best first) and how many distinct trees were scored.

    ``probe_rank``: 1 + the number of scored trees that order before the probe
    chain; ``probe_scored``: whether the search scored the probe chain itself
    (both None without a probe).
    """

    best: Candidate
    top: list[Candidate]
    evaluated: int
    search: str
    probe_rank: int | None = None
    probe_scored: bool | None = None


class TreeProblem:
    """Per-block task dissimilarities ``D`` (L x T x T), per-block parameters and the cap.

    ``cost`` is the clustering cost of a block (see the module docstring):
    ``"paper"`` or ``"size_weighted"``. Raises :class:`BudgetError` when the cap
    is below shared-bottom's parameters (no tree fits) and ``ValueError`` for
    malformed inputs.
    """

    def __init__(
        self, dissimilarity: np.ndarray, block_params: Sequence[int], cap: float, cost: str = "paper"
    ) -> None:
        if cost not in COSTS:
            raise ValueError(f"clustering cost {cost!r} is not one of {list(COSTS)}")
        self.cost = cost
        d = np.asarray(dissimilarity, dtype=float)
        if d.ndim != 3 or d.shape[1] != d.shape[2] or d.shape[1] < 1:
            raise ValueError(
                f"dissimilarity has shape {d.shape}; give one T x T matrix per block (L x T x T)"
            )
        if len(block_params) != d.shape[0]:
            raise ValueError(
                f"{len(block_params)} block parameter counts for {d.shape[0]} dissimilarity "
                "matrices; give one per block"
            )
        if not np.all(np.isfinite(d)):
            raise ValueError("dissimilarity holds NaN or inf; replace undefined affinities first")
        shared_bottom = sum(block_params)
        if cap < shared_bottom:
            raise BudgetError(
                f"the parameter cap {cap:.6g} is below shared-bottom's {shared_bottom} backbone "
                "parameters, the smallest tree plan; no tree fits. Raise the budget to at least 1.0 "
                "(shared-bottom's size)."
            )
        self.d = np.maximum(d, d.transpose(0, 2, 1))  # a cluster's diameter is symmetric
        self.block_params = [int(p) for p in block_params]
        self.cap = float(cap)
        self.n_levels, self.n_tasks = d.shape[0], d.shape[1]
        # parameters of blocks l.. : a partition with n clusters at l costs at least n * rest[l]
        self.rest = [sum(self.block_params[level:]) for level in range(self.n_levels)] + [0]
        self._diameters: dict[tuple[int, Cluster], float] = {}
        self._costs: dict[tuple[int, Partition], float] = {}
        self._refinements: dict[Partition, list[Partition]] = {}
        self._splits: dict[tuple[int, Cluster], list[tuple[float, tuple[Cluster, Cluster]]]] = {}

    @property
    def root(self) -> Partition:
        return (tuple(range(self.n_tasks)),)

    def diameter(self, level: int, cluster: Cluster) -> float:
        key = (level, cluster)
        if key not in self._diameters:
            index = np.asarray(cluster)
            self._diameters[key] = float(self.d[level][np.ix_(index, index)].max())
        return self._diameters[key]

    def level_cost(self, level: int, partition: Partition) -> float:
        """The clusters' largest pairwise dissimilarities at ``level``: their mean, or size-weighted sum."""
        key = (level, partition)
        if key not in self._costs:
            if self.cost == "paper":
                value = sum(self.diameter(level, c) for c in partition) / len(partition)
            else:
                value = sum(len(c) * self.diameter(level, c) for c in partition) / self.n_tasks
            self._costs[key] = value
        return self._costs[key]

    def score(self, chain: Chain) -> float:
        return sum(self.level_cost(level, p) for level, p in enumerate(chain))

    def params(self, chain: Chain) -> int:
        return sum(len(p) * bp for p, bp in zip(chain, self.block_params, strict=True))

    def candidate(self, chain: Chain) -> Candidate:
        return Candidate(chain, self.score(chain), self.params(chain))

    def refinements(self, partition: Partition) -> list[Partition]:
        """Every partition that refines ``partition`` (itself included)."""
        if partition not in self._refinements:
            per_cluster = [list(set_partitions(list(c))) for c in partition]
            self._refinements[partition] = [
                canonical(g for split in combo for g in split) for combo in itertools.product(*per_cluster)
            ]
        return self._refinements[partition]

    def agglomerative_refinements(self, level: int, parent: Partition) -> list[Partition]:
        """Refinements of ``parent`` met by complete-linkage clustering of ``D[level]``.

        Starts from singletons and repeatedly merges the two clusters of one
        parent cluster with the smallest complete-linkage (max) distance; every
        intermediate partition is returned, from T clusters down to ``parent``.
        """
        n = self.n_tasks
        label = np.empty(n, dtype=int)
        for gid, cluster in enumerate(parent):
            label[list(cluster)] = gid
        dist = self.d[level:].sum(axis=0)  # the partition persists below unless refined
        dist[label[:, None] != label[None, :]] = np.inf
        np.fill_diagonal(dist, np.inf)
        members = {i: [i] for i in range(n)}
        out = [canonical(members.values())]
        while True:
            i, j = divmod(int(np.argmin(dist)), n)
            if not np.isfinite(dist[i, j]):
                return out
            members[i].extend(members.pop(j))
            merged = np.maximum(dist[i], dist[j])
            dist[i], dist[:, i] = merged, merged
            dist[i, i] = np.inf
            dist[j], dist[:, j] = np.inf, np.inf
            out.append(canonical(members.values()))

    def tail_diameter(self, level: int, cluster: Cluster) -> float:
        """Summed diameters of ``cluster`` at blocks ``level``.. (what keeping it unsplit costs)."""
        return sum(self.diameter(m, cluster) for m in range(level, self.n_levels))

    def splits(self, level: int, cluster: Cluster) -> list[tuple[float, tuple[Cluster, Cluster]]]:
        """Candidate two-way splits of ``cluster`` at ``level``, cheapest first, with their change in tail diameter.

        A partition made at ``level`` persists below unless refined, so moves are
        judged by :meth:`tail_diameter`. Tried, for the most dissimilar pair of
        the cluster at each block from ``level`` on: peeling off either end (a
        task outside that pair leaves that block's diameter unchanged), and
        splitting around the pair (each task joins the end it is less
        dissimilar to at that block).
        """
        key = (level, cluster)
        if key not in self._splits:
            index = np.asarray(cluster)
            moves = set()
            for m in range(level, self.n_levels):
                sub = self.d[m][np.ix_(index, index)]
                a, b = divmod(int(np.argmax(sub)), len(cluster))
                near_a = sub[:, a] <= sub[:, b]
                near_a[a], near_a[b] = True, False
                moves.add((tuple(t for t in cluster if t != cluster[a]), (cluster[a],)))
                moves.add((tuple(t for t in cluster if t != cluster[b]), (cluster[b],)))
                moves.add((tuple(index[near_a].tolist()), tuple(index[~near_a].tolist())))
            before = self.tail_diameter(level, cluster)
            self._splits[key] = sorted(
                (self.tail_diameter(level, p) + self.tail_diameter(level, q) - before, (p, q))
                for p, q in moves
            )
        return self._splits[key]

    def divisive_refinements(self, level: int, parent: Partition) -> list[Partition]:
        """Refinements of ``parent`` met by greedily applying the cheapest split (:meth:`splits`).

        Complements complete linkage: the cost is a mean over clusters in which a
        singleton counts 0, so peeling off outlying tasks is often cheaper than
        balanced clusters. Every intermediate partition is returned, ``parent`` first.
        """
        clusters = list(parent)
        out = [parent]
        while True:
            splittable = [(self.splits(level, c)[0], c) for c in clusters if len(c) > 1]
            if not splittable:
                return out
            (_, pieces), chosen = min(splittable)
            clusters.remove(chosen)
            clusters.extend(pieces)
            out.append(canonical(clusters))

    def heuristic_refinements(self, level: int, parent: Partition) -> list[Partition]:
        """Complete-linkage, greedy divisive and one-split refinements of ``parent``, without repeats."""
        found = self.agglomerative_refinements(level, parent) + self.divisive_refinements(level, parent)
        for cluster in parent:
            if len(cluster) > 1:
                rest = [c for c in parent if c != cluster]
                found.extend(canonical([*rest, *pieces]) for _, pieces in self.splits(level, cluster))
        return list(dict.fromkeys(found))

    def completion(self, chain: Chain) -> Candidate:
        """The full tree that continues ``chain`` without splitting again."""
        return self.candidate(chain + (chain[-1],) * (self.n_levels - len(chain)))


@dataclass
class _TopK:
    """The ``k`` best candidates by key, deduplicated; counts the distinct candidates seen.

    With a ``probe`` key it also counts the distinct candidates that order before it.
    """

    k: int
    probe: tuple | None = None
    items: list[Candidate] = field(default_factory=list)
    seen: set[Chain] = field(default_factory=set)
    before_probe: int = 0

    def add(self, cand: Candidate) -> None:
        if cand.chain in self.seen:
            return
        self.seen.add(cand.chain)
        if self.probe is not None and cand.key < self.probe:
            self.before_probe += 1
        self.items.append(cand)
        if len(self.items) > 4 * self.k:
            self._trim()

    def _trim(self) -> None:
        self.items.sort(key=lambda c: c.key)
        del self.items[self.k :]

    def outcome(self, search: str) -> SearchOutcome:
        self._trim()
        rank = None if self.probe is None else self.before_probe + 1
        scored = None if self.probe is None else self.probe[2] in self.seen  # a key ends with its chain
        return SearchOutcome(self.items[0], list(self.items), len(self.seen), search, rank, scored)


def _probe_key(problem: TreeProblem, probe: Chain | None) -> tuple | None:
    return None if probe is None else problem.candidate(probe).key


def exact_search(problem: TreeProblem, top_k: int = 10, probe: Chain | None = None) -> SearchOutcome:
    """Every admissible chain, depth first; the best by (score, params, chain)."""
    best = _TopK(max(1, top_k), _probe_key(problem, probe))
    last = problem.n_levels - 1

    def visit(level: int, parent: Partition, chain: Chain, params: int) -> None:
        for child in problem.refinements(parent):
            if params + len(child) * problem.rest[level] > problem.cap:
                continue  # even never splitting again would break the cap
            grown = chain + (child,)
            if level == last:
                best.add(problem.candidate(grown))
            else:
                visit(level + 1, child, grown, params + len(child) * problem.block_params[level])

    visit(0, problem.root, (), 0)
    return best.outcome("exact")


def beam_search(
    problem: TreeProblem,
    beam: int | None = 16,
    max_children: int = 256,
    top_k: int = 10,
    probe: Chain | None = None,
) -> SearchOutcome:
    """Block-by-block beam search (see the module docstring); ``beam=None`` is exhaustive."""
    best = _TopK(max(1, top_k), _probe_key(problem, probe))
    states: list[tuple[Chain, int]] = [((), 0)]  # (chain so far, its parameters)
    for level in range(problem.n_levels):
        grown: list[tuple[Candidate, Chain, int]] = []
        for chain, params in states:
            parent = chain[-1] if chain else problem.root
            if beam is None or n_refinements(parent) <= max_children:
                children = problem.refinements(parent)
            else:
                children = problem.heuristic_refinements(level, parent)
            for child in children:
                if params + len(child) * problem.rest[level] > problem.cap:
                    continue
                longer = chain + (child,)
                done = problem.completion(longer)
                best.add(done)
                grown.append((done, longer, params + len(child) * problem.block_params[level]))
        states = [(chain, params) for _, chain, params in _prune(grown, beam)]
    width = "unbounded" if beam is None else str(beam)
    return best.outcome(f"beam(width={width}, max_children={max_children})")


def _prune(
    grown: list[tuple[Candidate, Chain, int]], beam: int | None
) -> list[tuple[Candidate, Chain, int]]:
    """The ``beam`` best states by completion, per number of clusters at the current block."""
    if beam is None:
        return grown
    strata: dict[int, list[tuple[Candidate, Chain, int]]] = {}
    for state in grown:
        strata.setdefault(len(state[1][-1]), []).append(state)
    kept = []
    for n in sorted(strata):
        kept.extend(sorted(strata[n], key=lambda s: s[0].key)[:beam])
    return kept


def search_trees(
    problem: TreeProblem,
    exact_max_tasks: int = 6,
    beam: int | None = 16,
    max_children: int = 256,
    top_k: int = 10,
    probe: Chain | None = None,
) -> SearchOutcome:
    """Exact enumeration up to ``exact_max_tasks`` tasks, beam search beyond."""
    if problem.n_tasks <= exact_max_tasks:
        return exact_search(problem, top_k, probe)
    return beam_search(problem, beam, max_children, top_k, probe)
