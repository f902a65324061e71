"""Encoder and head shapes for each backbone and image size; stems; width multiplier."""

import pytest
import torch

from simclr.config import Model
from simclr.models import ARCHS, ProjectionHead, ResNet, build_model, resolve_stem


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3), (96, 3)])
def test_shapes_and_finite(arch, size, channels):
    model = build_model(Model(arch=arch, width=0.125, proj_dim=16), channels, size)
    x = torch.rand(2, channels, size, size)
    h, z = model(x)
    expected = {"resnet18": 64, "resnet34": 64, "resnet50": 256}[arch]  # 512 or 2048 x 1/8
    assert h.shape == (2, expected) and model.encoder.feature_dim == expected
    assert z.shape == (2, 16)
    assert torch.isfinite(h).all() and torch.isfinite(z).all()


def test_full_width_feature_dims():
    assert ResNet("resnet18").feature_dim == 512
    assert ResNet("resnet50").feature_dim == 2048


def test_stems():
    assert resolve_stem("auto", 32) == "cifar" and resolve_stem("auto", 96) == "imagenet"
    cifar, imnet = ResNet(width=0.125, stem="cifar"), ResNet(width=0.125, stem="imagenet")
    assert cifar.stem[0].kernel_size == (3, 3) and cifar.stem[0].stride == (1, 1)
    assert len(cifar.stem) == 3  # no max-pool
    assert imnet.stem[0].kernel_size == (7, 7) and isinstance(imnet.stem[-1], torch.nn.MaxPool2d)
    # the CIFAR stem keeps 32 px at full resolution into stage 1: last stage is 4x4
    feats = cifar.stages(cifar.stem(torch.rand(1, 3, 32, 32)))
    assert feats.shape[-2:] == (4, 4)


def test_width_multiplier_channels():
    enc = ResNet("resnet18", width=0.25)
    assert [s[0].conv1.out_channels for s in enc.stages] == [16, 32, 64, 128]


def test_head_layers_and_bn():
    head = ProjectionHead(64, hidden=0, out_dim=128, layers=3, bn=True)
    linears = [m for m in head.net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 64), (64, 64), (64, 128)]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in head.net) == 2
    assert len(ProjectionHead(64, layers=1).net) == 1


def test_channels_last_matches_contiguous():
    torch.manual_seed(0)
    model = build_model(Model(width=0.125), 3, 32).eval()
    x = torch.rand(4, 3, 32, 32)
    h1, _ = model(x)
    h2, _ = model.to(memory_format=torch.channels_last)(x.contiguous(
        memory_format=torch.channels_last))
    torch.testing.assert_close(h1, h2, rtol=1e-4, atol=1e-5)
