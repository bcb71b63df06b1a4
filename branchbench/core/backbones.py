"""Backbones: an ordered list of blocks (the branch points) plus per-task heads.

A block is described, not built: its spec holds a factory for one *node* (one
set of the block's weights) and for the block's *shortcut*, the path a skipped
block takes (identity, or a projection where the block changes shape). The
:class:`~branchbench.core.plan.Plan` decides how many nodes of each block exist;
:class:`~branchbench.core.net.BranchedNet` builds them.

Per-block parameter and FLOP counts are measured once from a single node
(torch's own FLOP counter), so a plan's cost is known without building it.

:func:`dense_backbone` is the default for dense (per-pixel) tasks: a residual
encoder whose blocks are the branch points, and a light decoder per task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from branchbench.core.tasks import TaskSpec


@dataclass(frozen=True)
class BlockSpec:
    """One branch point of a backbone.

    ``fusable`` blocks hold no buffers, so sibling nodes can run as one batched
    call (``torch.func.vmap`` over their stacked weights, i.e. batched matmul).
    """

    name: str
    make: Callable[[], nn.Module]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    make_shortcut: Callable[[], nn.Module] | None = None
    fusable: bool = False

    def shortcut(self) -> nn.Module:
        return self.make_shortcut() if self.make_shortcut is not None else nn.Identity()


def _measure(make: Callable[[], nn.Module], measure: Callable[[nn.Module], int]) -> int:
    """Build a throwaway module under a forked RNG, so counting never shifts the seed stream."""
    with torch.random.fork_rng(devices=[]):
        return measure(make())


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _flops_per_sample(module: nn.Module, in_shape: tuple[int, ...]) -> int:
    module = module.eval()
    x = torch.zeros((2, *in_shape))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(x)
    return counter.get_total_flops() // 2


class Backbone:
    """Blocks (branch points) and a head factory, with cached per-block costs."""

    def __init__(
        self,
        name: str,
        input_shape: Sequence[int],
        blocks: Sequence[BlockSpec],
        head: Callable[[TaskSpec], nn.Module],
        convolutional: bool = False,
    ) -> None:
        if not blocks:
            raise ValueError(f"backbone {name!r} has no blocks; give at least one")
        self.name = name
        self.input_shape = tuple(input_shape)
        self.blocks = list(blocks)
        self._head = head
        self.convolutional = convolutional
        for prev, block in zip(self.blocks, self.blocks[1:], strict=False):
            if prev.out_shape != block.in_shape:
                raise ValueError(
                    f"backbone {name!r}: block {block.name!r} takes {block.in_shape} but "
                    f"{prev.name!r} gives {prev.out_shape}"
                )
        if self.blocks[0].in_shape != self.input_shape:
            raise ValueError(
                f"backbone {name!r}: first block takes {self.blocks[0].in_shape}, "
                f"input is {self.input_shape}"
            )

    @property
    def block_names(self) -> list[str]:
        return [b.name for b in self.blocks]

    def make_head(self, task: TaskSpec) -> nn.Module:
        return self._head(task)

    @cached_property
    def block_params(self) -> list[int]:
        return [_measure(b.make, _n_params) for b in self.blocks]

    @cached_property
    def shortcut_params(self) -> list[int]:
        return [_measure(b.shortcut, _n_params) for b in self.blocks]

    @cached_property
    def block_flops(self) -> list[int]:
        return [_measure(b.make, lambda m, s=b.in_shape: _flops_per_sample(m, s)) for b in self.blocks]

    @cached_property
    def shortcut_flops(self) -> list[int]:
        return [_measure(b.shortcut, lambda m, s=b.in_shape: _flops_per_sample(m, s)) for b in self.blocks]

    @property
    def shared_bottom_params(self) -> int:
        return sum(self.block_params)

    def head_params(self, task: TaskSpec) -> int:
        return _measure(lambda: self.make_head(task), _n_params)

    def head_flops(self, task: TaskSpec) -> int:
        return _measure(lambda: self.make_head(task), lambda m: _flops_per_sample(m, self.blocks[-1].out_shape))

    def __repr__(self) -> str:
        return f"Backbone({self.name!r}, blocks={self.block_names}, params/block={self.block_params})"


# ----------------------------------------------------------------------- MLP
MLP_NORMS = ("layernorm", "none")


class MLPBlock(nn.Module):
    """Linear -> norm -> ReLU, the norm LayerNorm or none; no buffers, so siblings can be fused."""

    def __init__(self, d_in: int, d_out: int, norm: str = "layernorm") -> None:
        super().__init__()
        if norm not in MLP_NORMS:
            raise ValueError(f"MLP norm={norm!r} is not one of {list(MLP_NORMS)}")
        self.linear = nn.Linear(d_in, d_out)
        self.norm = nn.LayerNorm(d_out) if norm == "layernorm" else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.linear(x)))


def _vector_head(d: int) -> Callable[[TaskSpec], nn.Module]:
    return lambda task: nn.Linear(d, task.n_outputs)


def mlp_backbone(
    input_dim: int, widths: Sequence[int] = (64, 64, 64, 64), norm: str = "layernorm"
) -> Backbone:
    """Fully connected blocks for vector inputs; a skip uses identity or a linear projection.

    ``norm`` is each block's normalisation: ``"layernorm"`` (the default, which
    every existing result used) or ``"none"`` (Linear -> ReLU; the backbone's
    name then ends in ``-nonorm``).
    """
    if norm not in MLP_NORMS:
        raise ValueError(f"mlp_backbone: norm={norm!r} is not one of {list(MLP_NORMS)}")
    blocks = []
    d_in = input_dim
    for i, width in enumerate(widths):
        shortcut = None
        if d_in != width:
            shortcut = (lambda a, b: lambda: nn.Linear(a, b, bias=False))(d_in, width)
        blocks.append(
            BlockSpec(
                name=f"fc{i}",
                make=(lambda a, b: lambda: MLPBlock(a, b, norm))(d_in, width),
                in_shape=(d_in,),
                out_shape=(width,),
                make_shortcut=shortcut,
                fusable=True,
            )
        )
        d_in = width
    name = f"mlp{'-'.join(map(str, widths))}" + ("" if norm == "layernorm" else "-nonorm")
    return Backbone(name, (input_dim,), blocks, _vector_head(d_in))


# ----------------------------------------------------------------------- CNN
class ConvStem(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


class ResidualBlock(nn.Module):
    """The ResNet basic block: two 3x3 convolutions and a (projected) identity path."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.project = _projection(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.project(x))


