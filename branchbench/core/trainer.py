"""The one training loop: retraining every plan, and every search's supernet.

Searches do not write loops of their own; they train *through* this one via
:class:`Hook` s and :class:`ExtraOptimizer` s:

* an extra optimiser (e.g. for branching logits) with its own learning rate,
  stepped on batches from a held-out part of the training split (the
  ``holdout_fraction``), alternating with the weight steps, after a warm-up;
* per-step and per-epoch callbacks (temperature annealing, curricula,
  logging branching probabilities);
* a custom loss (e.g. DMTG's assignment-weighted head losses, AdaShare's
  sparsity and sharing terms).

What every run gets: bf16 autocast on CUDA (also on CPU when asked, for tests),
data resident on the GPU when it fits there with room for training, else
streamed from host memory through pinned buffers (:mod:`~branchbench.core.streaming`;
the same batches either way), targets decoded per batch on the device
(``Benchmark.target_transform``), channels_last for convolutional backbones on CUDA,
early stopping on the validation loss (the best-val weights are kept; test is
never looked at), checkpoints after every epoch so a resumed run ends exactly
like an uninterrupted one, NaN/divergence detection that fails the run with its
reason, and an optional time limit.

Networks whose tasks share no weights (independent networks) can be trained
and selected *per task* (``per_task``), as separate single-task trainings
would be: each task's loss enters unweighted (``TaskSpec.loss_weight`` scales
a task against others, which separate training has none of; under SGD or
coupled weight decay it would change the task's effective learning rate);
each task keeps the weights of its own best validation epoch; and once a task
has gone ``early_stopping`` epochs without improving it *stops*: its selection
is frozen and its parameters get no more gradients or updates
(``FitResult.task_steps`` counts the weight steps each task trained), so no
task is selected at an epoch its own training would never have reached.
Training ends when every task has stopped. Only the divergence check and the
time limit act on all tasks together: a diverging task fails the whole fit,
and a time limit stops every task at once.

Compute: a fit counts its optimiser steps and the samples they saw per phase
(``"weights"`` and each extra optimiser), and measures the training FLOPs per
sample of each phase once, on its first step (forward and backward, counted by
:class:`torch.utils.flop_counter.FlopCounterMode`, which counts matrix
multiplications and convolutions; optimiser updates are not counted). A
phase's FLOPs are that count times the samples it trained on, i.e. the first
step's FLOPs times the steps when batches are full; steps whose cost differs
from the first one's (a curriculum, a warm-up that runs other blocks) are
counted at the first one's; so, under per-task training, are the steps after
some tasks have stopped (their backward passes are skipped, their forward
passes still run): the phase's FLOPs are then an upper bound, and
``task_steps`` says how long each task trained.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from typing import Protocol as TypingProtocol

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from branchbench.core import streaming
from branchbench.core.benchmark import Benchmark, Split, TrainingProtocol
from branchbench.core.metrics import StreamingScores
from branchbench.core.streaming import StreamSplit
from branchbench.core.tasks import multitask_loss

LossFn = Callable[[nn.Module, torch.Tensor, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""(model, prepared inputs, targets) -> (total loss, per-task losses for curves)."""


class DivergenceError(RuntimeError):
    """Training produced a non-finite or exploding loss; the run fails with this reason."""


class Checkpointer(TypingProtocol):
    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any]) -> None: ...


class MemoryCheckpointer:
    """Keeps the last checkpoint in memory (tests, and contexts without storage)."""

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None

    def load(self) -> dict[str, Any] | None:
        return copy.deepcopy(self.state)

    def save(self, state: dict[str, Any]) -> None:
        self.state = copy.deepcopy(state)


