"""What a cell run records for people browsing MLflow: headline metrics under stable names, and
`branchbench evaluate` saying whether a rebuilt network scores what the run logged."""

from __future__ import annotations

from _tiny import TINY

from branchbench.cell import CellConfig, main_metrics, run_cell
from branchbench.cli import main
from branchbench.core.tasks import TaskSpec

FAST = {"epochs": 2, "batch_size": 64, "early_stopping": 0}


def test_main_metrics_average_only_tasks_that_share_a_main_metric(bench):
    tasks = [*bench.tasks[:2], TaskSpec("smiling", kind="binary")]
    logged = {"test.t0.mse": 1.0, "test.t1.mse": 3.0, "test.t1.mae": 9.0, "test.smiling.accuracy": 0.8}
    out = main_metrics(tasks, logged)
    assert out == {"main.t0": 1.0, "main.t1": 3.0, "main.smiling": 0.8, "main.mean_mse": 2.0}


def test_evaluate_of_a_finished_run_says_its_scores_match(tracking, capsys):
    outcome = run_cell(CellConfig("synthetic", "shared_bottom", dict(TINY), protocol=dict(FAST)), tracking,
                       device="cpu")
    assert outcome.status == "finished", outcome.error
    capsys.readouterr()
    status = main(["evaluate", outcome.run_id, "--tracking-uri", tracking.uri, "--experiment",
                   tracking.experiment_name, "--device", "cpu"])
    out = capsys.readouterr().out
    assert status == 0, out
    scores = [line for line in out.splitlines() if line.startswith("  test.")]
    assert scores and all(line.endswith("matches the logged score") for line in scores)
    assert f"all {len(scores)} test scores match the logged ones" in out
