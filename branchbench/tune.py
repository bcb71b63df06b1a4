"""Tuning parity: search a method's declared hyper-parameters on development data, by validation only.

``branchbench tune CONFIG --method M --trials N`` runs an Optuna study over the
options that method ``M`` declares with ``tune=Space(...)`` (beside its
defaults, :mod:`branchbench.core.options`). Each trial is a small sweep: the
config's dataset at the *development* data seeds (:mod:`branchbench.seeds`;
evaluation seeds are refused) x the training seeds x the budgets, with the
trial's options, run by :func:`~branchbench.runner.run_sweep` on the sweep
executors. So a trial's cells are ordinary cells: they resume after an
interruption, and a trial that draws options already run reuses the finished
cells by identity.

**Objective** (maximised): the validation Δm, in %, against the independent
networks of the same data and training seed (every cell's Δm reference, a
dependency the sweep runs anyway), averaged over the trial's cells. It is
computed here from ``val.*`` metrics only, of the cell and of its reference;
test metrics and the true task groups never enter it (cells still log them, and
reports may show them). Validation Δm rather than a mean validation metric
because it puts tasks of different kinds and scales (accuracies, errors) on one
scale-free axis, the one the comparison tables use. A trial with a failed cell
is a failed trial.

**Repeatability and resume**: the study lives in Optuna's RDB storage beside
the MLflow store (``sqlite:///<store folder>/optuna.db``; ``--optuna-storage``
for other stores), named from the config, method, search space, seeds and
sampler seed, so a second ``tune`` continues the same study up to ``N``
finished trials in all (never more), first finishing a trial an interrupted
run left open. Trial 0 evaluates the config's own values (the declared
defaults). Trial ``k`` is suggested by a TPE sampler seeded from (sampler seed,
``k``), so its options depend only on the seed and the trials before it,
interrupted or not.

The chosen options (the best of the study's first ``N`` finished trials, so a
study that an earlier call took further still reports exactly ``N`` trials) are
written to a TOML file
(``tuned/<config>/<method>.toml`` beside the config by default) holding
``[methods.<name>]`` and a ``[tuning]`` record (trials, objective, seeds, study);
a sweep includes it with ``[sweep] include = [...]``
(:mod:`branchbench.config`), and its cells are tagged ``bb.tuning_trials``.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from branchbench.config import Component, SweepConfig
from branchbench.console import duration, emit
from branchbench.core.options import Option
from branchbench.seeds import check_development, development_seeds

OBJECTIVE = "validation Δm (%) vs the independent networks, mean over the trial's cells"
STORAGE_NAME = "optuna.db"
FIXED_SPLIT = "fixed split"


class TuneError(ValueError):
    """A tuning request that cannot run (unknown method, no space, evaluation seeds); the message says the fix."""


@dataclass
class TuneRequest:
    """What to tune: a method of a config, on which data and training seeds, for how many trials."""

    cfg: SweepConfig
    method: str
    trials: int
    dataset: str
    data_seeds: list[int] | None  # None: the dataset has a fixed split (no data_seed option)
    seeds: list[int]
    sampler_seed: int = 0

    @property
    def component(self) -> Component:
        return self.cfg.methods[self.method]

    def space(self) -> dict[str, Option]:
        from branchbench.plugins import get_method_class

        return get_method_class(self.component.kind).tuning_space()

    def base_options(self) -> dict[str, Any]:
        """The config's options of the method that tuning does not search (every trial keeps them)."""
        space = self.space()
        return {k: v for k, v in self.component.options.items() if k not in space}

    def start(self) -> dict[str, Any]:
        """Trial 0's options: the config's values, else the declared defaults, where the space holds them.

        Options included from an earlier tuning are not the config's own: trial 0
        then starts from the declared defaults, so re-running ``tune`` on a config
        that includes its result continues the same study.
        """
        given = {} if self.component.tuning else self.component.options
        out = {}
        for name, option in self.space().items():
            value = given.get(name, option.default)
            if _within(option, value):
                out[name] = value
        return out

    def study_name(self) -> str:
        from branchbench.resolve import config_hash

        data = self.cfg.datasets[self.dataset]
        key = config_hash({
            "dataset": [data.kind, data.options], "protocol": self.cfg.protocol, "method": self.component.kind,
            "base": self.base_options(), "start": self.start(), "finetune": self.cfg.finetune,
            "space": {k: o.tune.describe() for k, o in self.space().items()}, "budgets": self.cfg.budgets,
            "data_seeds": self.data_seeds, "seeds": self.seeds, "sampler_seed": self.sampler_seed,
            "objective": OBJECTIVE,
        })
        return f"{self.cfg.name}-{self.method}-{key[:10]}"


