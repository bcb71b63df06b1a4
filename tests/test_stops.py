"""Clean stops and first starts: SIGTERM ends `run` and `ui` like Ctrl-C; two sweeps may create one store."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from _tiny import TINY
from test_cli import Lines
from test_runner import finished_per_cell, poll, write_config

from branchbench.tracking import DB_NAME, Tracking, default_uri
from branchbench.ui import free_port, group_alive


def cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "branchbench.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_sigterm_to_run_marks_the_run_killed_with_its_reason(tmp_path):
    uri = default_uri(tmp_path)
    data = [f"--set=dataset.{k}={v}" for k, v in TINY.items()]
    proc = cli("run", "--dataset", "synthetic", "--method", "independent", "--tracking-uri", uri, *data,
               "--set=protocol.epochs=1000", "--set=protocol.early_stopping=0")
    try:
        poll(lambda: any((tmp_path / "bb-checkpoints").glob("*/train.pt")) or proc.poll() is not None, 180,
                 "a checkpoint")
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, output
    assert "terminated by SIGTERM" in output
    [run] = Tracking(uri).runs("tags.`bb.kind` = 'cell'")
    assert run.info.status == "KILLED"
    assert run.data.tags["bb.failure"].startswith("terminated by SIGTERM")


def test_sigterm_to_ui_leaves_no_process_of_its_server(tmp_path):
    uri = default_uri(tmp_path)
    Tracking(uri)  # an empty store
    port = free_port()
    proc = cli("ui", "--tracking-uri", uri, "--port", str(port))
    lines = Lines(proc)
    group = int(lines.wait_for(r"process group (\d+)", 120).group(1))
    assert group_alive(group)
    proc.send_signal(signal.SIGTERM)
    lines.rest(timeout=60)
    assert proc.returncode == 0
    assert not group_alive(group)


def test_ui_refuses_a_port_in_use_before_starting(tmp_path, capsys):
    import socket

    from branchbench.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["ui", "--tracking-uri", default_uri(tmp_path), "--port", str(port)]) == 2
    assert f"port {port}" in capsys.readouterr().err
    assert not (tmp_path / DB_NAME).exists()


def test_two_sweeps_started_at_once_on_a_new_store_both_finish(tmp_path):
    config = write_config(tmp_path / "sweep.toml", ["shared_bottom", "random_tree"], epochs=2)
    store = tmp_path / "new-store"
    uri = default_uri(store)
    assert not Path(store / DB_NAME).exists()
    procs = [cli("sweep", str(config), "--tracking-uri", uri, "--no-report", "--quiet") for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    tracking = Tracking(uri)
    counts = finished_per_cell(tracking)
    assert len(counts) == 2 * 3 and set(counts.values()) == {1}, counts  # 2 seeds x (independent, sb, rt)
    [parent] = tracking.runs("tags.`bb.kind` = 'sweep'")
    assert parent.info.status == "FINISHED"  # closed by whichever session ended last
    outcomes = tracking.load_json(parent.info.run_id, "sweep/outcomes.json")
    assert sorted(o["hash"] for o in outcomes) == sorted(counts)
    assert all(o["status"] in ("finished", "skipped") for o in outcomes)
