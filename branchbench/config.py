"""Benchmark protocol files (TOML) and the one assembly of cells from them.

Example (``configs/synthetic.toml``)::

    [sweep]
    name = "synthetic"          # the MLflow parent run's name
    seeds = [0, 1, 2]           # training seeds
    data_seeds = [0, 1]         # data draws (datasets with a data_seed option; optional)
    budgets = [1.5, 3.0]        # budget-aware methods run once per budget
    controls = ["permuted_tree", "random_policy"]  # each learned method's own controls (optional)

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

``sweep.include`` lists TOML files (paths relative to the including file)
whose ``[methods.<name>]`` options are merged into this config's methods of the
same name, typically what ``branchbench tune`` wrote
(``include = ["tuned/synthetic/learn_to_branch.toml"]``). An included option
that the config sets to another value is refused, not silently overridden; an
included ``[tuning]`` record marks the method as tuned with its number of
trials, logged with each of its cells as the tag ``bb.tuning_trials`` (and the
study as ``bb.tuning_study``) so reports can state every method's tuning
budget. A config whose ``data_seeds`` are development seeds
(:mod:`branchbench.seeds`) loads with a :class:`~branchbench.seeds.SeedWarning`.

This module checks the file's *structure* (sections, keys, value types of the
sweep table) when it is loaded; :func:`cell_configs` turns a config into the
cells that ``run`` and ``sweep`` both execute, and the resolver checks every
option of them. Both happen before any run exists.
"""

from __future__ import annotations

import json
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOP_KEYS = {"sweep", "protocol", "datasets", "methods", "executor"}  # [executor]: branchbench.executors
SWEEP_KEYS = {"name", "seeds", "data_seeds", "budgets", "finetune", "experiment", "purpose", "include",
              "controls"}
INCLUDE_KEYS = {"methods", "tuning"}
TUNING_TAGS = {"trials": "bb.tuning_trials", "study": "bb.tuning_study"}
SECTIONS = ("dataset", "method", "protocol")
PURPOSES = ("comparison", "development")


class ConfigError(ValueError):
    """A protocol file that cannot be used; the message names the key and the fix."""


@dataclass(frozen=True)
class Component:
    """A named instance of a registered dataset or method kind, with its options.

    ``tuning`` is the ``[tuning]`` record of the tuned file its options were
    included from (``trials``, ``study``, ...), if any. ``finetune`` (methods
    only): this method's cells fine-tune the search weights instead of
    retraining from scratch (None: the sweep's setting).
    """

    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    tuning: dict[str, Any] | None = None
    finetune: bool | None = None

    def tags(self) -> dict[str, str]:
        """The cell tags that state how this component's options were chosen (empty when not tuned)."""
        if not self.tuning:
            return {}
        return {tag: str(self.tuning[key]) for key, tag in TUNING_TAGS.items() if key in self.tuning}


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
    purpose: str = "comparison"
    controls: list[str] = field(default_factory=list)
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
    cfg = parse_config(raw, source=str(path))
    from branchbench.seeds import SeedWarning, comparison_warning

    if cfg.purpose == "development":
        from branchbench.seeds import SeedError, check_development

        if not cfg.data_seeds:
            raise ConfigError(f"{path}: a development config (purpose = \"development\") draws its data on "
                              "development seeds: give sweep.data_seeds (e.g. [1000, 1001, 1002])")
        try:
            check_development(cfg.data_seeds, f"{path}: sweep.data_seeds")
        except SeedError as err:
            raise ConfigError(str(err)) from None
        return cfg
    message = comparison_warning(cfg.data_seeds, str(path))
    if message:
        warnings.warn(message, SeedWarning, stacklevel=2)
    return cfg


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
    for path in _include_list(sweep, where):
        _include(methods, _base(source) / path, path, where)
    purpose = sweep.get("purpose", "comparison")
    if purpose not in PURPOSES:
        raise ConfigError(f"sweep.purpose {where} is {purpose!r}; give one of {list(PURPOSES)} (development: "
                          "a study on development data seeds, whose results choose defaults)")
    finetune = sweep.get("finetune", False)
    if not isinstance(finetune, bool):
        raise ConfigError(f"sweep.finetune {where} must be true or false")
    for key in ("name", "experiment"):
        if key in sweep and not isinstance(sweep[key], str):
            raise ConfigError(f"sweep.{key} {where} must be a string")
    controls = sweep.get("controls", [])
    if not isinstance(controls, list) or not all(isinstance(c, str) for c in controls):
        raise ConfigError(f"sweep.controls {where} must be a list of control names, e.g. [\"permuted_tree\"]")
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
        purpose=purpose,
        controls=list(controls),
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
        finetune = options.pop("finetune", None) if section == "methods" else None
        if finetune is not None and not isinstance(finetune, bool):
            raise ConfigError(f"[{section}.{name}] {where}: finetune must be true or false")
        out[name] = Component(kind, options, finetune=finetune)
    return out


