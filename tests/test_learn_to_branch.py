"""Learn-to-Branch: the branching op, Gumbel sampling, derivation, widths, fusion and search."""

from __future__ import annotations

import re

import pytest
import torch

from branchbench.context import LocalContext
from branchbench.core.budget import Budget, BudgetError
from branchbench.core.gumbel import TemperatureSchedule, gumbel_softmax, sample_gumbel
from branchbench.core.net import BranchedNet
from branchbench.core.plan import Plan
from branchbench.datasets.synthetic import Synthetic
from branchbench.methods import learn_to_branch as ltb
from branchbench.methods.learn_to_branch import (
    BranchingSupernet,
    LearnToBranch,
    LearnToBranchUncapped,
    can_express,
    coshare_probability,
    derive_widths,
    grouping_depths,
)
from branchbench.plugins import get_method_class

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


def _grads(net, x, phase):
    net.zero_grad(set_to_none=True)
    net.phase = phase
    sum(v.square().mean() for v in net(x).values()).backward()
    net.phase = None
    return {name: None if q.grad is None else q.grad.clone() for name, q in net.named_parameters()}


def test_a_logit_step_computes_the_logit_gradients_and_no_weight_gradient(bench):
    net = _net(bench, [2, 3, 4])
    _randomise_logits(net)
    net.hard, net.tau = False, 0.7
    gen = torch.Generator().manual_seed(6)
    net.noise = [sample_gumbel(q.shape, generator=gen) for q in net.all_logits()]
    fired = []
    for name, q in net.named_parameters():
        if not name.startswith(("logits", "head_logits")):
            q.register_hook(lambda g, name=name: fired.append(name))
    x = bench.splits["train"].x[:16]
    both = _grads(net, x, None)
    fired.clear()

    logits_only = _grads(net, x, "logits")
    assert fired == []  # no node or head weight took part in the backward pass
    arch = {name for name, _ in net.named_parameters() if name.startswith(("logits", "head_logits"))}
    for name, grad in logits_only.items():
        if name in arch:  # the same logit gradients as a full backward pass
            assert grad is not None and grad.abs().sum() > 0 and torch.allclose(grad, both[name], atol=1e-6), name
        else:
            assert grad is None, name
    assert all(q.requires_grad for q in net.parameters())  # the weights are trainable again afterwards

    weights_only = _grads(net, x, "weights")
    for name, grad in weights_only.items():
        if name in arch:
            assert grad is None, name
        else:
            assert torch.allclose(grad, both[name], atol=1e-6), name


def test_a_search_takes_no_weight_gradient_in_its_logit_steps(bench, monkeypatch):
    phases = {"weights": [], "logits": []}  # the step during which each kind of parameter got a gradient

    class Spy(BranchingSupernet):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            for q in self.weight_parameters():
                q.register_hook(lambda g: phases["weights"].append(self.phase))
            for q in self.arch_parameters():
                q.register_hook(lambda g: phases["logits"].append(self.phase))

    monkeypatch.setattr(ltb, "BranchingSupernet", Spy)
    result = LearnToBranch(epochs=3, warmup_epochs=1).search(bench, Budget(None), LocalContext(bench))
    assert set(phases["weights"]) == {"weights"}
    assert set(phases["logits"]) == {"logits"}
    assert len(phases["logits"]) == result.cost["logit_steps"] * 3  # two block levels and the heads


def test_eval_runs_the_noiseless_relaxation_so_the_warmup_end_does_not_jump(bench):
    net = _net(bench, [2, 3, 4])
    net.hard, net.tau = False, 5.0
    x = bench.splits["val"].x[:8]
    net.eval()
    net.uniform = True
    warmup = net(x)
    net.uniform = False  # the first search epoch, logits still zero: the same network
    relaxed = net(x)
    for task in net.task_names:
        assert torch.allclose(warmup[task], relaxed[task], atol=1e-6), task
    # with moved logits: softmax(theta / tau), no noise; the argmax tree only when asked
    _randomise_logits(net)
    net.noise = [torch.zeros_like(q) for q in net.all_logits()]
    expected = net.train()(x)
    net.noise = None
    got = net.eval()(x)
    for task in net.task_names:
        assert torch.allclose(got[task], expected[task], atol=1e-6), task
    net.eval_argmax = True
    plan, state = net.derive()
    branched = BranchedNet(plan, bench.backbone, bench.tasks)
    branched.load_state_dict(state)
    with torch.no_grad():
        a, b = net(x), branched.eval()(x)
    assert all(torch.allclose(a[t], b[t], atol=1e-5) for t in net.task_names)


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


