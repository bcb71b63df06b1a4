"""One function executes a cell: resolve config -> search -> retrain -> evaluate -> log.

A *cell* is (dataset and its options, method and its options, budget, seed,
training protocol). ``branchbench run`` runs one; ``branchbench sweep`` runs
many; both call :func:`run_cell`. Its fully resolved config is hashed; the hash
is the cell's identity for resume and reuse (the MLflow tag
``bb.config_hash``). A cell runs under a file lock beside the store, so two
processes never run one cell at once; a cell whose process died restarts from
its last checkpoint, and a finished cell is skipped.

The plan a method returns is always retrained from scratch by the same code
(fine-tuning the search weights is opt-in, and tagged ``bb.finetuned``).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from branchbench.context import REFERENCE_PLANS, BaseContext
from branchbench.core.benchmark import Benchmark
from branchbench.core.budget import Budget, BudgetError
from branchbench.core.method import Method, Reference
from branchbench.core.metrics import delta_m, grouping_scores, measure_latency
from branchbench.core.plan import Plan, PlanError
from branchbench.core.retrain import retrain, seed_everything
from branchbench.core.trainer import DivergenceError, resolve_amp
from branchbench.datasets.base import Dataset
from branchbench.plugins import RegistryError, create_dataset, get_method_class
from branchbench.tracking import Tracking

CONFIG_VERSION = 1


class CellError(RuntimeError):
    """A cell that could not run; the message names the cause and the fix."""


@dataclass
class CellConfig:
    """What a user asks for; ``resolve`` fills in every default."""

    dataset: str
    method: str
    dataset_options: dict[str, Any] = field(default_factory=dict)
    method_options: dict[str, Any] = field(default_factory=dict)
    budget: float | None = None
    seed: int = 0
    protocol: dict[str, Any] = field(default_factory=dict)
    finetune: bool = False


@dataclass
class ResolvedCell:
    config: CellConfig
    dataset: Dataset
    method_cls: type[Method]
    resolved: dict[str, Any]
    hash: str
    data_key: str

    @property
    def name(self) -> str:
        budget = self.resolved["budget"]
        tail = "" if budget is None else f"-b{budget:g}"
        return f"{self.config.dataset}-{self.config.method}{tail}-s{self.config.seed}"


@dataclass
class CellOutcome:
    status: str  # "finished", "skipped", "failed", "busy"
    config_hash: str
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    failure_kind: str | None = None


def config_hash(resolved: Mapping[str, Any]) -> str:
    text = json.dumps(resolved, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def resolve(config: CellConfig) -> ResolvedCell:
    """Every default filled in, validated, hashed. Raises with a clear message on bad input."""
    dataset = create_dataset(config.dataset, **config.dataset_options)
    method_cls = get_method_class(config.method)
    method = method_cls(**config.method_options)  # validates the options now, not mid-run
    if "needs_groups" in method_cls.tags and not dataset.has_groups:
        raise CellError(
            f"method {config.method!r} needs data with a known task grouping; dataset "
            f"{config.dataset!r} has none. Choose a dataset with known groups (e.g. synthetic)."
        )
    try:
        protocol = dataset.protocol()
    except (OSError, ValueError, KeyError) as err:
        raise CellError(f"dataset {config.dataset!r} could not be loaded: {err}") from err
    try:
        protocol = protocol.replace(**config.protocol)
    except (ValueError, TypeError) as err:
        raise CellError(f"protocol: {err}") from err
    budget = config.budget if method_cls.budget_aware else None
    Budget(budget)  # validates
    data = {"name": config.dataset, "options": dataset.get_params()}
    resolved = {
        "version": CONFIG_VERSION,
        "dataset": data,
        "method": {"name": config.method, "options": method.get_params()},
        "budget": budget,
        "seed": config.seed,
        "protocol": protocol.to_dict(),
        "finetune": bool(config.finetune),
    }
    data_key = config_hash({"dataset": data, "protocol": protocol.to_dict()})
    return ResolvedCell(config, dataset, method_cls, resolved, config_hash(resolved), data_key)


# ------------------------------------------------------------------- context
class FileCheckpointer:
    """A checkpoint file written atomically (a killed process never leaves half a file)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=False)

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)


