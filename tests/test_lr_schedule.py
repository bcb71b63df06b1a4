"""Protocol keys a paper's training recipe needs: Nesterov on or off, and "halve every k epochs"."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from branchbench.core.benchmark import TrainingProtocol
from branchbench.core.options import OptionError
from branchbench.core.plan import Plan
from branchbench.core.retrain import retrain
from branchbench.core.trainer import Trainer


def _lrs_per_epoch(protocol: TrainingProtocol, epoch_steps: list[int]) -> list[set[float]]:
    """The learning rates every weight step of each epoch uses, stepping the schedule as fit() does."""
    weight = nn.Parameter(torch.zeros(1))
    trainer = Trainer(protocol)
    optimizer = trainer._make_optimizer([weight])
    schedule = trainer._make_schedule(optimizer, epoch_steps)
    used = []
    for steps in epoch_steps:
        epoch = set()
        for _ in range(steps):
            epoch.add(round(optimizer.param_groups[0]["lr"], 12))
            optimizer.step()
            schedule.step()
        used.append(epoch)
    return used


def test_step_schedule_halves_every_k_epochs_at_epoch_boundaries():
    protocol = TrainingProtocol(optimizer="sgd", lr=0.4, lr_schedule="step", lr_step_epochs=2, lr_gamma=0.5,
                                epochs=7)
    # uneven epochs (a warm-up on the whole train split has more steps): the rate follows epochs, not steps
    used = _lrs_per_epoch(protocol, [5, 5, 3, 3, 3, 3, 3])
    assert used == [{0.4}, {0.4}, {0.2}, {0.2}, {0.1}, {0.1}, {0.05}]


def test_tag_celeba_schedule_is_expressible():
    # TAG's decay_lr: after epochs 15, 30, ... the rate is halved (DMTG: milestones 15, 30, ..., 90)
    protocol = TrainingProtocol(optimizer="sgd", lr=5e-4, nesterov=False, lr_schedule="step", lr_step_epochs=15,
                                lr_gamma=0.5, epochs=100)
    used = _lrs_per_epoch(protocol, [2] * 100)
    assert [used[e] for e in (0, 14, 15, 29, 30, 89, 90, 99)] == [
        {5e-4}, {5e-4}, {2.5e-4}, {2.5e-4}, {1.25e-4}, {round(5e-4 / 2**5, 12)}, {round(5e-4 / 2**6, 12)},
        {round(5e-4 / 2**6, 12)}]


def test_step_schedule_without_epochs_keeps_the_thirds_rule():
    protocol = TrainingProtocol(optimizer="sgd", lr=1.0, lr_schedule="step", epochs=3)
    used = _lrs_per_epoch(protocol, [4, 4, 4])
    assert used == [{1.0}, {0.1}, {round(0.1 * 0.1, 12)}]


def test_fit_logs_the_halved_rate(bench):
    protocol = bench.protocol.replace(optimizer="sgd", lr=0.05, lr_schedule="step", lr_step_epochs=1, lr_gamma=0.5,
                                      epochs=3, nesterov=False)
    bench = dataclasses.replace(bench, protocol=protocol)
    fit = retrain(bench, Plan.shared_bottom(bench.task_names, bench.backbone.block_names), Trainer(protocol),
                  seed=0).fit
    # "lr" is logged after an epoch's last step: the rate the next epoch uses (no step after the last)
    assert [h["lr"] for h in fit.history] == pytest.approx([0.025, 0.0125, 0.0125])


def test_nesterov_is_a_protocol_key_defaulting_to_the_old_behaviour():
    weight = [nn.Parameter(torch.zeros(1))]
    sgd = TrainingProtocol(optimizer="sgd")
    assert Trainer(sgd)._make_optimizer(weight).param_groups[0]["nesterov"] is True
    assert Trainer(sgd.replace(nesterov=False))._make_optimizer(weight).param_groups[0]["nesterov"] is False


def test_nesterov_and_steps_change_training(bench):
    plan = Plan.shared_bottom(bench.task_names, bench.backbone.block_names)
    base = bench.protocol.replace(optimizer="sgd", lr=0.05, momentum=0.9)
    runs = {}
    for name, protocol in {"nesterov": base, "plain": base.replace(nesterov=False),
                           "step": base.replace(lr_schedule="step", lr_step_epochs=1, lr_gamma=0.5)}.items():
        runs[name] = retrain(dataclasses.replace(bench, protocol=protocol), plan, Trainer(protocol), seed=0).metrics
    assert runs["nesterov"] != runs["plain"] and runs["step"] != runs["nesterov"]


@pytest.mark.parametrize("changes, says", [
    ({"nesterov": 1}, "nesterov"),
    ({"lr_step_epochs": 0}, "lr_step_epochs"),
    ({"lr_step_epochs": 2.5}, "lr_step_epochs"),
    ({"lr_gamma": 1.5}, "lr_gamma"),
    ({"lr_gamma": 0.0}, "lr_gamma"),
    ({"optimizer": "sgd", "momentum": 0.0}, "nesterov=true needs momentum > 0"),
])
def test_bad_schedule_keys_are_refused_by_name(changes, says):
    with pytest.raises(OptionError, match=says):
        TrainingProtocol(**changes)


def test_sgd_without_momentum_works_without_nesterov():
    TrainingProtocol(optimizer="sgd", momentum=0.0, nesterov=False)
