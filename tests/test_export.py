"""``simclr export --format pt2``: the torch.export program gives `load_encoder`'s features at
any batch size, by the printed loading code. ``--format torchvision``: keys and shapes both
ways against torchvision's ResNet naming rules (written out here from torchvision's
resnet.py), outputs against a functional forward by those rules, the printed loading code,
and (where torchvision imports) the real model loading the file."""

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

import simclr
from simclr.errors import SimCLRError
from simclr.models.resnet import ResNet
from simclr.tools.export import export_program, export_torchvision, from_torchvision, to_torchvision
from tests.helpers import cli, one_line_error

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
LAYOUT = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet34": ("basic", (3, 4, 6, 3)),
          "resnet50": ("bottleneck", (3, 4, 6, 3))}


def torchvision_keys(arch, in_channels, stem, stage1_projection=False):
    """Key -> shape of torchvision.models.<arch>'s state_dict without fc, by its rules:
    conv1/bn1 stem; layer1-4 of BasicBlock (conv1 3x3, conv2 3x3; expansion 1) or Bottleneck
    (1x1, 3x3, 1x1; expansion 4); ``downsample`` (1x1 conv + BN) on a stage's first block when
    the stride is 2 or the channels change."""
    kind, depths = LAYOUT[arch]
    expansion = 1 if kind == "basic" else 4
    k = 3 if stem == "cifar" else 7
    keys = {"conv1.weight": (64, in_channels, k, k)}
    keys.update({f"bn1.{b}": (64,) if b != "num_batches_tracked" else () for b in BN})
    inplanes = 64
    for i, (planes, depth) in enumerate(zip((64, 128, 256, 512), depths, strict=True), 1):
        for j in range(depth):
            p = f"layer{i}.{j}."
            if kind == "basic":
                convs = [(planes, inplanes, 3), (planes, planes, 3)]
            else:
                convs = [(planes, inplanes, 1), (planes, planes, 3), (planes * 4, planes, 1)]
            for n, (o, c, kk) in enumerate(convs, 1):
                keys[f"{p}conv{n}.weight"] = (o, c, kk, kk)
                keys.update({f"{p}bn{n}.{b}": (o,) if b != "num_batches_tracked" else ()
                             for b in BN})
            stride = 2 if (i > 1 and j == 0) else 1
            if j == 0 and (stride != 1 or inplanes != planes * expansion
                           or (i == 1 and stage1_projection)):
                keys[f"{p}downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                keys.update({f"{p}downsample.1.{b}": (planes * expansion,)
                             if b != "num_batches_tracked" else () for b in BN})
            inplanes = planes * expansion
    return keys


def torchvision_forward(s, x, arch, stem):
    """torchvision ResNet.forward (eval mode) on a state_dict with its key names, fc removed."""
    kind, depths = LAYOUT[arch]

    def bn(t, name):
        return F.batch_norm(t, s[f"{name}.running_mean"], s[f"{name}.running_var"],
                            s[f"{name}.weight"], s[f"{name}.bias"], False, 0.0, 1e-5)

    if stem == "cifar":
        x = torch.relu(bn(F.conv2d(x, s["conv1.weight"], stride=1, padding=1), "bn1"))
    else:
        x = torch.relu(bn(F.conv2d(x, s["conv1.weight"], stride=2, padding=3), "bn1"))
        x = F.max_pool2d(x, 3, 2, 1)
    for i, depth in enumerate(depths, 1):
        for j in range(depth):
            p, stride = f"layer{i}.{j}.", 2 if (i > 1 and j == 0) else 1
            if kind == "basic":  # the stride sits in conv1
                out = torch.relu(bn(F.conv2d(x, s[p + "conv1.weight"], stride=stride, padding=1),
                                    p + "bn1"))
                out = bn(F.conv2d(out, s[p + "conv2.weight"], padding=1), p + "bn2")
            else:  # ResNet V1.5: the stride sits in conv2, the 3x3
                out = torch.relu(bn(F.conv2d(x, s[p + "conv1.weight"]), p + "bn1"))
                out = torch.relu(bn(F.conv2d(out, s[p + "conv2.weight"], stride=stride,
                                             padding=1), p + "bn2"))
                out = bn(F.conv2d(out, s[p + "conv3.weight"]), p + "bn3")
            identity = x
            if p + "downsample.0.weight" in s:
                identity = bn(F.conv2d(x, s[p + "downsample.0.weight"], stride=stride),
                              p + "downsample.1")
            x = torch.relu(out + identity)
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def trained_looking(enc):
    """Random BatchNorm statistics and affine parameters, so a wrong mapping shows."""
    g = torch.Generator().manual_seed(0)
    for m in enc.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            for t in (m.weight, m.bias, m.running_mean):
                t.data = torch.randn(t.shape, generator=g) * 0.2 + (1.0 if t is m.weight else 0)
            m.running_var.data = torch.rand(m.running_var.shape, generator=g) + 0.5
    return enc.eval()


CASES = [("resnet18", 3, "cifar", "identity"), ("resnet18", 1, "imagenet", "identity"),
         ("resnet18", 3, "cifar", "projection"), ("resnet34", 3, "cifar", "identity"),
         ("resnet50", 3, "cifar", "identity"), ("resnet50", 1, "imagenet", "projection")]


@pytest.mark.parametrize("arch,channels,stem,shortcut", CASES)
def test_keys_and_shapes_map_both_ways(arch, channels, stem, shortcut):
    enc = ResNet(arch, 1.0, stem, channels, shortcut)
    ours = enc.state_dict()
    theirs = to_torchvision(ours)
    want = torchvision_keys(arch, channels, stem, stage1_projection=shortcut == "projection")
    assert {k: tuple(v.shape) for k, v in theirs.items()} == want
    back = from_torchvision({**theirs, "fc.weight": torch.zeros(1000, 512),
                             "fc.bias": torch.zeros(1000)})
    assert list(back) == list(ours) and all(back[k] is ours[k] for k in ours)


