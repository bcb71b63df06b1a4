"""One function executes a cell: search -> retrain -> evaluate -> log.

``branchbench run`` runs one cell; ``branchbench sweep`` runs many; both call
:func:`run_cell` with a resolved :class:`~branchbench.resolve.Cell`. A cell runs
under a claim that holds wherever the store can be written from (a file lock
beside a SQLite store, a claim in a tracking server's store;
:meth:`Tracking.claim`), so two processes never run one cell at once, on one
machine or on a cluster; a finished cell is skipped; a cell whose process died is resumed: its
interrupted run is reopened (set back to RUNNING, tagged with the epochs it
resumed from) and continues from its last checkpoint, so the finished run holds
every epoch's curve and its search time includes the interrupted part.

The plan a method returns is always retrained from scratch by the same code
(fine-tuning the search weights is opt-in, and tagged ``bb.finetuned``).

What a cell logs beyond the scores (:func:`compute_metrics`): the search's and
the retrain's optimiser steps and training FLOPs (``search.steps``,
``search.flops``, ``train.steps``, ``train.flops``), the cost of the other
cells a method's search reads (``reused.seconds``, ``reused.flops``,
``reused.steps``: e.g. Vandenhende's single-task networks, a control's source;
0 for a method that reads none; the Δm reference is not charged, its time is
``reused_seconds`` / ``reference_seconds``), whether the true grouping lies in
the method's search space (``grouping.feasible``, where the method says), the
tags ``bb.hit_epoch_cap`` (the retrain's selected epoch is its last: it ended
still improving) and ``bb.search_hit_epoch_cap`` (the same for a search's
supernet), and for a control ``bb.control_of``. A control that is undefined in
its cell (:class:`~branchbench.baselines.controls.UndefinedControl`) fails with
kind ``undefined`` and the tag ``bb.control_undefined``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

from branchbench import interrupts
from branchbench.context import CellContext, CellProgress
from branchbench.core.benchmark import Benchmark
from branchbench.core.budget import BudgetError
from branchbench.core.method import Method
from branchbench.core.metrics import delta_m, grouping_scores, measure_latency
from branchbench.core.plan import Plan, PlanError
from branchbench.core.retrain import retrain, seed_everything
from branchbench.core.tasks import TaskSpec
from branchbench.core.trainer import DivergenceError, FitResult, resolve_amp
from branchbench.plugins import RegistryError, get_method_class
from branchbench.provenance import environment_tags
from branchbench.resolve import DELTA_M_REFERENCE, Cell, CellConfig, CellError, resolve
from branchbench.tracking import Tracking

BENCH_CACHE_SIZE = 2


@dataclass
class CellOutcome:
    status: str  # "finished", "skipped", "failed", "busy"
    config_hash: str
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    failure_kind: str | None = None
    seconds: float = 0.0


def failure_kind(err: BaseException) -> str:
    """Deterministic failures (not retried by sweeps) versus other errors."""
    from branchbench.baselines.controls import UndefinedControl

    if isinstance(err, UndefinedControl):
        return "undefined"
    if isinstance(err, DivergenceError):
        return "divergence"
    if isinstance(err, PlanError | BudgetError):
        return "plan"
    if isinstance(err, RegistryError):
        return "plugin"
    return "error"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ------------------------------------------------------------------ data
_BENCHES: OrderedDict[str, Benchmark] = OrderedDict()


def load_bench(cell: Cell) -> Benchmark:
    """The cell's benchmark with its resolved protocol; loaded once per data key in a process."""
    if cell.data_key not in _BENCHES:
        _BENCHES[cell.data_key] = cell.make_dataset().load()
        while len(_BENCHES) > BENCH_CACHE_SIZE:
            _BENCHES.popitem(last=False)
    _BENCHES.move_to_end(cell.data_key)
    return dataclasses.replace(_BENCHES[cell.data_key], protocol=cell.protocol)


