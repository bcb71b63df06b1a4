"""Retraining a plan and scoring it: the same code for every method's found architecture.

A plan whose tasks share no weights (independent networks) is trained and
selected per task, as separate single-task trainings would be
(:func:`task_owned_keys`; the trainer's module docstring): each task's loss
unweighted, each task stopping after its own patience and keeping the weights
of its own best validation epoch, so the ``independent`` row and the Δm
reference are real single-task baselines. What the tasks still share is the
run: the same batches in the same order, one divergence check (a diverging
task fails them all) and one time limit (which stops them all at once).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from branchbench.core.benchmark import Benchmark
from branchbench.core.net import BranchedNet
from branchbench.core.plan import Plan
from branchbench.core.trainer import FitResult, Trainer


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so a run is repeatable."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass
class Retrained:
    net: BranchedNet
    fit: FitResult
    metrics: dict[str, float]  # "val.<task>.<metric>" and "test.<task>.<metric>"


def build_net(bench: Benchmark, plan: Plan, seed: int, device: torch.device | str | None = None) -> BranchedNet:
    """A freshly initialised BranchedNet; the seed fixes its initial weights.

    ``device`` picks the fused or plain sibling execution (a fixed rule); the
    weights are the same either way.
    """
    seed_everything(seed)
    return BranchedNet(plan, bench.backbone, bench.tasks, device=device)


def task_owned_keys(net: BranchedNet, plan: Plan) -> dict[str, list[str]] | None:
    """Task -> the ``state_dict`` keys of its own blocks and head, when no two tasks share a weight.

    None when some tasks share a block (or a skip's shortcut): such a network
    is selected as a whole on the total validation loss.
    """
    if plan.has_skips:
        return None
    for level in range(plan.n_blocks):
        if len(plan.nodes_used(level)) < len(plan.tasks):
            return None
    keys = list(net.state_dict())
    owned = {}
    for task in plan.tasks:
        prefixes = [f"blocks.{level}.{node}." for level, node in enumerate(plan.nodes[task])] + [f"heads.{task}."]
        owned[task] = [k for k in keys if k.startswith(tuple(prefixes))]
    return owned


def evaluate_net(trainer: Trainer, net: torch.nn.Module, bench: Benchmark, splits=("val", "test")) -> dict[str, float]:
    """``"<split>.<task>.<metric>"`` for each split, streamed batch by batch (:meth:`Trainer.evaluate`)."""
    out: dict[str, float] = {}
    for split in splits:
        for key, value in trainer.evaluate(net, bench, bench.splits[split]).items():
            out[f"{split}.{key}"] = value
    return out


def retrain(
    bench: Benchmark,
    plan: Plan,
    trainer: Trainer,
    seed: int,
    init_state: dict[str, torch.Tensor] | None = None,
) -> Retrained:
    """Train ``plan`` from scratch (or from ``init_state``), select on val, score val and test.

    Training and selection are per task where the tasks share no weights (:func:`task_owned_keys`).
    """
    net = build_net(bench, plan, seed, trainer.device)
    if init_state is not None:
        missing, unexpected = net.load_state_dict(init_state, strict=False)
        if missing:
            raise ValueError(
                f"fine-tuning state lacks {len(missing)} weights of the plan's network, e.g. {missing[:3]}; "
                "the search result's init_state must use BranchedNet's state_dict layout"
            )
        del unexpected
    fit = trainer.fit(net, bench, per_task=task_owned_keys(net, plan))
    return Retrained(net=net, fit=fit, metrics=evaluate_net(trainer, net, bench))
