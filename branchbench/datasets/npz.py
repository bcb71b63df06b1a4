"""Bring your own data: a ``.npz`` (or ``.csv``) file as a multi-task benchmark.

``path`` (required) names the file. Every problem with it raises one
:class:`DataFileError` (a ``ValueError``) that names the file, the problem and
the fix.

**.npz** (write it with ``numpy.savez`` / ``numpy.savez_compressed``):

* ``x`` (required): the inputs, ``N x D`` vectors (``N`` alone is one
  feature), or images ``N x C x H x W`` (``N x H x W`` is one channel; images
  must be square). ``uint8`` images are kept as a uint8 cache and scaled to
  ``[0, 1]`` per batch; other images are used as they are.
* targets, either one array per task, ``y_<task>`` (length ``N``; tasks in the
  order of the arrays in the file), or one ``y`` of ``N x T`` with an optional
  ``task_names`` (``T`` strings; else ``t0 .. t{T-1}``).
* ``kinds`` (optional): one of ``binary`` / ``multiclass`` / ``regression`` per
  task, in task order.
* ``groups`` (optional): an integer per task, a known grouping (the benchmark
  then has ``groups``, and ``oracle_tree`` and grouping recovery apply).
* ``split`` (optional): ``train`` / ``val`` / ``test`` per row. Without it the
  rows are split at random by ``data_seed`` (``val_fraction``,
  ``test_fraction``).

Any other array name is an error (it is most likely a typo of one of these).
Save strings as a str array (``np.array(names, dtype=str)``): object arrays are
not loaded (no pickles).

**.csv** (read with pandas): feature columns ``x_*`` (or the columns named by
the ``features`` option), target columns ``y_<task>``, an optional ``split``
column; other columns are ignored. Kinds and groups come from the options.

**Task kinds**: the ``kinds`` option (``binary`` for all tasks, or
``a=binary,b=regression`` for some), else the file's ``kinds``, else inferred
from the targets: values all in {0, 1} -> binary; whole numbers in 0..19 ->
multiclass (``max + 1`` classes); anything else -> regression. Declared kinds
are checked against the values (binary needs 0/1, multiclass whole numbers
>= 0).

Vector inputs are standardised with the training rows' mean and std
(``standardize``); targets are used as given. The default backbone is
``mlp_backbone(D, [width] * depth)`` for vectors and ``rescnn_backbone(C, H,
channels)`` for images.
"""

from __future__ import annotations

import math
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import numpy as np
import torch

from branchbench.core.backbones import Backbone, mlp_backbone, rescnn_backbone
from branchbench.core.benchmark import SPLITS, Benchmark, Split, TrainingProtocol
from branchbench.core.options import Option, OptionError
from branchbench.core.tasks import TASK_KINDS, TaskSpec
from branchbench.datasets.base import Dataset

NPZ_ARRAYS = ("x", "y", "task_names", "kinds", "groups", "split")
MAX_INFERRED_CLASSES = 20
_TASK_NAME = re.compile(r"[A-Za-z0-9_\-]+")


class DataFileError(ValueError):
    """A bring-your-own data file that cannot be used; says which file, what is wrong, and the fix."""


def _fail(path: str | Path, problem: str, fix: str) -> NoReturn:
    raise DataFileError(f"{path}: {problem}. Fix: {fix}")


def uint8_to_unit(x: torch.Tensor) -> torch.Tensor:
    """The uint8 image cache as float in [0, 1]."""
    return x.float() / 255.0


@dataclass
class RawData:
    """What a file holds, before checks: inputs, targets by task, and the optional extras."""

    x: np.ndarray
    targets: dict[str, np.ndarray]
    kinds: list[str] | None = None
    groups: list[Any] | None = None
    split: np.ndarray | None = None


