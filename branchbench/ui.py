"""``branchbench ui``: the MLflow UI on the same store, opened on the comparison of methods.

The printed URL opens the experiment's runs table with the main metrics as
columns, runs grouped by method and budget (each group's row averages its
seeds) and sorted by Δm. MLflow's URL carries only the search (filter,
order); columns and grouping are UI state, which MLflow keeps in the browser
or, for a *saved view*, in an experiment tag ``mlflow.sharedViewState.<id>``
that the URL names with ``?viewStateShareKey=<id>``. So the suite saves its
view through MLflow's API (tag :data:`VIEW_ID`, rewritten at every start from
the metrics the store holds) and prints the URL naming it; the view is also
listed by name among the experiment's saved views, and the user's own changes
to the table are theirs to keep or save. The URL also says
``workflowType=machine_learning``: MLflow 3.17 shows its GenAI pages (traces,
judges, runs named "Evaluations") unless the browser's sidebar switch or the
URL says model training. The saved column order is best effort: on a
browser's first visit MLflow sometimes lays the grid out before the view
arrives and keeps metrics in name order. Tested against MLflow 3.17's UI.

The server listens on 127.0.0.1 unless ``--host`` says otherwise, with one
worker and MLflow's background job execution off
(``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``: the job runner is for GenAI
evaluation, which branchbench never uses). It runs in its
own process group, so stopping it (Ctrl-C, or :meth:`UIServer.stop`) ends
every process it started, including uvicorn's workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from branchbench.tracking import ARTIFACT_DIR, Tracking

HOST = "127.0.0.1"
READY_SECONDS = 120.0
VIEW_ID = "branchbench-comparison"
VIEW_NAME = "branchbench: methods compared"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
# the table's metric columns, in order, where the store has them; main.mean_<metric> go after delta_m
FIRST_METRICS = ("delta_m",)
COST_METRICS = ("budget_ratio", "params", "flops", "latency_ms.b1", "grouping.recovered", "search_seconds",
                "train_seconds")
GROUP_TAGS = ("bb.method", "bb.budget")
RUN_NAME = "attributes.`Run Name`"


class UIError(RuntimeError):
    """The UI server could not start; the message names the cause and the fix."""


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_port_free(host: str, port: int) -> None:
    """Refuse a port something already listens on, before starting a server there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as err:
            raise UIError(f"port {port} on {host} is not free ({err.strerror or err}); give another with "
                          "--port, or --port 0 for any free one") from None


class UIServer:
    """An ``mlflow ui`` process group on ``uri``; ``start()`` returns once it answers."""

    def __init__(self, uri: str, port: int = 0, artifact_root: Path | None = None, host: str = HOST) -> None:
        self.uri = uri
        self.host = host
        self.port = port or free_port(host)
        self.artifact_root = artifact_root
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", self.uri,
               "--host", self.host, "--port", str(self.port), "--workers", "1"]
        if self.artifact_root is not None:
            cmd += ["--default-artifact-root", self.artifact_root.as_uri()]
        return cmd

    def start(self, deadline_seconds: float = READY_SECONDS) -> UIServer:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.process = subprocess.Popen(self.command(), env=env, start_new_session=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + deadline_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace")[-2000:] if self.process.stderr else ""
                self.process = None
                raise UIError(f"the MLflow UI exited while starting on port {self.port}: {err.strip()}; "
                              f"is the port in use? try --port 0 for a free one")
            if self.ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise UIError(f"the MLflow UI did not answer on {self.base_url} within {deadline_seconds:.0f} s")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self, grace_seconds: float = 10.0) -> None:
        """End the server's whole process group: SIGTERM, then SIGKILL after a grace period."""
        if self.process is None:
            return
        group = self.process.pid  # its own session: the group id is its pid
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, sig)
            try:
                self.process.wait(timeout=grace_seconds)
            except subprocess.TimeoutExpired:
                continue
            if not group_alive(group):
                break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def __enter__(self) -> UIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------- the view
def column(kind: str, key: str) -> str:
    """A runs-table column id as MLflow's UI writes it (``metrics.`delta_m```)."""
    return f"{kind}.`{key}`"


