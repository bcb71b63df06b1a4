"""The trainer: determinism, exact resume, divergence, bf16 on CPU, hooks and extra optimisers."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _tiny import tiny_bench

from branchbench.core.plan import Plan
from branchbench.core.retrain import build_net, retrain
from branchbench.core.trainer import (
    DivergenceError,
    ExtraOptimizer,
    Hook,
    MemoryCheckpointer,
    Trainer,
)


def _plan(bench):
    return Plan.shared_bottom(bench.task_names, bench.backbone.block_names)


def test_same_seed_gives_identical_metrics(bench):
    a = retrain(bench, _plan(bench), Trainer(bench.protocol, seed=3), seed=3)
    b = retrain(bench, _plan(bench), Trainer(bench.protocol, seed=3), seed=3)
    assert a.metrics == b.metrics
    c = retrain(bench, _plan(bench), Trainer(bench.protocol, seed=4), seed=4)
    assert c.metrics != a.metrics


class _Crash(Hook):
    """Simulates a process killed during an epoch (before that epoch's checkpoint)."""

    def __init__(self, at_epoch: int | None) -> None:
        self.at_epoch = at_epoch

    def on_epoch_end(self, fit, logs):
        if fit.epoch == self.at_epoch:
            raise KeyboardInterrupt


def test_resume_after_interruption_matches_uninterrupted_run():
    bench = tiny_bench(epochs=6)
    plan = Plan.independent(bench.task_names, bench.backbone.block_names)
    whole = build_net(bench, plan, seed=1)
    Trainer(bench.protocol, seed=1).fit(whole, bench)

    checkpoints = MemoryCheckpointer()
    first = build_net(bench, plan, seed=1)
    with pytest.raises(KeyboardInterrupt):
        Trainer(bench.protocol, seed=1, checkpointer=checkpoints).fit(first, bench, hooks=[_Crash(3)])
    assert checkpoints.state is not None and checkpoints.state["epoch"] == 3
    resumed = build_net(bench, plan, seed=1)  # a fresh process: new weights, then the checkpoint
    result = Trainer(bench.protocol, seed=1, checkpointer=checkpoints).fit(resumed, bench, hooks=[_Crash(None)])
    assert result.epochs_run == 6
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_nan_loss_fails_with_reason(bench):
    bad = dataclasses.replace(bench, protocol=bench.protocol.replace(optimizer="sgd", lr=1e6))
    with pytest.raises(DivergenceError, match="diverged"):
        retrain(bad, _plan(bad), Trainer(bad.protocol), seed=0)


def test_exploding_loss_fails_with_reason(bench):
    calls = {"n": 0}

    def growing_loss(model, x, y):
        calls["n"] += 1
        out = model(x)
        scale = 1.0 if calls["n"] < 6 else 1e6
        loss = scale * sum(v.float().pow(2).mean() for v in out.values())
        return loss, {}

    with pytest.raises(DivergenceError, match="exceeds"):
        Trainer(bench.protocol).fit(build_net(bench, _plan(bench), 0), bench, loss_fn=growing_loss)


def test_bf16_autocast_runs_on_cpu(bench):
    bf16 = dataclasses.replace(bench, protocol=bench.protocol.replace(amp="bf16"))
    trainer = Trainer(bf16.protocol)
    assert trainer.amp
    result = retrain(bf16, _plan(bf16), trainer, seed=0)
    assert all(torch.isfinite(torch.tensor(v)) for k, v in result.metrics.items() if k.endswith("mse"))


def test_early_stopping_keeps_best_validation_weights():
    bench = tiny_bench(epochs=12)
    bench = dataclasses.replace(bench, protocol=bench.protocol.replace(early_stopping=2, lr=0.05))
    net = build_net(bench, _plan(bench), 0)
    trainer = Trainer(bench.protocol)
    result = trainer.fit(net, bench)
    best = min(h["val_loss"] for h in result.history)
    assert result.best_val_loss == best
    final, _ = trainer.evaluate_loss(net, bench, bench.splits["val"], lambda m, x, y: _default(bench, m, x, y))
    assert final == pytest.approx(best, rel=1e-5)


def _default(bench, model, x, y):
    from branchbench.core.tasks import multitask_loss

    return multitask_loss(bench.tasks, model(x), y)


def test_time_limit_stops_training(bench):
    limited = dataclasses.replace(bench, protocol=bench.protocol.replace(epochs=50, max_seconds=1e-9))
    result = Trainer(limited.protocol).fit(build_net(limited, _plan(limited), 0), limited)
    assert result.stopped == "time_limit" and result.epochs_run == 1


def test_extra_optimizer_steps_only_its_params_on_holdout(bench):
    net = build_net(bench, _plan(bench), 0)
    logits = torch.nn.Parameter(torch.zeros(3))
    net.register_parameter("arch_logits", logits)
    seen = {"weights": 0, "arch": 0}

    class Count(Hook):
        def on_step_start(self, fit, phase):
            seen[phase] += 1

    def arch_loss(model, x, y):
        total, parts = _default(bench, model, x, y)
        return total + (model.arch_logits - 1.0).pow(2).sum(), parts

    head_before = net.heads[bench.task_names[0]].weight.detach().clone()
    extra = ExtraOptimizer(
        "arch", [logits], lambda p: torch.optim.SGD(p, lr=0.1), loss_fn=arch_loss, every=2, start_epoch=1
    )
    Trainer(bench.protocol).fit(net, bench, extra=[extra], hooks=[Count()], holdout_fraction=0.25, early_stopping=False)
    bs, n = bench.protocol.batch_size, len(bench.splits["train"])
    warmup_steps = -(-n // bs)  # epoch 0 is a warm-up: the weights see the whole train split
    steps_per_epoch = -(-int(n * 0.75) // bs)
    total = warmup_steps + (bench.protocol.epochs - 1) * steps_per_epoch
    assert seen["weights"] == total
    # one extra step after every 2nd weight step (counted globally), from epoch 1 on
    expected = sum(1 for s in range(warmup_steps, total) if (s + 1) % 2 == 0)
    assert seen["arch"] == expected
    assert torch.all(logits > 0)  # moved toward 1 by its own optimiser only
    assert not torch.equal(head_before, net.heads[bench.task_names[0]].weight)


def test_holdout_extra_needs_a_holdout(bench):
    net = build_net(bench, _plan(bench), 0)
    p = torch.nn.Parameter(torch.zeros(1))
    extra = ExtraOptimizer("arch", [p], lambda q: torch.optim.SGD(q, lr=0.1))
    with pytest.raises(ValueError, match="holdout_fraction"):
        Trainer(bench.protocol).fit(net, bench, extra=[extra])
