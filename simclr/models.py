"""Encoders (ResNet-18/34/50 with a CIFAR or ImageNet stem and a width multiplier; timm,
torchvision or any module through :mod:`simclr.backbones`), the projection head, and
``SimCLR(f, g)`` that returns features h and projections z."""

from __future__ import annotations

import difflib
import math

import torch
from torch import Tensor, nn

from simclr.backbones import CUSTOM, build_external, check_arch, feature_dim, is_external
from simclr.errors import SimCLRError


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


SHORTCUTS = ("identity", "projection")  # a stage's first block when shapes already match
INITS = ("torchvision", "reference")


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


class ScaleOnlyBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d with a learned scale and no shift (tf ``BatchNormalization(center=False)``),
    the reference head's output layer."""

    def __init__(self, dim: int):
        super().__init__(dim)
        self.register_parameter("bias", None)


class ProjectionHead(nn.Module):
    """MLP g: h B x D -> z B x out_dim; ``layers`` linear layers, ReLU between them.

    ``bn``: BatchNorm1d after each hidden linear layer (which then has no bias); ``bn_last``:
    also after the output layer, scale only, and the output layer has no bias (the tf
    reference's head with 3 layers). ``init="reference"`` draws the linear weights from
    N(0, 0.01^2) as the reference's ``LinearLayer``; else PyTorch's default.
    """

    def __init__(self, in_dim: int, hidden: int = 0, out_dim: int = 128, layers: int = 2,
                 bn: bool = False, bn_last: bool = False, init: str = "torchvision"):
        super().__init__()
        hidden = hidden or in_dim
        mods: list[nn.Module] = []
        dim = in_dim
        for _ in range(layers - 1):
            mods += [nn.Linear(dim, hidden, bias=not bn)]
            mods += [nn.BatchNorm1d(hidden)] if bn else []
            mods += [nn.ReLU(inplace=True)]
            dim = hidden
        mods.append(nn.Linear(dim, out_dim, bias=not bn_last))
        mods += [ScaleOnlyBatchNorm1d(out_dim)] if bn_last else []
        self.net = nn.Sequential(*mods)
        if init == "reference":
            for m in self.net:
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0.0, 0.01)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)


class SimCLR(nn.Module):
    """Encoder f and projection head g: ``forward(x) -> (h, z)``; evaluation uses h.

    ``x`` is one batch B x C x H x W, or a list of batches of different sizes (multi-crop
    views): the encoder then runs once per batch, so each size group has its own BatchNorm
    statistics (a joint forward is impossible across sizes), and the head runs once on all
    features together. ``feature_dim``: D of h (the encoder's, or found by a forward pass).
    """

    def __init__(self, encoder: nn.Module, head: ProjectionHead, feature_dim: int | None = None):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.feature_dim = feature_dim if feature_dim is not None else encoder.feature_dim

    def forward(self, x: Tensor | list[Tensor]) -> tuple[Tensor, Tensor]:
        if isinstance(x, (list, tuple)):
            h = torch.cat([self.encoder(v) for v in x])  # sum of batches x D
        else:
            h = self.encoder(x)  # B x D
        return h, self.head(h)


# Keys that shape our ResNets only; other encoders need their defaults (model.init still sets
# the projection head's init).
RESNET_ONLY = {"width": 1.0, "shortcut": "identity", "zero_init_residual": False}


def check_model_arch(m) -> None:
    """SimCLRError unless ``model.arch`` (a ``config.Model`` section) is one of our ResNets,
    ``timm:<name>`` / ``torchvision:<name>`` (the package must import and know the name), or
    ``custom`` (a module given to the Python API); our ResNets' own keys are refused for the
    others."""
    if m.arch in ARCHS:
        return
    if is_external(m.arch):
        check_arch(m.arch)
    elif m.arch != CUSTOM:
        match = difflib.get_close_matches(m.arch, sorted(ARCHS), n=1)
        hint = f"did you mean '{match[0]}'? " if match else ""
        raise SimCLRError(f"unknown model.arch '{m.arch}': {hint}choose one of "
                          f"{', '.join(sorted(ARCHS))}, timm:NAME or torchvision:NAME (with "
                          "that package installed)")
    for key, default in RESNET_ONLY.items():
        if getattr(m, key) != default:
            raise SimCLRError(f"model.{key}={getattr(m, key)} applies to our resnet18/34/50 "
                              f"only, not to model.arch={m.arch}; drop it")


def resolve_stem(stem: str, image_size: int) -> str:
    """``auto`` -> the CIFAR stem for images of at most 64 px, else the ImageNet stem."""
    if stem != "auto":
        return stem
    return "cifar" if image_size <= 64 else "imagenet"


def build_encoder(arch: str, width: float, stem: str, in_channels: int, image_size: int,
                  shortcut: str = "identity", zero_init_residual: bool = False,
                  init: str = "torchvision") -> nn.Module:
    """Our ResNet for a key of ``ARCHS``, else a timm / torchvision model (``timm:<name>``)."""
    if arch not in ARCHS:
        return build_external(arch, in_channels, resolve_stem(stem, image_size),
                              explicit_stem=stem == "cifar")
    return ResNet(arch, width, resolve_stem(stem, image_size), in_channels, shortcut,
                  zero_init_residual, init)


def encoder_from_meta(meta: dict) -> nn.Module:
    """A freshly initialized encoder of the architecture an exported encoder's metadata names
    (files written before ``shortcut`` existed have identity shortcuts). A custom module
    cannot be rebuilt from a name: that is a SimCLRError asking for it."""
    if meta["arch"] == CUSTOM:
        raise SimCLRError(f"this encoder is a custom module ({meta.get('module', 'unknown')}), "
                          "which cannot be rebuilt from its file; pass one to load the weights "
                          "into: simclr.load_encoder(path, encoder=module)")
    if meta["arch"] not in ARCHS:
        return build_external(meta["arch"], meta["in_channels"], meta["stem"])
    return ResNet(meta["arch"], meta["width"], meta["stem"], meta["in_channels"],
                  meta.get("shortcut", "identity"), meta.get("zero_init_residual", False),
                  meta.get("init", "torchvision"))


def check_encoder(model_cfg, in_channels: int, image_size: int,
                  encoder: nn.Module | None = None) -> None:
    """SimCLRError now, in one line, when the encoder cannot serve these images: a given module
    is run once (:func:`~simclr.backbones.feature_dim`), a timm / torchvision one built once
    (e.g. ``model.stem=cifar`` where it has no ResNet stem); our ResNets always build."""
    if encoder is not None:
        feature_dim(encoder, in_channels, image_size)
    elif is_external(model_cfg.arch):
        build_encoder(model_cfg.arch, 1.0, model_cfg.stem, in_channels, image_size)


def build_model(model_cfg, in_channels: int, image_size: int,
                encoder: nn.Module | None = None) -> SimCLR:
    """SimCLR model from a ``config.Model`` section and the data's channels / side.

    ``encoder``: use this module (B x C x H x W floats -> B x D) instead of building
    ``model.arch``; D is found by one forward pass. The module's weights are used as given.
    """
    m = model_cfg
    if encoder is None:
        encoder = build_encoder(m.arch, m.width, m.stem, in_channels, image_size, m.shortcut,
                                m.zero_init_residual, m.init)
    dim = encoder.feature_dim if isinstance(encoder, ResNet) else \
        feature_dim(encoder, in_channels, image_size)
    head = ProjectionHead(dim, m.proj_hidden, m.proj_dim, m.proj_layers, m.proj_bn,
                          m.proj_bn_last, m.init)
    return SimCLR(encoder, head, dim)
