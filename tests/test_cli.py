"""The command line answers at once, and a sweep shows its progress as it happens, also through a pipe."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from branchbench.tracking import Tracking, default_uri

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "configs" / "smoke.toml"
HEAVY = ("torch", "mlflow", "pandas")


def imported_after(code: str) -> tuple[int, list[str]]:
    """Run ``code`` (which sets ``rc``) in a fresh interpreter; the exit code and which heavy modules it imported."""
    script = (f"import sys\nfrom branchbench.cli import main\n{code}\n"
              f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    return done.returncode, eval(done.stdout.strip().splitlines()[-1])  # noqa: S307 - our own printed list


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], [], ["run", "--seed", "x"], ["nope"],
                                  ["sweep"], ["ui", "--port", "99999"]])
def test_help_and_usage_errors_import_neither_torch_nor_mlflow(argv):
    code, heavy = imported_after(f"rc = main({argv!r})\nassert rc in (0, 2), rc")
    assert code == 0 and heavy == [], heavy


class Lines:
    """A process's merged output, read line by line by a thread, with deadlines."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.queue: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=lambda: [self.queue.put(line) for line in proc.stdout], daemon=True).start()

    def wait_for(self, pattern: str, deadline_s: float) -> re.Match:
        """The first line (from now) matching ``pattern`` (a regular expression), as a match."""
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

    def rest(self, timeout: float = 120) -> list[str]:
        self.proc.wait(timeout=timeout)
        time.sleep(0.2)
        while not self.queue.empty():
            self.seen.append(self.queue.get())
        return self.seen


def sweep(config: Path, uri: str, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "branchbench.cli", "sweep", str(config), "--tracking-uri", uri, "--no-report",
           *extra]
    env = {**os.environ, "PYTHONUNBUFFERED": ""}  # as under tox or CI: stdout is a pipe, not a terminal
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def test_sweep_lines_appear_as_cells_run_and_end_in_a_summary(tmp_path):
    uri = default_uri(tmp_path)
    proc = sweep(SMOKE, uri)
    lines = Lines(proc)
    first = lines.wait_for("start  ", 180).string
    assert proc.poll() is None, "the first cell's line came only when the sweep ended (buffered output)"
    assert "synthetic-independent-s" in first  # dependencies run first
    lines.wait_for("finished synthetic-", 180)
    out = lines.rest()
    assert proc.returncode == 0, out
    ends = [line for line in out if line.startswith(("finished ", "skipped ", "failed "))]
    assert len(ends) == 8 and all("[" in line and "ETA" in line for line in ends)
    assert any("Δm" in line for line in ends)
    assert sum(line.startswith("start  ") for line in out) == 8
    summary = next(i for i, line in enumerate(out) if line.startswith("sweep done"))
    assert "finished 8" in out[summary]
    table = out[summary + 1 : summary + 6]
    assert table[0].split()[:3] == ["dataset", "method", "budget"]
    assert any(row.split()[1] == "oracle_tree" for row in table[1:])

    again = subprocess.run([sys.executable, "-m", "branchbench.cli", "sweep", str(SMOKE), "--tracking-uri", uri,
                            "--no-report", "--quiet"], capture_output=True, text=True, timeout=180)
    assert again.returncode == 0
    quiet = [line for line in again.stdout.splitlines() if line.strip()]
    assert quiet[0].startswith("sweep done") and "skipped 8" in quiet[0] and len(quiet) == 2

    # a dry run projects the time of the cells still to run from these finished runs
    more = tmp_path / "more.toml"
    more.write_text(SMOKE.read_text().replace("seeds = [0, 1]", "seeds = [0, 1, 2]"))
    dry = subprocess.run([sys.executable, "-m", "branchbench.cli", "sweep", str(more), "--tracking-uri", uri,
                          "--dry-run"], capture_output=True, text=True, timeout=180)
    assert dry.returncode == 0, dry.stderr
    assert "pending: 4" in dry.stdout and "done: 8" in dry.stdout
    assert "projected time: about" in dry.stdout and "for 4 pending cells" in dry.stdout


def test_sigterm_stops_a_sweep_like_ctrl_c_with_a_summary(tmp_path):
    config = tmp_path / "long.toml"
    config.write_text(SMOKE.read_text().replace("epochs = 2", "epochs = 400").replace("n_train = 128", "n_train = 512"))
    uri = default_uri(tmp_path)
    proc = sweep(config, uri)
    lines = Lines(proc)
    lines.wait_for("start  ", 180)
    checkpoints = tmp_path / "bb-checkpoints"
    deadline = time.monotonic() + 180
    while not any(checkpoints.glob("*/train.pt")) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out = lines.rest()
    assert proc.returncode == 143, out
    assert any(line.startswith("sweep interrupted") for line in out), out
    assert any("terminated by SIGTERM" in line for line in out)
    tracking = Tracking(uri)
    [killed] = tracking.runs("tags.`bb.kind` = 'cell'")
    assert killed.info.status == "KILLED" and "SIGTERM" in killed.data.tags["bb.failure"]
    [parent] = tracking.runs("tags.`bb.kind` = 'sweep'")
    assert parent.info.status == "KILLED"
