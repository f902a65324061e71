"""Fixtures and hooks shared by the test files.

CPU kind: ``precision=auto`` means bf16 on CPUs with native bf16 (AVX-512-BF16 or AMX) and fp32
on the others (AVX2-only), so a test must not depend on which CPU it runs on. The ``cpu_kind``
fixture runs a test under both answers of the capability probe (a fake, so both run on any
CPU); ``SIMCLR_TEST_CPU=avx2`` or ``=bf16`` fakes one answer for the whole in-process suite,
to run everything as the other kind of machine would.
"""

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import settings

from simclr.cli import exit_now
from simclr.config import build_config
from simclr.runtime import compute as runtime
from simclr.train.pretrain import pretrain
from tests.formats import write_idx, write_levels_idx

# Output must not depend on the machine's load: no CPU-contention warning in runs the tests start
# (inherited by their subprocesses); test_train turns it back on where it tests it.
os.environ["SIMCLR_NO_CONTENTION_WARNING"] = "1"

# Property tests draw the same examples on every run, so a CI result is reproducible (two CI runs
# each met a different rare input). SIMCLR_FUZZ_RANDOM=1 explores new inputs instead.
settings.register_profile("simclr", derandomize=os.environ.get("SIMCLR_FUZZ_RANDOM") != "1",
                          database=None)
settings.load_profile("simclr")

CPU_KINDS = {"avx2": False, "bf16": True}  # the kind -> what the bf16 probe answers there
_FAKE_CPU = os.environ.get("SIMCLR_TEST_CPU")
if _FAKE_CPU is not None and _FAKE_CPU not in CPU_KINDS:
    raise pytest.UsageError(f"SIMCLR_TEST_CPU={_FAKE_CPU}: use one of {', '.join(CPU_KINDS)}")


@pytest.fixture(autouse=True, scope="session")
def _fake_cpu_for_the_session():
    """``SIMCLR_TEST_CPU=avx2|bf16``: every in-process test sees that CPU kind."""
    if _FAKE_CPU is None:
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runtime, "cpu_has_bf16", lambda: CPU_KINDS[_FAKE_CPU])
        yield


@pytest.fixture(params=list(CPU_KINDS))
def cpu_kind(request, monkeypatch) -> str:
    """Run the test as on an AVX2-only CPU (auto = fp32) and as on a bf16 one (auto = bf16);
    returns the precision ``precision=auto`` resolves to on the CPU."""
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: CPU_KINDS[request.param])
    return "bf16" if CPU_KINDS[request.param] else "fp32"


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    """A tiny MNIST-format folder: 96 train images (3 steps of batch 32), 32 test images."""
    root = tmp_path_factory.mktemp("mnist")
    write_idx(root, 96, n_test=32)
    return root


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder``: relative path -> (size, mtime in ns)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory) -> Path:
    """A 2-epoch tiny MNIST-format run (128 train / 48 test images of a learnable task, so its
    accuracies are far from chance and from 100%) with the online kNN monitor every epoch,
    trained once per pytest run. Read-only: use ``run_dir`` (which checks that) or
    ``run_copy``."""
    root = tmp_path_factory.mktemp("data")
    write_levels_idx(root, 128, 48)
    cfg = build_config(overrides={
        "data.name": "mnist", "data.root": str(root), "data.download": False,
        "model.width": 0.0625, "model.proj_dim": 16, "train.batch_size": 32, "train.epochs": 2,
        "train.progress": False, "eval.every": 1, "eval.knn_k": 20})
    return pretrain(cfg, tmp_path_factory.mktemp("runs") / "run", log=lambda *_: None)


@pytest.fixture
def run_dir(shared_run) -> Path:
    """The shared run, for tests that only read it: a test that writes into it fails."""
    before = snapshot(shared_run)
    yield shared_run
    after = snapshot(shared_run)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, (f"the test wrote into the shared run ({', '.join(changed)}); use the "
                         "run_copy fixture for tests that write")


@pytest.fixture
def run_copy(shared_run, tmp_path) -> Path:
    """A private copy of the shared run (for tests that write into it)."""
    return Path(shutil.copytree(shared_run, tmp_path / "run"))


def pytest_sessionfinish(session, exitstatus):
    session.config.simclr_exitstatus = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """After pytest has reported everything, end the process with its exit status without
    native exit handlers: torch 2.13's CPU build can segfault destroying oneDNN's bf16 kernel
    cache at interpreter exit (see simclr.cli.exit_now). A ``--collect-only`` session runs no
    kernels, and may be one a test runs in this process: it ends normally."""
    if not config.option.collectonly:
        exit_now(getattr(config, "simclr_exitstatus", 0))
