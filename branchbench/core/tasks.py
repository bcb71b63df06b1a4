"""Task specifications: what a task predicts, how it is trained and how it is scored.

Every task-level quantity in branchbench is a dict keyed by task name (as in
bmtas): predictions, targets, losses, metrics. A :class:`TaskSpec` is the one
place that says how to turn a prediction and a target into a loss and metrics,
so the trainer, the reports and every method agree on them.

Per-sample kinds (binary, multiclass, regression) predict one value (or one
class) per input; dense kinds (segmentation, normals, depth, keypoints, edges)
predict one per pixel. Dense losses, streamed metrics and the published value
conventions (ignore labels, masks, scaling, with their sources) live in
:mod:`branchbench.core.dense`.

Example::

    >>> smile = TaskSpec("smiling", kind="binary")
    >>> smile.main_metric.name, smile.main_metric.higher_is_better
    ('accuracy', True)
    >>> TaskSpec("normal", kind="normals").n_outputs
    3
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from branchbench.core import dense
from branchbench.core.dense import DENSE_KINDS, IGNORE_INDEX

TaskKind = Literal[
    "binary", "multiclass", "regression", "segmentation", "normals", "depth", "keypoints", "edges"
]
# kinds with one target per sample (what a bring-your-own .npz/.csv file holds)
TASK_KINDS: tuple[str, ...] = ("binary", "multiclass", "regression")
ALL_KINDS: tuple[str, ...] = TASK_KINDS + DENSE_KINDS


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
    "segmentation": (MetricSpec("miou", True), MetricSpec("pixel_acc", True)),
    "normals": (
        MetricSpec("mean_angle", False),
        MetricSpec("cosine", True),
        MetricSpec("within_11_25", True),
        MetricSpec("within_22_5", True),
        MetricSpec("within_30", True),
    ),
    "depth": (MetricSpec("abs_err", False), MetricSpec("rmse", False)),
    "keypoints": (MetricSpec("abs_err", False), MetricSpec("rmse", False)),
    "edges": (MetricSpec("abs_err", False), MetricSpec("rmse", False)),
}
# outputs per kind when not given (None: the number of classes, required)
DEFAULT_OUTPUTS: dict[str, int | None] = {
    "binary": 1, "multiclass": None, "regression": 1,
    "segmentation": None, "normals": 3, "depth": 1, "keypoints": 1, "edges": 1,
}


@dataclass(frozen=True)
class TaskSpec:
    """One task of a benchmark.

    ``n_outputs`` is the head's width: the number of classes for multiclass
    and segmentation (required), 3 for normals, 1 otherwise (the default).
    ``loss_weight`` scales the task's loss in the summed multi-task loss; all
    weights are 1 (equal weighting) by default. Segmentation only:
    ``ignore_index`` marks unlabelled pixels and ``class_weights`` (one per
    class) weight the cross-entropy. ``criterion`` picks a dense kind's loss
    where there is a choice (normals: ``"cosine"``, the default, or ``"l1"``);
    see :mod:`branchbench.core.dense`.
    """

    name: str
    kind: TaskKind
    n_outputs: int | None = None
    loss_weight: float = 1.0
    metrics: tuple[MetricSpec, ...] = field(default=())
    ignore_index: int = IGNORE_INDEX
    class_weights: tuple[float, ...] | None = None
    criterion: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ALL_KINDS:
            raise ValueError(
                f"task {self.name!r}: unknown kind {self.kind!r}; use one of {ALL_KINDS}"
            )
        if self.n_outputs is None:
            if DEFAULT_OUTPUTS[self.kind] is None:
                raise ValueError(
                    f"task {self.name!r}: a {self.kind} task needs n_outputs (the number of classes, >= 2)"
                )
            object.__setattr__(self, "n_outputs", DEFAULT_OUTPUTS[self.kind])
        if self.kind in ("multiclass", "segmentation") and self.n_outputs < 2:
            raise ValueError(
                f"task {self.name!r}: a {self.kind} task needs n_outputs >= 2 "
                f"(the number of classes), got {self.n_outputs}"
            )
        fixed = DEFAULT_OUTPUTS[self.kind]
        if fixed is not None and self.n_outputs != fixed:
            raise ValueError(f"task {self.name!r}: a {self.kind} task has n_outputs={fixed}")
        self._check_dense_options()
        if not self.metrics:
            object.__setattr__(self, "metrics", DEFAULT_METRICS[self.kind])

    def _check_dense_options(self) -> None:
        if self.kind in dense.CRITERIA:
            choices = dense.CRITERIA[self.kind]
            if not self.criterion:
                object.__setattr__(self, "criterion", choices[0])
            elif self.criterion not in choices:
                raise ValueError(
                    f"task {self.name!r}: criterion {self.criterion!r} is not one of {choices} for a {self.kind} task"
                )
        elif self.criterion:
            raise ValueError(f"task {self.name!r}: a {self.kind} task has a fixed loss; leave criterion empty")
        if self.class_weights is not None:
            if self.kind != "segmentation":
                raise ValueError(f"task {self.name!r}: class_weights are for segmentation tasks only")
            weights = tuple(float(w) for w in self.class_weights)
            if len(weights) != self.n_outputs or min(weights) < 0:
                raise ValueError(
                    f"task {self.name!r}: give {self.n_outputs} non-negative class_weights (one per class), "
                    f"got {len(weights)}"
                )
            object.__setattr__(self, "class_weights", weights)

    @property
    def main_metric(self) -> MetricSpec:
        return self.metrics[0]

    @property
    def dense(self) -> bool:
        """Whether the task predicts a value per pixel (a ``(B, C, H, W)`` output)."""
        return self.kind in DENSE_KINDS

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss of one batch (float32 even under autocast)."""
        if self.dense:
            weights = None
            if self.class_weights is not None:
                weights = torch.tensor(self.class_weights, dtype=torch.float32, device=prediction.device)
            return dense.dense_loss(
                self.name, self.kind, prediction, target, channels=self.n_outputs,
                ignore_index=self.ignore_index, class_weights=weights, criterion=self.criterion,
            )
        prediction = prediction.float()
        if self.kind == "binary":
            return F.binary_cross_entropy_with_logits(
                prediction.reshape(-1), target.reshape(-1).float()
            )
        if self.kind == "multiclass":
            return F.cross_entropy(prediction, target.long())
        return F.mse_loss(prediction.reshape(-1), target.reshape(-1).float())

    def batch_stats(self, prediction: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """A dense task's additive metric statistics of one batch (sum them over batches)."""
        if not self.dense:
            raise TypeError(f"task {self.name!r}: a {self.kind} task is scored with score(), not batch statistics")
        return dense.batch_stats(
            self.name, self.kind, prediction, target, channels=self.n_outputs, ignore_index=self.ignore_index
        )

    def score_stats(self, stats: dict[str, torch.Tensor]) -> dict[str, float]:
        """A dense task's metrics from statistics summed over a split."""
        return self._select(dense.finish(self.name, self.kind, stats))

    def score(self, prediction: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """All metrics of this task on a whole split (sklearn's implementations; dense: one batch's stats)."""
        if self.dense:
            return self.score_stats(self.batch_stats(prediction, target))
        from sklearn import metrics as skm  # here, not at import: listing methods stays fast

        pred = prediction.detach().float().cpu()
        y = target.detach().cpu().numpy()
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
        return self._select(values)

    def _select(self, values: dict[str, float]) -> dict[str, float]:
        """The task's declared metrics, in order, from all values of its kind."""
        out: dict[str, float] = {}
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
