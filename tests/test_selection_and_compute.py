"""Per-task selection of independent networks, epoch-cap flags, and the training FLOPs of a fit."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _tiny import tiny_bench
from torch.utils.flop_counter import FlopCounterMode

from branchbench.core.benchmark import Split
from branchbench.core.plan import Plan
from branchbench.core.retrain import build_net, retrain, task_owned_keys
from branchbench.core.tasks import multitask_loss
from branchbench.core.trainer import (
    ExtraOptimizer,
    Hook,
    MemoryCheckpointer,
    TaskSelection,
    Trainer,
)


class _Snapshots(Hook):
    """The model's weights at every epoch's validation."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_epoch_end(self, fit, logs):
        self.states.append({k: v.detach().clone() for k, v in fit.model.state_dict().items()})


def _noisy_bench(epochs: int = 12, early_stopping: int = 0):
    """Task t1 learns pure noise (its validation loss rises once it overfits); the others learn."""
    bench = tiny_bench(epochs=epochs, n_train=128)
    train = bench.splits["train"]
    y = dict(train.y)
    y["t1"] = torch.randn(y["t1"].shape, generator=torch.Generator().manual_seed(0)) * 3
    protocol = bench.protocol.replace(lr=1e-2, lr_schedule="constant", early_stopping=early_stopping)
    return dataclasses.replace(bench, splits={**bench.splits, "train": Split(train.x, y)}, protocol=protocol)


def _independent(bench):
    return Plan.independent(bench.task_names, bench.backbone.block_names)


def test_independent_networks_keep_each_tasks_own_best_epoch():
    bench = _noisy_bench()
    plan = _independent(bench)
    net = build_net(bench, plan, seed=0)
    snapshots = _Snapshots()
    owned = task_owned_keys(net, plan)
    fit = Trainer(bench.protocol, seed=0).fit(net, bench, hooks=[snapshots], per_task=owned)
    best = {t: min(range(fit.epochs_run), key=lambda e: fit.history[e][f"val_loss.{t}"]) for t in bench.task_names}
    assert fit.task_best_epochs == best
    assert best["t1"] < fit.epochs_run - 1 == max(best.values())  # the noisy task's best is earlier
    final = net.state_dict()
    for task, keys in owned.items():
        for key in keys:
            assert torch.equal(final[key], snapshots.states[best[task]][key]), (task, key)
    assert fit.best_epoch == max(best.values())
    # every weight belongs to exactly one task
    assert sorted(k for keys in owned.values() for k in keys) == sorted(final)


def test_per_task_selection_is_used_only_where_tasks_share_nothing():
    bench = tiny_bench()
    net = build_net(bench, _independent(bench), seed=0)
    assert task_owned_keys(net, _independent(bench)) is not None
    shared = Plan.shared_bottom(bench.task_names, bench.backbone.block_names)
    assert task_owned_keys(build_net(bench, shared, seed=0), shared) is None
    branched = Plan(bench.task_names, bench.backbone.block_names,
                    {"t0": [0, 0, 0], "t1": [1, 1, 1], "t2": [2, 2, 2], "t3": [3, 3, None]})
    assert task_owned_keys(build_net(bench, branched, seed=0), branched) is None  # a skip: shared shortcut
    result = retrain(bench, _independent(bench), Trainer(bench.protocol, seed=0), seed=0)
    assert set(result.fit.task_best_epochs) == set(bench.task_names)


