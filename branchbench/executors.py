"""Where a sweep's cells run: in this process, in worker processes, or on Ray.

An executor has ``slots`` (how many cells run at once), ``submit(fn, item)``
returning a future, ``wait(futures)`` returning those that are done (at least
one), and ``close()``. The runner submits a cell once every cell it depends on
has finished, so the same dependency order holds on every executor. ``fn`` must
be a module-level function and the items plain data, so they pickle to a
worker. A cell's thread count comes from its protocol (set by the cell
function), never from the executor, so results do not depend on how many cells
run at once.

Ray is an optional extra (``pip install 'branchbench[ray]'``), imported only
when asked for.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Protocol

from branchbench import interrupts

EXECUTORS = ("local", "ray")


class Executor(Protocol):
    slots: int

    def submit(self, fn: Callable[[Any], Any], item: Any) -> Any: ...

    def wait(self, futures: Iterable[Any]) -> list[Any]: ...

    def result(self, future: Any) -> Any: ...

    def close(self, interrupted: bool = False) -> None: ...


class SequentialExecutor:
    """One cell after another in this process (``--workers 1``): ``submit`` runs the cell."""

    slots = 1

    def submit(self, fn: Callable[[Any], Any], item: Any) -> Future:
        future: Future = Future()
        future.set_result(fn(item))
        return future

    def wait(self, futures: Iterable[Future]) -> list[Future]:
        return [f for f in futures if f.done()]

    def result(self, future: Future) -> Any:
        return future.result()

    def close(self, interrupted: bool = False) -> None:
        pass


class ProcessExecutor:
    """Cells in ``workers`` processes, spawned once and reused until ``close()``.

    Spawned, not forked: no torch threads or SQLite connections are inherited
    (a worker takes a few seconds to import torch and MLflow, hence the reuse).
    Workers turn SIGTERM into an interrupt like the main process; when the
    sweep is stopped, the workers are sent SIGTERM so each marks its run KILLED.
    """

    def __init__(self, workers: int) -> None:
        self.slots = workers
        self.pool: ProcessPoolExecutor | None = None

    def submit(self, fn: Callable[[Any], Any], item: Any) -> Future:
        if self.pool is None:
            context = multiprocessing.get_context("spawn")
            self.pool = ProcessPoolExecutor(max_workers=self.slots, mp_context=context,
                                            initializer=interrupts.sigterm_as_interrupt)
        return self.pool.submit(fn, item)

    def wait(self, futures: Iterable[Future]) -> list[Future]:
        done, _ = wait(list(futures), return_when=FIRST_COMPLETED)
        return list(done)

    def result(self, future: Future) -> Any:
        return future.result()

    def close(self, interrupted: bool = False) -> None:
        if self.pool is None:
            return
        if interrupted:
            for process in list(getattr(self.pool, "_processes", {}).values()):
                with contextlib.suppress(ProcessLookupError, OSError):
                    os.kill(process.pid, signal.SIGTERM)
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pool = None


class RayExecutor:
    """Each cell a Ray task (``--executor ray``); ``address`` of an existing cluster or local."""

    def __init__(self, workers: int, address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise RuntimeError(
                "--executor ray needs Ray, an optional extra that is not installed; "
                "install it with `pip install 'branchbench[ray]'` or use --executor local"
            ) from None
        self.ray = ray
        self.slots = workers
        if not ray.is_initialized():
            ray.init(address=address, num_cpus=None if address else workers)
        self._remote: dict[Callable, Any] = {}

    def submit(self, fn: Callable[[Any], Any], item: Any) -> Any:
        if fn not in self._remote:
            self._remote[fn] = self.ray.remote(num_cpus=1)(fn)
        return self._remote[fn].remote(item)

    def wait(self, futures: Iterable[Any]) -> list[Any]:
        done, _ = self.ray.wait(list(futures), num_returns=1)
        return list(done)

    def result(self, future: Any) -> Any:
        return self.ray.get(future)

    def close(self, interrupted: bool = False) -> None:
        pass  # a cluster outlives the sweep; a local Ray ends with this process


def make_executor(kind: str, workers: int, address: str | None = None) -> Executor:
    if kind not in EXECUTORS:
        raise ValueError(f"unknown executor {kind!r}; choose one of {list(EXECUTORS)}")
    if workers < 1:
        raise ValueError(f"--workers {workers}: give at least 1 worker")
    if kind == "ray":
        return RayExecutor(workers, address)
    return SequentialExecutor() if workers == 1 else ProcessExecutor(workers)
