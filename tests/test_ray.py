"""Sweeps on Ray: the same runs and reports as the local executor, resume, failures, a killed worker;
claims that hold across machines; refusals decided without a cluster; one cell per GPU locally.

The cluster tests share one local Ray instance (2 CPUs, no dashboard) and one
MLflow tracking server on loopback. Without Ray they are skipped, except in CI,
which installs it (the ``test`` extra) and must run them.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import pandas as pd
import pytest
from test_runner import cell_runs, finished_per_cell, fresh_store, poll, template_db, write_config  # noqa: F401

from branchbench.cli import main
from branchbench.config import ConfigError, load_config
from branchbench.executors import (
    DeviceSlots,
    ExecutorSettings,
    ProcessExecutor,
    SequentialExecutor,
    local_devices,
    make_executor,
    settings_from_config,
)
from branchbench.locks import ClaimRecord, FileLock, StoreClaim, lineage
from branchbench.runner import CellResult, run_sweep
from branchbench.tracking import DB_NAME, Tracking, default_uri

RAISES = '''
from branchbench.core.method import Method


class Raises(Method):
    """A method whose search raises: the cell fails with its reason, the sweep goes on."""

    name = "raises"
    budget_aware = False

    def search(self, bench, budget, ctx):
        raise RuntimeError("this method always raises")
'''
VOLATILE = ("(s)", "(ms)", "seconds", "latency", "time", "run_id")  # columns that differ between any two runs


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """An installed plugin (a dist-info and its module) that Ray workers see through PYTHONPATH."""
    root = tmp_path_factory.mktemp("site")
    info = root / "bb_raises-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bb-raises\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[branchbench.methods]\nraises = bb_raises:Raises\n")
    (root / "bb_raises.py").write_text(RAISES)
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))
    sys.modules.pop("bb_raises", None)


@pytest.fixture(scope="module")
def ray_module():
    try:
        import ray
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("Ray is not installed (pip install 'branchbench[ray]'); CI installs it and runs this test")
    return ray


@pytest.fixture(scope="module")
def cluster(ray_module, plugin_site, tmp_path_factory):
    """A local Ray instance and an MLflow tracking server on loopback, for every Ray test of the module."""
    from branchbench.server import TrackingServer

    folder = tmp_path_factory.mktemp("server")
    server = TrackingServer(default_uri(folder), (folder / "artifacts").as_uri(), workers=1).start()
    path = os.pathsep.join(filter(None, [str(plugin_site), os.environ.get("PYTHONPATH")]))
    ray_module.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20,
                    runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        yield server.base_url
    finally:
        ray_module.shutdown()
        server.stop()


def report_tables(tracking: Tracking, parent: str, folder: Path) -> dict[str, pd.DataFrame]:
    """Every CSV table of the sweep's reports, without the columns that differ between any two runs."""
    from branchbench.reports.build import build_reports

    build_reports(tracking, parent, folder, log=False)
    out = {}
    for path in sorted(folder.rglob("*.csv")):
        frame = pd.read_csv(path)
        keep = [c for c in frame.columns if not any(v in c.lower() for v in VOLATILE)]
        out[str(path.relative_to(folder))] = frame[keep]
    return out


def cell_records(tracking: Tracking) -> dict[str, tuple[str, str, str | None]]:
    return {r.data.tags["bb.config_hash"]: (r.info.run_name, r.info.status, r.data.tags.get("bb.failure"))
            for r in cell_runs(tracking)}


# ------------------------------------------------------------ on a cluster
def test_a_ray_sweep_gives_the_local_sweeps_runs_and_reports_and_resumes_by_identity(
        cluster, template_db, tmp_path):  # noqa: F811
    cfg = load_config(write_config(tmp_path / "sweep.toml", ["shared_bottom", "random_tree", "raises"], seeds=(0,)))
    local = Tracking(fresh_store(template_db, tmp_path / "local"))
    on_ray = Tracking(cluster, "same", checkpoint_dir=tmp_path / "checkpoints")
    assert isinstance(on_ray.claim("x"), StoreClaim) and isinstance(local.claim("x"), FileLock)

    by_local = run_sweep(cfg, local, quiet=True)
    by_ray = run_sweep(cfg, on_ray, executor="ray", quiet=True)
    assert by_local.exit_status == by_ray.exit_status == 1
    [failed] = by_ray.failed
    assert failed.cell.method == "raises" and failed.failure_kind == "error"
    assert "this method always raises" in failed.error
    # the same cells finished, the same one failed with the same reason
    assert cell_records(on_ray) == cell_records(local)
    assert sorted(s for _, s, _ in cell_records(on_ray).values()) == ["FAILED", "FINISHED", "FINISHED", "FINISHED"]
    # the same report tables (times and latencies differ between any two runs)
    ours = report_tables(on_ray, by_ray.parent_run_id, tmp_path / "ray-reports")
    theirs = report_tables(local, by_local.parent_run_id, tmp_path / "local-reports")
    assert ours.keys() == theirs.keys() and ours
    for name in ours:
        pd.testing.assert_frame_equal(ours[name], theirs[name], obj=name)

    # a second run skips every finished cell (the failed one is tried again: its error is not deterministic)
    again = run_sweep(cfg, on_ray, executor="ray", quiet=True)
    status = {r.cell.method: r.status for r in again.results}
    assert status == {"independent": "skipped", "shared_bottom": "skipped", "random_tree": "skipped",
                      "raises": "failed"}
    assert set(finished_per_cell(on_ray).values()) == {0, 1}
    assert sum(finished_per_cell(on_ray).values()) == 3
    assert again.parent_run_id == by_ray.parent_run_id
    # no claim is left behind
    assert on_ray.client.search_runs([on_ray._claims_experiment_id()], "") == []


