"""AdaShare: per-task select-or-skip policies over one shared backbone (Sun et al., NeurIPS 2020).

Every task uses the same weights (node 0 of each block). Each task t has
logits ``(blocks x 2)`` over {select, skip} per block; training relaxes them
with Gumbel-softmax (soft by default) and runs, per task,

    x_{l+1} = p_select[t, l] * block_l(x_l) + p_skip[t, l] * shortcut_l(x_l)

Two tasks share block l's activation when they select it along the same path.
The search, re-derived from the paper and its public reference code
(github.com/sunxm2357/AdaShare: ``train.py``, ``envs/blockdrop_env.py``,
``models/adashare.py``, ``yamls/adashare/nyu_v2_3task.yml``):

* warm-up with every block executed, weights only (the reference: 4000 of
  20000 iterations, here ``warmup_fraction`` of the epochs);
* then alternate weight updates, on one part of the training split, with
  soft policies sampled, and policy updates (Adam, lr 0.01, weight decay
  5e-4, logits initialised equal at 0.5) on a held-out part of the training
  split (the trainer's holdout; the validation split is not used here);
* the temperature starts at 5 and decays by x0.965 after each policy phase;
* a curriculum: after ``p`` policy phases only the last ``p // speed + 1``
  blocks have learnable policies; earlier blocks are executed (policy fixed
  to select) and their logits do not change while locked;
* the policy loss is the task losses + ``sparsity_weight`` x sparsity (cross
  entropy of each unlocked block's logits towards *skip*, i.e. less compute;
  mean over blocks, summed over tasks) + ``sharing_weight`` x sharing
  ``sum_{t1<t2} sum_l w_l |a_{t1,l} - a_{t2,l}|`` on the *select* logits.

The sharing weights ``w_l``, checked in both sources: the paper weights block l
(1-based) by ``(L - l) / L``, so shallow blocks are pushed harder to be shared
(low-level features are generic); the reference code's ``get_hamming_loss``
uses ``(l + 1) / L`` (0-based), which grows with depth, the opposite
direction. In both, l and L count the *policy* blocks only (the reference's
logits cover its blocks after the stem). We follow the paper by default, as
``(L - l) / L`` for 0-based l (weights 1 .. 1/L, so the last block still
counts, which the 1-based formula would drop); ``sharing_direction="code"``
gives the reference code's. The stem (below) has no policy and weight 0
(version 2; version 1 counted it in L and gave it the first weight, so on a
4-block MLP "code" weighted the policy blocks 0.5, 0.75, 1 instead of the
reference's 1/3, 2/3, 1, and "paper" was scaled by (L - 1) / L).

Block 0 plays the reference's stem (its ``seed``: conv, BN, pool, outside
the policy): every task executes it; ``skip_first_block=True`` gives it a
policy too. The stem and the blocks the curriculum has not unlocked are
executed by every task in every forward pass, so they are *selected* in the
final plan and logged with p_select 1.0 (their logits never move from 0.5).
A search that ends before the curriculum has unlocked every block warns
(``cost["curriculum_complete"]`` is 0).

Search length: ``search_epochs=0`` means ``epoch_factor`` (1) times the
protocol's epochs; ``policy_phases`` instead gives the number of policy phases
after the warm-up (the warm-up then adds ``warmup_fraction`` of the total).
One epoch is one policy phase (below), so on the default
synthetic cell (60 protocol epochs, 2 policy steps per epoch: 500 training
samples, half held out, batch 128) the search has 48 phases after 12 warm-up
epochs, 96 policy steps, and the curriculum (one block every 3 phases)
completes.

The reference's length, read in its configs (``yamls/adashare/nyu_v2_3task.yml``:
``total_iters: 20000``, ``warm_up_iters: 4000``, batch 16; the alternation
lengths default to one pass over ``train1`` / ``train2``, ``train.py``:
``weight_iter_alternate = len(train1_loader)``): NYU-v2's 795 training images
in two halves give 24 weight and 24 policy steps per phase, so its 16,000
iterations after the warm-up are ~333 phases and ~8,000 policy steps. Its
retraining (``re-train.py``: ``retrain_total_iters`` defaults to
``total_iters``) runs as many iterations as the search, 20,000 (CityScapes
the same; Taskonomy 100,000 search vs 30,000 retraining iterations). So,
*proportionally*, the reference searches as long as it retrains (ratio 1) and
spends 40% of those iterations on policy steps. Our warm-up epoch and our
phase (one weight and one policy step per batch of the non-held-out half) each
take about one epoch's worth of steps, so ``epoch_factor=1`` (the default)
reproduces both ratios (search iterations = retraining iterations; 96 policy
steps against 240 retraining steps on the default synthetic cell, 0.4x). Its
phases are fewer than the reference's (48 against ~333: the reference's are
short, one pass over 398 images); ``policy_phases=333`` reproduces the
reference's temperature and curriculum schedule instead (final temperature
``5 x 0.965^332``, about 4e-5).

The default was chosen between the two readings (and version 2's factor 5,
240 phases, which lies between them) by ``scripts/adashare_study.py`` on
development data seeds 1000-1004 (training seed 0), by mean validation Δm
against the independent networks only (``scripts/results/adashare_study.md``;
test Δm and the recovery of the true groups were reported and chose nothing;
"CityScapes weights" are the reference's CityScapes regulariser weights,
sparsity 0.01 and sharing 0.1, on top of factor 1). On version 1 of the
synthetic data (input_dim 32, width 16, n_train 1000, protocol Adam 1e-3),
where it was chosen, and on version 2 (the current defaults; protocol Adam
2e-2):

    schedule                      val dm (%), data v1   val dm (%), data v2   reproduces SB (v1 / v2)
    epoch_factor=1 (default, v3)  +4.84 ± 5.33          -0.81 ± 6.81          0/5 / 0/5
    epoch_factor=5 (version 2)    +0.30 ± 4.13          +1.19 ± 11.48         4/5 / 0/5
    policy_phases=333             +0.20 ± 6.62          +2.48 ± 9.92          3/5 / 0/5
    factor 1, CityScapes weights  +4.49 ± 4.61          -5.39 ± 8.62          0/5 / 0/5
    (shared-bottom                -2.35 ± 3.66          -9.14 ± 9.25)

On version 1 the rule selected factor 1 (paired difference to
``policy_phases=333`` +4.65 ± 6.52), which became version 3's default; on
version 2 it would select ``policy_phases=333`` (paired +3.29 ± 7.18 over
factor 1, higher in 3 of 5 data seeds). Neither difference is distinguishable
from the seed-to-seed noise (paired t about 1 with 5 pairs) and the two data
versions disagree, so the default stays at factor 1: the reading that keeps
the reference's search/retrain ratio on every dataset (an absolute 333 phases
would search 416 epochs of CelebA, 4x its training) and costs a seventh of
the search time here (4 s against 29 s). On version 1's wider
MLP (width 16) the long searches annealed the policies towards *select*
everywhere, mostly reproducing shared-bottom; on version 2 (width 8) no
schedule reproduces it. These figures describe the synthetic MLPs only; a
residual CNN, where skipping bypasses rather than replaces a block, may
behave otherwise.

Logged per search (as ``search.<name>`` metrics of the cell): ``skipped.<task>``,
the number of blocks the task skips in the final plan;
``reproduces_shared_bottom`` (1 when the plan skips nothing: every task then
runs every shared block, which is exactly shared-bottom), so a report can say
when a policy reproduces shared-bottom; and ``fully_shared`` (1 when every
task follows the same policy, skips included: one shared network, a shallower
shared-bottom when it skips, which ``reproduces_shared_bottom`` does not count).

After the search, policies are sampled from the learned distribution
(``samples`` draws; the reference retrains several sampled policies and keeps
the best). Each distinct sample is scored by the supernet's validation loss
with that hard policy, and the best becomes the Plan: node 0 where a task
selects a block, ``None`` where it skips. The cell retrains it from scratch;
``init_state`` carries the shared search weights.

Differences from the paper: (1) weight and policy updates interleave step by
step (one policy step on a held-out batch after each weight step) instead of
one full pass over each half of the training set; a *policy phase* is one
epoch, which drives the temperature decay and the curriculum. The warm-up
trains the weights on the whole training split (as the reference's
``trainset``), the policy phases on the half that is not held out. (2) The
search is ``epoch_factor`` (1) times the protocol's epochs: the reference's
proportion (it searches as long as it retrains), but in fewer, longer policy
phases than its ~333 (``policy_phases=333`` gives those); chosen on
development seeds, see "Search length" above.
(3) Samples are ranked by the supernet's validation loss with each hard
policy, not after retraining each of them (a method never retrains); the
reference's README retrains 8 sampled architectures and reports the best, and
its training script's "validation" set is the *test* split
(``valset = ...'test'``): we select on the validation split and never see the
test split. (4) The plan is sampled from the *final* logits; the reference
retrains from its ``best`` checkpoint (best test metrics of a hard sampled
policy, after the curriculum). Our validation loss uses the soft expected
policy, which favours uncommitted early epochs, and the final logits are the
most annealed. (5) Locked logits are held fixed exactly; in the reference the
sharing term and the optimiser's weight decay still move them. (6) Block 0 is
the stem and always executed by default, as the reference's ``seed``
(``skip_first_block`` makes it skippable). (7) The skip path is the backbone's
own shortcut module for the block (identity where shapes agree, else a
projection) instead of the reference's residual ``downsample`` shared with the
block's residual branch; the MLP backbones' blocks have no residual connection
at all (AdaShare assumes residual blocks), so skipping one replaces, rather
than bypasses, its transformation. (8) The sparsity term is the reference
code's cross entropy of each unlocked block's logits towards *skip*; the paper
writes it as the log-likelihood of executing: the same direction, another
magnitude. (9) The curriculum unlocks one more block every
``curriculum_speed`` = 3 policy phases, as the reference's yml; the paper's
text reads as one block per epoch. (10) The network weights use the benchmark
protocol's optimiser and learning-rate schedule, stretched over the whole
search (e.g. cosine over all its epochs); the reference steps its warm-up
optimiser with a StepLR and, after the warm-up, trains the weights with a
fresh SGD at a constant rate (momentum 0.9, weight decay 1e-4). (11)
Buffer-free (fusable) blocks run all tasks' distinct inputs as one
concatenated batch; this is exact because the weights are shared. Blocks with
BatchNorm run per distinct input, as the reference runs the backbone per
task. Where the paper is silent: the hold-out fraction is one half (the
reference's train1/train2 split), the regulariser weights are those of the
reference's NYU-v2 3-task config, and the search runs without early stopping.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from branchbench.core.benchmark import Benchmark
from branchbench.core.budget import Budget
from branchbench.core.gumbel import gumbel_softmax
from branchbench.core.method import Method, Option, RunContext, SearchResult
from branchbench.core.net import export_state
from branchbench.core.options import OptionError, Space
from branchbench.core.plan import Plan
from branchbench.core.tasks import multitask_loss
from branchbench.core.trainer import ExtraOptimizer, FitState, Hook

SELECT, SKIP, MIXED = 0, 1, -1
EPOCH_FACTOR = 1.0  # search epochs per protocol epoch by default: the reference's ratio (module docstring)


def pattern_of(policy: Tensor) -> Tensor:
    """Host-side tasks x blocks int8: SELECT where the weights are exactly (1, 0), SKIP at (0, 1), else MIXED."""
    exact = policy.detach().cpu()
    pattern = torch.full(exact.shape[:2], MIXED, dtype=torch.int8)
    pattern[(exact[..., SELECT] == 1) & (exact[..., SKIP] == 0)] = SELECT
    pattern[(exact[..., SELECT] == 0) & (exact[..., SKIP] == 1)] = SKIP
    return pattern


def sharing_weights(n_policy: int, direction: str = "paper", n_stem: int = 0) -> Tensor:
    """Per-block weights of the sharing term: 0 for the ``n_stem`` stem blocks, then over the
    ``L = n_policy`` policy blocks ``(L - l)/L`` (paper) or ``(l + 1)/L`` (code), 0-based l."""
    index = torch.arange(n_policy, dtype=torch.float32)
    if direction == "paper":
        weights = (n_policy - index) / n_policy
    elif direction == "code":
        weights = (index + 1) / n_policy
    else:
        raise ValueError(f"sharing direction {direction!r} is not 'paper' or 'code'")
    return torch.cat([torch.zeros(n_stem), weights])


def sharing_loss(logits: Tensor, weights: Tensor) -> Tensor:
    """``sum_{t1<t2} sum_l w_l |logits[t1,l,select] - logits[t2,l,select]|`` (zero when policies agree)."""
    select = logits[..., SELECT]  # tasks x blocks
    diff = (select.unsqueeze(0) - select.unsqueeze(1)).abs()  # tasks x tasks x blocks
    return (diff * weights.to(diff)).sum() / 2  # each unordered pair once


def sparsity_loss(logits: Tensor, n_unlocked: int) -> Tensor:
    """Cross entropy of the unlocked (last) blocks' logits towards skip: mean per task, summed."""
    if n_unlocked == 0:
        return logits.sum() * 0.0
    part = logits[:, logits.shape[1] - n_unlocked :, :]
    target = torch.full(part.shape[:2], SKIP, dtype=torch.long, device=logits.device)
    return F.cross_entropy(part.flatten(0, 1).float(), target.flatten(), reduction="none").view(
        part.shape[:2]
    ).mean(dim=1).sum()