class CellContext(BaseContext):
    """The context of a cell: logs go to its MLflow run, checkpoints beside the store."""

    def __init__(
        self,
        cell: ResolvedCell,
        bench: Benchmark,
        tracking: Tracking,
        run_id: str,
        device: torch.device,
        parent_run_id: str | None,
        show_progress: bool,
    ) -> None:
        super().__init__(bench, cell.config.seed, device, show_progress)
        self.cell = cell
        self.tracking = tracking
        self.run_id = run_id
        self.parent_run_id = parent_run_id
        self.checkpoint_dir = tracking.checkpoint_root / cell.hash

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.tracking.log_metrics(self.run_id, metrics, step)

    def log_artifact(self, name: str, obj: Any) -> None:
        self.tracking.log_object(self.run_id, f"search/{name}", obj)

    def checkpointer(self, name: str) -> FileCheckpointer:
        return FileCheckpointer(self.checkpoint_dir / f"{name}.pt")

    def _make_reference(self, method: str) -> Reference:
        if method not in REFERENCE_PLANS:
            raise KeyError(f"no reference {method!r}; references are {sorted(REFERENCE_PLANS)}")
        found = self.tracking.runs(
            f"tags.`bb.method` = '{method}' and tags.`bb.data_key` = '{self.cell.data_key}' "
            f"and tags.`bb.seed` = '{self.seed}' and attributes.status = 'FINISHED'"
        )
        reused = bool(found)
        if not reused:
            ref_config = dataclasses.replace(self.cell.config, method=method, method_options={}, budget=None, finetune=False)
            outcome = run_cell(
                ref_config, self.tracking, parent_run_id=self.parent_run_id, device=self.device,
                bench=self.bench, show_progress=self.show_progress,
            )
            if outcome.status not in ("finished", "skipped") or outcome.run_id is None:
                raise CellError(f"the {method} reference run failed: {outcome.error}")
            run = self.tracking.get_run(outcome.run_id)
        else:
            run = found[0]
        data = run.data.metrics
        metrics = {k[len("test.") :]: v for k, v in data.items() if k.startswith("test.")}
        return Reference(
            method=method,
            run_id=run.info.run_id,
            plan=Plan.from_dict(self.tracking.load_json(run.info.run_id, "plan.json")),
            state_dict=self.tracking.load_state_dict(run.info.run_id),
            metrics=metrics,
            seconds=data.get("search_seconds", 0.0) + data.get("train_seconds", 0.0),
            reused=reused,
        )