def shown_metrics(metric_keys: set[str]) -> list[str]:
    """The comparison's metric columns among the keys the cell runs logged."""
    means = sorted(k for k in metric_keys if k.startswith("main.mean_"))
    wanted = [*FIRST_METRICS, *means, *COST_METRICS]
    return [k for k in wanted if k in metric_keys] or [*FIRST_METRICS, "budget_ratio", "params", "flops"]


def comparison_view(metric_keys: set[str]) -> dict[str, Any]:
    """The runs table's state: search facets and UI state, the fields MLflow's saved views hold."""
    metrics = shown_metrics(metric_keys)
    return {
        # search facets (MLflow's URL keys)
        "searchFilter": "", "orderByKey": column("metrics", metrics[0]), "orderByAsc": False,
        "startTime": "ALL", "lifecycleFilter": "Active", "modelVersionFilter": "All Runs", "datasetsFilter": [],
        # UI state
        "selectedColumns": [column("attributes", "Dataset"), *(column("metrics", k) for k in metrics)],
        # metrics right after the run names (MLflow would sort them by name, after the attributes)
        "columnOrder": [RUN_NAME, *(column("metrics", k) for k in metrics), column("attributes", "Dataset")],
        "columnWidths": {RUN_NAME: 380},  # room for a group's label ("bb.method: ..., bb.budget: ...")
        "groupBy": {"aggregateFunction": "average",
                    "groupByKeys": [{"mode": "tag", "groupByData": tag} for tag in GROUP_TAGS]},
        "groupsExpanded": {}, "runsExpanded": {}, "runsPinned": [], "runsHidden": [], "runsVisibilityMap": {},
        "runsHiddenMode": "SHOW_ALL", "viewMaximized": False, "runListHidden": False,
        "useGroupedValuesInCharts": True, "hideEmptyCharts": True,
    }


def save_view(tracking: Tracking) -> str:
    """Save the comparison as a named view of the experiment; return its id (the URL's share key)."""
    frame = tracking.search("tags.`bb.kind` = 'cell'")
    keys = {c[len("metrics."):] for c in frame.columns if c.startswith("metrics.") and frame[c].notna().any()}
    state = comparison_view(keys)
    # MLflow's saved-view envelope: name and time readable, the state a JSON string (a few hundred chars)
    value = json.dumps({"name": VIEW_NAME, "createdAt": int(time.time() * 1000), "state": json.dumps(state)})
    tracking.set_experiment_tags({VIEW_TAG_PREFIX + VIEW_ID: value})
    return VIEW_ID


def runs_url(base_url: str, experiment_id: str, view_id: str | None = VIEW_ID) -> str:
    """The experiment's runs table, as a table (not charts), in the saved view."""
    query = "?workflowType=machine_learning&compareRunsMode=TABLE" + (f"&viewStateShareKey={view_id}" if view_id else "")
    return f"{base_url}/#/experiments/{experiment_id}/runs{query}"


def serve(uri: str | None, experiment: str, port: int = 5000, host: str = HOST) -> int:
    """Start the UI, print the runs view of ``experiment``, wait for Ctrl-C or SIGTERM, stop everything."""
    if port:
        check_port_free(host, port)
    if host not in (HOST, "localhost"):
        print(f"warning: the UI listens on {host}: anyone who can reach this machine can read and change "
              "the runs; 127.0.0.1 keeps it to this machine", file=sys.stderr, flush=True)
    tracking = Tracking(uri, experiment)  # tags the experiment as model training if it is not yet
    view = save_view(tracking)
    server = UIServer(tracking.uri, port, tracking.root / ARTIFACT_DIR, host=host)
    try:
        server.start()
        assert server.process is not None
        print(f"MLflow UI (process group {server.process.pid}) on {tracking.uri}", flush=True)
        print(runs_url(server.base_url, tracking.experiment_id, view), flush=True)
        print("Ctrl-C (or SIGTERM) stops it", flush=True)
        server.process.wait()
        return 0
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (branchbench.interrupts)
        return 0
    finally:
        server.stop()
