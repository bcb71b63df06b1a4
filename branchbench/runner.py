"""Sweeps: every cell of datasets x methods x budgets x seeds, resumable, under one MLflow parent.

A sweep is planned entirely before anything runs, so a bad config, dataset or
option fails at once. Methods that are not budget-aware run once per seed
(budget ``none``). The independent networks of each (dataset, seed) run first:
every other cell's Δm (and Vandenhende's single-task networks) reuse them.

Resume is by config hash (the MLflow tag ``bb.config_hash``): a cell with a
FINISHED run is skipped; an interrupted one restarts from its checkpoint
(``run_cell`` marks the stale run KILLED); a cell held by another process
(``busy``) is waited for and checked again, so two sweeps on one store finish
every cell exactly once; deterministic failures (divergence, plan, plugin)
are not retried unless ``--retry-failed``. A failing cell is recorded and the
sweep goes on; the exit status is the number of failed cells (at most 125).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from branchbench.cell import CellConfig, config_hash, resolve, run_cell
from branchbench.config import SweepConfig, load_config
from branchbench.executors import Executor, make_executor
from branchbench.tracking import DEFAULT_EXPERIMENT, Tracking

DETERMINISTIC_FAILURES = ("divergence", "plan", "plugin")
REFERENCE = "independent"
MAX_EXIT = 125


@dataclass(frozen=True)
class SweepCell:
    """One planned cell: plain data, so it pickles to a worker process."""

    config: CellConfig
    hash: str
    name: str
    role: str  # "reference" (scheduled first) or "cell"

    @property
    def group(self) -> tuple[str, int]:
        return (self.config.dataset, self.config.seed)

    def describe(self) -> dict[str, Any]:
        cfg = self.config
        return {"hash": self.hash, "name": self.name, "role": self.role, "dataset": cfg.dataset,
                "method": cfg.method, "budget": cfg.budget, "seed": cfg.seed,
                "dataset_options": cfg.dataset_options}


@dataclass
class CellResult:
    cell: SweepCell
    status: str  # finished | skipped | failed
    run_id: str | None = None
    error: str | None = None
    failure_kind: str | None = None


@dataclass
class SweepResult:
    parent_run_id: str
    results: list[CellResult] = field(default_factory=list)

    @property
    def failed(self) -> list[CellResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def exit_status(self) -> int:
        return min(len(self.failed), MAX_EXIT)


# ------------------------------------------------------------------ planning
def plan_sweep(cfg: SweepConfig) -> list[SweepCell]:
    """Every cell of the sweep, references first, deduplicated by config hash.

    Resolving each cell here validates every dataset and method option before
    any run starts.
    """
    cells: dict[str, SweepCell] = {}

    def add(config: CellConfig, role: str) -> None:
        cell = resolve(config)
        cells.setdefault(cell.hash, SweepCell(config, cell.hash, cell.name, role))

    for dataset, data_opts in cfg.datasets.items():
        for seed in cfg.seeds:
            add(CellConfig(dataset, REFERENCE, dict(data_opts), {}, None, seed, dict(cfg.protocol)), "reference")
    for dataset, data_opts in cfg.datasets.items():
        for seed in cfg.seeds:
            for method, method_opts in cfg.methods.items():
                for budget in _budgets(method, cfg.budgets):
                    config = CellConfig(dataset, method, dict(data_opts), dict(method_opts), budget, seed,
                                        dict(cfg.protocol), cfg.finetune)
                    add(config, "cell")
    return list(cells.values())


def _budgets(method: str, budgets: list[float | None]) -> list[float | None]:
    from branchbench.plugins import get_method_class

    return list(budgets) if get_method_class(method).budget_aware else [None]


def sweep_hash(cells: list[SweepCell]) -> str:
    """The sweep's identity: the set of its cells."""
    return config_hash({"cells": sorted(c.hash for c in cells)})


