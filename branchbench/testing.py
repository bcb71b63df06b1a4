"""The conformance kit: checks every method (built-in or plugin) must pass.

In the spirit of scikit-learn's ``check_estimator``: small, flat checks, each
running a method on a tiny synthetic benchmark (4 tasks in 2 known groups, a
3-block MLP, 2 training epochs) and asserting one property, failing with a
message that names the method, the problem and the fix. A plugin author runs
them in their own tests with one decorator::

    from branchbench.testing import parametrize_with_checks
    from bb_tag import TAG

    @parametrize_with_checks([TAG])
    def test_conformance(method, check):
        check(method)

or all at once with ``check_method(TAG)``. The method's capability tags (see
:class:`~branchbench.core.method.Method`) choose which checks apply; a check
that does not apply is reported as skipped, with the reason. Known failures
are declared with a reason, ``expected_failures={"check_name": "why"}``: they
run and are reported as xfail, never silenced, and one that starts passing is
an error, so the declaration is removed when the method is fixed.

Searches run as the cell runs them: on a freshly loaded benchmark, with
Python, NumPy and torch seeded from the seed first, uncapped unless a check is
about budgets, in an in-memory :class:`~branchbench.context.LocalContext`; the
caller's random state is restored afterwards. The side-effect check watches the
working directory, ``HOME`` and ``TMPDIR`` (all fresh and empty) and MLflow;
writes to other absolute paths are not seen.

A method class may set ``check_options`` (a dict of its options) to shrink its
search for the kit, e.g. fewer search epochs; the kit's benchmark already uses
a 2-epoch protocol, which ``ctx.trainer(...)`` hands to every supernet.

Dataset plugins get :func:`check_dataset`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import math
import os
import random
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from branchbench.context import LocalContext
from branchbench.core.benchmark import SPLITS, Benchmark
from branchbench.core.budget import Budget, BudgetError
from branchbench.core.method import Method, Option, Reference, SearchResult
from branchbench.core.net import BranchedNet
from branchbench.core.plan import Plan, PlanError
from branchbench.core.retrain import seed_everything
from branchbench.core.tasks import multitask_loss
from branchbench.datasets.base import Dataset

KNOWN_TAGS = frozenset({"search", "skips", "needs_groups", "needs_reference", "stochastic", "given_plan", "control"})
KIT_DATA = dict(tasks=4, groups=2, input_dim=8, n_train=64, n_val=32, n_test=32, width=8, depth=3, n_sines=2)
KIT_PROTOCOL = dict(epochs=2, batch_size=32, early_stopping=0, lr=1e-3, lr_schedule="constant", threads=1, amp="off")
CAPPED_BUDGETS = (1.0, 1.5)
POISONED_TRACKING_URI = "bbkit-poisoned://a-method-must-not-talk-to-mlflow"
MLFLOW_FIX = "log through ctx.log_metrics / ctx.log_artifact; the cell function owns the MLflow run"

MethodLike = Method | type[Method]


class CheckFailure(AssertionError):
    """A method (or dataset) breaks the contract; the message names the fix."""


@dataclass(frozen=True)
class CheckOutcome:
    check: str
    status: str  # "passed", "failed", "skipped", "xfail", "xpass"
    message: str = ""


# --------------------------------------------------------------------- helpers
def kit_benchmark(tasks: int = 4, groups: int = 2) -> Benchmark:
    """The kit's tiny benchmark: synthetic tasks with known groups, a 2-epoch protocol."""
    from branchbench.datasets.synthetic import Synthetic

    bench = Synthetic(**{**KIT_DATA, "tasks": tasks, "groups": groups}).load()
    return dataclasses.replace(bench, protocol=bench.protocol.replace(**KIT_PROTOCOL))


def fresh(method: MethodLike) -> Method:
    """A new instance: a class gets its ``check_options``, an instance is cloned by its params."""
    if isinstance(method, type):
        return method(**getattr(method, "check_options", {}))
    return type(method)(**copy.deepcopy(method.get_params()))


def _label(method: MethodLike) -> str:
    cls = _cls(method)
    return f"method {getattr(cls, 'name', '') or cls.__name__!r} ({cls.__module__}.{cls.__qualname__})"


