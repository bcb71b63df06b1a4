"""Resolving a cell: what a user asks for becomes one immutable, picklable :class:`Cell`.

A *cell* is (dataset and its options, method and its options, budget, training
seed, training protocol). :func:`resolve` fills in every default, checks every
option's type and range, validates the data files once per data key, and
resolves the cells this one depends on (the independent networks for Δm, and
whatever the method :meth:`~branchbench.core.method.Method.requires`). It
raises on bad input, so input that can be checked is refused before any MLflow
run exists. The :class:`Cell` it returns is the only currency downstream:
planning, executors, workers, the cell function and contexts pass it on and
never resolve again.

Identity: a cell's hash covers its resolved config, the results ``version`` of
its method and dataset, the config version, and the hashes of the cells it
depends on, so a changed method or reference is rerun instead of reused. The
dataset enters through :meth:`Dataset.identity` (a file's content key rather
than its path).

    >>> cell = resolve(CellConfig("synthetic", "shared_bottom", {"tasks": 4, "groups": 2}))
    >>> cell.name, cell.dependency("independent").name
    ('synthetic-shared_bottom-s0', 'synthetic-independent-s0')
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from branchbench.core.benchmark import TrainingProtocol
from branchbench.core.budget import Budget, BudgetError
from branchbench.core.options import OptionError
from branchbench.plugins import get_dataset_class, get_method_class

if TYPE_CHECKING:  # pragma: no cover
    from branchbench.core.method import Method
    from branchbench.datasets.base import Dataset

CONFIG_VERSION = 2
DELTA_M_REFERENCE = "independent"
_LABEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


class CellError(ValueError):
    """A cell that cannot be run as asked; the message names the cause and the fix."""


def config_hash(data: Mapping[str, Any]) -> str:
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class CellConfig:
    """What a user asks for; :func:`resolve` fills in every default and checks it.

    ``dataset`` and ``method`` are names the user gives (they label runs,
    cells and report folders); ``dataset_kind`` and ``method_kind`` are the
    registered names they are instances of (default: the same names), so one
    sweep can hold several instances of one kind. ``tags`` are extra MLflow
    tags of the cell's run that say how its config came about (e.g.
    ``bb.tuning_trials``); they do not change what the cell computes, so they
    are not part of its identity.
    """

    dataset: str
    method: str
    dataset_options: dict[str, Any] = field(default_factory=dict)
    method_options: dict[str, Any] = field(default_factory=dict)
    budget: float | None = None
    seed: int = 0
    protocol: dict[str, Any] = field(default_factory=dict)
    finetune: bool = False
    dataset_kind: str | None = None
    method_kind: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Cell:
    """A resolved cell: every default filled in, checked, hashed; plain data that pickles.

    ``config`` is the resolved config as canonical JSON (logged as
    ``config.json``); ``needs`` pairs each role this cell depends on with the
    resolved cell of that role.
    """

    dataset: str
    dataset_kind: str
    method: str
    method_kind: str
    budget: Budget
    seed: int
    data_seed: int
    protocol: TrainingProtocol
    finetune: bool
    budget_aware: bool
    task_names: tuple[str, ...]
    has_groups: bool
    hash: str
    data_key: str
    config: str
    needs: tuple[tuple[str, Cell], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()  # CellConfig.tags: logged, not hashed

    @property
    def resolved(self) -> dict[str, Any]:
        return json.loads(self.config)

    @property
    def dataset_options(self) -> dict[str, Any]:
        return self.resolved["dataset"]["options"]

    @property
    def method_options(self) -> dict[str, Any]:
        return self.resolved["method"]["options"]

    @property
    def name(self) -> str:
        data = f"-d{self.data_seed}" if self.data_seed else ""
        budget = "" if self.budget.ratio is None else f"-b{self.budget.ratio:g}"
        return f"{self.dataset}{data}-{self.method}{budget}-s{self.seed}"

    def dependency(self, role: str) -> Cell:
        for name, cell in self.needs:
            if name == role:
                return cell
        raise KeyError(
            f"cell {self.name} has no dependency {role!r}; it depends on {[n for n, _ in self.needs] or 'nothing'}"
            f". A method declares what it reads with Method.requires()"
        )

    def make_dataset(self) -> Dataset:
        return get_dataset_class(self.dataset_kind)(**self.dataset_options)

    def make_method(self) -> Method:
        return get_method_class(self.method_kind)(**self.method_options)

    def tags(self) -> dict[str, str]:
        """The ``bb.*`` tags that identify this cell in MLflow (and that reports read)."""
        resolved = self.resolved
        return {
            "bb.kind": "cell",
            "bb.config_hash": self.hash,
            "bb.data_key": self.data_key,
            "bb.dataset": self.dataset,
            "bb.dataset_kind": self.dataset_kind,
            "bb.dataset_version": str(resolved["dataset"]["version"]),
            "bb.method": self.method,
            "bb.method_kind": self.method_kind,
            "bb.method_version": str(resolved["method"]["version"]),
            "bb.budget": str(self.budget),
            "bb.budget_aware": str(self.budget_aware).lower(),
            "bb.seed": str(self.seed),
            "bb.data_seed": str(self.data_seed),
            "bb.finetuned": str(self.finetune).lower(),
            **dict(self.labels),
        }

    def describe(self) -> dict[str, Any]:
        """Plain facts of the cell for listings (``sweep/cells.json``) and outcomes."""
        return {"hash": self.hash, "name": self.name, "dataset": self.dataset, "dataset_kind": self.dataset_kind,
                "method": self.method, "method_kind": self.method_kind, "budget": self.budget.ratio,
                "seed": self.seed, "data_seed": self.data_seed, "needs": {r: c.hash for r, c in self.needs}}


@dataclass(frozen=True)
class DataFacts:
    """What resolving learns from a dataset once per data key."""

    task_names: tuple[str, ...]
    protocol: TrainingProtocol
    has_groups: bool


class Resolver:
    """Resolves cells, checking each data key's files once and each dependency once."""

    def __init__(self) -> None:
        self._identity: dict[tuple[str, str], dict[str, Any]] = {}
        self._facts: dict[str, DataFacts] = {}
        self._cells: dict[str, Cell] = {}

    def resolve(self, config: CellConfig) -> Cell:
        key = json.dumps(_plain(config.__dict__), sort_keys=True, default=str)
        if key not in self._cells:
            self._cells[key] = self._resolve(config)
        return self._cells[key]

    def _resolve(self, config: CellConfig) -> Cell:
        for label, what in ((config.dataset, "dataset"), (config.method, "method")):
            if not isinstance(label, str) or not _LABEL.fullmatch(label):
                raise CellError(f"{what} name {label!r} must be letters, digits, '_', '-' or '.' (it names runs "
                                "and report folders)")
        dataset_kind = config.dataset_kind or config.dataset
        method_kind = config.method_kind or config.method
        dataset = get_dataset_class(dataset_kind)(**dict(config.dataset_options))
        method_cls = get_method_class(method_kind)
        method = method_cls(**dict(config.method_options))
        seed = _seed(config.seed)
        if not isinstance(config.finetune, bool):
            raise CellError(f"finetune={config.finetune!r} must be true or false")

        identity = self._identity_of(dataset_kind, dataset)
        data_key = config_hash({"kind": dataset_kind, "version": dataset.version, "identity": identity})
        facts = self._facts_of(data_key, config.dataset, dataset)
        if "needs_groups" in method_cls.tags and not facts.has_groups:
            raise CellError(
                f"method {config.method!r} needs data with a known task grouping; dataset "
                f"{config.dataset!r} has none. Choose a dataset with known groups (e.g. synthetic)."
            )
        try:
            protocol = facts.protocol.replace(**dict(config.protocol))
        except OptionError as err:
            raise OptionError(f"dataset {config.dataset!r}: {err}") from None
        budget = _budget(config.budget, method.budget_aware, len(facts.task_names))
        method.check_cell(protocol, list(facts.task_names))

        needs = self._needs(config, method)
        data_seed = dataset.params.get("data_seed", 0) if "data_seed" in dataset.options else 0
        resolved = {
            "version": CONFIG_VERSION,
            "dataset": {"name": config.dataset, "kind": dataset_kind, "version": dataset.version,
                        "options": dataset.get_params()},
            "method": {"name": config.method, "kind": method_kind, "version": method.version,
                       "options": method.get_params()},
            "budget": budget.ratio,
            "seed": seed,
            "protocol": protocol.to_dict(),
            "finetune": config.finetune,
            "needs": {role: cell.hash for role, cell in needs},
        }
        identified = {**resolved, "dataset": {**resolved["dataset"], "options": identity}}
        return Cell(
            dataset=config.dataset, dataset_kind=dataset_kind, method=config.method, method_kind=method_kind,
            budget=budget, seed=seed, data_seed=int(data_seed), protocol=protocol, finetune=config.finetune,
            budget_aware=method.budget_aware, task_names=facts.task_names, has_groups=facts.has_groups,
            hash=config_hash(identified), data_key=data_key,
            config=json.dumps(resolved, sort_keys=True, default=str), needs=needs,
            labels=tuple(sorted((str(k), str(v)) for k, v in config.tags.items())),
        )

    def _identity_of(self, kind: str, dataset: Dataset) -> dict[str, Any]:
        key = (kind, json.dumps(dataset.get_params(), sort_keys=True, default=str))
        if key not in self._identity:
            self._identity[key] = _plain(dataset.identity())
        return self._identity[key]

    def _facts_of(self, data_key: str, label: str, dataset: Dataset) -> DataFacts:
        if data_key not in self._facts:
            dataset.validate()
            self._facts[data_key] = DataFacts(tuple(dataset.task_names()), dataset.protocol(),
                                              bool(dataset.has_groups))
        return self._facts[data_key]

    def _needs(self, config: CellConfig, method: Method) -> tuple[tuple[str, Cell], ...]:
        requirements = dict(method.requires())
        if (config.method_kind or config.method) != DELTA_M_REFERENCE:
            from branchbench.core.method import Requirement

            requirements.setdefault(DELTA_M_REFERENCE, Requirement(DELTA_M_REFERENCE))
        needs = []
        for role, req in sorted(requirements.items()):
            dep = CellConfig(
                dataset=config.dataset, method=req.method, dataset_options=dict(config.dataset_options),
                method_options=dict(req.options), budget=config.budget if req.same_budget else None,
                seed=config.seed, protocol=dict(config.protocol), finetune=False, dataset_kind=config.dataset_kind,
                method_kind=req.kind,
            )
            needs.append((role, self.resolve(dep)))
        return tuple(needs)


def resolve(config: CellConfig) -> Cell:
    """One cell, resolved (see the module docstring)."""
    return Resolver().resolve(config)


def _seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise CellError(f"seed {seed!r} must be a non-negative integer, e.g. --seed 0")
    return seed


def _budget(ratio: Any, budget_aware: bool, n_tasks: int) -> Budget:
    if ratio is None:
        return Budget(None)
    if isinstance(ratio, bool) or not isinstance(ratio, int | float):
        raise BudgetError(f"budget {ratio!r} must be a number from 1.0 (shared-bottom) to T={n_tasks} (or none)")
    budget = Budget(float(ratio))  # refuses < 1
    if budget.ratio > n_tasks:
        raise BudgetError(
            f"budget {ratio:g} is above T={n_tasks}: a budget is a ratio to shared-bottom's backbone "
            f"parameters and {n_tasks} tasks reach independent networks at {n_tasks}; give 1.0 .. {n_tasks}"
        )
    return budget if budget_aware else Budget(None)


def _plain(value: Any) -> Any:
    """JSON-able copy (tuples as lists), so equal configs serialise equally."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))
