"""Encoders beyond our ResNets: a custom module end to end through the Python API, the timm /
torchvision builders (against stand-in packages with those libraries' API here, and against the
real ones where they import), and their one-line errors."""

import importlib
import sys
import types

import pytest
import torch
import yaml
from torch import nn

import simclr
from simclr.config import build_config
from simclr.errors import SimCLRError
from simclr.models.external import build_external, cifar_stem_, feature_dim
from simclr.train.rundir import read_encoder
from tests.helpers import cli, one_line_error


class TinyNet(nn.Module):
    """A custom encoder: 1 x 28 x 28 -> 12 features, with BatchNorm (so training mode matters)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 12, 3, 2, 1)
        self.bn = nn.BatchNorm2d(12)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x))).mean((2, 3))  # B x 12


def tiny(root, **extra):
    return build_config(overrides={
        "data.name": "mnist", "data.root": str(root), "data.download": False,
        "model.width": 0.0625, "model.proj_dim": 8, "train.batch_size": 32, "train.epochs": 1,
        "train.progress": False, "eval.every": 0, "eval.knn_k": 10, **extra})


def run(cfg, run_dir, **kw):
    return simclr.pretrain(cfg, run_dir, log=lambda *_: None, **kw)


# ---------------------------------------------------------------- any module


def test_custom_module_end_to_end_through_the_api(mnist_root, tmp_path):
    torch.manual_seed(0)
    net = TinyNet()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    run_dir = run(tiny(mnist_root, **{"eval.every": 1}), tmp_path / "run", encoder=net)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["arch"] == "custom"
    tensors, meta = read_encoder(run_dir / "encoder.safetensors")
    assert meta["arch"] == "custom" and meta["feature_dim"] == 12
    assert meta["module"] == f"{__name__}.TinyNet"
    assert tensors.keys() == net.state_dict().keys()  # the module's own names, no wrapper
    assert not torch.equal(net.conv.weight, start["conv.weight"])  # the module itself trained
    assert any(r.startswith('{"kind": "knn"') for r in (run_dir / "metrics.jsonl").open())

    with pytest.raises(SimCLRError, match=r"custom module \(.*TinyNet\).*encoder=module"):
        simclr.load_encoder(run_dir)
    enc = simclr.load_encoder(run_dir, encoder=TinyNet())
    assert enc.feature_dim == 12 and not enc.training
    x = torch.rand(4, 1, 28, 28)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(enc(x), net((x - enc.mean) / enc.std))

    report = simclr.evaluate(run_dir, ["knn"], write=False, log=lambda *_: None,
                             encoder=TinyNet())
    models = {r["model"]: r for r in report["results"]}
    assert set(models) == {"simclr", "random_init", "raw_pixels"}
    assert models["simclr"]["feature_dim"] == 12 and models["raw_pixels"]["feature_dim"] == 784

    more = run(tiny(mnist_root, **{"train.epochs": 2}), run_dir, force=True, encoder=TinyNet())
    assert read_encoder(more / "encoder.safetensors")[1]["step"] == 6  # resumed at step 3


def test_a_module_that_cannot_serve_is_refused_before_any_file(mnist_root, tmp_path):
    class NoPool(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            return self.conv(x)  # B x 4 x 26 x 26: not B x D

    with pytest.raises(SimCLRError, match=r"B x D, but on 2 x 1x28x28 images it returned "
                                          r"\(2, 4, 26, 26\)"):
        run(tiny(mnist_root), tmp_path / "a", encoder=NoPool())
    with pytest.raises(SimCLRError, match=r"cannot run on 1x28x28 images \(RuntimeError"):
        run(tiny(mnist_root), tmp_path / "b", encoder=nn.Sequential(nn.Conv2d(3, 4, 3)))
    with pytest.raises(SimCLRError, match="model.arch=custom trains a module given to"):
        run(tiny(mnist_root, **{"model.arch": "custom", "model.width": 1.0}), tmp_path / "c")
    assert not any((tmp_path / d).exists() for d in "abc")


def test_feature_dim_leaves_the_module_as_it_was():
    net = TinyNet().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert feature_dim(net, 1, 28) == 12 and feature_dim(net, 1, (20, 36)) == 12
    assert net.training and all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())


# ---------------------------------------------------------------- timm / torchvision


def _importable(name):
    try:
        importlib.import_module(name)
        return None
    except Exception as e:  # not installed, or built for another torch
        return f"{name} does not import here ({type(e).__name__}: {e})"


class FakeResNet(nn.Module):
    """A torchvision/timm-like ResNet: conv1 (7x7/2) bn1 relu maxpool layer1, pooled, fc."""

    def __init__(self, in_chans=3, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 8, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(nn.Conv2d(8, 16, 3, 1, 1), nn.ReLU())
        self.fc = nn.Linear(16, num_classes) if num_classes else nn.Identity()

    def forward(self, x):
        x = self.layer1(self.maxpool(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class FakeMixer(nn.Module):
    """No ResNet stem: a patch conv and a classifier head in a Sequential."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 6, 4, 4)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(6, 6), nn.ReLU(),
                                        nn.Linear(6, 1000))

    def forward(self, x):
        return self.classifier(self.patch(x).mean((2, 3), keepdim=True))


