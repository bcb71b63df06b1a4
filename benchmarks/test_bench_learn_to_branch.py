"""Learn-to-Branch: one search step (a weight step plus a logit step) next to one shared-bottom step.

Run: ``python -m pytest benchmarks/test_bench_learn_to_branch.py --benchmark-enable -s``.
The issue's setting: synthetic data with 6 tasks (3 groups; 4 blocks of width 16,
batch 128), budgets 2.5x (widths [1, 3, 3, 4]) and 5x ([3, 6, 6, 6]), and the
uncapped variant ([6, 6, 6, 6]); one thread, CPU time. Each step is what the
trainer does: zero the gradients, forward, backward, one optimiser step (Adam
over the weights, or over the logits), on its own batch, with the supernet's
``phase`` set as the search's hook sets it. ``full_backward`` runs both steps
with ``phase=None``: every backward pass computes every gradient, as before the
logit step stopped back-propagating into the weights (the forward restructuring
of version 2 is in both).

``test_search_over_shared_bottom`` measures the ratio the issue asks for side by
side: the shared-bottom step and the search step alternate in one process, CPU
time (``time.process_time``) per kind summed over the rounds; the ratios are in
``extra_info`` and printed (``-s``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import torch

from branchbench.core.budget import Budget
from branchbench.core.gumbel import TemperatureSchedule
from branchbench.core.net import BranchedNet
from branchbench.core.plan import Plan
from branchbench.core.tasks import multitask_loss
from branchbench.datasets.synthetic import Synthetic
from branchbench.methods.learn_to_branch import BranchingSupernet, derive_widths
from branchbench.seeds import DEVELOPMENT

torch.set_num_threads(1)
BATCH = 128
RATIOS = [2.5, 5.0, None]


@pytest.fixture(scope="module")
def bench():
    return Synthetic(tasks=6, groups=3, data_seed=DEVELOPMENT[0]).load()  # step time only; a development draw


def _batches(bench):
    split = bench.splits["train"]
    return [(split.x[i : i + BATCH], {t: v[i : i + BATCH] for t, v in split.y.items()}) for i in (0, BATCH)]


def _step(model, params, bench, batch, phase: str | None = None) -> Callable[[], None]:
    optimizer = torch.optim.Adam(params, lr=1e-3)
    x, y = batch

    def run() -> None:
        model.phase = phase
        optimizer.zero_grad(set_to_none=True)
        model.zero_grad(set_to_none=True)
        loss, _ = multitask_loss(bench.tasks, model(x), y)
        loss.backward()
        optimizer.step()
        model.phase = None

    return run


def shared_bottom_step(bench) -> Callable[[], None]:
    torch.manual_seed(0)
    net = BranchedNet(Plan.shared_bottom(bench.task_names, bench.backbone.block_names), bench.backbone, bench.tasks)
    return _step(net, list(net.parameters()), bench, _batches(bench)[0])


def search_step(bench, ratio: float | None, full_backward: bool = False) -> tuple[Callable[[], None], list[int]]:
    """A weight step then a logit step (each on its own batch), mid-search (soft samples)."""
    torch.manual_seed(0)
    widths = derive_widths(bench.backbone.block_params, len(bench.tasks), Budget(ratio).cap(bench.backbone))
    net = BranchingSupernet(bench.backbone, bench.tasks, widths)
    net.hard, net.tau = False, TemperatureSchedule()(0.5)
    first, second = _batches(bench)
    weights = _step(net, net.weight_parameters(), bench, first, None if full_backward else "weights")
    logits = _step(net, net.arch_parameters(), bench, second, None if full_backward else "logits")

    def run() -> None:
        weights()
        logits()

    return run, widths


def test_shared_bottom_step(benchmark, bench):
    benchmark(shared_bottom_step(bench))


@pytest.mark.parametrize("full_backward", [False, True], ids=["lean", "full_backward"])
@pytest.mark.parametrize("ratio", RATIOS)
def test_ltb_search_step(benchmark, bench, ratio, full_backward):
    run, widths = search_step(bench, ratio, full_backward)
    benchmark.extra_info["widths"] = widths
    benchmark(run)


@pytest.mark.parametrize("ratio", RATIOS)
def test_search_over_shared_bottom(benchmark, bench, ratio):
    kinds = {
        "shared_bottom": shared_bottom_step(bench),
        "search": search_step(bench, ratio)[0],
        "search_full_backward": search_step(bench, ratio, full_backward=True)[0],
    }
    cpu = dict.fromkeys(kinds, 0.0)

    def alternate() -> None:
        for kind, run in kinds.items():
            start = time.process_time()
            run()
            cpu[kind] += time.process_time() - start

    for _ in range(20):  # warm-up rounds, not counted
        alternate()
    cpu.update(dict.fromkeys(kinds, 0.0))
    benchmark.pedantic(alternate, rounds=300, iterations=1)
    ratios = {f"{kind}/shared_bottom": cpu[kind] / cpu["shared_bottom"] for kind in kinds if kind != "shared_bottom"}
    benchmark.extra_info.update({k: round(v, 3) for k, v in ratios.items()})
    print(f"\nbudget {ratio}: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
