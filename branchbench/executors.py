"""Where a sweep's cells run: in this process, in worker processes, or on Ray.

Every executor has one call, ``map_unordered(fn, items)``, yielding
``fn(item)`` as each finishes. ``fn`` must be a module-level function and the
items plain data, so they pickle to a worker. A cell's thread count comes from
its protocol (set by the cell function), never from the executor, so results do
not depend on how many cells run at once.

Ray is an optional extra (``pip install 'branchbench[ray]'``), imported only
when asked for.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Protocol

EXECUTORS = ("local", "ray")


class Executor(Protocol):
    def map_unordered(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]: ...

    def close(self) -> None: ...


class SequentialExecutor:
    """One cell after another in this process (``--workers 1``)."""

    def map_unordered(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        for item in items:
            yield fn(item)

    def close(self) -> None:
        pass


class ProcessExecutor:
    """Cells in ``workers`` processes, spawned once and reused until ``close()``.

    Spawned, not forked: no torch threads or SQLite connections are inherited
    (a worker takes a few seconds to import torch and MLflow, hence the reuse).
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None

    def map_unordered(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        items = list(items)
        if not items:
            return
        if self.pool is None:
            context = multiprocessing.get_context("spawn")
            self.pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=context)
        pending = {self.pool.submit(fn, item) for item in items}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.pool is not None:
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
        if not ray.is_initialized():
            ray.init(address=address, num_cpus=None if address else workers)

    def map_unordered(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        remote = self.ray.remote(num_cpus=1)(fn)
        pending = [remote.remote(item) for item in items]
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            yield self.ray.get(done[0])

    def close(self) -> None:
        pass  # a cluster outlives the sweep; a local Ray ends with this process


def make_executor(kind: str, workers: int, address: str | None = None) -> Executor:
    if kind not in EXECUTORS:
        raise ValueError(f"unknown executor {kind!r}; choose one of {list(EXECUTORS)}")
    if workers < 1:
        raise ValueError(f"--workers {workers}: give at least 1 worker")
    if kind == "ray":
        return RayExecutor(workers, address)
    return SequentialExecutor() if workers == 1 else ProcessExecutor(workers)
