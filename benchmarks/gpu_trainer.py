"""Check the trainer's CUDA path and measure its throughput (run on a GPU machine).

Trains a plan through :class:`branchbench.core.trainer.Trainer` exactly as a
cell does (data resident on the device, bf16 autocast when ``amp`` is
``auto``/``bf16``, channels_last for convolutional backbones) and prints
samples per second of training for each setting, plus whether the run stayed
finite. MLflow is not needed::

    python benchmarks/gpu_trainer.py --device cuda
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from branchbench.core.plan import Plan
from branchbench.core.retrain import build_net
from branchbench.core.trainer import Trainer
from branchbench.plugins import create_dataset


def throughput(bench, plan, device, amp: str, epochs: int) -> tuple[float, float]:
    protocol = bench.protocol.replace(epochs=epochs, amp=amp, early_stopping=0)
    bench = dataclasses.replace(bench, protocol=protocol)
    trainer = Trainer(protocol, device=device, seed=0)
    net = build_net(bench, plan, 0)
    trainer.fit(net, dataclasses.replace(bench, protocol=protocol.replace(epochs=1)))  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = trainer.fit(net, bench, early_stopping=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return epochs * len(bench.splits["train"]) / seconds, result.history[-1]["val_loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--datasets", nargs="+", default=["synthetic", "digits"])
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; torch {torch.__version__}")
    print(f"{'dataset':<10} {'plan':<12} {'amp':<5} {'samples/s':>12} {'val_loss':>10}")
    for name in args.datasets:
        bench = create_dataset(name).load()
        blocks = bench.backbone.block_names
        for kind, plan in (
            ("shared", Plan.shared_bottom(bench.task_names, blocks)),
            ("independent", Plan.independent(bench.task_names, blocks)),
        ):
            for amp in ("off", "bf16"):
                rate, val = throughput(bench, plan, device, amp, args.epochs)
                print(f"{name:<10} {kind:<12} {amp:<5} {rate:>12.0f} {val:>10.4f}")


if __name__ == "__main__":
    main()