def test_a_one_block_backbone_widens_its_block_under_a_cap():
    assert derive_widths([10], 4, cap=30) == [3]
    assert derive_widths([10], 4, cap=100) == [4]
    assert derive_widths([10], 4, cap=10) == [1]


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
    # uniform parents over 4 nodes would give 0.25 everywhere; the search moves towards one parent
    levels = result.artifacts["branching_probabilities.json"]["levels"]
    top = [max(row) for level in levels.values() for row in level["p"]]
    assert sum(top) / len(top) > 0.5, top
    assert ctx.curve("search/ltb/coshare_gap.fc1")
    # counted: a weight step runs every node once; after warm-up a logit step does too
    assert result.cost["block_evals_per_weight_step"] == 4 * 3
    assert result.cost["block_evals_per_search_step"] == 2 * 4 * 3
    assert result.cost["logit_steps"] == 9 * result.cost["weight_steps"] / 10
    assert {"branching_probabilities.json", "derived_tree.png", "branching_history.csv"} <= set(result.artifacts)
    net = BranchedNet(plan, bench.backbone, bench.tasks)
    net.load_state_dict(result.init_state, strict=True)


def test_search_logs_a_compact_commitment_curve_and_keeps_every_probability_as_an_artifact(bench):
    torch.manual_seed(0)
    ctx = LocalContext(bench, seed=0)
    result = LearnToBranch(epochs=10, warmup_epochs=1, logit_lr=0.3).search(bench, Budget(None), ctx)

    low, mean = ctx.curve("search/commitment.min"), ctx.curve("search/commitment.mean")
    assert len(low) == len(mean) == 10
    assert all(0.25 - 1e-6 <= a <= b <= 1.0 for a, b in zip(low, mean, strict=True))  # 4 parents each
    assert mean[-1] > mean[0]  # the logits commit
    for level in ("fc1", "fc2", "heads"):
        assert len(ctx.curve(f"search/commitment.{level}")) == 10
    changed = ctx.curve("search/tree_changed")
    assert set(changed) <= {0.0, 1.0} and changed[0] == 0.0
    assert result.cost["tree_final_epoch"] == max([0] + [e for e, c in enumerate(changed) if c])
    assert result.cost["commitment"] == pytest.approx(mean[-1])
    # one value per level or block, not one per (child, parent) pair
    per_epoch = [m for step, m in ctx.metrics if "search/commitment.min" in m]
    assert not any(re.search(r"\.n\d+\.p\d+$", key) for m in per_epoch for key in m)
    assert len(per_epoch[-1]) < 30, sorted(per_epoch[-1])
    history = result.artifacts["branching_history.csv"]
    assert len(history) == 10 and "p.fc1.n3.p2" in history.columns and "p.heads.n0.p3" in history.columns
    # the argmax tree's val loss, once, at the last epoch
    assert len(ctx.curve("search/val_loss_argmax")) == 1


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


# ---------------------------------------------------------- search space
def _logits_for(net, plan):
    """Logits whose argmax tree is ``plan`` (the construction in can_express's docstring)."""
    index = [{key: i for i, key in enumerate(plan.activations(level))} for level in range(plan.n_blocks)]
    with torch.no_grad():
        for q in net.arch_parameters():
            q.zero_()
        for level in range(1, plan.n_blocks):
            for key, child in index[level].items():
                net.logits[level - 1][child, index[level - 1][key[:-1]]] = 5.0
        for i, task in enumerate(plan.tasks):
            net.head_logits[i, index[-1][plan.prefix(task, plan.n_blocks - 1)]] = 5.0


def test_the_space_yields_exactly_the_trees_can_express_accepts(bench):
    names, blocks = bench.task_names, bench.backbone.block_names
    groups = [sorted(t for t in names if bench.groups[t] == g) for g in sorted(set(bench.groups.values()))]
    true_tree = Plan.from_partitions(names, blocks, [[names], groups, groups])
    plans = [Plan.shared_bottom(names, blocks), Plan.independent(names, blocks), true_tree]
    for widths in ([1, 2, 2], [1, 2, 4], [4, 4, 4]):
        net = _net(bench, widths)
        for plan in plans:
            if can_express(widths, plan):
                _logits_for(net, plan)
                assert net.derive()[0] == plan, (widths, plan)
        for seed in range(5):  # whatever the logits, the argmax tree is in the space
            _randomise_logits(net, seed)
            assert can_express(widths, net.derive()[0])
    assert not can_express([1, 2, 4], Plan.independent(names, blocks))
    assert not can_express([1, 1, 4], true_tree)
    # pinned leaves: one node per task at the last block, so it cannot be shared
    assert not can_express([1, 2, 4], true_tree, leaves="nodes")
    assert grouping_depths([1, 2, 4], groups, leaves="nodes") == [1]
    assert grouping_depths([1, 2, 4], groups) == [1, 2]