def skip_counts(plan: Plan) -> dict[str, float]:
    """``skipped.<task>``: blocks each task skips; ``reproduces_shared_bottom``: 1 when nothing is
    skipped; ``fully_shared``: 1 when every task follows the same policy.

    AdaShare's weights are shared (node 0 everywhere), so a plan without skips
    is shared-bottom exactly, and one where every task skips the same blocks
    is a shallower shared-bottom (``fully_shared`` but not
    ``reproduces_shared_bottom``).
    """
    counts = {f"skipped.{t}": float(plan.nodes[t].count(None)) for t in plan.tasks}
    shared = Plan.shared_bottom(plan.tasks, plan.blocks)
    same = len({plan.nodes[t] for t in plan.tasks}) == 1
    return {**counts, "reproduces_shared_bottom": float(plan == shared), "fully_shared": float(same)}


class AdaShareSupernet(nn.Module):
    """One shared backbone, per-task select/skip logits, and the policy state of the search.

    ``mode`` selects the policy a forward pass uses: ``"all"`` executes every
    block (warm-up), ``"sample"`` draws a soft Gumbel-softmax policy,
    ``"expected"`` uses the softmax probabilities, ``"fixed"`` uses
    ``fixed_policy``. In ``"sample"`` and ``"expected"`` the first
    ``n_blocks - n_unlocked`` blocks are forced to select: the stem
    (``n_stem`` first blocks, never learnable, as the reference's ``seed``)
    and the blocks the curriculum has not reached yet.
    """

    def __init__(self, bench: Benchmark, n_stem: int = 1) -> None:
        super().__init__()
        backbone = bench.backbone
        self.backbone = backbone  # read by the trainer (convolutional -> channels_last)
        self.tasks = list(bench.tasks)
        self.task_names = [t.name for t in self.tasks]
        self.blocks = nn.ModuleList(spec.make() for spec in backbone.blocks)
        self.shortcuts = nn.ModuleList(spec.shortcut() for spec in backbone.blocks)
        self.heads = nn.ModuleDict({t.name: backbone.make_head(t) for t in self.tasks})
        self.fusable = [spec.fusable for spec in backbone.blocks]
        self.policy_logits = nn.Parameter(torch.full((len(self.tasks), len(backbone.blocks), 2), 0.5))
        self.mode = "all"
        self.tau = 5.0
        if not 0 <= n_stem <= len(backbone.blocks):
            raise ValueError(f"AdaShareSupernet: n_stem={n_stem} is not in 0..{len(backbone.blocks)} (the blocks)")
        self.n_stem = n_stem
        self.n_unlocked = self.n_learnable
        self.fixed_policy: Tensor | None = None

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @property
    def n_learnable(self) -> int:
        """Blocks with a policy: all but the stem."""
        return self.n_blocks - self.n_stem

    @property
    def n_locked(self) -> int:
        return self.n_blocks - self.n_unlocked

    @property
    def curriculum_complete(self) -> bool:
        """Whether a policy phase has run with every learnable block unlocked."""
        return self.mode != "all" and self.n_unlocked == self.n_learnable

    def _lock(self, policy: Tensor) -> Tensor:
        """Force the locked (first) blocks to select."""
        if self.n_locked == 0:
            return policy
        forced = torch.zeros_like(policy[:, : self.n_locked])
        forced[..., SELECT] = 1.0
        return torch.cat([forced, policy[:, self.n_locked :]], dim=1)

    def policy(self, mode: str | None = None) -> tuple[Tensor | None, Tensor | None]:
        """The tasks x blocks x {select, skip} weights of a forward pass in ``mode``, and their pattern.

        None, None = every block executed. The pattern (see :func:`pattern_of`)
        is known on the host without reading the policy back from the device.
        """
        mode = mode or self.mode
        if mode == "all":
            return None, None
        if mode in ("sample", "expected"):
            logits = self.policy_logits.float()
            soft = gumbel_softmax(logits, self.tau) if mode == "sample" else torch.softmax(logits, dim=-1)
            pattern = torch.full(logits.shape[:2], MIXED, dtype=torch.int8)
            pattern[:, : self.n_locked] = SELECT
            return self._lock(soft), pattern
        if mode == "fixed":
            if self.fixed_policy is None:
                raise RuntimeError("AdaShareSupernet: mode 'fixed' needs fixed_policy to be set")
            return self.fixed_policy.to(self.policy_logits.device), pattern_of(self.fixed_policy)
        raise ValueError(f"unknown policy mode {mode!r}")

    def select_probabilities(self) -> Tensor:
        """The effective p(select) per task and block: 1 where a block is executed regardless of its logits.

        In warm-up every block; afterwards the stem and the blocks the
        curriculum has not unlocked (their logits stay at the initial 0.5/0.5,
        but every task executes them).
        """
        probs = torch.softmax(self.policy_logits.detach().float(), dim=-1)[..., SELECT]
        locked = self.n_blocks if self.mode == "all" else self.n_locked
        probs[:, :locked] = 1.0
        return probs

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.run(x, *self.policy())

    def run(self, x: Tensor, policy: Tensor | None, pattern: Tensor | None = None) -> dict[str, Tensor]:
        """Per-task predictions under ``policy``, each distinct block input computed once.

        Tasks whose weights so far were exactly select (1, 0) or exactly skip
        (0, 1) at the same blocks share their activation; a mixed weight gives
        the task an activation of its own from then on. ``pattern`` (host-side,
        from :func:`pattern_of`) says which entries are exact; without it the
        policy is read back once (a device sync).
        """
        n_tasks = len(self.tasks)
        groups: list[tuple[Tensor, list[int]]] = [(x, list(range(n_tasks)))]
        if policy is not None and pattern is None:
            pattern = pattern_of(policy)
        for level in range(self.n_blocks):
            need_skip = pattern is not None and bool((pattern[:, level] != SELECT).any())
            outs = self._blocks_on(level, [inp for inp, _ in groups], need_skip)
            new: list[tuple[Tensor, list[int]]] = []
            for (block_out, short_out), (_, members) in zip(outs, groups, strict=True):
                selected, skipped, mixed = [], [], []
                for t in members:
                    kind = SELECT if pattern is None else int(pattern[t, level])
                    (selected if kind == SELECT else skipped if kind == SKIP else mixed).append(t)
                if selected:
                    new.append((block_out, selected))
                if skipped:
                    new.append((short_out, skipped))
                for t in mixed:
                    p = policy[t, level].to(block_out.dtype)
                    new.append((p[SELECT] * block_out + p[SKIP] * short_out, [t]))
            groups = new
        out: dict[str, Tensor] = {}
        for feat, members in groups:
            for t in members:
                name = self.task_names[t]
                out[name] = self.heads[name](feat)
        return out

    def _blocks_on(self, level: int, inputs: Sequence[Tensor], need_skip: bool) -> list[tuple[Tensor, Tensor | None]]:
        """(block(x), shortcut(x) or None) for each distinct input; one batched call where fusable."""
        block, shortcut = self.blocks[level], self.shortcuts[level]
        if self.fusable[level] and len(inputs) > 1:
            sizes = [inp.shape[0] for inp in inputs]
            joined = torch.cat(list(inputs))
            block_outs = block(joined).split(sizes)
            short_outs = shortcut(joined).split(sizes) if need_skip else [None] * len(inputs)
            return list(zip(block_outs, short_outs, strict=True))
        return [(block(inp), shortcut(inp) if need_skip else None) for inp in inputs]

    # ------------------------------------------------------------ final plan
    def plan_of(self, policy: Tensor, blocks: Sequence[str]) -> Plan:
        """A hard policy as a Plan: node 0 where a task selects, None where it skips."""
        nodes = {
            name: [0 if policy[t, level, SELECT] > 0.5 else None for level in range(self.n_blocks)]
            for t, name in enumerate(self.task_names)
        }
        return Plan(self.task_names, blocks, nodes)

    def weights_for(self, plan: Plan) -> dict[str, Tensor]:
        """The shared search weights in BranchedNet's layout for ``plan``."""
        n = range(self.n_blocks)
        return export_state(
            blocks={(level, 0): self.blocks[level] for level in n if plan.nodes_used(level)},
            heads={name: self.heads[name] for name in self.task_names},
            shortcuts={level: self.shortcuts[level] for level in n if plan.has_skip(level)},
        )