def _cls(method: MethodLike) -> type[Method]:
    return method if isinstance(method, type) else type(method)


def _fail(method: MethodLike, problem: str, fix: str) -> None:
    raise CheckFailure(f"{_label(method)}: {problem}. Fix: {fix}")


class KitContext(LocalContext):
    """A LocalContext that records which references a method asks for."""

    def __init__(self, bench: Benchmark, seed: int = 0, references: Mapping[str, Reference] | None = None) -> None:
        super().__init__(bench, seed=seed, references=references)
        self.references_asked: list[str] = []

    def reference(self, method: str) -> Reference:
        self.references_asked.append(method)
        return super().reference(method)


@contextlib.contextmanager
def _preserved_rng() -> Iterator[None]:
    """Seed like the cell does, and give the caller its random state back afterwards."""
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


BenchFactory = Callable[[], Benchmark]


def run_search(
    method: Method, bench: Benchmark | BenchFactory, budget: float | None = None, seed: int = 0
) -> tuple[SearchResult, KitContext]:
    """One search as the cell runs it: a freshly loaded benchmark, global seeds set, in memory.

    ``bench`` may be a factory: the cell loads the data anew for every run, and
    so does the kit, so state cached on a Benchmark (e.g. its backbone's
    measured costs) cannot make a second search differ from the first.
    """
    bench = bench() if callable(bench) else bench
    ctx = KitContext(bench, seed=seed, references=_searched_references(method, bench, budget, seed))
    with _preserved_rng():
        seed_everything(seed)
        result = method.search(bench, Budget(budget), ctx)
    return result, ctx


def _searched_references(method: Method, bench: Benchmark, budget: float | None, seed: int) -> dict[str, Reference]:
    """References to other methods' cells (e.g. a control's source): their searched plans, without weights.

    The roles a LocalContext trains itself (the fixed reference plans) are left to it.
    """
    from branchbench.context import REFERENCE_PLANS
    from branchbench.plugins import get_method_class

    out = {}
    for role, req in method.requires().items():
        if role in REFERENCE_PLANS and req.method == role:
            continue
        source = get_method_class(req.kind or req.method)(**dict(req.options))
        result, _ = run_search(source, bench, budget if req.same_budget else None, seed)
        out[role] = Reference(method=req.method, run_id=None, plan=result.plan, state_dict={}, metrics={},
                              seconds=0.0, reused=False)
    return out


def _searched_plan(
    method: MethodLike, make_bench: BenchFactory, budget: float | None = None, seed: int = 0
) -> tuple[Plan, Benchmark]:
    """The plan of one search (checked to be a Plan that fits), and the benchmark it ran on."""
    bench = make_bench()
    result, _ = run_search(fresh(method), bench, budget, seed)
    if not isinstance(result, SearchResult):
        _fail(method, f"search() returned {type(result).__name__}, not a SearchResult",
              "return SearchResult(plan, cost=..., artifacts=...) from search()")
    if not isinstance(result.plan, Plan):
        _fail(method, f"SearchResult.plan is {type(result.plan).__name__}, not a Plan",
              "build the plan with branchbench.core.plan.Plan (e.g. Plan.from_partitions)")
    try:
        result.plan.check_fits(bench.task_names, len(bench.backbone.blocks))
    except PlanError as err:
        _fail(method, f"its plan does not fit the benchmark ({err})",
              "give exactly bench.task_names and one node id per block of bench.backbone")
    return result.plan, bench


def _hidden_groups() -> Benchmark:
    return dataclasses.replace(kit_benchmark(), groups=None)


def _single_task() -> Benchmark:
    return kit_benchmark().with_tasks(["t0"])


# ---------------------------------------------------------------------- checks
def _check(fn: Callable[[MethodLike], None]) -> Callable[[MethodLike], None]:
    """A check: an error raised by the method itself becomes a CheckFailure naming it and the fix."""

    @functools.wraps(fn)
    def run(method: MethodLike) -> None:
        try:
            fn(method)
        except CheckFailure:
            raise
        except Exception as err:  # noqa: BLE001 - the method crashed on the kit's benchmark
            raise CheckFailure(
                f"{_label(method)}: {fn.__name__} crashed with {type(err).__name__}: {err}. Fix: make "
                "search() work on small data (the kit uses 4 tasks, 64 training samples, a 3-block MLP, "
                "2 epochs), or set check_options = {...} on the class to shrink its search"
            ) from err

    return run


