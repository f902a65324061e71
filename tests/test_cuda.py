"""The GPU paths, marked ``cuda`` and skipped without a CUDA GPU (``pytest -m cuda`` runs only
these; ``benchmarks/gpu_check.sh`` runs them first).

Covered: pretraining in bf16 and fp16; resume on the GPU, and after a device change (CPU ->
GPU), replaying the uninterrupted run up to the GPU's floating-point noise (README: cuDNN
algorithm choice and atomic adds); torch.compile, alone and over DDP with SyncBatchNorm and
channels_last; streamed folders with pinned memory; fp16 fine-tuning; eval on the GPU against
eval on the CPU (within 0.5 points); views on the GPU against views on the CPU for the same
draws. Tolerances are checked against a control that must exceed them (another seed).
"""

import json
import math
import shutil
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import simclr
from simclr.augment import ops as A
from simclr.config import Augment, build_config
from simclr.data.loader import TensorLoader, epoch_permutation
from simclr.data.stream import StreamLoader
from simclr.models.factory import build_model
from simclr.runtime.compute import resolve_precision, step_generator
from simclr.train import dist
from simclr.train.optim import build_optimizer, set_lr
from simclr.train.pretrain import pretrain
from simclr.train.rundir import load_checkpoint
from simclr.train.step import train_step
from tests.formats import write_idx, write_image_folder, write_levels_idx

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU (torch.cuda.is_available() is False)")]

CUDA = torch.device("cuda", 0)
NOISE = 1e-2  # relative change a GPU rerun may show after a few steps (see the controls)


def quiet(*_):
    pass


def tiny(root, **extra):
    overrides = {"data.name": "mnist", "data.root": str(root), "data.download": False,
                 "model.width": 0.0625, "model.proj_dim": 16, "train.batch_size": 32,
                 "train.epochs": 2, "train.progress": False, "train.log_every": 1,
                 "train.device": "cuda", "optim.warmup_epochs": 1.0, "eval.every": 0}
    return build_config(overrides={**overrides, **extra})


def rel_diff(a: dict, b: dict) -> float:
    """Largest ||a - b|| / ||a|| over the float tensors of two state dicts (others: equal)."""
    worst = 0.0
    for k, v in a.items():
        if v.is_floating_point():
            scale = float(v.double().norm()) or 1.0
            worst = max(worst, float((v.double() - b[k].double()).norm()) / scale)
        else:
            assert torch.equal(v, b[k]), k
    return worst


def losses(run_dir: Path) -> list[float]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [x["loss"] for x in lines if x["kind"] == "window"]


def encoder(run_dir: Path) -> dict:
    return load_file(str(run_dir / "encoder.safetensors"))


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist")
    write_idx(root, 96, n_test=32)
    return root


def test_auto_precision_is_bf16_exactly_from_compute_capability_8():
    expected = "bf16" if torch.cuda.get_device_capability(CUDA) >= (8, 0) else "fp16"
    assert resolve_precision("auto", CUDA) == expected


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_pretrain_on_gpu(mnist, tmp_path, precision):
    if precision == "bf16" and torch.cuda.get_device_capability(CUDA) < (8, 0):
        pytest.skip("this GPU has no native bf16")
    lines = []
    run_dir = pretrain(tiny(mnist, **{"train.precision": precision, "eval.every": 1,
                                      "eval.knn_k": 10}), tmp_path / "run", log=lines.append)
    assert f"on cuda ({precision})" in lines[0]
    curve = losses(run_dir)
    assert len(curve) == 6 and all(math.isfinite(x) for x in curve)
    assert abs(curve[0] - math.log(2 * 32 - 1)) < 0.5  # ln(2B - 1) at random init
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert state["step"] == 6 and set(state["rng"]) == {"torch"}
    assert bool(state["scaler"]) == (precision == "fp16")  # a live GradScaler only for fp16
    knn = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()
           if '"knn"' in x]
    assert len(knn) == 2 and all(0 <= x["knn_top1"] <= 1 for x in knn)
    assert [x["epoch"] for x in knn] == [1, 2] and knn[-1]["k"] == 10
    # the last monitor value is the offline kNN of the saved encoder: the same features
    # (extract_features on this device, in this precision, from the run's config)
    report = simclr.evaluate(run_dir, ["knn"], ["eval.baselines=false"], write=False, log=quiet)
    (row,) = report["results"]
    assert row["inputs"]["device"] == "cuda" and row["inputs"]["precision"] == precision
    assert row["settings"]["k"] == 10
    assert (row["n_train"], row["n_test"]) == (knn[-1]["n_train"], knn[-1]["n_test"])
    assert row["top1"] == knn[-1]["knn_top1"]
    assert all(torch.isfinite(v).all() for v in encoder(run_dir).values())


