"""BranchedNet forward+backward timings on CPU: fused vs plain sibling execution.

Run with ``pytest benchmarks --benchmark-enable`` (the default test run disables
benchmarks and collects only ``tests/``). MLP backbone 64 -> 4 x 256, batch 256,
for shared-bottom, a branched tree (groups of 3 tasks split at the middle block)
and independent networks, at 9 and 40 tasks. ``benchmarks/gpu_branchednet.py``
times the same configurations on a GPU.
"""

from __future__ import annotations

import pytest
import torch
from gpu_branchednet import make_plan  # one definition of the benchmarked plans

from branchbench.core.backbones import mlp_backbone
from branchbench.core.net import BranchedNet
from branchbench.core.tasks import TaskSpec

BATCH = 256
INPUT_DIM = 64
WIDTHS = (256, 256, 256, 256)


@pytest.mark.parametrize("fuse", [False, True], ids=["plain", "fused"])
@pytest.mark.parametrize("kind", ["shared", "tree", "independent"])
@pytest.mark.parametrize("n_tasks", [9, 40])
def test_forward_backward(benchmark, n_tasks, kind, fuse):
    torch.manual_seed(0)
    backbone = mlp_backbone(INPUT_DIM, WIDTHS)
    tasks = [TaskSpec(f"t{i}", "binary") for i in range(n_tasks)]
    plan = make_plan(kind, [t.name for t in tasks], backbone.block_names)
    net = BranchedNet(plan, backbone, tasks, fuse=fuse)
    x = torch.randn(BATCH, INPUT_DIM)

    def step() -> None:
        net.zero_grad(set_to_none=True)
        out = net(x)
        sum(v.mean() for v in out.values()).backward()

    benchmark.group = f"{n_tasks} tasks, {kind}"
    benchmark.extra_info.update(
        fused_levels=net.fused_levels, params=net.param_count(), threads=torch.get_num_threads()
    )
    benchmark.pedantic(step, rounds=10, iterations=1, warmup_rounds=2)