@_check
def check_declares_interface(method: MethodLike) -> None:
    """Name, budget flag, known tags, declared options, and a constructor that only stores them."""
    m = fresh(method)
    cls = type(m)
    if not isinstance(cls.name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", cls.name):
        _fail(method, f"name={cls.name!r} is not a lowercase identifier",
              "set the class attribute name = 'my_method' (it is the entry point's name too)")
    if not isinstance(cls.budget_aware, bool):
        _fail(method, f"budget_aware={cls.budget_aware!r} is not a bool", "set budget_aware = True or False")
    unknown = sorted(set(cls.tags) - KNOWN_TAGS)
    if not isinstance(cls.tags, frozenset) or unknown:
        _fail(method, f"tags={cls.tags!r} are not a frozenset of known tags (unknown: {unknown})",
              f"use tags = frozenset({{...}}) with tags from {sorted(KNOWN_TAGS)}")
    bad = [k for k, v in cls.options.items() if not isinstance(v, Option)]
    if bad:
        _fail(method, f"options {bad} are not Option(...) declarations",
              "declare options = {'name': Option(default, 'help', low=..., high=...)}")
    if cls.search is Method.search:
        _fail(method, "it does not implement search()", "define search(self, bench, budget, ctx)")
    params = m.get_params()
    if set(params) != set(cls.options):
        _fail(method, f"get_params() gives {sorted(params)} but the declared options are {sorted(cls.options)}",
              "let the constructor store exactly the declared options (call Method.__init__)")
    if cls(**copy.deepcopy(params)).get_params() != params:
        _fail(method, "constructing it again from its own get_params() gives different params",
              "store options unchanged in __init__; do derived work in search()")


@_check
def check_returns_valid_plan(method: MethodLike) -> None:
    """search() returns a SearchResult whose Plan fits the benchmark and runs in a BranchedNet."""
    plan, bench = _searched_plan(method, kit_benchmark)
    if plan.has_skips and "skips" not in _cls(method).tags:
        _fail(method, "its plan skips blocks but the method is not tagged 'skips'",
              "add 'skips' to the method's tags, or return a plan without null node ids")
    net = BranchedNet(plan, bench.backbone, bench.tasks)
    with torch.no_grad():
        out = net(bench.prepare(bench.splits["val"].x[:4]))
    if set(out) != set(bench.task_names) or not all(torch.isfinite(v).all() for v in out.values()):
        _fail(method, "a BranchedNet of its plan does not predict every task finitely",
              "return a plan over the benchmark's tasks and blocks")


@_check
def check_search_result_contents(method: MethodLike) -> None:
    """Artifacts are named, and init_state (if any) loads into the plan's BranchedNet."""
    bench = kit_benchmark()
    result, _ = run_search(fresh(method), bench)
    if not isinstance(result.artifacts, dict) or not all(isinstance(k, str) and k for k in result.artifacts):
        _fail(method, "SearchResult.artifacts is not a dict keyed by file names",
              "give artifacts as {'name.json': data, 'figure.png': fig, ...}")
    if result.init_state is not None:
        net = BranchedNet(result.plan, bench.backbone, bench.tasks)
        try:
            missing, _ = net.load_state_dict(result.init_state, strict=False)
        except RuntimeError as err:
            missing = [str(err)]
        if missing:
            _fail(method, f"init_state does not fit the plan's BranchedNet (e.g. {missing[:3]})",
                  "give init_state in BranchedNet(plan, ...).state_dict() layout, or None")


@_check
def check_reports_search_cost(method: MethodLike) -> None:
    """SearchResult.cost is a dict of finite numbers; a search method reports something."""
    result, _ = run_search(fresh(method), kit_benchmark)
    cost = result.cost
    if not isinstance(cost, dict):
        _fail(method, f"SearchResult.cost is {type(cost).__name__}, not a dict",
              "give cost={'supernet_steps': n, ...}")
    bad = {k: v for k, v in cost.items()
           if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)}
    if bad:
        _fail(method, f"cost entries {bad} are not finite numbers under string keys",
              "report counts and sizes as int/float (wall time is measured by the cell)")
    if "search" in _cls(method).tags and not cost:
        _fail(method, "it is tagged 'search' but reports no search cost",
              "report what the search spent, e.g. cost={'supernet_steps': steps, 'supernet_epochs': epochs}")