def test_per_task_early_stopping_waits_for_every_task_and_resumes_exactly():
    bench = _noisy_bench(epochs=30, early_stopping=3)
    plan = _independent(bench)
    whole = build_net(bench, plan, seed=0)
    fit = Trainer(bench.protocol, seed=0).fit(whole, bench, per_task=task_owned_keys(whole, plan))
    assert fit.stopped == "early_stopping"
    assert fit.epochs_run == max(fit.task_best_epochs.values()) + 1 + 3  # the last task to stop decides
    assert min(fit.task_best_epochs.values()) + 1 + 3 < fit.epochs_run

    class Crash(Hook):
        def __init__(self, at: int | None) -> None:
            self.at = at

        def on_epoch_end(self, f, logs):
            if f.epoch == self.at:
                raise KeyboardInterrupt

    checkpoints = MemoryCheckpointer()
    first = build_net(bench, plan, seed=0)
    with pytest.raises(KeyboardInterrupt):
        Trainer(bench.protocol, seed=0, checkpointer=checkpoints).fit(first, bench, hooks=[Crash(5)],
                                                                      per_task=task_owned_keys(first, plan))
    resumed = build_net(bench, plan, seed=0)
    again = Trainer(bench.protocol, seed=0, checkpointer=checkpoints).fit(resumed, bench, hooks=[Crash(None)],
                                                                          per_task=task_owned_keys(resumed, plan))
    assert again.task_best_epochs == fit.task_best_epochs and again.steps == fit.steps
    assert again.flops == fit.flops
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_still_improving_flags_a_run_whose_best_epoch_is_its_last():
    bench = tiny_bench(epochs=3)
    fit = retrain(bench, Plan.shared_bottom(bench.task_names, bench.backbone.block_names),
                  Trainer(bench.protocol, seed=0), seed=0).fit
    assert fit.still_improving == (fit.best_epoch == fit.epochs_run - 1)
    assert fit.still_improving  # 3 epochs of a fresh network: validation still falls
    overfit = _noisy_bench(epochs=12)
    plan = Plan.shared_bottom(overfit.task_names, overfit.backbone.block_names)
    net = build_net(overfit, plan, seed=0)
    fit = Trainer(overfit.protocol.replace(lr=5e-2), seed=0).fit(net, overfit)
    assert fit.best_epoch < fit.epochs_run - 1 and not fit.still_improving


def _step_flops(bench, plan, batch: int) -> float:
    """FLOPs of one forward and backward pass of a fresh network on ``batch`` training samples."""
    net = build_net(bench, plan, seed=0)
    split = bench.splits["train"]
    x, y = bench.prepare(split.x[:batch]), {t: v[:batch] for t, v in split.y.items()}
    with FlopCounterMode(display=False) as counter:
        loss, _ = multitask_loss(bench.tasks, net(x), y)
        loss.backward()
    return counter.get_total_flops()


def test_fit_flops_are_the_per_step_flops_times_the_steps():
    bench = tiny_bench(epochs=3)  # 256 training samples, batches of 64: every batch full
    plan = Plan(bench.task_names, bench.backbone.block_names,
                {"t0": [0, 0, 0], "t1": [0, 0, 0], "t2": [0, 1, 1], "t3": [0, 1, 2]})
    fit = retrain(bench, plan, Trainer(bench.protocol, seed=0), seed=0).fit
    assert fit.steps == {"weights": 3 * 4} and fit.total_steps == 12
    per_step = _step_flops(bench, plan, 64)
    assert per_step > 0
    assert fit.flops == pytest.approx(per_step * fit.total_steps)
    # a bigger plan costs more per step
    wide = _independent(bench)
    assert retrain(bench, wide, Trainer(bench.protocol, seed=0), seed=0).fit.flops > fit.flops


def test_extra_optimiser_steps_are_counted_as_their_own_phase():
    bench = tiny_bench(epochs=2)
    net = build_net(bench, Plan.shared_bottom(bench.task_names, bench.backbone.block_names), seed=0)
    head = list(net.heads.parameters())
    extra = ExtraOptimizer("heads", head, lambda params: torch.optim.SGD(params, lr=0.01), every=2, data="train")
    fit = Trainer(bench.protocol, seed=0).fit(net, bench, extra=[extra])
    assert fit.steps == {"weights": 8, "heads": 4}
    assert fit.flops_per_sample["heads"] > 0
    assert fit.flops == pytest.approx(sum(fit.flops_per_sample[p] * fit.samples[p] for p in fit.steps))


