"""Where a result came from: code version, package versions, device and thread count.

Logged as ``bb.*`` tags beside every cell and sweep run, so a report can name
the commit it was made from and a reader can tell two machines' numbers apart.
"""

from __future__ import annotations

import platform
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "numpy", "scikit-learn", "mlflow", "pandas", "scipy")


@cache
def code_version() -> tuple[str, bool]:
    """The git commit of the branchbench checkout and whether it has local changes.

    Outside a git checkout (an installed wheel): ``branchbench-<version>``.
    """
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout.strip()
        )
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        try:
            return f"branchbench-{metadata.version('branchbench')}", False
        except metadata.PackageNotFoundError:
            return "unknown", False


def device_label(device: Any) -> str:
    """A readable name of the device a run used (the GPU's name on CUDA)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()})"


def environment_tags(device: Any) -> dict[str, str]:
    """``bb.*`` tags: code version, device, threads and package versions."""
    import torch

    commit, dirty = code_version()
    tags = {
        "bb.code_version": commit,
        "bb.code_dirty": str(dirty).lower(),
        "bb.device": device_label(device),
        "bb.threads": str(torch.get_num_threads()),
        "bb.version.python": platform.python_version(),
    }
    for package in PACKAGES:
        try:
            tags[f"bb.version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return tags
