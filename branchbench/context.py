"""Run contexts: everything a method may use during search, and nothing else.

:class:`LocalContext` keeps logs, artifacts and checkpoints in memory (tests,
the conformance kit, notebooks). :class:`CellContext` sends the same calls to
the cell's MLflow run and keeps checkpoints on disk beside the store. A method
cannot tell them apart: it never touches MLflow, files or devices itself.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from branchbench.core.benchmark import Benchmark, TrainingProtocol
from branchbench.core.method import Reference
from branchbench.core.plan import Plan
from branchbench.core.retrain import retrain
from branchbench.core.trainer import Checkpointer, MemoryCheckpointer, Trainer

if TYPE_CHECKING:  # pragma: no cover
    from branchbench.resolve import Cell
    from branchbench.tracking import Tracking

REFERENCE_PLANS = {"independent": Plan.independent, "shared_bottom": Plan.shared_bottom}


class BaseContext:
    """Shared behaviour: trainers wired to the context's logging, device and checkpoints."""

    def __init__(
        self,
        bench: Benchmark,
        seed: int = 0,
        device: torch.device | str = "cpu",
        show_progress: bool = False,
    ) -> None:
        self.bench = bench
        self.seed = seed
        self.device = torch.device(device)
        self.show_progress = show_progress
        self._references: dict[str, Reference] = {}

    # -- to be provided by subclasses
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        raise NotImplementedError

    def log_artifact(self, name: str, obj: Any) -> None:
        raise NotImplementedError

    def checkpointer(self, name: str) -> Checkpointer | None:
        return None

    def _make_reference(self, role: str) -> Reference:
        raise NotImplementedError

    # -- common
    def progress(self, total: int, desc: str) -> Any:
        return tqdm(total=total, desc=desc, leave=False, disable=not self.show_progress)

    def trainer(self, name: str, protocol: TrainingProtocol | None = None) -> Trainer:
        """A Trainer that logs curves as ``<name>/...`` and checkpoints as ``name``."""
        return Trainer(
            protocol or self.bench.protocol,
            device=self.device,
            seed=self.seed,
            log=lambda metrics, step: self.log_metrics(metrics, step),
            checkpointer=self.checkpointer(name),
            progress=lambda total, desc: self.progress(total, f"{name} epochs"),
            prefix=f"{name}/",
        )

    def reference(self, role: str) -> Reference:
        """The finished run of another cell this one depends on (e.g. ``"independent"``)."""
        if role not in self._references:
            self._references[role] = self._make_reference(role)
        return self._references[role]


class LocalContext(BaseContext):
    """In-memory context: logs and artifacts are kept on the object for inspection.

    References are trained here on demand for the fixed plans of
    :data:`REFERENCE_PLANS`; others can be handed in as ``references``.
    """

    def __init__(self, bench: Benchmark, seed: int = 0, device: torch.device | str = "cpu",
                 references: Mapping[str, Reference] | None = None, **kw: Any) -> None:
        super().__init__(bench, seed, device, **kw)
        self.metrics: list[tuple[int | None, dict[str, float]]] = []
        self.artifacts: dict[str, Any] = {}
        self._checkpoints: dict[str, MemoryCheckpointer] = {}
        self._references.update(references or {})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.metrics.append((step, {k: float(v) for k, v in metrics.items()}))

    def log_artifact(self, name: str, obj: Any) -> None:
        self.artifacts[name] = obj
        with contextlib.suppress(ImportError):
            from matplotlib.figure import Figure

            if isinstance(obj, Figure):
                import matplotlib.pyplot as plt

                plt.close(obj)

    def checkpointer(self, name: str) -> Checkpointer:
        return self._checkpoints.setdefault(name, MemoryCheckpointer())

    def curve(self, key: str) -> list[float]:
        """All values logged under ``key``, in order."""
        return [m[key] for _, m in self.metrics if key in m]

    def _make_reference(self, role: str) -> Reference:
        if role not in REFERENCE_PLANS:
            raise KeyError(f"no reference {role!r}; a LocalContext trains {sorted(REFERENCE_PLANS)} "
                           "or takes others as references={role: Reference}")
        plan = REFERENCE_PLANS[role](self.bench.task_names, self.bench.backbone.block_names)
        trainer = self.trainer(f"reference-{role}")
        with torch.random.fork_rng(devices=[]):
            result = retrain(self.bench, plan, trainer, self.seed)
        metrics = {k[len("test.") :]: v for k, v in result.metrics.items() if k.startswith("test.")}
        return Reference(
            method=role,
            run_id=None,
            plan=plan,
            state_dict={k: v.detach().cpu() for k, v in result.net.state_dict().items()},
            metrics=metrics,
            seconds=result.fit.seconds,
            reused=False,
        )


class FileCheckpointer:
    """A checkpoint file written atomically (a killed process never leaves half a file).

    ``on_save`` runs after every save (the cell records its elapsed search
    time there, so a resumed cell's search time includes the interrupted part).
    """

    def __init__(self, path: Path, on_save: Callable[[], None] | None = None) -> None:
        self.path = path
        self.on_save = on_save

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=False)

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)
        if self.on_save is not None:
            self.on_save()


class CellProgress:
    """A cell's progress beside its checkpoints: elapsed search seconds, written atomically."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "progress.json"

    def load(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def save(self, **values: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**self.load(), **values}))
        os.replace(tmp, self.path)

    def resumed_epochs(self) -> dict[str, int]:
        """Per checkpoint name, the epochs it had finished (what a resumed run continues from)."""
        out = {}
        for path in sorted(self.path.parent.glob("*.pt")):
            with contextlib.suppress(Exception):
                out[path.stem] = int(torch.load(path, map_location="cpu", weights_only=False).get("epoch", 0))
        return out


class CellContext(BaseContext):
    """The context of a cell: logs go to its MLflow run, checkpoints beside the store.

    ``run_dependency(cell)`` returns the finished run id of a cell this one
    depends on (running it first when the store has none), so a reference is
    always the run of its resolved cell, looked up by hash.
    """

    def __init__(
        self,
        cell: Cell,
        bench: Benchmark,
        tracking: Tracking,
        run_id: str,
        device: torch.device,
        run_dependency: Callable[[Cell], tuple[str, bool]],
        show_progress: bool = False,
        on_checkpoint: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(bench, cell.seed, device, show_progress)
        self.cell = cell
        self.tracking = tracking
        self.run_id = run_id
        self.run_dependency = run_dependency
        self.on_checkpoint = on_checkpoint
        self.checkpoint_dir = tracking.checkpoint_root / cell.hash

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.tracking.log_metrics(self.run_id, metrics, step)

    def log_artifact(self, name: str, obj: Any) -> None:
        self.tracking.log_object(self.run_id, f"search/{name}", obj)

    def checkpointer(self, name: str) -> FileCheckpointer:
        return FileCheckpointer(self.checkpoint_dir / f"{name}.pt", self.on_checkpoint)

    def _make_reference(self, role: str) -> Reference:
        dependency = self.cell.dependency(role)
        run_id, reused = self.run_dependency(dependency)
        run = self.tracking.get_run(run_id)
        data = run.data.metrics
        return Reference(
            method=dependency.method,
            run_id=run_id,
            plan=Plan.from_dict(self.tracking.load_json(run_id, "plan.json")),
            state_dict=self.tracking.load_state_dict(run_id),
            metrics={k[len("test.") :]: v for k, v in data.items() if k.startswith("test.")},
            seconds=data.get("search_seconds", 0.0) + data.get("train_seconds", 0.0),
            reused=reused,
        )