def _projection(c_in: int, c_out: int, stride: int) -> nn.Module:
    if c_in == c_out and stride == 1:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))


def _spatial_head(c: int) -> Callable[[TaskSpec], nn.Module]:
    return lambda task: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, task.n_outputs))


def rescnn_backbone(
    in_channels: int,
    image_size: int,
    channels: Sequence[int] = (32, 64, 128, 256),
    strides: Sequence[int] | None = None,
) -> Backbone:
    """A small residual CNN: a conv stem, then one residual block per later entry.

    Block 0 is the stem (its skip is a 1x1 projection); each later block halves
    the resolution by default (``strides`` overrides it).
    """
    if strides is None:
        strides = [1] + [2] * (len(channels) - 1)
    if len(strides) != len(channels):
        raise ValueError(f"give one stride per block: {len(channels)} channels, {len(strides)} strides")
    blocks = []
    size = image_size
    c_prev = in_channels
    for i, (c, s) in enumerate(zip(channels, strides, strict=True)):
        out_size = (size + s - 1) // s if i > 0 else size
        if i == 0:
            make = (lambda a, b: lambda: ConvStem(a, b))(c_prev, c)
            shortcut = (lambda a, b: lambda: _projection(a, b, 1))(c_prev, c)
        else:
            make = (lambda a, b, st: lambda: ResidualBlock(a, b, st))(c_prev, c, s)
            shortcut = (
                None if (c_prev == c and s == 1) else (lambda a, b, st: lambda: _projection(a, b, st))(c_prev, c, s)
            )
        blocks.append(
            BlockSpec(
                name=f"conv{i}" if i == 0 else f"res{i}",
                make=make,
                in_shape=(c_prev, size, size),
                out_shape=(c, out_size, out_size),
                make_shortcut=shortcut,
            )
        )
        c_prev, size = c, out_size
    return Backbone(
        f"rescnn{'-'.join(map(str, channels))}",
        (in_channels, image_size, image_size),
        blocks,
        _spatial_head(c_prev),
        convolutional=True,
    )


