"""Task specifications: what a task predicts, how it is trained and how it is scored.

Every task-level quantity in branchbench is a dict keyed by task name (as in
bmtas): predictions, targets, losses, metrics. A :class:`TaskSpec` is the one
place that says how to turn a prediction and a target into a loss and metrics,
so the trainer, the reports and every method agree on them.

Example::

    >>> smile = TaskSpec("smiling", kind="binary")
    >>> smile.main_metric.name, smile.main_metric.higher_is_better
    ('accuracy', True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from sklearn import metrics as skm

TaskKind = Literal["binary", "multiclass", "regression"]
TASK_KINDS: tuple[str, ...] = ("binary", "multiclass", "regression")


@dataclass(frozen=True)
class MetricSpec:
    """A metric's name and whether a larger value is better (signs Δm)."""

    name: str
    higher_is_better: bool


# The first metric of each kind is its main metric: used for Δm and reports.
# ``error`` (1 - accuracy, lower is better) is also defined for binary and
# multiclass tasks, for benchmarks whose papers report errors (CelebA).
DEFAULT_METRICS: dict[str, tuple[MetricSpec, ...]] = {
    "binary": (MetricSpec("accuracy", True), MetricSpec("auc", True), MetricSpec("f1", True)),
    "multiclass": (MetricSpec("accuracy", True), MetricSpec("macro_f1", True)),
    "regression": (MetricSpec("mse", False), MetricSpec("mae", False), MetricSpec("r2", True)),
}


@dataclass(frozen=True)
class TaskSpec:
    """One task of a benchmark.

    ``n_outputs`` is the head's width: 1 for binary and regression, the number
    of classes for multiclass. ``loss_weight`` scales the task's loss in the
    summed multi-task loss; all weights are 1 (equal weighting) by default.
    """

    name: str
    kind: TaskKind
    n_outputs: int = 1
    loss_weight: float = 1.0
    metrics: tuple[MetricSpec, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ValueError(
                f"task {self.name!r}: unknown kind {self.kind!r}; use one of {TASK_KINDS}"
            )
        if self.kind == "multiclass" and self.n_outputs < 2:
            raise ValueError(
                f"task {self.name!r}: a multiclass task needs n_outputs >= 2 "
                f"(the number of classes), got {self.n_outputs}"
            )
        if self.kind != "multiclass" and self.n_outputs != 1:
            raise ValueError(f"task {self.name!r}: a {self.kind} task has n_outputs=1")
        if not self.metrics:
            object.__setattr__(self, "metrics", DEFAULT_METRICS[self.kind])

    @property
    def main_metric(self) -> MetricSpec:
        return self.metrics[0]

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss of one batch (float32 even under autocast)."""
        prediction = prediction.float()
        if self.kind == "binary":
            return F.binary_cross_entropy_with_logits(
                prediction.reshape(-1), target.reshape(-1).float()
            )
        if self.kind == "multiclass":
            return F.cross_entropy(prediction, target.long())
        return F.mse_loss(prediction.reshape(-1), target.reshape(-1).float())

    def score(self, prediction: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """All metrics of this task on a whole split (sklearn's implementations)."""
        pred = prediction.detach().float().cpu()
        y = target.detach().cpu().numpy()
        out: dict[str, float] = {}
        if self.kind == "binary":
            prob = torch.sigmoid(pred.reshape(-1)).numpy()
            label = (prob >= 0.5).astype(np.int64)
            y = y.reshape(-1).astype(np.int64)
            accuracy = skm.accuracy_score(y, label)
            values = {
                "accuracy": accuracy,
                "error": 1.0 - accuracy,
                "auc": skm.roc_auc_score(y, prob) if len(np.unique(y)) == 2 else float("nan"),
                "f1": skm.f1_score(y, label, zero_division=0.0),
            }
        elif self.kind == "multiclass":
            label = pred.argmax(dim=1).numpy()
            y = y.astype(np.int64)
            accuracy = skm.accuracy_score(y, label)
            values = {
                "accuracy": accuracy,
                "error": 1.0 - accuracy,
                "macro_f1": skm.f1_score(y, label, average="macro", zero_division=0.0),
            }
        else:
            p = pred.reshape(-1).numpy()
            y = y.reshape(-1).astype(np.float64)
            values = {
                "mse": skm.mean_squared_error(y, p),
                "mae": skm.mean_absolute_error(y, p),
                "r2": skm.r2_score(y, p),
            }
        for metric in self.metrics:
            if metric.name not in values:
                raise ValueError(
                    f"task {self.name!r}: metric {metric.name!r} is not defined for kind "
                    f"{self.kind!r}; choose from {sorted(values)}"
                )
            out[metric.name] = float(values[metric.name])
        return out


def multitask_loss(
    tasks: list[TaskSpec] | tuple[TaskSpec, ...],
    predictions: dict[str, torch.Tensor],
    targets: dict[str, torch.Tensor],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of task losses, and the per-task losses (for curves)."""
    per_task = {t.name: t.loss(predictions[t.name], targets[t.name]) for t in tasks}
    total = sum(t.loss_weight * per_task[t.name] for t in tasks)
    return total, per_task
