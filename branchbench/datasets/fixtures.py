"""Fixture makers for tests: small data files in exactly the formats the loaders read.

``write_npz_fixture`` (one ``x`` of all rows), ``write_split_npz_fixture`` (one
``x_<split>, y_<split>`` pair per split) and ``write_csv_fixture`` write learnable
toy data (targets are functions of the inputs) in the formats of
:mod:`branchbench.datasets.npz`.
``drop`` leaves arrays (columns) out and ``extra`` adds or replaces some, which
is how tests build malformed files. ``make_<dataset>(directory)`` is what the
conformance tests use to point a file-based dataset at a fixture.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_TASKS = ("a", "b", "c")
DEFAULT_KINDS = ("binary", "regression", "multiclass")


def fixture_arrays(
    n: int = 120,
    tasks: Sequence[str] = DEFAULT_TASKS,
    kinds: Sequence[str] = DEFAULT_KINDS,
    input_dim: int = 6,
    image_shape: tuple[int, int, int] | None = None,
    image_dtype: str = "float32",
    n_classes: int = 3,
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Inputs and one target array per task; each target is a function of its input's projection."""
    if len(kinds) != len(tasks):
        raise ValueError(f"give one kind per task: {len(tasks)} tasks, {len(kinds)} kinds")
    rng = np.random.default_rng(seed)
    if image_shape is None:
        x = rng.standard_normal((n, input_dim)).astype(np.float32)
    else:
        x = rng.random((n, *image_shape)).astype(np.float32)
        if image_dtype == "uint8":
            x = np.round(x * 255).astype(np.uint8)
    flat = x.reshape(n, -1).astype(np.float64)
    flat = (flat - flat.mean(axis=0)) / (flat.std(axis=0) + 1e-8)
    z = flat @ rng.standard_normal((flat.shape[1], len(tasks))) / np.sqrt(flat.shape[1])
    targets: dict[str, np.ndarray] = {}
    for i, (task, kind) in enumerate(zip(tasks, kinds, strict=True)):
        if kind == "binary":
            targets[task] = (z[:, i] > np.median(z[:, i])).astype(np.float32)
        elif kind == "multiclass":
            edges = np.quantile(z[:, i], np.linspace(0, 1, n_classes + 1)[1:-1])
            targets[task] = np.digitize(z[:, i], edges).astype(np.int64)
        elif kind == "regression":
            targets[task] = (z[:, i] + 0.1 * rng.standard_normal(n)).astype(np.float32)
        else:
            raise ValueError(f"unknown kind {kind!r}")
    return x, targets