# --------------------------------------------------------------------- dense
class DenseDecoder(nn.Module):
    """A light per-task decoder: 3x3 conv, BN, ReLU, a 1x1 classifier, bilinear upsampling to ``size``.

    It reads the last block's features only (BranchedNet's heads read each
    task's last activation), as AdaShare's DeepLab heads do; theirs are ASPP
    (four dilated 3x3 branches) on a ResNet-34 at output stride 8.
    """

    def __init__(self, c_in: int, n_out: int, size: tuple[int, int], width: int = 64) -> None:
        super().__init__()
        self.size = tuple(size)
        self.conv = nn.Conv2d(c_in, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.classify = nn.Conv2d(width, n_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.classify(torch.relu(self.bn(self.conv(x))))
        if tuple(out.shape[-2:]) != self.size:
            out = F.interpolate(out, size=self.size, mode="bilinear", align_corners=False)
        return out


def _dense_head(c: int, size: tuple[int, int], width: int) -> Callable[[TaskSpec], nn.Module]:
    pooled = _spatial_head(c)
    return lambda task: DenseDecoder(c, task.n_outputs, size, width) if task.dense else pooled(task)


def dense_backbone(
    in_channels: int,
    image_size: int | tuple[int, int],
    channels: Sequence[int] = (32, 64, 128, 256),
    strides: Sequence[int] = (1, 2, 2, 2),
    repeats: int = 1,
    decoder_width: int = 64,
) -> Backbone:
    """A residual encoder for per-pixel tasks, one branch point per block, and a decoder per task.

    Block 0 is a 3x3 conv stem with stride ``strides[0]``; each later stage i
    has ``repeats`` residual basic blocks, the first changing the width to
    ``channels[i]`` with stride ``strides[i]`` (its skip is a projection), the
    others shape-preserving (their skip is the identity, which AdaShare's
    policies rely on). Dense tasks get a :class:`DenseDecoder` that upsamples
    to the input size; per-sample tasks a pooled linear head. The default
    output stride is 8 (DeepLab's, as in AdaShare's Taskonomy backbone).
    """
    if len(strides) != len(channels):
        raise ValueError(f"give one stride per stage: {len(channels)} channels, {len(strides)} strides")
    if repeats < 1:
        raise ValueError(f"repeats={repeats}: each stage needs at least one block")
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    blocks = []
    c_prev, h, w = in_channels, height, width

    def add(name: str, make, shortcut, c_out: int, stride: int) -> None:
        nonlocal c_prev, h, w
        h_out, w_out = (h + stride - 1) // stride, (w + stride - 1) // stride
        blocks.append(BlockSpec(name, make, (c_prev, h, w), (c_out, h_out, w_out), make_shortcut=shortcut))
        c_prev, h, w = c_out, h_out, w_out

    c0, s0 = channels[0], strides[0]
    add("conv0", lambda: ConvStem(in_channels, c0, s0), lambda: _projection(in_channels, c0, s0), c0, s0)
    index = 1
    for c, stride in zip(channels[1:], strides[1:], strict=True):
        for r in range(repeats):
            st = stride if r == 0 else 1
            make = (lambda a, b, s_: lambda: ResidualBlock(a, b, s_))(c_prev, c, st)
            shortcut = None
            if c_prev != c or st != 1:
                shortcut = (lambda a, b, s_: lambda: _projection(a, b, s_))(c_prev, c, st)
            add(f"res{index}", make, shortcut, c, st)
            index += 1
    return Backbone(
        f"dense{'-'.join(map(str, channels))}" + (f"x{repeats}" if repeats > 1 else ""),
        (in_channels, height, width),
        blocks,
        _dense_head(c_prev, (height, width), decoder_width),
        convolutional=True,
    )


# -------------------------------------------------- CelebA (TAG / ResNet-18)
class PooledStem(nn.Module):
    """3x3 convolution, BatchNorm, ReLU, then 3x3 max-pooling with stride 2 (no padding).

    The stem of TAG's CelebA network (``conv1_1``, ``bn1_1``, ``MaxPooling2D((3,3),
    strides=(2,2))``), which DMTG's reference reproduces in PyTorch
    (``nn.MaxPool2d(3, 2)``): 64x64 inputs become 31x31 maps.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.pool = nn.MaxPool2d(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.bn(self.conv(x))))


def _pooled_size(size: int) -> int:
    return (size - 3) // 2 + 1


def _xavier(module: nn.Module) -> nn.Module:
    """Glorot-uniform weights and zero biases, as TAG (``glorot_uniform``) and DMTG (``xavier_uniform_``)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def _kaiming(module: nn.Module) -> nn.Module:
    """He-normal (fan_out) convolutions and unit BatchNorm scales, as torchvision's ResNet."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


def _stem_shortcut(c_in: int, c_out: int) -> nn.Module:
    """A skipped stem: a 1x1 projection and the same pooling, so shapes still match."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.MaxPool2d(3, 2)
    )


def tag_celeba_backbone(image_size: int = 64, width: int = 64, in_channels: int = 3) -> Backbone:
    """TAG's CelebA network (Fifty et al., NeurIPS 2021), also DMTG's (Gao et al., ICML 2024).

    From ``google-research/tag/celeba/CelebA.ipynb`` (class ``ResNet18`` and
    ``AttributeDecoder``) and DMTG's ``models/resnet.py`` (``ResNet18``,
    ``ResNet18Base`` / ``ResNet18Group``) with ``models/decoders.py``
    (``AttributeDecoderNoDrop``, ``in_channel: 14400 = 64*15*15``):

    * block ``stem``: conv 3x3 (64, stride 1, no bias), BatchNorm, ReLU, max-pool
      3x3 stride 2: 64x64 -> 31x31;
    * block ``res1``: one residual basic block of 64 channels, stride 1 (identity
      shortcut);
    * head, per task: average-pool 2x2 (31 -> 15), flatten (64*15*15 = 14400),
      one linear layer.

    Two branch points, as in DMTG's CelebA configs: branching after the stem
    (``resnet_base`` shared, ``resnet_group`` per group: the ``*_shared`` configs)
    or at the input (``simple_resnet`` per group). Weights are Glorot-uniform as
    in both references. The heads here have one logit (binary cross-entropy)
    where the references have two (softmax cross-entropy over two classes): the
    same model class, parametrised once.
    """
    pooled = _pooled_size(image_size)
    if pooled < 2:
        raise ValueError(f"image_size={image_size} is too small for the TAG network; give at least 8")
    out = pooled // 2
    w = width
    blocks = [
        BlockSpec(
            name="stem",
            make=lambda: _xavier(PooledStem(in_channels, w)),
            in_shape=(in_channels, image_size, image_size),
            out_shape=(w, pooled, pooled),
            make_shortcut=lambda: _xavier(_stem_shortcut(in_channels, w)),
        ),
        BlockSpec(
            name="res1",
            make=lambda: _xavier(ResidualBlock(w, w, 1)),
            in_shape=(w, pooled, pooled),
            out_shape=(w, pooled, pooled),
        ),
    ]

    def head(task: TaskSpec) -> nn.Module:
        return _xavier(nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(w * out * out, task.n_outputs)))

    return Backbone(f"tag_celeba{w}", (in_channels, image_size, image_size), blocks, head, convolutional=True)