# -------------------------------------------------------------------- state
def cell_states(tracking: Tracking) -> dict[str, dict[str, Any]]:
    """config hash -> {"state": done|failed|running|interrupted, "run_id", "kind", "reason"}.

    One query for the whole experiment; the most telling run of each cell wins
    (a FINISHED run over a FAILED one over anything else).
    """
    frame = tracking.search("tags.`bb.kind` = 'cell'")
    rank = {"FINISHED": 0, "FAILED": 1, "RUNNING": 2, "SCHEDULED": 2, "KILLED": 3}
    names = {"FINISHED": "done", "FAILED": "failed", "RUNNING": "running", "SCHEDULED": "running",
             "KILLED": "interrupted"}
    out: dict[str, dict[str, Any]] = {}
    for row in frame.to_dict("records"):
        key = row.get("tags.bb.config_hash")
        if not isinstance(key, str):
            continue
        status = row["status"]
        best = out.get(key)
        if best is not None and rank[best["status"]] <= rank.get(status, 9):
            continue
        out[key] = {"status": status, "state": names.get(status, status.lower()), "run_id": row["run_id"],
                    "kind": row.get("tags.bb.failure_kind"), "reason": row.get("tags.bb.failure")}
    return out


def dry_run(cfg: SweepConfig, tracking: Tracking, retry_failed: bool = False,
            out: Callable[[str], None] = print) -> list[tuple[SweepCell, str]]:
    """Each planned cell with its state: done, failed (and whether a rerun retries it), pending."""
    states = cell_states(tracking)
    listing = []
    for cell in plan_sweep(cfg):
        info = states.get(cell.hash)
        if info is None:
            state = "pending"
        elif info["state"] == "done":
            state = "done"
        elif info["state"] == "failed":
            kept = info["kind"] in DETERMINISTIC_FAILURES and not retry_failed
            state = f"failed ({info['kind']}: {info['reason']}){'' if kept else ' -> will retry'}"
        else:
            state = f"pending ({info['state']} run {info['run_id']} resumes from its checkpoint)"
        listing.append((cell, state))
        out(f"{cell.name:<48} {cell.hash}  {state}")
    counts: dict[str, int] = {}
    for _, state in listing:
        counts[state.split(" ")[0]] = counts.get(state.split(" ")[0], 0) + 1
    out("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return listing


# ---------------------------------------------------------------- execution
@dataclass(frozen=True)
class Job:
    """What a worker needs to run one cell."""

    cell: SweepCell
    uri: str
    experiment: str
    parent_run_id: str
    retry_failed: bool
    device: str | None


_TRACKING: dict[tuple[str, str], Tracking] = {}


def _tracking(uri: str, experiment: str) -> Tracking:
    """One Tracking per worker process (the store takes a moment to open)."""
    key = (uri, experiment)
    if key not in _TRACKING:
        _TRACKING[key] = Tracking(uri, experiment)
    return _TRACKING[key]


def execute_job(job: Job) -> CellResult:
    """Run one cell unless it is done or failed for good; wait out another process holding it."""
    tracking = _tracking(job.uri, job.experiment)
    cell = job.cell
    while True:
        previous = _previous_failure(tracking, cell.hash)
        if previous is not None and not job.retry_failed:
            return CellResult(cell, "failed", previous.info.run_id, previous.data.tags.get("bb.failure"),
                              previous.data.tags.get("bb.failure_kind"))
        try:
            outcome = run_cell(cell.config, tracking, parent_run_id=job.parent_run_id, device=job.device)
        except Exception as err:  # a cell that cannot even start must not stop the sweep
            return CellResult(cell, "failed", None, f"{type(err).__name__}: {err}", "error")
        if outcome.status != "busy":
            return CellResult(cell, outcome.status, outcome.run_id, outcome.error, outcome.failure_kind)
        _wait_for_lock(tracking.checkpoint_root / f"{cell.hash}.lock")


def _previous_failure(tracking: Tracking, key: str):
    """The newest deterministic failure of a cell that has no FINISHED run, else None."""
    runs = tracking.runs_of_cell(key)
    if any(r.info.status == "FINISHED" for r in runs):
        return None
    for run in runs:
        if run.info.status == "FAILED" and run.data.tags.get("bb.failure_kind") in DETERMINISTIC_FAILURES:
            return run
    return None


def _wait_for_lock(path: Path) -> None:
    """Block until the process running a cell releases its lock (run_cell's lock file)."""
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _sweep_lock(tracking: Tracking, key: str) -> Iterator[None]:
    """Serialises finding-or-creating the parent run, so racing sweeps share one."""
    path = tracking.checkpoint_root / f"sweep-{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_parent(tracking: Tracking, cfg: SweepConfig, cells: list[SweepCell]) -> str:
    """The sweep's parent run: the existing one of this sweep (resume), else a new one."""
    key = sweep_hash(cells)
    with _sweep_lock(tracking, key):
        found = tracking.runs(f"tags.`bb.kind` = 'sweep' and tags.`bb.sweep` = '{key}'")
        if found:
            return found[0].info.run_id
        from branchbench.cell import _default_device, environment_tags

        tags = {"bb.kind": "sweep", "bb.sweep": key, "bb.sweep_name": cfg.name,
                "bb.config_source": cfg.source, **environment_tags(_default_device())}
        run_id = tracking.start_run(f"sweep-{cfg.name}", tags)
        tracking.log_params(run_id, {"seeds": cfg.seeds, "budgets": cfg.budgets, "datasets": sorted(cfg.datasets),
                                     "methods": sorted(cfg.methods), "finetune": cfg.finetune})
        tracking.log_object(run_id, "sweep/config.json", cfg.raw)
        tracking.log_object(run_id, "sweep/cells.json", [c.describe() for c in cells])
        return run_id


def run_sweep(
    cfg: SweepConfig,
    tracking: Tracking,
    *,
    workers: int = 1,
    executor: str | Executor = "local",
    address: str | None = None,
    retry_failed: bool = False,
    device: str | None = None,
    out: Callable[[str], None] = print,
) -> SweepResult:
    """Run every cell (references first) and record them under one parent run.

    ``executor`` is ``"local"`` (in this process, or ``workers`` processes),
    ``"ray"``, or an executor object.
    """
    cells = plan_sweep(cfg)
    pool = make_executor(executor, workers, address) if isinstance(executor, str) else executor
    parent = open_parent(tracking, cfg, cells)
    result = SweepResult(parent)
    out(f"sweep {cfg.name}: {len(cells)} cells, parent run {parent} in {tracking.uri}")

    def jobs(wave: list[SweepCell]) -> list[Job]:
        return [Job(c, tracking.uri, tracking.experiment_name, parent, retry_failed, device) for c in wave]

    def record(item: CellResult) -> None:
        result.results.append(item)
        detail = f" ({item.failure_kind}: {item.error})" if item.status == "failed" else ""
        out(f"[{len(result.results)}/{len(cells)}] {item.cell.name}: {item.status}{detail}")

    try:
        _run_waves(cells, pool, jobs, record, result)
    except KeyboardInterrupt:
        tracking.end_run(parent, "KILLED", "interrupted by the user; run the sweep again to resume")
        raise
    finally:
        pool.close()

    failed = result.failed
    tracking.log_metrics(parent, {"cells": len(cells), "cells_failed": len(failed)})
    tracking.log_object(parent, "sweep/outcomes.json",
                        [{**r.cell.describe(), "status": r.status, "run_id": r.run_id, "error": r.error,
                          "failure_kind": r.failure_kind} for r in result.results])
    reason = f"{len(failed)} of {len(cells)} cells failed" if failed else None
    tracking.end_run(parent, "FAILED" if failed else "FINISHED", reason)
    return result


def _run_waves(cells, pool, jobs, record, result) -> None:
    """References first; a cell whose reference failed is failed without running."""
    for item in pool.map_unordered(execute_job, jobs([c for c in cells if c.role == "reference"])):
        record(item)
    broken = {r.cell.group: r for r in result.results if r.status == "failed"}
    runnable = []
    for cell in (c for c in cells if c.role == "cell"):
        if cell.group in broken:
            record(CellResult(cell, "failed", None, f"its {REFERENCE} reference failed: {broken[cell.group].error}",
                              "reference"))
        else:
            runnable.append(cell)
    for item in pool.map_unordered(execute_job, jobs(runnable)):
        record(item)


# ---------------------------------------------------------------------- CLI
def add_commands(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register ``sweep``, ``report`` and ``ui`` on the ``branchbench`` parser."""
    sweep = sub.add_parser("sweep", help="run every cell of a config under one MLflow parent run, then report")
    sweep.add_argument("config", help="a protocol TOML file (see configs/)")
    sweep.add_argument("--workers", type=int, default=1, help="cells run at once (default 1: in this process)")
    sweep.add_argument("--executor", default="local", choices=["local", "ray"],
                       help="local processes, or Ray (optional extra: pip install 'branchbench[ray]')")
    sweep.add_argument("--ray-address", default=None, help="address of an existing Ray cluster")
    sweep.add_argument("--dry-run", action="store_true", help="list each cell as done / failed / pending, run nothing")
    sweep.add_argument("--retry-failed", action="store_true", help="also rerun cells that failed deterministically")
    sweep.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    sweep.add_argument("--reports-dir", default="reports", help="where reports/<dataset>/ go (default: %(default)s)")
    sweep.add_argument("--no-report", action="store_true", help="skip the report at the end")
    common(sweep)
    sweep.set_defaults(handler=cmd_sweep)

    report = sub.add_parser("report", help="tables and figures of a sweep, from what MLflow holds")
    report.add_argument("--config", default=None, help="the sweep's TOML file (its cells are reported)")
    report.add_argument("--parent", default=None, help="a sweep's parent run id (instead of --config)")
    report.add_argument("--reports-dir", default="reports", help="where reports/<dataset>/ go (default: %(default)s)")
    report.add_argument("--no-log", action="store_true", help="do not log the report to the parent run")
    common(report)
    report.set_defaults(handler=cmd_report)

    ui = sub.add_parser("ui", help="open the MLflow UI on the same store (127.0.0.1)")
    ui.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default: %(default)s; 0 = any free port)")
    common(ui)
    ui.set_defaults(handler=cmd_ui)


def _experiment(args: argparse.Namespace, cfg: SweepConfig | None) -> str:
    if args.experiment == DEFAULT_EXPERIMENT and cfg is not None and cfg.experiment:
        return cfg.experiment
    return args.experiment


def cmd_sweep(args: argparse.Namespace) -> int:
    from branchbench.cli import UsageError
    from branchbench.executors import make_executor

    cfg = load_config(args.config)
    plan_sweep(cfg)  # validates every cell before the store is touched
    try:
        pool = None if args.dry_run else make_executor(args.executor, args.workers, args.ray_address)
    except (RuntimeError, ValueError) as err:
        raise UsageError(str(err)) from None
    tracking = Tracking(args.tracking_uri, _experiment(args, cfg))
    if pool is None:
        dry_run(cfg, tracking, args.retry_failed)
        return 0
    result = run_sweep(cfg, tracking, workers=args.workers, executor=pool, retry_failed=args.retry_failed,
                       device=args.device)
    if not args.no_report:
        _report(tracking, result.parent_run_id, args.reports_dir, log=True)
    for item in result.failed:
        print(f"FAILED {item.cell.name} ({item.failure_kind}): {item.error}", file=sys.stderr)
    done = sum(r.status in ("finished", "skipped") for r in result.results)
    print(f"sweep {cfg.name}: {done} done, {len(result.failed)} failed; parent run {result.parent_run_id}")
    return result.exit_status


def cmd_report(args: argparse.Namespace) -> int:
    from branchbench.cli import UsageError

    if (args.config is None) == (args.parent is None):
        raise UsageError("give exactly one of --config CONFIG or --parent RUN_ID")
    cfg = load_config(args.config) if args.config else None
    tracking = Tracking(args.tracking_uri, _experiment(args, cfg))
    parent = args.parent
    cells = None
    if cfg is not None:
        cells = plan_sweep(cfg)
        found = tracking.runs(f"tags.`bb.kind` = 'sweep' and tags.`bb.sweep` = '{sweep_hash(cells)}'")
        parent = found[0].info.run_id if found else None
    _report(tracking, parent, args.reports_dir, log=not args.no_log, cells=cells)
    return 0


def _report(tracking: Tracking, parent: str | None, reports_dir: str, log: bool,
            cells: list[SweepCell] | None = None) -> None:
    from branchbench.reports.build import build_reports

    described = [c.describe() for c in cells] if cells is not None else None
    written = build_reports(tracking, parent, Path(reports_dir), cells=described, log=log and parent is not None)
    for path in written:
        print(f"wrote {path}")


def cmd_ui(args: argparse.Namespace) -> int:
    from branchbench.cli import UsageError
    from branchbench.ui import UIError, serve

    try:
        return serve(args.tracking_uri, args.experiment, port=args.port)
    except UIError as err:
        raise UsageError(str(err)) from None
