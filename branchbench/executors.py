"""Where a sweep's cells run: in this process, in worker processes (one per GPU), or on Ray.

An executor has ``slots`` (how many cells run at once), ``submit(fn, item,
after=..., threads=...)`` returning a future, ``wait(futures)`` returning those
that are done (at least one), ``result(future)``, ``take_device()`` /
``give_device(device)`` (the device a cell is sent to) and ``close()``.
``fn`` must be a module-level function and the items plain data, so they
pickle to a worker; ``fn(item, *results of after)`` is what runs. A cell's
thread count comes from its protocol (set by the cell function), never from
the executor, so results do not depend on how many cells run at once.

Dependencies: local executors have ``orders_dependencies = False``: the runner
submits a cell once every cell it depends on has finished. Ray orders them
itself (``orders_dependencies = True``): the runner submits every cell at once,
each with its dependencies' futures in ``after``, which Ray turns into task
dependencies, so a cell starts as soon as its own references are done, never
at a sweep-wide barrier.

Devices: on one machine with GPUs the local executor runs ``--workers``
(default: the GPU count) cells at once, each sent to the least busy GPU
(:class:`DeviceSlots`), so N GPUs run one cell each. On Ray, each cell is a
task asking for its resources (``cpus_per_cell``, default the protocol's
threads; ``gpus_per_cell``, default 1 where the cluster has GPUs and the
device is not ``cpu``, fractions allowed), and Ray pins it to its GPU.

Ray is an optional extra (``pip install 'branchbench[ray]'``), imported only
when asked for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol

from branchbench import interrupts

EXECUTORS = ("local", "ray")
RAY_EXTRA = "pip install 'branchbench[ray]'"
CANCEL_GRACE_SECONDS = 30.0


class Executor(Protocol):
    slots: int
    orders_dependencies: bool

    def submit(self, fn: Callable[..., Any], item: Any, after: Sequence[Any] = (), threads: int = 1) -> Any: ...

    def wait(self, futures: Iterable[Any]) -> list[Any]: ...

    def result(self, future: Any) -> Any: ...

    def take_device(self) -> str | None: ...

    def give_device(self, device: str | None) -> None: ...

    def close(self, interrupted: bool = False) -> None: ...


# ------------------------------------------------------------------ settings
@dataclass(frozen=True)
class ExecutorSettings:
    """How a sweep runs: from the config's ``[executor]`` table, overridden by flags.

    ``[executor]`` (all keys optional)::

        kind = "ray"              # or "local"
        workers = 4               # local: cells at once (default: the GPU count, else 1);
                                  # a local Ray instance: its CPUs
        cpus_per_cell = 2         # Ray: CPUs a cell asks for (default: its protocol's threads)
        gpus_per_cell = 0.5       # Ray: GPUs a cell asks for (default: 1 where the cluster has GPUs)
        checkpoint_dir = "/shared/bb-checkpoints"   # storage every node sees
        max_retries = 3           # Ray: retries of a cell whose worker or node died
    """

    kind: str = "local"
    workers: int | None = None
    cpus_per_cell: float | None = None
    gpus_per_cell: float | None = None
    checkpoint_dir: str | None = None
    max_retries: int = 3
    address: str | None = None

    def replace(self, **changes: Any) -> ExecutorSettings:
        """A copy with the given values (``None`` keeps the current one: a flag that was not given)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


SETTING_KEYS = ("kind", "workers", "cpus_per_cell", "gpus_per_cell", "checkpoint_dir", "max_retries")


