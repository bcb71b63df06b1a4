"""A Benchmark: tasks, splits, input shape, default backbone and training protocol.

Splits are held in memory as tensors (inputs may be a uint8 image cache, made
float by ``input_transform`` on the training device per batch; targets may be
stored raw, e.g. Taskonomy's uint8/uint16 label images, and decoded by
``target_transform`` on the training device per batch), so an epoch is bound by
the model, not by file decoding. Selection and early stopping use the ``val``
split; ``test`` is only ever evaluated, never selected on.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from branchbench.core.backbones import Backbone
from branchbench.core.options import Option, OptionError
from branchbench.core.tasks import TaskSpec

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """Inputs and per-task targets of one split, aligned on the first dimension."""

    x: torch.Tensor
    y: dict[str, torch.Tensor]

    def __post_init__(self) -> None:
        n = self.x.shape[0]
        for task, target in self.y.items():
            if target.shape[0] != n:
                raise ValueError(f"task {task!r} has {target.shape[0]} targets for {n} inputs")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, index: torch.Tensor) -> Split:
        return Split(self.x[index], {t: v[index] for t, v in self.y.items()})

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), {t: v.to(device) for t, v in self.y.items()})


# the protocol's keys: default, type and allowed values (checked strictly, like any option)
PROTOCOL_OPTIONS: dict[str, Option] = {
    "epochs": Option(30, "training epochs", low=1),
    "batch_size": Option(128, "minibatch size", low=1),
    "optimizer": Option("adam", "the optimiser", choices=("adam", "adamw", "sgd")),
    "lr": Option(1e-3, "learning rate (> 0)", low=1e-12),
    "weight_decay": Option(0.0, "weight decay", low=0.0),
    "momentum": Option(0.9, "SGD momentum", low=0.0, high=1.0),
    "lr_schedule": Option("cosine", "learning-rate schedule", choices=("constant", "cosine", "step")),
    "early_stopping": Option(0, "patience in epochs on the validation loss (0 = off)", low=0),
    "max_seconds": Option(None, "stop a run's training after this many seconds (none = no limit)",
                          low=1e-9, type=float),
    "threads": Option(1, "torch CPU threads of a cell", low=1, high=1024),
    "amp": Option("auto", "mixed precision", choices=("auto", "bf16", "off")),
    "divergence_factor": Option(1e3, "fail when the loss exceeds this multiple of its first value (> 1)",
                                low=1.0 + 1e-9),
}
NULLABLE = frozenset({"max_seconds"})


@dataclass(frozen=True)
class TrainingProtocol:
    """How every network of a benchmark is trained (search supernets and retraining).

    ``early_stopping`` is a patience in epochs on the validation loss (0 = off);
    the weights of the best validation epoch are kept. ``max_seconds`` stops a
    run's training early (not a failure). ``threads`` pins torch's CPU threads
    so results do not depend on how many cells run at once. Every key is
    checked like a declared option (:data:`PROTOCOL_OPTIONS`): ``epochs=2.5``,
    ``epochs=true`` and ``epochs="abc"`` are refused with a message naming the
    key. Immutable: :meth:`replace` returns a new protocol.
    """

    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    lr_schedule: str = "cosine"
    early_stopping: int = 0
    max_seconds: float | None = None
    threads: int = 1
    amp: str = "auto"
    divergence_factor: float = 1e3

    def __post_init__(self) -> None:
        for key, option in PROTOCOL_OPTIONS.items():
            value = getattr(self, key)
            if value is None and key in NULLABLE:
                continue
            if value is None:
                raise OptionError(f"protocol.{key} cannot be empty; give {option.describe()}")
            object.__setattr__(self, key, option.validate("protocol", key, value))

    def replace(self, **changes: Any) -> TrainingProtocol:
        unknown = sorted(set(changes) - set(PROTOCOL_OPTIONS))
        if unknown:
            raise OptionError(
                f"unknown protocol key(s) {unknown}; known keys are {sorted(PROTOCOL_OPTIONS)}"
            )
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Benchmark:
    """Everything a method and the trainer need to know about a dataset.

    ``groups`` is the known task grouping (task -> group id) on data that has
    one, e.g. the synthetic data; grouping recovery is scored against it.

    ``target_transform`` turns a batch of stored targets ``{task: tensor}``
    into the targets the losses and metrics take (e.g. raw label images into
    masked floats), on the training device, wherever the trainer uses targets.
    It must accept any subset of the tasks (:meth:`with_tasks`) and keep the
    batch dimension; None (every benchmark without raw targets) leaves the
    targets as stored.
    """

    name: str
    tasks: list[TaskSpec]
    splits: dict[str, Split]
    backbone: Backbone
    protocol: TrainingProtocol = field(default_factory=TrainingProtocol)
    groups: dict[str, int] | None = None
    input_transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    target_transform: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [s for s in SPLITS if s not in self.splits]
        if missing:
            raise ValueError(f"benchmark {self.name!r} lacks split(s) {missing}")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"benchmark {self.name!r}: task names repeat in {names}")
        for split_name, split in self.splits.items():
            absent = sorted(set(names) - set(split.y))
            if absent:
                raise ValueError(f"benchmark {self.name!r}: split {split_name!r} lacks targets for {absent}")
        if self.groups is not None and set(self.groups) != set(names):
            raise ValueError(f"benchmark {self.name!r}: known groups must name every task exactly")

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str) -> TaskSpec:
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(f"benchmark {self.name!r} has no task {name!r}; its tasks are {self.task_names}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.splits["train"].x.shape[1:])

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs as the network takes them (e.g. uint8 cache -> normalised float)."""
        return self.input_transform(x) if self.input_transform is not None else x.float()

    def prepare_targets(self, y: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Targets as the losses and metrics take them (stored targets when there is no ``target_transform``)."""
        return self.target_transform(y) if self.target_transform is not None else y

    def true_partition(self) -> list[frozenset[str]] | None:
        if self.groups is None:
            return None
        by_group: dict[int, set[str]] = {}
        for task in self.task_names:
            by_group.setdefault(self.groups[task], set()).add(task)
        return [frozenset(g) for g in by_group.values()]

    def with_tasks(self, names: list[str]) -> Benchmark:
        """The same data restricted to some tasks (e.g. a single-task network)."""
        keep = [self.task(n) for n in names]
        splits = {k: Split(s.x, {n: s.y[n] for n in names}) for k, s in self.splits.items()}
        groups = {n: self.groups[n] for n in names} if self.groups else None
        return dataclasses.replace(self, tasks=keep, splits=splits, groups=groups)

    def fingerprint(self) -> str:
        """A short hash of the data itself (inputs and targets of every split)."""
        digest = hashlib.sha256()
        for split_name in SPLITS:
            split = self.splits[split_name]
            digest.update(split_name.encode())
            digest.update(split.x.contiguous().cpu().numpy().tobytes())
            for task in self.task_names:
                digest.update(task.encode())
                digest.update(split.y[task].contiguous().cpu().numpy().tobytes())
        return digest.hexdigest()[:16]

