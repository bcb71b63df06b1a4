"""`tox -e celeba`'s entry: one message and exit 2 without the data, the whole pipeline on the fixture."""

from __future__ import annotations

import tomllib

import numpy as np
import pandas as pd
import pytest

from branchbench import bench_envs
from branchbench.data import load_published
from branchbench.reports import tables


def _no_files_written(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_without_the_data_one_message_exit_2_and_no_store(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CELEBA_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert bench_envs.main(["celeba", "--device", "cpu"]) == 2
    message = capsys.readouterr().err
    for needed in ("CELEBA_ROOT", "list_attr_celeba.txt", "list_eval_partition.txt", "img_align_celeba",
                   "mmlab.ie.cuhk.edu.hk", "--smoke"):
        assert needed in message
    empty = tmp_path / "empty"
    empty.mkdir()
    assert bench_envs.main(["celeba", "--root", str(empty), "--config", "celeba40"]) == 2
    message = capsys.readouterr().err
    assert f"CELEBA_ROOT={empty}" in message and "holds no CelebA attribute file" in message
    assert _no_files_written(tmp_path) == ["empty"]  # no store, no reports, no cache


def test_chosen_methods_seeds_and_budgets_make_a_derived_config():
    raw = tomllib.loads((bench_envs.REPO / "configs" / "celeba9.toml").read_text())
    with pytest.raises(bench_envs.Refusal, match=r"has no method\(s\) \['nope'\]"):
        bench_envs.derive_config(raw, bench_envs.REPO / "configs" / "celeba9.toml", "dmtg,nope", None, None, {})
    with pytest.raises(bench_envs.Refusal, match="--seeds 'a'"):
        bench_envs.derive_config(raw, bench_envs.REPO / "configs" / "celeba9.toml", None, "a", None, {})
    derived = bench_envs.derive_config(raw, bench_envs.REPO / "configs" / "celeba9.toml", "shared_bottom,dmtg",
                                       "4,5", "3", {"cache_dir": "/c"})
    assert tomllib.loads(bench_envs.to_toml(derived)) == derived
    assert list(derived["methods"]) == ["shared_bottom", "dmtg"] and derived["sweep"]["seeds"] == [4, 5]
    assert derived["datasets"]["celeba9"]["cache_dir"] == "/c" and derived["protocol"] == raw["protocol"]


def test_smoke_runs_the_pipeline_end_to_end_on_the_fixture(tmp_path, monkeypatch):
    monkeypatch.delenv("CELEBA_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    work, reports = tmp_path / "work", tmp_path / "reports"
    status = bench_envs.main(["celeba", "--smoke", "--work", str(work), "--reports-dir", str(reports),
                              "--device", "cpu", "--quiet"])
    assert status == 0
    assert (work / "mlruns.db").is_file() and (work / "cache").is_dir()  # the store and cache in the work folder
    assert not (tmp_path / "mlruns.db").exists()
    text = (reports / "celeba_smoke" / "report.md").read_text()
    assert "## Published figures vs this suite (protocol celeba9)" in text
    if load_published(protocol="celeba9"):
        assert "| published |" in text
    else:
        assert "No published figure is transcribed for protocol celeba9" in text
    assert "epochs=2 (published 100)" in text  # the smoke protocol is not the paper's, and the report says so

    # the report's main metric is the one Δm is computed on (each attribute's error), and it shows total error
    from branchbench.tracking import Tracking

    store = Tracking(f"sqlite:///{work / 'mlruns.db'}", "branchbench")
    runs = tables.cell_runs(store.search("tags.`bb.kind` = 'cell'"))
    chosen = tables.main_metrics(runs)
    assert len(chosen) == 9 and all(col.endswith(".error") and not higher for col, higher in chosen.values())
    summary = pd.read_csv(reports / "celeba_smoke" / "summary.csv")
    assert "total error.mean" in summary.columns and not any("accuracy" in c for c in summary.columns)
    reference = runs[runs["method"] == "independent"].iloc[0]
    for run in runs[runs["method"] != "independent"].itertuples(index=False):
        row = runs.loc[runs["run_id"] == run.run_id].iloc[0]
        gains = [(1 if higher else -1) * (row[col] - reference[col]) / abs(reference[col])
                 for col, higher in chosen.values()]
        assert 100 * np.mean(gains) == pytest.approx(row["metrics.delta_m"], rel=1e-6, abs=1e-9)


def test_taskonomy_without_data_says_where_to_get_it_and_smoke_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TASKONOMY_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert bench_envs.main(["taskonomy", "--device", "cpu"]) == 2
    message = capsys.readouterr().err
    for needed in ("TASKONOMY_ROOT", "tiny", "depth_zbuffer", "segment_semantic", "--smoke"):
        assert needed in message
    assert _no_files_written(tmp_path) == []
    work, reports = tmp_path / "work", tmp_path / "reports"
    assert bench_envs.main(["taskonomy", "--smoke", "--work", str(work), "--reports-dir", str(reports),
                            "--methods", "shared_bottom", "--device", "cpu", "--quiet"]) == 0
    assert "shared_bottom" in (reports / "taskonomy_smoke" / "report.md").read_text()