class _Curriculum(Hook):
    """Warm-up, temperature decay, curriculum and locked logits, all from the epoch number.

    Everything is a function of ``fit.epoch``, so a resumed search continues
    exactly; the hook keeps no state of its own beyond one step's snapshot.
    """

    def __init__(self, net: AdaShareSupernet, params: dict, warmup_epochs: int) -> None:
        self.net = net
        self.p = params
        self.warmup_epochs = warmup_epochs
        self._snapshot: Tensor | None = None
        self._frozen: list[nn.Parameter] = []

    def on_epoch_start(self, fit: FitState) -> None:
        net, p = self.net, self.p
        phase = fit.epoch - self.warmup_epochs
        if phase < 0:
            net.mode, net.n_unlocked, net.tau = "all", net.n_learnable, p["tau"]
            return
        net.mode = "sample"
        net.tau = p["tau"] * p["tau_decay"] ** phase
        unlocked = phase // p["curriculum_speed"] + 1 if p["curriculum"] else net.n_learnable
        net.n_unlocked = min(net.n_learnable, unlocked)

    def on_step_start(self, fit: FitState, phase: str) -> None:
        if phase != "policy":
            return
        self._snapshot = self.net.policy_logits.detach().clone()
        self._frozen = [q for name, q in self.net.named_parameters() if name != "policy_logits" and q.requires_grad]
        for q in self._frozen:  # weights get no gradient in a policy step (only saves work)
            q.requires_grad_(False)

    def on_step_end(self, fit: FitState, phase: str, loss: float) -> None:
        if phase != "policy":
            return
        for q in self._frozen:
            q.requires_grad_(True)
        locked = self.net.n_locked
        if locked and self._snapshot is not None:
            with torch.no_grad():
                self.net.policy_logits[:, :locked] = self._snapshot[:, :locked]
        self._snapshot = None

    def on_epoch_end(self, fit: FitState, logs: dict[str, float]) -> None:
        net = self.net
        logs["adashare.tau"] = net.tau
        logs["adashare.unlocked_blocks"] = float(net.n_unlocked if net.mode != "all" else 0)
        probs = net.select_probabilities().cpu()
        for t, name in enumerate(net.task_names):
            for level, block in enumerate(net.backbone.block_names):
                logs[f"adashare.p_select.{name}.{block}"] = float(probs[t, level])


