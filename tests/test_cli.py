"""`simclr` through its command line: real runs, one-line errors, nothing half-written.

Commands run in-process (:func:`tests.helpers.cli`, what the console shows); a subprocess only
where a fresh interpreter is what is checked (the exit code of ``python -m simclr``, what
importing the package or asking for help imports)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import simclr
from simclr.config import build_config
from simclr.data.datasets import channel_stats, load_split
from simclr.tools.pictures import augment_preview
from tests.formats import write_cifar10_python, write_idx
from tests.helpers import cli, one_line_error

REPO = Path(__file__).parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")
TINY = ["--model.width=0.0625", "--model.proj_dim=16", "--train.progress=false"]


def test_pretrain_on_official_cifar10_archive(tmp_path):
    write_cifar10_python(tmp_path / "data", n_per_batch=16)  # cifar-10-python.tar.gz, 80 images
    out = tmp_path / "run"
    proc = cli("pretrain", "--run-dir", out, "--data.name=cifar10",
               f"--data.root={tmp_path / 'data'}", "--train.batch_size=32",
               "--train.epochs=1", *TINY)
    assert proc.returncode == 0, proc.stderr
    assert "cifar10 80 images 3x32x32" in proc.stdout
    for name in ("config.yaml", "metrics.jsonl", "checkpoint.pt", "encoder.safetensors",
                 "loss_history.npy"):
        assert (out / name).exists(), name
    # 80 images at batch 32: 2 steps; the encoder takes 3 x 32 x 32; NT-Xent starts near
    # ln(2N - 1) = ln 63 (random features)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 2
    meta = simclr.load_encoder(out).meta
    assert (meta["in_channels"], meta["image_size"], meta["step"]) == (3, 32, 2)
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["kind"] == "window" and abs(first["loss"] - math.log(63)) < 0.5


@pytest.mark.skipif(not FASHION.exists(), reason="needs the real Fashion-MNIST: "
                    "apt-get install -y dataset-fashion-mnist")
def test_pretrain_preset_on_real_fashion_mnist(tmp_path):
    out = tmp_path / "run"
    proc = cli("pretrain", "--config", REPO / "configs/fashion_mnist_cpu.yaml", "--run-dir",
               out, "--data.subset=1024", "--train.epochs=1", "--train.progress=false")
    assert proc.returncode == 0, proc.stderr
    assert "fashion_mnist 1024 images 1x28x28" in proc.stdout
    assert (out / "encoder.safetensors").exists() and (out / "checkpoint.pt").exists()


# Every value a config check refuses, and the data problems found once the data is read: each is
# one line from the command, exit code 2, and no run dir.
BAD_OVERRIDES = [
    (["--train.epoch=3"], "did you mean 'epochs'"),
    (["--trian.epochs=3"], "section one of"),
    (["--train.epochs=ten"], "train.epochs: expected int"),
    (["--train.batch_size=1.5"], "train.batch_size: expected int"),
    (["--train.batch_size=two"], "train.batch_size: expected int"),
    (["--train.compile=maybe"], "train.compile: expected bool"),
    (["--augment.crop_scale=0.2"], "expected 2 values"),
    (["--optim.lr=0"], "optim.lr must be > 0"),
    (["--optim.lr=-1"], "optim.lr must be > 0"),
    (["--loss.temperature=0"], "loss.temperature must be > 0"),
    (["--train.batch_size=1"], "train.batch_size must be >= 2"),
    (["--optim.name=lasr"], "did you mean 'lars'"),
    (["--model.arch=resnet19"], "did you mean 'resnet18'"),
    (["--model.arch=resnet15"], "unknown model.arch 'resnet15'"),
    (["--data.name=cifar"], "unknown data.name"),
    (["--loss.scale=0"], "loss.scale must be > 0"),
    (["--model.shortcut=proj"], "unknown model.shortcut 'proj': choose one of identity, "),
    (["--model.init=tf"], "unknown model.init 'tf'"),
    (["--augment.crop_interpolation=cubic"], "unknown augment.crop_interpolation 'cubic'"),
    (["--train.step_rule=ref"], "unknown train.step_rule 'ref'"),
    (["--probe.sgd_epochs=0"], "probe.sgd_epochs must be >= 1"),
    (["--data.name=mnist", "--data.download=false"], "put"),  # missing data offline
    (["--data.name=mnist", "--train.batch_size=100000"], "larger than the dataset"),
    (["--data.name=mnist", "--data.stream=on"], "data.stream=on streams image folders only"),
]


@pytest.mark.parametrize("args,fragment", BAD_OVERRIDES)
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, args, fragment):
    root = tmp_path / "data"
    root.mkdir()
    if "--data.download=false" not in args:
        write_idx(root, 64)
    out = tmp_path / "run"
    proc = cli("pretrain", "--run-dir", out, f"--data.root={root}", *TINY, *args)
    one_line_error(proc, fragment)
    assert not out.exists()


def test_missing_config_file(tmp_path):
    one_line_error(cli("pretrain", "--config", tmp_path / "nope.yaml"), "cannot read config")


def test_augment_preview_writes_png(tmp_path):
    write_idx(tmp_path / "data", 16)
    out = tmp_path / "grid.png"
    proc = cli("augment-preview", "--data.name=mnist", f"--data.root={tmp_path / 'data'}",
               "--out", out, "--images=3", "--views=4")
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as im:
        w, h = im.size
        assert w > h > 0  # 3 rows of 1 original + 4 views
        assert len(set(im.convert("L").tobytes())) > 10
        got = np.asarray(im)
    # the picture of the API on the first 3 training images, with the data's own statistics
    images, _ = load_split("mnist", "train", tmp_path / "data", download=False)
    mean, std = channel_stats(images)
    want = augment_preview(images[:3], build_config().augment, mean, std, tmp_path / "api.png",
                           n_views=4, seed=0)
    with Image.open(want) as im:
        assert np.array_equal(got, np.asarray(im))


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback_before_or_after_the_subcommand(tmp_path, where):
    args = ["--debug", "eval", tmp_path] if where == "before" else ["eval", tmp_path, "--debug"]
    proc = cli(*args)
    assert proc.returncode == 2
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("simclr: error: ")
    one_line_error(cli("eval", tmp_path), "config.yaml not found")  # and without --debug


FRESH_INTERPRETER = """
import sys
import simclr.runtime.allocator, simclr.cli as cli
CASES = [["--help"], ["eval", "--help"], ["eval", "--protocl=knn"], ["pretrain", "--train.epoch=3"],
         ["pretrain", "--optim.lr=-1"]]
