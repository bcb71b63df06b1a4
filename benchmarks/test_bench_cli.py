"""How fast the command line answers: `--help`, a usage error and `methods -v`, each in a fresh interpreter.

Run with ``pytest benchmarks/test_bench_cli.py --benchmark-enable``. Targets
(issue: "A CLI that answers at once"): `--help` and a usage error under 1 s,
`methods -v` under 3 s on an idle 2-core machine. `import torch` alone is timed
beside them, as the reference a lazy CLI avoids.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

COMMANDS = {
    "help": [sys.executable, "-m", "branchbench.cli", "--help"],
    "usage_error": [sys.executable, "-m", "branchbench.cli", "run", "--seed", "x"],
    "methods_verbose": [sys.executable, "-m", "branchbench.cli", "methods", "-v"],
    "import_torch": [sys.executable, "-c", "import torch"],
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_cli_wall_time(benchmark, name):
    def call() -> int:
        return subprocess.run(COMMANDS[name], capture_output=True, timeout=120).returncode

    code = benchmark.pedantic(call, rounds=5, iterations=1, warmup_rounds=1)
    assert code == (2 if name == "usage_error" else 0)
