"""AdaShare: policy sampling, plans with skips, the sharing term, the curriculum's locked logits."""

from __future__ import annotations

import pytest
import torch
from _tiny import TINY, tiny_bench

from branchbench.baselines.adashare import (
    AdaShare,
    AdaShareSupernet,
    _Curriculum,
    sharing_loss,
    sharing_weights,
    skip_counts,
    sparsity_loss,
)
from branchbench.cell import CellConfig, run_cell
from branchbench.context import LocalContext
from branchbench.core.budget import Budget
from branchbench.core.gumbel import gumbel_softmax, sample_gumbel
from branchbench.core.net import BranchedNet
from branchbench.core.options import OptionError
from branchbench.core.plan import Plan
from branchbench.core.retrain import seed_everything


def test_soft_policy_tends_to_the_hard_sample_and_noiseless_is_the_argmax():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 2, generator=gen)  # tasks x blocks x {select, skip}
    noise = sample_gumbel(logits.shape, generator=gen)
    hard = gumbel_softmax(logits, 1.0, noise=noise, hard=True)
    torch.testing.assert_close(gumbel_softmax(logits, 1e-4, noise=noise), hard)
    argmax = torch.nn.functional.one_hot(logits.argmax(-1), 2).float()
    torch.testing.assert_close(gumbel_softmax(logits, 1e-4, noise=torch.zeros_like(logits)), argmax)
    assert not torch.equal(gumbel_softmax(logits, 1.0, noise=noise), hard)  # a real relaxation


def test_hard_policy_supernet_equals_its_plan_in_branchednet():
    bench = tiny_bench()
    seed_everything(0)
    net = AdaShareSupernet(bench)
    select = torch.tensor([[1, 1, 1], [0, 1, 1], [1, 0, 1], [1, 1, 0]], dtype=torch.bool)
    policy = torch.stack([select.float(), (~select).float()], dim=-1)
    plan = net.plan_of(policy, bench.backbone.block_names)
    assert plan.has_skips and plan.nodes["t1"] == (None, 0, 0) and not plan.is_tree
    pruned = BranchedNet(plan, bench.backbone, bench.tasks)
    assert pruned.backbone_param_count() == plan.param_count(bench.backbone)
    pruned.load_state_dict(net.weights_for(plan), strict=True)
    x = bench.splits["val"].x[:16]
    net.eval(), pruned.eval()
    with torch.no_grad():
        want = net.run(x, policy)
        got = pruned(x)
    for task in bench.task_names:
        torch.testing.assert_close(got[task], want[task])


def test_soft_forward_mixes_block_and_shortcut():
    bench = tiny_bench()
    net = AdaShareSupernet(bench)
    x = bench.splits["val"].x[:8]
    policy = torch.zeros(4, 3, 2)
    policy[..., 0] = 1.0
    policy[0, 2] = torch.tensor([0.25, 0.75])
    with torch.no_grad():
        mixed = net.run(x, policy)["t0"]
        feat = x
        for level in range(2):
            feat = net.blocks[level](feat)
        expected = net.heads["t0"](0.25 * net.blocks[2](feat) + 0.75 * net.shortcuts[2](feat))
    torch.testing.assert_close(mixed, expected)


def test_sharing_term_is_zero_for_equal_policies_and_grows_with_disagreement():
    w = sharing_weights(3)
    same = torch.zeros(4, 3, 2)
    assert float(sharing_loss(same, w)) == 0.0
    values = []
    for gap in (0.5, 1.0, 2.0):
        logits = same.clone()
        logits[0, :, 0] = gap
        values.append(float(sharing_loss(logits, w)))
    assert 0 < values[0] < values[1] < values[2]
    # the paper pushes shallow blocks harder to be shared; the reference code the opposite
    assert w.tolist() == pytest.approx([1.0, 2 / 3, 1 / 3])
    assert sharing_weights(3, "code").tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])
    # L counts the policy blocks only, as the reference's logits; the stem weighs nothing
    assert sharing_weights(3, "code", n_stem=1).tolist() == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    assert sharing_weights(3, "paper", n_stem=1).tolist() == pytest.approx([0.0, 1.0, 2 / 3, 1 / 3])


