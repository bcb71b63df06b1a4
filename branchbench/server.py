"""``branchbench server``: an MLflow tracking server for a team or a cluster.

Cells running on many machines cannot share a SQLite file (each machine would
write its own copy, or corrupt a networked one), so a multi-machine sweep logs
to a tracking server, the one process that writes the store. The server keeps
runs in ``--backend-store-uri`` (a SQLite file for a small team, PostgreSQL
for many writers) and serves artifacts from ``--artifacts-destination``
(proxied: clients upload through the server, so workers need no access to
that folder or bucket). It listens on 127.0.0.1 unless told otherwise;
MLflow's own ``--allowed-hosts`` and ``--cors-allowed-origins`` guards are
passed through. It runs as its own process group (the machinery of
:class:`~branchbench.ui.UIServer`), so Ctrl-C or SIGTERM stops every process
it started.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

from branchbench.tracking import (
    ARTIFACT_DIR,
    TrackingError,
    check_uri,
    default_uri,
    local_root,
    sqlite_path,
)
from branchbench.ui import HOST, UIServer, check_port_free

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class TrackingServer(UIServer):
    """An ``mlflow server`` process group with proxied artifacts; ``start()`` returns once it answers."""

    def __init__(self, backend: str, artifacts: str, port: int = 0, host: str = HOST, workers: int = 1,
                 allowed_hosts: str | None = None, cors_origins: str | None = None) -> None:
        super().__init__(backend, port, None, host)
        self.artifacts = artifacts
        self.workers = workers
        self.allowed_hosts = allowed_hosts
        self.cors_origins = cors_origins

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.uri,
               "--serve-artifacts", "--artifacts-destination", self.artifacts,
               "--host", self.host, "--port", str(self.port), "--workers", str(self.workers)]
        if self.allowed_hosts:
            cmd += ["--allowed-hosts", self.allowed_hosts]
        if self.cors_origins:
            cmd += ["--cors-allowed-origins", self.cors_origins]
        return cmd


def backend_uri(uri: str | None) -> str:
    """The server's store: a database URI (default: ``mlruns.db`` in the working directory)."""
    uri = uri or default_uri(os.getcwd())
    check_uri(uri)
    if urlparse(uri).scheme.split("+")[0].lower() in ("http", "https", "databricks"):
        raise TrackingError(f"--backend-store-uri {uri}: a server keeps its runs in a database, not in another "
                            "server; give sqlite:///<file> or postgresql://user@host/db")
    return uri


def artifact_destination(path: str | None, backend: str) -> str:
    """Where served artifacts go: a URI (s3://, gs://, file://) as given, a path made absolute."""
    if path is None:
        return (local_root(backend) / ARTIFACT_DIR).as_uri()
    if "://" in path:
        return path
    return Path(path).expanduser().resolve().as_uri()


def local_experiments(backend: str) -> list[str]:
    """Experiments of the store whose artifacts live in a local folder (made by a local sweep)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=backend)
    return [e.name for e in client.search_experiments()
            if (e.artifact_location or "").startswith(("file:", "/")) and e.name != "Default"]


def serve(backend: str | None, artifacts: str | None, port: int = 5000, host: str = HOST, workers: int | None = None,
          allowed_hosts: str | None = None, cors_origins: str | None = None) -> int:
    """Start the server, print the URI sweeps log to, wait for Ctrl-C or SIGTERM, stop everything."""
    uri = backend_uri(backend)
    destination = artifact_destination(artifacts, uri)
    if port:
        check_port_free(host, port)
    if host not in LOOPBACK:
        print(f"warning: the server listens on {host}: anyone who can reach this machine can read and change "
              "the runs (MLflow has no login by default); keep it inside a trusted network", file=sys.stderr,
              flush=True)
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        local = local_experiments(uri) if db.exists() else []
        if local:
            print(f"warning: experiment(s) {local} of {uri} keep artifacts in a local folder, so runs logged to "
                  "them from other machines cannot store artifacts; sweep into a new --experiment",
                  file=sys.stderr, flush=True)
    server = TrackingServer(uri, destination, port, host, workers or (1 if db is not None else 4),
                            allowed_hosts, cors_origins)
    try:
        server.start()
        assert server.process is not None
        name = socket.getfqdn() if host in ("0.0.0.0", "::") else host
        print(f"MLflow tracking server (process group {server.process.pid}): runs in {uri}, artifacts in "
              f"{destination}", flush=True)
        print(f"tracking URI: http://{name}:{server.port}  (branchbench sweep ... --tracking-uri "
              f"http://{name}:{server.port}; open it in a browser to see the runs)", flush=True)
        print("Ctrl-C (or SIGTERM) stops it", flush=True)
        code = server.process.wait()
        if code:
            print(f"the MLflow server exited with status {code}", file=sys.stderr, flush=True)
        return 1 if code else 0
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (branchbench.interrupts)
        return 0
    finally:
        server.stop()
