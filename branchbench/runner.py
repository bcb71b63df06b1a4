"""Sweeps: every cell of a config and the cells they depend on, in dependency order, under one parent.

A sweep is planned entirely before anything runs (:func:`plan_sweep` resolves
every cell once, validating every option and data file), so bad input fails
at once and no run exists. Cells depend on other cells (the independent
networks for Δm and for Vandenhende's affinities, a learned plan for its
controls); the runner submits a cell to a local executor once every cell it
depends on has finished, and to Ray at once with its dependencies' futures (Ray
starts it when they are done); either way a cell whose dependency failed is
failed without running.

Resume is by cell hash (the MLflow tag ``bb.config_hash``): a cell with a
FINISHED run is skipped; an interrupted one continues from its checkpoint
(``run_cell`` reopens its run); a cell claimed by another process (on this
machine or, with a tracking server, on any) is waited for, so two sweeps on
one store finish every cell exactly once; deterministic
failures (divergence, plan, plugin) are not retried unless ``retry_failed``.
A failing cell is recorded and the sweep goes on; the exit status is the
number of failed cells (at most 125).

Two sweeps may share a parent run (the same cells): each registers a session
on it, ``sweep/outcomes.json`` is merged, not overwritten, and only the last
session to end closes the parent.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from branchbench.config import SweepConfig, cell_configs
from branchbench.console import SweepConsole, duration, emit
from branchbench.executors import Executor, ExecutorSettings, make_executor
from branchbench.resolve import Cell, Resolver, config_hash
from branchbench.tracking import Tracking

DETERMINISTIC_FAILURES = ("divergence", "plan", "plugin", "undefined")
UNDEFINED = "undefined"  # a control no permutation or policy can make (of shared-bottom, say): not a failure
MAX_EXIT = 125


@dataclass
class CellResult:
    cell: Cell
    status: str  # finished | skipped | failed
    run_id: str | None = None
    error: str | None = None
    failure_kind: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class SweepResult:
    parent_run_id: str
    results: list[CellResult] = field(default_factory=list)

    @property
    def failed(self) -> list[CellResult]:
        """Cells that failed (an undefined control is recorded FAILED but is not counted)."""
        return [r for r in self.results if r.status == "failed" and r.failure_kind != UNDEFINED]

    @property
    def exit_status(self) -> int:
        return min(len(self.failed), MAX_EXIT)


# ------------------------------------------------------------------ planning
def plan_sweep(cfg: SweepConfig, resolver: Resolver | None = None) -> list[Cell]:
    """Every cell of the sweep and every cell they depend on, dependencies first, each once."""
    resolver = resolver or Resolver()
    ordered: dict[str, Cell] = {}

    def add(cell: Cell) -> None:
        for _, dependency in cell.needs:
            add(dependency)
        ordered.setdefault(cell.hash, cell)

    for config in cell_configs(cfg):
        add(resolver.resolve(config))
    return list(ordered.values())


def sweep_hash(cells: list[Cell]) -> str:
    """The sweep's identity: the set of its cells."""
    return config_hash({"cells": sorted(c.hash for c in cells)})


def prepare_data(cells: list[Cell], out: Callable[[str], None] = emit) -> None:
    """Each data key's one-time preparation (e.g. decoding images into a cache), before any run."""
    from tqdm.auto import tqdm

    seen: set[str] = set()
    for cell in cells:
        if cell.data_key in seen:
            continue
        seen.add(cell.data_key)
        cell.make_dataset().prepare(lambda total, desc: tqdm(total=total, desc=desc, leave=False))


# -------------------------------------------------------------------- state
STATE_RANK = {"FINISHED": 0, "FAILED": 1, "RUNNING": 2, "SCHEDULED": 2, "KILLED": 3}
STATE_NAMES = {"FINISHED": "done", "FAILED": "failed", "RUNNING": "running", "SCHEDULED": "running",
               "KILLED": "interrupted"}


