"""Tiny benchmarks for tests (importable as `from _tiny import tiny_bench`)."""

from __future__ import annotations

import dataclasses

from branchbench.datasets.synthetic import Synthetic

TINY = dict(tasks=4, groups=2, input_dim=8, n_train=256, n_val=128, n_test=128, width=8, depth=3)


def tiny_bench(epochs: int = 3, **options):
    """A 4-task, 2-group synthetic benchmark that trains in well under a second."""
    bench = Synthetic(**{**TINY, **options}).load()
    # Adam at 1e-3 (synthetic version 1's rate), which these tiny tests were written for; the
    # dataset's own 2e-2 suits its default size, not this 4-task toy
    protocol = bench.protocol.replace(epochs=epochs, batch_size=64, early_stopping=0, lr=1e-3)
    return dataclasses.replace(bench, protocol=protocol)