@pytest.mark.parametrize(("direction", "expected"), [("code", [0.0, 0.5, 1.0]), ("paper", [0.0, 1.0, 0.5])])
def test_search_weights_sharing_over_the_policy_blocks_only(monkeypatch, direction, expected):
    import branchbench.baselines.adashare as adashare

    seen = []
    original = adashare.sharing_loss
    monkeypatch.setattr(adashare, "sharing_loss", lambda logits, w: seen.append(w.tolist()) or original(logits, w))
    bench = tiny_bench(epochs=2)  # 3 blocks: the stem and 2 policy blocks
    AdaShare(samples=1, search_epochs=2, curriculum_speed=1, sharing_direction=direction).search(bench, Budget(None), LocalContext(bench))
    assert seen and all(w == pytest.approx(expected) for w in seen)


def test_sparsity_term_only_sees_unlocked_blocks_and_pushes_to_skip():
    logits = torch.zeros(2, 3, 2, requires_grad=True)
    sparsity_loss(logits, n_unlocked=1).backward()
    assert torch.all(logits.grad[:, :2] == 0)
    assert torch.all(logits.grad[:, 2, 1] < 0)  # descent raises the skip logit


def test_locked_logits_stay_fixed_during_the_curriculum(monkeypatch):
    seen: list[tuple[int, torch.Tensor]] = []  # (unlocked blocks, raw logits) after each epoch
    original = _Curriculum.on_epoch_end

    def record(self, fit, logs):
        original(self, fit, logs)
        seen.append((int(logs["adashare.unlocked_blocks"]), self.net.policy_logits.detach().clone()))

    monkeypatch.setattr(_Curriculum, "on_epoch_end", record)
    bench = tiny_bench(epochs=12)
    ctx = LocalContext(bench, seed=0)
    AdaShare(samples=2, search_epochs=12, skip_first_block=True).search(bench, Budget(None), ctx)
    assert [n for n, _ in seen] == [0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3]
    initial = torch.full((4, 3, 2), 0.5)
    for n, logits in seen:
        locked = 3 if n == 0 else 3 - n
        torch.testing.assert_close(logits[:, :locked], initial[:, :locked], rtol=0, atol=0)
        if n:
            assert not torch.equal(logits[:, locked:], initial[:, locked:])  # unlocked ones learn
    tau = ctx.curve("search/adashare.tau")
    assert tau[:3] == [5.0, 5.0, 5.0] and tau[3] == pytest.approx(5.0 * 0.965)
    assert len(ctx.curve("search/adashare.p_select.t0.fc2")) == 12


def test_runs_as_a_cell_and_logs_policies(tracking):
    config = CellConfig("synthetic", "adashare", dict(TINY), {"samples": 3, "epoch_factor": 2},
                        protocol={"epochs": 4, "batch_size": 64, "early_stopping": 0})
    outcome = run_cell(config, tracking)
    assert outcome.status == "finished", outcome.error
    m = outcome.metrics
    assert "search.skip_fraction" in m and "latency_ms.b1" in m and m["budget_ratio"] <= 1.0 + 1e-9  # identity shortcuts
    plan = Plan.from_dict(tracking.load_json(outcome.run_id, "plan.json"))
    for task in plan.tasks:  # what the report reads: skips per task, and whether it is shared-bottom
        assert m[f"search.skipped.{task}"] == plan.nodes[task].count(None)
    assert m["search.reproduces_shared_bottom"] == float(not plan.has_skips)
    history = tracking.client.get_metric_history(outcome.run_id, "search/adashare.p_select.t0.fc2")
    assert len(history) == 8  # epoch_factor x the protocol's 4 epochs