def test_resume_on_gpu_replays_the_run(mnist, tmp_path):
    straight = pretrain(tiny(mnist), tmp_path / "straight", log=quiet)
    resumed = tmp_path / "resumed"
    pretrain(tiny(mnist, **{"train.max_steps": 4}), resumed, log=quiet)
    pretrain(tiny(mnist), resumed, log=quiet)
    other = pretrain(tiny(mnist, **{"train.seed": 1}), tmp_path / "other", log=quiet)
    assert losses(resumed) == pytest.approx(losses(straight), rel=NOISE)
    assert rel_diff(encoder(straight), encoder(resumed)) < NOISE
    assert rel_diff(encoder(straight), encoder(other)) > 10 * NOISE  # the control


def test_resume_after_a_device_change_replays_the_run(mnist, tmp_path):
    fp32 = {"train.precision": "fp32"}
    straight = pretrain(tiny(mnist, **fp32), tmp_path / "straight", log=quiet)
    moved = tmp_path / "moved"
    pretrain(tiny(mnist, **fp32, **{"train.device": "cpu", "train.max_steps": 3}), moved,
             log=quiet)
    lines = []
    pretrain(tiny(mnist, **fp32), moved, log=lines.append)  # train.device: cpu -> cuda
    assert "resuming at step 3" in lines[0] and "on cuda (fp32)" in lines[0]
    assert losses(moved) == pytest.approx(losses(straight), rel=NOISE)
    assert rel_diff(encoder(straight), encoder(moved)) < NOISE


def test_views_on_gpu_are_the_cpu_views_for_the_same_draws():
    x = torch.randint(0, 256, (64, 3, 40, 40), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0))
    cfg = Augment(jitter_strength=1.0, blur_p=0.5)
    mean, std = [0.5] * 3, [0.25] * 3
    cpu = torch.cat(A.two_views(x, cfg, mean, std, step_generator(0, 7)))
    gpu = torch.cat(A.two_views(x.to(CUDA), cfg, mean, std, step_generator(0, 7))).cpu()
    assert (gpu - cpu).abs().mean() < 1e-4 and (gpu - cpu).abs().max() < 1e-2
    other = torch.cat(A.two_views(x, cfg, mean, std, step_generator(0, 8)))
    assert (other - cpu).abs().mean() > 1e-2  # the control: other draws, other views


def test_gpu_hue_and_blur_on_selected_samples_equal_the_masked_path():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(32, 3, 24, 24, generator=g).to(CUDA)
    factors = torch.rand(32, 4, generator=g) * 0.4 + torch.tensor([0.8, 0.8, 0.8, -0.2])
    order = torch.rand(32, 4, generator=g).argsort(1)
    by_index = A._jitter(x, factors, order)  # parameters on the CPU: selected samples only
    masked = A._jitter(x, factors.to(CUDA), order.to(CUDA))  # on the GPU: all, then a mask
    torch.testing.assert_close(by_index, masked, rtol=0, atol=1e-6)
    k = torch.rand(32, 5, generator=g)
    k = k / k.sum(1, keepdim=True)
    nchw = A._blur(x, k.to(CUDA))
    torch.testing.assert_close(nchw, A._blur(x, k.to(CUDA), channels_last=True), rtol=0,
                               atol=1e-5)
    torch.testing.assert_close(nchw.cpu(), A._blur(x.cpu(), k), rtol=0, atol=1e-5)


def test_epoch_order_on_gpu_is_the_cpu_order():
    images = torch.zeros(1000, 1, 2, 2, dtype=torch.uint8)
    for epoch in range(3):
        gpu = TensorLoader(images.to(CUDA), 100, seed=5).permutation(epoch)
        assert gpu.device == CUDA and torch.equal(gpu.cpu(), epoch_permutation(1000, 5, epoch))


def test_compile_on_gpu_matches_eager(mnist, tmp_path):
    eager = pretrain(tiny(mnist, **{"train.epochs": 1}), tmp_path / "eager", log=quiet)
    compiled = pretrain(tiny(mnist, **{"train.epochs": 1, "train.compile": True}),
                        tmp_path / "compiled", log=quiet)
    assert losses(compiled) == pytest.approx(losses(eager), rel=5e-2)
    assert rel_diff(encoder(eager), encoder(compiled)) < 5e-2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_compile_over_ddp_with_syncbn_and_channels_last_matches_eager():
    """One NCCL process: DDP's graph splitting under torch.compile, SyncBatchNorm (which falls
    back to BatchNorm's kernels at world size 1) and channels_last, in bf16, as train.py
    builds them; three LARS steps against the plain eager model."""
    cfg = build_config(overrides={"model.width": 0.125, "model.proj_dim": 16,
                                  "train.batch_size": 16})
    views = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(
        CUDA, memory_format=torch.channels_last)

    def run(wrap) -> list[float]:
        torch.manual_seed(0)
        model = build_model(cfg.model, 3, 32).to(CUDA, memory_format=torch.channels_last)
        model, step_model = wrap(model)
        optimizer = build_optimizer(model, cfg.optim)
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        out = []
        for _ in range(3):
            set_lr(optimizer, 0.1)
            out.append(float(train_step(step_model, optimizer, scaler, views, cfg, CUDA, "bf16",
                                        gather=dist.gather_with_grad)))
        return out

    def ddp_compiled(model):
        model = dist.convert_batchnorm(model)
        assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[0],
                                                        broadcast_buffers=False)
        return model, torch.compile(ddp)

    eager = run(lambda m: (m, m))
    torch.distributed.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}",
                                         rank=0, world_size=1, device_id=CUDA)
    try:
        compiled = run(ddp_compiled)
    finally:
        dist.shutdown()
    assert compiled == pytest.approx(eager, rel=5e-2)
    assert compiled[-1] != compiled[0]  # it trained


