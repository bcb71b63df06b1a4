"""Test helpers for dense tasks (importable as `from _dense import constant_predictions`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def constant_predictions(bench, n: int) -> dict[str, list[torch.Tensor]]:
    """The best constants of each task, fitted on the (decoded) training targets, as n predictions each.

    Majority class for segmentation, the mean normal for normals, and for the others both the mean
    and the median (one of them is the best constant under L1, the other under L2).
    """
    train = bench.prepare_targets(bench.splits["train"].y)
    size = bench.input_shape[1:]
    out = {}
    for task in bench.tasks:
        y = train[task.name]
        if task.kind == "segmentation":
            majority = torch.bincount(y[y != task.ignore_index].long()).argmax()
            out[task.name] = [F.one_hot(majority, task.n_outputs).float().view(1, -1, 1, 1).expand(n, -1, *size)]
        elif task.kind == "normals":
            mean = torch.nanmean(y.transpose(0, 1).reshape(3, -1), dim=1)
            out[task.name] = [F.normalize(mean, dim=0).view(1, 3, 1, 1).expand(n, 3, *size)]
        else:
            values = y[torch.isfinite(y)]
            out[task.name] = [torch.full((n, 1, *size), float(c)) for c in (values.mean(), values.median())]
    return out
