"""DMTG: K from the budget, pruning to a tree Plan with exact weights, assignment commitment."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from _tiny import TINY, tiny_bench

from branchbench.cell import CellConfig, run_cell
from branchbench.context import LocalContext
from branchbench.core.budget import Budget, BudgetError
from branchbench.core.net import BranchedNet
from branchbench.core.plan import Plan
from branchbench.core.retrain import seed_everything
from branchbench.methods.dmtg import (
    DMTG,
    REFERENCE_MILESTONES,
    DMTGSupernet,
    GroupNet,
    HalvingTrainer,
    check_logit_reparametrisation,
    groups_for_budget,
)


def test_k_is_the_largest_tree_under_the_cap():
    params = [10, 20, 20, 20]  # stem = block 0, a branch = 60
    assert groups_for_budget(params, 1, 9, cap=10 + 3 * 60) == 3
    assert groups_for_budget(params, 1, 9, cap=10 + 3 * 60 - 1) == 2
    assert groups_for_budget(params, 1, 9, cap=float("inf")) == 9  # uncapped: one per task at most
    bench = tiny_bench()
    assert DMTG(shared_blocks=1)._groups(bench, Budget(1.0)) == 1  # shared-bottom's size
    assert DMTG(shared_blocks=1)._groups(bench, Budget(None)) == len(bench.tasks)
    with pytest.raises(BudgetError, match="over the budget"):
        DMTG(k=3, shared_blocks=1)._groups(bench, Budget(1.5))
    with pytest.raises(ValueError, match="shared_blocks"):
        DMTG(shared_blocks=3)._groups(bench, Budget(None))


def test_k_beyond_the_tasks_or_parameter_free_branches_are_refused_saying_why():
    bench = tiny_bench()
    with pytest.raises(ValueError, match="k=5 branches for 4 tasks"):
        DMTG(k=5)._groups(bench, Budget(None))
    with pytest.raises(ValueError, match="hold no parameters"):
        groups_for_budget([10, 0, 0], 1, 4, cap=100.0)


def test_logit_multiplier_is_refused_where_it_is_not_a_learning_rate_multiplier():
    protocol = tiny_bench().protocol
    assert DMTG().params["logit_lr_mult"] == 1.0  # the reference: logits are ordinary parameters
    for optimizer, decay in [("sgd", 0.0), ("adam", 1e-4)]:
        wrong = protocol.replace(optimizer=optimizer, weight_decay=decay)
        with pytest.raises(ValueError, match="logit_lr_mult=3"):
            check_logit_reparametrisation(wrong, 3.0)
        check_logit_reparametrisation(wrong, 1.0)  # no multiplier: nothing to get wrong
    check_logit_reparametrisation(protocol.replace(optimizer="adamw", weight_decay=1e-2), 3.0)
    bench = tiny_bench()
    bench = dataclasses.replace(bench, protocol=protocol.replace(optimizer="sgd"))
    with pytest.raises(ValueError, match="optimizer='sgd'"):  # refused before any training
        DMTG(k=2, logit_lr_mult=3.0, search_optimizer="protocol").search(bench, Budget(None), LocalContext(bench))
    DMTG(k=2, logit_lr_mult=3.0, search_optimizer="reference")._protocol(bench)  # the reference's: Adam, no decay
    with pytest.raises(ValueError, match="optimizer='sgd'"):  # the default searches with the protocol's SGD
        DMTG(k=2, logit_lr_mult=3.0)._protocol(bench)


def test_one_group_skips_the_search_and_returns_shared_bottom():
    bench = tiny_bench()
    ctx = LocalContext(bench, seed=0)
    result = DMTG().search(bench, Budget(1.5), ctx)  # empty stem: a branch is the whole backbone
    assert result.plan == Plan.shared_bottom(bench.task_names, bench.backbone.block_names)
    assert result.cost["search_skipped"] == 1 and result.cost["supernet_steps"] == 0
    assert ctx.curve("search/dmtg.tau") == []  # no supernet was trained
    assert "skipped" in ctx.artifacts["assignment.json"]["search_skipped"]
    BranchedNet(result.plan, bench.backbone, bench.tasks).load_state_dict(result.init_state, strict=True)


def test_branches_are_built_on_the_context_device_so_the_fuse_rule_sees_it(monkeypatch):
    seen = []

    def spy(backbone, device, plan, level):
        seen.append(device)
        return False

    monkeypatch.setattr("branchbench.core.net.fuse_rule", spy)
    bench = tiny_bench(epochs=1)
    DMTG(k=2).search(bench, Budget(None), LocalContext(bench, seed=0))
    assert seen and all(torch.device(d) == torch.device("cpu") for d in seen)


@pytest.mark.parametrize("shared_blocks", [0, 1])
def test_pruned_network_predicts_like_the_supernet_restricted_to_its_heads(shared_blocks):
    bench = tiny_bench()
    seed_everything(0)
    net = DMTGSupernet(bench, k=3, shared_blocks=shared_blocks, identical_init=False)
    with torch.no_grad():  # a made-up assignment that leaves branch 1 empty
        net.theta.copy_(torch.tensor([[5.0, 0, 0], [0, 0, 5.0], [5.0, 0, 0], [0, 0, 5.0]]))
    plan, state = net.prune()
    assert plan.is_tree and plan.nodes_used(2) == [0, 1]  # the empty branch is pruned
    assert plan.partition(2) == [frozenset({"t0", "t2"}), frozenset({"t1", "t3"})]
    pruned = BranchedNet(plan, bench.backbone, bench.tasks)
    pruned.load_state_dict(state, strict=True)  # exactly the plan's weights, nothing left over
    x = bench.splits["val"].x[:32]
    net.eval(), pruned.eval()
    with torch.no_grad():
        full = net.branch_predictions(x)
        got = pruned(x)
    for task, branch in {"t0": 0, "t1": 2, "t2": 0, "t3": 2}.items():
        torch.testing.assert_close(got[task], full[branch][task])


def _same_branch_rates(bench, seeds, **options):
    """P(same argmax branch) over same-group and different-group task pairs, and mean commitment."""
    same, diff, commit = [], [], []
    for seed in seeds:
        seed_everything(seed)
        ctx = LocalContext(bench, seed=seed)
        result = DMTG(k=2, **options).search(bench, Budget(None), ctx)
        assignment = ctx.artifacts["assignment.json"]["assignment"]
        for a, b in itertools.combinations(bench.task_names, 2):
            together = float(assignment[a] == assignment[b])
            (same if bench.groups[a] == bench.groups[b] else diff).append(together)
        commit.append(result.cost["commitment"])
    return sum(same) / len(same), sum(diff) / len(diff), sum(commit) / len(commit)


def test_assignment_commits_and_groups_similar_tasks():
    """Low noise, logits 3x the reference's speed, long search: same-group tasks share a branch more often.

    (At the reference's logit_lr_mult=1 this short search barely moves the
    logits, and at 10 they commit before the branches specialise and pair
    same-group tasks *less* often.) Under the protocol's Adam at 1e-3 with cosine (version 1's search);
    the reference's 8e-4 halved every 15% moves the logits about half as far.
    """
    bench = tiny_bench(epochs=30, noise=0.1, n_train=512)
    same, diff, commit = _same_branch_rates(bench, seeds=range(3), logit_lr_mult=3.0, search_epochs=90,
                                            search_optimizer="protocol")
    assert commit > 0.8, f"the assignment did not commit (mean max probability {commit:.2f})"
    assert same > diff, f"same-group pairs together {same:.2f} <= different-group pairs {diff:.2f}"


def test_search_logs_probabilities_and_carries_the_pruned_weights(tmp_path):
    bench = tiny_bench(epochs=2)
    ctx = LocalContext(bench, seed=0)
    result = DMTG(k=2).search(bench, Budget(None), ctx)
    assert len(ctx.curve("search/dmtg.p.t0.g1")) == 2  # one value per epoch
    assert ctx.curve("search/dmtg.tau") == [2.5, 2.5]
    net = BranchedNet(result.plan, bench.backbone, bench.tasks)
    net.load_state_dict(result.init_state, strict=True)
    assert {"assignment.json", "assignment.png"} <= set(ctx.artifacts)


def test_runs_as_a_cell(tracking):
    config = CellConfig("synthetic", "dmtg", dict(TINY), {"k": 2}, budget=2.0,
                        protocol={"epochs": 2, "batch_size": 64, "early_stopping": 0})
    outcome = run_cell(config, tracking)
    assert outcome.status == "finished", outcome.error
    m = outcome.metrics
    assert m["search.k"] == 2 and m["budget_ratio"] <= 2.0 and "grouping.recovered" in m
    finetuned = run_cell(CellConfig(**{**config.__dict__, "finetune": True}), tracking)
    assert finetuned.status == "finished", finetuned.error
    # the per-group variant: the cell calls the method's own fine-tuning (curves per group, tagged)
    per_group = CellConfig(**{**config.__dict__, "finetune": True,
                              "method_options": {"k": 2, "finetune_mode": "per_group"}})
    outcome = run_cell(per_group, tracking)
    assert outcome.status == "finished", outcome.error
    run = tracking.get_run(outcome.run_id)
    assert run.data.tags["bb.finetuned"] == "true"
    assert any(key.startswith("train_g") for key in run.data.metrics)
    m = outcome.metrics  # the groups' fits are the cell's training record
    assert m["train.steps"] > 0 and m["train.flops"] > 0 and {f"best_epoch.t{i}" for i in range(4)} <= set(m)


# ------------------------------------------------ issue 13: k, the reference's schedule, fine-tuning
def test_k_is_budget_derived_by_default_and_set_by_the_user():
    bench = tiny_bench(epochs=1)
    assert DMTG().search(bench, Budget(3.0), LocalContext(bench, seed=0)).cost["k"] == 3  # 3 whole copies fit
    ctx = LocalContext(bench, seed=0)
    result = DMTG(k=2).search(bench, Budget(3.0), ctx)
    assert result.cost["k"] == 2 and result.cost["groups_used"] <= 2
    assert all(len(p) == 2 for p in ctx.artifacts["assignment.json"]["probabilities"].values())
    assert DMTG(k=3).search(bench, Budget(None), LocalContext(bench, seed=0)).cost["k"] == 3


def test_search_follows_the_reference_schedule_relative_to_the_protocol():
    bench = tiny_bench(epochs=10)  # 256 samples / batch 64: 4 steps an epoch
    ctx = LocalContext(bench, seed=0)
    result = DMTG(k=2, epoch_factor=2.0, search_optimizer="reference").search(bench, Budget(None), ctx)
    assert result.cost["supernet_epochs"] == 20 and result.cost["supernet_steps"] == 80
    lr = ctx.curve("search/lr")  # after each epoch: Adam 8e-4, halved after each 15% of the 80 steps
    halvings = [sum(4 * (e + 1) >= round(80 * f) for f in REFERENCE_MILESTONES) for e in range(20)]
    assert lr == pytest.approx([8e-4 * 0.5**h for h in halvings])
    assert lr[-1] == pytest.approx(8e-4 / 64)
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    trainer = HalvingTrainer(bench.protocol)  # given the total, or each epoch's steps: the same milestones
    assert trainer._make_schedule(optimizer, 80).milestones == trainer._make_schedule(optimizer, [4] * 20).milestones
    ctx = LocalContext(bench, seed=0)
    DMTG(k=2).search(bench, Budget(None), ctx)  # the default (version 4): the protocol's cosine
    assert len(ctx.curve("search/lr")) == 10 and ctx.curve("search/lr")[-1] == pytest.approx(0.0, abs=1e-12)


def test_group_view_shares_weights_and_keeps_the_stem_in_eval_mode():
    bench = tiny_bench()
    plan = Plan.from_partitions(bench.task_names, bench.backbone.block_names, [
        [set(bench.task_names)], [{"t0", "t2"}, {"t1", "t3"}], [{"t0", "t2"}, {"t1", "t3"}]])
    full = BranchedNet(plan, bench.backbone, bench.tasks)
    rng = torch.get_rng_state()
    view = GroupNet(full, [t for t in bench.tasks if t.name in ("t1", "t3")], frozen_blocks=1)
    assert torch.equal(rng, torch.get_rng_state())  # building the view draws nothing
    node = str(plan.nodes["t1"][1])
    assert view.blocks["1"][node] is full.blocks["1"][node] and view.heads["t1"] is full.heads["t1"]
    assert set(view.heads) == {"t1", "t3"}
    view.train()
    assert not view.blocks["0"].training and view.blocks["1"].training
    x = bench.splits["val"].x[:8]
    with torch.no_grad():
        torch.testing.assert_close(view(x)["t3"], full(x)["t3"])


@pytest.mark.parametrize("mode", ["per_group", "joint"])
def test_finetune_variants_run_end_to_end_from_the_search_weights(mode):
    bench = tiny_bench(epochs=2)
    ctx = LocalContext(bench, seed=0)
    method = DMTG(k=2, shared_blocks=1, finetune_mode=mode)
    result = method.search(bench, Budget(None), ctx)
    tuned = method.finetune(bench, result.plan, result.init_state, ctx, seed=0)
    assert {f"test.{t}.mse" for t in bench.task_names} <= set(tuned.metrics)
    state = tuned.net.state_dict()
    stem = [k for k in result.init_state if k.startswith("blocks.0.")]
    branches = [k for k in result.init_state if k.startswith("blocks.2.")]
    stem_kept = all(torch.equal(state[k].cpu(), result.init_state[k]) for k in stem)
    assert stem_kept == (mode == "per_group")  # the reference freezes the stem; joint trains it
    assert not all(torch.equal(state[k].cpu(), result.init_state[k]) for k in branches)
    groups = len(result.plan.nodes_used(2))
    if mode == "per_group":  # one fit per group, each with its own curves
        assert all(len(ctx.curve(f"train_g{j}/val_loss")) == 2 for j in range(groups))
        assert tuned.fit.epochs_run == 2 * groups


def test_per_group_finetuning_keeps_the_groups_compute_and_epoch_cap_record():
    """The combined record carries the groups' steps and FLOPs, each task's group's best epoch, and the epoch cap."""
    bench = tiny_bench(epochs=2)  # 256 samples / batch 64: 4 steps an epoch
    ctx = LocalContext(bench, seed=0)
    method = DMTG(k=2, finetune_mode="per_group")
    result = method.search(bench, Budget(None), ctx)
    fit = method.finetune(bench, result.plan, result.init_state, ctx, seed=0).fit
    groups = result.plan.partition(2)
    assert len(fit.parts) == len(groups) == 2, groups  # a real per-group fine-tune
    assert fit.steps == {"weights": 2 * 4 * len(groups)}
    assert fit.flops == pytest.approx(sum(part.flops for part in fit.parts)) and fit.flops > 0
    for group, part in zip(sorted(groups, key=lambda g: min(bench.task_names.index(t) for t in g)), fit.parts,
                           strict=True):
        assert all(fit.task_best_epochs[t] == part.best_epoch for t in group)
    # the epoch cap: hit when any group's best epoch was its last (epochs add up, best epochs do not)
    assert fit.still_improving == any(part.best_epoch == part.epochs_run - 1 for part in fit.parts)
    assert fit.still_improving  # 2 epochs from the search weights: validation still falls
