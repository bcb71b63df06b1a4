"""The dataset interface: a named loader with declared options that builds a Benchmark.

A dataset is resolved into a cell before any run exists, so everything that
can be checked without training is checked then, in this order:

1. the constructor validates the options (types, ranges, combinations);
2. :meth:`Dataset.validate` checks the data files cheaply (existence, headers,
   shapes) and raises :class:`DataError` naming the file, the line and the fix;
3. :meth:`Dataset.prepare` does slow one-time work (decoding images into a
   cache), reporting bad files the same way.

The runner calls 2 and 3 once per data key (not once per cell) and only then
creates runs. :meth:`Dataset.identity` is what a cell's hash sees of the data:
the options by default, with a file path replaced by a key of the file's
content where a dataset reads files, so a moved copy keeps its identity.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from branchbench.core.benchmark import Benchmark, TrainingProtocol
from branchbench.core.options import Configurable


class DataError(ValueError):
    """Data that cannot be used: the message names the file (and line), the problem and the fix."""


class Dataset(Configurable):
    """Base class of every dataset. ``load()`` builds the Benchmark from ``self.params``.

    Options are declared beside the dataset (default plus allowed values), like
    a method's. ``has_groups`` says whether the data has a known task grouping.
    A dataset that reads files takes their location as an option (``root`` or
    ``path``) and never downloads anything. ``version`` is bumped whenever the
    data a given set of options produces changes.
    """

    has_groups: ClassVar[bool] = False
    kind_label: ClassVar[str] = "dataset"

    def load(self) -> Benchmark:
        raise NotImplementedError

    def protocol(self) -> TrainingProtocol:
        """The training protocol of this benchmark. Override when loading is slow."""
        return self.load().protocol

    def task_names(self) -> list[str]:
        """The tasks' names, in order. Override when loading is slow."""
        return [task.name for task in self.load().tasks]

    def validate(self) -> None:
        """Check the data files cheaply; raise :class:`DataError` naming the file and the fix."""

    def prepare(self, progress: Callable[[int, str], Any] | None = None) -> None:
        """One-time slow work before any run (e.g. decoding into a cache); ``progress(total, desc)`` makes a bar."""

    def identity(self) -> dict[str, Any]:
        """What identifies the data in a cell's hash (default: every option)."""
        return self.get_params()
