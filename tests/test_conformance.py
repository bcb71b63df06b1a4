"""Every registered method and dataset passes the conformance kit; the kit catches broken ones.

The parametrisation comes from the registry, so a new built-in or an installed
plugin is tested here with no new test code.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import os
from pathlib import Path

import pytest

from branchbench.core.method import Method, SearchResult
from branchbench.core.plan import Plan
from branchbench.plugins import get_dataset_class, get_method_class, list_datasets, list_methods
from branchbench.testing import (
    CheckFailure,
    check_dataset,
    check_deterministic_for_seed,
    check_groups_use_declared,
    check_method,
    check_no_side_effects,
    check_plan_within_budget,
    check_reference_use_declared,
    check_reports_search_cost,
    check_returns_valid_plan,
    check_seed_dependence_declared,
    parametrize_with_checks,
)

PATH_OPTIONS = ("root", "path", "file", "data_dir")


# ------------------------------------------------------------ the registered
@parametrize_with_checks([get_method_class(name) for name in list_methods()])
def test_registered_method_conforms(method, check):
    check(method)


def _fixture_options(name: str, tmp_path: Path) -> dict | None:
    """Options pointing a file-based dataset at a fixture in its real format, if a maker exists."""
    try:
        fixtures = importlib.import_module("branchbench.datasets.fixtures")
    except ImportError:
        return None
    make = getattr(fixtures, f"make_{name}", None)
    if make is None:
        return None
    made = make(tmp_path)
    if isinstance(made, dict):
        return made
    key = next(k for k in PATH_OPTIONS if k in get_dataset_class(name).options)
    return {key: str(made)}


def _needs_user_path(cls) -> bool:
    return any(k in cls.options and not cls.options[k].default for k in PATH_OPTIONS)


@pytest.mark.parametrize("name", list_datasets())
def test_registered_dataset_conforms(name, tmp_path):
    cls = get_dataset_class(name)
    options = _fixture_options(name, tmp_path)
    if options is None and _needs_user_path(cls):
        pytest.skip(f"dataset {name!r} reads files from a user path and "
                    f"branchbench.datasets.fixtures has no make_{name}(dir)")
    bench = check_dataset(cls, **(options or {}))
    assert bench.task_names


def test_every_builtin_that_exists_loads():
    """A built-in whose module exists but fails to import must not vanish silently from the lists."""
    from branchbench import plugins

    for table, get in ((plugins.BUILTIN_METHODS, get_method_class), (plugins.BUILTIN_DATASETS, get_dataset_class)):
        for name, target in table.items():
            if importlib.util.find_spec(target.split(":")[0]) is not None:
                assert get(name).name == name


# ------------------------------------------------------- deliberately broken
def _tree(bench) -> Plan:
    return Plan.shared_bottom(bench.task_names, bench.backbone.block_names)


class Good(Method):
    name = "good"

    def search(self, bench, budget, ctx):
        return SearchResult(_tree(bench))


class StochasticGood(Good):
    name = "stochastic_good"
    tags = frozenset({"stochastic"})


class InvalidPlan(Good):
    name = "invalid_plan"

    def search(self, bench, budget, ctx):
        return SearchResult(Plan(["ghost"], bench.backbone.block_names, {"ghost": [0] * len(bench.backbone.blocks)}))


class OverCap(Good):
    name = "over_cap"
    budget_aware = True

    def search(self, bench, budget, ctx):
        return SearchResult(Plan.independent(bench.task_names, bench.backbone.block_names))


class Nondeterministic(Good):
    """State leaks from one search into the next (here: a class-level call counter)."""

    name = "nondeterministic"
    tags = frozenset({"stochastic"})
    calls = itertools.count()

    def search(self, bench, budget, ctx):
        first = bench.task_names[0]
        odd = next(self.calls) % 2
        return SearchResult(Plan(bench.task_names, bench.backbone.block_names,
                                 {t: [0, 0, 1 if (t == first and odd) else 0] for t in bench.task_names}))


class UndeclaredSeed(Good):
    name = "undeclared_seed"

    def search(self, bench, budget, ctx):
        first = bench.task_names[0]
        return SearchResult(Plan(bench.task_names, bench.backbone.block_names,
                                 {t: [0, 0, 1 if (t == first and ctx.seed % 2) else 0] for t in bench.task_names}))


class WritesFile(Good):
    name = "writes_file"

    def search(self, bench, budget, ctx):
        Path("search.log").write_text("a method must not write files")
        return super().search(bench, budget, ctx)


class CallsMlflow(Good):
    name = "calls_mlflow"

    def search(self, bench, budget, ctx):
        import mlflow

        try:
            mlflow.log_metric("steps", 1.0)
        except Exception:  # noqa: BLE001 - even a swallowed call is caught
            pass
        return super().search(bench, budget, ctx)


class CreatesClient(Good):
    name = "creates_client"

    def search(self, bench, budget, ctx):
        from mlflow.tracking import MlflowClient

        MlflowClient().search_experiments()
        return super().search(bench, budget, ctx)


class ReadsGroups(Good):
    name = "reads_groups"

    def search(self, bench, budget, ctx):
        truth = bench.true_partition() or [set(bench.task_names)]
        return SearchResult(Plan.from_partitions(bench.task_names, bench.backbone.block_names,
                                                 [[set(bench.task_names)], truth, truth]))


class SilentSearch(Good):
    name = "silent_search"
    tags = frozenset({"search"})


class SecretReference(Good):
    name = "secret_reference"

    def search(self, bench, budget, ctx):
        ctx.reference("independent")
        return super().search(bench, budget, ctx)


@pytest.mark.parametrize(
    "broken, check, says",
    [
        (InvalidPlan, check_returns_valid_plan, "does not fit the benchmark"),
        (OverCap, check_plan_within_budget, "over the cap"),
        (Nondeterministic, check_deterministic_for_seed, "two searches with seed 0 gave different plans"),
        (UndeclaredSeed, check_seed_dependence_declared, "not tagged 'stochastic'"),
        (WritesFile, check_no_side_effects, r"wrote files during search: \['cwd/search.log'\]"),
        (CallsMlflow, check_no_side_effects, "called MLflow during search \\(mlflow.log_metric\\)"),
        (CreatesClient, check_no_side_effects, "MlflowClient"),
        (ReadsGroups, check_groups_use_declared, "changes when the true grouping"),
        (SilentSearch, check_reports_search_cost, "reports no search cost"),
        (SecretReference, check_reference_use_declared, "not tagged 'needs_reference'"),
    ],
    ids=lambda v: v.__name__ if inspect.isclass(v) or inspect.isfunction(v) else None,
)
def test_the_kit_fails_broken_methods_saying_why(broken, check, says):
    with pytest.raises(CheckFailure, match=says) as info:
        check(broken)
    message = str(info.value)
    assert f"method {broken.name!r}" in message and "Fix: " in message


def test_the_side_effect_check_leaves_the_environment_as_it_was():
    import tempfile

    import mlflow
    from mlflow.tracking import MlflowClient

    def state():
        env = tuple(os.environ.get(k) for k in ("HOME", "TMPDIR", "MLFLOW_TRACKING_URI"))
        return os.getcwd(), env, tempfile.tempdir, MlflowClient.__init__, mlflow.start_run, mlflow.log_metric

    before = state()
    for broken in (WritesFile, CreatesClient):
        with pytest.raises(CheckFailure):
            check_no_side_effects(broken)
    assert state() == before
    assert mlflow.active_run() is None


def test_check_method_reports_every_failure_and_respects_declared_ones():
    with pytest.raises(CheckFailure) as info:
        check_method(OverCap)
    assert "1 conformance check(s) failed" in str(info.value)
    assert "check_plan_within_budget" in str(info.value)

    outcomes = {o.check: o for o in check_method(OverCap, expected_failures={
        "check_plan_within_budget": "returns independent networks whatever the budget"})}
    assert outcomes["check_plan_within_budget"].status == "xfail"
    assert outcomes["check_plan_within_budget"].message == "returns independent networks whatever the budget"
    assert outcomes["check_returns_valid_plan"].status == "passed"

    with pytest.raises(CheckFailure, match="passes but is declared an expected failure"):
        check_method(Good, expected_failures={"check_returns_valid_plan": "it used to fail"})
    with pytest.raises(ValueError, match="unknown check"):
        check_method(Good, expected_failures={"check_typo": "x"})
    with pytest.raises(ValueError, match="give no reason"):
        check_method(OverCap, expected_failures={"check_plan_within_budget": ""})


def test_tags_choose_which_checks_apply():
    outcomes = {o.check: o for o in check_method(Good)}
    assert outcomes["check_plan_within_budget"].status == "skipped"
    assert "not budget-aware" in outcomes["check_plan_within_budget"].message
    outcomes = {o.check: o for o in check_method(StochasticGood)}
    assert outcomes["check_seed_dependence_declared"].status == "skipped"


def test_parametrize_with_checks_marks_skips_and_expected_failures():
    mark = parametrize_with_checks([OverCap, Good], expected_failures={"check_plan_within_budget": "known"})
    argnames, params = mark.args
    assert argnames == "method, check"
    by_id = {p.id: p for p in params}
    xfail = by_id["over_cap-check_plan_within_budget"].marks[0]
    assert xfail.name == "xfail" and xfail.kwargs["reason"] == "known" and xfail.kwargs["strict"]
    assert by_id["good-check_plan_within_budget"].marks[0].name == "skip"
    assert not by_id["good-check_returns_valid_plan"].marks


# ----------------------------------------------------------- broken datasets
def test_the_dataset_kit_fails_unrepeatable_or_mislabelled_data():
    import dataclasses

    import torch

    from branchbench.datasets.synthetic import Synthetic

    class Unseeded(Synthetic):
        name = "unseeded"

        def load(self):
            bench = super().load()
            train = bench.splits["train"]
            noisy = dataclasses.replace(train, x=train.x + torch.randn(train.x.shape))  # global RNG
            return dataclasses.replace(bench, splits={**bench.splits, "train": noisy})

    class NoGroups(Synthetic):
        name = "no_groups"

        def load(self):
            return dataclasses.replace(super().load(), groups=None)

    small = dict(tasks=2, groups=1, n_train=16, n_val=8, n_test=8)
    with pytest.raises(CheckFailure, match="dataset 'unseeded'.*loading twice.*different data.*data_seed"):
        check_dataset(Unseeded, **small)
    with pytest.raises(CheckFailure, match="has_groups=True but the benchmark's groups are None"):
        check_dataset(NoGroups, **small)
    assert check_dataset(Synthetic, **small).task_names == ["t0", "t1"]