class FakeViT(nn.Module):
    """A timm-like ViT: patches of ``patch_size`` of images of exactly ``img_size`` (timm's
    default refuses other sizes), a token per patch, mean-pooled, a head."""

    def __init__(self, in_chans=3, num_classes=1000, img_size=224, patch_size=16):
        super().__init__()
        self.img_size = img_size
        self.patch_embed = nn.Conv2d(in_chans, 12, patch_size, patch_size)
        self.blocks = nn.Sequential(nn.Linear(12, 12), nn.GELU())
        self.head = nn.Linear(12, num_classes) if num_classes else nn.Identity()

    def forward(self, x):
        assert x.shape[-2:] == (self.img_size, self.img_size), \
            f"Input height ({x.shape[-2]}) doesn't match model ({self.img_size})."
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # B x patches x 12
        return self.head(self.blocks(tokens).mean(1))


@pytest.fixture
def fake_packages(monkeypatch):
    """Stand-ins for timm and torchvision offering the calls simclr makes of them:
    ``torchvision.models.list_models(module=...)`` / ``get_model(name, weights=None)`` and
    ``timm.list_models()`` / ``timm.create_model(name, pretrained, num_classes, in_chans)``."""
    calls = []
    vision, models = types.ModuleType("torchvision"), types.ModuleType("torchvision.models")
    builders = {"resnet_t": FakeResNet, "mixer_t": FakeMixer}
    models.list_models = lambda module=None: sorted(builders)
    models.get_model = lambda name, weights=None: calls.append(("tv", name, weights)) or \
        builders[name]()
    vision.models = models
    timm = types.ModuleType("timm")
    timm.list_models = lambda: ["resnet_t", "vit_t"]

    def create_model(name, pretrained=False, num_classes=1000, in_chans=3, **kwargs):
        calls.append(("timm", name, pretrained, num_classes, in_chans, *kwargs.items()))
        if name == "vit_t":
            return FakeViT(in_chans, num_classes, **kwargs)
        return FakeResNet(in_chans, num_classes, **kwargs)

    timm.create_model = create_model
    for name, mod in (("torchvision", vision), ("torchvision.models", models), ("timm", timm)):
        monkeypatch.setitem(sys.modules, name, mod)
    return calls


