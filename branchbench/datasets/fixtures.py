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
        z = a + b * u + c * v + bump  # at least 0.3 m
        dz_du = b - bump * (u - u0) / s**2
        dz_dv = c - bump * (v - v0) / s**2
        n_vec = np.stack([-dz_du, -dz_dv, np.full_like(z, 0.5)])
        n_vec /= np.linalg.norm(n_vec, axis=0, keepdims=True)
        sky = v < rng.uniform(-1.2, -0.6)
        depth[i] = np.where(sky, np.nan, z)
        normal[i] = np.where(sky[None], np.nan, n_vec)

        freq = rng.uniform(0.5, 2.0, size=(2, 2))
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


# ------------------------------------------------------------------ CelebA
CELEBA_LAYOUTS = ("plain", "torchvision", "csv")
CELEBA_NOISE_ATTRIBUTE = "Attractive"
"""Pure noise in the fixture: drawn at random, independent of the pixels (so are the
other attributes the fixture does not draw)."""

_HAIR = {"Black_Hair": (25, 20, 20), "Blond_Hair": (235, 205, 95), "Brown_Hair": (125, 70, 30)}


def celeba_fixture_labels(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Labels (booleans) of the 40 attributes for ``n`` fixture faces.

    Drawn in the pixels, in correlated groups: hair colour (exactly one of
    Black/Blond/Brown_Hair, a third each); a beard group tied to a latent sex
    (5_o_Clock_Shadow, Goatee, Mustache only on "male" faces; No_Beard is
    "none of the three"), Rosy_Cheeks (mostly on the other faces), and
    Wearing_Hat. Every other attribute, :data:`CELEBA_NOISE_ATTRIBUTE` among
    them, is a fair coin independent of the image.
    """
    from branchbench.datasets.celeba import CELEBA_ATTRIBUTES

    rng = np.random.default_rng(seed)
    labels = {name: rng.random(n) < 0.5 for name in CELEBA_ATTRIBUTES}
    hair = rng.integers(0, 3, n)
    for k, name in enumerate(_HAIR):
        labels[name] = hair == k
    male = rng.random(n) < 0.5
    labels["Male"] = male
    labels["Mustache"] = male & (rng.random(n) < 0.6)
    labels["Goatee"] = male & (rng.random(n) < 0.5)
    labels["5_o_Clock_Shadow"] = male & (rng.random(n) < 0.5)
    labels["No_Beard"] = ~(labels["Mustache"] | labels["Goatee"] | labels["5_o_Clock_Shadow"])
    labels["Rosy_Cheeks"] = rng.random(n) < np.where(male, 0.1, 0.6)
    labels["Wearing_Hat"] = rng.random(n) < 0.35
    return labels


def draw_celeba_face(attrs: Mapping[str, bool], rng: np.random.Generator):
    """A 178x218 cartoon face whose drawn attributes are large uniform shapes (they survive 64x64)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (178, 218), tuple(int(c) for c in rng.integers(60, 200, 3)))
    draw = ImageDraw.Draw(image)
    dx, dy = (int(v) for v in rng.integers(-5, 6, 2))
    cx, cy = 89 + dx, 120 + dy
    hair = next(c for name, c in _HAIR.items() if attrs[name])
    draw.ellipse((cx - 62, cy - 95, cx + 62, cy + 10), fill=hair)
    skin = tuple(int(c) for c in rng.integers((180, 140, 110), (235, 190, 160)))
    draw.ellipse((cx - 50, cy - 60, cx + 50, cy + 75), fill=skin)
    for side in (-1, 1):
        draw.ellipse((cx + side * 20 - 6, cy - 25, cx + side * 20 + 6, cy - 15), fill=(30, 30, 60))
    if attrs["Rosy_Cheeks"]:
        for side in (-1, 1):
            draw.ellipse((cx + side * 30 - 15, cy - 4, cx + side * 30 + 15, cy + 24), fill=(250, 50, 110))
    if attrs["5_o_Clock_Shadow"]:
        for side in (-1, 1):
            x0, x1 = sorted((cx + side * 22, cx + side * 48))
            draw.rectangle((x0, cy + 28, x1, cy + 62), fill=(70, 80, 120))
    if attrs["Mustache"]:
        draw.rectangle((cx - 28, cy + 24, cx + 28, cy + 38), fill=(45, 30, 25))
    if attrs["Goatee"]:
        draw.rectangle((cx - 16, cy + 52, cx + 16, cy + 78), fill=(60, 40, 30))
    if attrs["Wearing_Hat"]:
        draw.rectangle((cx - 70, 0, cx + 70, cy - 70), fill=(30, 60, 210))
    pixels = np.asarray(image).astype(np.int16) + rng.integers(-8, 9, (218, 178, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_celeba_fixture(
    root: str | Path,
    layout: str = "plain",
    n: int = 300,
    seed: int = 0,
    split: tuple[float, float, float] = (0.5, 0.25, 0.25),
) -> Path:
    """Write a small CelebA in one of the accepted layouts (real JPEGs, real file formats); return root.

    ``layout`` is ``"plain"`` (files in ``root``), ``"torchvision"`` (under
    ``root/celeba``) or ``"csv"`` (the CSV copy, images in
    ``img_align_celeba/img_align_celeba``). Partitions are assigned at random in
    the ``split`` proportions (each at least one image). Labels come from
    :func:`celeba_fixture_labels`.
    """
    from branchbench.datasets.celeba import CELEBA_ATTRIBUTES

    if layout not in CELEBA_LAYOUTS:
        raise ValueError(f"layout={layout!r}: use one of {CELEBA_LAYOUTS}")
    if n < 3:
        raise ValueError("a CelebA fixture needs at least 3 images (one per split)")
    root = Path(root)
    base = root / "celeba" if layout == "torchvision" else root
    images = base / "img_align_celeba"
    if layout == "csv":
        images = images / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    labels = celeba_fixture_labels(n, seed)
    rng = np.random.default_rng(seed + 1)
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    for i, name in enumerate(names):
        draw_celeba_face({a: bool(v[i]) for a, v in labels.items()}, rng).save(images / name, quality=90)
    counts = np.maximum(1, np.floor(np.asarray(split) * n).astype(int))
    counts[0] = n - counts[1] - counts[2]
    partition = rng.permutation(np.repeat([0, 1, 2], counts))
    values = np.stack([np.where(labels[a], 1, -1) for a in CELEBA_ATTRIBUTES], axis=1)
    if layout == "csv":
        rows = [",".join(["image_id", *CELEBA_ATTRIBUTES])]
        rows += [",".join([name, *map(str, values[i])]) for i, name in enumerate(names)]
        (base / "list_attr_celeba.csv").write_text("\n".join(rows) + "\n")
        rows = ["image_id,partition"] + [f"{name},{p}" for name, p in zip(names, partition, strict=True)]
        (base / "list_eval_partition.csv").write_text("\n".join(rows) + "\n")
    else:
        rows = [str(n), " ".join(CELEBA_ATTRIBUTES) + " "]
        rows += [name + "".join(f" {v:2d}" for v in values[i]) for i, name in enumerate(names)]
        (base / "list_attr_celeba.txt").write_text("\n".join(rows) + "\n")
        rows = [f"{name} {p}" for name, p in zip(names, partition, strict=True)]
        (base / "list_eval_partition.txt").write_text("\n".join(rows) + "\n")
    return root


def make_celeba(directory: str | Path) -> dict[str, Any]:
    """The conformance tests' options for dataset ``celeba``: a 48-image fixture at 16x16."""
    directory = Path(directory)
    root = write_celeba_fixture(directory / "celeba_fixture", n=48)
    return {"root": str(root), "cache_dir": str(directory / "cache"), "resolution": 16, "width": 8, "workers": 1}


# --------------------------------------------------------------- Taskonomy
TASKONOMY_LAYOUTS = ("building", "omnidata", "domain")
TASKONOMY_FIXTURE_BUILDINGS: dict[str, tuple[str, ...]] = {
    "train": ("allensville",), "val": ("collierville",), "test": ("ihlen",),
}
"""One building of the tiny split per split (their real names, so the shipped lists apply)."""
TASKONOMY_FIXTURE_CLASSES = (1, 4, 9)
"""The segmentation labels the fixture draws (raw Taskonomy labels; 0 marks a few unlabelled pixels)."""


def taskonomy_fixture_view(building: str, point: int, view: int, size: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """The raw arrays of one fixture view, as its PNGs hold them (regenerable, for tests).

    A scene has two independent latent layers, so every target is learnable from
    nearby pixels of the RGB image:

    * geometry: a tilted plane with a bump at a random scale, ``z`` in metres, stored as
      Taskonomy's z-buffer (``z * 512``, uint16) with 65535 ("no depth") above a
      random horizon, and its surface normal stored 127-centred (uint8 RGB);
    * layout: a smooth field cut into three regions, labelled with
      :data:`TASKONOMY_FIXTURE_CLASSES` (a 2x2 patch unlabelled, 0), texture
      edges in a band of two pixels either side of the region boundaries
      (``0.08 * 2^16``, the top of Taskonomy's edge range, else 0) and keypoint blobs (up to ``0.005 * 2^16``) around
      three 2x2 dots.

    The image shows the log depth (red, black where there is none), the regions
    (green) and a Lambertian shading of the surface with the dots at full
    intensity (blue), with noise.
    """
    import zlib

    rng = np.random.default_rng([seed, zlib.crc32(building.encode()), point, view])
    grid = np.linspace(-1.0, 1.0, size)
    v, u = np.meshgrid(grid, grid, indexing="ij")
    b, c = rng.uniform(-0.3, 0.3, size=2)
    h, s = rng.uniform(-0.3, 0.3), rng.uniform(0.25, 0.45)
    u0, v0 = rng.uniform(-0.6, 0.6, size=2)
    bump = h * np.exp(-((u - u0) ** 2 + (v - v0) ** 2) / (2 * s**2))
    shape = 1.0 + b * u + c * v + bump  # in [0.1, 1.9]
    z = np.exp(rng.uniform(np.log(0.02), np.log(4.0))) * shape  # metres: log depths spread widely
    dz_du, dz_dv = b - bump * (u - u0) / s**2, c - bump * (v - v0) / s**2
    normal = np.stack([-dz_du, -dz_dv, np.full_like(z, 0.4)])
    normal /= np.linalg.norm(normal, axis=0, keepdims=True)
    sky = v < rng.uniform(-1.2, -0.5)
    depth = np.where(sky, 65535, np.maximum(1, np.round(z * 512))).astype(np.uint16)
    normal_raw = np.clip(np.round((normal + 1.0) / 2.0 * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)

    freq = rng.uniform(0.5, 2.0, size=(2, 2))
    phase = rng.uniform(0, 2 * np.pi, size=2)
    field = np.cos(freq[0, 0] * u + freq[0, 1] * v + phase[0]) + np.cos(freq[1, 0] * u - freq[1, 1] * v + phase[1])
    region = np.digitize(field, np.quantile(field, [1 / 3, 2 / 3]))
    labels = np.asarray(TASKONOMY_FIXTURE_CLASSES, np.uint8)[region]
    r, q = rng.integers(0, size - 2, size=2)
    labels[r : r + 2, q : q + 2] = 0
    boundary = np.zeros_like(region, dtype=bool)
    across, down = region[:, :-1] != region[:, 1:], region[:-1, :] != region[1:, :]
    boundary[:, :-1] |= across
    boundary[:, 1:] |= across
    boundary[:-1, :] |= down
    boundary[1:, :] |= down
    band = boundary.copy()  # two pixels either side of a region boundary
    band[1:] |= boundary[:-1]
    band[:-1] |= boundary[1:]
    band[:, 1:] |= boundary[:, :-1]
    band[:, :-1] |= boundary[:, 1:]
    edges = np.where(band, round(0.08 * 2**16), 0).astype(np.uint16)

    rows, cols = np.arange(size)[:, None], np.arange(size)[None]
    dots, heat = np.zeros((size, size)), np.zeros((size, size))
    for row, col in rng.integers(1, size - 2, size=(3, 2)):
        dots[row : row + 2, col : col + 2] = 1.0
        heat = np.maximum(heat, np.exp(-((rows - row - 0.5) ** 2 + (cols - col - 0.5) ** 2) / (2 * (size / 10) ** 2)))
    keypoints = np.round(heat * 0.005 * 2**16).astype(np.uint16)

    light = np.array([0.5, 0.5, 1.0]) / np.linalg.norm([0.5, 0.5, 1.0])
    shading = np.clip(np.tensordot(light, normal, axes=1), 0.0, 1.0)
    red = np.where(sky, 0.0, (np.log1p(z * 512) / np.log(2.0**16) - 0.1) / 0.7)
    green = 0.4 * region
    blue = np.where(dots > 0, 1.0, np.where(sky, 0.0, 0.6 * shading))
    image = np.stack([red, green, blue]) + 0.03 * rng.standard_normal((3, size, size))
    rgb = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    return {"rgb": rgb, "segment_semantic": labels, "normal": normal_raw, "depth_zbuffer": depth,
            "keypoints2d": keypoints, "edge_texture": edges}


def taskonomy_fixture_names(views: int) -> list[tuple[int, int]]:
    """The (point, view) pairs of a building's ``views`` fixture views: three views per point."""
    return [(i // 3, i % 3) for i in range(views)]


def write_taskonomy_fixture(
    root: str | Path,
    layout: str = "building",
    views: Mapping[str, int] | None = None,
    size: int = 32,
    seed: int = 0,
    buildings: Mapping[str, Sequence[str]] | None = None,
    segment_token: str = "segmentsemantic",
) -> Path:
    """Write a tiny Taskonomy (six real PNGs per view, Taskonomy's bit depths and names); return root.

    ``layout`` is ``"building"`` (``root/<building>/<modality>/``), ``"omnidata"``
    (``root/<modality>/taskonomy/<building>/``) or ``"domain"``
    (``root/<modality>/<building>/``). ``views`` gives each split's views per
    building (default train 12, val 6, test 6); ``buildings`` the buildings per
    split (default :data:`TASKONOMY_FIXTURE_BUILDINGS`). Segmentation files are
    named ``..._domain_<segment_token>.png`` (the sample building's spelling by
    default). Pixels come from :func:`taskonomy_fixture_view`.
    """
    from PIL import Image

    if layout not in TASKONOMY_LAYOUTS:
        raise ValueError(f"layout={layout!r}: use one of {TASKONOMY_LAYOUTS}")
    root = Path(root)
    views = dict(views) if views is not None else {"train": 12, "val": 6, "test": 6}
    buildings = dict(buildings) if buildings is not None else dict(TASKONOMY_FIXTURE_BUILDINGS)
    for split, names in buildings.items():
        for building in names:
            for point, view in taskonomy_fixture_names(views[split]):
                arrays = taskonomy_fixture_view(building, point, view, size, seed)
                for modality, array in arrays.items():
                    if layout == "building":
                        folder = root / building / modality
                    elif layout == "omnidata":
                        folder = root / modality / "taskonomy" / building
                    else:
                        folder = root / modality / building
                    folder.mkdir(parents=True, exist_ok=True)
                    token = segment_token if modality == "segment_semantic" else modality
                    Image.fromarray(array).save(folder / f"point_{point}_view_{view}_domain_{token}.png")
    return root


def make_taskonomy(directory: str | Path) -> dict[str, Any]:
    """The conformance tests' options for dataset ``taskonomy``: the small fixture, 32x32 PNGs read at 16x16."""
    directory = Path(directory)
    root = write_taskonomy_fixture(directory / "taskonomy_fixture")
    return {"root": str(root), "cache_dir": str(directory / "cache"), "source_size": 32, "resolution": 16,
            "partial": True, "backbone": "dense", "width": 8, "workers": 1}
