"""The dataset interface: a named loader with declared options that builds a Benchmark."""

from __future__ import annotations

from typing import Any, ClassVar

from branchbench.core.benchmark import Benchmark, Protocol
from branchbench.core.method import Option, resolve_options


class Dataset:
    """Base class of every dataset. ``load()`` builds the Benchmark from ``self.params``.

    Options are declared beside the dataset (default plus allowed values), like
    a method's. ``has_groups`` says whether the data has a known task grouping.
    A dataset that reads files takes their location as an option (``root``)
    and never downloads anything.
    """

    name: ClassVar[str] = ""
    has_groups: ClassVar[bool] = False
    options: ClassVar[dict[str, Option]] = {}

    def __init__(self, **options: Any) -> None:
        self.params = resolve_options(f"dataset {self.name!r}", self.options, options)

    def load(self) -> Benchmark:
        raise NotImplementedError

    def protocol(self) -> Protocol:
        """The training protocol of this benchmark. Override when loading is slow."""
        return self.load().protocol

    def get_params(self) -> dict[str, Any]:
        return dict(self.params)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"