def test_blocks_never_unlocked_are_executed_in_the_plan_and_logged_as_selected():
    """Every task executed the stem and the still-locked blocks during the search: the plan must too."""
    bench = tiny_bench(epochs=4)
    ctx = LocalContext(bench, seed=0)
    with pytest.warns(RuntimeWarning, match="curriculum incomplete"):
        result = AdaShare(samples=8, search_epochs=4, curriculum_speed=100).search(bench, Budget(None), ctx)
    for task in bench.task_names:
        assert result.plan.nodes[task][:2] == (0, 0), result.plan.nodes  # stem + locked block 1
    p_select = ctx.artifacts["policy.json"]["p_select"]
    assert all(p[:2] == [1.0, 1.0] and p[2] < 1.0 for p in p_select.values())
    assert ctx.curve("search/adashare.p_select.t0.fc1")[-1] == 1.0
    assert result.cost["curriculum_complete"] == 0.0


def test_stem_is_always_executed_unless_skipping_it_is_allowed():
    bench = tiny_bench()
    net = AdaShareSupernet(bench)  # the default: block 0 is the stem
    net.mode, net.n_unlocked, net.tau = "sample", net.n_learnable, 1.0
    assert net.n_learnable == 2
    policy, pattern = net.policy()
    assert torch.all(policy[:, 0, 0] == 1) and torch.all(pattern[:, 0] == 0)
    assert torch.all((policy[:, 1:, 0] > 0) & (policy[:, 1:, 0] < 1))  # soft elsewhere
    free = AdaShareSupernet(bench, n_stem=0)
    free.mode, free.n_unlocked = "sample", free.n_learnable
    assert free.n_learnable == 3 and not torch.all(free.policy()[0][:, 0, 0] == 1)


def test_skip_counts_per_task_and_the_shared_bottom_flag():
    blocks = ["b0", "b1", "b2"]
    shared = Plan.shared_bottom(["a", "b"], blocks)
    assert skip_counts(shared) == {"skipped.a": 0.0, "skipped.b": 0.0, "reproduces_shared_bottom": 1.0,
                                   "fully_shared": 1.0}
    skipping = Plan(["a", "b"], blocks, {"a": [0, None, None], "b": [0, 0, None]})
    assert skip_counts(skipping) == {"skipped.a": 2.0, "skipped.b": 1.0, "reproduces_shared_bottom": 0.0,
                                     "fully_shared": 0.0}
    shallower = Plan(["a", "b"], blocks, {"a": [0, None, 0], "b": [0, None, 0]})  # one network, one block skipped
    assert skip_counts(shallower)["fully_shared"] == 1.0 and skip_counts(shallower)["reproduces_shared_bottom"] == 0.0


def test_search_length_from_the_factor_the_reference_phases_or_epochs():
    assert AdaShare().search_length(60) == (60, 12)  # factor 1, the reference's search/retrain ratio; warm-up 20%
    assert AdaShare(epoch_factor=5.0).search_length(60) == (300, 60)  # version 2's default
    epochs, warmup = AdaShare(policy_phases=333).search_length(60)
    assert epochs - warmup == 333 and warmup == 83  # NYU-v2: 16,000 iterations in phases of 24 + 24
    with pytest.raises(OptionError, match="search_epochs=10 and policy_phases=333"):  # two lengths: refused
        AdaShare(policy_phases=333, search_epochs=10)
    bench = tiny_bench(epochs=2)
    ctx = LocalContext(bench, seed=0)
    result = AdaShare(samples=1, policy_phases=3, curriculum_speed=1).search(bench, Budget(None), ctx)
    assert result.cost["supernet_epochs"] == 4 and len(ctx.curve("search/adashare.tau")) == 4  # 1 warm-up + 3
    assert set(skip_counts(result.plan)) <= set(result.cost)
    # steps: the warm-up trains on all 256 samples (4 batches), each policy phase on the 128 not held out (2)
    assert result.cost["supernet_steps"] == 1 * 4 + 3 * 2 and result.cost["policy_steps"] == 3 * 2