def cell_states(tracking: Tracking) -> dict[str, dict[str, Any]]:
    """config hash -> {"state", "status", "run_id", "kind", "reason", "seconds", "metrics"}.

    One query for the whole experiment; the most telling run of each cell wins
    (a FINISHED run over a FAILED one over anything else).
    """
    frame = tracking.search("tags.`bb.kind` = 'cell'")
    out: dict[str, dict[str, Any]] = {}
    for row in frame.to_dict("records"):
        key = row.get("tags.bb.config_hash")
        if not isinstance(key, str):
            continue
        status = row["status"]
        best = out.get(key)
        if best is not None and STATE_RANK[best["status"]] <= STATE_RANK.get(status, 9):
            continue
        seconds = sum(v for k in ("metrics.search_seconds", "metrics.train_seconds")
                      if isinstance(v := row.get(k), float) and v == v)
        metrics = {k[len("metrics."):]: v for k, v in row.items() if k.startswith("metrics.") and v == v}
        out[key] = {"status": status, "state": STATE_NAMES.get(status, status.lower()), "run_id": row["run_id"],
                    "kind": row.get("tags.bb.failure_kind"), "reason": row.get("tags.bb.failure"),
                    "seconds": seconds, "metrics": metrics, "method_kind": row.get("tags.bb.method_kind"),
                    "dataset_kind": row.get("tags.bb.dataset_kind")}
    return out


def _is_kept_failure(info: dict[str, Any] | None, retry_failed: bool) -> bool:
    return (info is not None and info["state"] == "failed" and info["kind"] in DETERMINISTIC_FAILURES
            and not retry_failed)