def _base(source: str) -> Path:
    """The folder that includes are relative to: the config file's (the working directory for inline configs)."""
    return Path(source).parent if source != "<inline>" else Path.cwd()


def _include_list(sweep: dict[str, Any], where: str) -> list[str]:
    value = sweep.get("include", [])
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        raise ConfigError(f"sweep.include {where} must be a list of TOML file paths, e.g. "
                          "include = [\"tuned/synthetic/learn_to_branch.toml\"]")
    return value


def _include(methods: dict[str, Component], path: Path, given: str, where: str) -> None:
    """Merge the ``[methods.<name>]`` options (and ``[tuning]`` record) of an included file into ``methods``."""
    here = f"sweep.include {given!r} {where}"
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as err:
        raise ConfigError(f"{here}: cannot read {path} ({err.strerror or err}); give a path relative to the "
                          "config file, e.g. the one `branchbench tune` printed") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{here}: {path} is not valid TOML: {err}") from None
    unknown = sorted(set(raw) - INCLUDE_KEYS)
    if unknown:
        raise ConfigError(f"{here}: section(s) {unknown} cannot be included; an included file holds only "
                          f"{sorted(INCLUDE_KEYS)}")
    included = _components(raw, "methods", here)
    if not included:
        raise ConfigError(f"{here}: no [methods.<name>] section to include")
    tuning = _table(raw, "tuning", here) or None
    if tuning is not None:
        trials = tuning.get("trials")
        if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
            raise ConfigError(f"{here}: tuning.trials must be a positive integer (the study's finished trials), "
                              f"got {trials!r}")
    for name, extra in included.items():
        mine = methods.get(name)
        if mine is None:
            raise ConfigError(f"{here}: it sets options of method {name!r}, which this config does not run; "
                              f"add [methods.{name}] or remove the include")
        if extra.kind != mine.kind:
            raise ConfigError(f"{here}: method {name!r} is of kind {extra.kind!r} there but {mine.kind!r} here; "
                              "include the file tuned for this method")
        clash = sorted(k for k, v in extra.options.items() if k in mine.options and mine.options[k] != v)
        if clash:
            shown = ", ".join(f"{k}={mine.options[k]!r} here but {extra.options[k]!r} there" for k in clash)
            raise ConfigError(f"{here}: method {name!r} sets {shown}; remove one of the two")
        if tuning is not None and mine.tuning is not None:
            raise ConfigError(f"{here}: method {name!r} is already tuned by another included file; include one")
        methods[name] = Component(mine.kind, {**mine.options, **extra.options},
                                  tuning if tuning is not None else mine.tuning, mine.finetune)


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

    ``sweep.controls`` adds, for every chosen learned method, each listed
    control that applies to it (:func:`control_components`): a cell named by
    the control (e.g. ``permuted_tree``) reading that method's cell, at its
    budgets and seeds, tagged ``bb.control_of`` with the method's name.
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
    chosen = methods or list(cfg.methods)
    components = {name: cfg.methods[name] for name in chosen}
    generated = control_components(cfg, chosen, overrides.get("method", {}), finetune)
    out = []
    for data_name in datasets or list(cfg.datasets):
        data = cfg.datasets[data_name]
        data_options = {**data.options, **overrides.get("dataset", {})}
        has_data_seed = "data_seed" in get_dataset_class(data.kind).options
        draws = cfg.data_seeds if (cfg.data_seeds and has_data_seed) else [None]
        for data_seed in draws:
            options = dict(data_options) if data_seed is None else {**data_options, "data_seed": data_seed}
            for method_name, method, control in [(n, c, False) for n, c in components.items()] + generated:
                retrains = control or "control" in get_method_class(method.kind).tags  # controls never fine-tune
                method_options = dict(method.options) if control else {**method.options, **overrides.get("method", {})}
                # a --set that changes a tuned option makes the cell no longer the tuned one
                tuned = method.options == {k: method_options[k] for k in method.options}
                aware = get_method_class(method.kind)(**method_options).budget_aware
                cell_budgets = budgets if explicit_budgets else (cfg.budgets if aware else [None])
                for budget in cell_budgets:
                    for seed in seeds if seeds is not None else cfg.seeds:
                        out.append(CellConfig(
                            dataset=data_name, method=method_name, dataset_options=dict(options),
                            method_options=dict(method_options), budget=budget, seed=seed,
                            protocol=dict(protocol),
                            finetune=False if retrains else _finetune(finetune, method, cfg),
                            dataset_kind=data.kind, method_kind=method.kind,
                            tags=method.tags() if tuned else {},
                        ))
    return out