# ------------------------------------------- per-task training as separate single-task trainings would
def test_task_selection_stops_a_task_after_its_patience():
    """A task that has gone `patience` epochs without improving keeps its selection, even if it improves later."""
    net = torch.nn.Linear(1, 1)
    selection = TaskSelection({"a": ["weight"], "b": ["bias"]}, patience=2)
    script = {"a": [1.0, 2.0, 3.0, 0.1], "b": [1.0, 0.9, 0.8, 0.7]}
    stopped = [selection.update(net, epoch, {t: v[epoch] for t, v in script.items()}, steps=10 * (epoch + 1))
               for epoch in range(4)]
    assert stopped == [[], [], ["a"], []]
    assert selection.best_epoch == {"a": 0, "b": 3}  # a's later improvement is never seen, as alone
    assert selection.task_steps(40) == {"a": 30, "b": 40} and not selection.exhausted()
    unlimited = TaskSelection({"a": ["weight"]}, patience=0)  # no early stopping: every epoch counts
    for epoch in range(4):
        unlimited.update(net, epoch, {"a": script["a"][epoch]}, steps=epoch)
    assert unlimited.best_epoch == {"a": 3}


class _Scripted(Hook):
    """Validation losses by epoch: t0 improves only at epoch 0 and again after its patience; the others improve."""

    def __init__(self) -> None:
        self.epoch = 0

    def on_epoch_start(self, fit):
        self.epoch = fit.epoch

    def loss(self, model, x, y):
        per_task = {t: torch.tensor(1.0 / (self.epoch + 1)) for t in y}
        per_task["t0"] = torch.tensor([1.0, 2.0, 3.0][self.epoch] if self.epoch < 3 else 0.01)
        return sum(per_task.values()), per_task


def test_a_stopped_task_is_neither_reselected_nor_trained_while_the_others_go_on():
    bench = tiny_bench(epochs=6)
    bench = dataclasses.replace(bench, protocol=bench.protocol.replace(early_stopping=2))
    plan = _independent(bench)
    net = build_net(bench, plan, seed=0)
    owned = task_owned_keys(net, plan)
    script, snapshots = _Scripted(), _Snapshots()
    fit = Trainer(bench.protocol, seed=0).fit(net, bench, val_loss_fn=script.loss, hooks=[script, snapshots],
                                             per_task=owned)
    assert fit.epochs_run == 6 and fit.task_best_epochs == {"t0": 0, "t1": 5, "t2": 5, "t3": 5}
    assert fit.task_steps == {"t0": 3 * 4, "t1": 6 * 4, "t2": 6 * 4, "t3": 6 * 4}  # 4 steps an epoch
    for key in owned["t0"]:
        assert all(torch.equal(s[key], snapshots.states[2][key]) for s in snapshots.states[3:]), key  # not trained
        assert torch.equal(net.state_dict()[key], snapshots.states[0][key])  # its own best epoch
    assert all(q.requires_grad for q in net.parameters())  # trainable again after the fit


def test_tasks_that_share_nothing_train_on_unweighted_losses():
    """A loss weight scales a task against others; trained on its own (SGD here), a task has none."""
    bench = tiny_bench(epochs=2)
    bench = dataclasses.replace(bench, protocol=bench.protocol.replace(optimizer="sgd", lr=0.05))
    weighted = dataclasses.replace(bench, tasks=tuple(dataclasses.replace(t, loss_weight=5.0) if t.name == "t0"
                                                       else t for t in bench.tasks))
    plan = _independent(bench)
    plain, scaled = (retrain(b, plan, Trainer(b.protocol, seed=0), seed=0).net.state_dict() for b in (bench, weighted))
    for key, value in plain.items():
        assert torch.equal(value, scaled[key]), key