def _parse_mapping(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise OptionError(f"{item!r} is not of the form task=value")
        out[key.strip()] = value.strip()
    return out


def _strings(path: Path, name: str, array: np.ndarray) -> list[str]:
    if array.dtype.kind == "S":
        array = np.char.decode(array, "utf-8")
    if array.dtype.kind != "U":
        _fail(path, f"array {name!r} has dtype {array.dtype}, not strings",
              f"save it as a str array, e.g. {name}=np.array([...], dtype=str)")
    return [str(s) for s in array.reshape(-1)]


# ------------------------------------------------------------------ reading
def read_npz(path: Path) -> RawData:
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as err:
        if "Object arrays" in str(err):
            _fail(path, "holds an object array (e.g. Python strings saved without a dtype), which is "
                  "not loaded for safety", "save strings as a str array: np.array(names, dtype=str)")
        _fail(path, f"could not be read as a .npz archive ({err})",
              "write it with numpy.savez(path, x=..., y_<task>=...)")
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        _fail(path, f"could not be read as a .npz archive ({type(err).__name__}: {err})",
              "write it with numpy.savez(path, x=..., y_<task>=...)")
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        _fail(path, "holds a single array, not an archive of named arrays",
              "save named arrays with numpy.savez(path, x=..., y_<task>=...)")
    try:
        with loaded:
            arrays = {k: loaded[k] for k in loaded.files}
    except Exception as err:  # a damaged member: zlib, zipfile, EOF, format errors alike
        if "Object arrays" in str(err):
            _fail(path, "holds an object array (e.g. Python strings saved without a dtype), which is "
                  "not loaded for safety", "save strings as a str array: np.array(names, dtype=str)")
        _fail(path, f"an array could not be read ({type(err).__name__}: {err})",
              "write the file again with numpy.savez")

    if "x" not in arrays:
        _fail(path, f"has no array 'x' (it holds {sorted(arrays)})",
              "save the inputs as x: numpy.savez(path, x=inputs, y_<task>=targets, ...)")
    unknown = sorted(k for k in arrays if k not in NPZ_ARRAYS and not k.startswith("y_"))
    if unknown:
        _fail(path, f"has unknown array(s) {unknown}",
              f"name arrays only {list(NPZ_ARRAYS)} or y_<task> (check for typos), or drop the others")
    per_task = {k[2:]: v for k, v in arrays.items() if k.startswith("y_")}
    if per_task and "y" in arrays:
        _fail(path, "has both a 'y' array and y_<task> arrays",
              "give targets one way: y_<task> arrays, or one 2-D y with task_names")
    if "task_names" in arrays and "y" not in arrays:
        _fail(path, "has task_names but no 'y' array",
              "task_names names the columns of a 2-D y; with y_<task> arrays, drop task_names")
    if per_task:
        targets = per_task
    elif "y" in arrays:
        y = arrays["y"]
        if y.ndim == 1:
            y = y[:, None]
        if y.ndim != 2:
            _fail(path, f"array 'y' has shape {y.shape}; it should be N x T (one column per task)",
                  "save y as a 2-D array, or one y_<task> array per task")
        if "task_names" in arrays:
            names = _strings(path, "task_names", arrays["task_names"])
            if len(names) != y.shape[1]:
                _fail(path, f"task_names has {len(names)} names but y has {y.shape[1]} columns",
                      "give one name per column of y")
        else:
            names = [f"t{i}" for i in range(y.shape[1])] if y.shape[1] > 1 else ["y"]
        if len(set(names)) != len(names):
            _fail(path, f"task_names repeats a name: {names}", "give every task a distinct name")
        targets = {n: y[:, i] for i, n in enumerate(names)}
    else:
        _fail(path, f"has no targets (it holds {sorted(arrays)})",
              "add one array y_<task> per task (or a 2-D y with task_names)")

    raw = RawData(x=arrays["x"], targets=targets)
    n_tasks = len(targets)
    if "kinds" in arrays:
        raw.kinds = _strings(path, "kinds", arrays["kinds"])
        if len(raw.kinds) != n_tasks:
            _fail(path, f"kinds has {len(raw.kinds)} entries for {n_tasks} tasks {list(targets)}",
                  "give one kind per task, in task order")
    if "groups" in arrays:
        groups = arrays["groups"].reshape(-1)
        if len(groups) != n_tasks:
            _fail(path, f"groups has {len(groups)} entries for {n_tasks} tasks {list(targets)}",
                  "give one integer group id per task, in task order")
        raw.groups = list(groups)
    if "split" in arrays:
        raw.split = np.asarray(_strings(path, "split", arrays["split"]))
    return raw


def read_csv(path: Path, features: str = "") -> RawData:
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        _fail(path, f"could not be read as a CSV table ({type(err).__name__}: {err})",
              "write it with pandas.DataFrame.to_csv (a header row, comma-separated)")
    columns = [str(c) for c in frame.columns]
    if features.strip():
        feature_cols = [c.strip() for c in features.split(",") if c.strip()]
        missing = [c for c in feature_cols if c not in columns]
        if missing:
            _fail(path, f"the features option names column(s) {missing} that are not in the file "
                  f"(its columns are {columns})", "name existing columns in features")
    else:
        feature_cols = [c for c in columns if c.startswith("x_")]
        if not feature_cols:
            _fail(path, f"has no feature columns (none starts with 'x_'; its columns are {columns})",
                  "prefix feature columns with x_, or name them in the features option")
    target_cols = [c for c in columns if c.startswith("y_") and c not in feature_cols]
    if not target_cols:
        _fail(path, f"has no target columns (none starts with 'y_'; its columns are {columns})",
              "name each task's target column y_<task>")
    bad = [c for c in feature_cols + target_cols if not pd.api.types.is_numeric_dtype(frame[c])]
    if bad:
        _fail(path, f"column(s) {bad} are not numeric",
              "encode features and targets as numbers (classes as integers 0..K-1)")
    raw = RawData(
        x=frame[feature_cols].to_numpy(),
        targets={c[2:]: frame[c].to_numpy() for c in target_cols},
    )
    if "split" in columns:
        raw.split = frame["split"].astype(str).str.strip().to_numpy()
    return raw


# ------------------------------------------------------------------- checks
def _infer_kind(values: np.ndarray) -> str:
    finite = values.astype(np.float64)
    if np.all((finite == 0) | (finite == 1)):
        return "binary"
    if np.all(finite == np.round(finite)) and finite.min() >= 0 and finite.max() < MAX_INFERRED_CLASSES:
        return "multiclass"
    return "regression"


def _check_target(path: Path, task: str, values: np.ndarray, n: int) -> np.ndarray:
    if not _TASK_NAME.fullmatch(task):
        _fail(path, f"task name {task!r} is empty or has characters other than letters, digits, "
              "'_' and '-'", "rename the target (y_<task>) to e.g. y_my_task")
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        _fail(path, f"targets of task {task!r} have shape {values.shape}; one value per row is needed",
              "give each task a 1-D array of length N (one array per task)")
    if len(values) != n:
        _fail(path, f"task {task!r} has {len(values)} targets but x has {n} rows",
              "give every task one target per row of x")
    if values.dtype == bool:
        values = values.astype(np.float32)
    if values.dtype.kind not in "iuf":
        _fail(path, f"targets of task {task!r} have dtype {values.dtype}, not numbers",
              "encode targets as numbers (classes as integers 0..K-1)")
    bad = ~np.isfinite(values.astype(np.float64))
    if bad.any():
        _fail(path, f"task {task!r} has {int(bad.sum())} NaN or infinite target(s) (first at row "
              f"{int(np.argmax(bad))})", "drop or fill those rows; every task needs a target for every row")
    return values


def _check_kind(path: Path, task: str, kind: str, values: np.ndarray, source: str) -> TaskSpec:
    if kind not in TASK_KINDS:
        _fail(path, f"task {task!r} has unknown kind {kind!r} (from {source})",
              f"use one of {list(TASK_KINDS)}")
    v = values.astype(np.float64)
    if kind == "binary":
        if not np.all((v == 0) | (v == 1)):
            _fail(path, f"task {task!r} is binary (from {source}) but has values "
                  f"{np.unique(v)[:10].tolist()}", "use 0/1 targets, or declare it multiclass or regression")
        return TaskSpec(task, "binary")
    if kind == "multiclass":
        if not (np.all(v == np.round(v)) and v.min() >= 0):
            _fail(path, f"task {task!r} is multiclass (from {source}) but its targets are not whole "
                  f"numbers >= 0 (e.g. {v[(v != np.round(v)) | (v < 0)][:3].tolist()})",
                  "encode classes as integers 0..K-1, or declare it regression")
        return TaskSpec(task, "multiclass", n_outputs=max(2, int(v.max()) + 1))
    return TaskSpec(task, "regression")


def _resolve_kinds(path: Path, raw: RawData, option: str) -> dict[str, tuple[str, str]]:
    """task -> (kind, where it came from)."""
    tasks = list(raw.targets)
    out: dict[str, tuple[str, str]] = {}
    if raw.kinds is not None:
        out = {t: (k, "the file's kinds array") for t, k in zip(tasks, raw.kinds, strict=True)}
    option = option.strip()
    if option:
        if "=" in option:
            try:
                given = _parse_mapping(option)
            except OptionError as err:
                _fail(path, f"the kinds option {option!r} is malformed ({err})",
                      "write kinds as 'binary' for all tasks, or 'task=kind,task=kind'")
            unknown = sorted(set(given) - set(tasks))
            if unknown:
                _fail(path, f"the kinds option names unknown task(s) {unknown}; the tasks are {tasks}",
                      "name tasks as in the file (y_<task> without the y_)")
            out.update({t: (k, "the kinds option") for t, k in given.items()})
        else:
            out = {t: (option, "the kinds option") for t in tasks}
    for t in tasks:
        if t not in out:
            out[t] = (_infer_kind(raw.targets[t]), "inferred from the values")
    return out


def _resolve_groups(path: Path, raw: RawData, option: str) -> dict[str, int] | None:
    tasks = list(raw.targets)
    if option.strip():
        try:
            given = _parse_mapping(option)
        except OptionError as err:
            _fail(path, f"the groups option {option!r} is malformed ({err})",
                  "write groups as 'task=0,task=0,task=1' naming every task")
        if set(given) != set(tasks):
            _fail(path, f"the groups option must name every task exactly; missing "
                  f"{sorted(set(tasks) - set(given))}, unknown {sorted(set(given) - set(tasks))}",
                  "give one group id per task: 'task=0,task=0,task=1'")
        values: list[Any] = [given[t] for t in tasks]
        source = "the groups option"
    elif raw.groups is not None:
        values, source = raw.groups, "the file's groups array"
    else:
        return None
    out = {}
    for t, v in zip(tasks, values, strict=True):
        try:
            number = float(v)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or number != int(number):
            _fail(path, f"group of task {t!r} is {v!r} (from {source}), not an integer",
                  "give each task an integer group id")
        out[t] = int(number)
    return out


def _check_inputs(path: Path, x: np.ndarray) -> np.ndarray:
    if x.dtype == bool:
        x = x.astype(np.float32)
    if x.dtype.kind not in "iuf":
        _fail(path, f"x has dtype {x.dtype}, not numbers", "save the inputs as a float (or uint8) array")
    if x.ndim == 1:
        x = x[:, None]
    elif x.ndim == 3:
        x = x[:, None]
    if x.ndim not in (2, 4):
        _fail(path, f"x has shape {x.shape}", "give x as N x D vectors or N x C x H x W images")
    if x.shape[0] == 0:
        _fail(path, "x has no rows", "give at least one sample per split")
    if x.ndim == 4 and x.shape[2] != x.shape[3]:
        _fail(path, f"images in x are {x.shape[2]} x {x.shape[3]}, not square",
              "pad or resize them to square images (the default CNN backbone needs H == W)")
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        if bad.any():
            _fail(path, f"x has NaN or infinite values in {int(bad.sum())} row(s) (first at row "
                  f"{int(np.argmax(bad))})", "drop or fill those rows")
    return x


def _split_index(path: Path, raw: RawData, n: int, params: dict[str, Any]) -> dict[str, np.ndarray]:
    if raw.split is not None:
        split = np.asarray(raw.split)
        if len(split) != n:
            _fail(path, f"split has {len(split)} entries but x has {n} rows", "give one split name per row")
        unknown = sorted(set(split.tolist()) - set(SPLITS))
        if unknown:
            _fail(path, f"split has unknown value(s) {unknown[:5]}", f"use only {list(SPLITS)}")
        out = {s: np.flatnonzero(split == s) for s in SPLITS}
        empty = [s for s in SPLITS if len(out[s]) == 0]
        if empty:
            _fail(path, f"split gives no rows to {empty}", "give train, val and test at least one row each")
        return out
    n_val = round(n * params["val_fraction"])
    n_test = round(n * params["test_fraction"])
    if min(n_val, n_test) < 1 or n - n_val - n_test < 1:
        _fail(path, f"{n} rows are too few for val_fraction={params['val_fraction']} and "
              f"test_fraction={params['test_fraction']}", "add rows, raise the fractions, or give a split array")
    perm = np.random.default_rng(params["data_seed"]).permutation(n)
    return {
        "test": np.sort(perm[:n_test]),
        "val": np.sort(perm[n_test : n_test + n_val]),
        "train": np.sort(perm[n_test + n_val :]),
    }


class NpzDataset(Dataset):
    """A ``.npz`` or ``.csv`` file of your own (formats in the module docstring)."""

    name: ClassVar[str] = "npz"
    has_groups: ClassVar[bool] = False  # per instance: True when the file or option gives groups
    options: ClassVar[dict[str, Option]] = {
        "path": Option(None, "the .npz or .csv file to load (required)"),
        "kinds": Option("", "'binary' (every task) or 'task=kind,...'; default: the file's, else inferred"),
        "groups": Option("", "known grouping 'task=0,task=0,task=1' (overrides the file's groups array)"),
        "features": Option("", "CSV only: comma-separated feature columns (default: the x_* columns)"),
        "val_fraction": Option(0.15, "share of rows for validation when the file has no split", low=0.0, high=0.9),
        "test_fraction": Option(0.2, "share of rows for test when the file has no split", low=0.0, high=0.9),
        "data_seed": Option(0, "seed of the random split (when the file has no split)", low=0),
        "standardize": Option(True, "standardise vector inputs with the training rows' mean and std"),
        "width": Option(64, "MLP backbone (vector inputs): width of each block", low=1, high=65536),
        "depth": Option(4, "MLP backbone (vector inputs): number of blocks", low=1, high=64),
        "channels": Option("32,64,128", "CNN backbone (image inputs): channels per block, comma-separated"),
    }

    def __init__(self, **options: Any) -> None:
        path = options.get("path")
        if isinstance(path, os.PathLike):
            options = {**options, "path": os.fspath(path)}
        super().__init__(**options)
        owner = f"dataset {self.name!r}"
        if self.params["path"] is not None and not isinstance(self.params["path"], str):
            raise OptionError(f"{owner}: option path={self.params['path']!r} should be a file path (str)")
        if self.params["val_fraction"] + self.params["test_fraction"] >= 1.0:
            raise OptionError(f"{owner}: val_fraction + test_fraction must stay below 1 to leave training rows")
        try:
            self._channels()
        except ValueError:
            raise OptionError(
                f"{owner}: channels={self.params['channels']!r} should be comma-separated positive "
                f"integers, e.g. '32,64,128'"
            ) from None
        self.has_groups = bool(self.params["groups"].strip()) or self._file_has_groups()

    def _channels(self) -> tuple[int, ...]:
        channels = tuple(int(c) for c in self.params["channels"].split(","))
        if not channels or min(channels) < 1:
            raise ValueError(self.params["channels"])
        return channels

    def _file_has_groups(self) -> bool:
        path = self.params["path"]
        if not path or not str(path).endswith(".npz"):
            return False
        try:
            with zipfile.ZipFile(path) as archive:
                return "groups.npy" in archive.namelist()
        except (OSError, zipfile.BadZipFile):
            return False  # load() says what is wrong with the file

    def _path(self) -> Path:
        if not self.params["path"]:
            raise DataFileError(
                f"dataset {self.name!r}: option path is required: the .npz or .csv file to load. "
                f"Fix: give path=<file.npz or file.csv> (formats: branchbench.datasets.npz)"
            )
        path = Path(self.params["path"]).expanduser()
        if not path.is_file():
            _fail(path, "no such file" if not path.exists() else "is not a file",
                  "give path= an existing .npz or .csv file")
        if path.suffix.lower() not in (".npz", ".csv"):
            _fail(path, f"has the suffix {path.suffix!r}; only .npz and .csv are read",
                  "save the data with numpy.savez (.npz) or DataFrame.to_csv (.csv)")
        return path

    def protocol(self) -> TrainingProtocol:
        self._path()  # a missing or unreadable path fails when the cell is resolved
        return TrainingProtocol(
            epochs=30,
            batch_size=128,
            optimizer="adam",
            lr=1e-3,
            lr_schedule="cosine",
            early_stopping=5,
            threads=1,
        )

    def read(self) -> RawData:
        path = self._path()
        if path.suffix.lower() == ".csv":
            return read_csv(path, self.params["features"])
        if self.params["features"].strip():
            _fail(path, "the features option applies to .csv files only", "drop features for a .npz file")
        return read_npz(path)

    def load(self) -> Benchmark:
        p = self.params
        path = self._path()
        raw = self.read()
        x = _check_inputs(path, raw.x)
        n = x.shape[0]
        targets = {t: _check_target(path, t, v, n) for t, v in raw.targets.items()}
        raw.targets = targets
        kinds = _resolve_kinds(path, raw, p["kinds"])
        tasks = [_check_kind(path, t, kinds[t][0], targets[t], kinds[t][1]) for t in targets]
        groups = _resolve_groups(path, raw, p["groups"])
        index = _split_index(path, raw, n, p)

        transform = None
        if x.ndim == 4 and x.dtype == np.uint8:
            inputs = torch.from_numpy(np.ascontiguousarray(x))
            transform = uint8_to_unit
        else:
            xf = x.astype(np.float32)
            if x.ndim == 2 and p["standardize"]:
                train = xf[index["train"]]
                std = train.std(axis=0)
                xf = (xf - train.mean(axis=0)) / np.where(std > 0, std, 1.0)
            inputs = torch.from_numpy(np.ascontiguousarray(xf, dtype=np.float32))

        y = {}
        for task in tasks:
            values = targets[task.name]
            dtype = np.int64 if task.kind == "multiclass" else np.float32
            y[task.name] = torch.from_numpy(np.ascontiguousarray(values.astype(dtype)))
        splits = {}
        for s in SPLITS:
            idx = torch.from_numpy(index[s])
            splits[s] = Split(inputs[idx], {t: v[idx] for t, v in y.items()})

        if x.ndim == 2:
            backbone: Backbone = mlp_backbone(x.shape[1], [p["width"]] * p["depth"])
        else:
            backbone = rescnn_backbone(x.shape[1], x.shape[2], channels=self._channels())
        return Benchmark(
            name=self.name,
            tasks=tasks,
            splits=splits,
            backbone=backbone,
            protocol=self.protocol(),
            groups=groups,
            input_transform=transform,
            options=dict(p),
        )