@dataclass
class ExtraOptimizer:
    """A second optimiser over some of the model's parameters (e.g. architecture logits).

    Its parameters are excluded from the weight optimiser. From ``start_epoch``
    on (a warm-up before), one extra step follows every ``every`` weight steps,
    on the next batch of ``data``: ``"holdout"`` (the held-out part of the
    training split; needs ``holdout_fraction > 0``) or ``"train"``. During a
    warm-up (before any extra optimiser starts) the weights train on the whole
    training split, as AdaShare's and Learn-to-Branch's warm-ups do; afterwards
    on the part that is not held out.
    """

    name: str
    params: Sequence[nn.Parameter]
    make_optimizer: Callable[[Sequence[nn.Parameter]], torch.optim.Optimizer]
    loss_fn: LossFn | None = None
    every: int = 1
    start_epoch: int = 0
    data: str = "holdout"

    def __post_init__(self) -> None:
        if self.data not in ("holdout", "train"):
            raise ValueError(f"extra optimiser {self.name!r}: data must be 'holdout' or 'train'")
        if self.every < 1:
            raise ValueError(f"extra optimiser {self.name!r}: every must be >= 1")


class Hook:
    """Callbacks into the loop; override any. ``state_dict`` makes a hook resumable."""

    def on_fit_start(self, fit: FitState) -> None: ...

    def on_epoch_start(self, fit: FitState) -> None: ...

    def on_step_start(self, fit: FitState, phase: str) -> None: ...

    def on_step_end(self, fit: FitState, phase: str, loss: float) -> None: ...

    def on_epoch_end(self, fit: FitState, logs: dict[str, float]) -> None:
        """May add entries to ``logs``; they are logged as this epoch's curves."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class FitState:
    """What hooks can read (and a few things they may set) during a fit."""

    model: nn.Module
    epoch: int = 0
    step: int = 0
    epochs: int = 0
    steps_per_epoch: int = 0
    stop: bool = False  # a hook may end training after this epoch

    @property
    def progress(self) -> float:
        """Fraction of the planned training done, in [0, 1]."""
        total = max(1, self.epochs * self.steps_per_epoch)
        return min(1.0, self.step / total)


@dataclass
class FitResult:
    """A fit's record. ``best_epoch``: the epoch whose weights the model holds (per-task selection: the
    latest of the tasks' own best epochs, each in ``task_best_epochs``). ``steps`` / ``samples`` /
    ``flops_per_sample``: per phase (``"weights"`` and each extra optimiser's name)."""

    epochs_run: int
    best_epoch: int
    best_val_loss: float
    seconds: float
    stopped: str  # "completed", "early_stopping", "time_limit", "hook"
    history: list[dict[str, float]] = field(default_factory=list)
    task_best_epochs: dict[str, int] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)
    flops_per_sample: dict[str, float] = field(default_factory=dict)

    @property
    def total_steps(self) -> int:
        """Optimiser steps of every phase."""
        return sum(self.steps.values())

    @property
    def flops(self) -> float:
        """Training FLOPs (forward and backward) of every phase; NaN where a phase could not be measured."""
        return float(sum(self.flops_per_sample.get(phase, math.nan) * n for phase, n in self.samples.items() if n))

    task_steps: dict[str, int] = field(default_factory=dict)
    parts: list[FitResult] = field(default_factory=list)

    @property
    def still_improving(self) -> bool:
        """Whether the selected epoch is the last one run: training ended while validation still improved.

        For a record combining fits run one after another (``parts``,
        :meth:`combine`): whether any of them did.
        """
        if self.parts:
            return any(part.still_improving for part in self.parts)
        return self.epochs_run > 0 and self.best_epoch == self.epochs_run - 1

    @classmethod
    def combine(cls, fits: Sequence[FitResult], task_best_epochs: Mapping[str, int] | None = None) -> FitResult:
        """One record of ``fits`` run one after another (e.g. per-group fine-tuning).

        Epochs, seconds, validation losses, steps and samples add up; each
        phase's FLOPs per sample is the sample-weighted mean, so :attr:`flops`
        is the sum of the fits' FLOPs; ``best_epoch`` is the latest of theirs and
        :attr:`still_improving` holds when it holds for any of them.
        """
        steps: dict[str, int] = {}
        samples: dict[str, int] = {}
        flops: dict[str, float] = {}
        for fit in fits:
            for phase, n in fit.steps.items():
                steps[phase] = steps.get(phase, 0) + n
            for phase, n in fit.samples.items():
                samples[phase] = samples.get(phase, 0) + n
                if n:
                    flops[phase] = flops.get(phase, 0.0) + fit.flops_per_sample.get(phase, math.nan) * n
        return cls(
            epochs_run=sum(f.epochs_run for f in fits),
            best_epoch=max((f.best_epoch for f in fits), default=-1),
            best_val_loss=sum(f.best_val_loss for f in fits),
            seconds=sum(f.seconds for f in fits),
            stopped=next((f.stopped for f in fits if f.stopped != "completed"), "completed"),
            history=[h for f in fits for h in f.history],
            task_best_epochs=dict(task_best_epochs or {}),
            steps=steps,
            samples=samples,
            flops_per_sample={phase: total / samples[phase] for phase, total in flops.items()},
            parts=list(fits),
        )


