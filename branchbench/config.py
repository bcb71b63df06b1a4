"""Benchmark protocol files (TOML): the one schema of ``run --config`` and ``sweep``.

Example (``configs/synthetic.toml``)::

    [sweep]
    name = "synthetic"          # the MLflow parent run's name
    seeds = [0, 1, 2]
    budgets = [1.5, 3.0]        # budget-aware methods run once per budget

    [protocol]                  # overrides of every dataset's training protocol
    epochs = 40

    [datasets.synthetic]        # a dataset and its options
    tasks = 9

    [methods.shared_bottom]     # a method and its options
    [methods.learn_to_branch]
    logit_lr = 0.01

Everything is validated on load, before any run starts: unknown sections or
keys, unknown datasets or methods, and bad option values each give one message
naming the key and the allowed values.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from branchbench.core.benchmark import TrainingProtocol
from branchbench.core.budget import Budget
from branchbench.core.method import OptionError
from branchbench.plugins import RegistryError, get_dataset_class, get_method_class

TOP_KEYS = {"sweep", "protocol", "datasets", "methods"}
SWEEP_KEYS = {"name", "seeds", "budgets", "finetune", "experiment"}


class ConfigError(ValueError):
    """A protocol file that cannot be used; the message names the key and the fix."""


@dataclass
class SweepConfig:
    name: str
    seeds: list[int]
    budgets: list[float | None]
    protocol: dict[str, Any]
    datasets: dict[str, dict[str, Any]]
    methods: dict[str, dict[str, Any]]
    finetune: bool = False
    experiment: str | None = None
    source: str = "<inline>"
    raw: dict[str, Any] = field(default_factory=dict)


def load_config(path: str | Path) -> SweepConfig:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {err}") from err
    return parse_config(raw, source=str(path))


def parse_config(raw: dict[str, Any], source: str = "<inline>") -> SweepConfig:
    where = f"in {source}"
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown} {where}; allowed sections are {sorted(TOP_KEYS)}")
    sweep = _table(raw, "sweep", where)
    bad = sorted(set(sweep) - SWEEP_KEYS)
    if bad:
        raise ConfigError(f"unknown key(s) {['sweep.' + k for k in bad]} {where}; allowed keys are {sorted(SWEEP_KEYS)}")
    seeds = sweep.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"sweep.seeds {where} must be a non-empty list of non-negative integers, got {seeds!r}")
    budgets_raw = sweep.get("budgets", ["none"])
    if not isinstance(budgets_raw, list) or not budgets_raw:
        raise ConfigError(f"sweep.budgets {where} must be a non-empty list of numbers >= 1 (or \"none\")")
    budgets: list[float | None] = []
    for b in budgets_raw:
        value = None if b in ("none", None) else b
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ConfigError(f"sweep.budgets {where}: {b!r} is not a number >= 1 or \"none\"")
        try:
            Budget(None if value is None else float(value))
        except ValueError as err:
            raise ConfigError(f"sweep.budgets {where}: {err}") from err
        budgets.append(None if value is None else float(value))

    protocol = _table(raw, "protocol", where)
    try:
        TrainingProtocol().replace(**protocol)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"[protocol] {where}: {err}") from err

    datasets = _table(raw, "datasets", where)
    methods = _table(raw, "methods", where)
    if not datasets:
        raise ConfigError(f"no [datasets.<name>] section {where}; add at least one dataset")
    if not methods:
        raise ConfigError(f"no [methods.<name>] section {where}; add at least one method")
    for name, options in datasets.items():
        _check_component(name, options, get_dataset_class, "datasets", where)
    for name, options in methods.items():
        _check_component(name, options, get_method_class, "methods", where)
    finetune = sweep.get("finetune", False)
    if not isinstance(finetune, bool):
        raise ConfigError(f"sweep.finetune {where} must be true or false")
    return SweepConfig(
        name=str(sweep.get("name", Path(source).stem)),
        seeds=seeds,
        budgets=budgets,
        protocol=protocol,
        datasets={k: dict(v) for k, v in datasets.items()},
        methods={k: dict(v) for k, v in methods.items()},
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


def _check_component(name: str, options: Any, get_class, section: str, where: str) -> None:
    if not isinstance(options, dict):
        raise ConfigError(f"[{section}.{name}] {where} must be a table of options")
    try:
        cls = get_class(name)
        cls(**options)
    except RegistryError as err:
        raise ConfigError(f"[{section}.{name}] {where}: {err}") from err
    except OptionError as err:
        raise ConfigError(f"[{section}.{name}] {where}: {err}") from err


def parse_assignment(text: str) -> tuple[str, str, Any]:
    """``section.key=value`` from ``--set`` -> (section, key, typed value).

    The value is read as a TOML value when it parses (numbers, booleans, lists,
    quoted strings), else taken as a plain string.
    """
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. protocol.epochs=5")
    lhs, _, rhs = text.partition("=")
    section, _, key = lhs.strip().partition(".")
    if section not in ("dataset", "method", "protocol") or not key:
        raise ConfigError(
            f"--set {text!r}: the key must start with dataset., method. or protocol. (e.g. method.logit_lr=0.01)"
        )
    try:
        value = tomllib.loads(f"v = {rhs.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = rhs.strip()
    return section, key, value
