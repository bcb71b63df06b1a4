"""Scores: per-task metrics, the multi-task gain Δm, grouping recovery, latency.

:class:`StreamingScores` accumulates a split's metrics batch by batch: dense
tasks keep only additive statistics (a confusion matrix, running sums; see
:mod:`branchbench.core.dense`), so evaluation never holds a split's dense
predictions; per-sample tasks keep their (small) predictions and are scored
once at the end exactly as :func:`score_predictions` scores them.

Δm (Maninis et al., CVPR 2019; Vandenhende et al.) is the mean over tasks of
the relative change of each task's main metric against the independent
networks, signed so that positive is better:

    Δm = 100/T * sum_t (-1)^{l_t} (M_t - M_t^ind) / M_t^ind

with l_t = 1 when a lower value of the metric is better.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from branchbench.core import dense
from branchbench.core.plan import Plan
from branchbench.core.tasks import TaskSpec


def score_predictions(
    tasks: Sequence[TaskSpec], predictions: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
) -> dict[str, float]:
    """Flat metrics ``"<task>.<metric>"`` of whole-split predictions."""
    out: dict[str, float] = {}
    for task in tasks:
        for name, value in task.score(predictions[task.name], targets[task.name]).items():
            out[f"{task.name}.{name}"] = value
    return out


class StreamingScores:
    """Per-task metrics of a split, fed one batch at a time; ``compute()`` gives the flat metrics.

    ``compute()`` equals :func:`score_predictions` on the concatenated batches.
    """

    def __init__(self, tasks: Sequence[TaskSpec]) -> None:
        self.tasks = list(tasks)
        self._stats: dict[str, dict[str, torch.Tensor] | None] = {t.name: None for t in self.tasks if t.dense}
        self._predictions: dict[str, list[torch.Tensor]] = {t.name: [] for t in self.tasks if not t.dense}
        self._targets: dict[str, list[torch.Tensor]] = {t.name: [] for t in self.tasks if not t.dense}

    def update(self, predictions: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> None:
        for task in self.tasks:
            prediction, target = predictions[task.name], targets[task.name]
            if task.dense:
                self._stats[task.name] = dense.add_stats(self._stats[task.name], task.batch_stats(prediction, target))
            else:
                self._predictions[task.name].append(prediction.detach().float().cpu())
                self._targets[task.name].append(target.detach().cpu())

    def compute(self) -> dict[str, float]:
        """Flat metrics ``"<task>.<metric>"``, in task order."""
        out: dict[str, float] = {}
        for task in self.tasks:
            if task.dense:
                stats = self._stats[task.name]
                if stats is None:
                    raise ValueError(f"task {task.name!r}: no batch was scored; call update() first")
                values = task.score_stats(stats)
            else:
                if not self._predictions[task.name]:
                    raise ValueError(f"task {task.name!r}: no batch was scored; call update() first")
                values = task.score(torch.cat(self._predictions[task.name]), torch.cat(self._targets[task.name]))
            for name, value in values.items():
                out[f"{task.name}.{name}"] = value
        return out


def delta_m(
    tasks: Sequence[TaskSpec], metrics: Mapping[str, float], reference: Mapping[str, float]
) -> float:
    """Mean signed relative gain (in %) of each task's main metric over the reference's."""
    gains = []
    for task in tasks:
        key = f"{task.name}.{task.main_metric.name}"
        ref = reference[key]
        if ref == 0:
            raise ZeroDivisionError(f"reference {key} is 0; Δm is undefined for this metric")
        sign = 1.0 if task.main_metric.higher_is_better else -1.0
        gains.append(sign * (metrics[key] - ref) / abs(ref))
    return 100.0 * sum(gains) / len(gains)


def grouping_scores(plan: Plan, truth: Sequence[frozenset[str]]) -> dict[str, float]:
    """Per block: the adjusted Rand index of the plan's partition against the truth, and co-sharing.

    ``recovered`` is 1.0 when some block's partition equals the true grouping and
    every deeper block's partition refines it (DESIGN.md). ``precision.<block>``
    and ``recall.<block>`` score the pairs of tasks that share the block's
    activation against the pairs in one true group (:func:`co_sharing`): low
    precision means groups merged, low recall groups fragmented; each is left
    out where it is undefined (no pair shares, or no true group has two tasks).
    """
    from sklearn.metrics import (
        adjusted_rand_score,  # here, not at import: the CLI lists methods fast
    )

    truth_label = {task: i for i, group in enumerate(truth) for task in group}
    order = list(plan.tasks)
    y_true = [truth_label[t] for t in order]
    truth_set = {frozenset(g) for g in truth}
    out: dict[str, float] = {}
    recovered_at = None
    for level, block in enumerate(plan.blocks):
        partition = plan.partition(level)
        label = {task: i for i, group in enumerate(partition) for task in group}
        out[f"ari.{block}"] = float(adjusted_rand_score(y_true, [label[t] for t in order]))
        precision, recall = co_sharing(partition, truth)
        if precision is not None:
            out[f"precision.{block}"] = precision
        if recall is not None:
            out[f"recall.{block}"] = recall
        if recovered_at is None and set(partition) == truth_set:
            deeper_refine = all(
                _refines(plan.partition(deeper), truth_set) for deeper in range(level, plan.n_blocks)
            )
            if deeper_refine:
                recovered_at = level
    out["recovered"] = 1.0 if recovered_at is not None else 0.0
    out["recovered_block"] = float(recovered_at) if recovered_at is not None else -1.0
    return out


def min_recovery_params(block_params: Sequence[int], n_groups: int) -> int:
    """The fewest backbone parameters of a tree plan that recovers a grouping of ``n_groups`` groups.

    A tree recovers a grouping at block ``d`` with at least ``n_groups`` nodes at
    every block from ``d`` on, so the cheapest one shares every block but the
    last and splits into the groups there (used by methods' feasibility).
    """
    return int(sum(block_params[:-1]) + n_groups * block_params[-1])


def _pairs(partition: Sequence[frozenset[str]]) -> set[frozenset[str]]:
    return {frozenset(pair) for group in partition for pair in itertools.combinations(sorted(group), 2)}


def co_sharing(partition: Sequence[frozenset[str]], truth: Sequence[frozenset[str]]) -> tuple[float | None, float | None]:
    """Pairwise co-sharing (precision, recall) of ``partition`` against the true groups.

    A pair of tasks is predicted when it shares a group of ``partition`` and
    true when it shares a true group. Precision: the predicted pairs that are
    true (merging true groups lowers it); recall: the true pairs that are
    predicted (fragmenting a true group lowers it). None where undefined.

    >>> co_sharing([frozenset("abcd")], [frozenset("ab"), frozenset("cd")])
    (0.3333333333333333, 1.0)
    >>> co_sharing([frozenset("a"), frozenset("b"), frozenset("cd")], [frozenset("ab"), frozenset("cd")])
    (1.0, 0.5)
    """
    predicted, true = _pairs(partition), _pairs(truth)
    hits = len(predicted & true)
    precision = hits / len(predicted) if predicted else None
    recall = hits / len(true) if true else None
    return precision, recall


def _refines(partition: Sequence[frozenset[str]], coarse: set[frozenset[str]]) -> bool:
    return all(any(group <= c for c in coarse) for group in partition)


@torch.no_grad()
def measure_latency(
    model: nn.Module,
    example: torch.Tensor,
    repeats: int = 20,
    warmup: int = 3,
    amp: bool = False,
) -> float:
    """Median milliseconds of one forward pass on ``example`` (its batch size)."""
    model.eval()
    device = example.device
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            model(example)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(1000.0 * (time.perf_counter() - start))
    return float(statistics.median(times))