def make_request(cfg: SweepConfig, method: str, trials: int, dataset: str | None = None,
                 data_seeds: list[int] | None = None, seeds: list[int] | None = None,
                 sampler_seed: int = 0) -> TuneRequest:
    """A checked :class:`TuneRequest`; :class:`TuneError` / :class:`~branchbench.seeds.SeedError` on bad input."""
    from branchbench.plugins import get_dataset_class, get_method_class, list_methods

    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise TuneError(f"--trials {trials!r}: give at least 1 trial")
    if method not in cfg.methods:
        if method not in list_methods():
            raise TuneError(f"method {method!r} is neither in {cfg.source} ({sorted(cfg.methods)}) nor registered; "
                            f"choose one of {sorted(cfg.methods)}")
        cfg.methods[method] = Component(method)
    space = get_method_class(cfg.methods[method].kind).tuning_space()
    if not space:
        tunable = sorted(m for m in cfg.methods if get_method_class(cfg.methods[m].kind).tuning_space())
        raise TuneError(f"method {method!r} declares no tuning space (no option with tune=Space(...)), so there is "
                        f"nothing to tune; tunable methods in {cfg.source}: {tunable or 'none'}")
    if dataset is None:
        if len(cfg.datasets) != 1:
            raise TuneError(f"{cfg.source} names datasets {sorted(cfg.datasets)}; choose one with --dataset")
        dataset = next(iter(cfg.datasets))
    if dataset not in cfg.datasets:
        raise TuneError(f"{cfg.source} has no dataset {dataset!r}; it has {sorted(cfg.datasets)}")
    has_data_seed = "data_seed" in get_dataset_class(cfg.datasets[dataset].kind).options
    if has_data_seed:
        data_seeds = check_development(data_seeds if data_seeds is not None else development_seeds(),
                                       "--data-seeds")
    elif data_seeds is not None:
        raise TuneError(f"dataset {dataset!r} has a fixed split (no data_seed option); drop --data-seeds: tuning "
                        "selects on its validation split and never reads the test split")
    return TuneRequest(cfg, method, trials, dataset, data_seeds if has_data_seed else None,
                       list(seeds if seeds is not None else cfg.seeds), sampler_seed)


# ------------------------------------------------------------------ trials
def trial_config(request: TuneRequest, options: Mapping[str, Any], study: str, number: int) -> SweepConfig:
    """The sweep of one trial: the dataset at the development data seeds, the method with ``options``."""
    cfg = request.cfg
    component = request.component
    method = Component(component.kind, {**request.base_options(), **dict(options)})
    return SweepConfig(
        name=f"{study}-t{number}", seeds=list(request.seeds), budgets=list(cfg.budgets), protocol=dict(cfg.protocol),
        datasets={request.dataset: cfg.datasets[request.dataset]}, methods={request.method: method},
        data_seeds=list(request.data_seeds) if request.data_seeds else None, finetune=cfg.finetune,
        experiment=cfg.experiment, source=cfg.source,
        raw={"tuning": {"study": study, "trial": number, "method": request.method,
                        "data_seeds": request.data_seeds or FIXED_SPLIT, "seeds": request.seeds},
             "methods": {request.method: {"kind": component.kind, **method.options}}},
    )


def validation_delta_m(cell: Any, states: Mapping[str, Mapping[str, Any]], tasks: list[Any]) -> float:
    """A finished cell's Δm (%) on the *validation* split against its independent reference's validation scores.

    ``states`` is :func:`branchbench.runner.cell_states` (metrics by cell hash);
    only ``val.*`` metrics are read.
    """
    from branchbench.core.metrics import delta_m
    from branchbench.resolve import DELTA_M_REFERENCE

    def val(hash_: str) -> dict[str, float]:
        metrics = states[hash_]["metrics"]
        return {k[len("val."):]: v for k, v in metrics.items() if k.startswith("val.")}

    if cell.method_kind == DELTA_M_REFERENCE:
        return 0.0
    return delta_m(tasks, val(cell.hash), val(cell.dependency(DELTA_M_REFERENCE).hash))


def suggest(trial: Any, space: Mapping[str, Option]) -> dict[str, Any]:
    """One value per searched option from an Optuna trial (define-by-run)."""
    out: dict[str, Any] = {}
    for name, option in space.items():
        s = option.tune
        if s.choices is not None:
            out[name] = trial.suggest_categorical(name, list(s.choices))
        elif option.kind is int:
            out[name] = trial.suggest_int(name, int(s.low), int(s.high), log=s.log)
        else:
            out[name] = trial.suggest_float(name, float(s.low), float(s.high), log=s.log)
    return out


def _within(option: Option, value: Any) -> bool:
    s = option.tune
    if s.choices is not None:
        return value in s.choices
    return isinstance(value, int | float) and not isinstance(value, bool) and s.low <= value <= s.high


