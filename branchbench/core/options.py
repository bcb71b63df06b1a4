"""Declared options: what methods and datasets (and plugins) share about their settings.

A component declares its hyper-parameters beside itself as :class:`Option` s
(default, type, allowed values), so sweeps, the CLI, tuning and reports read
them from one place and a new component edits no central file. Values are
checked strictly when the component is built, which is while a cell is
resolved, before any run exists: an int option takes no float or bool (``2.5``
and ``true`` are refused, not truncated), a float takes an int, a string option
takes only a string.

An option a tuning study may search declares where with ``tune=Space(...)``
(a range, log-scaled where the scale matters, or a set of choices), beside its
default: ``branchbench tune`` reads the space from the options and nothing
else, so a method's tuning space is as visible as its defaults.

:class:`Configurable` is the base both :class:`~branchbench.core.method.Method`
and :class:`~branchbench.datasets.base.Dataset` build on: the constructor
validates and stores the options and nothing else, and ``version`` is bumped by
the component's author whenever its results change, so that finished cells of
the old version are rerun instead of reused (it is part of a cell's identity).

This module imports nothing heavy (no torch), so the CLI can describe options
quickly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar


class OptionError(ValueError):
    """An unknown option name, or a value of the wrong type or outside its allowed values."""


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


@dataclass(frozen=True)
class Space:
    """Where ``branchbench tune`` searches one option.

    A numeric range ``Space(low, high)`` (``log=True`` samples it on a log
    scale, for rates and weights), or ``Space(choices=(...))`` for strings and
    booleans. It must lie inside the option's own allowed values.

        >>> Option(0.1, "a learning rate", low=1e-6, tune=Space(1e-3, 1.0, log=True)).tune.log
        True
    """

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None

    def describe(self) -> str:
        if self.choices is not None:
            return f"tuned over {list(self.choices)}"
        return f"tuned in [{self.low}, {self.high}]{' (log scale)' if self.log else ''}"


@dataclass(frozen=True)
class Option:
    """A declared hyper-parameter: its default, its type and its allowed values.

    ``type`` defaults to the type of ``default`` (give it when the default is
    ``None``); ``None`` is always accepted as "use the default". ``tune`` is
    the option's tuning space (:class:`Space`), if a study may search it.
    """

    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    type: type | None = None
    tune: Space | None = None

    def __post_init__(self) -> None:
        if self.tune is not None:
            self._check_space(self.tune)

    def _check_space(self, space: Space) -> None:
        """Refuse, where the option is declared, a space that tuning could not sample or that the option refuses."""
        kind = self.kind
        where = f"Option({self.default!r}, {self.help!r})"
        if space.choices is not None:
            if not space.choices:
                raise OptionError(f"{where}: tune=Space(choices=()) is empty; give at least one choice")
            for value in space.choices:
                self.validate(where, "tune", value)
            return
        if kind not in (int, float):
            raise OptionError(f"{where}: a {getattr(kind, '__name__', kind)} option is tuned over choices; "
                              "give tune=Space(choices=(...))")
        if space.low is None or space.high is None or not space.low < space.high:
            raise OptionError(f"{where}: tune=Space(low, high) needs low < high, got ({space.low}, {space.high})")
        if space.log and space.low <= 0:
            raise OptionError(f"{where}: a log-scaled tune range needs low > 0, got {space.low}")
        for bound in (space.low, space.high):
            if kind is int and (not isinstance(bound, int) or isinstance(bound, bool)):
                raise OptionError(f"{where}: an int option's tune range has integer bounds, got {bound!r}")
            self.validate(where, "tune", bound)

    @property
    def kind(self) -> type | None:
        return self.type or (type(self.default) if self.default is not None else None)

    def describe(self) -> str:
        """One line for listings: the type, default and allowed values."""
        kind = self.kind
        parts = [f"default {self.default!r}"]
        if kind is not None:
            parts.insert(0, kind.__name__)
        if self.choices is not None:
            parts.append(f"one of {list(self.choices)}")
        if self.low is not None or self.high is not None:
            parts.append(f"in [{'-inf' if self.low is None else self.low}, {'inf' if self.high is None else self.high}]")
        if self.tune is not None:
            parts.append(self.tune.describe())
        return ", ".join(parts)

    def validate(self, owner: str, name: str, value: Any) -> Any:
        """The value, checked (and an int widened to float for a float option)."""
        if value is None:
            return self.default
        kind = self.kind
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        wrong_type = kind is not None and (
            not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))
        )
        if wrong_type:
            expected = _TYPE_NAMES.get(kind, kind.__name__)
            raise OptionError(
                f"{owner}: option {name}={value!r} ({type(value).__name__}) should be {expected} "
                f"(default {self.default!r}); give e.g. {name}={self.default!r}"
            )
        if self.choices is not None and value not in self.choices:
            raise OptionError(f"{owner}: option {name}={value!r} is not one of {list(self.choices)}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                raise OptionError(f"{owner}: option {name}={value!r} is not finite; give a finite number")
            if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
                low = "-inf" if self.low is None else self.low
                high = "inf" if self.high is None else self.high
                raise OptionError(f"{owner}: option {name}={value!r} is outside [{low}, {high}]; give a value in that range")
        return value


def resolve_options(owner: str, declared: Mapping[str, Option], given: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with the given options (``None`` means "use the default")."""
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise OptionError(
            f"{owner}: unknown option(s) {unknown}; known options are {sorted(declared) or 'none'}"
        )
    return {name: option.validate(owner, name, given.get(name)) for name, option in declared.items()}


class Configurable:
    """A named component with declared, validated options and a results version.

    Subclasses set ``name``, ``options`` and (when their results change)
    ``version``. The constructor stores validated options in ``self.params``
    and nothing else; :meth:`check` is where a subclass refuses option
    combinations that cannot work, and it runs at construction too.
    """

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    options: ClassVar[dict[str, Option]] = {}
    kind_label: ClassVar[str] = "component"

    def __init__(self, **options: Any) -> None:
        self.params = resolve_options(self.owner, self.options, options)
        self.check()

    @property
    def owner(self) -> str:
        """How messages name this component, e.g. ``method 'dmtg'``."""
        return f"{self.kind_label} {self.name!r}"

    def check(self) -> None:
        """Refuse option combinations that cannot work (raise :class:`OptionError`)."""

    @classmethod
    def tuning_space(cls) -> dict[str, Option]:
        """The options a tuning study searches (those declared with ``tune=Space(...)``), by name."""
        return {name: option for name, option in cls.options.items() if option.tune is not None}

    def get_params(self) -> dict[str, Any]:
        return dict(self.params)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"
