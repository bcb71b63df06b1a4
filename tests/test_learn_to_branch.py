"""Learn-to-Branch: the branching op, Gumbel sampling, derivation, widths, fusion and search."""

from __future__ import annotations

import pytest
import torch

from branchbench.context import LocalContext
from branchbench.core.budget import Budget, BudgetError
from branchbench.core.gumbel import TemperatureSchedule, gumbel_softmax, sample_gumbel
from branchbench.core.net import BranchedNet
from branchbench.datasets.synthetic import Synthetic
from branchbench.methods.learn_to_branch import (
    BranchingSupernet,
    LearnToBranch,
    coshare_probability,
    derive_widths,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bench():
    return Synthetic(tasks=4, groups=2, input_dim=8, width=8, depth=3, n_train=256, n_val=128, n_test=128).load()


def _net(bench, widths, seed=0):
    torch.manual_seed(seed)
    return BranchingSupernet(bench.backbone, bench.tasks, widths)


def _randomise_logits(net, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for q in net.arch_parameters():
            q.copy_(torch.randn(q.shape, generator=gen) * 2)


# ------------------------------------------------------------------ gumbel
def test_soft_sample_at_low_temperature_equals_hard_sample_with_same_noise():
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    noise = sample_gumbel(logits.shape, generator=torch.Generator().manual_seed(1))
    soft = gumbel_softmax(logits, tau=1e-3, noise=noise)
    hard = gumbel_softmax(logits, tau=1e-3, noise=noise, hard=True)
    assert torch.allclose(soft, hard, atol=1e-5)
    assert torch.equal(hard.argmax(-1), (logits + noise).argmax(-1))


def test_hard_sample_is_one_hot_forward_with_soft_gradient():
    logits = torch.tensor([[0.0, 1.0, -1.0]], requires_grad=True)
    noise = torch.zeros_like(logits)
    hard = gumbel_softmax(logits, tau=0.5, noise=noise, hard=True)
    assert hard.tolist() == [[0.0, 1.0, 0.0]]
    (hard * torch.tensor([[1.0, 2.0, 3.0]])).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0  # straight-through


def test_temperature_schedules_hit_their_ends():
    for kind in ("exponential", "linear"):
        s = TemperatureSchedule(kind, start=4.0, end=0.25)
        assert s(0.0) == pytest.approx(4.0) and s(1.0) == pytest.approx(0.25)
        assert s(0.3) > s(0.6)
    assert TemperatureSchedule("constant", 2.0, 0.1)(0.9) == 2.0
    with pytest.raises(ValueError, match="not one of"):
        TemperatureSchedule("cosine")


# ---------------------------------------------------------------- supernet
def test_branching_output_is_the_hand_computed_weighted_sum_of_parents(bench):
    widths = [2, 3, 4]
    net = _net(bench, widths)
    _randomise_logits(net)
    gen = torch.Generator().manual_seed(3)
    net.noise = [sample_gumbel(q.shape, generator=gen) for q in net.all_logits()]
    net.hard, net.tau = False, 0.7
    x = bench.splits["train"].x[:5]
    got = net(x)

    # plain loop, one node at a time, with the same samples
    outs = [net.nodes[0][k](x) for k in range(widths[0])]
    for level in range(1, 3):
        w = torch.softmax((net.logits[level - 1] + net.noise[level - 1]) / 0.7, dim=-1)
        outs = [
            net.nodes[level][c](sum(w[c, p] * outs[p] for p in range(widths[level - 1])))
            for c in range(widths[level])
        ]
    # the heads are the leaves: each mixes the last block's nodes with its own sample
    w = torch.softmax((net.head_logits + net.noise[-1]) / 0.7, dim=-1)
    for i, task in enumerate(net.task_names):
        mixed = sum(w[i, p] * outs[p] for p in range(widths[-1]))
        assert torch.allclose(got[task], net.heads[task](mixed), atol=1e-5), task


def test_last_block_nodes_mode_maps_heads_one_to_one(bench):
    net = BranchingSupernet(bench.backbone, bench.tasks, [1, 2, 4], leaves="nodes")
    assert net.head_logits is None and len(net.arch_parameters()) == 2
    assert net.paths()[net.task_names[2]][-1] == 2
    # narrower than one node per task: the heads choose after all
    assert BranchingSupernet(bench.backbone, bench.tasks, [1, 2, 3], leaves="nodes").head_logits is not None
    with pytest.raises(ValueError, match="leaves"):
        BranchingSupernet(bench.backbone, bench.tasks, [1, 2, 3], leaves="tasks")


@pytest.mark.parametrize("fuse", [None, True])
def test_one_search_step_evaluates_sum_of_widths_blocks(bench, fuse):
    widths = [1, 2, 4]
    net = _net(bench, widths)
    net.fuse = fuse
    calls = []
    for level in range(3):
        for node in net.nodes[level]:
            node.register_forward_pre_hook(lambda m, a, level=level: calls.append(level))
    net.train()
    loss = sum(v.square().mean() for v in net(bench.splits["train"].x[:8]).values())
    loss.backward()
    assert net.block_evals == sum(widths)
    if fuse:  # vmap calls the template module once per block, whatever K_l is
        assert calls == [0, 1, 2]
    else:  # BranchedNet's rule: never fuse on the CPU, so every node runs once
        assert calls == [0, 1, 1, 2, 2, 2, 2]
        assert not any(net.fused(level, "cpu") for level in range(3))


def test_fused_and_plain_supernet_agree(bench):
    net = _net(bench, [2, 3, 4])
    _randomise_logits(net)
    gen = torch.Generator().manual_seed(4)
    net.noise = [sample_gumbel(q.shape, generator=gen) for q in net.all_logits()]
    x = bench.splits["train"].x[:6]
    plain = net(x)
    net.fuse = True
    fused = net(x)
    for task in net.task_names:
        assert torch.allclose(plain[task], fused[task], atol=1e-5), task


def test_warmup_mixes_parents_uniformly_in_eval_mode_too(bench):
    net = _net(bench, [2, 3, 4])
    _randomise_logits(net)
    net.uniform = True
    x = bench.splits["val"].x[:4]
    got = net.eval()(x)
    outs = [net.nodes[0][k](x) for k in range(2)]
    for level in range(1, 3):
        outs = [net.nodes[level][c](sum(outs) / len(outs)) for c in range(len(net.nodes[level]))]
    task = net.task_names[0]
    assert torch.allclose(got[task], net.heads[task](sum(outs) / len(outs)), atol=1e-5)


def test_noiseless_supernet_equals_the_derived_plan_in_branchednet(bench):
    net = _net(bench, [2, 3, 4])
    _randomise_logits(net, seed=5)
    net.eval()
    plan, state = net.derive()
    assert plan.is_tree
    branched = BranchedNet(plan, bench.backbone, bench.tasks)
    branched.load_state_dict(state, strict=True)  # exactly the layout, no missing or extra key
    x = bench.splits["val"].x[:16]
    with torch.no_grad():
        a, b = net(x), branched.eval()(x)
    for task in net.task_names:
        assert torch.allclose(a[task], b[task], atol=1e-5), task


def test_derived_plan_follows_the_argmax_parents_and_drops_unreached_nodes(bench):
    net = _net(bench, [3, 3, 4])
    with torch.no_grad():
        net.head_logits.copy_(torch.eye(4) * 5)
        net.logits[1].copy_(torch.tensor([[5.0, 0, 0], [5.0, 0, 0], [0, 0, 5.0], [0, 0, 5.0]]))
        net.logits[0].copy_(torch.tensor([[0, 5.0, 0], [0, 5.0, 0], [0, 5.0, 0]]))
    plan, _ = net.derive()
    names = net.task_names
    assert sorted(map(sorted, plan.partition(0))) == [sorted(names)]
    assert sorted(map(sorted, plan.partition(1))) == [names[:2], names[2:]]
    assert [len(plan.nodes_used(level)) for level in range(3)] == [1, 2, 4]


def test_heads_as_leaves_can_share_the_deepest_block(bench):
    net = _net(bench, [1, 2, 2])
    with torch.no_grad():
        net.head_logits.copy_(torch.tensor([[5.0, 0], [5.0, 0], [0, 5.0], [0, 5.0]]))
        net.logits[1].copy_(torch.tensor([[5.0, 0], [0, 5.0]]))
    plan, _ = net.derive()
    names = net.task_names
    assert sorted(map(sorted, plan.partition(2))) == [names[:2], names[2:]]
    assert sorted(map(sorted, plan.partition(1))) == [names[:2], names[2:]]


# ------------------------------------------------------------------ widths
@pytest.mark.parametrize("ratio", [1.0, 1.5, 2.0, 3.0, None])
def test_every_derivable_tree_fits_under_the_cap(bench, ratio):
    budget = Budget(ratio)
    backbone = bench.backbone
    widths = LearnToBranch().widths_for(bench, budget)
    assert sum(k * p for k, p in zip(widths, backbone.block_params, strict=True)) <= budget.cap(backbone)
    assert widths == sorted(widths) and max(widths) <= len(bench.tasks)
    if ratio is not None and ratio >= 2.0:  # capacity goes to branching below the first block
        assert widths[0] == 1 and widths[1] > 1
    net = _net(bench, widths)
    for seed in range(10):
        _randomise_logits(net, seed)
        plan, _ = net.derive()
        assert plan.is_tree and budget.allows(plan, backbone), (ratio, widths, plan)


def test_widths_rule_gives_capacity_to_early_branching():
    assert derive_widths([10, 10, 10], 4, cap=float("inf")) == [4, 4, 4]
    assert derive_widths([10, 10, 10], 4, cap=70) == [1, 3, 3]
    assert derive_widths([10, 10, 10], 4, cap=80) == [1, 3, 4]  # leftover to the deepest block
    assert derive_widths([10, 10, 10], 4, cap=100) == [2, 4, 4]  # the first block last
    assert derive_widths([10, 10, 10], 4, cap=30) == [1, 1, 1]
    assert derive_widths([10, 10, 10], 4, cap=float("inf"), max_width=2) == [2, 2, 2]
    assert derive_widths([10, 10, 10], 4, cap=70, leaves="nodes") == [1, 2, 4]
    # the default synthetic backbone (block params 560, 304, 304, 304; 9 tasks) at the sweep's budgets
    assert derive_widths([560, 304, 304, 304], 9, cap=2.5 * 1472) == [1, 3, 3, 4]
    assert derive_widths([560, 304, 304, 304], 9, cap=5.0 * 1472) == [1, 7, 7, 8]
    with pytest.raises(BudgetError, match="below shared-bottom"):
        derive_widths([10, 10, 10], 4, cap=20)


def test_explicit_widths_over_the_cap_are_refused(bench):
    with pytest.raises(BudgetError, match="over the cap"):
        LearnToBranch(widths="4,4,4").widths_for(bench, Budget(1.5))
    with pytest.raises(ValueError, match="one positive width per block"):
        LearnToBranch(widths="1,2").widths_for(bench, Budget(None))


def test_coshare_probability_is_one_when_parents_are_certain_and_shared():
    widths = [1, 2, 2]
    certain = [torch.tensor([[1.0], [1.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]])]
    assert coshare_probability(certain, widths, 0, 1) == [1.0, 1.0, 0.0]
    uniform = [torch.tensor([[1.0], [1.0]]), torch.full((2, 2), 0.5)]
    assert coshare_probability(uniform, widths, 0, 1) == pytest.approx([1.0, 0.5, 0.0])


# ------------------------------------------------------------------ search
def test_search_moves_probabilities_logs_curves_and_returns_a_fine_tunable_tree(bench):
    torch.manual_seed(0)
    ctx = LocalContext(bench, seed=0)
    method = LearnToBranch(epochs=10, warmup_epochs=1, logit_lr=0.3)
    result = method.search(bench, Budget(None), ctx)

    plan = result.plan
    assert plan.is_tree and plan.tasks == tuple(bench.task_names)
    assert len(ctx.curve("search/ltb/p.fc1.n0.p0")) == 10
    # uniform parents over 4 nodes would give 0.25 everywhere; the search moves towards one parent
    levels = result.artifacts["branching_probabilities.json"]["levels"]
    top = [max(row) for level in levels.values() for row in level["p"]]
    assert sum(top) / len(top) > 0.5, top
    used = ctx.curve("search/ltb/min_top_prob_used.fc2")
    assert used[-1] > used[0]
    assert ctx.curve("search/ltb/coshare_gap.fc1")
    # counted: a weight step runs every node once; after warm-up a logit step does too
    assert result.cost["block_evals_per_weight_step"] == 4 * 3
    assert result.cost["block_evals_per_search_step"] == 2 * 4 * 3
    assert result.cost["logit_steps"] == 9 * result.cost["weight_steps"] / 10
    assert {"branching_probabilities.json", "derived_tree.png", "branching_history.csv"} <= set(result.artifacts)
    net = BranchedNet(plan, bench.backbone, bench.tasks)
    net.load_state_dict(result.init_state, strict=True)


def test_holdout_option_needs_and_uses_a_holdout_split(bench):
    ctx = LocalContext(bench, seed=1)
    method = LearnToBranch(epochs=3, warmup_epochs=1, logit_data="holdout", holdout_fraction=0.5)
    result = method.search(bench, Budget(2.0), ctx)
    assert Budget(2.0).allows(result.plan, bench.backbone)
    # counted steps: the warm-up trains on all 256 samples (2 batches), then 128 are left (1 batch)
    assert result.cost["weight_steps"] == 2 + 1 + 1
    assert result.cost["logit_steps"] == 2
    assert len(ctx.curve("search/train_loss")) == 3


def test_warmup_longer_than_search_is_refused(bench):
    with pytest.raises(ValueError, match="warmup_epochs"):
        LearnToBranch(epochs=3, warmup_epochs=3).search(bench, Budget(None), LocalContext(bench))
