"""branchbench never lets MLflow phone home: its telemetry is off unless the user asks."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = (
    "import branchbench.tracking, os;"
    "from mlflow.telemetry.utils import is_telemetry_disabled;"
    "print(os.environ['MLFLOW_DISABLE_TELEMETRY'], is_telemetry_disabled())"
)


def _clean_env(**extra: str) -> dict[str, str]:
    # no CI / pytest markers, so MLflow's own "disabled in CI" shortcut does not apply
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "PYTHONPATH", "VIRTUAL_ENV")}
    return {**keep, **extra}


def test_mlflow_telemetry_is_off_by_default():
    out = subprocess.run([sys.executable, "-c", PROBE], env=_clean_env(), capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["true", "True"]


def test_an_explicit_user_setting_is_respected():
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=_clean_env(MLFLOW_DISABLE_TELEMETRY="false"),
        capture_output=True, text=True, check=True,
    )
    assert out.stdout.split()[0] == "false"