@_check
def check_plan_within_budget(method: MethodLike) -> None:
    """A budget-aware method keeps its plan under Budget.cap at tight budgets (1.0x, 1.5x)."""
    for ratio in CAPPED_BUDGETS:
        try:
            plan, bench = _searched_plan(method, kit_benchmark, ratio)
        except BudgetError:
            if ratio == CAPPED_BUDGETS[0]:
                continue  # refusing, clearly, a budget that no plan of the method can meet is allowed
            raise
        if not Budget(ratio).allows(plan, bench.backbone):
            _fail(method, f"at budget {ratio}x its plan uses {plan.budget_ratio(bench.backbone):.3f}x "
                  "shared-bottom's backbone parameters, over the cap",
                  "treat budget.cap(bench.backbone) as a hard limit on plan.param_count(backbone)")


@_check
def check_deterministic_for_seed(method: MethodLike) -> None:
    """Two searches with the same seed give the same plan (up to relabelling node ids)."""
    first, _ = _searched_plan(method, kit_benchmark, seed=0)
    second, _ = _searched_plan(method, kit_benchmark, seed=0)
    if first != second:
        _fail(method, f"two searches with seed 0 gave different plans:\n  {first}\n  {second}",
              "draw all randomness from ctx.seed (e.g. random.Random(f'name-{ctx.seed}'), or "
              "torch generators seeded from it), never from time, os.urandom or unseeded generators")


@_check
def check_seed_dependence_declared(method: MethodLike) -> None:
    """A method not tagged 'stochastic' gives the same plan for different seeds."""
    first, _ = _searched_plan(method, kit_benchmark, seed=0)
    second, _ = _searched_plan(method, kit_benchmark, seed=1)
    if first != second:
        _fail(method, "seeds 0 and 1 give different plans but it is not tagged 'stochastic'",
              "add 'stochastic' to its tags (its plan depends on the seed)")


@_check
def check_handles_single_task(method: MethodLike) -> None:
    """A benchmark with one task gets a valid one-task plan (under the 1.0x cap if budget-aware)."""
    ratio = 1.0 if _cls(method).budget_aware else None
    plan, bench = _searched_plan(method, _single_task, ratio)
    if ratio is not None and not Budget(ratio).allows(plan, bench.backbone):
        _fail(method, "with one task its plan exceeds the 1.0x budget",
              "with one task, return the shared-bottom plan (it is also the independent one)")


@_check
def check_groups_use_declared(method: MethodLike) -> None:
    """Only 'needs_groups' methods read Benchmark.groups; they refuse data without groups."""
    if "needs_groups" in _cls(method).tags:
        try:
            _searched_plan(method, _hidden_groups)
        except CheckFailure:
            raise
        except Exception:  # noqa: BLE001 - any clear error is a refusal
            return
        _fail(method, "it is tagged 'needs_groups' but returned a plan on data without known groups",
              "raise a ValueError naming the dataset when bench.groups is None")
    try:
        without, _ = _searched_plan(method, _hidden_groups)
    except CheckFailure:
        raise
    except Exception as err:  # noqa: BLE001
        _fail(method, f"it fails on data without known groups ({type(err).__name__}: {err})",
              "do not read bench.groups, or tag the method 'needs_groups'")
    with_groups, _ = _searched_plan(method, kit_benchmark)
    if without != with_groups:
        _fail(method, "its plan changes when the true grouping (bench.groups) is hidden: it reads the "
              "answer (unless it is nondeterministic: see check_deterministic_for_seed)",
              "do not read bench.groups / bench.true_partition(), or tag it 'needs_groups' (oracles only)")


