"""The training loop: outputs, exact resume (end of epoch and mid-epoch), resume safety,
non-finite loss."""

import copy
import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import simclr.train.loop as train_mod
import simclr.train.loss as step_mod
from simclr.config import build_config
from simclr.errors import SimCLRError
from simclr.train.pretrain import pretrain
from simclr.train.rundir import load_checkpoint, read_encoder

N, BATCH = 96, 32  # 3 steps per epoch: the conftest's mnist_root


def tiny(root, **extra):
    overrides = {"data.name": "mnist", "data.root": str(root), "data.download": False,
                 "model.width": 0.0625, "model.proj_dim": 16, "train.batch_size": BATCH,
                 "train.epochs": 2, "train.progress": False, "train.log_every": 2,
                 "optim.warmup_epochs": 1.0}
    overrides.update(extra)
    return build_config(overrides=overrides)


def run(cfg, run_dir, **kw):
    return pretrain(cfg, run_dir, log=lambda *_: None, **kw)


def encoder(run_dir):
    return load_file(str(run_dir / "encoder.safetensors"))


def test_pretrain_leaves_the_callers_config_as_it_was(mnist_root, tmp_path):
    """The resolved config (measured statistics, the optimizer's defaults, a custom module's
    arch) is the run dir's config.yaml; the config handed in is not changed."""
    from simclr.config import Config, Data, Model, Train

    cfg = Config(data=Data(name="MNIST", root=str(mnist_root), download=False),
                 model=Model(width=0.5, proj_dim=16),
                 train=Train(batch_size=BATCH, epochs=1, progress=False))
    cfg.model.width = 0.0625
    before = copy.deepcopy(cfg)
    run_dir = run(cfg, tmp_path / "run")
    assert cfg == before and cfg.augment.mean is None and cfg.optim.lr is None
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["name"] == "mnist" and len(saved["augment"]["mean"]) == 1
    assert saved["optim"]["lr"] == 1.0  # lars' default, resolved in the run's copy
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten())
    custom = copy.deepcopy(before)
    run(custom, tmp_path / "custom", encoder=net)
    assert custom == before  # not model.arch=custom: the run dir's config says that
    assert yaml.safe_load((tmp_path / "custom" / "config.yaml").read_text())["model"][
        "arch"] == "custom"


def test_outputs(mnist_root, tmp_path):
    run_dir = run(tiny(mnist_root), tmp_path / "run")
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["name"] == "mnist" and len(saved["augment"]["mean"]) == 1
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [x for x in lines if x["kind"] == "epoch"]
    windows = [x for x in lines if x["kind"] == "window"]
    assert [e["step"] for e in epochs] == [3, 6]
    assert [w["step"] for w in windows] == [2, 3, 4, 6]  # steps divisible by 2, and epoch ends
    for w in windows:
        assert set(w) >= {"epoch", "step", "loss", "lr", "images_per_s", "time"}
    history = np.load(run_dir / "loss_history.npy")
    # the per-epoch mean equals the step-weighted mean of its windows
    assert history[0] == pytest.approx((windows[0]["loss"] * 2 + windows[1]["loss"]) / 3)
    # at random init the loss is near ln(2B - 1)
    assert abs(windows[0]["loss"] - np.log(2 * BATCH - 1)) < 0.5
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert state["step"] == 6 and state["epoch"] == 2 and state["config"] == saved
    tensors, meta = read_encoder(run_dir / "encoder.safetensors")
    assert meta["arch"] == "resnet18" and meta["in_channels"] == 1 and meta["image_size"] == 28
    assert not any(k.startswith("head") for k in tensors)


