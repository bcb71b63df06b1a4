"""Choosing the npz dataset's default training protocol on development data, by validation only.

A user's own file has no tuned epoch count, so the default trains until the
validation loss stops improving: an epoch cap generous for the data size, with
early stopping. This script compares candidate protocols on development npz
files (data seeds >= 1000, never the evaluation seeds; test splits are never
read), training shared-bottom and independent networks of each file's default
backbone, and prints per candidate: the mean best validation loss relative to
the best candidate on the same (file, plan, seed), how many runs ended at the
epoch cap still improving, and the mean epochs and seconds::

    python scripts/npz_protocol_study.py            # writes its files to a temporary folder
    python scripts/npz_protocol_study.py --sizes 500 --seeds 1

The files: the synthetic data's regression tasks (6 tasks, 2 groups, 16 inputs),
written in the per-split layout, and the fixture's mixed tasks (binary,
regression, multiclass) in the one-array layout, at each training size.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from branchbench.core.plan import Plan
from branchbench.core.retrain import retrain
from branchbench.core.trainer import Trainer
from branchbench.datasets.fixtures import write_npz_fixture
from branchbench.datasets.npz import NpzDataset
from branchbench.datasets.synthetic import Synthetic
from branchbench.seeds import development_seeds

CANDIDATES = {
    "30 epochs, patience 5, cosine (before)": dict(epochs=30, early_stopping=5, lr_schedule="cosine"),
    "100 epochs, patience 10, cosine": dict(epochs=100, early_stopping=10, lr_schedule="cosine"),
    "200 epochs, patience 10, constant": dict(epochs=200, early_stopping=10, lr_schedule="constant"),
    "200 epochs, patience 20, constant": dict(epochs=200, early_stopping=20, lr_schedule="constant"),
    "200 epochs, patience 20, cosine": dict(epochs=200, early_stopping=20, lr_schedule="cosine"),
}


def write_files(folder: Path, sizes: list[int], seeds: list[int]) -> list[Path]:
    files = []
    for n in sizes:
        for seed in seeds:
            raw = Synthetic(tasks=6, groups=2, input_dim=16, n_train=n, n_val=max(50, n // 4), n_test=50,
                            data_seed=seed).generate()
            path = folder / f"synthetic-n{n}-d{seed}.npz"
            arrays = {f"{a}_{split}": raw[split][i] for split in ("train", "val", "test")
                      for i, a in enumerate(("x", "y"))}
            np.savez(path, **arrays, task_names=np.array([f"t{i}" for i in range(6)]))
            files.append(path)
            files.append(write_npz_fixture(folder / f"fixture-n{n}-d{seed}.npz", n=int(n * 1.6), seed=seed))
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 4000], help="training rows per file")
    parser.add_argument("--seeds", type=int, default=2, help="development data seeds (1000, 1001, ...)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="npz-protocol-study-"))
    files = write_files(folder, args.sizes, development_seeds(args.seeds))
    rows = []
    for path in files:
        dataset = NpzDataset(path=str(path), data_seed=development_seeds(1)[0])
        bench = dataset.load()
        for make in (Plan.shared_bottom, Plan.independent):
            plan = make(bench.task_names, bench.backbone.block_names)
            for label, changes in CANDIDATES.items():
                protocol = bench.protocol.replace(**changes)
                start = time.perf_counter()
                fit = retrain(dataclasses.replace(bench, protocol=protocol), plan, Trainer(protocol, seed=0), seed=0).fit
                rows.append(dict(file=path.stem, plan=make.__name__, candidate=label, val=fit.best_val_loss,
                                 epochs=fit.epochs_run, at_cap=fit.still_improving and fit.stopped == "completed",
                                 seconds=time.perf_counter() - start))
                print(f"{path.stem:24} {make.__name__:14} {label:38} val {fit.best_val_loss:.4f} "
                      f"epochs {fit.epochs_run:3d} at cap {rows[-1]['at_cap']!s:5} {rows[-1]['seconds']:.1f}s",
                      flush=True)
    import pandas as pd

    frame = pd.DataFrame(rows)
    frame["relative"] = frame["val"] / frame.groupby(["file", "plan"])["val"].transform("min")
    summary = frame.groupby("candidate", sort=False).agg(
        relative_val=("relative", "mean"), worst_relative=("relative", "max"), at_cap=("at_cap", "sum"),
        runs=("at_cap", "size"), epochs=("epochs", "mean"), seconds=("seconds", "mean"))
    print(summary.to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