@_check
def check_reference_use_declared(method: MethodLike) -> None:
    """Only 'needs_reference' methods ask the context for reference networks."""
    _, ctx = run_search(fresh(method), kit_benchmark)
    if ctx.references_asked and "needs_reference" not in _cls(method).tags:
        _fail(method, f"it asked ctx.reference({ctx.references_asked[0]!r}) but is not tagged 'needs_reference'",
              "add 'needs_reference' to its tags so runners can prepare and reuse the reference runs")


@_check
def check_no_side_effects(method: MethodLike) -> None:
    """No MLflow, no files: search under a poisoned MLflow and fresh cwd, HOME and TMPDIR."""
    with _sandbox() as (mlflow_calls, dirs):
        try:
            run_search(fresh(method), kit_benchmark)
        except Exception as err:
            if not mlflow_calls:
                raise
            raise CheckFailure(f"{_label(method)}: search failed after calling MLflow ({type(err).__name__}: "
                               f"{err}). Fix: {MLFLOW_FIX}") from err
        written = sorted(f"{label}/{p.relative_to(d)}" for label, d in zip(("cwd", "HOME", "TMPDIR"), dirs, strict=True)
                         for p in d.rglob("*"))
    if mlflow_calls:
        _fail(method, f"it called MLflow during search ({', '.join(sorted(set(mlflow_calls)))})",
              MLFLOW_FIX)
    if written:
        _fail(method, f"it wrote files during search: {written[:5]}",
              "keep state in memory; hand figures/tables to ctx.log_artifact, checkpoints go through "
              "ctx.trainer(...)")


CHECKS: tuple[Callable[[MethodLike], None], ...] = (
    check_declares_interface,
    check_returns_valid_plan,
    check_search_result_contents,
    check_reports_search_cost,
    check_plan_within_budget,
    check_deterministic_for_seed,
    check_seed_dependence_declared,
    check_handles_single_task,
    check_groups_use_declared,
    check_reference_use_declared,
    check_no_side_effects,
)
CHECK_NAMES = tuple(c.__name__ for c in CHECKS)


def skip_reason(check: Callable[[MethodLike], None], method: MethodLike) -> str | None:
    """Why ``check`` does not apply to ``method`` (from its tags), or None when it does."""
    cls = _cls(method)
    if check is check_plan_within_budget and not cls.budget_aware:
        return "not budget-aware (budget_aware = False): it ignores budgets"
    if check is check_seed_dependence_declared and "stochastic" in cls.tags:
        return "tagged 'stochastic': different seeds may give different plans"
    if check is check_handles_single_task and "given_plan" in cls.tags:
        return "tagged 'given_plan': its plan is given for one dataset's tasks"
    if check is check_handles_single_task and "control" in cls.tags:
        return "tagged 'control': a control of a one-task plan is undefined (nothing to permute)"
    return None


# ----------------------------------------------------------------- the sandbox
@contextlib.contextmanager
def _sandbox() -> Iterator[tuple[list[str], list[Path]]]:
    """Poisoned MLflow (URI and client), fresh cwd/HOME/TMPDIR; yields (mlflow calls, dirs)."""
    import mlflow
    import mlflow.tracking.client
    import mlflow.tracking.fluent

    with contextlib.suppress(ImportError):  # matplotlib's config/font cache are found now, not in HOME
        import matplotlib.font_manager  # noqa: F401
    calls: list[str] = []

    def refuse(what: str) -> Callable[..., Any]:
        def _refuse(*args: Any, **kwargs: Any) -> Any:
            calls.append(what)
            raise RuntimeError(f"branchbench.testing: a method called {what} during search")

        return _refuse

    patches: list[tuple[Any, str, Any]] = [
        (mlflow.tracking.client.MlflowClient, "__init__", refuse("MlflowClient()")),
        (mlflow.tracking.fluent, "start_run", refuse("mlflow.start_run")),
        (mlflow, "start_run", refuse("mlflow.start_run")),
        (mlflow, "set_tracking_uri", refuse("mlflow.set_tracking_uri")),
    ]
    for name in ("log_metric", "log_metrics", "log_param", "log_params", "log_artifact", "log_artifacts",
                 "log_figure", "log_dict", "log_text", "set_tag", "set_tags", "set_experiment"):
        if hasattr(mlflow, name):
            patches.append((mlflow, name, refuse(f"mlflow.{name}")))
    saved_attrs = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in patches]
    env_keys = ("MLFLOW_TRACKING_URI", "HOME", "TMPDIR")
    saved_env = {k: os.environ.get(k) for k in env_keys}
    saved_cwd, saved_tempdir = os.getcwd(), tempfile.tempdir
    active_before = mlflow.active_run()
    with tempfile.TemporaryDirectory(prefix="bbkit-") as root:
        dirs = [Path(root, d) for d in ("cwd", "home", "tmp")]
        for d in dirs:
            d.mkdir()
        try:
            for obj, attr, value in patches:
                setattr(obj, attr, value)
            os.environ.update(MLFLOW_TRACKING_URI=POISONED_TRACKING_URI, HOME=str(dirs[1]), TMPDIR=str(dirs[2]))
            os.chdir(dirs[0])
            tempfile.tempdir = str(dirs[2])
            yield calls, dirs
        finally:
            os.chdir(saved_cwd)
            tempfile.tempdir = saved_tempdir
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            for obj, attr, value in saved_attrs:
                setattr(obj, attr, value)
    if mlflow.active_run() is not active_before:
        calls.append("an MLflow run left active")