# ------------------------------------------------------------------ the cell
def run_cell(
    cell: Cell | CellConfig,
    tracking: Tracking,
    *,
    parent_run_id: str | None = None,
    device: torch.device | str | None = None,
    force: bool = False,
    show_progress: bool = False,
    wait: bool = False,
) -> CellOutcome:
    """Run one cell end to end and record it in MLflow; never raises for a failing cell.

    Returns ``skipped`` when a FINISHED run of the same cell exists (unless
    ``force``), ``busy`` when another process holds the cell (or, with
    ``wait``, waits for it and then decides), ``failed`` (the run is marked
    FAILED with its reason in the tag ``bb.failure``) or ``finished``.
    A :class:`CellConfig` is resolved first (a convenience for scripts; the
    runner passes resolved cells). Ctrl-C or SIGTERM marks the run KILLED
    with the reason and propagates.
    """
    if isinstance(cell, CellConfig):
        cell = resolve(cell)
    device = torch.device(device) if device is not None else default_device()
    lock = tracking.claim(cell.hash)
    while not lock.try_acquire():
        if not wait:
            return CellOutcome("busy", cell.hash, error="another process is running this cell")
        lock.wait_released()
    try:
        finished = tracking.finished_run(cell.hash)
        if finished is not None and not force:
            return CellOutcome("skipped", cell.hash, finished.info.run_id, dict(finished.data.metrics))
        return _execute(cell, tracking, parent_run_id, device, show_progress)
    finally:
        lock.release()


def _open_run(cell: Cell, tracking: Tracking, parent_run_id: str | None, device: torch.device) -> tuple[str, bool]:
    """The cell's run: its interrupted run reopened when a checkpoint remains, else a new one."""
    progress = CellProgress(tracking.checkpoint_root / cell.hash)
    unfinished = tracking.runs_of_cell(cell.hash, statuses=["RUNNING", "SCHEDULED", "KILLED"])
    resumable = unfinished[0] if unfinished and progress.resumed_epochs() else None
    for stale in unfinished:
        if stale is not resumable and stale.info.status != "KILLED":
            tracking.end_run(stale.info.run_id, "KILLED", "superseded: its process ended without a checkpoint")
    if resumable is not None:
        run_id = resumable.info.run_id
        tracking.reopen_run(run_id)
        resumes = int(resumable.data.tags.get("bb.resumes", "0")) + 1
        epochs = ", ".join(f"{name} epoch {epoch}" for name, epoch in progress.resumed_epochs().items())
        tracking.set_tags(run_id, {"bb.resumes": resumes, "bb.resumed_from": epochs})
        return run_id, True
    shutil.rmtree(tracking.checkpoint_root / cell.hash, ignore_errors=True)
    method_cls = get_method_class(cell.method_kind)
    tags = {**cell.tags(), **environment_tags(device)}
    differences = method_cls.differences_from_paper()
    if differences:
        tags["bb.method_differences"] = differences
    run_id = tracking.start_run(cell.name, tags, parent_run_id)
    tracking.set_description(run_id, run_description(cell))
    tracking.log_params(run_id, flat_params(cell.resolved))
    tracking.log_object(run_id, "config.json", cell.resolved)
    return run_id, False


def _execute(cell: Cell, tracking: Tracking, parent_run_id: str | None, device: torch.device,
             show_progress: bool) -> CellOutcome:
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cell.protocol.threads)
    start = time.perf_counter()
    run_id, _ = _open_run(cell, tracking, parent_run_id, device)
    try:
        metrics = _search_and_retrain(cell, tracking, run_id, device, parent_run_id, show_progress)
        tracking.end_run(run_id, "FINISHED")
        shutil.rmtree(tracking.checkpoint_root / cell.hash, ignore_errors=True)
        return CellOutcome("finished", cell.hash, run_id, metrics, seconds=time.perf_counter() - start)
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM: the run says why it stopped
        tracking.end_run(run_id, "KILLED", interrupts.reason(err))
        raise
    except Exception as err:  # a failing cell is recorded and the caller goes on
        reason = f"{type(err).__name__}: {err}"
        kind = failure_kind(err)
        tags = {"bb.failure_kind": kind, "bb.traceback": traceback.format_exc()[-4000:]}
        if kind == "undefined":
            tags["bb.control_undefined"] = "true"
        tracking.set_tags(run_id, tags)
        tracking.end_run(run_id, "FAILED", reason)
        return CellOutcome("failed", cell.hash, run_id, error=reason, failure_kind=kind,
                           seconds=time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous_threads)


def _dependency_runner(tracking: Tracking, parent_run_id: str | None, device: torch.device, show_progress: bool):
    def run_dependency(dependency: Cell) -> tuple[str, bool]:
        finished = tracking.finished_run(dependency.hash)
        if finished is not None:
            return finished.info.run_id, True
        outcome = run_cell(dependency, tracking, parent_run_id=parent_run_id, device=device,
                           show_progress=show_progress, wait=True)
        if outcome.status not in ("finished", "skipped") or outcome.run_id is None:
            raise CellError(f"its dependency {dependency.name} failed: {outcome.error}")
        return outcome.run_id, outcome.status == "skipped"

    return run_dependency


