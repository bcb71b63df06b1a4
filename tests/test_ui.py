"""`branchbench ui`: serves the store's runs over MLflow's REST API; Ctrl-C leaves no process behind."""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

from test_runner import fresh_store, template_db, write_config  # noqa: F401 - template_db is a fixture

from branchbench.config import load_config
from branchbench.runner import run_sweep
from branchbench.tracking import Tracking
from branchbench.ui import free_port, group_alive


class Lines:
    """A process's stdout lines, read by a thread, so waits have deadlines."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=lambda: [self.queue.put(line) for line in proc.stdout], daemon=True).start()

    def wait_for(self, pattern: str, deadline_s: float) -> re.Match:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            try:
                line = self.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            self.seen.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no line matching {pattern!r} in time; got {self.seen}")


def search_runs(base: str, experiment_id: str, filter_string: str) -> list[dict]:
    body = json.dumps({"experiment_ids": [experiment_id], "filter": filter_string, "max_results": 100}).encode()
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/runs/search", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read()).get("runs", [])


def test_ui_serves_the_sweep_and_ctrl_c_stops_every_process(template_db, tmp_path):  # noqa: F811
    uri = fresh_store(template_db, tmp_path / "store")
    tracking = Tracking(uri)
    config = write_config(tmp_path / "sweep.toml", ["shared_bottom"], seeds=(0,))
    parent = run_sweep(load_config(config), tracking).parent_run_id

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "branchbench.cli", "ui", "--tracking-uri", uri, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = Lines(proc)
        group = int(lines.wait_for(r"process group (\d+)", 120).group(1))
        url = lines.wait_for(r"(http://127\.0\.0\.1:\d+)/#/experiments/(\d+)/runs", 30)
        assert url.group(1) == f"http://127.0.0.1:{port}"
        assert url.group(2) == tracking.experiment_id
        children = search_runs(url.group(1), url.group(2), f"tags.`mlflow.parentRunId` = '{parent}'")
        assert sorted(r["info"]["run_name"] for r in children) == ["synthetic-independent-s0",
                                                                   "synthetic-shared_bottom-s0"]
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        proc.wait(timeout=60)
    assert proc.returncode == 0
    assert not group_alive(group)
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
        raise AssertionError("the UI still answers after Ctrl-C")
    except OSError:
        pass
