"""Fixtures and hooks shared by the test files."""

import os

import pytest
from hypothesis import settings

from simclr.cli import exit_now
from simclr.config import build_config
from simclr.train import pretrain
from tests.formats import write_idx

# Output must not depend on the machine's load: no CPU-contention warning in runs the tests start
# (inherited by their subprocesses); test_train turns it back on where it tests it.
os.environ["SIMCLR_NO_CONTENTION_WARNING"] = "1"

# Property tests draw the same examples on every run, so a CI result is reproducible (two CI runs
# each met a different rare input). SIMCLR_FUZZ_RANDOM=1 explores new inputs instead.
settings.register_profile("simclr", derandomize=os.environ.get("SIMCLR_FUZZ_RANDOM") != "1",
                          database=None)
settings.load_profile("simclr")


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    """A tiny MNIST-format folder: 96 train images (3 steps of batch 32), 32 test images."""
    root = tmp_path_factory.mktemp("mnist")
    write_idx(root, 96, n_test=32)
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 2-epoch tiny MNIST-format run (128 train / 48 test images) with the online kNN
    monitor every epoch; one per test module."""
    root = tmp_path_factory.mktemp("data")
    write_idx(root, 128, n_test=48)
    cfg = build_config(overrides={
        "data.name": "mnist", "data.root": str(root), "data.download": False,
        "model.width": 0.0625, "model.proj_dim": 16, "train.batch_size": 32, "train.epochs": 2,
        "train.progress": False, "eval.every": 1, "eval.knn_k": 20})
    return pretrain(cfg, tmp_path_factory.mktemp("runs") / "run", log=lambda *_: None)


def pytest_sessionfinish(session, exitstatus):
    session.config.simclr_exitstatus = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """After pytest has reported everything, end the process with its exit status without
    native exit handlers: torch 2.13's CPU build can segfault destroying oneDNN's bf16 kernel
    cache at interpreter exit (see simclr.cli.exit_now)."""
    exit_now(getattr(config, "simclr_exitstatus", 0))
