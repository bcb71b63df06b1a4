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

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import torch

from branchbench.core.options import Configurable, Option, OptionError, resolve_options
from branchbench.core.plan import Plan

__all__ = ["Method", "Option", "OptionError", "Reference", "Requirement", "RunContext", "SearchResult",
           "resolve_options"]

if TYPE_CHECKING:  # pragma: no cover
    from branchbench.core.benchmark import Benchmark, TrainingProtocol
    from branchbench.core.budget import Budget
    from branchbench.core.retrain import Retrained
    from branchbench.core.trainer import Trainer


DIFFERENCES_MARKER = "differences from the paper"


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


@dataclass(frozen=True)
class Requirement:
    """Another cell that a method's cell needs finished first (same data, training seed, protocol).

    ``method`` is the other cell's method name (its label in a sweep) and
    ``kind`` the registered method it is an instance of (default: ``method``),
    so a requirement can name a labelled variant of a sweep (e.g. ``dmtg_k3``
    of kind ``dmtg``) and resolve to that very cell; ``options`` are its
    options; ``same_budget`` gives it this cell's budget (else none). The
    runner orders cells by these requirements, and the method reads the
    finished run through ``ctx.reference(role)``, where ``role`` is the key
    under which :meth:`Method.requires` returns it.
    """

    method: str
    options: tuple[tuple[str, Any], ...] = ()
    same_budget: bool = False
    kind: str | None = None


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

    def trainer(self, name: str, protocol: TrainingProtocol | None = None) -> Trainer: ...

    def reference(self, method: str) -> Reference: ...


class Method(Configurable):
    """Base class of every method and baseline.

    Subclasses set ``name``, ``budget_aware``, ``tags``, ``options`` and
    ``version`` (bumped whenever the method's results change, so finished cells
    of the old version rerun) and implement :meth:`search`. Tags tell the
    conformance kit which checks apply: ``"search"`` (trains a supernet),
    ``"skips"`` (may return skips), ``"needs_groups"`` (needs data with known
    groups), ``"needs_reference"`` (asks for the single-task networks, or
    another cell's run, through ``ctx.reference``), ``"stochastic"`` (plan
    depends on seed), ``"given_plan"`` (the plan is given by the user for one
    dataset), ``"control"`` (a control made from another method's plan, e.g.
    ``permuted_tree``: undefined on a single task).

    ``budget_aware`` is read from the instance, so a method whose budget
    awareness depends on its options (a control follows its source's) may set
    it in :meth:`check`.
    """

    budget_aware: ClassVar[bool] = False
    tags: ClassVar[frozenset[str]] = frozenset()
    kind_label: ClassVar[str] = "method"

    def search(self, bench: Benchmark, budget: Budget, ctx: RunContext) -> SearchResult:
        raise NotImplementedError

    @classmethod
    def differences_from_paper(cls) -> str | None:
        """The "Differences from the paper" paragraph of the method's module docstring, on one line.

        Logged with every cell (``bb.method_differences``), so reports quote it
        without importing the method.
        """
        doc = sys.modules[cls.__module__].__doc__ or ""
        for paragraph in doc.split("\n\n"):
            if DIFFERENCES_MARKER in paragraph.lower():
                return " ".join(paragraph.split())
        return None

    def requires(self) -> dict[str, Requirement]:
        """Other cells this method reads through ``ctx.reference(role)``, by role.

        Tagged ``needs_reference``: the single-task networks, role
        ``"independent"``. The cell function itself always needs that same
        reference for Δm, so declaring it costs nothing extra.
        """
        return {"independent": Requirement("independent")} if "needs_reference" in self.tags else {}

    def finetune(self, bench: Benchmark, plan: Plan, init_state: Mapping[str, torch.Tensor], ctx: RunContext,
                 seed: int) -> Retrained:
        """Fine-tune the search weights of ``plan`` (only when a cell asks for fine-tuning; tagged).

        The suite's default for every method is retraining from scratch; when a
        cell fine-tunes instead, the cell calls this. The default trains every
        weight jointly from ``init_state`` with the usual trainer; a method
        whose paper fine-tunes differently (DMTG's per-group fine-tuning)
        overrides it.
        """
        from branchbench.core.retrain import retrain

        return retrain(bench, plan, ctx.trainer("train"), seed, dict(init_state))

    def feasible(self, bench: Benchmark, budget: Budget) -> bool | None:
        """Whether the true task grouping of ``bench`` lies in this method's search space at ``budget``.

        ``None``: not applicable (no known grouping, or a method without a
        search space, e.g. a fixed baseline or a control). The cell logs it as
        ``grouping.feasible`` (1/0), and reports count recovery only where it
        is 1. Cheap: it sizes the search space, it never searches.
        """
        return None

    def control_of(self) -> str | None:
        """For a control (e.g. ``permuted_tree``): the name of the method whose plans it is made from.

        The cell tags its run ``bb.control_of`` with it, so reports pair each
        method with its own control.
        """
        return None

    def check_cell(self, protocol: TrainingProtocol, task_names: list[str]) -> None:
        """Refuse, while the cell is resolved, options that cannot work with this protocol or data.

        Raise :class:`OptionError` naming the options and the fix (e.g. a
        warm-up at least as long as the search).
        """
