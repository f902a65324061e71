"""Our encoders: ResNet-18/34/50 with a CIFAR or ImageNet stem and a width multiplier, the
reference's shortcut and init options."""

from __future__ import annotations

import math
from typing import get_args

import torch
from torch import Tensor, nn

from simclr.config.schema import Init, Shortcut


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, c_mid: int, stride: int, projection: bool = False):
        super().__init__()
        c_out = c_mid * self.expansion
        self.conv1 = nn.Conv2d(c_in, c_mid, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_mid)
        self.conv2 = nn.Conv2d(c_mid, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = _shortcut(c_in, c_out, stride, projection)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, c_mid: int, stride: int, projection: bool = False):
        super().__init__()
        c_out = c_mid * self.expansion
        self.conv1 = nn.Conv2d(c_in, c_mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_mid)
        self.conv2 = nn.Conv2d(c_mid, c_mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_mid)
        self.conv3 = nn.Conv2d(c_mid, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut = _shortcut(c_in, c_out, stride, projection)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + self.shortcut(x))


class StridedPointwiseConv(nn.Conv2d):
    """A 1x1 convolution with stride s, computed as a strided slice followed by a stride-1 1x1
    convolution: the same output and gradients (a 1x1 kernel with stride s reads exactly the
    pixels ``x[..., ::s, ::s]``) and the same parameters as ``nn.Conv2d(c_in, c_out, 1, s)``.

    Why: oneDNN's stride-2 1x1 backward-weights kernel on AVX2-only CPUs
    (``jit_avx2_1x1_convolution_bwd_weights``, torch 2.13) corrupts the heap for channels_last
    inputs with few channels (2 to 12 input channels in a survey; 1 was clean): with one thread
    the process aborts or segfaults, with two it spins forever. The stride-1 kernel is sound,
    so the model never asks for the strided one.
    """

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__(c_in, c_out, 1, 1, bias=False)
        self.step = stride

    def forward(self, x: Tensor) -> Tensor:
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) \
            else torch.contiguous_format
        x = x[:, :, ::self.step, ::self.step]  # B x C x ceil(H/s) x ceil(W/s)
        return super().forward(x.contiguous(memory_format=fmt))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", stride={self.step} (sliced)"


def _shortcut(c_in: int, c_out: int, stride: int, projection: bool = False) -> nn.Module:
    """Identity when the shapes match (unless ``projection``), else 1x1 conv + BatchNorm."""
    if stride == 1 and c_in == c_out and not projection:
        return nn.Identity()
    conv = StridedPointwiseConv(c_in, c_out, stride) if stride > 1 else \
        nn.Conv2d(c_in, c_out, 1, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(c_out))


# name -> (block, blocks per stage)
ARCHS: dict[str, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


SHORTCUTS = get_args(Shortcut)  # a stage's first block when shapes already match
INITS = get_args(Init)


class ResNet(nn.Module):
    """ResNet encoder f: images B x C x H x W -> features h B x feature_dim.

    Args:
        arch: a key of ``ARCHS``.
        width: multiplier of the stage widths 64-128-256-512 (0.25 -> 16-32-64-128).
        stem: "cifar" (3x3 stride-1 conv, no max-pool; for <= 64 px images) or "imagenet"
            (7x7 stride-2 conv + 3x3 stride-2 max-pool).
        in_channels: image channels (1 for Fashion-MNIST, 3 for colour).
        shortcut: the first block of a stage whose input already has the block's shape:
            "identity" (torchvision) or "projection" (1x1 conv + BN, as every stage of the tf
            reference's ``BlockGroup``; differs for ResNet-18/34's first stage only).
        zero_init_residual: start the last BatchNorm gamma of every block at 0, so each block
            begins as its shortcut (the tf reference's ``init_zero=True``).
        init: "torchvision" (convs ~ N(0, 2 / fan_out)) or "reference" (tf
            ``VarianceScaling()``: truncated normal, scale 1, fan_in).
    """

    def __init__(self, arch: str = "resnet18", width: float = 1.0, stem: str = "cifar",
                 in_channels: int = 3, shortcut: str = "identity",
                 zero_init_residual: bool = False, init: str = "torchvision"):
        super().__init__()
        block, depths = ARCHS[arch]
        widths = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
        if stem == "cifar":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False),
                nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        stages, c_in = [], widths[0]
        for i, (c_mid, depth) in enumerate(zip(widths, depths, strict=True)):
            blocks = []
            for j in range(depth):
                blocks.append(block(c_in, c_mid, stride=2 if (i > 0 and j == 0) else 1,
                                    projection=j == 0 and shortcut == "projection"))
                c_in = c_mid * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.feature_dim = c_in
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if init == "reference":
                    variance_scaling_(m.weight)
                else:
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))  # B x D x h x w
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)  # B x D


# tf's truncated_normal keeps draws within 2 std; this is the std of N(0, 1) cut there.
_TRUNC_STD = 0.87962566103423978


def variance_scaling_(w: Tensor, scale: float = 1.0) -> Tensor:
    """tf ``VarianceScaling(scale, "fan_in", "truncated_normal")`` in place: a normal with std
    ``sqrt(scale / fan_in) / 0.8796``, truncated at two of those stds (so the result's std is
    ``sqrt(scale / fan_in)``); fan_in = in_channels x kernel area."""
    fan_in = w[0].numel()
    std = math.sqrt(scale / fan_in) / _TRUNC_STD
    return nn.init.trunc_normal_(w, 0.0, std, -2 * std, 2 * std)


__all__ = ["ARCHS", "INITS", "SHORTCUTS", "BasicBlock", "Bottleneck", "ResNet",
           "StridedPointwiseConv", "variance_scaling_"]