def test_a_ray_worker_killed_mid_cell_resumes_the_cell_from_its_checkpoint(cluster, tmp_path):
    epochs = 60
    cfg = load_config(write_config(tmp_path / "sweep.toml", ["shared_bottom"], seeds=(0,), epochs=epochs,
                                   n_train=32))
    checkpoints = tmp_path / "checkpoints"
    tracking = Tracking(cluster, "killed", checkpoint_dir=checkpoints)
    outcome: dict[str, object] = {}
    sweep = threading.Thread(target=lambda: outcome.update(result=run_sweep(cfg, tracking, executor="ray",
                                                                            quiet=True)))
    sweep.start()
    victim: dict[str, object] = {}

    def a_cell_with_a_checkpoint() -> bool:
        for claim in tracking.client.search_runs([tracking._claims_experiment_id()], ""):
            key = claim.data.tags["bb.claim.key"]
            if (checkpoints / key / "train.pt").exists():
                [run] = tracking.runs_of_cell(key, ["RUNNING"])
                victim.update(key=key, run_id=run.info.run_id,
                              pid=json.loads(claim.data.tags["bb.claim.owner"])["pid"])
                return True
        return not sweep.is_alive()

    try:
        poll(a_cell_with_a_checkpoint, 180, "a cell with a checkpoint")
        assert victim, "the sweep ended before any cell wrote a checkpoint"
        assert victim["pid"] != os.getpid()  # a Ray worker, not this process
        os.kill(int(victim["pid"]), signal.SIGKILL)
    finally:
        sweep.join(timeout=300)
    result = outcome["result"]
    assert result.exit_status == 0, [r.error for r in result.failed]
    counts = finished_per_cell(tracking)
    assert len(counts) == 2 and set(counts.values()) == {1}
    # Ray retried the task; the retry took the claim over and reopened the same run from its checkpoint
    resumed = tracking.finished_run(victim["key"])
    assert resumed.info.run_id == victim["run_id"]
    assert resumed.data.tags["bb.resumes"] == "1" and "train epoch" in resumed.data.tags["bb.resumed_from"]
    history = tracking.client.get_metric_history(resumed.info.run_id, "train/train_loss")
    assert {m.step for m in history} == set(range(epochs))
    assert sorted(r.info.status for r in cell_runs(tracking)) == ["FINISHED", "FINISHED"]