# --------------------------------------------------------------- provenance
def code_version() -> tuple[str, bool]:
    """The git commit of the branchbench checkout and whether it has local changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout.strip()
        )
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        try:
            return f"branchbench-{metadata.version('branchbench')}", False
        except metadata.PackageNotFoundError:
            return "unknown", False


def environment_tags(device: torch.device) -> dict[str, str]:
    commit, dirty = code_version()
    tags = {
        "bb.code_version": commit,
        "bb.code_dirty": str(dirty).lower(),
        "bb.device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "bb.threads": str(torch.get_num_threads()),
        "bb.version.python": platform.python_version(),
    }
    for package in ("torch", "numpy", "scikit-learn", "mlflow", "pandas"):
        try:
            tags[f"bb.version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return tags


def flat_params(resolved: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"budget": resolved["budget"], "seed": resolved["seed"], "finetune": resolved["finetune"]}
    out["dataset"] = resolved["dataset"]["name"]
    out["method"] = resolved["method"]["name"]
    for section in ("dataset", "method"):
        for key, value in resolved[section]["options"].items():
            out[f"{section}.{key}"] = value
    for key, value in resolved["protocol"].items():
        out[f"protocol.{key}"] = value
    return out


def failure_kind(err: BaseException) -> str:
    """Deterministic failures (not retried by sweeps) versus other errors."""
    if isinstance(err, DivergenceError):
        return "divergence"
    if isinstance(err, PlanError | BudgetError):
        return "plan"
    if isinstance(err, RegistryError):
        return "plugin"
    return "error"


# ----------------------------------------------------------------- the cell
class _CellLock:
    """An exclusive, non-blocking lock on one cell (a file beside the store)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a+")  # noqa: SIM115 - held for the cell's lifetime

    def acquire(self) -> bool:
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def release(self) -> None:
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def run_cell(
    config: CellConfig | ResolvedCell,
    tracking: Tracking,
    *,
    parent_run_id: str | None = None,
    device: torch.device | str | None = None,
    force: bool = False,
    bench: Benchmark | None = None,
    show_progress: bool = False,
) -> CellOutcome:
    """Run one cell end to end and record it in MLflow; never raises for a failing cell.

    Returns ``skipped`` when a FINISHED run of the same config exists (unless
    ``force``), ``busy`` when another process holds the cell, ``failed`` (the
    run is marked FAILED with its reason in the tag ``bb.failure``) or
    ``finished``.
    """
    cell = config if isinstance(config, ResolvedCell) else resolve(config)
    device = torch.device(device) if device is not None else _default_device()
    lock = _CellLock(tracking.checkpoint_root / f"{cell.hash}.lock")
    if not lock.acquire():
        lock.file.close()
        return CellOutcome("busy", cell.hash, error="another process is running this cell")
    try:
        finished = tracking.finished_run(cell.hash)
        if finished is not None and not force:
            return CellOutcome("skipped", cell.hash, finished.info.run_id, dict(finished.data.metrics))
        for stale in tracking.runs_of_cell(cell.hash, statuses=["RUNNING", "SCHEDULED"]):
            tracking.end_run(stale.info.run_id, "KILLED", "superseded: its process ended without finishing")
        return _execute(cell, tracking, parent_run_id, device, bench, show_progress)
    finally:
        lock.release()


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _execute(cell, tracking, parent_run_id, device, bench, show_progress) -> CellOutcome:
    protocol_dict = cell.resolved["protocol"]
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(protocol_dict["threads"])
    cfg = cell.config
    tags = {
        "bb.kind": "cell",
        "bb.config_hash": cell.hash,
        "bb.data_key": cell.data_key,
        "bb.dataset": cfg.dataset,
        "bb.method": cfg.method,
        "bb.budget": "none" if cell.resolved["budget"] is None else f"{cell.resolved['budget']:g}",
        "bb.budget_aware": str(cell.method_cls.budget_aware).lower(),
        "bb.seed": str(cfg.seed),
        "bb.finetuned": str(bool(cfg.finetune)).lower(),
        **environment_tags(device),
    }
    run_id = tracking.start_run(cell.name, tags, parent_run_id)
    try:
        tracking.log_params(run_id, flat_params(cell.resolved))
        tracking.log_object(run_id, "config.json", cell.resolved)
        metrics = _search_and_retrain(cell, tracking, run_id, device, parent_run_id, bench, show_progress)
        tracking.end_run(run_id, "FINISHED")
        shutil.rmtree(tracking.checkpoint_root / cell.hash, ignore_errors=True)
        return CellOutcome("finished", cell.hash, run_id, metrics)
    except KeyboardInterrupt:
        tracking.end_run(run_id, "KILLED", "interrupted by the user")
        raise
    except Exception as err:  # a failing cell is recorded and the caller goes on
        reason = f"{type(err).__name__}: {err}"
        kind = failure_kind(err)
        tracking.set_tags(run_id, {"bb.failure_kind": kind, "bb.traceback": traceback.format_exc()[-4000:]})
        tracking.end_run(run_id, "FAILED", reason)
        return CellOutcome("failed", cell.hash, run_id, error=reason, failure_kind=kind)
    finally:
        torch.set_num_threads(previous_threads)