@dataclass
class TrialOutcome:
    value: float | None
    parent_run_id: str | None = None
    cells: dict[str, float] = field(default_factory=dict)  # cell name -> validation Δm
    new_cells: int = 0
    failure: str | None = None


def run_trial(request: TuneRequest, options: Mapping[str, Any], study: str, number: int, tracking: Any, *,
              executor: str = "local", workers: int = 1, address: str | None = None,
              device: str | None = None, out: Callable[[str], None] = emit) -> TrialOutcome:
    """Run one trial's cells through the sweep executors and score them on validation."""
    from branchbench.cell import load_bench
    from branchbench.core.budget import BudgetError
    from branchbench.core.options import OptionError
    from branchbench.core.plan import PlanError
    from branchbench.resolve import CellError
    from branchbench.runner import cell_states, plan_sweep, prepare_data, run_sweep

    cfg = trial_config(request, options, study, number)
    try:
        cells = plan_sweep(cfg)
    except (OptionError, CellError, BudgetError, PlanError) as err:  # options the method refuses with this protocol
        return TrialOutcome(None, failure=f"refused while resolving: {err}")
    prepare_data(cells, out)
    result = run_sweep(cfg, tracking, executor=executor, workers=workers, address=address, device=device,
                       quiet=True, out=lambda line: out(f"    {line}"), cells=cells)
    tracking.set_tags(result.parent_run_id, {"bb.tuning_study": study, "bb.tuning_trial": str(number)})
    outcome = TrialOutcome(None, result.parent_run_id,
                           new_cells=sum(r.status == "finished" for r in result.results))
    if result.failed:
        first = result.failed[0]
        outcome.failure = f"{len(result.failed)} cell(s) failed, e.g. {first.cell.name}: {first.error}"
        return outcome
    states = cell_states(tracking)
    own = [c for c in cells if c.method == request.method]
    for cell in own:
        outcome.cells[cell.name] = validation_delta_m(cell, states, load_bench(cell).tasks)
    outcome.value = statistics.fmean(outcome.cells.values())
    if not math.isfinite(outcome.value):
        outcome.failure, outcome.value = f"validation Δm is {outcome.value}", None
    return outcome


# ------------------------------------------------------------------ the study
@dataclass
class TuneResult:
    study: str
    finished: int
    complete: int
    best_trial: int | None = None
    best_value: float | None = None
    best_options: dict[str, Any] = field(default_factory=dict)
    written: Path | None = None


def optuna_storage(tracking_uri: str, given: str | None) -> str:
    """Optuna's RDB storage: ``given``, else ``optuna.db`` beside a SQLite MLflow store."""
    from branchbench.tracking import sqlite_path

    if given:
        return given
    path = sqlite_path(tracking_uri)
    if path is None:
        raise TuneError(f"the MLflow store {tracking_uri} is not a SQLite file, so there is no folder to keep the "
                        "Optuna study beside it; give --optuna-storage (e.g. the URI of a database both can reach, "
                        "postgresql://... or sqlite:///optuna.db)")
    return f"sqlite:///{path.parent / STORAGE_NAME}"


def _sampler(seed: int, number: int):
    import numpy as np
    import optuna

    state = int(np.random.SeedSequence([seed, number]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=state)


def _finished(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))


