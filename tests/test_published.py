"""The "published vs this suite" section, and the main metric reports share with Δm."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from branchbench.core.backbones import mlp_backbone
from branchbench.core.benchmark import Benchmark, Split
from branchbench.core.metrics import delta_m
from branchbench.core.tasks import MetricSpec, TaskSpec
from branchbench.data import load_published, published_protocols
from branchbench.reports import published, tables
from branchbench.reports.build import Header, dataset_report

PROTOCOL = """
[[protocol]]
name = "celeba9"
kind = "celeba"
match = { attributes = "celeba9" }
dataset = { resolution = 64 }
training = { epochs = 100, nesterov = false }
notes = "the paper's protocol"
status = "the table could not be read"

[[source]]
id = "p2021"
paper = "Someone et al. A paper. Venue 2021"
url = "https://example.org/p"
protocol = "celeba9"
"""
FIGURES = """
[[figure]]
source = "p2021"
method = "shared_bottom"
protocol = "celeba9"
table = "Table 2"
metric = "total_error"
split = "test"
value = 40.0

[[figure]]
source = "p2021"
method = "dmtg"
budget = 3.0
protocol = "celeba9"
table = "Table 2"
metric = "total_error"
split = "test"
value = 38.5
notes = "3 groups"

[[figure]]
source = "p2021"
method = "hoa"
protocol = "celeba9"
table = "Table 2"
metric = "total_error"
split = "test"
value = 39.0
"""


def _runs(epochs: str = "100", attributes: str = "celeba9") -> pd.DataFrame:
    rows = []
    values = {("shared_bottom", "none"): [41.0, 42.0, 43.0], ("dmtg", "3"): [37.0, 39.0],
              ("independent", "none"): [40.0, 40.5, 41.0]}
    for (method, budget), errors in values.items():
        for seed, error in enumerate(errors):
            rows.append({"run_id": f"{method}-{budget}-{seed}", "dataset": "celeba9", "method": method,
                         "budget": budget, "seed": seed, "tags.bb.data_seed": "0", "tags.bb.dataset_kind": "celeba",
                         "params.dataset.attributes": attributes, "params.dataset.resolution": "64",
                         "params.protocol.epochs": epochs, "params.protocol.nesterov": "False",
                         "metrics.test.total_error": error, "metrics.delta_m": 0.0})
    return pd.DataFrame(rows)


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "published.toml"
    path.write_text(PROTOCOL + FIGURES)
    return path


def test_each_figure_sits_beside_our_mean_interval_and_difference(data_file):
    found = published.section(_runs(), data_file, n_resamples=999)
    assert found is not None and found.protocol.name == "celeba9" and found.departures == []
    table = found.table.set_index("method")
    shared = table.loc["shared_bottom"]
    assert shared["n"] == 3 and shared["mean"] == pytest.approx(42.0)
    assert shared["difference"] == pytest.approx(2.0) and shared["ci_low"] <= 42.0 <= shared["ci_high"]
    dmtg = table.loc["dmtg"]  # the paper's 3 groups: our rows at budget 3
    assert dmtg["n"] == 2 and dmtg["mean"] == pytest.approx(38.0) and dmtg["difference"] == pytest.approx(-0.5)
    assert table.loc["hoa", "n"] == 0  # a paper's baseline the suite does not run
    strings = published.format_table(found.table).set_index("method")
    assert strings.loc["hoa", "this suite: mean [95% CI]"] == "not in this sweep"
    assert strings.loc["dmtg @ 3", "source"] == "p2021, Table 2"


def test_the_report_prints_the_section_and_where_the_protocol_differs(data_file):
    header = Header(None, None, [])
    report = dataset_report(_runs(epochs="2"), "celeba9", header, with_figures=False, published_path=data_file)
    text = report.markdown
    assert "## Published figures vs this suite (protocol celeba9)" in text
    assert "| shared_bottom | test.total_error | 40.00 | p2021, Table 2 |" in text
    assert "epochs=2 (published 100)" in text and "https://example.org/p" in text
    assert "published" in report.tables


def test_without_figures_the_section_says_why_and_prints_no_blank_column(tmp_path):
    path = tmp_path / "published.toml"
    path.write_text(PROTOCOL)
    report = dataset_report(_runs(), "celeba9", Header(None, None, []), with_figures=False, published_path=path)
    assert "No published figure is transcribed for protocol celeba9: the table could not be read." in report.markdown
    assert "published" not in report.tables and "| published |" not in report.markdown


def test_runs_of_another_protocol_get_no_section(data_file):
    assert published.section(_runs(attributes="celeba40"), data_file) is None
    runs = _runs().drop(columns=["tags.bb.dataset_kind"])
    assert published.section(runs, data_file) is None


def test_the_package_data_declares_the_celeba_protocols():
    protocols = published_protocols()
    from branchbench.datasets.celeba import CelebA

    expected = CelebA().protocol().to_dict()
    assert {k: expected[k] for k in protocols["celeba9"].training} == protocols["celeba9"].training
    assert all(f.protocol in protocols for f in load_published())


@pytest.mark.parametrize("entry, says", [
    ('[[figure]]\nsource = "p2021"\nmethod = "m"\nprotocol = "celeba9"\ntable = "T"\nmetric = "x"\n'
     'split = "test"\nvalue = 1.0\nbudget = "three"\n', "budget 'three' is not a number"),
    ('[[figure]]\nsource = "p2021"\nmethod = "m"\nprotocol = "celeba9"\ntable = "T"\nmetric = "x"\n'
     'split = "test"\nvalue = 1.0\ngroups = 3\n', "unknown key"),
    ('[[protocol]]\nname = "x"\nkind = "celeba"\nmatch = "celeba9"\n', "match must be a table"),
])
def test_bad_entries_are_refused_naming_the_entry(tmp_path, entry, says):
    path = tmp_path / "published.toml"
    path.write_text(PROTOCOL + entry)
    with pytest.raises(ValueError, match=says):
        load_published(path)
        published_protocols(path)


# ------------------------------------------------------------- main metrics
def _bench() -> Benchmark:
    tasks = [TaskSpec("a", "binary", metrics=(MetricSpec("error", False), MetricSpec("accuracy", True))),
             TaskSpec("b", "binary")]
    split = Split(torch.zeros(2, 1), {"a": torch.zeros(2), "b": torch.zeros(2)})
    return Benchmark("toy", tasks, {"train": split, "val": split, "test": split}, mlp_backbone(1, (4,)))


def test_reports_use_the_main_metric_delta_m_uses():
    bench = _bench()
    ours = {"a.error": 0.2, "a.accuracy": 0.8, "b.accuracy": 0.9, "b.auc": 0.5}
    reference = {"a.error": 0.25, "a.accuracy": 0.75, "b.accuracy": 0.8, "b.auc": 0.6}
    frame = pd.DataFrame([{f"metrics.test.{k}": v for k, v in metrics.items()} | {"tags.bb.main_metrics":
                          bench.main_metrics_tag()} for metrics in (ours, reference)])
    chosen = tables.main_metrics(frame)
    assert chosen == {"a": ("metrics.test.a.error", False), "b": ("metrics.test.b.accuracy", True)}
    gains = [(1 if higher else -1) * (frame[col][0] - frame[col][1]) / abs(frame[col][1])
             for col, higher in chosen.values()]
    assert 100 * np.mean(gains) == pytest.approx(delta_m(bench.tasks, ours, reference))
    # without the tag (older runs) the names give the same choice: a logged error is declared, first
    assert tables.main_metrics(frame.drop(columns=["tags.bb.main_metrics"])) == chosen


def test_the_tag_wins_over_names():
    frame = pd.DataFrame([{"metrics.test.a.accuracy": 0.8, "metrics.test.a.auc": 0.7,
                           "tags.bb.main_metrics": json.dumps({"a": ["auc", True]})}])
    assert tables.main_metrics(frame) == {"a": ("metrics.test.a.auc", True)}


def test_benchmark_summary_metrics_reach_the_summary_table():
    runs = _runs()
    runs["metrics.test.a.error"] = 0.1
    summary = tables.summary(runs, n_resamples=99)
    quantities = list(dict.fromkeys(q for q, _ in summary.columns))
    assert quantities[:3] == [tables.DELTA_M, "total error", "a error"]
    assert summary.loc[("shared_bottom", "none"), ("total error", "mean")] == pytest.approx(42.0)