# ------------------------------------------------------------------- front end
def _expected_for(method: Method, expected: Any) -> dict[str, str]:
    table = dict(expected(method) if callable(expected) else (expected or {}))
    unknown = sorted(set(table) - set(CHECK_NAMES))
    if unknown:
        raise ValueError(f"expected_failures names unknown check(s) {unknown}; the checks are {list(CHECK_NAMES)}")
    missing = sorted(k for k, reason in table.items() if not isinstance(reason, str) or not reason.strip())
    if missing:
        raise ValueError(f"expected_failures {missing} give no reason; say why each check fails")
    return table


def check_method(
    method: MethodLike,
    *,
    expected_failures: Mapping[str, str] | Callable[[Method], Mapping[str, str]] | None = None,
    checks: Sequence[Callable[[MethodLike], None]] = CHECKS,
) -> list[CheckOutcome]:
    """Run every applicable check; raise :class:`CheckFailure` listing all failures.

    ``expected_failures`` maps a check name to the reason it is known to fail;
    such a failure is reported as ``xfail``, and a declared failure that passes
    is an error (``xpass``). Returns the outcome of every check.
    """
    expected = _expected_for(fresh(method), expected_failures)
    outcomes = []
    for check in checks:
        name = check.__name__
        reason = skip_reason(check, method)
        if reason is not None:
            outcomes.append(CheckOutcome(name, "skipped", reason))
            continue
        try:
            check(method)
        except Exception as err:  # noqa: BLE001 - a crash in a check is a failure too
            message = str(err) if isinstance(err, CheckFailure) else f"{_label(method)}: {name}: {err!r}"
            status = "xfail" if name in expected else "failed"
            outcomes.append(CheckOutcome(name, status, message if status == "failed" else expected[name]))
            continue
        if name in expected:
            outcomes.append(CheckOutcome(name, "xpass", f"{_label(method)}: {name} passes but is declared an "
                                         f"expected failure ({expected[name]!r}); remove it from expected_failures"))
        else:
            outcomes.append(CheckOutcome(name, "passed"))
    bad = [o for o in outcomes if o.status in ("failed", "xpass")]
    if bad:
        raise CheckFailure(f"{len(bad)} conformance check(s) failed:\n" + "\n".join(f"- {o.check}: {o.message}" for o in bad))
    return outcomes


