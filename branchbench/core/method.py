"""The method interface: every method searches, and ends in a Plan.

A method is a small class (DomainBed-style): its constructor stores validated
options and nothing else, ``search`` returns a :class:`SearchResult`. Each
method declares its hyper-parameters beside itself as :class:`Option` s
(default plus allowed values), so sweeps, the CLI and reports read them from
one place, and a new method edits no central file.

A method never touches MLflow, files or devices directly: everything goes
through the :class:`RunContext` it is handed (logging, progress, checkpoints,
device, seed, the trainer, and references such as the independent networks).
It never retrains its plan either: the cell function does that for all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import torch

from branchbench.core.plan import Plan

if TYPE_CHECKING:  # pragma: no cover
    from branchbench.core.benchmark import Benchmark
    from branchbench.core.benchmark import Protocol as TrainProtocol
    from branchbench.core.budget import Budget
    from branchbench.core.trainer import Trainer


class OptionError(ValueError):
    """An unknown option name or a value outside an option's allowed values."""


@dataclass(frozen=True)
class Option:
    """A declared hyper-parameter: its default, type and allowed values."""

    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None

    def validate(self, owner: str, name: str, value: Any) -> Any:
        if value is None and self.default is None:
            return None
        kind = type(self.default) if self.default is not None else None
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if kind is not None and not isinstance(value, kind):
            raise OptionError(
                f"{owner}: option {name}={value!r} should be of type {kind.__name__} "
                f"(default {self.default!r})"
            )
        if self.choices is not None and value not in self.choices:
            raise OptionError(f"{owner}: option {name}={value!r} is not one of {list(self.choices)}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if self.low is not None and value < self.low or self.high is not None and value > self.high:
                raise OptionError(
                    f"{owner}: option {name}={value!r} is outside [{self.low}, {self.high}]"
                )
            if isinstance(value, float) and not math.isfinite(value):
                raise OptionError(f"{owner}: option {name}={value!r} is not finite")
        return value


def resolve_options(owner: str, declared: Mapping[str, Option], given: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with the given options (``None`` means "use the default")."""
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise OptionError(
            f"{owner}: unknown option(s) {unknown}; known options are {sorted(declared) or 'none'}"
        )
    out = {}
    for name, option in declared.items():
        value = given.get(name)
        out[name] = option.default if value is None else option.validate(owner, name, value)
    return out


@dataclass
class SearchResult:
    """What a search hands to the cell function.

    ``cost`` holds method-specific search costs (e.g. supernet steps); wall time
    is measured by the cell function. ``artifacts`` maps a file name to a
    matplotlib Figure, a pandas DataFrame, JSON-able data or text; the cell logs
    them. ``init_state`` optionally carries search weights in BranchedNet's
    ``state_dict`` layout, used only when fine-tuning is asked for.
    """

    plan: Plan
    cost: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)
    init_state: dict[str, torch.Tensor] | None = None


@dataclass
class Reference:
    """A finished reference run (e.g. the independent networks) of the same data and seed."""

    method: str
    run_id: str | None
    plan: Plan
    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, float]
    seconds: float
    reused: bool


@runtime_checkable
class RunContext(Protocol):
    """What a method may use during search. Implemented by the cell runner and by tests."""

    device: torch.device
    seed: int

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, name: str, obj: Any) -> None: ...

    def progress(self, total: int, desc: str) -> Any: ...

    def trainer(self, name: str, protocol: TrainProtocol | None = None) -> Trainer: ...

    def reference(self, method: str) -> Reference: ...


class Method:
    """Base class of every method and baseline.

    Subclasses set ``name``, ``budget_aware``, ``tags`` and ``options`` and
    implement :meth:`search`. Tags tell the conformance kit which checks apply:
    ``"search"`` (trains a supernet), ``"skips"`` (may return skips),
    ``"needs_groups"`` (needs data with known groups), ``"needs_reference"``
    (asks for the single-task networks), ``"stochastic"`` (plan depends on seed).
    """

    name: ClassVar[str] = ""
    budget_aware: ClassVar[bool] = False
    tags: ClassVar[frozenset[str]] = frozenset()
    options: ClassVar[dict[str, Option]] = {}

    def __init__(self, **options: Any) -> None:
        self.params = resolve_options(f"method {self.name!r}", self.options, options)

    def search(self, bench: Benchmark, budget: Budget, ctx: RunContext) -> SearchResult:
        raise NotImplementedError

    def get_params(self) -> dict[str, Any]:
        return dict(self.params)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"
