"""TAG: task-affinity grouping (Fifty et al., "Efficiently Identifying Task Groupings for
Multi-Task Learning", NeurIPS 2021), as a branchbench method.

TAG trains *one* shared-bottom network on all tasks and, along the way, measures
how a gradient step on one task changes the others' losses. At a training step
t on batch X, with shared parameters theta_s and learning rate eta, the
lookahead inter-task affinity of task i onto task j is

    Z_{i->j} = 1 - L_j(X; theta_s - eta * grad_{theta_s} L_i(X), theta_j) / L_j(X; theta_s, theta_j)

(positive: a step for i also lowers j's loss). Z is averaged over training; then
*network selection* picks the task groups of largest total affinity onto their
members (:mod:`bb_tag.grouping`), and each group gets its own branch.

Here the shared-bottom network is a BranchedNet of the shared-bottom Plan,
trained by the suite's trainer for the benchmark's protocol; Z is measured
inside the trainer's loss function (which sees each training batch) and
accumulated by a :class:`~branchbench.core.trainer.Hook`, so the measurement is
checkpointed with the run. theta_s are the backbone blocks' parameters (the
heads are theta_j). The number of groups comes from the budget: blocks before
``branch_block`` are shared by all tasks and each group owns a copy of the
later ones, so at most ``(cap - shared) // branch`` groups fit; the chosen
groups become a tree Plan branching at ``branch_block``.

Differences from the paper and its code (github.com/google-research/google-research,
``tag/``): (1) the paper trains one network per chosen group and lets a task be
in several groups, keeping its best head; a branchbench Plan gives each task one
path, so groups here are *disjoint* (a partition) and share the first
``branch_block`` blocks, and a task alone scores 0 where the selection code
gives -1e6 (it always has a group to join, we may not). (2) The lookahead is
the paper's plain SGD step with a constant eta (the protocol's learning rate
unless ``lookahead_lr`` is set), whatever optimiser trains the network; the
official code mimics its SGD-with-momentum optimiser and divides Z by the
current learning rate, which to first order is the same as a constant step. (3)
Z is computed in float32 (autocast off) on a copy of the batch-norm buffers, so
the lookahead neither loses the small loss changes to bf16 rounding nor moves
running statistics. (4) Selection is exact by dynamic programming over subsets
(the same optimum as the paper's branch-and-bound search) up to
``exact_max_tasks`` tasks; beyond that, greedy agglomerative merging, an
approximation. (5) With one task, or a budget that admits only one group, no
network is trained: the answer is shared-bottom. Where the paper is silent:
affinities are averaged uniformly over all lookahead steps (the official code
averages per epoch, then sums over epochs: the same up to scale when epochs
have equal steps), and lookahead steps are taken every ``lookahead_every``
weight steps (the paper uses 1 on CelebA and 10 on Taskonomy).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.func import functional_call

from bb_tag.grouping import best_groups, grouping_score
from branchbench.core.benchmark import Benchmark
from branchbench.core.budget import Budget, BudgetError
from branchbench.core.method import Method, Option, RunContext, SearchResult
from branchbench.core.plan import Plan
from branchbench.core.retrain import build_net
from branchbench.core.tasks import TaskSpec, multitask_loss
from branchbench.core.trainer import FitState, Hook, default_loss


def groups_for_budget(block_params: list[int], branch_block: int, n_tasks: int, cap: float) -> int:
    """Most groups (<= n_tasks) whose tree, shared blocks plus one branch per group, fits ``cap``."""
    shared, branch = sum(block_params[:branch_block]), sum(block_params[branch_block:])
    if math.isinf(cap):
        return n_tasks
    return max(0, min(n_tasks, int((cap - shared) // branch)))


class AffinityMeter(Hook):
    """Measures lookahead affinities inside the loss, and averages them over training.

    Use ``meter.loss`` as the trainer's ``loss_fn`` and the meter as a hook: the
    hook marks every ``every``-th weight step, and the loss of a marked step also
    takes the lookahead. The sums are the hook's state, so a resumed fit goes on
    counting where it stopped.
    """

    def __init__(self, tasks: list[TaskSpec], shared: list[str], lr: float, every: int) -> None:
        self.tasks = tasks
        self.shared = shared
        self.lr = lr
        self.every = every
        n = len(tasks)
        self.total = torch.zeros(n, n, dtype=torch.float64)
        self.count = 0
        self._due = False

    # -- hook
    def on_step_start(self, fit: FitState, phase: str) -> None:
        self._due = phase == "weights" and fit.step % self.every == 0

    def on_epoch_end(self, fit: FitState, logs: dict[str, float]) -> None:
        if self.count:
            z = self.mean()
            logs["affinity_mean"] = float(z[~np.eye(len(self.tasks), dtype=bool)].mean())

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total.clone(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total, self.count = state["total"].clone(), int(state["count"])

    # -- loss
    def loss(self, model: nn.Module, x: Tensor, y: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        if self._due and model.training and torch.is_grad_enabled():
            self._due = False
            self.total += self.lookahead(model, x, y)
            self.count += 1
        return multitask_loss(self.tasks, model(x), y)

    def lookahead(self, model: nn.Module, x: Tensor, y: dict[str, Tensor]) -> Tensor:
        """Z[i, j] on one batch, in float32, leaving the model (weights and buffers) untouched."""
        params = dict(model.named_parameters())
        shared = [params[n] for n in self.shared]

        def forward(overrides: dict[str, Tensor]) -> dict[str, Tensor]:
            buffers = {n: b.clone() for n, b in model.named_buffers()}  # batch-norm stats stay put
            return functional_call(model, {**buffers, **overrides}, (x.float(),))

        with torch.autocast(x.device.type, enabled=False):
            out = forward({})
            before = [t.loss(out[t.name], y[t.name]) for t in self.tasks]
            grads = [torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True) for loss in before]
            base = torch.stack([b.detach() for b in before]).double().cpu()
            z = torch.zeros(len(self.tasks), len(self.tasks), dtype=torch.float64)
            with torch.no_grad():
                for i, grad in enumerate(grads):
                    stepped = {n: p if g is None else p - self.lr * g for n, p, g in zip(self.shared, shared, grad, strict=True)}
                    out = forward(stepped)
                    after = torch.stack([t.loss(out[t.name], y[t.name]) for t in self.tasks]).double().cpu()
                    z[i] = torch.where(base > 0, 1.0 - after / base.clamp_min(1e-30), torch.zeros_like(base))
        return z

    def mean(self) -> np.ndarray:
        return (self.total / max(1, self.count)).numpy()


class TAG(Method):
    """Task-affinity grouping: lookahead affinities in a shared-bottom net, then best groups."""

    name = "tag"
    budget_aware = True
    # the affinities come from one seeded training run, so the plan may change with the seed
    tags = frozenset({"search", "stochastic"})
    options = {
        "branch_block": Option(1, "first per-group block; earlier blocks are shared by all tasks (0 = none)", low=0),
        "lookahead_every": Option(1, "take the lookahead every k weight steps (paper: 1 on CelebA, 10 on Taskonomy)", low=1),
        "lookahead_lr": Option(0.0, "step size eta of the lookahead SGD step; 0 = the protocol's learning rate", low=0.0),
        "epochs": Option(0, "epochs of the affinity-measuring training; 0 = the protocol's", low=0),
        "max_groups": Option(0, "at most this many groups; 0 = as many as the budget allows", low=0),
        "exact_max_tasks": Option(10, "exact selection up to this many tasks, greedy merging beyond", low=1, high=16),
    }

    def search(self, bench: Benchmark, budget: Budget, ctx: RunContext) -> SearchResult:
        p = self.params
        tasks, blocks = bench.task_names, bench.backbone.block_names
        at = p["branch_block"]
        if at >= len(blocks):
            raise ValueError(
                f"tag: branch_block={at} but the backbone has {len(blocks)} blocks {blocks}; "
                f"choose 0..{len(blocks) - 1}"
            )
        max_groups = groups_for_budget(bench.backbone.block_params, at, len(tasks), budget.cap(bench.backbone))
        if p["max_groups"]:
            max_groups = min(max_groups, p["max_groups"])
        if max_groups < 1:
            raise BudgetError(
                f"tag: budget {budget} cannot hold even one group branching at block {at}; "
                "raise the budget or lower branch_block"
            )
        if len(tasks) == 1 or max_groups == 1:  # nothing to choose: no training needed
            return SearchResult(Plan.shared_bottom(tasks, blocks), cost={"supernet_steps": 0, "lookahead_steps": 0})

        meter, fit_steps, fit_epochs = self._measure(bench, ctx)
        affinity = meter.mean()
        groups = best_groups(affinity, max_groups, p["exact_max_tasks"])
        named = [{tasks[i] for i in g} for g in groups]
        partitions = [[set(tasks)]] * at + [named] * (len(blocks) - at)
        plan = Plan.from_partitions(tasks, blocks, partitions)
        table = pd.DataFrame(affinity, index=pd.Index(tasks, name="source"), columns=pd.Index(tasks, name="target"))
        summary = {
            "groups": [sorted(g) for g in named],
            "max_groups": max_groups,
            "score": grouping_score(affinity, groups),
            "exact": len(tasks) <= p["exact_max_tasks"],
        }
        cost = {
            "supernet_steps": fit_steps,
            "supernet_epochs": fit_epochs,
            "lookahead_steps": meter.count,
            "groups": len(groups),
        }
        return SearchResult(plan, cost=cost, artifacts={"affinity.csv": table, "groups.json": summary})

    def _measure(self, bench: Benchmark, ctx: RunContext) -> tuple[AffinityMeter, int, int]:
        """Train the shared-bottom network once, measuring affinities as it goes."""
        p = self.params
        protocol = bench.protocol.replace(epochs=p["epochs"]) if p["epochs"] else bench.protocol
        plan = Plan.shared_bottom(bench.task_names, bench.backbone.block_names)
        net = build_net(bench, plan, ctx.seed)
        shared = [n for n, _ in net.named_parameters() if n.startswith(("blocks.", "shortcuts."))]
        meter = AffinityMeter(bench.tasks, shared, p["lookahead_lr"] or protocol.lr, p["lookahead_every"])
        fit = ctx.trainer("tag", protocol).fit(
            net, bench, loss_fn=meter.loss, val_loss_fn=default_loss(bench.tasks), hooks=[meter]
        )
        return meter, fit.epochs_run * math.ceil(len(bench.splits["train"]) / protocol.batch_size), fit.epochs_run