@dataclass
class Compute:
    """Steps, samples and measured FLOPs per sample of each phase of a fit (see the module docstring)."""

    steps: dict[str, int] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)
    flops_per_sample: dict[str, float] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": dict(self.steps), "samples": dict(self.samples), "flops_per_sample": dict(self.flops_per_sample)}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        for key, value in (state or {}).items():
            setattr(self, key, dict(value))


class TaskSelection:
    """Per-task selection of networks whose tasks share no weights (see the module docstring).

    ``keys`` maps each task to the ``state_dict`` keys only it uses. Each task
    keeps those entries from the epoch of its lowest validation loss
    (``val_loss.<task>``) and counts its own epochs without improvement; after
    ``patience`` of them (0: never) it stops, and its selection no longer changes.
    """

    def __init__(self, keys: Mapping[str, Sequence[str]], patience: int = 0) -> None:
        self.keys = {task: list(k) for task, k in keys.items()}
        self.owned = {k for task_keys in self.keys.values() for k in task_keys}
        self.patience = patience
        self.best = {task: math.inf for task in self.keys}
        self.best_epoch = {task: -1 for task in self.keys}
        self.bad = {task: 0 for task in self.keys}
        self.stopped_at: dict[str, int] = {}  # task -> weight steps it had trained when it stopped
        self.states: dict[str, dict[str, torch.Tensor]] = {}

    def update(self, model: nn.Module, epoch: int, val_tasks: Mapping[str, float], steps: int) -> list[str]:
        """Record epoch ``epoch`` (after ``steps`` weight steps); returns the tasks that stop with it."""
        state = model.state_dict()
        stopping = []
        for task, keys in self.keys.items():
            if task in self.stopped_at:
                continue
            if val_tasks[task] < self.best[task] - 1e-12:
                self.best[task], self.best_epoch[task], self.bad[task] = val_tasks[task], epoch, 0
                self.states[task] = {k: state[k].detach().clone() for k in keys}
            else:
                self.bad[task] += 1
            if self.patience and self.bad[task] >= self.patience:
                self.stopped_at[task] = steps
                stopping.append(task)
        return stopping

    def exhausted(self) -> bool:
        """Every task has stopped (gone ``patience`` epochs without improving)."""
        return len(self.stopped_at) == len(self.keys)

    def task_steps(self, steps: int) -> dict[str, int]:
        """Weight steps each task trained, given the fit's ``steps``."""
        return {task: self.stopped_at.get(task, steps) for task in self.keys}

    def apply(self, model: nn.Module) -> None:
        state = model.state_dict()
        for task_state in self.states.values():
            state.update(task_state)
        model.load_state_dict(state)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad": self.bad, "states": self.states,
                "stopped_at": self.stopped_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = dict(state["best"]), dict(state["best_epoch"])
        self.bad, self.states = dict(state["bad"]), dict(state["states"])
        self.stopped_at = dict(state.get("stopped_at", {}))


def resolve_amp(amp: str, device: torch.device) -> bool:
    """bf16 autocast on: 'bf16' always, 'auto' only on CUDA, 'off' never."""
    return amp == "bf16" or (amp == "auto" and device.type == "cuda")


