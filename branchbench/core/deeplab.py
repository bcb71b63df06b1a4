"""AdaShare's Taskonomy network: a dilated DeepLab ResNet-34 and a DeepLab-v2 ASPP head per task.

Source: ``sunxm2357/AdaShare`` at 27e6fb5, ``models/deeplab_resnet.py``
(``Deeplab_ResNet_Backbone``, ``MTL2``) and ``models/base.py`` (``BasicBlock``,
``Classification_Module``), with ``yamls/adashare/taskonomy_5task.yml``
(``backbone: ResNet34``):

* stem: 7x7 convolution with stride 2, BatchNorm, ReLU, 3x3 max-pooling with
  stride 2 (padding 1, ``ceil_mode=True``);
* four stages of basic residual blocks, ``[3, 4, 6, 3]`` blocks of widths
  64, 128, 256, 512, strides ``[1, 2, 1, 1]`` and dilations ``[1, 1, 2, 4]``
  (output stride 8); the first block of a stage that changes the shape adds a
  1x1 projection to its identity path, and a skipped block is that path alone
  (AdaShare's ``residual``);
* per task, four ``Classification_Module`` s (3x3 convolution with dilation
  6, 12, 18 or 24 to 1024 channels, ReLU, dropout, 1x1 to 1024, ReLU,
  dropout, 1x1 to the outputs) whose outputs are summed, at output stride 8;
  the losses and metrics resize predictions to the target (see
  :mod:`branchbench.core.dense`);
* initialisation: backbone convolutions N(0, 0.01), BatchNorm scale 1 and
  shift 0, heads PyTorch's default, as there.

Each of the 17 blocks (the stem and the 16 residual blocks) is a branch point;
AdaShare's policies select or skip the 16 residual blocks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from branchbench.core.backbones import Backbone, BlockSpec
from branchbench.core.tasks import TaskSpec

RESNET34_LAYERS = (3, 4, 6, 3)
STAGE_STRIDES = (1, 2, 1, 1)
STAGE_DILATIONS = (1, 1, 2, 4)
ASPP_RATES = (6, 12, 18, 24)


def _conv3x3(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def _init_normal(module: nn.Module) -> nn.Module:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.01)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


class DeepLabStem(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 7, stride=2, padding=3, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.bn(self.conv(x))))


def _projection(c_in: int, c_out: int, stride: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))


class DilatedBasicBlock(nn.Module):
    """``relu(path(x) + bn(conv(relu(bn(conv(x))))))`` with dilated 3x3 convolutions."""

    def __init__(self, c_in: int, c_out: int, stride: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride, dilation)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv3x3(c_out, c_out, 1, dilation)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.project = _projection(c_in, c_out, stride) if (c_in != c_out or stride != 1) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(self.project(x) + out)


class ASPPBranch(nn.Module):
    """AdaShare's ``Classification_Module``: dilated 3x3, two 1x1, ReLU and dropout between."""

    def __init__(self, c_in: int, n_out: int, rate: int, width: int = 1024) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, width, 3, padding=rate, dilation=rate)
        self.conv2 = nn.Conv2d(width, width, 1)
        self.conv3 = nn.Conv2d(width, n_out, 1)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(torch.relu(self.conv1(x)))
        x = self.dropout(torch.relu(self.conv2(x)))
        return self.conv3(x)


class ASPPHead(nn.Module):
    """The sum of one :class:`ASPPBranch` per rate (DeepLab-v2's ASPP, as AdaShare's heads)."""

    def __init__(self, c_in: int, n_out: int, rates: Sequence[int] = ASPP_RATES, width: int = 1024) -> None:
        super().__init__()
        self.branches = nn.ModuleList(ASPPBranch(c_in, n_out, r, width) for r in rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class StemShortcut(nn.Module):
    """A skipped stem's path (as ``dense_backbone``'s projection): a strided 1x1 projection and the
    stem's max-pooling, so the shapes downstream hold."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(c_in, c_out, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.bn(self.project(x)))


def _out_size(module: nn.Module, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        return tuple(module.eval()(torch.zeros(1, *shape)).shape[1:])


def deeplab_resnet34_backbone(
    image_size: int | tuple[int, int],
    width: int = 64,
    head_width: int = 1024,
    layers: Sequence[int] = RESNET34_LAYERS,
    in_channels: int = 3,
) -> Backbone:
    """AdaShare's DeepLab ResNet-34 (``width=64``, ``head_width=1024``) with an ASPP head per dense task.

    ``width`` scales the stage widths (``width * (1, 2, 4, 8)``) and
    ``head_width`` the heads, for smaller variants; per-sample tasks get a
    pooled linear head.
    """
    height, wide = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    shape = (in_channels, height, wide)
    stem_out = _out_size(DeepLabStem(in_channels, width), shape)
    blocks = [BlockSpec(
        "stem",
        (lambda a, b: lambda: _init_normal(DeepLabStem(a, b)))(in_channels, width),
        shape,
        stem_out,
        make_shortcut=(lambda a, b: lambda: _init_normal(StemShortcut(a, b)))(in_channels, width),
    )]
    c_prev, current = width, stem_out
    for stage, (count, stride, dilation) in enumerate(zip(layers, STAGE_STRIDES, STAGE_DILATIONS, strict=True)):
        c_out = width * 2**stage
        for r in range(count):
            st = stride if r == 0 else 1
            make = (lambda a, b, s, d: lambda: _init_normal(DilatedBasicBlock(a, b, s, d)))(c_prev, c_out, st, dilation)
            shortcut, out_shape = None, current
            if c_prev != c_out or st != 1:
                shortcut = (lambda a, b, s: lambda: _init_normal(_projection(a, b, s)))(c_prev, c_out, st)
                out_shape = _out_size(shortcut(), current)
            blocks.append(BlockSpec(f"layer{stage + 1}.{r}", make, current, out_shape, make_shortcut=shortcut))
            c_prev, current = c_out, out_shape

    def head(task: TaskSpec) -> nn.Module:
        if task.dense:
            return ASPPHead(c_prev, task.n_outputs, width=head_width)
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_prev, task.n_outputs))

    name = "deeplab_resnet34" if (width, head_width) == (64, 1024) else f"deeplab_resnet34-w{width}-h{head_width}"
    return Backbone(name, shape, blocks, head, convolutional=True)