def test_the_uncapped_variant_searches_every_tree_and_ignores_the_budget(bench):
    cls = get_method_class("learn_to_branch_uncapped")
    assert cls is LearnToBranchUncapped and not cls.budget_aware and LearnToBranch.budget_aware
    names, blocks = bench.task_names, bench.backbone.block_names
    capped = LearnToBranch().widths_for(bench, Budget(2.0))
    uncapped = cls().widths_for(bench, Budget(2.0))
    assert uncapped == [len(names)] * len(blocks)
    assert can_express(uncapped, Plan.independent(names, blocks))
    assert not can_express(capped, Plan.independent(names, blocks))
    groups = [[t for t in names if bench.groups[t] == g] for g in sorted(set(bench.groups.values()))]
    assert grouping_depths(uncapped, groups) == [0, 1, 2]
    result = cls(epochs=2, warmup_epochs=1).search(bench, Budget(1.0), LocalContext(bench))
    assert result.cost["supernet_backbone_params"] == len(names) * sum(bench.backbone.block_params)


def test_without_any_choice_there_are_no_logit_steps(bench):
    # 1.0x: one node per block, so every child has one parent and the heads one node
    result = LearnToBranch(epochs=3, warmup_epochs=1).search(bench, Budget(1.0), LocalContext(bench))
    assert result.plan == Plan.shared_bottom(bench.task_names, bench.backbone.block_names)
    assert result.cost["logit_steps"] == 0 and result.cost["commitment"] == 1.0


# ---------------------------------------------------------------- schedule
def _hook_taus(bench, hold: float, warmup_epochs: int = 1, epochs: int = 6, steps: int = 4):
    net = _net(bench, [1, 2, 4])
    hook = ltb._BranchingHook(net, TemperatureSchedule("exponential", 5.0, 0.1), warmup_epochs, None,
                              bench.backbone.block_names, tau_hold=hold)
    fit = ltb.FitState(model=net, epochs=epochs, steps_per_epoch=steps)
    taus = []
    for fit.step in range(epochs * steps):
        fit.epoch = fit.step // steps
        hook.on_step_start(fit, "weights")
        if fit.epoch >= warmup_epochs:
            taus.append(net.tau)
    return taus


def test_tau_is_held_at_tau_start_for_the_first_fraction_of_the_search_then_annealed(bench):
    taus = _hook_taus(bench, hold=0.5)  # 20 search steps, progress i/19: the first 10 (<= 0.5) at tau_start
    assert taus[:10] == pytest.approx([5.0] * 10)
    assert all(a > b for a, b in zip(taus[9:], taus[10:], strict=False))
    assert taus[-1] == pytest.approx(0.1)  # the last search step reaches tau_end
    plain = _hook_taus(bench, hold=0.0)
    assert plain[0] == pytest.approx(5.0) and plain[1] < 4.9  # no hold: annealed from the first search step
    assert ltb.held_progress(1.0, 0.5) == 1.0 and ltb.held_progress(0.75, 0.5) == 0.5
    # the default holds the first 40% of the search: 5 search epochs of 2 steps, logged at each epoch's end
    ctx = LocalContext(bench)
    LearnToBranch(epochs=6, warmup_epochs=1).search(bench, Budget(None), ctx)
    logged = ctx.curve("search/ltb/tau")
    assert logged[1:3] == pytest.approx([5.0, 5.0]) and logged[3] < 4.9 and logged[-1] < logged[3]


def test_with_a_holdout_tau_stays_at_tau_start_through_warm_up_and_ends_at_tau_end(bench):
    # a 50% holdout: warm-up epochs run 2 steps on the whole train split, search epochs 1 on the rest
    ctx = LocalContext(bench)
    LearnToBranch(epochs=6, warmup_epochs=2, tau_hold=0.0, logit_data="holdout", holdout_fraction=0.5).search(
        bench, Budget(None), ctx)
    logged = ctx.curve("search/ltb/tau")  # the last step's temperature per epoch
    assert logged[:3] == pytest.approx([5.0, 5.0, 5.0])  # warm-up, then the first search step
    assert logged[2] > logged[3] > logged[4] > logged[5] and logged[5] == pytest.approx(0.1)


def test_the_temperature_survives_a_resume_from_the_hooks_state(bench):
    hook = ltb._BranchingHook(_net(bench, [1, 2, 4]), TemperatureSchedule("exponential", 5.0, 0.1), 1, None,
                              bench.backbone.block_names)
    fit = ltb.FitState(model=hook.net, epoch=2, step=8, epochs=6, steps_per_epoch=4)
    for _ in range(5):
        hook.on_step_start(fit, "weights")
    again = ltb._BranchingHook(hook.net, hook.schedule, 1, None, bench.backbone.block_names)
    again.load_state_dict(hook.state_dict())
    again.on_step_start(fit, "weights")
    assert again.search_steps == 6 and hook.net.tau == pytest.approx(5.0 * (0.1 / 5.0) ** (5 / 19))