def _split(n: int, seed: int) -> np.ndarray:
    names = np.array(["train"] * n, dtype="<U5")
    perm = np.random.default_rng(seed + 1).permutation(n)
    names[perm[: max(1, n // 5)]] = "test"
    names[perm[max(1, n // 5) : max(2, n // 5 + n // 6)]] = "val"
    return names


def write_npz_fixture(
    path: str | Path,
    n: int = 120,
    tasks: Sequence[str] = DEFAULT_TASKS,
    kinds: Sequence[str] = DEFAULT_KINDS,
    input_dim: int = 6,
    image_shape: tuple[int, int, int] | None = None,
    image_dtype: str = "float32",
    groups: Sequence[int] | None = None,
    split: bool = False,
    layout: str = "per_task",
    write_kinds: bool = True,
    n_classes: int = 3,
    seed: int = 0,
    drop: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
    compress: bool = False,
) -> Path:
    """Write a ``.npz`` fixture and return its path.

    ``layout="per_task"`` writes ``y_<task>`` arrays, ``"matrix"`` one 2-D ``y``
    with ``task_names`` (multiclass labels stored as floats there). ``kinds`` is
    written as an array unless ``write_kinds=False`` (then the loader infers
    them); ``groups`` and a ``split`` array are written when given / asked for;
    ``compress`` writes it with ``numpy.savez_compressed``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x, targets = fixture_arrays(n, tasks, kinds, input_dim, image_shape, image_dtype, n_classes, seed)
    arrays: dict[str, Any] = {"x": x}
    if layout == "per_task":
        arrays.update({f"y_{t}": v for t, v in targets.items()})
    elif layout == "matrix":
        arrays["y"] = np.stack([targets[t].astype(np.float32) for t in tasks], axis=1)
        arrays["task_names"] = np.array(list(tasks), dtype=str)
    else:
        raise ValueError(f"layout={layout!r}: use 'per_task' or 'matrix'")
    if write_kinds:
        arrays["kinds"] = np.array(list(kinds), dtype=str)
    if groups is not None:
        arrays["groups"] = np.asarray(groups, dtype=np.int64)
    if split:
        arrays["split"] = _split(n, seed)
    for key in drop:
        arrays.pop(key, None)
    arrays.update(extra or {})
    with path.open("wb") as handle:
        (np.savez_compressed if compress else np.savez)(handle, **arrays)
    return path


def write_csv_fixture(
    path: str | Path,
    n: int = 120,
    tasks: Sequence[str] = DEFAULT_TASKS,
    kinds: Sequence[str] = DEFAULT_KINDS,
    input_dim: int = 5,
    split: bool = False,
    n_classes: int = 3,
    seed: int = 0,
    drop: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a ``.csv`` fixture (columns ``x_0..``, ``y_<task>``, optional ``split``); return its path."""
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x, targets = fixture_arrays(n, tasks, kinds, input_dim, None, "float32", n_classes, seed)
    columns: dict[str, Any] = {f"x_{i}": x[:, i] for i in range(input_dim)}
    columns.update({f"y_{t}": v for t, v in targets.items()})
    if split:
        columns["split"] = _split(n, seed)
    for key in drop:
        columns.pop(key, None)
    columns.update(extra or {})
    pd.DataFrame(columns).to_csv(path, index=False)
    return path


def write_split_npz_fixture(
    path: str | Path,
    sizes: Mapping[str, int] | None = None,
    tasks: Sequence[str] = DEFAULT_TASKS,
    kinds: Sequence[str] = DEFAULT_KINDS,
    input_dim: int = 6,
    image_shape: tuple[int, int, int] | None = None,
    image_dtype: str = "float32",
    groups: Sequence[int] | None = None,
    write_task_names: bool = True,
    write_kinds: bool = True,
    n_classes: int = 3,
    seed: int = 0,
    drop: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a ``.npz`` fixture in the per-split layout and return its path.

    ``sizes`` gives the rows per split (default train 80, val 20, test 20); a
    split left out of it (or of size 0) gets no arrays, e.g. ``{"train": 90,
    "test": 30}`` leaves the loader to draw val rows from train. Targets are
    ``y_<split>`` of ``N x T`` (``N`` for one task) with ``task_names`` unless
    ``write_task_names=False``. The rows are those of :func:`fixture_arrays`
    in train, val, test order.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sizes = dict(sizes) if sizes is not None else {"train": 80, "val": 20, "test": 20}
    x, targets = fixture_arrays(sum(sizes.values()), tasks, kinds, input_dim, image_shape, image_dtype,
                                n_classes, seed)
    y = np.stack([targets[t].astype(np.float32) for t in tasks], axis=1)
    if len(tasks) == 1:
        y = y[:, 0]
    arrays: dict[str, Any] = {}
    start = 0
    for split in ("train", "val", "test"):
        size = sizes.get(split, 0)
        if size:
            arrays[f"x_{split}"] = x[start : start + size]
            arrays[f"y_{split}"] = y[start : start + size]
        start += size
    if write_task_names:
        arrays["task_names"] = np.array(list(tasks), dtype=str)
    if write_kinds:
        arrays["kinds"] = np.array(list(kinds), dtype=str)
    if groups is not None:
        arrays["groups"] = np.asarray(groups, dtype=np.int64)
    for key in drop:
        arrays.pop(key, None)
    arrays.update(extra or {})
    with path.open("wb") as handle:
        np.savez(handle, **arrays)
    return path


def make_npz(directory: str | Path) -> Path:
    """The conformance tests' fixture for dataset ``npz``: vectors, three kinds, no groups."""
    return write_npz_fixture(Path(directory) / "npz_fixture.npz")
