"""Benchmark protocol files (TOML) and the one assembly of cells from them.

Example (``configs/synthetic.toml``)::

    [sweep]
    name = "synthetic"          # the MLflow parent run's name
    seeds = [0, 1, 2]           # training seeds
    data_seeds = [0, 1]         # data draws (datasets with a data_seed option; optional)
    budgets = [1.5, 3.0]        # budget-aware methods run once per budget

    [protocol]                  # overrides of every dataset's training protocol
    epochs = 40

    [datasets.synthetic]        # a dataset (its registered kind is its name) and its options
    tasks = 9

    [datasets.heldout_a]        # a named instance of a kind: runs, cells and reports say heldout_a
    kind = "npz"
    path = "data/a.npz"

    [methods.shared_bottom]     # a method and its options
    [methods.dmtg_k3]           # a labelled variant of a method
    kind = "dmtg"
    k = 3

This module checks the file's *structure* (sections, keys, value types of the
sweep table) when it is loaded; :func:`cell_configs` turns a config into the
cells that ``run`` and ``sweep`` both execute, and the resolver checks every
option of them. Both happen before any run exists.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOP_KEYS = {"sweep", "protocol", "datasets", "methods", "executor"}  # [executor]: branchbench.executors
SWEEP_KEYS = {"name", "seeds", "data_seeds", "budgets", "finetune", "experiment"}
SECTIONS = ("dataset", "method", "protocol")


class ConfigError(ValueError):
    """A protocol file that cannot be used; the message names the key and the fix."""


@dataclass(frozen=True)
class Component:
    """A named instance of a registered dataset or method kind, with its options."""

    kind: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepConfig:
    name: str
    seeds: list[int]
    budgets: list[float | None]
    protocol: dict[str, Any]
    datasets: dict[str, Component]
    methods: dict[str, Component]
    data_seeds: list[int] | None = None
    finetune: bool = False
    experiment: str | None = None
    source: str = "<inline>"
    raw: dict[str, Any] = field(default_factory=dict)


def load_config(path: str | Path) -> SweepConfig:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist; give the path of a TOML file "
                          "(see configs/)") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {str(path)!r} is a folder; give the path of a TOML file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r} is not text; give a TOML file (see configs/)") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {err}") from err
    return parse_config(raw, source=str(path))


def _int_list(value: Any, key: str, where: str) -> list[int]:
    ok = isinstance(value, list) and value and all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value)
    if not ok:
        raise ConfigError(f"{key} {where} must be a non-empty list of non-negative integers, got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{key} {where} repeats a value: {value!r}; list each once")
    return list(value)


def parse_budgets(values: Any, where: str) -> list[float | None]:
    if not isinstance(values, list) or not values:
        raise ConfigError(f"sweep.budgets {where} must be a non-empty list of numbers >= 1 (or \"none\")")
    budgets: list[float | None] = []
    for b in values:
        if b in ("none", None):
            budgets.append(None)
            continue
        if isinstance(b, bool) or not isinstance(b, int | float) or not b >= 1.0:
            raise ConfigError(f"sweep.budgets {where}: {b!r} is not a number >= 1 or \"none\"; a budget is a "
                              "ratio to shared-bottom's backbone parameters, from 1.0 to T")
        budgets.append(float(b))
    return budgets


def parse_config(raw: dict[str, Any], source: str = "<inline>") -> SweepConfig:
    where = f"in {source}"
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown} {where}; allowed sections are {sorted(TOP_KEYS)}")
    sweep = _table(raw, "sweep", where)
    bad = sorted(set(sweep) - SWEEP_KEYS)
    if bad:
        raise ConfigError(f"unknown key(s) {['sweep.' + k for k in bad]} {where}; allowed keys are {sorted(SWEEP_KEYS)}")
    seeds = _int_list(sweep.get("seeds", [0]), "sweep.seeds", where)
    data_seeds = _int_list(sweep["data_seeds"], "sweep.data_seeds", where) if "data_seeds" in sweep else None
    budgets = parse_budgets(sweep.get("budgets", ["none"]), where)
    protocol = dict(_table(raw, "protocol", where))
    datasets = _components(raw, "datasets", where)
    methods = _components(raw, "methods", where)
    if not datasets:
        raise ConfigError(f"no [datasets.<name>] section {where}; add at least one dataset")
    if not methods:
        raise ConfigError(f"no [methods.<name>] section {where}; add at least one method")
    finetune = sweep.get("finetune", False)
    if not isinstance(finetune, bool):
        raise ConfigError(f"sweep.finetune {where} must be true or false")
    for key in ("name", "experiment"):
        if key in sweep and not isinstance(sweep[key], str):
            raise ConfigError(f"sweep.{key} {where} must be a string")
    return SweepConfig(
        name=str(sweep.get("name", Path(source).stem)),
        seeds=seeds,
        budgets=budgets,
        protocol=protocol,
        datasets=datasets,
        methods=methods,
        data_seeds=data_seeds,
        finetune=finetune,
        experiment=sweep.get("experiment"),
        source=source,
        raw=raw,
    )


def _table(raw: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{key}] {where} must be a table, got {type(value).__name__}")
    return value


def _components(raw: dict[str, Any], section: str, where: str) -> dict[str, Component]:
    out = {}
    for name, options in _table(raw, section, where).items():
        if not isinstance(options, dict):
            raise ConfigError(f"[{section}.{name}] {where} must be a table of options")
        options = dict(options)
        kind = options.pop("kind", name)
        if not isinstance(kind, str):
            raise ConfigError(f"[{section}.{name}] {where}: kind must be a registered name (a string)")
        out[name] = Component(kind, options)
    return out


def single_config(dataset: str, method: str) -> SweepConfig:
    """The config of a one-off ``branchbench run`` given by flags alone."""
    return SweepConfig(name="run", seeds=[0], budgets=[None], protocol={},
                       datasets={dataset: Component(dataset)}, methods={method: Component(method)})


def cell_configs(
    cfg: SweepConfig,
    *,
    datasets: list[str] | None = None,
    methods: list[str] | None = None,
    budgets: list[float | None] | None = None,
    seeds: list[int] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    finetune: bool | None = None,
) -> list:
    """Every cell of ``cfg`` (or of the chosen subset), as :class:`~branchbench.resolve.CellConfig` s.

    The one assembly of ``run`` and ``sweep``: datasets x data seeds x methods x
    budgets x seeds. A method that is not budget-aware gets one cell per seed
    (budget none) unless ``budgets`` names budgets explicitly (``run
    --budget``; the resolver checks and then ignores it). ``overrides`` are
    ``--set`` values by section. Data seeds apply to datasets with a
    ``data_seed`` option; others have a fixed split (data seed 0).
    """
    from branchbench.plugins import get_dataset_class, get_method_class
    from branchbench.resolve import CellConfig

    overrides = overrides or {}
    for name in datasets or []:
        if name not in cfg.datasets:
            raise ConfigError(f"{cfg.source} has no dataset {name!r}; it has {sorted(cfg.datasets)}")
    for name in methods or []:
        if name not in cfg.methods:
            raise ConfigError(f"{cfg.source} has no method {name!r}; it has {sorted(cfg.methods)}")
    protocol = {**cfg.protocol, **overrides.get("protocol", {})}
    explicit_budgets = budgets is not None
    out = []
    for data_name in datasets or list(cfg.datasets):
        data = cfg.datasets[data_name]
        data_options = {**data.options, **overrides.get("dataset", {})}
        has_data_seed = "data_seed" in get_dataset_class(data.kind).options
        draws = cfg.data_seeds if (cfg.data_seeds and has_data_seed) else [None]
        for data_seed in draws:
            options = dict(data_options) if data_seed is None else {**data_options, "data_seed": data_seed}
            for method_name in methods or list(cfg.methods):
                method = cfg.methods[method_name]
                method_options = {**method.options, **overrides.get("method", {})}
                aware = get_method_class(method.kind).budget_aware
                cell_budgets = budgets if explicit_budgets else (cfg.budgets if aware else [None])
                for budget in cell_budgets:
                    for seed in seeds if seeds is not None else cfg.seeds:
                        out.append(CellConfig(
                            dataset=data_name, method=method_name, dataset_options=dict(options),
                            method_options=dict(method_options), budget=budget, seed=seed,
                            protocol=dict(protocol), finetune=cfg.finetune if finetune is None else finetune,
                            dataset_kind=data.kind, method_kind=method.kind,
                        ))
    return out


def parse_assignment(text: str) -> tuple[str, str, Any]:
    """``section.key=value`` from ``--set`` -> (section, key, typed value).

    The value is read as a TOML value when it parses (numbers, booleans, lists,
    quoted strings), else taken as a plain string.
    """
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. protocol.epochs=5")
    lhs, _, rhs = text.partition("=")
    section, _, key = lhs.strip().partition(".")
    if section not in SECTIONS or not key:
        raise ConfigError(
            f"--set {text!r}: the key must start with dataset., method. or protocol. (e.g. method.logit_lr=0.01)"
        )
    try:
        value = tomllib.loads(f"v = {rhs.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = rhs.strip()
    return section, key, value