def _search_and_retrain(cell: Cell, tracking: Tracking, run_id: str, device: torch.device,
                        parent_run_id: str | None, show_progress: bool) -> dict[str, float]:
    bench = load_bench(cell)
    tags = {"bb.data_fingerprint": bench.fingerprint(), "bb.main_metrics": bench.main_metrics_tag()}
    if bench.groups is not None:
        tags["bb.groups"] = json.dumps(bench.groups, sort_keys=True)
    tracking.set_tags(run_id, tags)
    log_dataset_input(tracking, run_id, cell, bench, tags["bb.data_fingerprint"])
    progress = CellProgress(tracking.checkpoint_root / cell.hash)
    before = float(progress.load().get("search_seconds", 0.0))
    search_start = time.perf_counter()
    searching = True

    def record_search_time() -> None:
        if searching:
            progress.save(search_seconds=before + time.perf_counter() - search_start)

    ctx = MeteredContext(cell, bench, tracking, run_id, device,
                         _dependency_runner(tracking, parent_run_id, device, show_progress),
                         show_progress, on_checkpoint=record_search_time)

    # search (a resumed search continues from its checkpoints; its time adds to the earlier part's)
    seed_everything(cell.seed)
    method = cell.make_method()
    control_of = method.control_of()
    if control_of:
        tracking.set_tags(run_id, {"bb.control_of": control_of})
    result = method.search(bench, cell.budget, ctx)
    search_fits = list(ctx.fits)
    search_seconds = before + time.perf_counter() - search_start
    searching = False
    progress.save(search_seconds=search_seconds)
    plan = result.plan
    if not isinstance(plan, Plan):
        raise PlanError(f"method {cell.method!r} returned {type(plan).__name__}, not a Plan")
    plan.check_fits(bench.task_names, len(bench.backbone.blocks))
    if cell.budget_aware:
        cell.budget.check(plan, bench.backbone, cell.method)
    tracking.log_object(run_id, "plan.json", plan.to_dict())
    tracking.log_object(run_id, "plan.png", plan.draw(title=cell.name, groups=bench.groups))
    for name, obj in result.artifacts.items():
        tracking.log_object(run_id, f"search/{name}", obj)

    # retrain from scratch (or fine-tune, when asked), select on val
    if cell.finetune:
        if result.init_state is None:
            raise CellError(f"fine-tuning was asked for, but method {cell.method!r} returns no search weights")
        retrained = method.finetune(bench, plan, result.init_state, ctx, cell.seed)
    else:
        retrained = retrain(bench, plan, ctx.trainer("train"), cell.seed)
    metrics = dict(retrained.metrics)

    # costs
    backbone = bench.backbone
    metrics.update(
        {
            "params": plan.param_count(backbone),
            "params_total": plan.param_count(backbone, heads=bench.tasks),
            "budget_ratio": plan.budget_ratio(backbone),
            "flops": plan.flops(backbone, heads=bench.tasks),
            "search_seconds": search_seconds,
            "train_seconds": retrained.fit.seconds,
            "epochs_run": retrained.fit.epochs_run,
            "best_epoch": retrained.fit.best_epoch,
        }
    )
    metrics.update({f"search.{k}": float(v) for k, v in result.cost.items()})
    metrics.update(compute_metrics(search_fits, retrained.fit))
    metrics.update(reused_metrics(tracking, ctx, method))
    tracking.set_tags(run_id, {
        "bb.hit_epoch_cap": str(retrained.fit.still_improving).lower(),
        "bb.stopped": retrained.fit.stopped,
        "bb.search_hit_epoch_cap": str(any(f.still_improving for f in search_fits)).lower(),
    })
    example = bench.prepare(bench.splits["test"].x[:1]).to(device)
    amp = resolve_amp(bench.protocol.amp, device)
    metrics["latency_ms.b1"] = measure_latency(retrained.net, example, amp=amp)
    n_big = min(256, len(bench.splits["test"]))
    big = bench.prepare(bench.splits["test"].x[:n_big]).to(device)
    metrics["latency_ms.batch"] = measure_latency(retrained.net, big, repeats=5, amp=amp)
    metrics["latency_batch_size"] = n_big

    # Δm against the independent networks of the same data and seed
    if cell.method_kind == DELTA_M_REFERENCE:
        metrics["delta_m"] = 0.0
    else:
        reference = ctx.reference(DELTA_M_REFERENCE)
        test = {k[len("test.") :]: v for k, v in metrics.items() if k.startswith("test.")}
        metrics["delta_m"] = delta_m(bench.tasks, test, reference.metrics)
        metrics["reused_seconds" if reference.reused else "reference_seconds"] = reference.seconds
        tracking.set_tags(run_id, {"bb.reference_run": reference.run_id or ""})
    truth = bench.true_partition()
    if truth is not None:
        metrics.update({f"grouping.{k}": v for k, v in grouping_scores(plan, truth).items()})
        feasible = method.feasible(bench, cell.budget)
        if feasible is not None:
            metrics["grouping.feasible"] = float(bool(feasible))
    metrics.update(main_metrics(bench.tasks, metrics))
    tracking.log_metrics(run_id, metrics)
    tracking.set_description(run_id, run_description(cell, bench, metrics, plan))
    tracking.log_state_dict(run_id, retrained.net.state_dict())
    return metrics


