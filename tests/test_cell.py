"""One cell end to end: search, retrain, evaluate, log to MLflow; skip, reuse, failure."""

from __future__ import annotations

import pytest
import torch
from _tiny import TINY

from branchbench.cell import CellConfig, evaluate_run, resolve, run_cell
from branchbench.cli import main
from branchbench.core.plan import Plan

FAST = {"epochs": 3, "batch_size": 64, "early_stopping": 0}


def _cell(method: str, **kw) -> CellConfig:
    return CellConfig("synthetic", method, dict(TINY), kw.pop("method_options", {}), protocol=dict(FAST), **kw)


def _artifacts(tracking, run_id: str, path: str = "") -> set[str]:
    found = set()
    for item in tracking.client.list_artifacts(run_id, path or None):
        found |= _artifacts(tracking, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_cell_logs_everything_and_skips_when_finished(tracking):
    outcome = run_cell(_cell("oracle_tree"), tracking)
    assert outcome.status == "finished", outcome.error
    run = tracking.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert {"config.json", "plan.json", "plan.png", "model/weights.pt"} <= _artifacts(tracking, outcome.run_id)
    m = run.data.metrics
    for key in ("delta_m", "params", "flops", "latency_ms.b1", "search_seconds", "train_seconds", "grouping.recovered"):
        assert key in m, key
    assert m["grouping.recovered"] == 1.0  # the oracle's plan is the truth
    plan = Plan.from_dict(tracking.load_json(outcome.run_id, "plan.json"))
    bench = resolve(_cell("oracle_tree")).make_dataset().load()
    assert m["params"] == plan.param_count(bench.backbone)
    tags = run.data.tags
    assert tags["bb.config_hash"] == outcome.config_hash and tags["bb.method"] == "oracle_tree"
    assert tags["bb.code_version"] and tags["bb.version.torch"] and tags["bb.data_fingerprint"]
    # the Δm reference was trained once as its own finished run
    refs = tracking.runs("tags.`bb.method` = 'independent' and attributes.status = 'FINISHED'")
    assert len(refs) == 1 and tags["bb.reference_run"] == refs[0].info.run_id

    again = run_cell(_cell("oracle_tree"), tracking)
    assert again.status == "skipped" and again.run_id == outcome.run_id

    other = run_cell(_cell("shared_bottom"), tracking)  # reuses the reference, not retrained
    assert "reused_seconds" in tracking.get_run(other.run_id).data.metrics
    assert len(tracking.runs("tags.`bb.method` = 'independent'")) == 1


def test_evaluate_reproduces_logged_test_metrics(tracking):
    outcome = run_cell(_cell("shared_bottom"), tracking)
    logged = tracking.get_run(outcome.run_id).data.metrics
    again = evaluate_run(tracking, outcome.run_id, "test", device="cpu")
    for key, value in again.items():
        assert value == pytest.approx(logged[key], rel=1e-6, abs=1e-9), key


def test_diverging_cell_is_failed_with_reason(tracking):
    config = _cell("shared_bottom")
    config.protocol.update(optimizer="sgd", lr=1e6)
    outcome = run_cell(config, tracking)
    assert outcome.status == "failed" and outcome.failure_kind == "divergence"
    run = tracking.get_run(outcome.run_id)
    assert run.info.status == "FAILED"
    assert "diverged" in run.data.tags["bb.failure"]
    assert tracking.finished_run(outcome.config_hash) is None


def test_budget_is_part_of_identity_only_for_budget_aware_methods():
    assert resolve(_cell("shared_bottom", budget=2.0)).hash == resolve(_cell("shared_bottom", budget=3.0)).hash
    assert resolve(_cell("random_tree", budget=2.0)).hash != resolve(_cell("random_tree", budget=3.0)).hash
    assert resolve(_cell("random_tree", seed=1)).hash != resolve(_cell("random_tree", seed=2)).hash


def test_cli_run_and_bad_input(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = ["run", "--dataset", "synthetic", "--method", "random_tree", "--budget", "2", "--seed", "1"]
    args += [f"--set=dataset.{k}={v}" for k, v in TINY.items()] + [f"--set=protocol.{k}={v}" for k, v in FAST.items()]
    assert main(args) == 0
    assert "finished" in capsys.readouterr().out
    assert (tmp_path / "mlruns.db").exists()

    assert main(["run", "--dataset", "synthetic", "--method", "no_such_method"]) == 2
    assert "unknown method 'no_such_method'" in capsys.readouterr().err
    assert main(["run", "--dataset", "synthetic", "--method", "shared_bottom", "--set", "protocol.epoch=3"]) == 2
    assert "unknown protocol key(s) ['epoch']" in capsys.readouterr().err
    assert main(["run", "--dataset", "synthetic", "--method", "random_tree", "--budget", "0.5"]) == 2
    assert "below 1.0" in capsys.readouterr().err
    assert main(["run", "--dataset", "digits", "--method", "oracle_tree", "--set", "protocol.epochs=1"]) == 2
    assert "known task grouping" in capsys.readouterr().err


def test_methods_and_datasets_are_listed(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("shared_bottom", "independent", "random_tree", "oracle_tree"):
        assert name in out
    assert main(["datasets"]) == 0
    assert "synthetic" in capsys.readouterr().out


def test_weights_roundtrip_through_the_store(tracking):
    outcome = run_cell(_cell("independent"), tracking)
    state = tracking.load_state_dict(outcome.run_id)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert any(k.startswith("heads.") for k in state)
