"""The one encoder factory: an encoder's *spec* (arch, width, resolved stem, channels, shortcut,
zero-init, init: what a config's ``model`` section and the data give, and what an exported
encoder's metadata records) -> our ResNet, a timm / torchvision model
(`simclr.models.external`), or a refusal for a custom module, which only the Python API can
hand over. Also the SimCLR model (encoder + projection head) and the checks made before a run
writes anything.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from simclr.config import CUSTOM, Model
from simclr.config.packages import is_external
from simclr.errors import SimCLRError
from simclr.models.external import build_external, feature_dim
from simclr.models.head import ProjectionHead, SimCLR
from simclr.models.resnet import ARCHS, ResNet


def resolve_stem(stem: str, image_size: int) -> str:
    """``auto`` -> the CIFAR stem for images of at most 64 px, else the ImageNet stem."""
    if stem != "auto":
        return stem
    return "cifar" if image_size <= 64 else "imagenet"


def encoder_spec(m: Model, in_channels: int, image_size: int) -> dict[str, Any]:
    """The spec of the encoder a ``model`` section builds for ``in_channels`` x ``image_size``
    images (the keys an exported encoder records)."""
    return {"arch": m.arch, "width": m.width, "stem": resolve_stem(m.stem, image_size),
            "in_channels": in_channels, "shortcut": m.shortcut,
            "zero_init_residual": m.zero_init_residual, "init": m.init,
            **({"kwargs": dict(m.kwargs)} if m.kwargs else {})}


def build_encoder(spec: dict[str, Any], explicit_stem: bool = False) -> nn.Module:
    """A freshly initialized encoder of a spec (from `encoder_spec`, or an exported
    encoder's metadata: files written before ``shortcut`` existed have identity shortcuts).

    Args:
        explicit_stem: the user asked for the CIFAR stem by name (``model.stem=cifar``): a
            timm / torchvision model without a ResNet stem to swap is refused.

    Raises:
        SimCLRError: a custom module (``arch`` custom) cannot be rebuilt from its record.
    """
    arch = spec["arch"]
    if arch == CUSTOM:
        raise SimCLRError(f"this encoder is a custom module ({spec.get('module', 'unknown')}), "
                          "which cannot be rebuilt from its file; pass one to load the weights "
                          "into: simclr.load_encoder(path, encoder=module)")
    if arch in ARCHS:
        return ResNet(arch, spec.get("width", 1.0), spec["stem"], spec["in_channels"],
                      spec.get("shortcut", "identity"), spec.get("zero_init_residual", False),
                      spec.get("init", "torchvision"))
    return build_external(arch, spec["in_channels"], spec["stem"], explicit_stem,
                          spec.get("kwargs"))


def encoder_dim(encoder: nn.Module, in_channels: int, image_size: int | tuple[int, int]) -> int:
    """D of an encoder's features: our ResNet's own, else one forward pass
    (`feature_dim`)."""
    if isinstance(encoder, ResNet):
        return encoder.feature_dim
    return feature_dim(encoder, in_channels, image_size)


def check_encoder(m: Model, in_channels: int, image_size: int,
                  encoder: nn.Module | None = None) -> None:
    """SimCLRError now, in one line, when the encoder cannot serve these images: a given module
    is run once (`feature_dim`), a timm / torchvision one built
    and run once (``model.stem=cifar`` where it has no ResNet stem; a ViT at another size than
    its own without ``model.kwargs``); our ResNets always build."""
    if encoder is None and is_external(m.arch):
        encoder = build_encoder(encoder_spec(m, in_channels, image_size), m.stem == "cifar")
    if encoder is not None:
        feature_dim(encoder, in_channels, image_size)


def build_model(m: Model, in_channels: int, image_size: int,
                encoder: nn.Module | None = None) -> SimCLR:
    """SimCLR model from a ``model`` section and the data's channels / side.

    ``encoder``: use this module (B x C x H x W floats -> B x D) instead of building
    ``model.arch``; D is found by one forward pass. The module's weights are used as given.
    """
    if encoder is None:
        encoder = build_encoder(encoder_spec(m, in_channels, image_size), m.stem == "cifar")
    dim = encoder_dim(encoder, in_channels, image_size)
    head = ProjectionHead(dim, m.proj_hidden, m.proj_dim, m.proj_layers, m.proj_bn,
                          m.proj_bn_last, m.init)
    return SimCLR(encoder, head, dim)


__all__ = ["build_encoder", "build_model", "check_encoder", "encoder_dim",
           "encoder_spec", "resolve_stem"]
