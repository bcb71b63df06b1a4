"""Bring your own data: a ``.npz`` (or ``.csv``) file as a multi-task benchmark.

``path`` (required) names the file. Every problem with it raises one
:class:`DataFileError` (a :class:`~branchbench.datasets.base.DataError`): one
line naming the file (and the array, column or row), the problem and the fix.
:meth:`NpzDataset.validate` makes every check :meth:`NpzDataset.load` makes, so
a bad file is refused while a cell is resolved, before any run exists.

**.npz** (write it with ``numpy.savez`` / ``numpy.savez_compressed``), in one of
two layouts:

*One array of all rows*:

* ``x`` (required): the inputs, ``N x D`` vectors (``N`` alone is one
  feature), or images ``N x C x H x W`` (``N x H x W`` is one channel; images
  must be square). ``uint8`` images are kept as a uint8 cache and scaled to
  ``[0, 1]`` per batch; other images are used as they are.
* targets, either one array per task, ``y_<task>`` (length ``N``; tasks in the
  order of the arrays in the file), or one ``y`` of ``N x T`` with an optional
  ``task_names`` (``T`` strings; else ``t0 .. t{T-1}``, or ``y`` for one task).
* ``split`` (optional): ``train`` / ``val`` / ``test`` per row. Without it the
  rows are split at random by ``data_seed`` (``val_fraction``,
  ``test_fraction`` of all rows).

*One pair of arrays per split* (as most data is published; scikit-learn's
``X_train`` etc. is read as ``x_train``, and ``X`` as ``x`` above):

* ``x_train, y_train, x_test, y_test`` (required) and ``x_val, y_val``
  (optional, both or neither): inputs as above, targets ``N x T`` (or ``N``
  for one task) with the optional ``task_names``. Without ``x_val`` the
  validation rows are drawn from the training rows by ``data_seed``
  (``val_fraction`` of them); ``test_fraction`` is not used.

Mixing the layouts (e.g. ``x`` beside ``x_train``, or ``y_<task>`` arrays
beside ``y_train``) is an error. Both layouts take, in task order:

* ``kinds`` (optional): one of ``binary`` / ``multiclass`` / ``regression`` per
  task.
* ``groups`` (optional): an integer per task, a known grouping (the benchmark
  then has ``groups``, and ``oracle_tree`` and grouping recovery apply).

Any other array (e.g. a ``meta`` string array) is ignored, with one warning
from the logger ``branchbench.datasets.npz`` naming it (so a typo such as
``kind`` shows there; it is never read). Save strings as a str array
(``np.array(names, dtype=str)``): object arrays are not loaded (no pickles).

**.csv** (read with pandas): feature columns ``x_*`` (or the columns named by
the ``features`` option), target columns ``y_<task>``, an optional ``split``
column; other columns are ignored (with one warning naming them). Kinds and
groups come from the options. Messages name rows by their line in the file
(the header is line 1).

**Task kinds**: the ``kinds`` option (``binary`` for all tasks, or
``a=binary,b=regression`` for some), else the file's ``kinds``, else inferred
from the targets: values all in {0, 1} -> binary; whole numbers in 0..19 ->
multiclass (``max + 1`` classes); anything else -> regression. Declared kinds
are checked against the values (binary needs 0/1, multiclass whole numbers
>= 0).

**Scaling**: vector inputs are standardised with the training rows' mean and
std (``standardize``, default on). Targets are used as given unless
``standardize_targets`` is set: then each regression target is standardised
with its training rows' mean and std (a std of 0 counts as 1), and its
losses and metrics (MSE, MAE, ...) are in those standardised units, not the
file's. The default training protocol trains until validation stops improving
(a 200-epoch cap, patience 20; see :meth:`NpzDataset._protocol` for what it was
chosen on). The default backbone is ``mlp_backbone(D, [width] * depth, norm)`` for
vectors and ``rescnn_backbone(C, H, channels)`` for images (``norm`` applies
to the MLP only).
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import math
import os
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import numpy as np
import torch

from branchbench.core.backbones import MLP_NORMS, Backbone, mlp_backbone, rescnn_backbone
from branchbench.core.benchmark import SPLITS, Benchmark, Split, TrainingProtocol
from branchbench.core.options import Option, OptionError
from branchbench.core.tasks import TASK_KINDS, TaskSpec
from branchbench.datasets.base import DataError, Dataset

logger = logging.getLogger(__name__)

TASK_ARRAYS = ("task_names", "kinds", "groups")  # either layout
POOLED_ARRAYS = ("x", "y", "split")  # one array of all rows (plus y_<task>)
SPLIT_ARRAYS = tuple(f"{a}_{s}" for s in SPLITS for a in ("x", "y"))  # one pair per split
NPZ_ARRAYS = POOLED_ARRAYS + SPLIT_ARRAYS + TASK_ARRAYS
UPPER_X = {"X": "x", **{f"X_{s}": f"x_{s}" for s in SPLITS}}  # scikit-learn's spelling, accepted
MAX_INFERRED_CLASSES = 20
_TASK_NAME = re.compile(r"[A-Za-z0-9_\-]+")
_SAVEZ = "numpy.savez(path, x=..., y_<task>=...) or numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"


class DataFileError(DataError):
    """A bring-your-own data file that cannot be used; says which file, what is wrong, and the fix."""


def _fail(path: str | Path, problem: str, fix: str) -> NoReturn:
    raise DataFileError(" ".join(f"{path}: {problem}. Fix: {fix}".split()))  # always one line


def uint8_to_unit(x: torch.Tensor) -> torch.Tensor:
    """The uint8 image cache as float in [0, 1]."""
    return x.float() / 255.0


def _row(i: int) -> str:
    return f"row {i}"


@dataclass
class RawData:
    """What a file holds, before checks: inputs, targets by task, and the optional extras.

    ``split`` names each row's split; with ``val_from_train`` (the per-split
    layout without ``x_val``) its ``train`` rows still have to give up the
    validation rows. ``row(i)`` is how a message names row ``i`` of ``x``.
    """

    x: np.ndarray
    targets: dict[str, np.ndarray]
    kinds: list[str] | None = None
    groups: list[Any] | None = None
    split: np.ndarray | None = None
    val_from_train: bool = False
    x_name: str = "x"
    row: Callable[[int], str] = _row
    ignored: list[str] = field(default_factory=list)


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
def _open_npz(path: Path) -> np.lib.npyio.NpzFile:
    """The archive, opened lazily (no array read yet); a file that is not one fails here."""
    with path.open("rb") as handle:
        head = handle.read(6)
    if not head:
        _fail(path, "is empty (0 bytes)", f"write the data again with {_SAVEZ}")
    if head.startswith(b"\x93NUMPY"):
        _fail(path, "is a single array (.npy), not an archive of named arrays",
              f"save named arrays with {_SAVEZ}")
    if not head.startswith(b"PK"):
        _fail(path, "is not a valid .npz (zip) archive (its first bytes are not a zip header)",
              f"write it with {_SAVEZ}")
    if not zipfile.is_zipfile(path):
        _fail(path, "is not a complete .npz (zip) archive: it is truncated or damaged",
              "copy or write the file again (numpy.savez)")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
        _fail(path, f"could not be read as a .npz archive ({type(err).__name__}: {err})",
              "write the file again with numpy.savez")
    return loaded


def _names(path: Path, loaded: np.lib.npyio.NpzFile) -> list[str]:
    """The archive's array names, in file order, with scikit-learn's ``X`` / ``X_<split>`` read as ``x`` / ``x_<split>``."""
    files = list(loaded.files)
    clash = [n for n in files if n in UPPER_X and UPPER_X[n] in files]
    if clash:
        _fail(path, f"has both {clash[0]!r} and {UPPER_X[clash[0]]!r}",
              f"keep one of them ({clash[0]} is read as {UPPER_X[clash[0]]})")
    return [UPPER_X.get(n, n) for n in files]


def _member(path: Path, loaded: np.lib.npyio.NpzFile, name: str) -> np.ndarray:
    if name not in loaded.files and name.upper()[:1] + name[1:] in UPPER_X:
        name = name.upper()[:1] + name[1:]  # X or X_<split>
    try:
        array = loaded[name]
    except ValueError as err:
        if "allow_pickle" in str(err) or "Object arrays" in str(err):
            _fail(path, f"array {name!r} is an object array (e.g. Python strings saved without a dtype), "
                  "which is not loaded for safety", f"save it as a numeric or str array: {name}=np.array(..., dtype=str)")
        _fail(path, f"array {name!r} could not be read ({err})", "write the file again with numpy.savez")
    except Exception as err:  # a damaged member: zlib, zipfile, EOF, format errors alike
        _fail(path, f"array {name!r} could not be read ({type(err).__name__}: {err})",
              "write the file again with numpy.savez")
    if not isinstance(array, np.ndarray):  # numpy hands back a member without a .npy header as bytes
        _fail(path, f"member {name!r} of the archive is not a numpy array (no .npy header)",
              "write the file with numpy.savez, not by zipping files by hand")
    return array


def _ignored(names: Sequence[str], known: Sequence[str]) -> list[str]:
    return [n for n in names if n not in known]


def _hint(name: str) -> str:
    close = difflib.get_close_matches(name, NPZ_ARRAYS, n=1)
    return f"; is {name!r} a typo of {close[0]!r}?" if close else ""


def _names_from(path: Path, arrays: dict[str, np.ndarray], n_columns: int, source: str) -> list[str]:
    if "task_names" in arrays:
        names = _strings(path, "task_names", arrays["task_names"])
        if len(names) != n_columns:
            _fail(path, f"task_names has {len(names)} names but {source} has {n_columns} columns",
                  f"give one name per column of {source}")
    else:
        names = [f"t{i}" for i in range(n_columns)] if n_columns > 1 else ["y"]
    if len(set(names)) != len(names):
        _fail(path, f"task_names repeats a name: {names}", "give every task a distinct name")
    return names


def _as_columns(path: Path, name: str, y: np.ndarray) -> np.ndarray:
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2:
        _fail(path, f"array {name!r} has shape {y.shape}; it should be N x T (one column per task)",
              f"save {name} as a 2-D array (or 1-D for one task)")
    return y


def _read_pooled(path: Path, loaded: np.lib.npyio.NpzFile, names: list[str]) -> RawData:
    per_task = [n for n in names if n.startswith("y_")]
    if "x" not in names:
        _fail(path, f"has no array 'x' (it holds {sorted(names)})",
              "save the inputs as x (numpy.savez(path, x=inputs, y_<task>=targets)), or one pair per split "
              "(x_train, y_train, x_test, y_test)")
    if per_task and "y" in names:
        _fail(path, "has both a 'y' array and y_<task> arrays",
              "give targets one way: y_<task> arrays, or one 2-D y with task_names")
    if "task_names" in names and "y" not in names:
        _fail(path, "has task_names but no 'y' array",
              "task_names names the columns of a 2-D y; with y_<task> arrays, drop task_names")
    used = ["x", *per_task, *(n for n in ("y", "split", *TASK_ARRAYS) if n in names)]
    arrays = {n: _member(path, loaded, n) for n in used}
    if per_task:
        targets = {n[2:]: arrays[n] for n in per_task}
    elif "y" in arrays:
        y = _as_columns(path, "y", arrays["y"])
        targets = {t: y[:, i] for i, t in enumerate(_names_from(path, arrays, y.shape[1], "y"))}
    else:
        _fail(path, f"has no targets (it holds {sorted(names)})",
              "add one array y_<task> per task (or a 2-D y with task_names)")
    raw = RawData(x=arrays["x"], targets=targets, ignored=_ignored(names, used))
    if "split" in arrays:
        raw.split = np.asarray(_strings(path, "split", arrays["split"]))
    return _task_extras(path, raw, arrays)


def _read_per_split(path: Path, loaded: np.lib.npyio.NpzFile, names: list[str]) -> RawData:
    pooled = [n for n in names if n in POOLED_ARRAYS or (n.startswith("y_") and n not in SPLIT_ARRAYS)]
    if pooled:
        _fail(path, f"mixes the two layouts: it has per-split arrays "
              f"{[n for n in names if n in SPLIT_ARRAYS]} and single-array ones {pooled}",
              "use one layout: x with y_<task> (or y) and an optional split, or x_train, y_train, "
              "x_test, y_test with optional x_val, y_val")
    given = [s for s in SPLITS if f"x_{s}" in names or f"y_{s}" in names]
    required = ["x_train", "y_train", "x_test", "y_test"] + (["x_val", "y_val"] if "val" in given else [])
    missing = [n for n in required if n not in names]
    if missing:
        _fail(path, f"has per-split arrays but lacks {missing}",
              "give x_train, y_train, x_test, y_test (and x_val with y_val, or neither)")
    used = required + [n for n in TASK_ARRAYS if n in names]
    arrays = {n: _member(path, loaded, n) for n in used}
    xs, ys = [], []
    for s in given:
        x, y = arrays[f"x_{s}"], _as_columns(path, f"y_{s}", arrays[f"y_{s}"])
        if x.ndim == 0 or len(x) != len(y):
            _fail(path, f"y_{s} has {len(y)} rows but x_{s} has {len(x) if x.ndim else 0}",
                  f"give one target row per row of x_{s}")
        if xs and x.shape[1:] != xs[0].shape[1:]:
            _fail(path, f"x_{s} rows have shape {x.shape[1:]} but x_train rows {xs[0].shape[1:]}",
                  "save every x_<split> with the same shape per row")
        if xs and (x.dtype == np.uint8) != (xs[0].dtype == np.uint8):
            _fail(path, f"x_{s} is {x.dtype} but x_train is {xs[0].dtype} (uint8 images are scaled by 1/255, "
                  "others are used as they are)", "save every x_<split> as uint8, or every one as float")
        if ys and y.shape[1] != ys[0].shape[1]:
            _fail(path, f"y_{s} has {y.shape[1]} columns but y_train has {ys[0].shape[1]}",
                  "give every y_<split> one column per task, in the same order")
        xs.append(x)
        ys.append(y)
    sizes = [len(x) for x in xs]
    starts = np.cumsum([0, *sizes])

    def row(i: int) -> str:
        k = int(np.searchsorted(starts, i, side="right")) - 1
        return f"row {i - starts[k]} of x_{given[k]}/y_{given[k]}"

    y = np.concatenate(ys)
    raw = RawData(
        x=np.concatenate(xs),
        targets={t: y[:, i] for i, t in enumerate(_names_from(path, arrays, y.shape[1], "y_train"))},
        split=np.repeat(np.array(given), sizes),
        val_from_train="val" not in given,
        x_name="/".join(f"x_{s}" for s in given),
        row=row,
        ignored=_ignored(names, used),
    )
    return _task_extras(path, raw, arrays)


def _task_extras(path: Path, raw: RawData, arrays: dict[str, np.ndarray]) -> RawData:
    n_tasks = len(raw.targets)
    if "kinds" in arrays:
        raw.kinds = _strings(path, "kinds", arrays["kinds"])
        if len(raw.kinds) != n_tasks:
            _fail(path, f"kinds has {len(raw.kinds)} entries for {n_tasks} tasks {list(raw.targets)}",
                  "give one kind per task, in task order")
    if "groups" in arrays:
        groups = arrays["groups"].reshape(-1)
        if len(groups) != n_tasks:
            _fail(path, f"groups has {len(groups)} entries for {n_tasks} tasks {list(raw.targets)}",
                  "give one integer group id per task, in task order")
        raw.groups = list(groups)
    return raw


def _is_per_split(names: Sequence[str]) -> bool:
    return any(f"x_{s}" in names for s in SPLITS)


def read_npz(path: Path) -> RawData:
    """The arrays the loader uses, in either layout; unused arrays are listed, never read."""
    with _open_npz(path) as loaded:
        names = _names(path, loaded)
        return (_read_per_split if _is_per_split(names) else _read_pooled)(path, loaded, names)


def _csv_frame(path: Path, nrows: int | None = None) -> Any:
    import pandas as pd

    if path.stat().st_size == 0:
        _fail(path, "is empty (0 bytes)", "write it with pandas.DataFrame.to_csv (a header row, then one row per sample)")
    try:
        return pd.read_csv(path, nrows=nrows)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        _fail(path, f"could not be read as a CSV table ({type(err).__name__}: {err})",
              "write it with pandas.DataFrame.to_csv (a header row, comma-separated)")


def _csv_columns(path: Path, columns: list[str], features: str) -> tuple[list[str], list[str]]:
    """The feature and target columns."""
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
    return feature_cols, target_cols


def _csv_line(i: int) -> str:
    return f"line {i + 2}"  # the header is line 1


def read_csv(path: Path, features: str = "") -> RawData:
    import pandas as pd

    frame = _csv_frame(path)
    columns = [str(c) for c in frame.columns]
    if len(frame) == 0:
        _fail(path, f"has a header ({columns}) but no rows", "add one row per sample below the header")
    feature_cols, target_cols = _csv_columns(path, columns, features)
    for c in feature_cols + target_cols:
        if pd.api.types.is_numeric_dtype(frame[c]):
            continue
        bad = pd.to_numeric(frame[c], errors="coerce").isna() & frame[c].notna()
        if bad.any():
            first = int(np.argmax(bad.to_numpy()))
            _fail(path, f"column {c!r} has a non-numeric value {frame[c].iloc[first]!r} at {_csv_line(first)} "
                  f"({int(bad.sum())} such row(s))",
                  "encode features and targets as numbers (classes as integers 0..K-1)")
        frame[c] = pd.to_numeric(frame[c])
    raw = RawData(
        x=frame[feature_cols].to_numpy(),
        targets={c[2:]: frame[c].to_numpy() for c in target_cols},
        x_name="the feature columns",
        row=_csv_line,
        ignored=_ignored(columns, [*feature_cols, *target_cols, "split"]),
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


def _check_target(path: Path, raw: RawData, task: str, values: np.ndarray, n: int) -> np.ndarray:
    if not _TASK_NAME.fullmatch(task):
        _fail(path, f"task name {task!r} is empty or has characters other than letters, digits, "
              "'_' and '-'", "rename the target (y_<task> or task_names) to e.g. my_task")
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
        _fail(path, f"task {task!r} has {int(bad.sum())} NaN or infinite target(s) (first at "
              f"{raw.row(int(np.argmax(bad)))})", "drop or fill those rows; every task needs a target for every row")
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
                  f"numbers >= 0 (e.g. {[float(f'{b:.4g}') for b in v[(v != np.round(v)) | (v < 0)][:3]]})",
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
                      "name tasks as in the file (y_<task> without the y_, or task_names)")
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
            shown = v.item() if isinstance(v, np.generic) else v
            _fail(path, f"group of task {t!r} is {shown!r} (from {source}), not an integer",
                  "give each task an integer group id")
        out[t] = int(number)
    return out


def _check_inputs(path: Path, raw: RawData) -> np.ndarray:
    x, name = raw.x, raw.x_name
    if x.dtype == bool:
        x = x.astype(np.float32)
    if x.dtype.kind not in "iuf":
        _fail(path, f"{name} has dtype {x.dtype}, not numbers", "save the inputs as a float (or uint8) array")
    if x.ndim == 1:
        x = x[:, None]
    elif x.ndim == 3:
        x = x[:, None]
    if x.ndim not in (2, 4):
        _fail(path, f"{name} has shape {x.shape}", "give x as N x D vectors or N x C x H x W images")
    if x.shape[0] == 0:
        _fail(path, f"{name} has no rows", "give at least one sample per split")
    if x.ndim == 4 and x.shape[2] != x.shape[3]:
        _fail(path, f"images in {name} are {x.shape[2]} x {x.shape[3]}, not square",
              "pad or resize them to square images (the default CNN backbone needs H == W)")
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        if bad.any():
            _fail(path, f"{name} has NaN or infinite values in {int(bad.sum())} row(s) (first at "
                  f"{raw.row(int(np.argmax(bad)))})", "drop or fill those rows")
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
        if raw.val_from_train:
            out = _val_from_train(path, out["train"], out["test"], params)
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


def _val_from_train(path: Path, train: np.ndarray, test: np.ndarray, params: dict[str, Any]) -> dict[str, np.ndarray]:
    """The per-split layout without x_val: ``val_fraction`` of the training rows, drawn by ``data_seed``."""
    n_val = round(len(train) * params["val_fraction"])
    if n_val < 1 or len(train) - n_val < 1:
        _fail(path, f"x_train has {len(train)} rows, too few to draw val_fraction={params['val_fraction']} "
              "of them for validation", "add x_val and y_val arrays, add training rows, or raise val_fraction")
    perm = np.random.default_rng(params["data_seed"]).permutation(len(train))
    return {"train": np.sort(train[perm[n_val:]]), "val": np.sort(train[perm[:n_val]]), "test": test}


@dataclass
class Checked:
    """A file that passed every check: what ``load()`` turns into tensors."""

    x: np.ndarray
    targets: dict[str, np.ndarray]
    tasks: list[TaskSpec]
    groups: dict[str, int] | None
    index: dict[str, np.ndarray]


def _npy_columns(path: Path, member: str) -> int:
    """The number of columns of a 2-D array in the archive, from its header only (no data read)."""
    with zipfile.ZipFile(path) as archive, archive.open(member) as handle:
        version = np.lib.format.read_magic(handle)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape = read(handle)[0]
    return shape[1] if len(shape) == 2 else 1


def _file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class _HasGroups:
    """``has_groups`` of one instance: whether the groups option or the archive's member names give
    groups, read once on first use (so the constructor reads no file). On the class it is False."""

    def __get__(self, obj: NpzDataset | None, owner: type | None = None) -> bool:
        if obj is None:
            return False
        value = obj.__dict__["has_groups"] = obj._read_has_groups()  # cached: the instance dict wins next time
        return value


class NpzDataset(Dataset):
    """A ``.npz`` or ``.csv`` file of your own (formats in the module docstring)."""

    name: ClassVar[str] = "npz"
    # Still 1: every file that loaded before loads into the same tensors now. What is new (the
    # per-split layout, ignored extra arrays) only accepts files that were refused before, and
    # the new options (standardize_targets, norm) default to the old behaviour.
    version: ClassVar[int] = 1
    has_groups = _HasGroups()  # type: ignore[assignment]
    options: ClassVar[dict[str, Option]] = {
        "path": Option(None, "the .npz or .csv file to load (required)", type=str),
        "kinds": Option("", "'binary' (every task) or 'task=kind,...'; default: the file's, else inferred"),
        "groups": Option("", "known grouping 'task=0,task=0,task=1' (overrides the file's groups array)"),
        "features": Option("", "CSV only: comma-separated feature columns (default: the x_* columns)"),
        "val_fraction": Option(0.15, "share of rows for validation when the file has no split "
                               "(of the training rows in the per-split layout without x_val)", low=0.0, high=0.9),
        "test_fraction": Option(0.2, "share of rows for test when the file has no split", low=0.0, high=0.9),
        "data_seed": Option(0, "seed of the random split (when the file has no split or no x_val)", low=0),
        "standardize": Option(True, "standardise vector inputs with the training rows' mean and std"),
        "standardize_targets": Option(False, "standardise regression targets with the training rows' mean and "
                                      "std (metrics are then in standardised units)"),
        "width": Option(64, "MLP backbone (vector inputs): width of each block", low=1, high=65536),
        "depth": Option(4, "MLP backbone (vector inputs): number of blocks", low=1, high=64),
        "norm": Option("layernorm", "MLP backbone (vector inputs): normalisation in each block", choices=MLP_NORMS),
        "channels": Option("32,64,128", "CNN backbone (image inputs): channels per block, comma-separated"),
    }

    def __init__(self, **options: Any) -> None:
        path = options.get("path")
        if isinstance(path, os.PathLike):
            options = {**options, "path": os.fspath(path)}
        super().__init__(**options)

    def check(self) -> None:
        if self.params["val_fraction"] + self.params["test_fraction"] >= 1.0:
            raise OptionError(f"{self.owner}: val_fraction + test_fraction must stay below 1 to leave training rows")
        try:
            self._channels()
        except ValueError:
            raise OptionError(
                f"{self.owner}: channels={self.params['channels']!r} should be comma-separated positive "
                f"integers, e.g. '32,64,128'"
            ) from None

    def _channels(self) -> tuple[int, ...]:
        channels = tuple(int(c) for c in self.params["channels"].split(","))
        if not channels or min(channels) < 1:
            raise ValueError(self.params["channels"])
        return channels

    def _read_has_groups(self) -> bool:
        if self.params["groups"].strip():
            return True
        path = self.params["path"]
        if not path or not str(path).lower().endswith(".npz"):
            return False
        try:
            with zipfile.ZipFile(Path(path).expanduser()) as archive:
                return "groups.npy" in archive.namelist()
        except (OSError, zipfile.BadZipFile):
            return False  # validate() says what is wrong with the file

    def _path(self) -> Path:
        if not self.params["path"]:
            raise DataFileError(
                f"dataset {self.name!r}: option path is required: the .npz or .csv file to load. "
                f"Fix: give path=<file.npz or file.csv> (formats: branchbench.datasets.npz)"
            )
        path = Path(self.params["path"]).expanduser()
        if not path.is_file():
            _fail(path, "no such file" if not path.exists() else "is a directory, not a file"
                  if path.is_dir() else "is not a regular file", "give path= an existing .npz or .csv file")
        if path.suffix.lower() not in (".npz", ".csv"):
            _fail(path, f"has the suffix {path.suffix!r}; only .npz and .csv are read",
                  "save the data with numpy.savez (.npz) or DataFrame.to_csv (.csv)")
        return path

    def protocol(self) -> TrainingProtocol:
        self._path()  # a missing path fails when the cell is resolved
        return self._protocol()

    @staticmethod
    def _protocol() -> TrainingProtocol:
        """Train until validation stops improving: a generous cap of 200 epochs, patience 20.

        A user's own file has no tuned epoch count. Chosen on development files
        by validation loss only (``scripts/npz_protocol_study.py``: the
        synthetic data's regression tasks and the fixture's mixed tasks, 500
        and 4000 training rows, data seeds 1000 and 1001, shared-bottom and
        independent networks; 16 runs per candidate). Mean best validation
        loss relative to the best candidate of each run, its worst case, and
        runs that ended at the cap still improving: 30 epochs / patience 5 /
        cosine (the former default) 1.250, 2.49, 4 of 16; 100 / 10 / cosine
        1.015, 1.07, 0; 200 / 10 / constant 1.017, 1.11, 0; 200 / 20 /
        constant 1.015, 1.11, 0; 200 / 20 / cosine 1.008, 1.05, 0 (chosen; at
        most 106 epochs run, mean 49).
        """
        return TrainingProtocol(
            epochs=200,
            batch_size=128,
            optimizer="adam",
            lr=1e-3,
            lr_schedule="cosine",
            early_stopping=20,
            threads=1,
        )

    def identity(self) -> dict[str, Any]:
        """The options with ``path`` replaced by the sha256 of the file's bytes: a moved copy keeps
        its identity, an edited file gets a new one."""
        params = self.get_params()
        params["path"] = f"sha256:{_file_sha256(self._path())}"
        return params

    def task_names(self) -> list[str]:
        """The tasks' names from the archive's member names, ``task_names`` and array headers (or
        the CSV header), without reading the data; a file these do not settle is read."""
        path = self._path()
        if path.suffix.lower() == ".csv":
            columns = [str(c) for c in _csv_frame(path, nrows=0).columns]
            return [c[2:] for c in _csv_columns(path, columns, self.params["features"])[1]]
        with _open_npz(path) as loaded:
            names = _names(path, loaded)
            per_task = [n[2:] for n in names if n.startswith("y_")]
            if _is_per_split(names):
                matrix = "y_train" if "y_train" in names else None
            elif per_task:
                return per_task if "y" not in names else list(self.read().targets)
            else:
                matrix = "y" if "y" in names else None
            if matrix is None:
                return list(self.read().targets)  # raises: the file has no targets
            if "task_names" in names:
                return _strings(path, "task_names", _member(path, loaded, "task_names"))
        try:
            n = _npy_columns(path, f"{matrix}.npy")
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return list(self.read().targets)  # a damaged member: reading says what is wrong
        return [f"t{i}" for i in range(n)] if n > 1 else ["y"]

    def read(self) -> RawData:
        path = self._path()
        if path.suffix.lower() == ".csv":
            raw = read_csv(path, self.params["features"])
        else:
            if self.params["features"].strip():
                _fail(path, "the features option applies to .csv files only", "drop features for a .npz file")
            raw = read_npz(path)
        warned = self.__dict__.setdefault("_warned", set())
        if raw.ignored and (str(path), tuple(raw.ignored)) not in warned:
            warned.add((str(path), tuple(raw.ignored)))
            what = "column(s)" if path.suffix.lower() == ".csv" else "array(s)"
            hints = "".join(_hint(n) for n in raw.ignored) if what == "array(s)" else ""
            logger.warning("%s: ignoring %s %s that the loader does not use%s", path, what, raw.ignored, hints)
        return raw

    def _checked(self) -> Checked:
        """Read the file once and make every check; raises :class:`DataFileError`."""
        p = self.params
        path = self._path()
        raw = self.read()
        x = _check_inputs(path, raw)
        n = x.shape[0]
        raw.targets = {t: _check_target(path, raw, t, v, n) for t, v in raw.targets.items()}
        kinds = _resolve_kinds(path, raw, p["kinds"])
        tasks = [_check_kind(path, t, kinds[t][0], raw.targets[t], kinds[t][1]) for t in raw.targets]
        groups = _resolve_groups(path, raw, p["groups"])
        index = _split_index(path, raw, n, p)
        return Checked(x, raw.targets, tasks, groups, index)

    def validate(self) -> None:
        """Every check :meth:`load` makes, on one reading of the file (cheap: these files are small)."""
        self._checked()

    def load(self) -> Benchmark:
        p = self.params
        data = self._checked()
        x, index = data.x, data.index
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
        for task in data.tasks:
            values = data.targets[task.name]
            if task.kind == "multiclass":
                values = values.astype(np.int64)
            else:
                values = values.astype(np.float32)
                if task.kind == "regression" and p["standardize_targets"]:
                    train = values[index["train"]].astype(np.float64)
                    std = train.std()
                    values = ((values - train.mean()) / (std if std > 0 else 1.0)).astype(np.float32)
            y[task.name] = torch.from_numpy(np.ascontiguousarray(values))
        splits = {}
        for s in SPLITS:
            idx = torch.from_numpy(index[s])
            splits[s] = Split(inputs[idx], {t: v[idx] for t, v in y.items()})

        if x.ndim == 2:
            backbone: Backbone = mlp_backbone(x.shape[1], [p["width"]] * p["depth"], norm=p["norm"])
        else:
            backbone = rescnn_backbone(x.shape[1], x.shape[2], channels=self._channels())
        return Benchmark(
            name=self.name,
            tasks=data.tasks,
            splits=splits,
            backbone=backbone,
            protocol=self._protocol(),
            groups=data.groups,
            input_transform=transform,
            options=dict(p),
        )