# ------------------------------------------------- refusals, without a cluster
def test_a_ray_address_with_a_sqlite_store_is_refused_without_contacting_a_cluster(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # importing Ray (to reach a cluster) would fail the test
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = str(write_config(tmp_path / "sweep.toml", ["shared_bottom"], seeds=(0,)))
    sqlite = default_uri(tmp_path / "store")
    shared = ["--checkpoint-dir", str(tmp_path / "ck")]
    assert main(["sweep", config, "--executor", "ray", "--ray-address", "10.0.0.7:6379", "--tracking-uri", sqlite,
                 *shared]) == 2
    err = capsys.readouterr().err
    assert "--ray-address 10.0.0.7:6379" in err and "SQLite" in err and "branchbench server" in err
    # the default store (SQLite in the working directory), with the address from the environment
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.7:6379")
    assert main(["sweep", config, "--executor", "ray", *shared]) == 2
    assert "RAY_ADDRESS=10.0.0.7:6379" in capsys.readouterr().err
    # a server URI, but checkpoints only this machine sees
    assert main(["sweep", config, "--executor", "ray", "--tracking-uri", "http://10.0.0.8:5000"]) == 2
    assert "--checkpoint-dir" in capsys.readouterr().err
    monkeypatch.delenv("RAY_ADDRESS")
    assert main(["sweep", config, "--ray-address", "10.0.0.7:6379", "--tracking-uri", sqlite]) == 2
    assert "applies to --executor ray" in capsys.readouterr().err
    assert main(["sweep", config, "--gpus-per-cell", "0.5", "--tracking-uri", sqlite]) == 2
    assert "--gpus-per-cell" in capsys.readouterr().err
    assert main(["sweep", config, "--executor", "ray", "--gpus-per-cell", "1.5"]) == 2
    assert "whole number" in capsys.readouterr().err
    assert not (tmp_path / DB_NAME).exists() and not (tmp_path / "store" / DB_NAME).exists()


def test_the_executor_table_of_a_config_is_checked_and_flags_override_it(tmp_path, capsys):
    settings = settings_from_config({"kind": "ray", "gpus_per_cell": 0.25, "checkpoint_dir": "/shared/ck",
                                     "max_retries": 1}, "sweep.toml")
    assert settings == ExecutorSettings("ray", gpus_per_cell=0.25, checkpoint_dir="/shared/ck", max_retries=1)
    assert settings.replace(kind=None, gpus_per_cell=1.0).gpus_per_cell == 1.0
    assert settings.replace(kind=None).kind == "ray"
    for table, words in (({"gpu": 1}, ["executor.gpu", "gpus_per_cell"]), ({"kind": "slurm"}, ["'slurm'"]),
                         ({"workers": 0}, ["executor.workers", ">= 1"]), ({"gpus_per_cell": -1}, ["gpus_per_cell"])):
        with pytest.raises(ConfigError) as err:
            settings_from_config(table, "sweep.toml")
        assert all(w in str(err.value) for w in words) and "sweep.toml" in str(err.value)
    config = write_config(tmp_path / "sweep.toml", ["shared_bottom"], seeds=(0,))
    config.write_text(config.read_text() + "[executor]\ngpus = 1\n")
    assert main(["sweep", str(config), "--tracking-uri", default_uri(tmp_path / "store")]) == 2
    assert "executor.gpus" in capsys.readouterr().err


# ------------------------------------------------------------------- claims
class MemoryClaims:
    """A linearizable claim store in memory, pausing at random between calls so threads interleave."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.claims: dict[str, tuple[str, dict, float]] = {}
        self.count = 0

    def _pause(self) -> None:
        time.sleep(random.uniform(0, 0.002))

    def add_claim(self, key, owner):
        self._pause()
        with self.lock:
            self.count += 1
            claim_id = f"c{self.count}"
            self.claims[claim_id] = (key, dict(owner), time.time())
        self._pause()
        return claim_id

    def list_claims(self, key):
        self._pause()
        with self.lock:
            return [ClaimRecord(i, o, t) for i, (k, o, t) in self.claims.items() if k == key]

    def beat_claim(self, claim_id):
        with self.lock:
            if claim_id not in self.claims:
                return False
            key, owner, _ = self.claims[claim_id]
            self.claims[claim_id] = (key, owner, time.time())
            return True

    def drop_claim(self, claim_id):
        with self.lock:
            self.claims.pop(claim_id, None)


def test_racing_store_claims_never_admit_two_holders_and_one_wins_in_the_end():
    store = MemoryClaims()
    holders: list[int] = []
    overlaps: list[int] = []
    guard = threading.Lock()

    def contend(i: int) -> None:
        claim = StoreClaim(store, "cell", poll=0.005)
        claim.acquire()
        with guard:
            holders.append(i)
            overlaps.append(len(holders))
        time.sleep(0.002)
        with guard:
            holders.remove(i)
        claim.release()

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(overlaps) == 8  # every contender got the claim in turn
    assert max(overlaps) == 1  # never two at once
    assert store.claims == {}  # each released its claim


def test_a_store_claim_is_exclusive_passes_on_when_released_expired_or_retried(tracking):
    first, second = StoreClaim(tracking, "cell-a"), StoreClaim(tracking, "cell-a")
    assert first.try_acquire()
    assert not second.try_acquire()
    assert second.holders() == [first.owner]
    assert StoreClaim(tracking, "cell-b").try_acquire()  # another key is independent
    first.release()
    assert second.try_acquire()
    second.release()

    # a claim whose process died (no heartbeat for longer than ttl) is taken over
    dead = tracking.add_claim("cell-c", {"id": "dead", "lineage": None})
    tracking.client.set_tag(dead, "bb.claim.heartbeat", repr(time.time() - 3600))
    taker = StoreClaim(tracking, "cell-c")
    assert taker.try_acquire()
    assert dead not in [r.id for r in tracking.list_claims("cell-c")]
    taker.release()

    # a retry of the same Ray task takes over its killed attempt's claim at once; another task waits
    with lineage("task-1"):
        assert StoreClaim(tracking, "cell-d").try_acquire()  # the attempt that is killed (never released)
        retry = StoreClaim(tracking, "cell-d")
        assert retry.try_acquire()
    with lineage("task-2"):
        assert not StoreClaim(tracking, "cell-d").try_acquire()
    retry.release()
    assert tracking.list_claims("cell-d") == []


# ------------------------------------------------------------------ devices
class FakePool:
    """An executor on two GPUs whose cells end in random order; records what was submitted and where."""

    def __init__(self, orders_dependencies: bool) -> None:
        self.orders_dependencies = orders_dependencies
        self.slots = 2
        self.devices = DeviceSlots(local_devices(None, 2))
        self.running: dict[Future, str] = {}
        self.seen: list[tuple[str, list[str]]] = []  # (device, devices busy at submission)
        self.submitted: list[tuple[object, list[Future], Future]] = []  # (cell, after, its future)
        self.waits = 0

    def submit(self, fn, job, after=(), threads=1):
        future: Future = Future()
        self.seen.append((job.device, sorted(self.running.values())))
        self.submitted.append((job.cell, list(after), future))
        self.running[future] = job.device
        future.job = job
        return future

    def wait(self, futures):
        self.waits += 1
        ready = [f for f in futures if not self.orders_dependencies
                 or all(dep.hash in self.finished for _, dep in f.job.cell.needs)]
        future = random.choice(ready)
        del self.running[future]
        future.set_result(CellResult(future.job.cell, "finished"))
        return [future]

    @property
    def finished(self) -> set[str]:
        return {cell.hash for cell, _, _ in self.submitted} - {f.job.cell.hash for f in self.running}

    def result(self, future):
        return future.result()

    def take_device(self):
        return self.devices.take()

    def give_device(self, device):
        self.devices.give(device)

    def close(self, interrupted=False):
        pass


def test_an_executor_that_orders_dependencies_gets_every_cell_at_once_with_its_dependencies(tracking, tmp_path):
    pool = FakePool(orders_dependencies=True)
    cfg = load_config(write_config(tmp_path / "sweep.toml", ["shared_bottom", "random_tree"], seeds=(0, 1)))
    lines: list[str] = []
    assert run_sweep(cfg, tracking, executor=pool, out=lines.append).exit_status == 0
    assert len(pool.submitted) == 6 and pool.waits == 6
    assert any("queued 6 cells" in line for line in lines)  # all submitted before the first wait
    future_of = {cell.hash: future for cell, _, future in pool.submitted}
    for cell, after, _ in pool.submitted:
        # with each cell go the futures of the cells it depends on (Ray makes them task dependencies)
        assert after == [future_of[dep.hash] for _, dep in cell.needs]
    assert sum(bool(after) for _, after, _ in pool.submitted) == 4  # all but the two references


def test_local_workers_default_to_one_per_gpu_and_each_cell_gets_a_gpu_of_its_own(tracking, tmp_path):
    assert local_devices(None, 4) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert local_devices("cuda", 2) == ["cuda:0", "cuda:1"]
    assert local_devices("cuda:1", 4) == ["cuda:1"] and local_devices(None, 0) == [None]
    pool = make_executor("local", gpus=4)
    assert isinstance(pool, ProcessExecutor) and pool.slots == 4 and pool.pool is None  # nothing spawned
    assert isinstance(make_executor("local", gpus=0), SequentialExecutor)
    assert make_executor("local", device="cpu", gpus=4).take_device() == "cpu"
    assert make_executor("local", workers=1, gpus=2).take_device() == "cuda:0"
    slots = DeviceSlots(local_devices(None, 2))
    assert [slots.take() for _ in range(4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]  # two workers per GPU
    slots.give("cuda:1")
    assert slots.take() == "cuda:1"

    pool = FakePool(orders_dependencies=False)
    cfg = load_config(write_config(tmp_path / "sweep.toml", ["shared_bottom", "random_tree"], seeds=(0, 1, 2)))
    assert run_sweep(cfg, tracking, executor=pool, quiet=True).exit_status == 0
    assert len(pool.seen) == 9
    for device, busy in pool.seen:
        assert device in ("cuda:0", "cuda:1") and device not in busy  # a GPU of its own
    assert {device for device, _ in pool.seen} == {"cuda:0", "cuda:1"}