def dry_run(cfg: SweepConfig, tracking: Tracking, retry_failed: bool = False, workers: int = 1,
            out: Callable[[str], None] = emit, cells: list[Cell] | None = None) -> list[tuple[Cell, str]]:
    """Each planned cell with its state, and the projected time of the pending ones."""
    cells = cells if cells is not None else plan_sweep(cfg)
    states = cell_states(tracking)
    listing = []
    for cell in cells:
        info = states.get(cell.hash)
        if info is None:
            state = "pending"
        elif info["state"] == "done":
            state = "done"
        elif info["state"] == "failed":
            kept = _is_kept_failure(info, retry_failed)
            state = f"failed ({info['kind']}: {info['reason']}){'' if kept else ' -> will retry'}"
        else:
            state = f"pending ({info['state']} run {info['run_id']} resumes from its checkpoint)"
        listing.append((cell, state))
        out(f"{cell.name:<48} {cell.hash}  {state}")
    counts: dict[str, int] = {}
    for _, state in listing:
        counts[state.split(" ")[0]] = counts.get(state.split(" ")[0], 0) + 1
    out("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    pending = [cell for cell, state in listing if state.startswith("pending") or "will retry" in state]
    out(projected_time(pending, states, workers))
    return listing


def projected_time(pending: list[Cell], states: dict[str, dict[str, Any]], workers: int) -> str:
    """Projected wall time of ``pending`` cells from finished runs of the same method and dataset kinds."""
    if not pending:
        return "projected time: nothing to run"
    seen: dict[tuple[str, str], list[float]] = {}
    for info in states.values():
        if info["state"] == "done" and info["seconds"] > 0:
            seen.setdefault((info["method_kind"], info["dataset_kind"]), []).append(info["seconds"])
    known = [sum(seen[key]) / len(seen[key]) for c in pending if (key := (c.method_kind, c.dataset_kind)) in seen]
    unknown = len(pending) - len(known)
    if not known:
        return f"projected time: unknown ({len(pending)} pending cells; the store has no finished run of their methods)"
    total = sum(known) / max(1, workers)
    tail = f"; {unknown} cells of methods never run here are not counted" if unknown else ""
    return (f"projected time: about {duration(total)} for {len(pending)} pending cells with {workers} "
            f"worker(s), from finished runs of the same methods{tail}")


# ---------------------------------------------------------------- execution
@dataclass(frozen=True)
class Job:
    """What a worker needs to run one cell (on this machine or another)."""

    cell: Cell
    uri: str
    experiment: str
    parent_run_id: str
    device: str | None
    checkpoint_dir: str | None = None


_TRACKING: dict[tuple[str, str, str | None], Tracking] = {}


def _tracking(uri: str, experiment: str, checkpoint_dir: str | None = None) -> Tracking:
    """One Tracking per worker process (the store takes a moment to open)."""
    key = (uri, experiment, checkpoint_dir)
    if key not in _TRACKING:
        _TRACKING[key] = Tracking(uri, experiment, checkpoint_dir)
    return _TRACKING[key]


SHOWN_METRICS = ("delta_m",)


def execute_job(job: Job, *dependencies: CellResult) -> CellResult:
    """Run one cell (waiting out another process that holds it); never raises for a failing cell.

    ``dependencies`` are the results of the cells it depends on when the
    executor orders them (Ray); a failed one fails this cell without running.
    """
    broken = next((d for d in dependencies if d.status == "failed"), None)
    if broken is not None:
        return CellResult(job.cell, "failed", None, f"its dependency {broken.cell.name} failed", "dependency")
    from branchbench.cell import run_cell

    _pin(job.device)
    tracking = _tracking(job.uri, job.experiment, job.checkpoint_dir)
    start = time.perf_counter()
    try:
        outcome = run_cell(job.cell, tracking, parent_run_id=job.parent_run_id, device=job.device, wait=True)
    except Exception as err:  # a cell that cannot even start must not stop the sweep
        return CellResult(job.cell, "failed", None, f"{type(err).__name__}: {err}", "error",
                          seconds=time.perf_counter() - start)
    shown = {k: v for k, v in outcome.metrics.items() if k in SHOWN_METRICS or k.startswith("test.")}
    return CellResult(job.cell, outcome.status, outcome.run_id, outcome.error, outcome.failure_kind, shown,
                      time.perf_counter() - start)


def _pin(device: str | None) -> None:
    """Make a worker's GPU its current CUDA device, so nothing it runs lands on another cell's GPU."""
    if device is not None and device.startswith("cuda:"):
        import torch

        torch.cuda.set_device(torch.device(device))


# ------------------------------------------------------------- the parent run
@dataclass(frozen=True)
class Session:
    """One sweep process working on a parent run (two sweeps of the same cells share the parent)."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)

    @property
    def tag(self) -> str:
        return f"bb.session.{self.id}"

    def value(self, state: str) -> str:
        return json.dumps({"host": self.host, "pid": self.pid, "state": state, "time": time.time()})


def _session_alive(value: str) -> bool:
    """A running session on this host whose process exists (another host's is assumed alive)."""
    try:
        info = json.loads(value)
    except ValueError:
        return False
    if info.get("state") != "running":
        return False
    if info.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(info["pid"]), 0)
    except (ProcessLookupError, ValueError, KeyError):
        return False
    except PermissionError:
        return True
    return True


def _parent_lock(tracking: Tracking, key: str):
    return tracking.holding(f"sweep-{key}")


def open_parent(tracking: Tracking, cfg: SweepConfig, cells: list[Cell], session: Session) -> str:
    """The sweep's parent run: this sweep's existing one (reopened), else a new one; registers the session."""
    from branchbench.provenance import environment_tags

    key = sweep_hash(cells)
    with _parent_lock(tracking, key):
        found = tracking.runs(f"tags.`bb.kind` = 'sweep' and tags.`bb.sweep` = '{key}'")
        if found:
            run_id = found[0].info.run_id
            if found[0].info.status != "RUNNING":
                tracking.reopen_run(run_id)
        else:
            from branchbench.cell import default_device

            tags = {"bb.kind": "sweep", "bb.sweep": key, "bb.sweep_name": cfg.name, "bb.purpose": cfg.purpose,
                    "bb.config_source": os.path.basename(cfg.source), **environment_tags(default_device())}
            run_id = tracking.start_run(f"sweep-{cfg.name}", tags)
            tracking.log_params(run_id, {"seeds": cfg.seeds, "data_seeds": cfg.data_seeds, "budgets": cfg.budgets,
                                         "datasets": sorted(cfg.datasets), "methods": sorted(cfg.methods),
                                         "finetune": cfg.finetune})
            tracking.log_object(run_id, "sweep/config.json", cfg.raw)
            tracking.log_object(run_id, "sweep/cells.json", [c.describe() for c in cells])
        tracking.set_tags(run_id, {session.tag: session.value("running")})
        return run_id


def close_parent(tracking: Tracking, parent: str, cells: list[Cell], session: Session,
                 results: list[CellResult], interrupted: bool) -> None:
    """Merge this session's outcomes into ``sweep/outcomes.json``; the last session to end closes the parent."""
    key = sweep_hash(cells)
    with _parent_lock(tracking, key):
        merged = _merged_outcomes(tracking, parent, results)
        tracking.log_object(parent, "sweep/outcomes.json", list(merged.values()))
        tracking.set_tags(parent, {session.tag: session.value("interrupted" if interrupted else "done")})
        tags = tracking.get_run(parent).data.tags
        others = [k for k, v in tags.items() if k.startswith("bb.session.") and k != session.tag and _session_alive(v)]
        if others:
            return
        failed = sum(o["status"] == "failed" and o.get("failure_kind") != UNDEFINED for o in merged.values())
        tracking.log_metrics(parent, {"cells": len(cells), "cells_failed": failed,
                                      "cells_done": sum(o["status"] in ("finished", "skipped")
                                                        for o in merged.values())})
        if interrupted:
            tracking.end_run(parent, "KILLED", "interrupted; run the sweep again to resume")
        elif failed:
            tracking.end_run(parent, "FAILED", f"{failed} of {len(cells)} cells failed")
        else:
            tracking.end_run(parent, "FINISHED")


def _merged_outcomes(tracking: Tracking, parent: str, results: list[CellResult]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    if "sweep/outcomes.json" in tracking.artifact_names(parent, "sweep"):
        merged = {o["hash"]: o for o in tracking.load_json(parent, "sweep/outcomes.json")}
    for r in results:
        entry = {**r.cell.describe(), "status": r.status, "run_id": r.run_id, "error": r.error,
                 "failure_kind": r.failure_kind}
        old = merged.get(r.cell.hash)
        if old is not None and old["status"] == "finished" and r.status == "skipped":
            continue  # the other session ran it; keep its record
        merged[r.cell.hash] = entry
    return merged


# ------------------------------------------------------------------ the sweep
def run_sweep(
    cfg: SweepConfig,
    tracking: Tracking,
    *,
    workers: int | None = None,
    executor: str | Executor = "local",
    address: str | None = None,
    retry_failed: bool = False,
    device: str | None = None,
    quiet: bool = False,
    out: Callable[[str], None] = emit,
    cells: list[Cell] | None = None,
) -> SweepResult:
    """Run every cell in dependency order and record them under one parent run.

    ``executor`` is ``"local"`` (in this process, or ``workers`` processes;
    on CUDA one per GPU by default), ``"ray"``, or an executor object.
    ``cells`` are the planned cells when the caller planned them already (the
    CLI does, to refuse bad input first). Checkpoints go to
    ``tracking.checkpoint_root``.
    """
    cells = cells if cells is not None else plan_sweep(cfg)
    if isinstance(executor, str):
        pool = make_executor(ExecutorSettings(executor, workers, address=address), device=device)
    else:
        pool = executor
    session = Session()
    parent = open_parent(tracking, cfg, cells, session)
    result = SweepResult(parent)
    console = SweepConsole(cells, pool.slots, quiet=quiet, out=out)
    if not quiet:
        out(f"sweep {cfg.name}: {len(cells)} cells, parent run {parent} in {tracking.label}")
    interrupted = False
    try:
        _schedule(cells, pool, tracking, parent, device, retry_failed, result, console)
    except KeyboardInterrupt:
        interrupted = True
        pool.close(interrupted=True)
        raise
    finally:
        pool.close()
        console.summary(interrupted)
        close_parent(tracking, parent, cells, session, result.results, interrupted)
    return result


def _schedule(cells: list[Cell], pool: Executor, tracking: Tracking, parent: str, device: str | None,
              retry_failed: bool, result: SweepResult, console: SweepConsole) -> None:
    """Submit each cell once its dependencies finished (or with them, to an executor that orders them).

    A cell is failed unrun when one of its dependencies failed. ``device`` is
    the device asked for; the executor says which one each cell is sent to.
    """
    states = cell_states(tracking)
    outcome: dict[str, str] = {}  # hash -> finished | skipped | failed
    position = {cell.hash: i for i, cell in enumerate(cells)}
    checkpoint_dir = str(tracking.checkpoint_dir) if tracking.checkpoint_dir is not None else None

    def record(item: CellResult, detail: str = "") -> None:
        outcome[item.cell.hash] = item.status
        result.results.append(item)
        if item.status == "failed" and not detail:
            detail = f"{item.failure_kind}: {item.error}"
        console.ended(item.cell, item.status, item.metrics, item.seconds, detail)

    pending: list[Cell] = []
    for cell in cells:
        info = states.get(cell.hash)
        if info is not None and info["state"] == "done":
            metrics = {k: v for k, v in info["metrics"].items() if k in SHOWN_METRICS}
            record(CellResult(cell, "skipped", info["run_id"], metrics=metrics), "finished earlier")
        elif _is_kept_failure(info, retry_failed):
            record(CellResult(cell, "failed", info["run_id"], info["reason"], info["kind"]),
                   f"failed earlier, {info['kind']}: {info['reason']}; --retry-failed reruns it")
        else:
            pending.append(cell)
    running: dict[Any, tuple[Cell, str | None]] = {}
    submitted: dict[str, Any] = {}  # hash -> future of each running cell
    while pending or running:
        queued = 0
        for cell in list(pending):
            deps = [dep for _, dep in cell.needs]
            broken = next((dep for dep in deps if outcome.get(dep.hash) == "failed"), None)
            if broken is not None:
                pending.remove(cell)
                record(CellResult(cell, "failed", None, f"its dependency {broken.name} failed", "dependency"))
                continue
            waiting = [dep for dep in deps if outcome.get(dep.hash) not in ("finished", "skipped")]
            if pool.orders_dependencies:
                ready = all(dep.hash in submitted for dep in waiting)
            else:
                ready = not waiting and len(running) < pool.slots
            if not ready:
                continue
            pending.remove(cell)
            if pool.orders_dependencies:
                queued += 1
            else:
                console.started(cell)
            on = pool.take_device()
            job = Job(cell, tracking.uri, tracking.experiment_name, parent, device if on is None else on,
                      checkpoint_dir)
            future = pool.submit(execute_job, job, after=[submitted[dep.hash] for dep in waiting],
                                 threads=cell.protocol.threads)
            running[future] = (cell, on)
            submitted[cell.hash] = future
        if queued and not console.quiet:
            console.out(f"queued {queued} cells; each starts when the cells it depends on are done "
                        f"(about {pool.slots} at once)")
        if not running:
            if pending:  # cannot happen: dependencies are planned before the cells that need them
                raise RuntimeError(f"cells wait on dependencies outside the sweep: {[c.name for c in pending]}")
            break
        done = sorted(pool.wait(list(running)), key=lambda f: position[running[f][0].hash])
        for future in done:
            cell, on = running.pop(future)
            submitted.pop(cell.hash)
            pool.give_device(on)
            record(_collect(pool, future, cell, outcome))


def _collect(pool: Executor, future: Any, cell: Cell, outcome: dict[str, str]) -> CellResult:
    """A finished future's result; an executor's own failure (a Ray node lost past its retries) fails the cell."""
    try:
        return pool.result(future)
    except Exception as err:
        broken = next((dep for _, dep in cell.needs if outcome.get(dep.hash) == "failed"), None)
        if broken is not None:
            return CellResult(cell, "failed", None, f"its dependency {broken.name} failed", "dependency")
        first = (str(err).strip().splitlines() or [""])[0]
        return CellResult(cell, "failed", None, f"{type(err).__name__}: {first}"[:2000], "error")
