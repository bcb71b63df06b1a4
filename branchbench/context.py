"""Run contexts: everything a method may use during search, and nothing else.

:class:`LocalContext` keeps logs, artifacts and checkpoints in memory (tests,
the conformance kit, notebooks). The cell runner's context (in
:mod:`branchbench.cell`) sends the same calls to MLflow and keeps checkpoints
on disk beside the store. A method cannot tell them apart.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch
from tqdm.auto import tqdm

from branchbench.core.benchmark import Benchmark, TrainingProtocol
from branchbench.core.method import Reference
from branchbench.core.plan import Plan
from branchbench.core.retrain import retrain
from branchbench.core.trainer import Checkpointer, MemoryCheckpointer, Trainer

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

    def reference(self, method: str) -> Reference:
        if method not in self._references:
            self._references[method] = self._make_reference(method)
        return self._references[method]

    def _make_reference(self, method: str) -> Reference:
        if method not in REFERENCE_PLANS:
            raise KeyError(f"no reference {method!r}; references are {sorted(REFERENCE_PLANS)}")
        plan = REFERENCE_PLANS[method](self.bench.task_names, self.bench.backbone.block_names)
        trainer = self.trainer(f"reference-{method}")
        with torch.random.fork_rng(devices=[]):
            result = retrain(self.bench, plan, trainer, self.seed)
        metrics = {k[len("test.") :]: v for k, v in result.metrics.items() if k.startswith("test.")}
        return Reference(
            method=method,
            run_id=None,
            plan=plan,
            state_dict={k: v.detach().cpu() for k, v in result.net.state_dict().items()},
            metrics=metrics,
            seconds=result.fit.seconds,
            reused=False,
        )


class LocalContext(BaseContext):
    """In-memory context: logs and artifacts are kept on the object for inspection."""

    def __init__(self, bench: Benchmark, seed: int = 0, device: torch.device | str = "cpu", **kw: Any) -> None:
        super().__init__(bench, seed, device, **kw)
        self.metrics: list[tuple[int | None, dict[str, float]]] = []
        self.artifacts: dict[str, Any] = {}
        self._checkpoints: dict[str, MemoryCheckpointer] = {}

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