class AdaShare(Method):
    """Learned per-task select-or-skip policies over shared weights; not budget-aware."""

    name = "adashare"
    version = 3  # v3: epoch_factor 1 (was 5), chosen on development seeds; v2: sharing weights over policy blocks only
    budget_aware = False
    tags = frozenset({"search", "skips", "stochastic"})
    options = {
        "tau": Option(5.0, "initial Gumbel-softmax temperature (the reference: 5)", low=1e-3, high=100.0),
        "tau_decay": Option(0.965, "temperature factor per policy phase (the reference: 0.965)", low=0.01, high=1.0),
        "warmup_fraction": Option(0.2, "fraction of epochs with every block executed (the reference: 0.2)",
                                  low=0.0, high=0.95),
        "curriculum": Option(True, "unlock policies from the last block backwards"),
        "curriculum_speed": Option(3, "policy phases per newly unlocked block (the reference: 3)", low=1),
        "policy_lr": Option(0.01, "Adam learning rate of the policy logits", low=1e-6, high=10.0,
                            tune=Space(1e-3, 0.1, log=True)),
        "policy_weight_decay": Option(5e-4, "weight decay of the policy logits", low=0.0, high=1.0),
        "sparsity_weight": Option(0.001, "weight of the sparsity term (NYU-v2 3-task config)", low=0.0,
                                  tune=Space(1e-4, 1e-2, log=True)),
        "sharing_weight": Option(0.05, "weight of the sharing term (NYU-v2 3-task config)", low=0.0,
                                 tune=Space(5e-3, 0.5, log=True)),
        "sharing_direction": Option("paper", "per-block sharing weights: paper (L-l)/L or code (l+1)/L",
                                    choices=("paper", "code")),
        "holdout_fraction": Option(0.5, "part of the training split used for policy steps", low=0.05, high=0.95),
        "samples": Option(8, "policies sampled at the end; the best on validation is kept", low=1, high=1000),
        "search_epochs": Option(0, "supernet epochs; 0 = epoch_factor x the benchmark protocol's", low=0,
                                high=100_000),
        "epoch_factor": Option(EPOCH_FACTOR, "search epochs as a multiple of the protocol's, when search_epochs=0",
                               low=0.1, high=100.0),
        "skip_first_block": Option(False, "let tasks skip block 0 too (the reference's stem always runs)"),
        "policy_phases": Option(0, "policy phases after the warm-up; 0 = from epoch_factor (the reference: ~333)",
                                low=0, high=100_000),
    }

    def check(self) -> None:
        p = self.params
        if p["search_epochs"] and p["policy_phases"]:
            raise OptionError(
                f"{self.owner}: search_epochs={p['search_epochs']} and policy_phases={p['policy_phases']} both set "
                "the search's length; give one of them (the other 0)"
            )

    def search_length(self, protocol_epochs: int) -> tuple[int, int]:
        """(search epochs, warm-up epochs): from search_epochs, policy_phases or epoch_factor."""
        p = self.params
        if p["policy_phases"]:
            warmup = int(round(p["policy_phases"] * p["warmup_fraction"] / (1 - p["warmup_fraction"])))
            return p["policy_phases"] + warmup, warmup
        epochs = p["search_epochs"] or max(1, round(protocol_epochs * p["epoch_factor"]))
        return epochs, min(epochs - 1, int(round(p["warmup_fraction"] * epochs)))

    def feasible(self, bench: Benchmark, budget: Budget) -> bool | None:
        """Whether select-or-skip patterns can tell the true groups apart: at most 2^(skippable blocks) groups.

        Tasks share an activation exactly when they select the same blocks so
        far, so giving each group its own pattern recovers the grouping at the
        last block.
        """
        truth = bench.true_partition()
        if truth is None:
            return None
        skippable = len(bench.backbone.blocks) - (0 if self.params["skip_first_block"] else 1)
        return len(truth) <= 2**skippable

    def search(self, bench: Benchmark, budget: Budget, ctx: RunContext) -> SearchResult:
        del budget  # not budget-aware (DESIGN.md)
        p = self.params
        net = AdaShareSupernet(bench, n_stem=0 if p["skip_first_block"] else 1)
        epochs, warmup = self.search_length(bench.protocol.epochs)
        protocol = bench.protocol.replace(early_stopping=0, epochs=epochs)
        weights = sharing_weights(net.n_learnable, p["sharing_direction"], n_stem=net.n_stem)

        def task_loss(model: AdaShareSupernet, x: Tensor, y: dict[str, Tensor]):
            return multitask_loss(model.tasks, model(x), y)

        def policy_loss(model: AdaShareSupernet, x: Tensor, y: dict[str, Tensor]):
            total, per_task = multitask_loss(model.tasks, model(x), y)
            logits = model.policy_logits.float()
            total = total + p["sparsity_weight"] * sparsity_loss(logits, model.n_unlocked)
            total = total + p["sharing_weight"] * sharing_loss(logits, weights)
            return total, per_task

        def val_loss(model: AdaShareSupernet, x: Tensor, y: dict[str, Tensor]):
            return multitask_loss(model.tasks, model.run(x, *model.policy(None if model.mode == "all" else "expected")), y)

        extra = ExtraOptimizer(
            "policy",
            [net.policy_logits],
            lambda params: torch.optim.Adam(params, lr=p["policy_lr"], weight_decay=p["policy_weight_decay"]),
            loss_fn=policy_loss,
            start_epoch=warmup,
        )
        trainer = ctx.trainer("search", protocol)
        fit = trainer.fit(
            net, bench, loss_fn=task_loss, val_loss_fn=val_loss, hooks=[_Curriculum(net, p, warmup)],
            extra=[extra], holdout_fraction=p["holdout_fraction"], early_stopping=False,
        )

        complete = net.curriculum_complete
        if not complete:
            warnings.warn(
                f"adashare: the search ended with {net.n_unlocked if net.mode != 'all' else 0} of "
                f"{net.n_learnable} policy blocks unlocked (curriculum incomplete: {fit.epochs_run} epochs, "
                f"{warmup} warm-up, curriculum_speed {p['curriculum_speed']}); the locked blocks are executed "
                "by every task. Raise search_epochs or epoch_factor, or lower curriculum_speed.",
                RuntimeWarning, stacklevel=2,
            )
        plan, scores = self._pick(net, bench, trainer, ctx.seed)
        probs = net.select_probabilities().cpu()
        ctx.log_artifact("policy.json", {
            "p_select": {name: [round(float(v), 6) for v in probs[t]] for t, name in enumerate(net.task_names)},
            "blocks": list(bench.backbone.block_names),
            "curriculum_complete": complete,
            "samples": scores,
        })
        cost = {
            "supernet_epochs": fit.epochs_run,
            "supernet_steps": fit.steps.get("weights", 0),  # the warm-up's on the whole split, then on its part
            "policy_steps": fit.steps.get("policy", 0),
            "samples_scored": len(scores),
            "curriculum_complete": float(complete),
            "skip_fraction": sum(plan.nodes[t].count(None) for t in plan.tasks) / (len(plan.tasks) * plan.n_blocks),
            **skip_counts(plan),
        }
        return SearchResult(plan, cost=cost, init_state=net.weights_for(plan))

    def _pick(self, net: AdaShareSupernet, bench: Benchmark, trainer, seed: int) -> tuple[Plan, list[dict]]:
        """Sample hard policies from the learned distribution; keep the best by supernet val loss.

        Blocks executed regardless of their logits (stem, not yet unlocked) are
        always selected, as in every forward pass of the search.
        """
        gen = torch.Generator().manual_seed(seed * 7919 + 17)
        p_select = net.select_probabilities().cpu()
        blocks = bench.backbone.block_names
        seen: dict[Plan, float] = {}
        scores: list[dict] = []
        net.mode = "fixed"
        for _ in range(self.params["samples"]):
            chosen = torch.rand(p_select.shape, generator=gen) < p_select
            policy = torch.stack([chosen.float(), (~chosen).float()], dim=-1)
            plan = net.plan_of(policy, blocks)
            if plan not in seen:
                net.fixed_policy = policy
                seen[plan], _ = trainer.evaluate_loss(net, bench, trainer.place(bench, bench.splits["val"]),
                                                      lambda m, x, y: multitask_loss(m.tasks, m(x), y))
                scores.append({"nodes": plan.to_dict()["nodes"], "val_loss": seen[plan]})
        net.mode = "expected"
        best = min(seen, key=seen.__getitem__)
        return best, scores