def _finetune(given: bool | None, method: Component, cfg: SweepConfig) -> bool:
    """A cell fine-tunes when asked on the command line, else by its method's table, else by the sweep."""
    if given is not None:
        return given
    return method.finetune if method.finetune is not None else cfg.finetune


def control_components(cfg: SweepConfig, methods: list[str], method_overrides: dict[str, Any],
                       finetune: bool | None = None) -> list[tuple[str, Component, bool]]:
    """(name, component, True) of each control of ``sweep.controls`` for each learned method it applies to.

    A learned method is one that searches (tagged ``search`` or
    ``needs_reference``, and not itself a control or a given plan);
    ``permuted_tree`` applies to those without skips, ``random_policy`` to
    those with (``skips``). The control is named by its kind, so reports group
    it as ``permuted_tree (<method>)``; its options name the method, its kind
    and its options (with ``--set method.*`` overrides), so it reads that very
    cell. Controls retrain their plan from scratch (they have no search weights
    to fine-tune), so a method that fine-tunes (``finetune``, the command
    line's, else its table's, else the sweep's) is refused with its controls:
    the two would differ in training as well as in grouping.
    """
    from branchbench.plugins import get_method_class

    out = []
    for control in cfg.controls:
        cls = get_method_class(control)
        if "control" not in cls.tags:
            raise ConfigError(f"sweep.controls in {cfg.source}: {control!r} is not a control (a method tagged "
                              "'control', e.g. permuted_tree or random_policy)")
        for name in methods:
            source = cfg.methods[name]
            tags = get_method_class(source.kind).tags
            learned = bool(tags & {"search", "needs_reference"}) and not tags & {"control", "given_plan"}
            if not learned or ("skips" in tags) != ("skips" in cls.tags):
                continue
            if _finetune(finetune, source, cfg):
                raise ConfigError(
                    f"sweep.controls in {cfg.source}: method {name!r} fine-tunes its search weights (finetune = "
                    f"true), but its control {control!r} retrains from scratch (a control has no search weights), "
                    "so the two would differ in training, not only in which tasks share; set finetune = false for "
                    f"{name!r}, or leave {control!r} out of sweep.controls"
                )
            options = {**source.options, **method_overrides}
            out.append((control, Component(control, {"source": name, "source_kind": source.kind,
                                                     "source_options": json.dumps(options, sort_keys=True)}), True))
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
