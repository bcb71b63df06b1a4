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


# --------------------------------------------------------------------- dense
DENSE_FIXTURE_TASKS: dict[str, str] = {
    "seg": "segmentation", "normal": "normals", "depth": "depth", "keypoints": "keypoints", "edges": "edges",
}
DENSE_FIXTURE_GROUPS: dict[str, int] = {"depth": 0, "normal": 0, "seg": 1, "edges": 1, "keypoints": 1}


def dense_arrays(n: int, size: int = 16, n_classes: int = 3, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Images and the five dense targets of ``n`` synthetic scenes (not Taskonomy data).

    Each scene has two independent latent layers, which give the known task
    groups (:data:`DENSE_FIXTURE_GROUPS`):

    * geometry: a tilted plane with a bump gives ``depth`` and its surface
      ``normal``; the rows above a random horizon are "sky", where both are
      invalid (NaN), as Taskonomy masks normals where depth is missing;
    * layout: a smooth random field cut into ``n_classes`` regions gives
      ``seg`` (with a few unlabelled pixels, label 255), ``edges`` (1 on the
      region boundaries, else 0) and ``keypoints`` (blobs in [0, 1] around a
      few dots).

    The image's three channels show the depth, the region map and the dots,
    with noise, so every target is learnable from nearby pixels.
    """
    rng = np.random.default_rng(seed)
    grid = np.linspace(-1.0, 1.0, size)
    v, u = np.meshgrid(grid, grid, indexing="ij")  # v: rows (top = -1), u: columns
    x = np.zeros((n, 3, size, size), np.float32)
    seg = np.zeros((n, size, size), np.uint8)
    normal = np.zeros((n, 3, size, size), np.float32)
    depth = np.zeros((n, size, size), np.float32)
    keypoints = np.zeros((n, size, size), np.float32)
    edges = np.zeros((n, size, size), np.float32)
    for i in range(n):
        a, b, c = rng.uniform(0.3, 0.7), rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6)
        h, s = rng.uniform(-0.5, 0.5), rng.uniform(0.25, 0.45)
        u0, v0 = rng.uniform(-0.6, 0.6, size=2)
        bump = h * np.exp(-((u - u0) ** 2 + (v - v0) ** 2) / (2 * s**2))
        z = a + b * u + c * v + bump
        dz_du = b - bump * (u - u0) / s**2
        dz_dv = c - bump * (v - v0) / s**2
        n_vec = np.stack([-dz_du, -dz_dv, np.full_like(z, 0.5)])
        n_vec /= np.linalg.norm(n_vec, axis=0, keepdims=True)
        sky = v < rng.uniform(-1.2, -0.6)
        depth[i] = np.where(sky, np.nan, z)
        normal[i] = np.where(sky[None], np.nan, n_vec)

        freq = rng.uniform(1.0, 3.0, size=(2, 2))
        phase = rng.uniform(0, 2 * np.pi, size=2)
        field = np.cos(freq[0, 0] * u + freq[0, 1] * v + phase[0]) + np.cos(freq[1, 0] * u - freq[1, 1] * v + phase[1])
        labels = np.digitize(field, np.quantile(field, np.linspace(0, 1, n_classes + 1)[1:-1])).astype(np.uint8)
        boundary = np.zeros_like(field, dtype=bool)
        across = labels[:, :-1] != labels[:, 1:]
        down = labels[:-1, :] != labels[1:, :]
        boundary[:, :-1] |= across
        boundary[:, 1:] |= across
        boundary[:-1, :] |= down
        boundary[1:, :] |= down
        edges[i] = boundary
        r, q = rng.integers(0, size - 2, size=2)
        seg[i] = labels
        seg[i, r : r + 2, q : q + 2] = 255  # unlabelled pixels

        dots = np.zeros_like(field)
        heat = np.zeros_like(field)
        for row, col in rng.integers(1, size - 1, size=(3, 2)):
            dots[row, col] = 1.0
            heat = np.maximum(heat, np.exp(-((np.arange(size)[:, None] - row) ** 2 + (np.arange(size)[None] - col) ** 2) / 8.0))
        keypoints[i] = heat

        noise = 0.05 * rng.standard_normal((3, size, size))
        x[i] = np.stack([np.where(sky, 0.0, z), labels / max(1, n_classes - 1), dots]) + noise
    targets = {"seg": seg, "normal": normal, "depth": depth, "keypoints": keypoints, "edges": edges}
    return x, targets


def dense_benchmark(
    n_train: int = 96,
    n_val: int = 48,
    n_test: int = 48,
    size: int = 16,
    n_classes: int = 3,
    tasks: Sequence[str] | None = None,
    seed: int = 0,
    epochs: int = 3,
    batch_size: int = 32,
) -> Any:
    """A tiny in-memory dense Benchmark for tests: the scenes of :func:`dense_arrays`.

    ``tasks`` picks some of :data:`DENSE_FIXTURE_TASKS` (default: all five);
    the backbone is a small :func:`~branchbench.core.backbones.dense_backbone`
    at output stride 2; the known groups are :data:`DENSE_FIXTURE_GROUPS`.
    """
    import torch

    from branchbench.core.backbones import dense_backbone
    from branchbench.core.benchmark import Benchmark, Split, TrainingProtocol
    from branchbench.core.tasks import TaskSpec

    names = list(tasks or DENSE_FIXTURE_TASKS)
    unknown = sorted(set(names) - set(DENSE_FIXTURE_TASKS))
    if unknown:
        raise ValueError(f"unknown dense fixture task(s) {unknown}; choose from {list(DENSE_FIXTURE_TASKS)}")
    x, targets = dense_arrays(n_train + n_val + n_test, size, n_classes, seed)
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, len(x))}
    splits = {
        split: Split(torch.from_numpy(x[lo:hi]), {t: torch.from_numpy(targets[t][lo:hi]) for t in names})
        for split, (lo, hi) in bounds.items()
    }
    specs = [
        TaskSpec(t, DENSE_FIXTURE_TASKS[t], n_outputs=n_classes if t == "seg" else None) for t in names
    ]
    protocol = TrainingProtocol(epochs=epochs, batch_size=batch_size, lr=3e-3, early_stopping=0, threads=1, amp="off")
    backbone = dense_backbone(3, size, channels=(16, 32, 32, 32), strides=(1, 1, 2, 1), decoder_width=16)
    return Benchmark(
        name="dense_fixture",
        tasks=specs,
        splits=splits,
        backbone=backbone,
        protocol=protocol,
        groups={t: DENSE_FIXTURE_GROUPS[t] for t in names},
    )
