"""Crash safety (SIGKILL, then the same command again), the run-dir lock, and safe loading of
checkpoints. Processes where a process is under test (SIGKILL, a second process on a locked run
dir); the other commands run in this process (:func:`tests.helpers.cli`)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from simclr.train.rundir import run_lock
from tests.formats import write_idx
from tests.helpers import cli, last_step, one_line_error

REPO = Path(__file__).parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist")
    write_idx(root, 192, n_test=32)
    return root


def pretrain_args(root, run_dir, *extra):
    """``simclr pretrain ...`` arguments: 5 epochs of 6 steps, a checkpoint every 2 steps."""
    return ["pretrain", "--run-dir", str(run_dir),
            "--data.name=mnist", f"--data.root={root}", "--data.download=false",
            "--model.width=0.0625", "--model.proj_dim=16", "--train.batch_size=32",
            "--train.epochs=5", "--train.log_every=1", "--train.checkpoint_every=2",
            "--train.progress=false", "--optim.warmup_epochs=1", *extra]


def args(root, run_dir, *extra):
    """The same as a ``python -m simclr`` process."""
    return [sys.executable, "-m", "simclr", *pretrain_args(root, run_dir, *extra)]


def kill_at(root, run_dir, step: int, *extra) -> None:
    """Start pretraining and SIGKILL it once its log passes ``step``."""
    proc = subprocess.Popen(args(root, run_dir, *extra), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while last_step(run_dir) < step and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"


def test_sigkill_twice_then_resume_gives_the_uninterrupted_encoder(root, tmp_path):
    """Killed processes (real ones: SIGKILL); the uninterrupted run and the final resume run
    in this process (fp32 pinned, so all four compute alike whatever the CPU kind)."""
    fp32 = "--train.precision=fp32"
    straight = tmp_path / "straight"
    assert cli(*pretrain_args(root, straight, fp32)).returncode == 0
    crashed = tmp_path / "crashed"
    kill_at(root, crashed, 5, fp32)  # inside epoch 1 (6 steps per epoch)
    kill_at(root, crashed, 17, fp32)  # inside epoch 3
    done = cli(*pretrain_args(root, crashed, fp32))
    assert done.returncode == 0, done.stderr
    assert "resuming at step" in done.stdout
    a = load_file(str(straight / "encoder.safetensors"))
    b = load_file(str(crashed / "encoder.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not list(crashed.glob(".*tmp*")), "a temporary checkpoint file was left behind"


def test_second_process_on_a_run_dir_is_refused(root, tmp_path):
    """A real second process (the lock is the OS's, between processes), through the console
    script: its exit code and one-line error end to end."""
    run_dir = tmp_path / "run"
    with run_lock(run_dir):
        proc = subprocess.run(args(root, run_dir), env=ENV, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"simclr: error: {run_dir} is in use by another simclr process (pid {os.getpid()}); "
        "wait for it to finish or use another --run-dir"]
    assert not (run_dir / "checkpoint.pt").exists()


def test_unwritable_run_dir_fails_before_training(root, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    one_line_error(cli(*pretrain_args(root, blocker / "run")), "cannot write the run dir")


def test_corrupt_checkpoint_is_refused_and_kept(root, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(b"\x00garbage" * 100)
    one_line_error(cli(*pretrain_args(root, run_dir)), "is corrupt or not a simclr checkpoint")
    assert (run_dir / "checkpoint.pt").read_bytes() == b"\x00garbage" * 100


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_that_would_run_code_is_refused(root, tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "pwned"
    run_dir.mkdir()
    torch.save({"model": Payload(marker)}, run_dir / "checkpoint.pt")
    one_line_error(cli(*pretrain_args(root, run_dir)), "is corrupt or not a simclr checkpoint")
    assert not marker.exists()


def test_resume_with_other_architecture_is_refused(root, tmp_path):
    run_dir = tmp_path / "run"
    first = cli(*pretrain_args(root, run_dir, "--train.max_steps=2"))
    assert first.returncode == 0, first.stderr
    one_line_error(cli(*pretrain_args(root, run_dir, "--model.arch=resnet34")),
                   "model.arch differ")
    one_line_error(cli(*pretrain_args(root, run_dir, "--model.arch=resnet34", "--force")),
                   "holds a different model")


def test_resume_with_fewer_visible_gpus_than_the_checkpoint_saw(root, tmp_path, monkeypatch):
    from simclr.config import build_config
    from simclr.train.pretrain import pretrain
    from simclr.train.rundir import CHECKPOINT, load_checkpoint, save_checkpoint

    def cfg(**extra):
        return build_config(overrides={
            "data.name": "mnist", "data.root": str(root), "data.download": False,
            "model.width": 0.0625, "model.proj_dim": 16, "train.batch_size": 64,
            "train.epochs": 2, "train.progress": False, "train.device": "cpu",
            "optim.warmup_epochs": 1.0, "eval.every": 0, **extra})

    def quiet(*_):
        pass

    straight = pretrain(cfg(), tmp_path / "straight", log=quiet)
    part = pretrain(cfg(**{"train.max_steps": 4}), tmp_path / "part", log=quiet)
    state = load_checkpoint(part / CHECKPOINT)
    assert set(state["rng"]) == {"torch"}  # nothing in it is tied to a device
    state["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)] * 8  # an 8-GPU machine's states
    save_checkpoint(part / CHECKPOINT, state)

    def one_gpu(states):  # what torch does with more states than visible devices
        if len(states) > 1:
            raise IndexError("list index out of range")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", one_gpu)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all",
                        lambda: pytest.fail("a device RNG state was saved"))
    pretrain(cfg(), part, log=quiet)
    a = load_file(str(straight / "encoder.safetensors"))
    b = load_file(str(part / "encoder.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
