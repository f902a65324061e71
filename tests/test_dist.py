"""Distributed SimCLR on CPU with gloo, 2 processes started by torchrun: the gathered NT-Xent
(two views, and V views with and without labels) and a whole training step equal one process
on the global batch; end-to-end runs and resume across process counts; a failing rank ends the
job."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from simclr.loss import multi_nt_xent, nt_xent
from tests import dist_worker as W
from tests.formats import write_idx

REPO = Path(__file__).parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def torchrun(*args, timeout=600):
    return subprocess.run([*TORCHRUN, *map(str, args)], env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def worker(mode, out):
    proc = torchrun(REPO / "tests" / "dist_worker.py", mode, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_gathered_loss_and_z_gradients_equal_one_process(tmp_path):
    ranks = worker("loss", tmp_path)
    z1, z2 = (z.requires_grad_() for z in W.global_z(2))
    loss = nt_xent(z1, z2, W.T)
    loss.backward()
    # DDP averages the ranks' gradients, so the global loss is the mean of the ranks' losses and
    # each rank's gradient (summed over ranks by the gather's backward) is 2x the global one.
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, loss.detach(),
                               rtol=1e-12, atol=1e-12)
    for r, part in enumerate(ranks):
        rows = slice(r * W.N, (r + 1) * W.N)
        torch.testing.assert_close(part["g1"] / 2, z1.grad[rows], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(part["g2"] / 2, z2.grad[rows], rtol=1e-9, atol=1e-12)


def test_multi_view_loss_and_gradients_equal_one_process(tmp_path):
    ranks = worker("views", tmp_path)
    z, labels = W.global_multi_z(2)
    for name, lab in (("self", None), ("supervised", labels)):
        flat = z.reshape(W.VIEWS * 2 * W.N, W.D).clone().requires_grad_()  # view-major
        loss = multi_nt_xent(flat, W.VIEWS, W.T, labels=lab)
        grad = torch.autograd.grad(loss, flat)[0].view(W.VIEWS, 2 * W.N, W.D)
        torch.testing.assert_close((ranks[0][name][0] + ranks[1][name][0]) / 2, loss.detach(),
                                   rtol=1e-12, atol=1e-12, msg=name)
        for r, part in enumerate(ranks):  # each rank's rows: its slice of every view
            mine = grad[:, r * W.N:(r + 1) * W.N].reshape(W.VIEWS * W.N, W.D)
            torch.testing.assert_close(part[name][1] / 2, mine, rtol=1e-9, atol=1e-12, msg=name)


def test_two_training_steps_equal_one_process(tmp_path):
    ranks = worker("step", tmp_path)
    cfg = W.step_config()
    model = W.make_model(cfg)
    v1, v2 = W.global_views(2)
    losses = W.run_steps(model, model, cfg, v1, v2)
    assert ranks[0]["losses"] == pytest.approx(losses, rel=1e-10)
    reference = model.state_dict()
    for part in ranks:  # encoder, head, global BatchNorm statistics and LARS all agree
        assert part["state"].keys() == reference.keys()
        for k, v in reference.items():
            torch.testing.assert_close(part["state"][k], v, rtol=1e-8, atol=1e-10, msg=k)


def test_steps_on_views_of_two_sizes_equal_one_process(tmp_path):
    ranks = worker("sized_step", tmp_path)
    cfg = W.step_config(sized=True)
    model = W.make_model(cfg)
    views = W.view_major(W.global_sized_views(2), slice(None))
    losses = W.run_view_steps(model, model, cfg, views)
    assert ranks[0]["losses"] == pytest.approx(losses, rel=1e-10)
    for part in ranks:  # global BatchNorm per size group, the multi-view gather, LARS
        for k, v in model.state_dict().items():
            torch.testing.assert_close(part["state"][k], v, rtol=1e-8, atol=1e-10, msg=k)


def test_a_failing_rank_ends_the_job(tmp_path):
    start = time.monotonic()
    proc = torchrun(REPO / "tests" / "dist_worker.py", "fail", tmp_path, timeout=300)
    assert proc.returncode != 0
    assert time.monotonic() - start < 120
    assert "rank 1 failed on purpose" in proc.stderr + proc.stdout


def test_slow_rank0_monitor_and_checkpoints_do_not_time_out_the_others(tmp_path):
    write_idx(tmp_path / "data", 128, n_test=32)
    timeout = int(W.SLOW_S / 2)  # rank 0's work alone outlasts the collectives' timeout
    proc = subprocess.run([*TORCHRUN, REPO / "tests" / "dist_worker.py", "slow_main", tmp_path],
                          env={**ENV, "SIMCLR_DIST_TIMEOUT": str(timeout)}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["kind"] for x in lines if x["kind"] != "window"] == ["knn", "epoch"]
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 4


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist")
    write_idx(root, 128, n_test=32)
    return root


def pretrain_args(root, run_dir, epochs):
    return ["pretrain", "--run-dir", run_dir, "--data.name=mnist", f"--data.root={root}",
            "--model.width=0.0625", "--model.proj_dim=16", "--train.batch_size=32",
            f"--train.epochs={epochs}", "--train.progress=false", "--eval.every=1",
            "--eval.knn_k=10", "--force"]


def test_torchrun_pretrain_and_resume_across_process_counts(root, tmp_path):
    two = tmp_path / "two"
    proc = torchrun("-m", "simclr", *pretrain_args(root, two, 1))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x 2 processes" in proc.stdout and proc.stdout.count("epoch 1/1") == 1  # rank 0 logs
    assert torch.load(two / "checkpoint.pt", weights_only=True)["step"] == 4
    one = subprocess.run([sys.executable, "-m", "simclr", *pretrain_args(root, two, 2)],
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    assert "resuming at step 4" in one.stdout
    assert torch.load(two / "checkpoint.pt", weights_only=True)["step"] == 8

    single = tmp_path / "single"
    one = subprocess.run([sys.executable, "-m", "simclr", *pretrain_args(root, single, 1)],
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    proc = torchrun("-m", "simclr", *pretrain_args(root, single, 2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming at step 4" in proc.stdout
    assert torch.load(single / "checkpoint.pt", weights_only=True)["step"] == 8
    assert (single / "encoder.safetensors").exists()


@pytest.mark.parametrize("device_type, backend", [("cuda", "nccl"), ("cpu", "gloo")])
def test_init_binds_the_process_to_its_gpu(monkeypatch, device_type, backend):
    import torch.distributed as td

    from simclr import dist

    calls = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "is_dist", lambda: False)
    monkeypatch.setattr(dist, "_wait_group", None)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.setdefault("set_device", d))
    monkeypatch.setattr(td, "init_process_group",
                        lambda b, **kw: calls.setdefault("init", (b, kw)))
    monkeypatch.setattr(td, "new_group", lambda **kw: calls.setdefault("wait_group", kw))
    assert dist.init(device_type)
    b, kw = calls["init"]
    assert b == backend and kw["timeout"].total_seconds() == dist.TIMEOUT_S
    if device_type == "cuda":
        assert kw["device_id"] == torch.device("cuda", 1) and calls["set_device"] == 1
    else:
        assert "device_id" not in kw and "set_device" not in calls
    assert calls["wait_group"] == {"backend": "gloo", "timeout": dist.WAIT_TIMEOUT}
