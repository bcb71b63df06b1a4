"""`branchbench ui`: opens on the comparison of methods, serves what MLflow's UI shows, stops cleanly.

Two tests start the server on a store holding a tiny sweep (three methods, one
seed, its report): one reads it over MLflow's REST API; one drives headless
Chromium from the distribution's packages through Selenium (offline: the
driver path is given, so Selenium Manager never downloads anything) and is
skipped, with the reason, where the browser is missing, unless ``CI=true``.
A screenshot of the runs page goes to ``$BRANCHBENCH_SCREENSHOTS`` (default:
the test's temporary folder).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli import Lines
from test_runner import fresh_store, template_db, write_config  # noqa: F401 - template_db is a fixture

from branchbench.config import load_config
from branchbench.reports.build import build_reports
from branchbench.runner import run_sweep
from branchbench.tracking import EXPERIMENT_KIND, Tracking
from branchbench.ui import (
    VIEW_ID,
    VIEW_TAG_PREFIX,
    comparison_view,
    free_port,
    group_alive,
    shown_metrics,
)

RUN_NAMES = {"independent": "synthetic-independent-s0", "shared_bottom": "synthetic-shared_bottom-s0",
             "random_tree": "synthetic-random_tree-b1.5-s0"}


@pytest.fixture(scope="module")
def sweep(template_db, tmp_path_factory) -> tuple[Tracking, str]:  # noqa: F811
    """A store with one seed of shared_bottom, random_tree and their reference, and the sweep's report."""
    folder = tmp_path_factory.mktemp("ui")
    tracking = Tracking(fresh_store(template_db, folder / "store"))
    config = write_config(folder / "sweep.toml", ["shared_bottom", "random_tree"], seeds=(0,))
    parent = run_sweep(load_config(config), tracking, quiet=True).parent_run_id
    build_reports(tracking, parent, folder / "reports")
    return tracking, parent


