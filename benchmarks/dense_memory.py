"""Peak host and GPU memory of one dense training step, shared-bottom vs independent networks.

Each configuration runs in a fresh subprocess (peak RSS is a per-process high
water mark), builds the five Taskonomy-like tasks (segmentation with 17
classes, normals, depth, keypoints, edges) on
:func:`~branchbench.core.backbones.dense_backbone`, random inputs and targets
(with invalid pixels) of one batch, and runs one training step as the
trainer does (bf16 autocast and channels_last on CUDA, Adam, the summed task
losses; the first step also allocates Adam's state)::

    python benchmarks/dense_memory.py                        # configs/taskonomy.toml: DeepLab ResNet-34, 256 px, batch 16
    python benchmarks/dense_memory.py --backbone dense       # the light residual encoder of the small configs
    python benchmarks/dense_memory.py --size 32 --batch 4    # a quick CPU check
    python benchmarks/dense_memory.py --device cuda

Columns: ``rss_before`` (MiB resident after building the model, optimiser
and batch), ``rss_peak`` (the process's peak RSS, ``resource.getrusage``),
``step_extra`` (their difference: what the step added at its peak),
``py_peak`` (tracemalloc's peak of Python-level allocations during the step;
torch's tensor memory is not seen by it), and on CUDA ``cuda_peak``
(``torch.cuda.max_memory_allocated`` over the step) and ``cuda_before``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tracemalloc

import torch

PLANS = ("shared_bottom", "independent")
MIB = 2**20


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / MIB


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(plan_name: str, size: int, batch: int, channels: tuple[int, ...], device: str,
            backbone_name: str = "deeplab") -> dict[str, float]:
    """One training step of ``plan_name``; memory figures in MiB."""
    from branchbench.core.backbones import dense_backbone
    from branchbench.core.deeplab import deeplab_resnet34_backbone
    from branchbench.core.dense import TASKONOMY_SEG_CLASSES
    from branchbench.core.net import BranchedNet
    from branchbench.core.plan import Plan
    from branchbench.core.tasks import TaskSpec, multitask_loss

    torch.manual_seed(0)
    dev = torch.device(device)
    tasks = [
        TaskSpec("seg", "segmentation", n_outputs=TASKONOMY_SEG_CLASSES),
        TaskSpec("normal", "normals"),
        TaskSpec("depth", "depth"),
        TaskSpec("keypoints", "keypoints"),
        TaskSpec("edges", "edges"),
    ]
    if backbone_name == "deeplab":  # the Taskonomy protocol's default (AdaShare's network)
        backbone = deeplab_resnet34_backbone(size)
    else:
        backbone = dense_backbone(3, size, channels=channels)
    names = [t.name for t in tasks]
    plan = getattr(Plan, plan_name)(names, backbone.block_names)
    net = BranchedNet(plan, backbone, tasks, device=dev)
    cuda = dev.type == "cuda"
    if cuda:
        net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size, device=dev)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    invalid = torch.rand(batch, size, size, device=dev) < 0.1
    y = {
        "seg": torch.randint(0, TASKONOMY_SEG_CLASSES, (batch, size, size), device=dev).to(torch.uint8).masked_fill(invalid, 255),
        "normal": torch.nn.functional.normalize(torch.randn(batch, 3, size, size, device=dev), dim=1)
        .masked_fill(invalid.unsqueeze(1), float("nan")),
        "depth": torch.rand(batch, size, size, device=dev).masked_fill(invalid, float("nan")),
        "keypoints": torch.rand(batch, size, size, device=dev) * 2 - 1,
        "edges": torch.rand(batch, size, size, device=dev) * 2 - 1,
    }
    before = _rss_mib()
    if cuda:
        torch.cuda.synchronize(dev)
        cuda_before = torch.cuda.memory_allocated(dev) / MIB
        torch.cuda.reset_peak_memory_stats(dev)
    tracemalloc.start()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
        loss, _ = multitask_loss(tasks, net(x), y)
    loss.backward()
    optimizer.step()
    if cuda:
        torch.cuda.synchronize(dev)
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = _peak_rss_mib()
    out = {
        "plan": plan_name, "backbone": backbone_name, "size": size, "batch": batch, "params": net.param_count(),
        "loss": float(loss), "rss_before": before, "rss_peak": peak, "step_extra": peak - before,
        "py_peak": py_peak / MIB,
    }
    if cuda:
        out.update({"cuda_before": cuda_before, "cuda_peak": torch.cuda.max_memory_allocated(dev) / MIB})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (configs/taskonomy.toml: 256)")
    parser.add_argument("--backbone", default="deeplab", choices=["deeplab", "dense"],
                        help="deeplab: the Taskonomy protocol's DeepLab ResNet-34; dense: the light encoder")
    parser.add_argument("--batch", type=int, default=16, help="batch size (AdaShare's Taskonomy batch: 16)")
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64, 128, 256], help="encoder widths")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--plans", nargs="+", default=list(PLANS), choices=PLANS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one", choices=PLANS, help=argparse.SUPPRESS)  # the subprocess's own run
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(args.one, args.size, args.batch, tuple(args.channels), args.device, args.backbone)))
        return
    rows = []
    for plan in args.plans:
        command = [sys.executable, __file__, "--one", plan, "--size", str(args.size), "--batch", str(args.batch),
                   "--device", args.device, "--threads", str(args.threads), "--backbone", args.backbone,
                   "--channels", *map(str, args.channels)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"{plan}: the measuring subprocess failed:\n{done.stderr}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    keys = [k for k in rows[0] if k not in ("size", "batch", "backbone")]
    encoder = "DeepLab ResNet-34" if args.backbone == "deeplab" else f"encoder {args.channels}"
    print(f"one training step, {args.size}x{args.size}, batch {args.batch}, device {args.device}, "
          f"{encoder} (memory in MiB)")
    print("  ".join(f"{k:>12}" for k in keys))
    for row in rows:
        print("  ".join(f"{row[k]:>12.1f}" if isinstance(row[k], float) else f"{row[k]:>12}" for k in keys))


if __name__ == "__main__":
    main()
