"""Sweeps: one parent and the expected children, resume after SIGKILL, racing sweeps, failures, bad configs."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from branchbench import plugins
from branchbench.cli import main
from branchbench.config import load_config
from branchbench.core.method import Method, SearchResult
from branchbench.core.plan import Plan
from branchbench.runner import dry_run, plan_sweep, run_sweep
from branchbench.tracking import DB_NAME, Tracking, default_uri

DATA = """
[datasets.synthetic]
tasks = 4
groups = 2
input_dim = 8
n_train = {n_train}
n_val = 32
n_test = 32
width = 4
depth = 2
"""


def write_config(path: Path, methods: list[str], seeds=(0, 1), budgets=(1.5,), epochs=2, n_train=64,
                 batch_size=32) -> Path:
    text = f"[sweep]\nname = 'test'\nseeds = {list(seeds)}\nbudgets = {list(budgets)}\n"
    text += f"[protocol]\nepochs = {epochs}\nbatch_size = {batch_size}\nearly_stopping = 0\nthreads = 1\n"
    text += DATA.format(n_train=n_train)
    text += "".join(f"[methods.{m}]\n" for m in methods)
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def template_db(tmp_path_factory) -> Path:
    """An initialised, empty SQLite store: copying it skips MLflow's seconds of schema setup."""
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("template")
    MlflowClient(tracking_uri=default_uri(folder)).search_experiments()
    return folder / DB_NAME