def settings_from_config(table: Mapping[str, Any] | None, source: str = "<inline>") -> ExecutorSettings:
    """The ``[executor]`` table of a sweep config, checked (a :class:`ConfigError` names the key)."""
    from branchbench.config import ConfigError

    table = dict(table or {})
    where = f"in {source}"
    if not isinstance(table, dict):
        raise ConfigError(f"[executor] {where} must be a table")
    unknown = sorted(set(table) - set(SETTING_KEYS))
    if unknown:
        raise ConfigError(f"unknown key(s) {['executor.' + k for k in unknown]} {where}; allowed keys are "
                          f"{list(SETTING_KEYS)}")
    values: dict[str, Any] = {}
    if "kind" in table:
        if table["kind"] not in EXECUTORS:
            raise ConfigError(f"executor.kind {where} is {table['kind']!r}; choose one of {list(EXECUTORS)}")
        values["kind"] = table["kind"]
    for key, low in (("workers", 1), ("max_retries", 0)):
        if key in table:
            value = table[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"executor.{key} {where} must be an integer >= {low}, got {value!r}")
            values[key] = value
    for key in ("cpus_per_cell", "gpus_per_cell"):
        if key in table:
            try:
                values[key] = check_amount(table[key], key.replace("_", "-"))
            except ValueError as err:
                raise ConfigError(f"executor.{key} {where}: {err}") from None
    if "checkpoint_dir" in table:
        if not isinstance(table["checkpoint_dir"], str) or not table["checkpoint_dir"]:
            raise ConfigError(f"executor.checkpoint_dir {where} must be a folder path (a string)")
        values["checkpoint_dir"] = table["checkpoint_dir"]
    return ExecutorSettings(**values)


def check_amount(value: Any, name: str) -> float:
    """A resource amount: a number >= 0; a fraction of a GPU below 1, a whole number above."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0 or not math.isfinite(value):
        raise ValueError(f"{name} {value!r} must be a number >= 0")
    if value > 1 and value != int(value):
        raise ValueError(f"{name} {value!r}: above 1 give a whole number (Ray splits only one GPU or CPU)")
    return float(value)


# ------------------------------------------------------------------- devices
class DeviceSlots:
    """Which device each running cell goes to: the least busy one (ties: the first).

    With one slot per GPU every cell has a GPU to itself; with more workers
    than GPUs the cells spread evenly. ``None`` is "the cell's default device".
    """

    def __init__(self, devices: Sequence[str | None]) -> None:
        self.busy: dict[str | None, int] = dict.fromkeys(devices or [None], 0)

    def take(self) -> str | None:
        device = min(self.busy, key=lambda d: self.busy[d])
        self.busy[device] += 1
        return device

    def give(self, device: str | None) -> None:
        if device in self.busy:
            self.busy[device] = max(0, self.busy[device] - 1)


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def local_devices(device: str | None, gpus: int) -> list[str | None]:
    """The devices local workers are spread over: every GPU unless one device is named."""
    if device is None or device == "cuda":
        if gpus > 0:
            return [f"cuda:{i}" for i in range(gpus)]
        return [device]
    return [device]


# ----------------------------------------------------------------- executors
class SequentialExecutor:
    """One cell after another in this process (``--workers 1``): ``submit`` runs the cell."""

    slots = 1
    orders_dependencies = False

    def __init__(self, device: str | None = None) -> None:
        self.device = device

    def submit(self, fn: Callable[..., Any], item: Any, after: Sequence[Any] = (), threads: int = 1) -> Future:
        future: Future = Future()
        future.set_result(fn(item, *[f.result() for f in after]))
        return future

    def wait(self, futures: Iterable[Future]) -> list[Future]:
        return [f for f in futures if f.done()]

    def result(self, future: Future) -> Any:
        return future.result()

    def take_device(self) -> str | None:
        return self.device

    def give_device(self, device: str | None) -> None:
        pass

    def close(self, interrupted: bool = False) -> None:
        pass


class ProcessExecutor:
    """Cells in ``workers`` processes, spawned once and reused until ``close()``.

    Spawned, not forked: no torch threads or SQLite connections are inherited
    (a worker takes a few seconds to import torch and MLflow, hence the reuse).
    Workers turn SIGTERM into an interrupt like the main process; when the
    sweep is stopped, the workers are sent SIGTERM so each marks its run KILLED.
    Each cell is sent to the least busy of ``devices`` (one GPU per cell when
    there are as many workers as GPUs).
    """

    orders_dependencies = False

    def __init__(self, workers: int, devices: Sequence[str | None] = (None,)) -> None:
        self.slots = workers
        self.devices = DeviceSlots(devices)
        self.pool: ProcessPoolExecutor | None = None

    def submit(self, fn: Callable[..., Any], item: Any, after: Sequence[Any] = (), threads: int = 1) -> Future:
        if self.pool is None:
            context = multiprocessing.get_context("spawn")
            self.pool = ProcessPoolExecutor(max_workers=self.slots, mp_context=context,
                                            initializer=interrupts.sigterm_as_interrupt)
        return self.pool.submit(fn, item, *[f.result() for f in after])

    def wait(self, futures: Iterable[Future]) -> list[Future]:
        done, _ = wait(list(futures), return_when=FIRST_COMPLETED)
        return list(done)

    def result(self, future: Future) -> Any:
        return future.result()

    def take_device(self) -> str | None:
        return self.devices.take()

    def give_device(self, device: str | None) -> None:
        self.devices.give(device)

    def close(self, interrupted: bool = False) -> None:
        if self.pool is None:
            return
        if interrupted:
            for process in list(getattr(self.pool, "_processes", {}).values()):
                with contextlib.suppress(ProcessLookupError, OSError):
                    os.kill(process.pid, signal.SIGTERM)
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pool = None


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RuntimeError(
            f"--executor ray needs Ray, an optional extra that is not installed; install it with `{RAY_EXTRA}` "
            "or use --executor local"
        ) from None
    return ray


@contextlib.contextmanager
def _keeping_sigterm(noticed: Callable[[], None]) -> Iterator[None]:
    """Keep this process's SIGTERM handler through ``ray.init`` (which installs one that aborts the
    driver, so a stopped sweep would neither cancel its cells nor close its parent run), and call
    ``noticed`` on SIGTERM before it (inside ``ray.wait`` Ray turns the handler's exception into a
    plain KeyboardInterrupt, so the executor needs to know it was SIGTERM)."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread() and callable(previous):
            def handler(signum: int, frame: Any) -> None:
                noticed()
                previous(signum, frame)

            signal.signal(signal.SIGTERM, handler)