def tune(request: TuneRequest, tracking: Any, storage: str, output: Path | None = None, *,
         executor: str = "local", workers: int = 1, address: str | None = None, device: str | None = None,
         out: Callable[[str], None] = emit) -> TuneResult:
    """Run (or continue) the study up to ``request.trials`` finished trials; write the chosen options."""
    import time

    import optuna
    from optuna.trial import TrialState

    from branchbench.locks import locked

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = request.study_name()
    space = request.space()
    with locked(tracking.checkpoint_root / f"tune-{name}.lock"):  # one process per study: open trials are stale
        with locked(tracking.checkpoint_root / "optuna-create.lock"):  # creating the storage's tables races
            study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                        load_if_exists=True)
        if not study.trials:
            study.set_user_attr("objective", OBJECTIVE)
            study.set_user_attr("request", _record(request))
            study.enqueue_trial(request.start())
        seeds = "fixed split" if request.data_seeds is None else f"development data seeds {request.data_seeds}"
        out(f"tune {request.method} on {request.dataset} ({seeds}, training seeds {request.seeds}, budgets "
            f"{_budgets(request.cfg.budgets)}): study {name}, {len(_finished(study))} of {request.trials} trials "
            f"finished; objective: {OBJECTIVE}")
        out("  space: " + "; ".join(f"{k} {o.tune.describe()}" for k, o in space.items()))

        def evaluate(number: int, options: dict[str, Any]) -> TrialOutcome:
            start = time.perf_counter()
            result = run_trial(request, options, name, number, tracking, executor=executor, workers=workers,
                               address=address, device=device, out=out)
            shown = " ".join(f"{k}={_short(v)}" for k, v in options.items())
            verdict = (f"val Δm {result.value:+.3f}%" if result.value is not None else f"FAILED ({result.failure})")
            out(f"trial {number}: {shown} -> {verdict}  ({len(result.cells)} cells scored, {result.new_cells} run now, "
                f"{duration(time.perf_counter() - start)})")
            return result

        for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            out(f"trial {stale.number} was left open by an interrupted run; finishing it (its cells resume)")
            trial = optuna.trial.Trial(study, stale._trial_id)
            _tell(study, trial, evaluate(stale.number, dict(stale.params)))
        while len(_finished(study)) < request.trials:
            study.sampler = _sampler(request.sampler_seed, len(study.trials))
            trial = study.ask()
            _tell(study, trial, evaluate(trial.number, suggest(trial, space)))

    # the first N finished trials: a study continued past N by an earlier call still reports N (parity)
    finished = sorted(_finished(study), key=lambda t: t.number)[: request.trials]
    result = TuneResult(name, len(finished), sum(t.state == TrialState.COMPLETE for t in finished))
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    if not complete:
        return result
    best = max(complete, key=lambda t: (t.value, -t.number))  # ties: the earliest trial
    result.best_trial, result.best_value, result.best_options = best.number, float(best.value), dict(best.params)
    if output is not None:
        write_tuned(output, request, result, storage)
        result.written = output
    return result


def _tell(study: Any, trial: Any, outcome: TrialOutcome) -> None:
    """Record the trial's MLflow parent run, its cells' validation Δm and any failure, then finish it."""
    from optuna.trial import TrialState

    trial.set_user_attr("parent_run", outcome.parent_run_id)
    trial.set_user_attr("cells", outcome.cells)
    if outcome.failure:
        trial.set_user_attr("failure", outcome.failure)
    if outcome.value is None:
        study.tell(trial, state=TrialState.FAIL)
    else:
        study.tell(trial, outcome.value)


# ------------------------------------------------------------------ the TOML
def default_output(cfg: SweepConfig, method: str) -> Path:
    """``tuned/<config name>/<method>.toml`` beside the config file (the working directory for inline configs)."""
    from branchbench.config import _base

    return _base(cfg.source) / "tuned" / Path(cfg.source).stem / f"{method}.toml"


def _record(request: TuneRequest) -> dict[str, Any]:
    return {"config": Path(request.cfg.source).name, "dataset": request.dataset, "method": request.method,
            "kind": request.component.kind, "data_seeds": request.data_seeds or FIXED_SPLIT,
            "seeds": request.seeds, "budgets": _budgets(request.cfg.budgets), "sampler_seed": request.sampler_seed}


def write_tuned(path: Path, request: TuneRequest, result: TuneResult, storage: str) -> None:
    """``[methods.<name>]`` with the chosen options, and the ``[tuning]`` record, as TOML a sweep can include."""
    from branchbench.tracking import sqlite_path

    stored = sqlite_path(storage)
    tuning = {
        **_record(request),
        "trials": result.finished, "complete": result.complete, "best_trial": result.best_trial,
        "best_value": result.best_value, "objective": OBJECTIVE, "study": result.study,
        "storage": stored.name if stored is not None else storage.split(":", 1)[0] + " database",
        "sampler": "TPESampler", "space": {k: o.tune.describe() for k, o in request.space().items()},
        "base_options": request.base_options(),
    }
    lines = [
        f"# Chosen by `branchbench tune {Path(request.cfg.source).name} --method {request.method} "
        f"--trials {request.trials}`: the best of {result.finished} trials by {OBJECTIVE},",
        f"# on {tuning['data_seeds'] if isinstance(tuning['data_seeds'], str) else 'development data seeds ' + str(tuning['data_seeds'])}"
        " (test metrics and true groups never chose anything).",
        "# Include it from the sweep config: [sweep] include = [\"<path of this file, relative to the config>\"]",
        "",
        f"[methods.{_key(request.method)}]",
        f"kind = {_value(request.component.kind)}",
        *(f"{_key(k)} = {_value(v)}" for k, v in result.best_options.items()),
        "",
        "[tuning]",
        *(f"{_key(k)} = {_value(v)}" for k, v in tuning.items()),
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() and key.isascii() else json.dumps(key)


def _value(value: Any) -> str:
    """A TOML value (strings, numbers, booleans, lists, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if value != value else ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if value is None:
        return '"none"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(str(k))} = {_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))


def _budgets(budgets: list[float | None]) -> list[float | str]:
    return [b if b is not None else "none" for b in budgets]


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