@pytest.mark.parametrize("arch,channels,stem,shortcut", CASES[:3] + CASES[4:5])
def test_the_exported_weights_compute_our_features_by_torchvisions_forward(arch, channels, stem,
                                                                          shortcut):
    torch.manual_seed(0)
    enc = trained_looking(ResNet(arch, 1.0, stem, channels, shortcut))
    x = torch.randn(2, channels, 32, 32, dtype=torch.float64)
    enc = enc.double()
    with torch.no_grad():
        want = enc(x)
        got = torchvision_forward(to_torchvision(enc.state_dict()), x, arch, stem)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_cli_export_writes_the_file_and_the_loading_code(run_dir, tmp_path):
    # the conftest run is a width-1/16 ResNet-18: refused, then a full-width one is exported
    proc = cli("export", run_dir, "--format", "torchvision")
    assert proc.returncode == 2 and "no width multiplier" in proc.stderr
    assert not (run_dir / "encoder_torchvision.pt").exists()
    enc = simclr.load_encoder(run_dir)
    full = trained_looking(ResNet("resnet18", 1.0, "cifar", 1, "projection"))
    meta = {**enc.meta, "width": 1.0, "shortcut": "projection"}
    from simclr.train.rundir import export_encoder
    export_encoder(tmp_path / "encoder.safetensors", full, meta)
    proc = cli("export", tmp_path, "--format", "torchvision")
    assert proc.returncode == 0, proc.stderr
    path = tmp_path / "encoder_torchvision.pt"
    assert proc.stdout.startswith(f"wrote {path}")
    for line in ("model = torchvision.models.resnet18()",
                 "model.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)",
                 "model.maxpool = nn.Identity()", "model.layer1[0].downsample = nn.Sequential(",
                 "model.fc = nn.Identity()", f"torch.load({str(path)!r}, weights_only=True)",
                 f"mean {enc.meta['mean']}"):
        assert line in proc.stdout
    state = torch.load(path, weights_only=True)
    assert state.keys() == to_torchvision(full.state_dict()).keys()
    assert all(torch.equal(state[k], v) for k, v in to_torchvision(full.state_dict()).items())


def test_export_refuses_what_torchvision_cannot_hold(tmp_path):
    from simclr.train.rundir import export_encoder
    base = {"in_channels": 3, "image_size": 32, "mean": [0.5] * 3, "std": [0.2] * 3,
            "stem": "cifar", "width": 1.0}
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1))
    for arch, match in (("custom", "holds a custom module"), ("timm:resnet18", "holds timm"),
                        ("torchvision:resnet18", "already a torchvision model")):
        export_encoder(tmp_path / "encoder.safetensors", net, {**base, "arch": arch})
        with pytest.raises(SimCLRError, match=match):
            export_torchvision(tmp_path)
    assert not (tmp_path / "encoder_torchvision.pt").exists()


def test_the_pt2_program_computes_the_encoders_features_at_any_batch_size(run_dir, tmp_path):
    out = tmp_path / "enc.pt2"
    proc = cli("export", run_dir, "--format", "pt2", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"wrote {out}") and out.is_file()
    enc = simclr.load_encoder(run_dir)
    size = enc.meta["image_size"]
    for n in (1, 5):  # exported at a batch of 2: the batch dimension is free
        images = torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(n))
        scope = {"images": images}
        exec(proc.stdout.split("\n", 1)[1], scope)  # the printed lines, run as a user would
        with torch.no_grad():
            want = enc(images)
        assert scope["features"].shape == (n, enc.feature_dim)
        torch.testing.assert_close(scope["features"], want, rtol=1e-5, atol=1e-5)
        assert not torch.equal(want, enc.encoder(images))  # normalization is inside the program


def test_pt2_refuses_a_custom_module_and_writes_nothing(tmp_path):
    from simclr.train.rundir import export_encoder
    meta = {"arch": "custom", "in_channels": 3, "image_size": 8, "mean": [0.5] * 3,
            "std": [0.2] * 3}
    export_encoder(tmp_path / "encoder.safetensors", torch.nn.Conv2d(3, 2, 1), meta)
    with pytest.raises(SimCLRError, match="custom module, which cannot be rebuilt"):
        export_program(tmp_path)
    line = one_line_error(cli("export", tmp_path, "--format", "pt2"), "custom module")
    assert "torch.export.export(" in line
    assert not (tmp_path / "encoder.pt2").exists()


def test_torchvision_loads_the_export_and_gives_our_features(tmp_path):
    try:
        importlib.import_module("torchvision")
    except Exception as e:  # not installed, or built for another torch
        pytest.skip(f"torchvision does not import here ({type(e).__name__}: {e})")
    from simclr.train.rundir import export_encoder
    for arch, channels, stem, shortcut in CASES:
        torch.manual_seed(0)
        enc = trained_looking(ResNet(arch, 1.0, stem, channels, shortcut))
        meta = {"arch": arch, "width": 1.0, "stem": stem, "in_channels": channels,
                "shortcut": shortcut, "image_size": 32, "mean": [0.0] * channels,
                "std": [1.0] * channels}
        export_encoder(tmp_path / "encoder.safetensors", enc, meta)
        _, code = export_torchvision(tmp_path)
        scope = {}
        exec(code, scope)  # the printed lines, run as a user would
        model = scope["model"].eval()
        x = torch.randn(2, channels, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(model(x), enc(x), rtol=1e-4, atol=1e-5 * math.sqrt(512))