@pytest.mark.parametrize("stop_at", [3, 4], ids=["after-epoch-1", "mid-epoch-2"])
def test_resume_is_exact(mnist_root, tmp_path, stop_at):
    straight = run(tiny(mnist_root), tmp_path / "straight")
    resumed = tmp_path / "resumed"
    run(tiny(mnist_root, **{"train.max_steps": stop_at}), resumed)
    assert load_checkpoint(resumed / "checkpoint.pt")["step"] == stop_at
    run(tiny(mnist_root), resumed)
    a, b = encoder(straight), encoder(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # no timestamps inside: identical training gives identical files
    assert (straight / "encoder.safetensors").read_bytes() == \
        (resumed / "encoder.safetensors").read_bytes()
    assert np.array_equal(np.load(straight / "loss_history.npy"),
                          np.load(resumed / "loss_history.npy"))
    # metrics written after the resumed-from checkpoint are replaced, not duplicated
    def lines(d):
        return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]

    def key(x):
        return x["kind"], x["step"], x.get("loss", x.get("knn_top1"))

    assert [key(x) for x in lines(resumed)] == [key(x) for x in lines(straight)]


def test_resume_refuses_changed_settings(mnist_root, tmp_path):
    run_dir = run(tiny(mnist_root, **{"train.max_steps": 3}), tmp_path / "run")
    with pytest.raises(SimCLRError, match=r"model\.width.*differ.*--force"):
        run(tiny(mnist_root, **{"model.width": 0.125}), run_dir)
    with pytest.raises(SimCLRError, match="holds a different model"):
        run(tiny(mnist_root, **{"model.width": 0.125}), run_dir, force=True)
    run(tiny(mnist_root, **{"train.epochs": 3}), run_dir, force=True)  # safe change, accepted
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == 9


def test_non_finite_loss_stops_and_keeps_last_checkpoint(mnist_root, tmp_path, monkeypatch):
    real = step_mod.nt_xent
    calls = []

    def poisoned(z1, z2, t, **kw):
        calls.append(1)
        loss = real(z1, z2, t, **kw)
        return loss * float("nan") if len(calls) > 4 else loss

    monkeypatch.setattr(step_mod, "nt_xent", poisoned)
    with pytest.raises(SimCLRError, match=r"loss became nan by step 6 \(lr .*\); the last good"):
        run(tiny(mnist_root), tmp_path / "run")
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 3


def test_batch_larger_than_dataset(mnist_root, tmp_path):
    with pytest.raises(SimCLRError, match="larger than the dataset"):
        run(tiny(mnist_root, **{"train.batch_size": 4 * N}), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_fp32_and_bf16_runs_agree(mnist_root, tmp_path):
    """bf16 autocast (native or emulated: the result must not depend on the CPU kind) follows
    the fp32 run: the same losses step by step, and an encoder much closer to fp32's than a run
    with another seed is."""
    losses, weights = {}, {}
    for name, precision, seed in (("fp32", "fp32", 0), ("bf16", "bf16", 0), ("seed1", "fp32", 1)):
        cfg = tiny(mnist_root, **{"train.precision": precision, "train.max_steps": 3,
                                  "train.log_every": 1, "train.seed": seed})
        run_dir = run(cfg, tmp_path / name)
        lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [x["loss"] for x in lines if x["kind"] == "window"]
        weights[name] = torch.cat([v.flatten().double() for v in encoder(run_dir).values()
                                   if v.is_floating_point()])
    assert len(losses["bf16"]) == 3
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=2e-3)  # seed 1: 1.4e-2 off

    def distance(a, b):
        return float((weights[a] - weights[b]).norm() / weights[b].norm())

    assert distance("bf16", "fp32") < 0.1 * distance("seed1", "fp32"), \
        (distance("bf16", "fp32"), distance("seed1", "fp32"))