def _search_and_retrain(cell, tracking, run_id, device, parent_run_id, bench, show_progress) -> dict[str, float]:
    cfg = cell.config
    if bench is None:
        bench = cell.dataset.load()
    bench = dataclasses.replace(bench, protocol=bench.protocol.replace(**cfg.protocol))
    tracking.set_tags(run_id, {"bb.data_fingerprint": bench.fingerprint()})
    ctx = CellContext(cell, bench, tracking, run_id, device, parent_run_id, show_progress)
    budget = Budget(cell.resolved["budget"])

    # search
    seed_everything(cfg.seed)
    method = cell.method_cls(**cfg.method_options)
    start = time.perf_counter()
    result = method.search(bench, budget, ctx)
    search_seconds = time.perf_counter() - start
    plan = result.plan
    if not isinstance(plan, Plan):
        raise PlanError(f"method {cfg.method!r} returned {type(plan).__name__}, not a Plan")
    plan.check_fits(bench.task_names, len(bench.backbone.blocks))
    if method.budget_aware:
        budget.check(plan, bench.backbone, cfg.method)
    tracking.log_object(run_id, "plan.json", plan.to_dict())
    tracking.log_object(run_id, "plan.png", plan.draw(title=cell.name, groups=bench.groups))
    for name, obj in result.artifacts.items():
        tracking.log_object(run_id, f"search/{name}", obj)

    # retrain from scratch (or fine-tune, when asked), select on val
    init_state = result.init_state if cfg.finetune else None
    if cfg.finetune and init_state is None:
        raise CellError(f"fine-tuning was asked for, but method {cfg.method!r} returns no search weights")
    retrained = retrain(bench, plan, ctx.trainer("train"), cfg.seed, init_state)
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
    example = bench.prepare(bench.splits["test"].x[:1]).to(device)
    amp = resolve_amp(bench.protocol.amp, device)
    metrics["latency_ms.b1"] = measure_latency(retrained.net, example, amp=amp)
    n_big = min(256, len(bench.splits["test"]))
    big = bench.prepare(bench.splits["test"].x[:n_big]).to(device)
    metrics["latency_ms.batch"] = measure_latency(retrained.net, big, repeats=5, amp=amp)
    metrics["latency_batch_size"] = n_big

    # Δm against the independent networks of the same data and seed
    if cfg.method == "independent":
        metrics["delta_m"] = 0.0
    else:
        reference = ctx.reference("independent")
        test = {k[len("test.") :]: v for k, v in metrics.items() if k.startswith("test.")}
        metrics["delta_m"] = delta_m(bench.tasks, test, reference.metrics)
        metrics["reused_seconds" if reference.reused else "reference_seconds"] = reference.seconds
        tracking.set_tags(run_id, {"bb.reference_run": reference.run_id or ""})
    truth = bench.true_partition()
    if truth is not None:
        metrics.update({f"grouping.{k}": v for k, v in grouping_scores(plan, truth).items()})
    tracking.log_metrics(run_id, metrics)
    tracking.log_state_dict(run_id, retrained.net.state_dict())
    return metrics


# -------------------------------------------------------------- evaluation
def evaluate_run(tracking: Tracking, run_id: str, split: str = "test", device: str | None = None) -> dict[str, float]:
    """Rebuild a finished run's network from its logged config, plan and weights and score it."""
    from branchbench.core.net import BranchedNet
    from branchbench.core.retrain import evaluate_net
    from branchbench.core.trainer import Trainer

    resolved = tracking.load_json(run_id, "config.json")
    plan = Plan.from_dict(tracking.load_json(run_id, "plan.json"))
    dataset = create_dataset(resolved["dataset"]["name"], **resolved["dataset"]["options"])
    bench = dataset.load()
    protocol = bench.protocol.replace(**resolved["protocol"])
    net = BranchedNet(plan, bench.backbone, bench.tasks)
    net.load_state_dict(tracking.load_state_dict(run_id))
    trainer = Trainer(protocol, device=device or _default_device(), seed=resolved["seed"])
    return evaluate_net(trainer, net, bench, splits=(split,))
