"""The 8x8 handwritten digits bundled with scikit-learn, as several binary tasks.

``sklearn.datasets.load_digits`` ships with scikit-learn (1797 images, no
download). Images become ``[N, 1, 8, 8]`` float32 in ``[0, 1]`` (the raw
pixel values 0..16 divided by 16). The tasks are attributes of the digit's
class, each a binary task unless noted:

============  =================  ======================================
task          positive digits    what it asks (share of positives)
============  =================  ======================================
``even``      0 2 4 6 8          parity (50%)
``gt4``       5 6 7 8 9          is the digit greater than 4 (50%)
``prime``     2 3 5 7            is the digit prime (40%)
``loop``      0 6 8 9            does its usual shape have a closed loop (40%)
``mult3``     0 3 6 9            is it a multiple of 3 (40%)
``straight``  1 4 7              is it drawn with straight strokes only (30%)
``symmetric`` 0 1 8              is its shape left-right symmetric (30%)
``digit``     all, 10 classes    the digit (multiclass; if ``multiclass``)
============  =================  ======================================

``tasks`` picks a subset (comma-separated, in the given order; ``all`` is
the seven binary tasks). The arithmetic tasks (even, gt4, prime, mult3) and
the shape tasks (loop, straight, symmetric) are each functions of the class,
but no grouping of them is known to be the right one for a network, so the
benchmark declares none (``has_groups = False``).

Splits are stratified by digit and seeded by ``data_seed`` (scikit-learn's
``train_test_split``): ``test_fraction`` of the images for test, then
``val_fraction`` of all images for validation, the rest for training. The
default backbone is a small residual CNN, ``rescnn_backbone(1, 8, channels=
(w, 2w, 2w), strides=(1, 2, 1))`` with ``w = width`` (16); the protocol is
quick on one CPU thread (40 epochs at most, early stopping after 8).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from branchbench.core.backbones import rescnn_backbone
from branchbench.core.benchmark import Benchmark, Split, TrainingProtocol
from branchbench.core.options import Option, OptionError
from branchbench.core.tasks import TaskSpec
from branchbench.datasets.base import Dataset

BINARY_TASKS: dict[str, tuple[int, ...]] = {
    "even": (0, 2, 4, 6, 8),
    "gt4": (5, 6, 7, 8, 9),
    "prime": (2, 3, 5, 7),
    "loop": (0, 6, 8, 9),
    "mult3": (0, 3, 6, 9),
    "straight": (1, 4, 7),
    "symmetric": (0, 1, 8),
}
MULTICLASS_TASK = "digit"


class Digits(Dataset):
    """scikit-learn's 8x8 digits: binary attribute tasks (see the module docstring)."""

    name: ClassVar[str] = "digits"
    has_groups: ClassVar[bool] = False
    options: ClassVar[dict[str, Option]] = {
        "tasks": Option(
            "all", f"comma-separated subset of {sorted(BINARY_TASKS)}, or 'all' (every binary task)"
        ),
        "multiclass": Option(False, f"add the 10-class task {MULTICLASS_TASK!r}"),
        "val_fraction": Option(0.15, "share of the images for validation", low=0.01, high=0.5),
        "test_fraction": Option(0.25, "share of the images for test", low=0.01, high=0.5),
        "data_seed": Option(0, "seed of the stratified split", low=0),
        "width": Option(16, "channels of the CNN stem; later blocks have twice as many", low=1, high=1024),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.task_names()  # validates the task list now

    def task_names(self) -> list[str]:
        owner = f"dataset {self.name!r}"
        spec = self.params["tasks"].strip()
        if spec == "all":
            names = list(BINARY_TASKS)
        else:
            names = [t.strip() for t in spec.split(",") if t.strip()]
            unknown = [t for t in names if t not in BINARY_TASKS]
            if unknown or not names:
                raise OptionError(
                    f"{owner}: tasks={spec!r} names unknown task(s) {unknown}; choose from "
                    f"{list(BINARY_TASKS)} (comma-separated) or 'all'"
                )
            if len(set(names)) != len(names):
                raise OptionError(f"{owner}: tasks={spec!r} repeats a task")
        if self.params["multiclass"]:
            names.append(MULTICLASS_TASK)
        if self.params["val_fraction"] + self.params["test_fraction"] >= 0.9:
            raise OptionError(
                f"{owner}: val_fraction + test_fraction = "
                f"{self.params['val_fraction'] + self.params['test_fraction']:.2f} leaves too little "
                f"to train on; keep their sum below 0.9"
            )
        return names

    def protocol(self) -> TrainingProtocol:
        return TrainingProtocol(
            epochs=40,
            batch_size=128,
            optimizer="adam",
            lr=1e-3,
            lr_schedule="cosine",
            early_stopping=8,
            threads=1,
        )

    def load(self) -> Benchmark:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        p = self.params
        names = self.task_names()
        data = load_digits()
        images = (data.images / 16.0).astype(np.float32)[:, None, :, :]
        label = data.target.astype(np.int64)

        index = np.arange(len(label))
        rest, test = train_test_split(
            index, test_size=p["test_fraction"], stratify=label, random_state=p["data_seed"]
        )
        val_share = p["val_fraction"] / (1.0 - p["test_fraction"])
        train, val = train_test_split(
            rest, test_size=val_share, stratify=label[rest], random_state=p["data_seed"]
        )

        def split(idx: np.ndarray) -> Split:
            idx = np.sort(idx)
            digits = label[idx]
            y: dict[str, torch.Tensor] = {}
            for name in names:
                if name == MULTICLASS_TASK:
                    y[name] = torch.from_numpy(digits.copy())
                else:
                    y[name] = torch.from_numpy(np.isin(digits, BINARY_TASKS[name]).astype(np.float32))
            return Split(torch.from_numpy(images[idx]), y)

        tasks = [
            TaskSpec(n, "multiclass", n_outputs=10) if n == MULTICLASS_TASK else TaskSpec(n, "binary")
            for n in names
        ]
        w = p["width"]
        return Benchmark(
            name=self.name,
            tasks=tasks,
            splits={"train": split(train), "val": split(val), "test": split(test)},
            backbone=rescnn_backbone(1, 8, channels=(w, 2 * w, 2 * w), strides=(1, 2, 1)),
            protocol=self.protocol(),
            groups=None,
            options=dict(p),
        )