def test_torchvision_models_lose_the_classifier_and_take_the_cifar_stem(fake_packages):
    net = build_external("torchvision:resnet_t", 1, "cifar")
    assert fake_packages == [("tv", "resnet_t", None)]  # never pretrained weights
    assert isinstance(net.fc, nn.Identity) and isinstance(net.maxpool, nn.Identity)
    assert (net.conv1.in_channels, net.conv1.kernel_size, net.conv1.stride) == (1, (3, 3), (1, 1))
    assert net(torch.rand(2, 1, 8, 8)).shape == (2, 16)
    native = build_external("torchvision:resnet_t", 3, "imagenet")
    assert native.conv1.kernel_size == (7, 7) and isinstance(native.maxpool, nn.MaxPool2d)
    mixer = build_external("torchvision:mixer_t", 3, "cifar")  # auto: no stem to swap, kept
    assert isinstance(mixer.classifier[3], nn.Identity) and isinstance(mixer.classifier[1],
                                                                       nn.Linear)
    assert feature_dim(mixer, 3, 16) == 6
    with pytest.raises(SimCLRError, match="has no ResNet stem"):
        build_external("torchvision:mixer_t", 3, "cifar", explicit_stem=True)


def test_timm_models_are_built_without_classifier_for_the_data_channels(fake_packages):
    net = build_external("timm:resnet_t", 1, "cifar")
    assert fake_packages == [("timm", "resnet_t", False, 0, 1)]
    assert net.conv1.kernel_size == (3, 3) and feature_dim(net, 1, 28) == 16


def test_cifar_stem_needs_conv1_and_maxpool():
    assert not cifar_stem_(FakeMixer())
    net = FakeResNet()
    assert cifar_stem_(net) and net.conv1.out_channels == 8 and net.conv1.bias is None


def test_external_arch_end_to_end(fake_packages, mnist_root, tmp_path):
    cfg = tiny(mnist_root, **{"model.arch": "torchvision:resnet_t", "model.width": 1.0})
    run_dir = run(cfg, tmp_path / "run")
    meta = read_encoder(run_dir / "encoder.safetensors")[1]
    assert meta["arch"] == "torchvision:resnet_t" and meta["stem"] == "cifar"
    enc = simclr.load_encoder(run_dir)  # rebuilt from the record, no module needed
    assert enc.feature_dim == 16 and isinstance(enc.encoder.fc, nn.Identity)
    report = simclr.evaluate(run_dir, ["knn"], write=False, log=lambda *_: None)
    assert {r["model"] for r in report["results"]} == {"simclr", "random_init", "raw_pixels"}


def test_external_arch_errors(fake_packages, monkeypatch):
    with pytest.raises(SimCLRError, match="unknown torchvision model 'resnet_x'.*did you mean "
                                          "'torchvision:resnet_t'"):
        build_config(overrides={"model.arch": "torchvision:resnet_x"})
    with pytest.raises(SimCLRError, match="model.width=0.5 applies to our resnet18/34/50 only"):
        build_config(overrides={"model.arch": "timm:resnet_t", "model.width": 0.5})
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(SimCLRError, match=r"model.arch=timm:resnet_t needs the timm package, "
                                          r"which does not import here \(ModuleNotFoundError"):
        build_config(overrides={"model.arch": "timm:resnet_t"})


def test_missing_package_is_one_line_from_the_cli(tmp_path):
    from tests.helpers import cli
    reason = _importable("timm")
    if reason is None:
        pytest.skip("timm imports here")
    proc = cli("pretrain", "--run-dir", tmp_path / "run", "--model.arch=timm:resnet18")
    assert proc.returncode == 2 and not (tmp_path / "run").exists()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs the timm package" in lines[0] and "pip install timm" in \
        lines[0]


@pytest.mark.parametrize("arch,package", [("torchvision:resnet18", "torchvision"),
                                          ("timm:resnet18", "timm")])
def test_real_package_builds_and_pretrains(arch, package, mnist_root, tmp_path):
    reason = _importable(package)
    if reason:
        pytest.skip(reason)
    net = build_external(arch, 1, "cifar")
    assert feature_dim(net, 1, 28) == 512
    assert isinstance(net.maxpool, nn.Identity) and net.conv1.stride == (1, 1)
    run_dir = run(tiny(mnist_root, **{"model.arch": arch, "model.width": 1.0,
                                      "train.max_steps": 1}), tmp_path / "run")
    enc = simclr.load_encoder(run_dir)
    assert enc(torch.rand(2, 1, 28, 28)).shape == (2, 512)


