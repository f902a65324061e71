"""Encoder and head shapes for each backbone and image size; stems; width multiplier."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from simclr.config import Model
from simclr.models.factory import build_model, resolve_stem
from simclr.models.head import ProjectionHead
from simclr.models.resnet import ARCHS, ResNet, StridedPointwiseConv

ROOT = Path(__file__).resolve().parents[1]
MALLOC_DEBUG = "/usr/lib/x86_64-linux-gnu/libc_malloc_debug.so.0"


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


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size", [7, 28, 33])
def test_strided_pointwise_conv_equals_strided_conv(channels_last, size):
    """The sliced stride-2 1x1 conv gives nn.Conv2d(stride=2)'s output and every gradient."""
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(4, 8, 1, 2, bias=False).double()
    ours = StridedPointwiseConv(4, 8, 2).double()
    ours.load_state_dict(ref.state_dict())  # same parameter names and shapes
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3, 4, size, size, dtype=torch.float64).contiguous(memory_format=fmt)
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y_ours = ref(x_ref), ours.to(memory_format=fmt)(x_ours)
    assert y_ours.shape == y_ref.shape
    assert y_ours.is_contiguous(memory_format=fmt)
    g = torch.randn_like(y_ref)
    (y_ref * g).sum().backward()
    (y_ours * g).sum().backward()
    torch.testing.assert_close(y_ours, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=0, atol=1e-12)


def test_downsampling_shortcuts_never_use_a_strided_pointwise_conv():
    for arch in ARCHS:
        enc = ResNet(arch, width=0.0625)
        convs = [m for m in enc.modules() if isinstance(m, torch.nn.Conv2d)]
        assert all(m.stride == (1, 1) for m in convs if m.kernel_size == (1, 1))
        assert any(isinstance(m, StridedPointwiseConv) and m.step == 2 for m in convs)


# Run in a fresh process, once with one thread and once with two: on AVX2-only CPUs oneDNN's
# strided 1x1 backward kernel corrupts the heap at 2-5 channels (one thread: abort/segfault;
# two: a spin that never ends), so a regression fails here in seconds instead of hanging CI.
_KERNEL_SCRIPT = """
import torch
from simclr.models.resnet import ResNet, _shortcut
torch.manual_seed(0)
cl = torch.channels_last
for c in (2, 3, 4, 5):  # the shortcut alone, 4 channels as in width 0.0625's stage 1
    sc = _shortcut(c, 2 * c, 2).to(memory_format=cl)
    x = torch.rand(16, c, 28, 28).contiguous(memory_format=cl).requires_grad_()
    for _ in range(2):
        sc(x).sum().backward()
for arch in ("resnet18", "resnet50"):
    for width in (0.03125, 0.0625):
        for size, stem in ((28, "cifar"), (32, "cifar"), (64, "imagenet")):
            enc = ResNet(arch, width, stem, in_channels=3).to(memory_format=cl)
            x = torch.rand(8, 3, size, size).contiguous(memory_format=cl).requires_grad_()
            for _ in range(2):
                enc(x).sum().backward()
print("ok")
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_tiny_models_train_in_channels_last_without_crashing_or_hanging(threads):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    if os.path.exists(MALLOC_DEBUG):  # glibc's checking allocator: corruption aborts at once
        env.update(LD_PRELOAD=MALLOC_DEBUG, GLIBC_TUNABLES="glibc.malloc.check=3")
    try:
        out = subprocess.run([sys.executable, "-c", _KERNEL_SCRIPT], env=env, timeout=240,
                             capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        pytest.fail(f"fwd+bwd of tiny channels_last models hung with {threads} thread(s)")
    assert out.returncode == 0 and out.stdout.strip() == "ok", \
        f"rc={out.returncode}\n{out.stderr[-2000:]}"