for args in CASES:
    calls = []
    simclr.runtime.allocator.maybe_reexec = lambda argv: calls.append(argv)
    cli.exit_now = lambda code: print("exit", code, calls, "torch" in sys.modules)
    sys.argv = ["simclr", *args]
    try:
        cli.main()
    except SystemExit as e:
        print("exit", e.code, calls, "torch" in sys.modules)
import simclr
light = "torch" not in sys.modules
from simclr import nt_xent, pretrain, SimCLRError
print("api", light, callable(simclr.evaluate), "torch" in sys.modules,
      sorted(simclr.__all__) == sorted(set(dir(simclr)) & set(simclr.__all__)))
"""


def test_help_errors_and_import_need_no_torch_until_the_api_is_used():
    """What makes --help fast (timed in benchmarks/RESULTS.md), in one fresh interpreter: help
    and argument errors import no torch and leave the allocator re-exec to commands that compute
    (a config typo or a value that cannot work is found by the computing command); ``import
    simclr`` is light, and the API is there on first use."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", FRESH_INTERPRETER], env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [x for x in proc.stdout.splitlines() if x.startswith(("exit", "api"))]
    assert lines == [
        "exit 0 [] False", "exit 0 [] False", "exit 2 [] False",
        "exit 2 [['pretrain', '--train.epoch=3']] False",
        "exit 2 [['pretrain', '--optim.lr=-1']] False",
        "api True True True True"], proc.stdout + proc.stderr


def test_subcommand_help_lists_the_config_keys():
    for command in ("pretrain", "eval", "sweep", "bench", "embed", "neighbors",
                    "augment-preview", "report"):
        out = cli(command, "--help").stdout
        assert "--section.key=value" in out, command
        assert "  train: batch_size=512 epochs=100" in out, command
        assert "data: name=cifar10 root=none subset=0 image_size=0" in out, command
    assert "takes no config overrides" in cli("plot", "--help").stdout
    assert "PNG to write (default augment_preview.png)" in cli("augment-preview",
                                                                "--help").stdout
    assert "recorded in FILE" in cli("eval", "--help").stdout


@pytest.mark.parametrize("command,message", [
    ("pretrain", "simclr: interrupted; run the same command again to resume"),
    ("sweep", "simclr: interrupted; run the same command again to resume"),
    ("eval", "simclr: interrupted"),
    ("embed", "simclr: interrupted"),
])
def test_interrupt_hint_only_where_a_rerun_resumes(command, message, monkeypatch, capsys):
    from simclr import cli

    def interrupted(args, overrides):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, command, interrupted)
    argv = {"pretrain": [], "sweep": ["--out", "x"], "eval": ["x"], "embed": ["x"]}[command]
    assert cli.main([command, *argv]) == 130
    assert capsys.readouterr().err == message + "\n"


def test_keys_help_lists_every_key_with_its_default():
    from simclr.cli import keys_help
    from simclr.config import Config

    text = keys_help()
    cfg = Config()
    for section in cfg.to_dict():
        line = next(x for x in text.splitlines() if x.strip().startswith(f"{section}:"))
        assert line.startswith(f"  {section}: ")
    for section, keys in cfg.to_dict().items():
        for key in keys:
            assert f" {key}=" in text.replace("\n", " "), f"{section}.{key}"
    assert " epochs=100 " in text and " crop_scale=0.08,1 " in text
    assert "lars 1/0.0001, sgd 0.06/0.0005, adam 0.001/1e-06, adamw 0.001/0.01" in \
        " ".join(text.split())
