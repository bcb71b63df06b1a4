"""BranchedNet: parameter layout and counts, activation reuse, fused == plain, skips."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from branchbench.core.backbones import Backbone, mlp_backbone, rescnn_backbone
from branchbench.core.net import BranchedNet, fuse_rule
from branchbench.core.plan import Plan, PlanError
from branchbench.core.tasks import TaskSpec

TASKS = [
    TaskSpec("a", "binary"),
    TaskSpec("b", "multiclass", n_outputs=3),
    TaskSpec("c", "regression"),
    TaskSpec("d", "binary"),
]
NAMES = [t.name for t in TASKS]
BATCH = 5


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mlp(norm: str = "layernorm") -> Backbone:
    # widths change at blocks 0 and 3, so those shortcuts are projections with weights
    return mlp_backbone(6, (8, 8, 8, 5), norm=norm)


def cnn() -> Backbone:
    return rescnn_backbone(3, 8, channels=(4, 8, 8))


BACKBONES = {"mlp": mlp, "mlp_nonorm": lambda: mlp("none"), "rescnn": cnn}


def shared(blocks):
    return Plan.shared_bottom(NAMES, blocks)


def independent(blocks):
    return Plan.independent(NAMES, blocks)


def tree(blocks):
    """{a,b,c,d} share the first block, split {a,b} | {c,d} in the middle, then all apart."""
    n = len(blocks)
    mid = n // 2
    parts = []
    for level in range(n):
        if level < mid:
            parts.append([NAMES])
        elif level < n - 1:
            parts.append([["a", "b"], ["c", "d"]])
        else:
            parts.append([[t] for t in NAMES])
    return Plan.from_partitions(NAMES, blocks, parts)


def nontree(blocks):
    """AdaShare-like: shared weights reached by several paths, and skips (None)."""
    n = len(blocks)
    nodes = {
        "a": [0] * n,
        "b": [0] + [None if level % 2 else 0 for level in range(1, n)],
        "c": [1] + [0] * (n - 1),
        "d": [None] + [1 if level == n - 1 else 0 for level in range(1, n)],
    }
    plan = Plan(NAMES, blocks, nodes)
    assert not plan.is_tree and plan.has_skips
    return plan


PLANS = {"shared": shared, "independent": independent, "tree": tree, "nontree": nontree}


def inputs(backbone: Backbone, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((BATCH, *backbone.input_shape), generator=gen)


def build(plan_name, backbone, fuse=None, seed=0) -> BranchedNet:
    torch.manual_seed(seed)
    return BranchedNet(PLANS[plan_name](backbone.block_names), backbone, TASKS, fuse=fuse)


def total_loss(out: dict[str, torch.Tensor]) -> torch.Tensor:
    # weight each task differently so gradients tell the heads apart
    return sum((i + 1) * (v.float() ** 2).mean() for i, v in enumerate(out.values()))


# -------------------------------------------------------------- parameters
@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("plan_name", list(PLANS))
@pytest.mark.parametrize("bb", list(BACKBONES))
def test_param_count_matches_plan(bb, plan_name, fuse):
    backbone = BACKBONES[bb]()
    net = build(plan_name, backbone, fuse=fuse)
    plan = net.plan
    assert net.backbone_param_count() == plan.param_count(backbone)
    assert net.param_count() == plan.param_count(backbone, heads=TASKS)
    assert net.param_count() == sum(p.numel() for p in net.parameters())


def test_state_dict_layout():
    backbone = mlp()
    net = build("nontree", backbone)
    plan = net.plan
    prefixes = {".".join(key.split(".")[:3]) for key in net.state_dict()}
    expected = {f"blocks.{level}.{node}" for level in range(4) for node in plan.nodes_used(level)}
    # shortcuts only where some task skips (identity shortcuts hold no tensors)
    skip_levels = [level for level in range(4) if plan.has_skip(level)]
    assert sorted(int(k) for k in net.shortcuts) == skip_levels
    expected |= {
        f"shortcuts.{level}.weight" for level in skip_levels if backbone.shortcut_params[level]
    }
    expected |= {f"heads.{t}.weight" for t in NAMES} | {f"heads.{t}.bias" for t in NAMES}
    assert prefixes == expected


def test_fixed_seed_gives_fixed_weights():
    backbone = mlp()
    one, two = build("tree", backbone, seed=3), build("tree", backbone, seed=3)
    other = build("tree", backbone, seed=4)
    for (k1, v1), (k2, v2) in zip(one.state_dict().items(), two.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    assert not torch.equal(one.heads["a"].weight, other.heads["a"].weight)


# -------------------------------------------------------------- the forward
@pytest.mark.parametrize("plan_name", list(PLANS))
@pytest.mark.parametrize("bb", list(BACKBONES))
def test_outputs_one_tensor_per_task(bb, plan_name):
    backbone = BACKBONES[bb]()
    net = build(plan_name, backbone).eval()
    out = net(inputs(backbone))
    assert list(out) == NAMES
    for task in TASKS:
        assert out[task.name].shape == (BATCH, task.n_outputs)
        assert torch.isfinite(out[task.name]).all()


def _count_calls(net: BranchedNet) -> tuple[Counter, Counter]:
    node_calls: Counter = Counter()
    shortcut_calls: Counter = Counter()
    for level, nodes in net.blocks.items():
        for module in nodes.values():
            module.register_forward_hook(lambda *_, lv=int(level): node_calls.update([lv]))
    for level, module in net.shortcuts.items():
        module.register_forward_hook(lambda *_, lv=int(level): shortcut_calls.update([lv]))
    return node_calls, shortcut_calls


@pytest.mark.parametrize("plan_name", list(PLANS))
@pytest.mark.parametrize("bb", list(BACKBONES))
def test_each_distinct_activation_computed_once(bb, plan_name):
    backbone = BACKBONES[bb]()
    net = build(plan_name, backbone, fuse=False)
    node_calls, shortcut_calls = _count_calls(net)
    net(inputs(backbone))
    plan = net.plan
    for level in range(plan.n_blocks):
        keys = list(plan.activations(level))
        assert node_calls[level] == sum(k[-1] is not None for k in keys), level
        assert shortcut_calls[level] == sum(k[-1] is None for k in keys), level
        assert node_calls[level] + shortcut_calls[level] == len(keys)


@pytest.mark.parametrize("plan_name", list(PLANS))
def test_fused_levels_run_one_group_call(plan_name):
    backbone = mlp()
    net = build(plan_name, backbone, fuse=True)
    node_calls, shortcut_calls = _count_calls(net)
    net(inputs(backbone))
    plan = net.plan
    assert any(net.fused_levels)
    for level, fused in enumerate(net.fused_levels):
        keys = list(plan.activations(level))
        siblings = sum(k[-1] is not None for k in keys)
        assert fused == (siblings >= 1)
        assert node_calls[level] == (1 if fused else siblings)
        assert shortcut_calls[level] == len(keys) - siblings


# -------------------------------------------------------------- fusion rule
def test_fuse_rule():
    """Fuse only on CUDA, with at least FUSE_MIN_SIBLINGS_CUDA siblings (measured; see fuse_rule)."""
    from branchbench.core.backbones import mlp_backbone
    from branchbench.core.net import FUSE_MIN_SIBLINGS_CUDA

    backbone = mlp()
    blocks = backbone.block_names
    # the CPU never fuses: the batched path measured slower there
    for plan in (shared(blocks), independent(blocks), tree(blocks)):
        assert not any(fuse_rule(backbone, "cpu", plan, lv) for lv in range(4))
        assert not any(fuse_rule(backbone, None, plan, lv) for lv in range(4))
    many = [f"t{i}" for i in range(FUSE_MIN_SIBLINGS_CUDA)]
    wide = mlp_backbone(4, (8, 8))
    assert all(fuse_rule(wide, "cuda", Plan.independent(many, wide.block_names), lv) for lv in range(2))
    assert not any(fuse_rule(wide, "cuda", Plan.independent(many[:-1], wide.block_names), lv) for lv in range(2))
    assert not any(fuse_rule(wide, "cuda", Plan.shared_bottom(many, wide.block_names), lv) for lv in range(2))
    # convolutional blocks (BatchNorm buffers) never fuse, even when asked to
    conv = cnn()
    assert not any(fuse_rule(conv, "cpu", independent(conv.block_names), lv) for lv in range(3))
    assert build("independent", conv, fuse=True).fused_levels == [False, False, False]


def test_fuse_flag_overrides_rule():
    backbone = mlp()
    assert build("tree", backbone).fused_levels == [False] * 4  # built without a device: CPU rule
    assert build("tree", backbone, fuse=False).fused_levels == [False] * 4
    assert build("tree", backbone, fuse=True).fused_levels == [True] * 4
    assert build("independent", backbone, fuse=None).fused_levels == [False] * 4


@pytest.mark.parametrize("norm", ["layernorm", "none"])
@pytest.mark.parametrize("plan_name", ["tree", "nontree", "independent"])
def test_fused_and_plain_agree(plan_name, norm):
    backbone = mlp(norm)
    plain = build(plan_name, backbone, fuse=False, seed=0)
    fused = build(plan_name, backbone, fuse=True, seed=1)  # different init ...
    fused.load_state_dict(plain.state_dict())  # ... same layout, so the same weights load
    x = inputs(backbone)
    out_plain, out_fused = plain(x), fused(x)
    for task in NAMES:
        torch.testing.assert_close(out_fused[task], out_plain[task], atol=1e-5, rtol=1e-5)
    total_loss(out_plain).backward()
    total_loss(out_fused).backward()
    fused_params = dict(fused.named_parameters())
    for name, p in plain.named_parameters():
        q = fused_params[name]
        assert p.grad is not None and q.grad is not None, name
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("norm", ["layernorm", "none"])
def test_fused_features_agree_with_plain(norm):
    backbone = mlp(norm)
    plain = build("nontree", backbone, fuse=False)
    fused = build("nontree", backbone, fuse=True)
    fused.load_state_dict(plain.state_dict())
    x = inputs(backbone)
    fp, ff = plain.features(x), fused.features(x)
    for level in fp:
        for task in NAMES:
            torch.testing.assert_close(ff[level][task], fp[level][task], atol=1e-5, rtol=1e-5)


def test_mlp_norm_none_drops_layernorm_and_its_parameters_only():
    layernorm, bare = mlp(), mlp("none")
    assert layernorm.name == "mlp8-8-8-5" and bare.name == "mlp8-8-8-5-nonorm"
    assert not any(isinstance(m, torch.nn.LayerNorm) for b in bare.blocks for m in b.make().modules())
    assert bare.block_params == [6 * 8 + 8, 8 * 8 + 8, 8 * 8 + 8, 8 * 5 + 5]  # Linear only
    assert [a - b for a, b in zip(layernorm.block_params, bare.block_params, strict=True)] == [16, 16, 16, 10]
    assert bare.block_flops == [2 * 6 * 8, 2 * 8 * 8, 2 * 8 * 8, 2 * 8 * 5]  # one matmul per sample
    assert bare.shortcut_params == layernorm.shortcut_params and bare.shortcut_flops == layernorm.shortcut_flops
    plan = tree(bare.block_names)
    net = BranchedNet(plan, bare, TASKS)
    assert net.param_count() == plan.param_count(bare, heads=TASKS) == sum(p.numel() for p in net.parameters())
    assert 0 < plan.flops(bare) < plan.flops(bare, heads=TASKS)
    with pytest.raises(ValueError, match=r"norm='batch' is not one of \['layernorm', 'none'\]"):
        mlp_backbone(6, (8,), norm="batch")


# -------------------------------------------------------------------- skips
def test_skipping_every_block_is_head_of_input():
    backbone = mlp_backbone(8, (8, 8, 8))  # equal widths: identity shortcuts
    assert backbone.shortcut_params == [0, 0, 0]
    plan = Plan(NAMES, backbone.block_names, {t: [None, None, None] for t in NAMES})
    net = BranchedNet(plan, backbone, TASKS)
    assert net.backbone_param_count() == 0 == plan.param_count(backbone)
    x = inputs(backbone)
    out = net(x)
    for task in NAMES:
        assert torch.equal(out[task], net.heads[task](x))


def test_skip_applies_the_projection_shortcut():
    backbone = mlp_backbone(6, (8, 8))  # block 0 changes width: its skip is a projection
    plan = Plan(NAMES, backbone.block_names, {t: [None, 0] for t in NAMES})
    net = BranchedNet(plan, backbone, TASKS)
    x = inputs(backbone)
    expected = net.blocks["1"]["0"](net.shortcuts["0"](x))
    out = net(x)
    for task in NAMES:
        torch.testing.assert_close(out[task], net.heads[task](expected))


# ----------------------------------------------------------------- features
@pytest.mark.parametrize("bb", list(BACKBONES))
def test_features_shapes(bb):
    backbone = BACKBONES[bb]()
    net = build("nontree", backbone)
    x = inputs(backbone)
    feats = net.features(x)
    assert sorted(feats) == list(range(len(backbone.blocks)))
    for level, per_task in feats.items():
        assert list(per_task) == NAMES
        for tensor in per_task.values():
            assert tensor.shape == (BATCH, *backbone.blocks[level].out_shape)
    some = net.features(x, levels=[1])
    assert list(some) == [1]
    with pytest.raises(ValueError, match="out of range"):
        net.features(x, levels=[7])


def test_features_feed_the_heads():
    backbone = mlp()
    net = build("tree", backbone).eval()
    x = inputs(backbone)
    last = net.features(x, levels=[3])[3]
    out = net(x)
    for task in NAMES:
        torch.testing.assert_close(out[task], net.heads[task](last[task]))
    # tasks sharing an activation get the same tensor
    first = net.features(x, levels=[0])[0]
    assert first["a"] is first["d"]


# --------------------------------------------------------------- validation
def test_plan_that_does_not_fit_raises():
    backbone = mlp()
    with pytest.raises(PlanError, match="3 blocks but the backbone has 4"):
        BranchedNet(Plan.shared_bottom(NAMES, ["x", "y", "z"]), backbone, TASKS)
    with pytest.raises(PlanError, match=r"lacks the benchmark's task\(s\) \['d'\]"):
        BranchedNet(Plan.shared_bottom(NAMES[:3], backbone.block_names), backbone, TASKS)
    with pytest.raises(PlanError, match=r"task\(s\) \['d'\] that the benchmark lacks"):
        BranchedNet(Plan.shared_bottom(NAMES, backbone.block_names), backbone, TASKS[:3])
    with pytest.raises(PlanError, match="task names repeat"):
        BranchedNet(Plan.shared_bottom(NAMES, backbone.block_names), backbone, [*TASKS, TASKS[0]])


# ------------------------------------------------------------ mixed precision
@pytest.mark.parametrize(("bb", "fuse"), [("mlp", False), ("mlp", True), ("rescnn", None)])
def test_bf16_autocast_forward_backward_on_cpu(bb, fuse):
    backbone = BACKBONES[bb]()
    net = build("nontree", backbone, fuse=fuse)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(inputs(backbone))
        loss = total_loss(out)
    assert out["a"].dtype == torch.bfloat16
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
