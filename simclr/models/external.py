"""Encoders beyond our ResNets: ``timm:<name>`` and ``torchvision:<name>`` when those packages
import, and any module mapping B x C x H x W floats to B x D (handed to the Python API).

Neither package is a dependency: each is imported only when an arch names it, and a missing
or broken one is a one-line `SimCLRError` with the fix. Built encoders lose their
classifier (features are the pooled output), take the data's channels, and get the CIFAR stem
(3x3 stride-1 first conv, no max-pool) for small images where the architecture has a ResNet
stem (``conv1`` + ``maxpool``) to swap.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from simclr.config.packages import first_line, import_package
from simclr.errors import SimCLRError


def _last_linear_to_identity(net: nn.Module, arch: str) -> None:
    """Replace the last ``nn.Linear`` (in registration order: the classifier) by the identity."""
    names = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise SimCLRError(f"{arch} has no linear classifier to remove; pass the backbone "
                          "itself through the Python API: simclr.pretrain(cfg, encoder=module)")
    parent, _, leaf = names[-1].rpartition(".")
    setattr(net.get_submodule(parent), leaf, nn.Identity())


def _first_conv_channels(net: nn.Module, in_channels: int) -> None:
    """Give the first ``nn.Conv2d`` ``in_channels`` inputs (torchvision builds 3-channel)."""
    name, conv = next(((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)),
                      (None, None))
    if conv is None or conv.in_channels == in_channels:
        return
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
    parent, _, leaf = name.rpartition(".")
    setattr(net.get_submodule(parent), leaf, new)


def cifar_stem_(net: nn.Module) -> bool:
    """Swap a ResNet stem (``conv1`` a Conv2d, and ``maxpool``) for the CIFAR stem in place:
    a 3x3 stride-1 conv with the same channels (kaiming-normal, fan_out) and no max-pool.

    Returns:
        Whether the module had such a stem.
    """
    conv = getattr(net, "conv1", None)
    if not isinstance(conv, nn.Conv2d) or not isinstance(getattr(net, "maxpool", None),
                                                         nn.Module):
        return False
    net.conv1 = nn.Conv2d(conv.in_channels, conv.out_channels, 3, 1, 1,
                          bias=conv.bias is not None)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    return True


def build_external(arch: str, in_channels: int, stem: str, explicit_stem: bool = False,
                   kwargs: dict | None = None) -> nn.Module:
    """A freshly initialized timm / torchvision encoder: B x in_channels x H x W -> B x D.

    Args:
        arch: ``timm:<name>`` or ``torchvision:<name>``.
        stem: "cifar" swaps in the CIFAR stem where the model has a ResNet stem; "imagenet"
            keeps the model's own.
        explicit_stem: the user asked for the CIFAR stem by name: refuse a model without one
            (with ``model.stem=auto`` such a model keeps its own stem).
        kwargs: more keyword arguments of ``timm.create_model`` / torchvision's builder
            (``model.kwargs``: e.g. ``img_size`` and ``patch_size`` of a ViT).
    """
    package, _, name = arch.partition(":")
    module = import_package(package, arch)
    kwargs = dict(kwargs or {})
    try:
        if package == "timm":  # num_classes=0: no classifier, pooled features
            net = module.create_model(name, pretrained=False, num_classes=0,
                                      in_chans=in_channels, **kwargs)
        else:
            net = module.models.get_model(name, weights=None, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:  # a bad argument
        raise SimCLRError(f"{package} cannot build {name} with model.kwargs={kwargs} "
                          f"({type(e).__name__}: {first_line(e)}); fix or drop model.kwargs"
                          ) from None
    if package != "timm":
        _last_linear_to_identity(net, arch)
        _first_conv_channels(net, in_channels)
    if stem == "cifar" and not cifar_stem_(net) and explicit_stem:
        raise SimCLRError(f"model.stem=cifar: {arch} has no ResNet stem (conv1 + maxpool) to "
                          "swap; use model.stem=auto or imagenet")
    return net


def feature_dim(encoder: nn.Module, in_channels: int, image_size: int | tuple[int, int]) -> int:
    """D of an encoder mapping B x C x H x W floats to B x D, found by one forward pass of two
    blank images (eval mode, no gradient; the module's mode and state are left as they were).

    Args:
        image_size: S (square images) or (H, W).
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    like = next(itertools.chain(encoder.parameters(), encoder.buffers()), None)
    device = like.device if like is not None else torch.device("cpu")
    dtype = like.dtype if like is not None and like.is_floating_point() else torch.float32
    was_training = encoder.training
    encoder.eval()
    shape = f"{in_channels}x{h}x{w}"
    try:
        with torch.no_grad():
            out = encoder(torch.zeros(2, in_channels, h, w, device=device, dtype=dtype))
    except Exception as e:  # the user's module: any failure is theirs to see in one line
        raise SimCLRError(f"the encoder cannot run on {shape} images ({type(e).__name__}: "
                          f"{first_line(e)}); it must map B x C x H x W floats to B x D"
                          ) from None
    finally:
        encoder.train(was_training)
    if not torch.is_tensor(out) or out.ndim != 2 or out.shape[0] != 2:
        got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise SimCLRError(f"the encoder must map B x C x H x W to B x D, but on 2 x {shape} "
                          f"images it returned {got}; end it with pooling and a flatten")
    return int(out.shape[1])


__all__ = ["build_external", "cifar_stem_", "feature_dim"]