# ------------------------------------------------- what the MLflow UI shows
def log_dataset_input(tracking: Tracking, run_id: str, cell: Cell, bench: Benchmark, fingerprint: str) -> None:
    """The cell's data as an MLflow dataset input: its name, the digest of its options (the data key,
    which changes with every option and data seed) and its split sizes."""
    sizes = {name: len(split) for name, split in bench.splits.items()}
    tracking.log_dataset(
        run_id, cell.dataset, cell.data_key,
        source={"dataset": cell.dataset_kind, "options": cell.dataset_options},
        profile={"num_rows": sum(sizes.values()), "splits": sizes, "tasks": len(bench.tasks),
                 "data_fingerprint": fingerprint},
        context="+".join(sizes),
    )


def main_metrics(tasks: list[TaskSpec], metrics: dict[str, float]) -> dict[str, float]:
    """The headline scores under names that are the same on every dataset.

    ``main.<task>``: the task's main test metric (the first of its kind's, e.g.
    accuracy, mse, miou, error for CelebA); ``main.mean_<metric>``: their mean
    over the tasks that share a main metric, where two or more do (the report's
    "mean <metric>" column; metrics of different kinds are never averaged).
    """
    out: dict[str, float] = {}
    by_metric: dict[str, list[float]] = {}
    for task in tasks:
        value = metrics.get(f"test.{task.name}.{task.main_metric.name}")
        if value is not None:
            out[f"main.{task.name}"] = value
            by_metric.setdefault(task.main_metric.name, []).append(value)
    for name, values in by_metric.items():
        if len(values) >= 2:
            out[f"main.mean_{name}"] = sum(values) / len(values)
    return out


def run_description(cell: Cell, bench: Benchmark | None = None, metrics: dict[str, float] | None = None,
                    plan: Plan | None = None) -> str:
    """The run's description (Markdown): what ran, then, once it finished, the key result and the tree."""
    budget = "no budget cap" if cell.budget.ratio is None else f"budget {cell.budget.ratio:g}× shared-bottom's parameters"
    lines = [f"**{cell.method}** on **{cell.dataset}**: {budget}; training seed {cell.seed}, data seed {cell.data_seed}"
             + ("; fine-tuned from the search weights" if cell.finetune else "; retrained from scratch") + "."]
    if metrics is None or plan is None or bench is None:
        return lines[0] + "\n\nRunning (or stopped before its result); see the run's status."
    result = [f"Δm **{metrics['delta_m']:+.2f} %** vs independent networks"] if "delta_m" in metrics else []
    result += [f"{key[len('main.'):].replace('_', ' ')} {value:.4g}" for key, value in metrics.items()
               if key.startswith("main.mean_")]
    result.append(f"{metrics['budget_ratio']:.2f}× shared-bottom's parameters ({metrics['params']:,.0f})")
    if "grouping.recovered" in metrics:
        result.append("task groups recovered" if metrics["grouping.recovered"] else "task groups not recovered")
    lines += ["", "; ".join(result) + ".", "", "Tree (tasks that share an activation after each block):", ""]
    for level, block in enumerate(plan.blocks):
        groups = [("skip: " if key[-1] is None else "") + " ".join(tasks)
                  for key, tasks in plan.activations(level).items()]
        lines.append(f"- `{block}`: " + " | ".join(groups))
    return "\n".join(lines)


