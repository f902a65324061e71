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
    (["--loss.scale=0"], "loss.scale must be > 0"),
    (["--model.shortcut=proj"], "unknown model.shortcut 'proj': choose one of identity, "),
    (["--model.init=tf"], "unknown model.init 'tf'"),
    (["--augment.crop_interpolation=cubic"], "unknown augment.crop_interpolation 'cubic'"),
    (["--train.step_rule=ref"], "unknown train.step_rule 'ref'"),
    (["--probe.sgd_epochs=0"], "probe.sgd_epochs must be >= 1"),
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


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback_before_or_after_the_subcommand(tmp_path, where):
    args = ["--debug", "eval", tmp_path] if where == "before" else ["eval", tmp_path, "--debug"]
    proc = simclr(*args)
    assert proc.returncode == 2
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("simclr: error: ")
    one_line_error(simclr("eval", tmp_path), "config.yaml not found")  # and without --debug


FAST_PATH = """
import sys
import simclr.allocator, simclr.cli as cli
calls = []
simclr.allocator.maybe_reexec = lambda argv: calls.append(argv)
cli.exit_now = lambda code: print("exit", code, calls, "torch" in sys.modules)
sys.argv = ["simclr", *sys.argv[1:]]
try:
    cli.main()
except SystemExit as e:
    print("exit", e.code, calls, "torch" in sys.modules)
"""


@pytest.mark.parametrize("args,code,reexec", [
    (["--help"], 0, False),
    (["eval", "--help"], 0, False),
    (["eval", "--protocl=knn"], 2, False),  # a usage error
    (["pretrain", "--train.epoch=3"], 2, True),  # a config typo: the computing command
    (["pretrain", "--optim.lr=-1"], 2, True),  # a value that cannot work
])
def test_help_and_argument_errors_import_no_torch_and_do_not_reexec(args, code, reexec):
    """What makes --help fast (timed in benchmarks/RESULTS.md): nothing imports torch, and
    the allocator re-exec is left to commands that compute."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", FAST_PATH, *args], env=env,
                          capture_output=True, text=True, timeout=300)
    last = proc.stdout.strip().splitlines()[-1]
    assert last == f"exit {code} {[args] if reexec else []} False", proc.stdout + proc.stderr


def test_import_simclr_is_light_and_the_api_is_there():
    script = ("import sys, simclr; light = 'torch' not in sys.modules; "
              "from simclr import nt_xent, pretrain, SimCLRError; "
              "print(light, callable(simclr.evaluate), 'torch' in sys.modules, "
              "sorted(simclr.__all__) == sorted(set(dir(simclr)) & set(simclr.__all__)))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.stdout.split() == ["True", "True", "True", "True"], proc.stderr


def test_subcommand_help_lists_the_config_keys():
    for command in ("pretrain", "eval", "sweep", "bench", "embed", "neighbors",
                    "augment-preview", "report"):
        out = simclr(command, "--help").stdout
        assert "--section.key=value" in out, command
        assert "  train: batch_size=512 epochs=100" in out, command
        assert "data: name=cifar10 root=none subset=0 image_size=0" in out, command
    assert "takes no config overrides" in simclr("plot", "--help").stdout
    assert "PNG to write (default augment_preview.png)" in simclr("augment-preview",
                                                                   "--help").stdout
    assert "recorded in FILE" in simclr("eval", "--help").stdout


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