def test_tensorboard_logs_scalars_and_views(mnist_root, tmp_path):
    pytest.importorskip("tensorboard", reason="pip install tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = run(tiny(mnist_root, **{"train.tensorboard": True}), tmp_path / "run")
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    assert {"window/loss", "window/lr", "epoch/loss", "knn/knn_top1"} <= set(tags["scalars"])
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    window_losses = [x["loss"] for x in lines if x["kind"] == "window"]
    assert [e.value for e in events.Scalars("window/loss")] == pytest.approx(window_losses)
    assert "views" in tags["images"] and len(events.Images("views")) == 2  # one per epoch


def test_tensorboard_missing_is_a_clean_error(mnist_root, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("no tensorboard")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(SimCLRError, match="pip install tensorboard"):
        run(tiny(mnist_root, **{"train.tensorboard": True}), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_streamed_folder_trains_as_in_memory(tmp_path, monkeypatch):
    from tests.formats import write_image_folder

    monkeypatch.setenv("SIMCLR_CACHE", str(tmp_path / ".cache"))
    write_image_folder(tmp_path / "imgs", 2, 20, 16)

    def folder(stream, **extra):
        return build_config(overrides={
            "data.name": "folder", "data.root": str(tmp_path / "imgs"), "data.image_size": 16,
            "data.stream": stream, "model.width": 0.0625, "model.proj_dim": 16,
            "train.batch_size": 16, "train.epochs": 2, "train.progress": False,
            "optim.warmup_epochs": 1.0, "eval.every": 0, **extra})

    memory = run(folder("off"), tmp_path / "memory")
    streamed = run(folder("on"), tmp_path / "streamed")
    mixed = tmp_path / "mixed"  # streamed, then resumed in memory: the same batches
    run(folder("on", **{"train.max_steps": 3}), mixed)
    run(folder("off"), mixed)
    for other in (streamed, mixed):
        assert yaml.safe_load((other / "config.yaml").read_text())["augment"] == \
            yaml.safe_load((memory / "config.yaml").read_text())["augment"]
        assert np.array_equal(np.load(other / "loss_history.npy"),
                              np.load(memory / "loss_history.npy"))
        a, b = encoder(memory), encoder(other)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_contention_warning_rules():
    from simclr.runtime.compute import contention_warning
    assert contention_warning(2, 2, 0) is None  # alone
    assert contention_warning(1, 2, 1) is None  # one thread beside one busy thread: fits
    assert contention_warning(2, 2, None) is None  # unknown (no /proc/loadavg)
    message = contention_warning(2, 2, 1)
    assert "1 other thread(s)" in message and message.endswith("OMP_NUM_THREADS=1")
    assert contention_warning(16, 16, 3).endswith("OMP_NUM_THREADS=13")
    assert contention_warning(2, 2, 5).endswith("OMP_NUM_THREADS=1")  # never 0 or less


def test_busy_threads_reads_loadavg(monkeypatch, tmp_path):
    import simclr.runtime.compute as runtime
    reads = iter(["0.5 0.4 0.3 3/100 7\n", "0.5 0.4 0.3 1/100 7\n", "0.5 0.4 0.3 3/100 7\n"])
    real_open = open
    monkeypatch.setattr(runtime, "open", lambda path, *a, **k: __import__("io").StringIO(
        next(reads)) if path == "/proc/loadavg" else real_open(path, *a, **k), raising=False)
    assert runtime.busy_threads(samples=3, interval=0) == 2  # median of 2, 0, 2 (self excluded)


def test_pretrain_warns_when_cores_are_taken(mnist_root, tmp_path, monkeypatch):
    ONE_EPOCH = {"train.epochs": 1, "optim.warmup_epochs": 0.5}  # no warm-up warning
    import simclr.runtime.compute as runtime
    monkeypatch.delenv("SIMCLR_NO_CONTENTION_WARNING")  # conftest turns the check off
    monkeypatch.setattr(runtime, "busy_threads", lambda: 64)
    with pytest.warns(UserWarning, match="other thread.*OMP_NUM_THREADS"):
        run(tiny(mnist_root, **ONE_EPOCH), tmp_path / "run")
    monkeypatch.setattr(runtime, "busy_threads", lambda: 0)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(tiny(mnist_root, **ONE_EPOCH), tmp_path / "run2")
    monkeypatch.setattr(runtime, "busy_threads", lambda: 64)
    monkeypatch.setenv("SIMCLR_NO_CONTENTION_WARNING", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(tiny(mnist_root, **ONE_EPOCH), tmp_path / "run3")


def test_warmup_as_long_as_the_run_warns(mnist_root, tmp_path):
    import warnings

    with pytest.warns(UserWarning, match=r"optim.warmup_epochs=2 >= train.epochs=2: the lr "
                      r"rises for the whole run, never reaches its peak"):
        run(tiny(mnist_root, **{"optim.warmup_epochs": 2.0, "train.max_steps": 1}),
            tmp_path / "long")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tiny(): 1 warm-up epoch of 2
        run(tiny(mnist_root, **{"train.max_steps": 1}), tmp_path / "short")


def test_training_time_survives_a_mid_epoch_resume(mnist_root, tmp_path, monkeypatch):
    """Each step takes one second of a fake clock: the logged training time is the number of
    steps trained, also when a crash after a mid-epoch checkpoint is resumed."""
    from types import SimpleNamespace

    clock = [0.0]
    crash_at = [0]
    real_step = train_mod.train_step

    def timed_step(*args, **kwargs):
        if crash_at[0] and round(clock[0]) + 1 == crash_at[0]:
            raise RuntimeError("crash")
        clock[0] += 1.0
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_mod, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(train_mod, "train_step", timed_step)
    # 3 steps an epoch; windows at steps 3, 5, 6; mid-epoch checkpoints at steps 2 and 4
    cfg = tiny(mnist_root, **{"train.log_every": 5, "train.checkpoint_every": 2,
                              "eval.every": 0})

    def times(run_dir):
        lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [(x["step"], x["time"]) for x in lines if x["kind"] == "window"]

    straight = run(cfg, tmp_path / "straight")
    assert times(straight) == [(3, 3.0), (5, 5.0), (6, 6.0)]
    clock[0], crash_at[0] = 0.0, 5  # the 5th step fails: the last checkpoint is step 4's
    with pytest.raises(RuntimeError, match="crash"):
        run(cfg, tmp_path / "resumed")
    state = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert (state["step"], state["elapsed"]) == (4, 4.0)
    crash_at[0] = 0  # resume: steps 5 and 6
    run(cfg, tmp_path / "resumed")
    assert times(tmp_path / "resumed") == times(straight)


def test_stop_at_max_steps_says_how_to_go_on(mnist_root, tmp_path):
    lines = []
    pretrain(tiny(mnist_root, **{"train.max_steps": 2}), tmp_path / "run", log=lines.append)
    assert lines[-1] == ("stopped at step 2 of 6 (train.max_steps=2); to go on, run the same "
                         "command with a larger --train.max_steps (0 = no limit)")
    assert not any("run again to resume" in x for x in lines)


def test_progress_bar_clears_its_line_when_interrupted(mnist_root, tmp_path, monkeypatch,
                                                       capsys):
    """The CLI's interrupt message then starts a line of its own."""
    real_step, calls = train_mod.train_step, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_step", interrupted)
    try:
        run(tiny(mnist_root, **{"train.progress": True}), tmp_path / "run")
    except KeyboardInterrupt:  # where the CLI prints its message: the traceback still alive
        err = capsys.readouterr().err
    else:
        pytest.fail("not interrupted")
    assert "epoch 1/2" in err  # the bar was drawn
    assert err.rsplit("\r", 1)[-1].strip() == ""  # ... and its line cleared


def test_data_subset_shrinks_the_knn_monitor(mnist_root, tmp_path):
    """A run on its first 24 images is monitored on a bank of those 24 and 24 test images;
    eval.subset / eval.test_subset, where set, win."""
    def monitored(**extra):
        cfg = tiny(mnist_root, **{"data.subset": 24, "train.batch_size": 8, "train.epochs": 1,
                                  "optim.warmup_epochs": 0.0, "eval.every": 1, "eval.knn_k": 5,
                                  **extra})
        run_dir = run(cfg, tmp_path / str(len(list(tmp_path.iterdir()))))
        lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        (knn,) = [x for x in lines if x["kind"] == "knn"]
        return knn["n_train"], knn["n_test"]

    assert monitored() == (24, 24)
    assert monitored(**{"eval.subset": 48, "eval.test_subset": 16}) == (48, 16)
    assert monitored(**{"data.subset": 0, "train.batch_size": BATCH}) == (N, 32)  # all
