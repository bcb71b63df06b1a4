"""Shared fixtures: tiny synthetic benchmarks and a throwaway MLflow store."""

from __future__ import annotations

import pytest
import torch
from _tiny import tiny_bench


@pytest.fixture(autouse=True)
def _one_thread():
    """Results must not depend on the thread count; tests pin it like the protocol does."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def bench():
    return tiny_bench()


@pytest.fixture(scope="session")
def store_dir(tmp_path_factory):
    """One SQLite store for the session (creating one takes seconds); tests use fresh experiments."""
    return tmp_path_factory.mktemp("store")


@pytest.fixture
def tracking(store_dir, request):
    from branchbench.tracking import Tracking, default_uri

    name = request.node.name.replace("[", "-").replace("]", "")
    return Tracking(default_uri(store_dir), experiment=f"test-{name}")