def test_a_vit_trains_on_28_px_images_through_model_kwargs(fake_packages, mnist_root, tmp_path):
    """timm:vit_t is built for 224 px and refused at 28 px (one line, nothing written); with
    model.kwargs={img_size: 28, patch_size: 4} it trains, and the run's encoder is rebuilt
    with those arguments from its file."""
    base = [f"--data.root={mnist_root}", "--data.name=mnist", "--data.download=false",
            "--train.batch_size=32", "--train.epochs=1", "--train.progress=false",
            "--model.proj_dim=8", "--eval.every=0", "--model.arch=timm:vit_t"]
    refused = cli("pretrain", "--run-dir", tmp_path / "plain", *base)
    one_line_error(refused, "cannot run on 1x28x28 images")
    assert not (tmp_path / "plain").exists()
    proc = cli("pretrain", "--run-dir", tmp_path / "vit", *base,
               "--model.kwargs={img_size: 28, patch_size: 4}")
    assert proc.returncode == 0, proc.stderr
    assert ("timm", "vit_t", False, 0, 1, ("img_size", 28), ("patch_size", 4)) in fake_packages
    meta = read_encoder(tmp_path / "vit" / "encoder.safetensors")[1]
    assert meta["arch"] == "timm:vit_t" and meta["kwargs"] == {"img_size": 28, "patch_size": 4}
    enc = simclr.load_encoder(tmp_path / "vit")  # rebuilt from the record, kwargs included
    assert enc.encoder.img_size == 28 and enc(torch.rand(2, 1, 28, 28)).shape == (2, 12)
    saved = yaml.safe_load((tmp_path / "vit" / "config.yaml").read_text())
    assert saved["model"]["kwargs"] == {"img_size": 28, "patch_size": 4}
    bad = cli("pretrain", "--run-dir", tmp_path / "bad", *base, "--model.kwargs={depth: 3}")
    one_line_error(bad, "timm cannot build vit_t with model.kwargs={'depth': 3}")
    one_line_error(cli("pretrain", "--model.kwargs={img_size: 28}"),
                   "model.kwargs={'img_size': 28} applies to timm: and torchvision: models only")


def test_the_error_names_the_package_that_fails_to_import(monkeypatch):
    """timm imports torchvision: a torchvision built for another torch breaks ``import timm``
    inside torchvision (in its call into torch, as the real one does: ``RuntimeError: operator
    torchvision::nms does not exist`` from torch/library.py), and the fix is torchvision's."""
    real = importlib.import_module
    site = "/env/lib/python3.11/site-packages"
    namespace: dict = {}
    exec(compile("def register(name):\n    raise RuntimeError(f'operator {name} does not exist')",
                 f"{site}/torch/library.py", "exec"), namespace)
    exec(compile("def meta():\n    register('torchvision::nms')", f"{site}/torchvision/_meta.py",
                 "exec"), namespace)

    def broken(name, *args):
        if name == "timm":
            namespace["meta"]()
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(SimCLRError) as e:
        build_config(overrides={"model.arch": "timm:resnet18"})
    assert "needs the timm package, which does not import here, because torchvision does not" \
        in str(e.value) and "pip install torchvision built for this torch" in str(e.value)
    missing = ImportError("No module named 'torchvision'", name="torchvision")
    monkeypatch.setattr(importlib, "import_module",
                        lambda name, *a: (_ for _ in ()).throw(missing) if name == "timm"
                        else real(name, *a))
    with pytest.raises(SimCLRError, match="because torchvision does not .*pip install "
                                          "torchvision"):
        build_config(overrides={"model.arch": "timm:resnet18"})