def resnet18_backbone(image_size: int = 64, width: int = 64, in_channels: int = 3) -> Backbone:
    """A ResNet-18 for small images: TAG's stem, then 4 stages of 2 basic blocks.

    Stages have ``width * (1, 2, 4, 8)`` channels (64-512 at the default), the
    first block of stages 2-4 halves the resolution with a projected (1x1 conv +
    BatchNorm) shortcut, and each head is global average pooling and a linear
    layer (torchvision's ``resnet18`` layout). The stem is TAG's (3x3 conv,
    stride 1, then 3x3 max-pool, stride 2) rather than ImageNet's 7x7/2 conv and
    max-pool, which would leave 2x2 maps at 64x64 input: 64 -> 31 -> 16 -> 8 -> 4.
    So TAG's CelebA network is exactly this network's first two blocks.

    Nine branch points: ``stem`` and ``res<stage><a|b>`` for each basic block.
    He-normal initialisation as torchvision's ResNet.
    """
    size = _pooled_size(image_size)
    if size < 1:
        raise ValueError(f"image_size={image_size} is too small for the ResNet-18; give at least 8")
    blocks = [
        BlockSpec(
            name="stem",
            make=lambda: _kaiming(PooledStem(in_channels, width)),
            in_shape=(in_channels, image_size, image_size),
            out_shape=(width, size, size),
            make_shortcut=lambda: _kaiming(_stem_shortcut(in_channels, width)),
        )
    ]
    c_prev = width
    for stage, mult in enumerate((1, 2, 4, 8), start=1):
        c = width * mult
        for j, suffix in enumerate("ab"):
            stride = 2 if (stage > 1 and j == 0) else 1
            out_size = (size + stride - 1) // stride
            shortcut = None
            if c_prev != c or stride != 1:
                shortcut = (lambda a, b, s: lambda: _kaiming(_projection(a, b, s)))(c_prev, c, stride)
            blocks.append(
                BlockSpec(
                    name=f"res{stage}{suffix}",
                    make=(lambda a, b, s: lambda: _kaiming(ResidualBlock(a, b, s)))(c_prev, c, stride),
                    in_shape=(c_prev, size, size),
                    out_shape=(c, out_size, out_size),
                    make_shortcut=shortcut,
                )
            )
            c_prev, size = c, out_size
    return Backbone(
        f"resnet18_{width}", (in_channels, image_size, image_size), blocks, _spatial_head(c_prev), convolutional=True
    )