class _MixSpy(BranchingSupernet):
    """Records the parent weights of block 2's children (3 parents with widths 1,3,4) in training mode."""

    mixes: list[tuple[bool, torch.Tensor]] = []

    def _mixing(self, index, logits):
        out = super()._mixing(index, logits)
        if self.training and index == 1:
            _MixSpy.mixes.append((self.uniform or self.sample_trees, out.detach().clone()))
        return out


@pytest.mark.parametrize("warmup", ["uniform", "sampled"])
def test_sampled_warmup_trains_the_weights_on_random_trees(bench, monkeypatch, warmup):
    monkeypatch.setattr(ltb, "BranchingSupernet", _MixSpy)
    _MixSpy.mixes = []
    torch.manual_seed(0)
    LearnToBranch(epochs=4, warmup_epochs=3, widths="1,3,4", warmup=warmup).search(
        bench, Budget(None), LocalContext(bench))
    warm = [m for during, m in _MixSpy.mixes if during]
    assert len(warm) == 3 * 2  # 3 warm-up epochs of 2 batches, one weight step each
    if warmup == "uniform":
        assert all(torch.allclose(m, torch.full_like(m, 1 / 3)) for m in warm)
    else:  # each child takes exactly one parent, and the trees differ from step to step
        assert all(torch.equal(m.sum(-1), torch.ones(4)) and set(m.unique().tolist()) <= {0.0, 1.0} for m in warm)
        assert len({tuple(m.argmax(-1).tolist()) for m in warm}) > 1
    assert len(_MixSpy.mixes) > len(warm)  # the search continues with Gumbel samples of the logits


def test_samples_per_step_averages_the_losses_of_k_forward_passes(bench):
    calls = []

    def model(x):  # a different prediction per call, as fresh Gumbel samples give
        calls.append(1)
        return {t.name: torch.full((x.shape[0], 1), float(len(calls))) for t in bench.tasks}

    x = bench.splits["train"].x[:8]
    y = {t: v[:8] for t, v in bench.splits["train"].y.items()}
    loss, parts = ltb.averaged_loss(bench.tasks, 3)(model, x, y)
    calls.clear()
    singles = [ltb.default_loss(bench.tasks)(model, x, y) for _ in range(3)]
    assert float(loss) == pytest.approx(sum(float(s[0]) for s in singles) / 3)
    for t in parts:
        assert float(parts[t]) == pytest.approx(sum(float(s[1][t]) for s in singles) / 3)
    # in a search: k forward passes per logit step, counted in its cost
    result = LearnToBranch(epochs=3, warmup_epochs=1, samples_per_step=2).search(
        bench, Budget(None), LocalContext(bench))
    assert result.cost["block_evals_per_logit_step"] == 2 * result.cost["block_evals_per_weight_step"]


def test_logit_optimizer_option_picks_sgd_or_adam_and_both_move_the_logits(bench):
    q = [torch.nn.Parameter(torch.zeros(2))]
    sgd = ltb.logit_optimizer("sgd", 0.5)(q)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["lr"] == 0.5 and sgd.defaults["momentum"] == 0.9
    assert isinstance(ltb.logit_optimizer("adam", 0.1)(q), torch.optim.Adam)
    with pytest.raises(ValueError, match="logit_optimizer"):
        LearnToBranch(logit_optimizer="rmsprop")
    for kind, lr in (("sgd", 3.0), ("adam", 0.3)):
        torch.manual_seed(0)
        result = LearnToBranch(epochs=4, warmup_epochs=1, logit_optimizer=kind, logit_lr=lr).search(
            bench, Budget(None), LocalContext(bench))
        assert result.cost["commitment"] > 0.3, kind  # uniform over 4 parents is 0.25


def test_holdout_logit_steps_draw_only_held_out_samples(bench, monkeypatch):
    seen: dict[str, set[int]] = {"weights": set(), "logits": set()}
    rows = {tuple(r.tolist()): i for i, r in enumerate(bench.splits["train"].x)}

    class Spy(BranchingSupernet):
        def forward(self, x):
            if self.training and not (self.uniform or self.sample_trees):
                seen[self.phase].update(rows[tuple(r.tolist())] for r in x)
            return super().forward(x)

    monkeypatch.setattr(ltb, "BranchingSupernet", Spy)
    LearnToBranch(epochs=4, warmup_epochs=1, logit_data="holdout", holdout_fraction=0.25).search(
        bench, Budget(None), LocalContext(bench))
    assert seen["logits"] and seen["weights"] and not seen["logits"] & seen["weights"]
    assert len(seen["logits"]) == 64 and len(seen["weights"]) == 192  # a quarter of the 256 held out