def test_streamed_folder_on_gpu_pins_and_equals_in_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMCLR_CACHE", str(tmp_path / ".cache"))
    images, _ = write_image_folder(tmp_path / "imgs", 2, 24, 16)
    with StreamLoader.from_folder(tmp_path / "imgs", "train", 16, 16, seed=3, device=CUDA,
                                  workers=2) as stream:
        assert stream.pin_memory
        memory = TensorLoader(images.to(CUDA), 16, seed=3)
        for epoch in range(2):
            got, want = list(stream.batches(epoch)), list(memory.batches(epoch))
            assert len(got) == len(want) == 3
            for a, b in zip(got, want, strict=True):
                assert a.device == CUDA and torch.equal(a, b)

    def folder(stream_mode):
        return build_config(overrides={
            "data.name": "folder", "data.root": str(tmp_path / "imgs"), "data.image_size": 16,
            "data.stream": stream_mode, "model.width": 0.0625, "model.proj_dim": 16,
            "train.batch_size": 16, "train.epochs": 2, "train.progress": False,
            "train.log_every": 1, "train.device": "cuda", "optim.warmup_epochs": 1.0,
            "eval.every": 0})

    streamed = pretrain(folder("on"), tmp_path / "streamed", log=quiet)
    in_memory = pretrain(folder("off"), tmp_path / "memory", log=quiet)
    assert losses(streamed) == pytest.approx(losses(in_memory), rel=NOISE)


@pytest.fixture(scope="module")
def levels_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("levels")
    write_levels_idx(root, 2000, 1000)
    cfg = tiny(root, **{"train.device": "cpu", "train.precision": "fp32", "train.epochs": 1,
                        "train.max_steps": 4})
    return pretrain(cfg, tmp_path_factory.mktemp("runs") / "run", log=quiet)


def evaluate(run_dir: Path, protocols: list[str], *overrides: str) -> dict[str, float]:
    """top1 per protocol, features extracted afresh (the cache is keyed on the encoder file,
    not on the device or the precision)."""
    shutil.rmtree(run_dir / "features", ignore_errors=True)
    report = simclr.evaluate(run_dir, protocols, ["eval.baselines=false", *overrides],
                             write=False, log=quiet)
    return {r["protocol"]: r["top1"] for r in report["results"]}


@pytest.mark.parametrize("precision, points", [
    ("fp32", 0.5),
    ("auto", 1.0),  # bf16 on the GPU: on a CPU, bf16 vs fp32 moved these by 0.2-0.3 points
])
def test_eval_on_gpu_equals_eval_on_cpu(levels_run, precision, points):
    cpu = evaluate(levels_run, ["linear", "knn"], "train.device=cpu", "train.precision=fp32")
    gpu = evaluate(levels_run, ["linear", "knn"], "train.device=cuda",
                   f"train.precision={precision}")
    assert 0.5 < cpu["knn"] < 0.98 and 0.5 < cpu["linear"] < 0.98  # neither chance nor easy
    for protocol in ("linear", "knn"):
        assert abs(gpu[protocol] - cpu[protocol]) <= points / 100, (protocol, gpu, cpu)


def test_finetune_in_fp16_on_gpu(levels_run):
    settings = ["train.device=cuda", "finetune.epochs=10", "finetune.labels=0.2",
                "finetune.batch_size=32", "finetune.lr=0.5"]
    fp16 = evaluate(levels_run, ["finetune"], *settings, "train.precision=fp16")["finetune"]
    fp32 = evaluate(levels_run, ["finetune"], *settings, "train.precision=fp32")["finetune"]
    # on a CPU (5 epochs) both land at 81-94% with a +-6 point spread over seeds; chance is 10%
    assert fp16 > 0.6 and fp32 > 0.6 and abs(fp16 - fp32) < 0.15