@contextlib.contextmanager
def ui(uri: str, port: int = 0) -> Iterator[tuple[subprocess.Popen, str, int]]:
    """`branchbench ui` as a user starts it: yields the process, the printed URL and its process group."""
    # SIGINT as in a terminal's foreground: a shell starts background jobs (`cmd &`, as some CI
    # runners do) with SIGINT ignored, and the child would inherit that and never see the Ctrl-C
    proc = subprocess.Popen([sys.executable, "-m", "branchbench.cli", "ui", "--tracking-uri", uri, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines = Lines(proc)
        group = int(lines.wait_for(r"process group (\d+)", 120).group(1))
        url = lines.wait_for(r"http://\S+", 30).group(0)
        yield proc, url, group
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
            proc.wait(timeout=60)


def rest(base: str, endpoint: str, body: dict | None = None, **query: str) -> dict:
    url = f"{base}/api/2.0/mlflow/{endpoint}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                     method="POST" if body is not None else "GET")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def tags_of(entity: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in entity.get("tags", [])}


# ------------------------------------------------------------ the view
def test_view_shows_the_main_metrics_grouped_by_method_and_budget():
    keys = {"delta_m", "main.mean_accuracy", "main.mean_mse", "main.t0", "params", "flops", "test.t0.mse"}
    assert shown_metrics(keys) == ["delta_m", "main.mean_accuracy", "main.mean_mse", "params", "flops"]
    view = comparison_view(keys)
    assert view["selectedColumns"][1:] == [f"metrics.`{k}`" for k in shown_metrics(keys)]
    assert view["columnOrder"][1] == "metrics.`delta_m`"  # right after the run names
    assert view["orderByKey"] == "metrics.`delta_m`" and view["orderByAsc"] is False
    assert [k["groupByData"] for k in view["groupBy"]["groupByKeys"]] == ["bb.method", "bb.budget"]
    assert shown_metrics(set())[0] == "delta_m"  # an empty store still opens on Δm


def test_an_experiment_made_elsewhere_is_tagged_as_model_training(sweep):
    tracking, _ = sweep
    tracking.client.create_experiment("made-by-hand")
    kind = Tracking(tracking.uri, "made-by-hand").experiment_tags()
    assert {k: kind[k] for k in EXPERIMENT_KIND} == EXPERIMENT_KIND


# ------------------------------------------------------------ the server
def test_ui_serves_the_kind_datasets_descriptions_and_report_and_ctrl_c_stops_it(sweep):
    tracking, parent = sweep
    port = free_port()
    with ui(tracking.uri, port) as (proc, url, group):
        base = f"http://127.0.0.1:{port}"
        assert url == f"{base}/#/experiments/{tracking.experiment_id}/runs?workflowType=machine_learning" \
                      f"&compareRunsMode=TABLE&viewStateShareKey={VIEW_ID}"

        experiment = rest(base, "experiments/get", experiment_id=tracking.experiment_id)["experiment"]
        tags = tags_of(experiment)
        assert tags["mlflow.experimentKind"] == "custom_model_development"
        view = json.loads(tags[VIEW_TAG_PREFIX + VIEW_ID])  # MLflow's saved-view envelope
        assert view["name"] and "metrics.`main.mean_mse`" in json.loads(view["state"])["selectedColumns"]

        children = rest(base, "runs/search", {"experiment_ids": [tracking.experiment_id], "max_results": 100,
                                              "filter": f"tags.`mlflow.parentRunId` = '{parent}'"})["runs"]
        assert sorted(r["info"]["run_name"] for r in children) == sorted(RUN_NAMES.values())
        for run in children:
            run_tags = tags_of(run["data"])
            [given] = run["inputs"]["dataset_inputs"]
            assert given["dataset"]["name"] == "synthetic" and given["dataset"]["digest"] == run_tags["bb.data_key"]
            assert json.loads(given["dataset"]["profile"])["splits"] == {"train": 64, "val": 32, "test": 32}
            description = run_tags["mlflow.note.content"]
            assert description.startswith(f"**{run_tags['bb.method']}** on **synthetic**")
            assert "Δm" in description and "`fc1`:" in description  # the key result and the tree
            assert {"delta_m", "main.mean_mse", "main.t0"} <= {m["key"] for m in run["data"]["metrics"]}

        files = rest(base, "artifacts/list", run_id=parent, path="reports/synthetic")["files"]
        names = {Path(f["path"]).name for f in files}
        assert {"report.md", "report.html", "trees.png", "pareto_params.png", "summary.csv"} <= names
        with urllib.request.urlopen(f"{base}/get-artifact?" + urllib.parse.urlencode(
                {"path": "reports/synthetic/report.html", "run_uuid": parent}), timeout=30) as response:
            page = response.read().decode()
        assert "<table>" in page and "src='data:image/png;base64," in page
        metrics = {m["key"] for m in rest(base, "runs/get", run_id=parent)["run"]["data"]["metrics"]}
        assert "synthetic/random_tree/budget_1.5/delta_m" in metrics
    assert proc.returncode == 0
    assert not group_alive(group)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)


# ------------------------------------------------------------ a real browser
@pytest.fixture(scope="module")
def browser() -> tuple[str, str]:
    """Chromium and its driver from the distribution, and Selenium; skip (fail on CI) without them."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", chromium), ("chromium-driver", driver)) if path is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install 'branchbench[test]')")
    if missing:
        reason = f"the browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return chromium, driver


def test_the_printed_url_opens_the_runs_table_on_the_comparison(browser, sweep, tmp_path, monkeypatch):
    chromium, driver_path = browser  # checked before the sweep is made
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    monkeypatch.setenv("SE_OFFLINE", "true")  # belt and braces: Selenium Manager must not fetch anything
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1600,900"):
        options.add_argument(flag)
    tracking, _ = sweep
    shots = Path(os.environ.get("BRANCHBENCH_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with ui(tracking.uri) as (_, url, _group):
        browser_ = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
        try:
            browser_.get(url)
            wait = WebDriverWait(browser_, 60)
            header = "metrics.`delta_m`"
            try:
                wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, f".ag-header-cell[col-id='{header}']"))
                for name in RUN_NAMES.values():
                    wait.until(lambda b, name=name: b.find_elements(By.LINK_TEXT, name))
            except TimeoutException:
                browser_.save_screenshot(str(shots / "runs_page_failed.png"))
                raise
            assistant = "[data-component-id='mlflow.assistant.chat_panel.close']"
            for close in browser_.find_elements(By.CSS_SELECTOR, assistant):
                close.click()  # MLflow opens its assistant on a local server's first visit; the shot shows the table
            wait.until(lambda b: not b.find_elements(By.CSS_SELECTOR, assistant))
            browser_.save_screenshot(str(shots / "runs_page.png"))
            columns = {e.get_attribute("col-id") for e in browser_.find_elements(By.CSS_SELECTOR, ".ag-header-cell")}
            assert {"metrics.`delta_m`", "metrics.`main.mean_mse`", "metrics.`budget_ratio`"} <= columns
            page = browser_.find_element(By.TAG_NAME, "body").text
            assert "bb.method: random_tree" in page  # grouped by method
            assert "synthetic (" in page  # the Dataset column shows the dataset input
        finally:
            browser_.quit()
    assert (shots / "runs_page.png").stat().st_size > 10_000
