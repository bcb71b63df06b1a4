"""`branchbench server`: a tracking server clients log runs and artifacts to; SIGTERM stops every process."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from test_ui import Lines

from branchbench.cli import main
from branchbench.server import TrackingServer, artifact_destination
from branchbench.tracking import Tracking, default_uri
from branchbench.ui import free_port, group_alive


def test_the_server_command_serves_artifacts_and_passes_mlflows_guards_through(tmp_path):
    server = TrackingServer("postgresql://bb@db/runs", "s3://bucket/bb", port=5001, host="0.0.0.0", workers=4,
                            allowed_hosts="mlflow.lab.org,10.0.*", cors_origins="https://notebooks.lab.org")
    command = server.command()
    assert command[1:4] == ["-m", "mlflow", "server"]
    pairs = dict(zip(command[4:], command[5:], strict=False))
    assert pairs["--backend-store-uri"] == "postgresql://bb@db/runs"
    assert pairs["--artifacts-destination"] == "s3://bucket/bb" and "--serve-artifacts" in command
    assert pairs["--host"] == "0.0.0.0" and pairs["--port"] == "5001" and pairs["--workers"] == "4"
    assert pairs["--allowed-hosts"] == "mlflow.lab.org,10.0.*"
    assert pairs["--cors-allowed-origins"] == "https://notebooks.lab.org"
    plain = TrackingServer("sqlite:///x.db", "file:///a").command()
    assert "--allowed-hosts" not in plain and "--cors-allowed-origins" not in plain  # MLflow's own defaults
    assert artifact_destination(None, default_uri(tmp_path)) == (tmp_path / "mlartifacts").as_uri()
    assert artifact_destination("gs://b/x", "sqlite:///x.db") == "gs://b/x"


def test_a_store_the_server_cannot_keep_is_refused(tmp_path, capsys):
    assert main(["server", "--backend-store-uri", "http://10.0.0.8:5000"]) == 2
    assert "database" in capsys.readouterr().err
    assert main(["server", "--backend-store-uri", str(tmp_path)]) == 2
    assert "sqlite:///" in capsys.readouterr().err


def test_the_server_keeps_a_clients_runs_and_artifacts_and_sigterm_stops_every_process(tmp_path):
    port = free_port()
    artifacts = tmp_path / "artifacts"
    proc = subprocess.Popen(
        [sys.executable, "-m", "branchbench.cli", "server", "--backend-store-uri", default_uri(tmp_path / "store"),
         "--artifacts-destination", str(artifacts), "--port", str(port), "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = Lines(proc)
    try:
        group = int(lines.wait_for(r"process group (\d+)", 120).group(1))
        uri = lines.wait_for(r"tracking URI: (http://\S+)", 10).group(1)
        assert uri == f"http://127.0.0.1:{port}"

        client = Tracking(uri, "team")  # as a sweep on another machine would log
        run_id = client.start_run("cell", {"bb.kind": "cell"})
        client.log_object(run_id, "plan.json", {"nodes": [0, 1]})
        client.end_run(run_id)
        assert Tracking(uri, "team").load_json(run_id, "plan.json") == {"nodes": [0, 1]}
        assert [p.name for p in artifacts.rglob("plan.json")] == ["plan.json"]  # kept where the server was told
        assert (tmp_path / "store" / "mlruns.db").exists()

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not group_alive(group)  # the server's workers went with it
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


def test_the_server_refuses_a_port_in_use(tmp_path, capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["server", "--backend-store-uri", default_uri(tmp_path), "--port", str(port)]) == 2
    assert f"port {port}" in capsys.readouterr().err
    assert not Path(tmp_path / "mlruns.db").exists()