def fresh_store(template_db: Path, folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(template_db, folder / DB_NAME)
    return default_uri(folder)


def cell_runs(tracking: Tracking) -> list:
    return tracking.runs("tags.`bb.kind` = 'cell'")


def finished_per_cell(tracking: Tracking) -> dict[str, int]:
    counts: dict[str, int] = {}
    for run in cell_runs(tracking):
        key = run.data.tags["bb.config_hash"]
        counts[key] = counts.get(key, 0) + (run.info.status == "FINISHED")
    return counts


def sweep_process(config: Path, uri: str, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "branchbench.cli", "sweep", str(config), "--tracking-uri", uri, "--no-report", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def poll(condition, deadline_s: float, what: str) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# ------------------------------------------------------------------ in process
def test_sweep_has_one_parent_and_the_expected_children(template_db, tmp_path, capsys):
    config = write_config(tmp_path / "sweep.toml", ["shared_bottom", "independent", "random_tree"], budgets=(1.5, 2.0))
    cfg = load_config(config)
    tracking = Tracking(fresh_store(template_db, tmp_path / "store"))
    result = run_sweep(cfg, tracking)
    assert result.exit_status == 0

    parents = tracking.runs("tags.`bb.kind` = 'sweep'")
    assert [p.info.run_id for p in parents] == [result.parent_run_id]
    children = cell_runs(tracking)
    got = sorted((r.data.tags["bb.method"], r.data.tags["bb.budget"], r.data.tags["bb.seed"]) for r in children)
    # not budget-aware: once per seed; random_tree once per budget and seed
    want = sorted([(m, "none", s) for m in ("independent", "shared_bottom") for s in "01"]
                  + [("random_tree", b, s) for b in ("1.5", "2") for s in "01"])
    assert got == want
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {result.parent_run_id}
    assert {r.info.status for r in children} == {"FINISHED"}
    # every other cell reused the reference instead of training its own
    reused = [r for r in children if r.data.tags["bb.method"] != "independent"]
    assert all("reused_seconds" in r.data.metrics for r in reused)

    # a re-run skips everything and keeps the one parent
    again = run_sweep(cfg, tracking)
    assert {r.status for r in again.results} == {"skipped"}
    assert again.parent_run_id == result.parent_run_id
    assert len(cell_runs(tracking)) == len(children)
    dry_run(cfg, tracking)
    listing = capsys.readouterr().out
    assert "done: 8" in listing and "pending" not in listing

    # the report of the sweep, from the store, logged to the parent
    assert main(["report", "--parent", result.parent_run_id, "--tracking-uri", tracking.uri,
                 "--reports-dir", str(tmp_path / "reports")]) == 0
    text = (tmp_path / "reports" / "test" / "report.md").read_text()  # reports/<sweep name>/
    assert result.parent_run_id in text and "random_tree | 2 | 2 |" in text
    logged = [a.path for a in tracking.client.list_artifacts(result.parent_run_id, "reports/synthetic")]
    assert "reports/synthetic/summary.csv" in logged


class BrokenPlan(Method):
    """A method whose plan does not fit the benchmark: a deterministic ``plan`` failure."""

    name = "broken_plan"
    budget_aware = False

    def search(self, bench, budget, ctx) -> SearchResult:
        return SearchResult(Plan.shared_bottom(bench.task_names[:1], bench.backbone.block_names))


def test_failing_cell_is_recorded_and_not_retried_unless_asked(template_db, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(plugins.BUILTIN_METHODS, "broken_plan", f"{__name__}:BrokenPlan")
    cfg = load_config(write_config(tmp_path / "sweep.toml", ["shared_bottom", "broken_plan"], seeds=(0,)))
    tracking = Tracking(fresh_store(template_db, tmp_path / "store"))
    result = run_sweep(cfg, tracking)
    assert result.exit_status == 1
    [failed] = result.failed
    assert failed.cell.method == "broken_plan" and failed.failure_kind == "plan"
    runs = {r.data.tags["bb.method"]: r for r in cell_runs(tracking)}
    assert runs["shared_bottom"].info.status == "FINISHED"
    assert runs["broken_plan"].info.status == "FAILED"
    assert tracking.get_run(result.parent_run_id).info.status == "FAILED"

    def attempts() -> int:
        return sum(r.data.tags["bb.method"] == "broken_plan" for r in cell_runs(tracking))

    assert run_sweep(cfg, tracking).exit_status == 1
    assert attempts() == 1  # deterministic: not retried
    dry_run(cfg, tracking)
    assert "failed (plan:" in capsys.readouterr().out
    assert run_sweep(cfg, tracking, retry_failed=True).exit_status == 1
    assert attempts() == 2


def test_bad_config_key_fails_before_any_run(tmp_path, capsys):
    config = write_config(tmp_path / "sweep.toml", ["shared_bottom"])
    config.write_text(config.read_text().replace("epochs = 2", "epoch = 2"))
    store = tmp_path / "store"
    assert main(["sweep", str(config), "--tracking-uri", default_uri(store)]) == 2
    err = capsys.readouterr().err
    assert "epoch" in err and "known keys" in err and "epochs" in err
    assert not (store / DB_NAME).exists()  # the store was never touched

    config = write_config(tmp_path / "sweep.toml", ["random_tree"])
    config.write_text(config.read_text() + "depth_typo = 3\n")
    assert main(["sweep", str(config), "--tracking-uri", default_uri(store)]) == 2
    assert "depth_typo" in capsys.readouterr().err
    assert not (store / DB_NAME).exists()


def test_plan_puts_dependencies_first_and_non_budget_aware_methods_once(tmp_path):
    cfg = load_config(write_config(tmp_path / "s.toml", ["shared_bottom", "random_tree"], seeds=(0, 1),
                                   budgets=(1.5, 2.0, 3.0)))
    cells = plan_sweep(cfg)
    position = {c.hash: i for i, c in enumerate(cells)}
    for cell in cells:  # every cell after the cells it depends on
        assert all(position[dep.hash] < position[cell.hash] for _, dep in cell.needs)
    assert sum(c.method == "independent" for c in cells) == 2  # the Δm references, once per seed
    assert sum(c.method == "shared_bottom" for c in cells) == 2
    assert sum(c.method == "random_tree" for c in cells) == 6
    assert len({c.hash for c in cells}) == len(cells)
    assert all(c.dependency("independent").seed == c.seed for c in cells if c.method != "independent")


# --------------------------------------------------------------- subprocesses
def test_sigkill_mid_cell_then_rerun_finishes_each_cell_once(template_db, tmp_path):
    config = write_config(tmp_path / "sweep.toml", ["shared_bottom"], seeds=(0,), epochs=60, n_train=32)
    uri = fresh_store(template_db, tmp_path / "store")
    checkpoints = tmp_path / "store" / "bb-checkpoints"
    proc = sweep_process(config, uri)
    try:
        poll(lambda: any(checkpoints.glob("*/train.pt")) or proc.poll() is not None, 120, "a checkpoint")
    finally:
        proc.send_signal(signal.SIGKILL)
        output = proc.communicate()[0]
    assert proc.returncode == -signal.SIGKILL, output
    tracking = Tracking(uri)
    [killed] = cell_runs(tracking)
    assert killed.info.status == "RUNNING"  # killed mid-cell

    result = run_sweep(load_config(config), tracking)
    assert result.exit_status == 0
    counts = finished_per_cell(tracking)
    assert len(counts) == 2 and set(counts.values()) == {1}
    # the interrupted run was reopened and finished: one record per cell, none left KILLED
    statuses = sorted(r.info.status for r in cell_runs(tracking))
    assert statuses == ["FINISHED", "FINISHED"]
    assert len(tracking.runs("tags.`bb.kind` = 'sweep'")) == 1  # the re-run resumed the same parent
    resumed = tracking.finished_run(killed.data.tags["bb.config_hash"])
    assert resumed.info.run_id == killed.info.run_id
    assert resumed.data.tags["bb.resumes"] == "1" and "train epoch" in resumed.data.tags["bb.resumed_from"]
    # it continued from its checkpoint, and its record holds every epoch's curve
    history = tracking.client.get_metric_history(resumed.info.run_id, "train/train_loss")
    assert {m.step for m in history} == set(range(60))
    resumed_at = int(resumed.data.tags["bb.resumed_from"].rsplit(" ", 1)[-1])
    assert resumed_at >= 1
    # epochs before the checkpoint were not trained again: each logged once
    assert all(sum(m.step == step for m in history) == 1 for step in range(resumed_at))


def test_two_sweeps_racing_on_one_store_finish_each_cell_once(template_db, tmp_path):
    config = write_config(tmp_path / "sweep.toml", ["shared_bottom", "random_tree", "oracle_tree"],
                          epochs=3)
    uri = fresh_store(template_db, tmp_path / "store")
    procs = [sweep_process(config, uri), sweep_process(config, uri, "--workers", "2")]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    tracking = Tracking(uri)
    counts = finished_per_cell(tracking)
    assert len(counts) == 2 * 4 and set(counts.values()) == {1}, counts
    assert len(tracking.runs("tags.`bb.kind` = 'sweep'")) == 1
    assert all(r.info.status == "FINISHED" for r in cell_runs(tracking))


def test_ray_executor_without_ray_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the optional extra were not installed
    config = write_config(tmp_path / "sweep.toml", ["shared_bottom"], seeds=(0,))
    assert main(["sweep", str(config), "--executor", "ray", "--tracking-uri", default_uri(tmp_path)]) == 2
    assert "pip install 'branchbench[ray]'" in capsys.readouterr().err
    assert not (tmp_path / DB_NAME).exists()


# ----------------------------------------------------------------- identity
def test_bumping_a_methods_version_reruns_only_its_cells(template_db, tmp_path, monkeypatch):
    from branchbench.baselines.shared_bottom import SharedBottom

    cfg = load_config(write_config(tmp_path / "sweep.toml", ["shared_bottom", "random_tree"], seeds=(0,)))
    tracking = Tracking(fresh_store(template_db, tmp_path / "store"))
    first = run_sweep(cfg, tracking)
    assert {r.status for r in first.results} == {"finished"}
    monkeypatch.setattr(SharedBottom, "version", SharedBottom.version + 1)
    again = run_sweep(cfg, tracking)
    status = {r.cell.method: r.status for r in again.results}
    assert status == {"independent": "skipped", "random_tree": "skipped", "shared_bottom": "finished"}
    versions = sorted(r.data.tags["bb.method_version"] for r in cell_runs(tracking)
                      if r.data.tags["bb.method"] == "shared_bottom")
    assert versions == ["1", "2"]


def test_named_instances_of_one_kind_and_method_variants_in_one_sweep(template_db, tmp_path):
    from branchbench.datasets.fixtures import write_npz_fixture

    a = write_npz_fixture(tmp_path / "a.npz", n=120, seed=0)
    b = write_npz_fixture(tmp_path / "b.npz", n=120, seed=1)
    config = tmp_path / "sweep.toml"
    config.write_text(
        "[sweep]\nname='heldout'\nseeds=[0]\nbudgets=[2.0]\n[protocol]\nepochs=2\nbatch_size=32\nthreads=1\n"
        f"[datasets.heldout_a]\nkind='npz'\npath='{a}'\nwidth=8\ndepth=2\n"
        f"[datasets.heldout_b]\nkind='npz'\npath='{b}'\nwidth=8\ndepth=2\n"
        "[methods.shared_bottom]\n[methods.rt_wide]\nkind='random_tree'\n"
    )
    tracking = Tracking(fresh_store(template_db, tmp_path / "store"))
    result = run_sweep(load_config(config), tracking)
    assert result.exit_status == 0, [r.error for r in result.failed]
    names = sorted(r.info.run_name for r in cell_runs(tracking))
    assert names == sorted(f"heldout_{x}-{m}" for x in "ab" for m in ("independent-s0", "shared_bottom-s0",
                                                                       "rt_wide-b2-s0"))
    assert {r.data.tags["bb.dataset_kind"] for r in cell_runs(tracking)} == {"npz"}
    assert main(["report", "--parent", result.parent_run_id, "--tracking-uri", tracking.uri,
                 "--reports-dir", str(tmp_path / "reports")]) == 0
    for name in ("heldout_a", "heldout_b"):
        text = (tmp_path / "reports" / "heldout" / name / "report.md").read_text()  # several datasets: one each
        assert "rt_wide" in text and "shared_bottom" in text


def test_a_report_rebuilt_from_a_copy_of_the_store_without_the_registry_is_the_same(
        template_db, tmp_path, monkeypatch):
    from branchbench.reports.build import build_reports

    cfg = load_config(write_config(tmp_path / "sweep.toml", ["shared_bottom", "random_tree", "oracle_tree"],
                                   seeds=(0,)))
    store = tmp_path / "store"
    tracking = Tracking(fresh_store(template_db, store))
    parent = run_sweep(cfg, tracking).parent_run_id
    build_reports(tracking, parent, tmp_path / "original", log=False)

    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    shutil.rmtree(store)  # the copy alone: the original's artifacts are gone

    def unavailable(*args, **kwargs):
        raise AssertionError("a report imported a method or dataset")

    for name in ("get_method_class", "get_dataset_class", "create_method", "create_dataset", "list_methods"):
        monkeypatch.setattr(plugins, name, unavailable)
    rebuilt = Tracking(default_uri(copy))
    build_reports(rebuilt, parent, tmp_path / "rebuilt", log=False)
    original = sorted(p.relative_to(tmp_path / "original") for p in (tmp_path / "original").rglob("*.*"))
    assert original == sorted(p.relative_to(tmp_path / "rebuilt") for p in (tmp_path / "rebuilt").rglob("*.*"))
    for path in original:
        if path.suffix in (".md", ".csv", ".tex"):
            assert (tmp_path / "rebuilt" / path).read_text() == (tmp_path / "original" / path).read_text(), path
    text = (tmp_path / "rebuilt" / "test" / "report.md").read_text()
    assert "tmp" not in text and str(tmp_path) not in text  # no path of the machine that made it


def test_run_retrains_a_users_plan_file(template_db, tmp_path, capsys):
    import json

    plan = {"version": 1, "tasks": ["t0", "t1", "t2", "t3"], "blocks": ["fc0", "fc1"],
            "nodes": {"t0": [0, 0], "t1": [0, 0], "t2": [0, 1], "t3": [0, 1]}}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    uri = fresh_store(template_db, tmp_path / "store")
    data = [f"--set=dataset.{k}={v}" for k, v in
            dict(tasks=4, groups=2, input_dim=8, n_train=64, n_val=32, n_test=32, width=4, depth=2).items()]
    args = ["run", "--dataset", "synthetic", "--plan", str(path), "--tracking-uri", uri, *data,
            "--set=protocol.epochs=2"]
    assert main(args) == 0, capsys.readouterr().err
    tracking = Tracking(uri)
    [run] = tracking.runs("tags.`bb.method` = 'fixed_plan'")
    assert run.info.status == "FINISHED"
    from branchbench.core.plan import Plan

    assert Plan.from_dict(tracking.load_json(run.info.run_id, "plan.json")) == Plan.from_dict(plan)
    plan["nodes"]["t3"] = [0, 0]  # another plan is another cell
    path.write_text(json.dumps(plan))
    assert main(args) == 0
    assert len(tracking.runs("tags.`bb.method` = 'fixed_plan'")) == 2
    path.write_text(json.dumps({**plan, "tasks": ["a", "b"], "nodes": {"a": [0, 0], "b": [0, 1]}}))
    assert main(args) == 2
    assert "differ from the dataset's" in capsys.readouterr().err


def test_two_sweeps_over_one_dataset_write_their_own_report_folders(template_db, tmp_path):
    # a development study over the comparison's dataset must not overwrite the comparison's report
    uri = fresh_store(template_db, tmp_path / "store")
    reports = tmp_path / "reports"
    for name in ("comparison", "study"):
        config = write_config(tmp_path / f"{name}.toml", ["shared_bottom"], seeds=(0,))
        config.write_text(config.read_text().replace("name = 'test'", f"name = '{name}'"))
        assert main(["sweep", str(config), "--tracking-uri", uri, "--reports-dir", str(reports), "--quiet"]) == 0
        if name == "comparison":
            first = (reports / "comparison" / "report.md").read_text()
    assert (reports / "comparison" / "report.md").read_text() == first
    assert (reports / "study" / "report.md").is_file()
    assert not (reports / "synthetic").exists()  # never the dataset's name alone
