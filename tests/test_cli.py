"""`simclr` through its command line: real runs, one-line errors, nothing half-written."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.formats import write_cifar10_python, write_idx

REPO = Path(__file__).parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")
TINY = ["--model.width=0.0625", "--model.proj_dim=16", "--train.progress=false"]


def simclr(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "simclr", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def one_line_error(proc, fragment):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("simclr: error: "), proc.stderr
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def test_pretrain_on_official_cifar10_archive(tmp_path):
    write_cifar10_python(tmp_path / "data", n_per_batch=16)  # cifar-10-python.tar.gz, 80 images
    out = tmp_path / "run"
    proc = simclr("pretrain", "--run-dir", out, "--data.name=cifar10",
                  f"--data.root={tmp_path / 'data'}", "--train.batch_size=32",
                  "--train.epochs=1", *TINY)
    assert proc.returncode == 0, proc.stderr
    assert "cifar10 80 images 3x32x32" in proc.stdout
    for name in ("config.yaml", "metrics.jsonl", "checkpoint.pt", "encoder.safetensors",
                 "loss_history.npy"):
        assert (out / name).exists(), name


@pytest.mark.skipif(not FASHION.exists(), reason="needs the real Fashion-MNIST: "
                    "apt-get install -y dataset-fashion-mnist")
def test_pretrain_preset_on_real_fashion_mnist(tmp_path):
    out = tmp_path / "run"
    proc = simclr("pretrain", "--config", REPO / "configs/fashion_mnist_cpu.yaml", "--run-dir",
                  out, "--data.subset=1024", "--train.epochs=1", "--train.progress=false")
    assert proc.returncode == 0, proc.stderr
    assert "fashion_mnist 1024 images 1x28x28" in proc.stdout
    assert (out / "encoder.safetensors").exists() and (out / "checkpoint.pt").exists()


@pytest.mark.parametrize("args,fragment", [
    (["--train.epoch=3"], "did you mean 'epochs'"),
    (["--optim.lr=-1"], "optim.lr must be > 0"),
    (["--loss.temperature=0"], "loss.temperature must be > 0"),
    (["--model.arch=resnet15"], "unknown model.arch 'resnet15'"),
    (["--train.batch_size=two"], "train.batch_size: expected int"),
    (["--data.name=mnist", "--data.download=false"], "put"),  # missing data offline
    (["--data.name=mnist", "--train.batch_size=100000"], "larger than the dataset"),
    (["--data.name=mnist", "--data.stream=on"], "data.stream=on streams image folders only"),
])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, args, fragment):
    root = tmp_path / "data"
    root.mkdir()
    if "--data.download=false" not in args:
        write_idx(root, 64)
    out = tmp_path / "run"
    proc = simclr("pretrain", "--run-dir", out, f"--data.root={root}", *TINY, *args)
    one_line_error(proc, fragment)
    assert not out.exists()


def test_missing_config_file(tmp_path):
    one_line_error(simclr("pretrain", "--config", tmp_path / "nope.yaml"), "cannot read config")


def test_augment_preview_writes_png(tmp_path):
    write_idx(tmp_path / "data", 16)
    out = tmp_path / "grid.png"
    proc = simclr("augment-preview", "--data.name=mnist", f"--data.root={tmp_path / 'data'}",
                  "--out", out, "--images=3", "--views=4")
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as im:
        w, h = im.size
        assert w > h > 0  # 3 rows of 1 original + 4 views
        assert len(set(im.convert("L").tobytes())) > 10