# ------------------------------------------------------------ compute
class MeteredContext(CellContext):
    """The cell's context, keeping the record of every fit run through its trainers (``fits``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fits: list[FitResult] = []

    def trainer(self, name: str, protocol=None):
        trainer = super().trainer(name, protocol)
        trainer.on_fit_end = self.fits.append
        return trainer


def compute_metrics(search_fits: list[FitResult], train_fit: FitResult) -> dict[str, float]:
    """Steps and training FLOPs of the search (all its fits) and of the retrain; per-task best epochs."""
    out = {
        "search.steps": float(sum(f.total_steps for f in search_fits)),
        "search.flops": float(sum(f.flops for f in search_fits)),
        "train.steps": float(train_fit.total_steps),
        "train.flops": train_fit.flops,
    }
    out.update({f"best_epoch.{task}": float(epoch) for task, epoch in train_fit.task_best_epochs.items()})
    out.update({f"train.steps.{task}": float(steps) for task, steps in train_fit.task_steps.items()})
    return out


def reused_metrics(tracking: Tracking, ctx: CellContext, method: Method) -> dict[str, float]:
    """The cost of the cells this method's search reads (its :meth:`Method.requires`): whole runs, summed."""
    out = {"reused.seconds": 0.0, "reused.flops": 0.0, "reused.steps": 0.0}
    for role in method.requires():
        reference = ctx.reference(role)
        data = tracking.get_run(reference.run_id).data.metrics if reference.run_id else {}
        out["reused.seconds"] += reference.seconds + data.get("reused.seconds", 0.0)
        for key in ("flops", "steps"):
            out[f"reused.{key}"] += sum(data.get(f"{part}.{key}", 0.0) for part in ("search", "train", "reused"))
    return out


def flat_params(resolved: dict[str, Any]) -> dict[str, Any]:
    """The resolved config as MLflow params (``dataset.<opt>``, ``method.<opt>``, ``protocol.<key>``)."""
    out: dict[str, Any] = {"budget": resolved["budget"], "seed": resolved["seed"], "finetune": resolved["finetune"]}
    out["dataset"] = resolved["dataset"]["name"]
    out["method"] = resolved["method"]["name"]
    for section in ("dataset", "method"):
        for key, value in resolved[section]["options"].items():
            out[f"{section}.{key}"] = value
    for key, value in resolved["protocol"].items():
        out[f"protocol.{key}"] = value
    return out


# -------------------------------------------------------------- evaluation
def evaluate_run(tracking: Tracking, run_id: str, split: str = "test", device: str | None = None) -> dict[str, float]:
    """Rebuild a finished cell run's network from its logged config, plan and weights and score it.

    Refuses (:class:`CellError`) a run that does not exist, did not finish, is
    not a cell run, or whose logged plan is invalid.
    """
    from branchbench.core.net import BranchedNet
    from branchbench.core.retrain import evaluate_net
    from branchbench.core.trainer import Trainer
    from branchbench.plugins import create_dataset

    try:
        run = tracking.get_run(run_id)
    except Exception:
        raise CellError(f"no run {run_id!r} in {tracking.uri}; give the id of a finished cell run "
                        "(the MLflow UI or `branchbench report` lists them)") from None
    if run.data.tags.get("bb.kind") != "cell":
        raise CellError(f"run {run_id} is not a branchbench cell run; give the id of a finished cell run")
    if run.info.status != "FINISHED":
        why = run.data.tags.get("bb.failure", "")
        raise CellError(f"run {run_id} is {run.info.status}{': ' + why if why else ''}; only a FINISHED cell "
                        "run has weights to evaluate")
    try:
        resolved = tracking.load_json(run_id, "config.json")
        plan_data = tracking.load_json(run_id, "plan.json")
    except Exception as err:
        raise CellError(f"run {run_id} lacks its config.json or plan.json ({err}); it cannot be rebuilt") from None
    try:
        plan = Plan.from_dict(plan_data)
    except (PlanError, ValueError, TypeError, KeyError) as err:
        raise CellError(f"run {run_id}: its plan.json is invalid ({err})") from None
    dataset = create_dataset(resolved["dataset"].get("kind", resolved["dataset"]["name"]),
                             **resolved["dataset"]["options"])
    bench = dataset.load()
    protocol = bench.protocol.replace(**resolved["protocol"])
    net = BranchedNet(plan, bench.backbone, bench.tasks)
    net.load_state_dict(tracking.load_state_dict(run_id))
    trainer = Trainer(protocol, device=device or default_device(), seed=resolved["seed"])
    return evaluate_net(trainer, net, bench, splits=(split,))