def default_loss(tasks) -> LossFn:
    def loss(model: nn.Module, x: torch.Tensor, y: dict[str, torch.Tensor]):
        return multitask_loss(tasks, model(x), y)

    return loss


def unweighted_loss(tasks) -> LossFn:
    """The sum of the tasks' losses, each with weight 1 (each task as its own single-task training would)."""

    def loss(model: nn.Module, x: torch.Tensor, y: dict[str, torch.Tensor]):
        preds = model(x)
        per_task = {t.name: t.loss(preds[t.name], y[t.name]) for t in tasks}
        return sum(per_task.values()), per_task

    return loss


class Trainer:
    """Fits a model that maps inputs to ``{task: prediction}`` on a Benchmark."""

    def __init__(
        self,
        protocol: TrainingProtocol,
        device: torch.device | str = "cpu",
        seed: int = 0,
        log: Callable[[Mapping[str, float], int], None] | None = None,
        checkpointer: Checkpointer | None = None,
        progress: Callable[[int, str], Any] | None = None,
        prefix: str = "",
        on_fit_end: Callable[[FitResult], None] | None = None,
    ) -> None:
        self.protocol = protocol
        self.on_fit_end = on_fit_end  # sees every fit's record (the cell's compute accounting)
        self.device = torch.device(device)
        self.seed = seed
        self.log = log
        self.checkpointer = checkpointer
        self.progress = progress
        self.prefix = prefix
        self.amp = resolve_amp(protocol.amp, self.device)

    # ------------------------------------------------------------------ data
    def place(self, bench: Benchmark, split: Split | StreamSplit) -> Split | StreamSplit:
        """``split`` on the training device, or, on CUDA when the benchmark's data does not
        fit there with room for training, a :class:`StreamSplit` that feeds it batch by batch."""
        if isinstance(split, StreamSplit) or streaming.same_device(split.x.device, self.device):
            return split
        if streaming.resident(bench, self.device):
            return split.to(self.device)
        return StreamSplit(split)

    def _batches(
        self,
        split: Split | StreamSplit,
        epoch: int,
        salt: int,
        shuffle: bool = True,
        targets: streaming.Targets | None = None,
    ) -> Iterator[tuple]:
        if not isinstance(split, StreamSplit) and not streaming.same_device(split.x.device, self.device):
            split = StreamSplit(split)
        n = len(split)
        where = split.device if isinstance(split, StreamSplit) else split.x.device
        if shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 7919 + salt)
            order = torch.randperm(n, generator=gen).to(where)
        else:
            order = torch.arange(n, device=where)
        size = self.protocol.batch_size
        if isinstance(split, StreamSplit):
            yield from split.batches(order, size, self.device, targets)
            return
        for start in range(0, n, size):
            index = order[start : start + size]
            y = {t: v[index] for t, v in split.y.items()}
            yield split.x[index], (targets(y) if targets is not None else y)

    def _holdout_split(self, train: Split | StreamSplit, fraction: float) -> tuple[Split | StreamSplit, Split | StreamSplit | None]:
        if fraction <= 0:
            return train, None
        n = len(train)
        n_hold = int(round(n * fraction))
        if not 0 < n_hold < n:
            raise ValueError(f"holdout_fraction={fraction} leaves no data on one side of {n} samples")
        gen = torch.Generator().manual_seed(self.seed + 424242)
        order = torch.randperm(n, generator=gen)
        if not isinstance(train, StreamSplit):
            order = order.to(train.x.device)
        return train.subset(order[n_hold:]), train.subset(order[:n_hold])

    def _input(self, bench: Benchmark, x: torch.Tensor, channels_last: bool) -> torch.Tensor:
        x = bench.prepare(x)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    # ------------------------------------------------------------- optimiser
    def _make_optimizer(self, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
        p = self.protocol
        if p.optimizer == "adam":
            return torch.optim.Adam(params, lr=p.lr, weight_decay=p.weight_decay)
        if p.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=p.lr, weight_decay=p.weight_decay)
        return torch.optim.SGD(params, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay,
                               nesterov=p.nesterov)

    def _make_schedule(self, optimizer: torch.optim.Optimizer, epoch_steps: Sequence[int]):
        """The learning-rate schedule, stepped after every weight step; ``epoch_steps[e]`` is epoch e's steps.

        ``step`` with ``lr_step_epochs = k`` multiplies the rate by ``lr_gamma``
        before epochs k, 2k, ... (TAG's ``decay_lr``: ``if (epoch + 1) % 15 == 0:
        lr /= 2`` after an epoch; DMTG's ``multi_step_lr`` milestones 15, 30, ...).
        """
        p = self.protocol
        total_steps = sum(epoch_steps)
        if p.lr_schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
        if p.lr_schedule == "step" and p.lr_step_epochs is not None:
            ends = list(itertools.accumulate(epoch_steps))  # steps done when each epoch ends
            milestones = [ends[e - 1] for e in range(p.lr_step_epochs, len(ends), p.lr_step_epochs)]
            return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=p.lr_gamma)
        if p.lr_schedule == "step":
            return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, total_steps // 3), gamma=p.lr_gamma)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)

    # ------------------------------------------------------------------- fit
    def fit(
        self,
        model: nn.Module,
        bench: Benchmark,
        *,
        loss_fn: LossFn | None = None,
        val_loss_fn: LossFn | None = None,
        hooks: Sequence[Hook] = (),
        extra: Sequence[ExtraOptimizer] = (),
        holdout_fraction: float = 0.0,
        early_stopping: bool = True,
        per_task: Mapping[str, Sequence[str]] | None = None,
    ) -> FitResult:
        """Train ``model`` on the train split, select on val; returns the fit's record.

        At the end the model holds the weights of its best validation epoch;
        with ``per_task`` (task -> the ``state_dict`` keys only it uses), each
        task trains on its unweighted loss (the default ``loss_fn`` then), stops
        on its own, and keeps the weights of its own best epoch
        (:class:`TaskSelection`, the module docstring).
        """
        p = self.protocol
        start_time = time.perf_counter()
        loss_fn = loss_fn or (unweighted_loss(bench.tasks) if per_task is not None else default_loss(bench.tasks))
        val_loss_fn = val_loss_fn or loss_fn
        channels_last = self.device.type == "cuda" and getattr(getattr(model, "backbone", None), "convolutional", False)
        model.to(self.device)
        if channels_last:
            model.to(memory_format=torch.channels_last)

        full_train = self.place(bench, bench.splits["train"])
        train, holdout = self._holdout_split(full_train, holdout_fraction)
        val = self.place(bench, bench.splits["val"])
        if any(e.data == "holdout" for e in extra) and holdout is None:
            raise ValueError("an extra optimiser trains on the holdout split; give holdout_fraction > 0")

        claimed = {id(q) for e in extra for q in e.params}
        weights = [q for q in model.parameters() if q.requires_grad and id(q) not in claimed]
        optimizer = self._make_optimizer(weights)
        def weight_split(epoch: int) -> Split | StreamSplit:
            # before any extra optimiser starts (a warm-up), weights see the whole train split
            if holdout is not None and not any(epoch >= e.start_epoch for e in extra):
                return full_train
            return train

        steps_per_epoch = math.ceil(len(train) / p.batch_size)
        epoch_steps = [math.ceil(len(weight_split(e)) / p.batch_size) for e in range(p.epochs)]
        schedule = self._make_schedule(optimizer, epoch_steps)
        extra_opts = [e.make_optimizer(list(e.params)) for e in extra]

        fit = FitState(model=model, epochs=p.epochs, steps_per_epoch=steps_per_epoch)
        best_val, best_epoch, bad_epochs = math.inf, -1, 0
        best_state: dict[str, torch.Tensor] | None = None
        selection = TaskSelection(per_task, p.early_stopping) if per_task is not None and early_stopping else None
        kept = (lambda k: k not in selection.owned) if selection is not None else (lambda k: True)
        frozen: list[nn.Parameter] = []  # parameters of tasks that have stopped (per-task selection)

        def stop_tasks(tasks: Sequence[str]) -> None:
            """A stopped task's parameters get no more gradients (so no updates) until the fit ends."""
            keys = {k for task in tasks for k in selection.keys[task]}
            for name, q in model.named_parameters():
                if name in keys and q.requires_grad:
                    q.requires_grad_(False)
                    frozen.append(q)
        compute = Compute()
        history: list[dict[str, float]] = []
        reference_loss: float | None = None
        elapsed_before = 0.0
        stopped = "completed"

        saved = self.checkpointer.load() if self.checkpointer is not None else None
        if saved is not None:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["schedule"])
            for opt, state in zip(extra_opts, saved["extra"], strict=True):
                opt.load_state_dict(state)
            for hook, state in zip(hooks, saved["hooks"], strict=True):
                hook.load_state_dict(state)
            torch.set_rng_state(saved["rng_cpu"])
            if torch.cuda.is_available() and saved.get("rng_cuda") is not None:
                torch.cuda.set_rng_state_all(saved["rng_cuda"])
            fit.epoch, fit.step = saved["epoch"], saved["step"]
            best_val, best_epoch, bad_epochs = saved["best_val"], saved["best_epoch"], saved["bad_epochs"]
            best_state, history = saved["best_state"], saved["history"]
            reference_loss, elapsed_before = saved["reference_loss"], saved["elapsed"]
            stopped = saved.get("stopped", "completed")
            compute.load_state_dict(saved.get("compute"))
            if selection is not None and saved.get("selection") is not None:
                selection.load_state_dict(saved["selection"])
                stop_tasks(list(selection.stopped_at))
        else:
            for hook in hooks:
                hook.on_fit_start(fit)

        try:
            bar = self.progress(p.epochs, f"{self.prefix or 'train'}") if self.progress else None
            if bar is not None and fit.epoch:
                bar.update(fit.epoch)
            while fit.epoch < p.epochs and stopped == "completed":
                epoch_start = time.perf_counter()
                model.train()
                for hook in hooks:
                    hook.on_epoch_start(fit)
                active = [(e, o) for e, o in zip(extra, extra_opts, strict=True) if fit.epoch >= e.start_epoch]
                extra_iters = {
                    e.name: self._cycle(holdout if e.data == "holdout" else train, fit.epoch, salt=i + 1,
                                        targets=bench.target_transform)
                    for i, (e, _) in enumerate(active)
                }
                total, count = 0.0, 0
                for x, y in self._batches(weight_split(fit.epoch), fit.epoch, salt=0, targets=bench.target_transform):
                    for hook in hooks:
                        hook.on_step_start(fit, "weights")
                    loss = self._counted_step(compute, "weights", model, bench, x, y, loss_fn, optimizer, channels_last)
                    schedule.step()
                    self._check_finite(loss, fit)
                    total, count = total + loss, count + 1
                    for hook in hooks:
                        hook.on_step_end(fit, "weights", loss)
                    for e, opt in active:
                        if (fit.step + 1) % e.every == 0:
                            xb, yb = next(extra_iters[e.name])
                            for hook in hooks:
                                hook.on_step_start(fit, e.name)
                            extra_loss = self._counted_step(compute, e.name, model, bench, xb, yb, e.loss_fn or loss_fn,
                                                            opt, channels_last)
                            self._check_finite(extra_loss, fit, e.name)
                            for hook in hooks:
                                hook.on_step_end(fit, e.name, extra_loss)
                    fit.step += 1
                train_loss = total / max(1, count)
                if reference_loss is None:
                    reference_loss = train_loss
                elif train_loss > p.divergence_factor * max(reference_loss, 1e-8):
                    raise DivergenceError(
                        f"training loss {train_loss:.4g} at epoch {fit.epoch} exceeds "
                        f"{p.divergence_factor:g}x the first epoch's {reference_loss:.4g}: the run diverged; "
                        "lower the learning rate"
                    )
                val_loss, val_tasks = self.evaluate_loss(model, bench, val, val_loss_fn, channels_last)
                if not math.isfinite(val_loss):
                    raise DivergenceError(f"validation loss is {val_loss} at epoch {fit.epoch}: the run diverged")
                logs = {"train_loss": train_loss, "val_loss": val_loss, "lr": optimizer.param_groups[0]["lr"]}
                logs.update({f"val_loss.{t}": v for t, v in val_tasks.items()})
                for hook in hooks:
                    hook.on_epoch_end(fit, logs)
                logs["epoch_seconds"] = time.perf_counter() - epoch_start
                history.append({"epoch": fit.epoch, **logs})
                if self.log is not None:
                    self.log({f"{self.prefix}{k}": v for k, v in logs.items()}, fit.epoch)

                if val_loss < best_val - 1e-12:
                    best_val, best_epoch, bad_epochs = val_loss, fit.epoch, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items() if kept(k)}
                else:
                    bad_epochs += 1
                if selection is not None:
                    stop_tasks(selection.update(model, fit.epoch, val_tasks, compute.steps.get("weights", 0)))
                fit.epoch += 1
                if bar is not None:
                    bar.update(1)
                exhausted = selection.exhausted() if selection is not None else bad_epochs >= p.early_stopping
                if early_stopping and p.early_stopping and exhausted:
                    stopped = "early_stopping"
                elif p.max_seconds is not None and elapsed_before + time.perf_counter() - start_time > p.max_seconds:
                    stopped = "time_limit"
                elif fit.stop:
                    stopped = "hook"
                if self.checkpointer is not None:
                    self.checkpointer.save(
                        {
                            "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "schedule": schedule.state_dict(),
                            "extra": [o.state_dict() for o in extra_opts],
                            "hooks": [h.state_dict() for h in hooks],
                            "rng_cpu": torch.get_rng_state(),
                            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                            "epoch": fit.epoch,
                            "step": fit.step,
                            "best_val": best_val,
                            "best_epoch": best_epoch,
                            "bad_epochs": bad_epochs,
                            "best_state": best_state,
                            "history": history,
                            "reference_loss": reference_loss,
                            "elapsed": elapsed_before + time.perf_counter() - start_time,
                            "stopped": stopped,
                            "compute": compute.state_dict(),
                            "selection": selection.state_dict() if selection is not None else None,
                        }
                    )
            if bar is not None:
                bar.close()
        finally:
            for q in frozen:  # stopped tasks' parameters train again in a later fit
                q.requires_grad_(True)
        if early_stopping and best_state is not None:
            model.load_state_dict(best_state, strict=selection is None)
        task_best_epochs: dict[str, int] = {}
        task_steps: dict[str, int] = {}
        if selection is not None:
            selection.apply(model)
            task_best_epochs = dict(selection.best_epoch)
            task_steps = selection.task_steps(compute.steps.get("weights", 0))
            best_epoch = max(task_best_epochs.values())
            best_val = sum(selection.best.values())  # unweighted, as the tasks trained
        result = FitResult(
            epochs_run=fit.epoch,
            best_epoch=best_epoch,
            best_val_loss=best_val,
            seconds=elapsed_before + time.perf_counter() - start_time,
            stopped=stopped,
            history=history,
            task_best_epochs=task_best_epochs,
            steps=dict(compute.steps),
            samples=dict(compute.samples),
            flops_per_sample=dict(compute.flops_per_sample),
            task_steps=task_steps,
        )
        if self.on_fit_end is not None:
            self.on_fit_end(result)
        return result

    def _cycle(self, split: Split | StreamSplit, epoch: int, salt: int,
               targets: streaming.Targets | None = None) -> Iterator[tuple]:
        rounds = 0
        while True:
            yield from self._batches(split, epoch * 1000 + rounds, salt=salt, targets=targets)
            rounds += 1

    def _counted_step(self, compute: Compute, phase: str, model, bench, x, y, loss_fn, optimizer,
                      channels_last) -> float:
        """One step of ``phase``, counted; its first step also measures the FLOPs per sample.

        Counting never changes the step: where the counter cannot run (an op it
        does not support), the random state is restored, the step runs plainly
        and the phase's FLOPs are NaN.
        """
        compute.steps[phase] = compute.steps.get(phase, 0) + 1
        compute.samples[phase] = compute.samples.get(phase, 0) + int(x.shape[0])
        if phase in compute.flops_per_sample:
            return self._step(model, bench, x, y, loss_fn, optimizer, channels_last)
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        try:
            with FlopCounterMode(display=False) as counter:
                loss = self._step(model, bench, x, y, loss_fn, optimizer, channels_last)
        except Exception:  # noqa: BLE001 - the counter failed, not the step: rerun it uncounted
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
            compute.flops_per_sample[phase] = math.nan
            return self._step(model, bench, x, y, loss_fn, optimizer, channels_last)
        compute.flops_per_sample[phase] = counter.get_total_flops() / max(1, int(x.shape[0]))
        return loss

    def _step(self, model, bench, x, y, loss_fn, optimizer, channels_last) -> float:
        optimizer.zero_grad(set_to_none=True)
        model.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss, _ = loss_fn(model, self._input(bench, x, channels_last), y)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    @staticmethod
    def _check_finite(loss: float, fit: FitState, phase: str = "weights") -> None:
        if not math.isfinite(loss):
            raise DivergenceError(
                f"loss became {loss} at epoch {fit.epoch}, step {fit.step} ({phase} phase): "
                "the run diverged; lower the learning rate or check the data for NaNs"
            )

    @torch.no_grad()
    def evaluate_loss(self, model, bench, split, loss_fn, channels_last=False) -> tuple[float, dict[str, float]]:
        """Mean loss over a split (batch-size weighted), and per-task losses."""
        model.eval()
        total, per_task, n = 0.0, {}, 0
        for x, y in self._batches(split, 0, 0, shuffle=False, targets=bench.target_transform):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                loss, parts = loss_fn(model, self._input(bench, x, channels_last), y)
            b = x.shape[0]
            total += float(loss) * b
            for t, v in parts.items():
                per_task[t] = per_task.get(t, 0.0) + float(v) * b
            n += b
        model.train()
        return total / n, {t: v / n for t, v in per_task.items()}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, bench: Benchmark, split: Split) -> dict[str, float]:
        """Every task's metrics ``"<task>.<metric>"`` over a split, accumulated batch by batch, and the
        benchmark's summary metrics (e.g. CelebA's ``total_error``; :attr:`Benchmark.summary_metrics`).

        Dense tasks keep only per-batch statistics (see
        :class:`~branchbench.core.metrics.StreamingScores`), so a split's dense
        predictions are never held at once; per-sample tasks score exactly as
        :func:`~branchbench.core.metrics.score_predictions` of :meth:`predict`.
        """
        model.eval()
        model.to(self.device)
        split = self.place(bench, split)
        scores = StreamingScores(bench.tasks)
        for x, y in self._batches(split, 0, 0, shuffle=False, targets=bench.target_transform):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                pred = model(self._input(bench, x, False))
            scores.update(pred, y)
        out = scores.compute()
        out.update(bench.summarise(out))
        return out

    @torch.no_grad()
    def predict(self, model: nn.Module, bench: Benchmark, split: Split) -> dict[str, torch.Tensor]:
        """Predictions ``{task: tensor}`` over a whole split, on the CPU in float32.

        This holds every prediction at once: for dense tasks use :meth:`evaluate`.
        """
        model.eval()
        model.to(self.device)
        split = self.place(bench, split)
        out: dict[str, list[torch.Tensor]] = {}
        for x, _ in self._batches(split, 0, 0, shuffle=False):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                pred = model(self._input(bench, x, False))
            for t, v in pred.items():
                out.setdefault(t, []).append(v.float().cpu())
        return {t: torch.cat(v) for t, v in out.items()}