def parametrize_with_checks(
    methods: Sequence[MethodLike],
    *,
    expected_failures: Mapping[str, str] | Callable[[Method], Mapping[str, str]] | None = None,
) -> Any:
    """A ``pytest.mark.parametrize`` over (method, check) pairs, one test per check.

    Checks that do not apply are marked skip with the reason; declared expected
    failures are marked ``xfail(strict=True)`` with theirs.
    """
    import pytest

    params = []
    for method in methods:
        instance = fresh(method)
        expected = _expected_for(instance, expected_failures)
        for check in CHECKS:
            reason = skip_reason(check, method)
            marks = []
            if reason is not None:
                marks.append(pytest.mark.skip(reason=reason))
            elif check.__name__ in expected:
                marks.append(pytest.mark.xfail(reason=expected[check.__name__], strict=True, raises=CheckFailure))
            params.append(pytest.param(method, check, id=f"{instance.name}-{check.__name__}", marks=marks))
    return pytest.mark.parametrize("method, check", params)


# ---------------------------------------------------------------------- datasets
def check_dataset(dataset: Dataset | type[Dataset], **options: Any) -> Benchmark:
    """A dataset loads a valid Benchmark, repeatably, that a shared-bottom net can train on.

    ``options`` override the dataset's (e.g. ``root=`` of a fixture). Returns the
    loaded benchmark.
    """
    cls = dataset if isinstance(dataset, type) else type(dataset)
    params = {**getattr(cls, "check_options", {}), **options} if isinstance(dataset, type) else {
        **dataset.get_params(), **options}
    label = f"dataset {cls.name!r} ({cls.__module__}.{cls.__qualname__})"

    def fail(problem: str, fix: str) -> None:
        raise CheckFailure(f"{label}: {problem}. Fix: {fix}")

    if not re.fullmatch(r"[a-z][a-z0-9_]*", cls.name or ""):
        fail(f"name={cls.name!r} is not a lowercase identifier", "set name = 'my_dataset'")
    ds = cls(**params)
    if cls(**copy.deepcopy(ds.get_params())).get_params() != ds.get_params():
        fail("constructing it again from get_params() gives different params", "store options unchanged")
    bench = ds.load()
    if not isinstance(bench, Benchmark):
        fail(f"load() returned {type(bench).__name__}, not a Benchmark", "return a Benchmark")
    if bool(ds.has_groups) != (bench.groups is not None):
        fail(f"has_groups={ds.has_groups} but the benchmark's groups are {bench.groups!r}",
             "set has_groups to whether load() fills Benchmark.groups")
    try:
        ds.validate()
    except Exception as err:  # noqa: BLE001 - good data must validate
        fail(f"validate() refused data that loads ({type(err).__name__}: {err})",
             "check in validate() only what load() would refuse")
    if list(ds.task_names()) != bench.task_names:
        fail(f"task_names() gives {list(ds.task_names())}, load() {bench.task_names}",
             "return the loaded benchmark's task names, in order")
    try:
        identity = json.dumps(ds.identity(), sort_keys=True)
    except (TypeError, ValueError) as err:
        fail(f"identity() is not JSON data ({err})", "return plain options and content keys")
    if json.dumps(cls(**ds.get_params()).identity(), sort_keys=True) != identity:
        fail("identity() differs between two instances with the same options", "derive it from options and content")
    if tuple(bench.backbone.input_shape) != bench.input_shape:
        fail(f"backbone input {bench.backbone.input_shape} differs from the data's {bench.input_shape}",
             "build the default backbone for the data's input shape")
    if any(len(bench.splits[s]) == 0 for s in SPLITS):
        fail("a split is empty", "give train, val and test at least one sample each")
    if ds.protocol() != bench.protocol:
        fail("protocol() differs from load().protocol", "return the same TrainingProtocol from both")
    if cls(**ds.get_params()).load().fingerprint() != bench.fingerprint():
        fail("loading twice with the same options gives different data",
             "derive every random choice from a data_seed option")
    net = BranchedNet(Plan.shared_bottom(bench.task_names, bench.backbone.block_names), bench.backbone, bench.tasks)
    split = bench.splits["train"]
    x = bench.prepare(split.x[:8])
    if not x.is_floating_point():
        fail(f"prepare() gives {x.dtype} inputs", "make input_transform return floats")
    loss, _ = multitask_loss(bench.tasks, net(x), bench.prepare_targets({t: v[:8] for t, v in split.y.items()}))
    if not torch.isfinite(loss):
        fail("a shared-bottom network's loss on a training batch is not finite",
             "check targets and input scaling (NaNs, label ranges vs n_outputs)")
    return bench
