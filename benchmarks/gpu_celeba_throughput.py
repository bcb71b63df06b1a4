"""CelebA-9 training throughput from the uint8 cache, and the full table's projected GPU time.

Measures training images per second of TAG's CelebA network under two plans,
shared-bottom and 9 independent networks, in three modes:

* ``trainer``: :class:`~branchbench.core.trainer.Trainer` ``fit`` for
  ``--epochs`` epochs, exactly as a cell trains (data resident on the device,
  the uint8 batch made float there, bf16 autocast and channels_last on CUDA);
  its per-epoch validation runs on 256 images, so it costs little;
* ``eager``: a plain training step (gather a batch on the device, ``to_unit``,
  channels_last, bf16 autocast, loss, backward, SGD step);
* ``compiled``: the same step with ``torch.compile`` d network.

at each ``--batch`` (256 and 1024 by default). The images come from the cache:
a real CelebA (``--root`` or ``$CELEBA_ROOT``) or, by default, a fixture of
``--images`` faces written to a temporary folder (speed depends only on shapes).
It then projects the GPU time of the whole ``configs/celeba9.toml`` table from
the measured per-epoch times (see :func:`project`). Targets on an H100/H200:
shared-bottom >= 60,000 img/s eager at batch 256 and >= 100,000 compiled at
batch 1024; 9-task independent >= 10,000::

    python benchmarks/gpu_celeba_throughput.py --json out.json          # CUDA
    python benchmarks/gpu_celeba_throughput.py --quick --device cpu     # a check that it runs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import tempfile
import time
import tomllib
from pathlib import Path

import torch

from branchbench.core.benchmark import Split
from branchbench.core.plan import Plan
from branchbench.core.retrain import build_net
from branchbench.core.tasks import multitask_loss
from branchbench.core.trainer import Trainer, resolve_amp
from branchbench.datasets.celeba import OFFICIAL_SPLIT_SIZES, CelebA, to_unit

TARGETS = {  # (plan, mode, batch) -> images/s on an H100/H200
    ("shared", "eager", 256): 60_000,
    ("shared", "compiled", 1024): 100_000,
    ("independent", "best", None): 10_000,
}
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "celeba9.toml"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plans(bench) -> dict[str, Plan]:
    names, blocks = bench.task_names, bench.backbone.block_names
    return {"shared": Plan.shared_bottom(names, blocks), "independent": Plan.independent(names, blocks)}


def step_rate(bench, plan, x, y, device, batch, steps, warmup, compiled, compile_mode) -> float:
    """Images/s of a plain training step on device-resident uint8 data."""
    amp = resolve_amp(bench.protocol.amp, device)
    channels_last = device.type == "cuda"
    net = build_net(bench, plan, 0, device).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    net.train()
    if compiled:
        torch._dynamo.reset()  # each setting compiles afresh, specialised to its batch size
    model = torch.compile(net, mode=compile_mode, dynamic=False) if compiled else net
    p = bench.protocol
    optimizer = torch.optim.SGD(net.parameters(), lr=p.lr, momentum=p.momentum, nesterov=True)
    generator = torch.Generator(device=device).manual_seed(0)

    def step() -> None:
        index = torch.randint(0, x.shape[0], (batch,), device=device, generator=generator)
        xb = to_unit(x[index])
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, _ = multitask_loss(bench.tasks, model(xb), {t: v[index] for t, v in y.items()})
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def trainer_rate(bench, plan, device, batch, epochs, images) -> float:
    """Images/s of Trainer.fit (a cell's training loop) over ``images`` training images."""
    train = bench.splits["train"]
    reps = max(1, math.ceil(images / len(train)))
    index = torch.arange(len(train)).repeat(reps)[:images]
    small_val = bench.splits["val"].subset(torch.arange(min(256, len(bench.splits["val"]))))
    protocol = bench.protocol.replace(epochs=epochs, batch_size=batch, early_stopping=0)
    bench = dataclasses.replace(bench, protocol=protocol,
                                splits={**bench.splits, "train": train.subset(index), "val": small_val})
    net = build_net(bench, plan, 0, device)
    trainer = Trainer(protocol, device=device, seed=0)
    trainer.fit(net, dataclasses.replace(bench, protocol=protocol.replace(epochs=1)), early_stopping=False)
    sync(device)
    result = trainer.fit(net, bench, early_stopping=False)
    sync(device)
    return epochs * images / result.seconds


def project(rates: dict[str, float], config: Path, epochs: int) -> dict[str, float]:
    """GPU hours of the config's table, from the best measured rate of each plan.

    Every cell is taken to retrain for the protocol's full ``epochs`` on the
    official 162,770 training images (early stopping only shortens this), at a
    per-epoch time interpolated linearly in the plan's size between shared-bottom
    (1x) and independent (Tx): a budget-aware method at budget b costs a b-x
    plan, the others 1x or Tx. Search methods (learn_to_branch, dmtg, adashare)
    are charged one more such training for their supernet, branched_affinity
    nothing (it reuses the independent networks). Validation passes are left out.
    """
    from branchbench.plugins import get_method_class

    spec = tomllib.loads(config.read_text())
    seeds = len(spec["sweep"]["seeds"])
    budgets = spec["sweep"]["budgets"]
    tasks = 9
    epoch_sb = OFFICIAL_SPLIT_SIZES["train"] / rates["shared"]
    epoch_ind = OFFICIAL_SPLIT_SIZES["train"] / rates["independent"]

    def epoch_seconds(ratio: float) -> float:
        return epoch_sb + (epoch_ind - epoch_sb) * (min(ratio, tasks) - 1.0) / (tasks - 1.0)

    seconds = 0.0
    for method in spec["methods"]:
        cls = get_method_class(method)
        ratios = budgets if cls.budget_aware else [float(tasks) if method == "independent" else 1.0]
        for ratio in ratios:
            runs = 2 if method in ("learn_to_branch", "dmtg", "adashare") else 1
            seconds += seeds * runs * epochs * epoch_seconds(ratio)
    return {"epoch_seconds_shared": epoch_sb, "epoch_seconds_independent": epoch_ind,
            "table_gpu_hours": seconds / 3600.0, "epochs_per_cell": epochs}


def load_bench(args, scratch: Path):
    root = args.root or os.environ.get("CELEBA_ROOT")
    cache = Path(args.cache_dir) if args.cache_dir else scratch / "cache"
    if not root:
        from branchbench.datasets.fixtures import write_celeba_fixture

        root = str(write_celeba_fixture(scratch / "fixture", n=args.images))
    ds = CelebA(root=root, cache_dir=str(cache), resolution=args.resolution, width=args.width)
    start = time.perf_counter()
    ds.prepare()
    print(f"data: {root} -> cache {cache} ({time.perf_counter() - start:.1f} s)")
    return ds.load()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a CPU check that the script runs)")
    parser.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (default 256 1024)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per setting (default 50)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10)")
    parser.add_argument("--epochs", type=int, default=2, help="timed Trainer epochs")
    parser.add_argument("--trainer-images", type=int, default=None, help="images per Trainer epoch (default 65536)")
    parser.add_argument("--modes", nargs="+", default=["trainer", "eager", "compiled"],
                        choices=["trainer", "eager", "compiled"])
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode (default: torch's)")
    parser.add_argument("--root", default=None, help="a real CelebA (default: $CELEBA_ROOT, else a fixture)")
    parser.add_argument("--images", type=int, default=None, help="fixture images (default 2048)")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--resolution", type=int, default=None, help="default 64")
    parser.add_argument("--width", type=int, default=None, help="default 64")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    args = parser.parse_args()
    small = args.quick
    args.batch = args.batch or ([32] if small else [256, 1024])
    args.steps = args.steps or (3 if small else 50)
    args.warmup = args.warmup or (1 if small else 10)
    args.trainer_images = args.trainer_images or (64 if small else 65536)
    args.images = args.images or (48 if small else 2048)
    args.resolution = args.resolution or (16 if small else 64)
    args.width = args.width or (8 if small else 64)
    if small:
        args.epochs = 1

    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {name}; torch {torch.__version__}; threads {torch.get_num_threads()}")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory(prefix="bb_celeba_") as scratch:
        run(args, device, name, load_bench(args, Path(scratch)))


def run(args, device: torch.device, name: str, bench) -> None:
    train = bench.splits["train"].to(device)
    x, y = train.x, train.y
    rows = []
    print(f"{'plan':<12} {'mode':<9} {'batch':>6} {'images/s':>11} {'target':>9}")
    for plan_name, plan in plans(bench).items():
        for mode in args.modes:
            for batch in args.batch:
                try:
                    if mode == "trainer":
                        bench_dev = dataclasses.replace(bench, splits={**bench.splits, "train": Split(x, y)})
                        rate = trainer_rate(bench_dev, plan, device, batch, args.epochs, args.trainer_images)
                    else:
                        rate = step_rate(bench, plan, x, y, device, batch, args.steps, args.warmup,
                                         mode == "compiled", args.compile_mode)
                    error = None
                except Exception as err:  # noqa: BLE001 - report and go on (e.g. no compiler for inductor)
                    rate, error = float("nan"), f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
                target = TARGETS.get((plan_name, mode, batch))
                rows.append({"plan": plan_name, "mode": mode, "batch": batch, "images_per_s": rate,
                             "error": error, "target": target})
                shown = f"{rate:>11.0f}" if error is None else f"{'failed':>11}"
                print(f"{plan_name:<12} {mode:<9} {batch:>6} {shown} {target or '':>9}"
                      + (f"  {error}" if error else ""), flush=True)

    best = {p: max((r["images_per_s"] for r in rows if r["plan"] == p and r["error"] is None), default=float("nan"))
            for p in ("shared", "independent")}
    checks = []
    for (plan_name, mode, batch), target in TARGETS.items():
        got = best[plan_name] if mode == "best" else next(
            (r["images_per_s"] for r in rows if (r["plan"], r["mode"], r["batch"]) == (plan_name, mode, batch)),
            float("nan"))
        checks.append({"plan": plan_name, "mode": mode, "batch": batch, "target": target, "measured": got,
                       "met": bool(got >= target)})
    result = {"device": name, "torch": torch.__version__, "resolution": args.resolution, "width": args.width,
              "rows": rows, "targets": checks}
    if all(math.isfinite(v) for v in best.values()):
        result["projection"] = project(best, CONFIG, bench.protocol.epochs)
        proj = result["projection"]
        print(f"projected celeba9 table ({CONFIG.name}, {proj['epochs_per_cell']} epochs per cell, "
              f"full data): shared-bottom epoch {proj['epoch_seconds_shared']:.1f} s, independent epoch "
              f"{proj['epoch_seconds_independent']:.1f} s, table {proj['table_gpu_hours']:.1f} GPU hours")
    if device.type == "cuda":
        for c in checks:
            print(f"target {c['plan']} {c['mode']} batch {c['batch'] or 'any'}: {c['measured']:.0f} vs "
                  f"{c['target']} -> {'met' if c['met'] else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
