"""Learn-to-Branch: one search step of the supernet next to one shared-bottom step.

Run: ``python -m pytest benchmarks/test_bench_learn_to_branch.py --benchmark-enable``.
On the default synthetic cell (9 tasks, 4 blocks of width 16, batch 128), at
the sweep's budgets (widths [1, 3, 3, 4] at 2.5x, [1, 7, 7, 8] at 5x) and
uncapped ([9, 9, 9, 9]). The supernet follows BranchedNet's fuse rule (a plain
loop over nodes on the CPU), so the two step times are comparable. A search
step after warm-up is one weight step plus one logit step.
"""

from __future__ import annotations

import pytest
import torch

from branchbench.core.budget import Budget
from branchbench.core.net import BranchedNet
from branchbench.core.plan import Plan
from branchbench.core.tasks import multitask_loss
from branchbench.datasets.synthetic import Synthetic
from branchbench.core.gumbel import TemperatureSchedule
from branchbench.methods.learn_to_branch import BranchingSupernet, derive_widths

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bench():
    return Synthetic().load()


def _step(model, params, bench, x, y):
    optimizer = torch.optim.Adam(params, lr=1e-3)

    def run():
        optimizer.zero_grad(set_to_none=True)
        loss, _ = multitask_loss(bench.tasks, model(x), y)
        loss.backward()
        optimizer.step()

    return run


def _batch(bench):
    split = bench.splits["train"]
    return split.x[:128], {t: v[:128] for t, v in split.y.items()}


def test_shared_bottom_step(benchmark, bench):
    torch.manual_seed(0)
    net = BranchedNet(Plan.shared_bottom(bench.task_names, bench.backbone.block_names), bench.backbone, bench.tasks)
    benchmark(_step(net, list(net.parameters()), bench, *_batch(bench)))


@pytest.mark.parametrize("ratio", [2.5, 5.0, None])
@pytest.mark.parametrize("phase", ["weights", "logits"])
def test_ltb_search_step(benchmark, bench, phase, ratio):
    torch.manual_seed(0)
    widths = derive_widths(bench.backbone.block_params, len(bench.tasks), Budget(ratio).cap(bench.backbone))
    net = BranchingSupernet(bench.backbone, bench.tasks, widths)
    net.tau = TemperatureSchedule()(0.5)
    params = net.arch_parameters() if phase == "logits" else [
        p for p in net.parameters() if all(p is not q for q in net.arch_parameters())
    ]
    benchmark.extra_info["widths"] = widths
    benchmark(_step(net, params, bench, *_batch(bench)))