def _ray_task(fn: Callable[..., Any], item: Any, *after: Any) -> Any:
    """What a Ray worker runs: ``fn`` with its claims tagged by this task's id (the same for each retry)."""
    import ray

    from branchbench.locks import lineage

    with lineage(ray.get_runtime_context().get_task_id()):
        return fn(item, *after)


class RayExecutor:
    """Each cell a Ray task with its resource request; dependencies are Ray task dependencies.

    ``settings.address`` joins an existing cluster (the CLI takes it from
    ``--ray-address`` or ``RAY_ADDRESS``); without one a local Ray instance
    starts (``workers`` CPUs, no dashboard) and ends with :meth:`close`. A Ray instance already started in this
    process (``ray.init``) is used as it is. A task whose worker or node dies
    is retried ``max_retries`` times; the retry resumes the cell from its
    checkpoint (which must then be on storage every node sees).
    """

    orders_dependencies = True

    def __init__(self, settings: ExecutorSettings, device: str | None = None) -> None:
        ray = import_ray()
        self.ray = ray
        self.started = False
        self.terminated = False
        self._in_flight: set[Any] = set()
        if not ray.is_initialized():
            with _keeping_sigterm(self._terminated):
                if settings.address:
                    ray.init(address=settings.address, log_to_driver=True)
                else:
                    ray.init(address="local", num_cpus=settings.workers, include_dashboard=False,
                             log_to_driver=True)
                    self.started = True
        totals = ray.cluster_resources()
        has_gpus = totals.get("GPU", 0) > 0
        gpus = settings.gpus_per_cell
        if gpus is None:
            gpus = 1.0 if has_gpus and device != "cpu" else 0.0
        if gpus > 0 and not has_gpus:
            self.close()
            raise RuntimeError(f"the Ray cluster has no GPU, so cells asking for {gpus:g} GPU would wait forever; "
                               "give --gpus-per-cell 0 (or --device cpu), or add GPU nodes")
        if gpus == 0 and device is not None and device.startswith("cuda"):
            self.close()
            raise RuntimeError(f"--device {device} with --gpus-per-cell 0: a Ray task sees only the GPUs it asks "
                               "for; give --gpus-per-cell (e.g. 1, or 0.5 for two cells per GPU)")
        self.gpus = gpus
        self.cpus = settings.cpus_per_cell
        self.max_retries = settings.max_retries
        self.device = "cuda" if gpus > 0 else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES to the task's GPU
        self.slots = self._at_once(totals)
        self._remote = ray.remote(_ray_task)

    def _at_once(self, totals: Mapping[str, float]) -> int:
        """About how many cells the cluster runs at once (for the ETA), from its resources."""
        limits = [totals.get("CPU", 1) / self.cpus] if self.cpus else []
        if self.gpus:
            limits.append(totals.get("GPU", 0) / self.gpus)
        if not limits:
            limits.append(totals.get("CPU", 1))
        return max(1, int(min(limits)))

    def submit(self, fn: Callable[..., Any], item: Any, after: Sequence[Any] = (), threads: int = 1) -> Any:
        options = {"num_cpus": self.cpus if self.cpus is not None else threads, "num_gpus": self.gpus,
                   "max_retries": self.max_retries}
        ref = self._remote.options(**options).remote(fn, item, *after)
        self._in_flight.add(ref)
        return ref

    def _terminated(self) -> None:
        self.terminated = True

    def wait(self, futures: Iterable[Any]) -> list[Any]:
        try:
            done, _ = self.ray.wait(list(futures), num_returns=1)
        except KeyboardInterrupt as err:
            if self.terminated and not isinstance(err, interrupts.Terminated):
                raise interrupts.Terminated() from None
            raise
        return list(done)

    def result(self, future: Any) -> Any:
        self._in_flight.discard(future)
        return self.ray.get(future)

    def take_device(self) -> str | None:
        return self.device

    def give_device(self, device: str | None) -> None:
        pass

    def close(self, interrupted: bool = False) -> None:
        """Cancel what is still running when interrupted (each cell marks its run KILLED); end a local Ray."""
        if interrupted and self._in_flight:
            refs = list(self._in_flight)
            for ref in refs:
                with contextlib.suppress(Exception):
                    self.ray.cancel(ref)
            with contextlib.suppress(Exception):
                self.ray.wait(refs, num_returns=len(refs), timeout=CANCEL_GRACE_SECONDS)
            self._in_flight.clear()
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
            self.started = False


def make_executor(kind: str | ExecutorSettings = "local", workers: int | None = None, address: str | None = None,
                  *, device: str | None = None, gpus: int | None = None) -> Executor:
    """The executor of ``kind`` (or of full ``settings``); ``gpus`` is the local GPU count (default: detected)."""
    settings = kind if isinstance(kind, ExecutorSettings) else ExecutorSettings(kind, workers, address=address)
    if settings.kind not in EXECUTORS:
        raise ValueError(f"unknown executor {settings.kind!r}; choose one of {list(EXECUTORS)}")
    if settings.workers is not None and settings.workers < 1:
        raise ValueError(f"--workers {settings.workers}: give at least 1 worker")
    if settings.kind == "ray":
        return RayExecutor(settings, device)
    devices = local_devices(device, gpu_count() if gpus is None else gpus)
    count = settings.workers or len(devices)
    return SequentialExecutor(devices[0]) if count == 1 else ProcessExecutor(count, devices)
