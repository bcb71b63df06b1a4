"""Time BranchedNet forward+backward per step, fused vs plain sibling execution.

A standalone script for a GPU (the pytest-benchmark file times the same
configurations on CPU)::

    python benchmarks/gpu_branchednet.py --device cuda --dtype bf16 --batch 256 --tasks 9 40

MLP backbone 64 -> 4 x 256 (``--widths``); plans: shared-bottom, a branched tree
(groups of 3 tasks split at the middle block) and independent networks. Each
configuration is warmed up, then timed over ``--steps`` steps between
``torch.cuda.synchronize()`` calls. The ``rule`` column is what
:func:`branchbench.core.net.fuse_rule` picks per block (F = fused, . = plain).
"""

from __future__ import annotations

import argparse
import time

import torch

from branchbench.core.backbones import mlp_backbone
from branchbench.core.net import BranchedNet, fuse_rule
from branchbench.core.plan import Plan
from branchbench.core.tasks import TaskSpec

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
KINDS = ("shared", "tree", "independent")


def make_plan(kind: str, names: list[str], blocks: list[str]) -> Plan:
    if kind == "shared":
        return Plan.shared_bottom(names, blocks)
    if kind == "independent":
        return Plan.independent(names, blocks)
    mid = len(blocks) // 2  # groups of ~3 tasks branch at the middle block
    groups = [names[i : i + 3] for i in range(0, len(names), 3)]
    return Plan.from_partitions(names, blocks, [[names]] * mid + [groups] * (len(blocks) - mid))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(
    net: BranchedNet, x: torch.Tensor, dtype: torch.dtype, steps: int, warmup: int
) -> float:
    """Mean milliseconds of one forward+backward step."""
    autocast = torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step() -> None:
        net.zero_grad(set_to_none=True)
        with autocast:
            out = net(x)
            loss = sum(v.float().mean() for v in out.values())
        loss.backward()

    for _ in range(warmup):
        step()
    sync(x.device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(x.device)
    return (time.perf_counter() - start) / steps * 1e3


def check_agreement(backbone, device: torch.device, dtype: torch.dtype, batch: int) -> None:
    """Print how far fused and plain differ (outputs, grads) on a non-tree plan with skips."""
    tasks = [TaskSpec(f"t{i}", "binary") for i in range(9)]
    nodes = {t.name: [i % 3, None if i % 4 == 0 else i % 2] for i, t in enumerate(tasks)}
    for name in nodes:
        nodes[name] += [int(name[1:]) % 5] * (len(backbone.blocks) - 2)
    plan = Plan([t.name for t in tasks], backbone.block_names, nodes)
    torch.manual_seed(0)
    nets = [BranchedNet(plan, backbone, tasks, fuse=f, device=device) for f in (False, True)]
    nets[1].load_state_dict(nets[0].state_dict())
    x = torch.randn(batch, backbone.input_shape[0], device=device)
    outs = []
    for net in nets:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = net(x)
        sum(v.float().pow(2).mean() for v in out.values()).backward()
        outs.append(out)
    d_out = max((outs[0][t] - outs[1][t]).abs().max().item() for t in outs[0])
    grads = dict(nets[0].named_parameters())
    d_grad = max((p.grad - grads[k].grad).abs().max().item() for k, p in nets[1].named_parameters())
    print(
        f"# fused vs plain ({plan.n_blocks} blocks, non-tree, skips): max |d out| {d_out:.2e}, "
        f"max |d grad| {d_grad:.2e}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--tasks", type=int, nargs="+", default=[9, 40])
    parser.add_argument("--input-dim", type=int, default=64)
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 256, 256, 256])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument(
        "--check", action="store_true", help="first compare fused and plain outputs"
    )
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    backbone = mlp_backbone(args.input_dim, tuple(args.widths))
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu x{torch.get_num_threads()}"
    )
    print(f"# {name}, {args.dtype}, batch {args.batch}, {backbone.name}, torch {torch.__version__}")
    if args.check:
        check_agreement(backbone, device, dtype, args.batch)
    header = f"{'tasks':>5}  {'plan':<11}  {'plain ms':>9}  {'fused ms':>9}  {'speedup':>7}  rule"
    print(header)
    print("-" * len(header))
    for n_tasks in args.tasks:
        tasks = [TaskSpec(f"t{i}", "binary") for i in range(n_tasks)]
        for kind in KINDS:
            plan = make_plan(kind, [t.name for t in tasks], backbone.block_names)
            x = torch.randn(args.batch, args.input_dim, device=device)
            ms = {}
            for fuse in (False, True):
                torch.manual_seed(0)
                net = BranchedNet(plan, backbone, tasks, fuse=fuse, device=device)
                ms[fuse] = time_step(net, x, dtype, args.steps, args.warmup)
                del net
            rule = [fuse_rule(backbone, device, plan, level) for level in range(plan.n_blocks)]
            rule_str = "".join("F" if f else "." for f in rule)
            print(
                f"{n_tasks:>5}  {kind:<11}  {ms[False]:>9.2f}  {ms[True]:>9.2f}  "
                f"{ms[False] / ms[True]:>6.2f}x  {rule_str}"
            )


if __name__ == "__main__":
    main()
