"""Config: defaults, YAML presets, overrides, unknown keys and wrong types refused."""

from pathlib import Path

import pytest
import yaml

from simclr.config import OPTIM_DEFAULTS, Config, build_config, diff, parse_value, save_yaml
from simclr.errors import SimCLRError
from simclr.train.optim import OPTIMIZERS

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_overrides_are_typed():
    cfg = build_config(overrides=["train.epochs=3", "optim.lr=1e-3", "train.compile=true",
                                  "augment.crop_scale=0.2,1", "data.root=null",
                                  "model.width=1"])
    assert cfg.train.epochs == 3 and cfg.optim.lr == 1e-3 and cfg.train.compile is True
    assert cfg.augment.crop_scale == (0.2, 1.0) and cfg.data.root is None
    assert isinstance(cfg.model.width, float)


def test_unknown_key_lists_valid_keys_and_suggests():
    with pytest.raises(SimCLRError) as e:
        build_config(overrides=["train.epoch=3"])
    msg = str(e.value)
    assert "did you mean 'epochs'" in msg and "batch_size" in msg and "\n" not in msg
    # each value the checks refuse, with its message: tests/test_cli.py's BAD_OVERRIDES


def test_yaml_round_trip(tmp_path):
    cfg = build_config(overrides=["train.epochs=7", "augment.mean=0.5", "augment.std=0.25"])
    save_yaml(cfg, tmp_path / "c.yaml")
    again = build_config(tmp_path / "c.yaml")
    assert again == cfg and diff(again.to_dict(), cfg.to_dict()) == []


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: 3\n")
    with pytest.raises(SimCLRError, match="not valid YAML"):
        build_config(bad)
    bad.write_text("train:\n  nope: 3\n")
    with pytest.raises(SimCLRError, match="unknown config key 'train.nope'"):
        build_config(bad)
    with pytest.raises(SimCLRError, match="cannot read config"):
        build_config(tmp_path / "missing.yaml")


def test_yaml_cannot_run_code(tmp_path):
    evil = tmp_path / "evil.yaml"
    marker = tmp_path / "ran"
    evil.write_text(f"train: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(SimCLRError):
        build_config(evil)
    assert not marker.exists()


def test_diff_lists_changed_keys():
    # build_config() is the resolved default config (Config() leaves the lr to the optimizer)
    a, b = build_config().to_dict(), build_config(overrides=["train.epochs=1", "model.width=0.5"])
    assert diff(a, b.to_dict()) == ["model.width", "train.epochs"]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_presets_load(path):
    build_config(path)


def test_on_off_stay_strings_in_files_and_overrides(tmp_path):
    # YAML 1.1 would read on/off as booleans and reject data.stream=on as "expected str"
    path = tmp_path / "c.yaml"
    path.write_text("data: {name: folder, stream: off}\ntrain: {progress: false}\n")
    cfg = build_config(path)
    assert cfg.data.stream == "off" and cfg.train.progress is False
    assert build_config(path, {"data.stream": parse_value("on")}).data.stream == "on"
    assert parse_value("true") is True and parse_value("no") == "no"


def test_each_optimizer_gets_its_own_lr_and_weight_decay_unless_set(tmp_path):
    assert set(OPTIM_DEFAULTS) == set(OPTIMIZERS)
    assert Config().optim.lr is None and Config().optim.weight_decay is None  # unset
    got = {name: (c.optim.lr, c.optim.weight_decay) for name in OPTIMIZERS
           for c in [build_config(overrides=[f"optim.name={name}"])]}
    assert got == {"lars": (1.0, 1e-4), "sgd": (0.06, 5e-4), "adam": (1e-3, 1e-6),
                   "adamw": (1e-3, 1e-2)}
    # a value the user sets is kept, whatever the optimizer; the other one still defaults
    cfg = build_config(overrides=["optim.name=adam", "optim.lr=0.5"])
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (0.5, 1e-6)
    # the resolved values are what config.yaml saves, so a resume sees the same numbers
    save_yaml(cfg, tmp_path / "c.yaml")
    saved = yaml.safe_load((tmp_path / "c.yaml").read_text())["optim"]
    assert (saved["lr"], saved["weight_decay"]) == (0.5, 1e-6)
    assert build_config(overrides={"optim.name": "sgd"}, base={"optim": saved}).optim.lr == 0.5


@pytest.mark.parametrize("name,lr,wd,own_wd", [
    ("fashion_mnist_cpu.yaml", 0.06, 5e-4, False),
    ("fashion_mnist_cpu_long.yaml", 0.06, 5e-4, False),
    ("cifar10_resnet18_lars.yaml", 1.0, 1e-4, False), ("cifar10_resnet50.yaml", 1.0, 1e-6, True),
    ("cifar10_resnet18_sgd.yaml", 0.06, 5e-4, False)])
def test_presets_keep_their_recipe_lr_and_give_other_optimizers_theirs(name, lr, wd, own_wd):
    path = Path(__file__).parent.parent / "configs" / name
    cfg = build_config(path)
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (lr, wd)
    other = "adam" if cfg.optim.name != "adam" else "sgd"
    cfg = build_config(path, [f"optim.name={other}"])  # e.g. a sweep over optim.name
    # a preset's own weight decay (the paper's 1e-6 for R50) is kept, the rest are the other's
    want = OPTIM_DEFAULTS[other]["lr"], wd if own_wd else OPTIM_DEFAULTS[other]["weight_decay"]
    assert (cfg.optim.lr, cfg.optim.weight_decay) == want


@pytest.mark.parametrize("spelling,name", [
    ("FashionMNIST", "fashion_mnist"), ("fashion-mnist", "fashion_mnist"),
    ("Fashion_MNIST", "fashion_mnist"), ("CIFAR10", "cifar10"), ("CIFAR-100", "cifar100"),
    ("STL10", "stl10"), ("cifar100-coarse", "cifar100_coarse"), ("MNIST", "mnist")])
def test_common_dataset_spellings_are_accepted(spelling, name):
    assert build_config(overrides=[f"data.name={spelling}"]).data.name == name

