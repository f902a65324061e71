"""train.ema: the encoder's weight average (timm's ModelEmaV3 without a step count) is what a run
exports, evaluates and monitors; it equals a replay of the run's per-step encoders; resume keeps
it bit for bit; a decay outside [0, 1) is one line from the command."""

import json

import pytest
import torch
from torch import nn

import simclr.train.loop as loop_mod
from simclr import load_encoder
from simclr.evaluation.cache import model_digest
from simclr.evaluation.encoder import NormalizedEncoder
from simclr.evaluation.pipeline import evaluate
from simclr.models.factory import build_encoder
from simclr.train.ema import update_average, weight_average
from simclr.train.rundir import load_checkpoint, read_encoder
from tests.helpers import cli, one_line_error
from tests.test_train import run, tiny

DECAY = 0.9
STEPS = 6  # tiny(): 96 images, batch 32, 2 epochs


def fp32(root, **extra):
    """test_train's tiny run (6 steps), fp32 pinned (bit-exact comparisons), no kNN monitor."""
    return tiny(root, **{"train.precision": "fp32", "eval.every": 0, **extra})


def small_net() -> nn.Module:
    """Conv + BatchNorm (float running stats, an int64 num_batches_tracked) + Linear."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)).double()


def train_a_little(net: nn.Module, seed: int) -> None:
    """One SGD step in train mode: the weights and the BatchNorm statistics all move."""
    g = torch.Generator().manual_seed(seed)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    net(torch.randn(8, 2, 6, 6, generator=g, dtype=torch.float64)).square().sum().backward()
    opt.step()
    opt.zero_grad()


def clone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def fold(average: dict, current: dict, decay: float) -> dict:
    """The EMA by hand, in float64: decay x average + (1 - decay) x current for floats, a copy
    of the integers."""
    return {k: (decay * a.double() + (1 - decay) * current[k].double()).to(a.dtype)
            if a.is_floating_point() else current[k].clone() for k, a in average.items()}


def fold_lerp(average: dict, current: dict, decay: float) -> dict:
    """The same EMA with torch.lerp in the tensors' own dtype (timm's operation)."""
    return {k: torch.lerp(a, current[k], 1.0 - decay) if a.is_floating_point()
            else current[k].clone() for k, a in average.items()}


def assert_states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


# ---- update_average on a small module --------------------------------------------------------


def test_weight_average_starts_as_a_frozen_copy():
    net = small_net()
    average = weight_average(net)
    assert average is not net and not average.training
    assert_states_equal(clone_state(average), clone_state(net))
    assert not any(p.requires_grad for p in average.parameters())
    assert all(p.requires_grad for p in net.parameters())  # the trained module is untouched
    train_a_little(net, 1)  # the copy shares no storage with the encoder
    assert not torch.equal(average[0].weight, net[0].weight)


def test_update_average_is_the_hand_computed_ema_of_every_float_entry():
    net = small_net()
    average = weight_average(net)
    expected = clone_state(net)
    for step in range(3):
        train_a_little(net, step)
        before = clone_state(net)
        update_average(average, net, DECAY)
        assert_states_equal(clone_state(net), before)  # the encoder is only read
        expected = fold(expected, clone_state(net), DECAY)
        got = clone_state(average)
        assert got.keys() == expected.keys()
        for k in got:
            if k.endswith("num_batches_tracked"):  # integers: copied, not averaged
                assert got[k].dtype == torch.int64 and got[k].item() == step + 1, k
                assert torch.equal(got[k], expected[k]), k
            else:
                torch.testing.assert_close(got[k], expected[k], rtol=1e-12, atol=1e-14, msg=k)
    # every float entry, the BatchNorm running statistics too, is averaged: none is a copy
    for k in ("0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var", "5.weight"):
        assert not torch.equal(got[k], net.state_dict()[k]), k


def test_update_average_with_decay_0_is_the_encoder():
    net = small_net()
    average = weight_average(net)
    train_a_little(net, 0)
    update_average(average, net, 0.0)
    assert_states_equal(clone_state(average), clone_state(net))


def test_update_average_matches_timm_model_ema_v3():
    """timm's ModelEmaV3(decay, exclude_buffers=False), updated without a step count, in step
    with ours (run in /work/venv-ref, which has timm: ``-k timm``)."""
    ema_mod = pytest.importorskip("timm.utils.model_ema",
                                  reason="timm is not installed in this environment")
    net = small_net()
    ours = weight_average(net)
    theirs = ema_mod.ModelEmaV3(net, decay=DECAY, exclude_buffers=False)
    assert_states_equal(clone_state(ours), clone_state(theirs.module))
    for step in range(4):
        train_a_little(net, step)
        update_average(ours, net, DECAY)
        theirs.update(net)  # no step: the plain decay
        a, b = clone_state(ours), clone_state(theirs.module)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-14, atol=0, msg=f"step {step}: {k}")


# ---- a run with train.ema --------------------------------------------------------------------


@pytest.fixture(scope="module")
def ema_run(mnist_root, tmp_path_factory):
    """A 6-step run with train.ema=0.9 and the kNN monitor every epoch, watched: the encoder's
    state before the first step and after each step (around ``train_step``), and each kNN
    monitor call's encoder. Returns (run_dir, initial state, per-step states, monitor calls,
    the encoder state at each monitor call)."""
    calls = {"states": [], "initial": None, "knn": [], "model": None}
    real_step, real_knn = loop_mod.train_step, loop_mod.knn_monitor

    def step_spy(model, *args, **kwargs):
        calls["model"] = model
        if calls["initial"] is None:
            calls["initial"] = clone_state(model.encoder)
        loss = real_step(model, *args, **kwargs)
        calls["states"].append(clone_state(model.encoder))
        return loss

    def knn_spy(encoder, *args, **kwargs):
        top1 = real_knn(encoder, *args, **kwargs)
        calls["knn"].append({"is_model_encoder": encoder is calls["model"].encoder,
                             "state": clone_state(encoder), "step": len(calls["states"]),
                             "top1": top1})
        return top1

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop_mod, "train_step", step_spy)
        mp.setattr(loop_mod, "knn_monitor", knn_spy)
        run_dir = run(fp32(mnist_root, **{"train.ema": DECAY, "eval.every": 1}),
                      tmp_path_factory.mktemp("ema") / "run")
    return run_dir, calls


def replay(initial: dict, states: list[dict], fold_fn=fold) -> dict:
    average = {k: v.clone() for k, v in initial.items()}
    for current in states:
        average = fold_fn(average, current, DECAY)
    return average


def test_exported_encoder_is_the_replayed_average(ema_run):
    run_dir, calls = ema_run
    assert len(calls["states"]) == STEPS
    tensors, meta = read_encoder(run_dir / "encoder.safetensors")
    by_hand = replay(calls["initial"], calls["states"])
    assert tensors.keys() == by_hand.keys()
    for k in tensors:
        torch.testing.assert_close(tensors[k], by_hand[k], rtol=1e-6, atol=1e-7, msg=k)
    # bit for bit the same fold with torch.lerp, the operation timm's ModelEmaV3 does
    assert_states_equal(tensors, replay(calls["initial"], calls["states"], fold_lerp))
    counts = [v.item() for k, v in tensors.items() if k.endswith("num_batches_tracked")]
    assert counts and set(counts) == {STEPS}  # copied from the encoder, not averaged
    assert meta["ema"] == DECAY and meta["step"] == STEPS


def test_checkpoint_holds_the_average_and_the_trained_encoder_apart(ema_run):
    run_dir, calls = ema_run
    tensors, _ = read_encoder(run_dir / "encoder.safetensors")
    saved = load_checkpoint(run_dir / "checkpoint.pt")
    assert_states_equal({k: v.cpu() for k, v in saved["average"].items()}, tensors)
    trained = {k[len("encoder."):]: v for k, v in saved["model"].items()
               if k.startswith("encoder.")}
    assert_states_equal(trained, calls["states"][-1])
    assert trained.keys() == tensors.keys()
    floats = [k for k in tensors if tensors[k].is_floating_point()]
    assert all(not torch.equal(tensors[k], trained[k]) for k in floats
               if not torch.equal(calls["initial"][k], trained[k]))
    assert any(not torch.equal(tensors[k], trained[k]) for k in floats)


def test_load_encoder_gives_the_average(ema_run):
    run_dir, calls = ema_run
    enc = load_encoder(run_dir)
    assert enc.meta["ema"] == DECAY
    assert_states_equal(clone_state(enc.encoder),
                        replay(calls["initial"], calls["states"], fold_lerp))


def test_eval_evaluates_the_average(ema_run):
    """``simclr eval``'s encoder (its model_sha256) is the exported average, not the encoder
    the optimizer trained."""
    run_dir, calls = ema_run
    report = evaluate(run_dir, protocols=["knn"], overrides=["eval.baselines=false"],
                      write=False, log=lambda *_: None)
    [row] = report["results"]
    enc = load_encoder(run_dir)
    average = NormalizedEncoder(build_encoder(enc.meta), enc.meta["mean"], enc.meta["std"],
                                enc.meta)
    average.encoder.load_state_dict(replay(calls["initial"], calls["states"], fold_lerp))
    trained = NormalizedEncoder(build_encoder(enc.meta), enc.meta["mean"], enc.meta["std"],
                                enc.meta)
    trained.encoder.load_state_dict(calls["states"][-1])
    assert row["model"] == "simclr"
    assert row["model_sha256"] == model_digest(enc) == model_digest(average)
    assert row["model_sha256"] != model_digest(trained)


def test_knn_monitor_measures_the_average(ema_run):
    run_dir, calls = ema_run
    assert [c["step"] for c in calls["knn"]] == [3, 6]  # eval.every=1: each epoch's end
    for call in calls["knn"]:
        assert not call["is_model_encoder"]
        assert_states_equal(call["state"],
                            replay(calls["initial"], calls["states"][:call["step"]], fold_lerp))
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(x["step"], x["knn_top1"]) for x in lines if x["kind"] == "knn"] == \
        [(c["step"], c["top1"]) for c in calls["knn"]]


def test_without_ema_the_export_is_the_trained_encoder(mnist_root, tmp_path):
    run_dir = run(fp32(mnist_root), tmp_path / "run")
    tensors, meta = read_encoder(run_dir / "encoder.safetensors")
    saved = load_checkpoint(run_dir / "checkpoint.pt")
    assert "ema" not in meta and "average" not in saved
    trained = {k[len("encoder."):]: v for k, v in saved["model"].items()
               if k.startswith("encoder.")}
    assert_states_equal(tensors, trained)


def test_monitor_without_ema_measures_the_model_encoder(mnist_root, tmp_path, monkeypatch):
    seen = []
    real_step, real_knn = loop_mod.train_step, loop_mod.knn_monitor

    def step_spy(model, *args, **kwargs):
        seen.append(model)
        return real_step(model, *args, **kwargs)

    def knn_spy(encoder, *args, **kwargs):
        assert encoder is seen[-1].encoder
        seen.append("knn")
        return real_knn(encoder, *args, **kwargs)

    monkeypatch.setattr(loop_mod, "train_step", step_spy)
    monkeypatch.setattr(loop_mod, "knn_monitor", knn_spy)
    run(fp32(mnist_root, **{"train.epochs": 1, "optim.warmup_epochs": 0.1, "eval.every": 1}),
        tmp_path / "run")
    assert seen.count("knn") == 1


# ---- resume ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ema_straight(mnist_root, tmp_path_factory):
    return run(fp32(mnist_root, **{"train.ema": DECAY}), tmp_path_factory.mktemp("s") / "run")


@pytest.mark.parametrize("stop_at,resume_with", [(4, {}), (3, {"train.max_steps": 5})],
                         ids=["mid-epoch-2", "after-epoch-1"])
def test_resume_with_ema_is_bit_exact(mnist_root, tmp_path, ema_straight, stop_at, resume_with):
    resumed = tmp_path / "resumed"
    run(fp32(mnist_root, **{"train.ema": DECAY, "train.max_steps": stop_at}), resumed)
    assert load_checkpoint(resumed / "checkpoint.pt")["step"] == stop_at
    if resume_with:  # a larger max_steps first, then the rest
        run(fp32(mnist_root, **{"train.ema": DECAY, **resume_with}), resumed)
        assert load_checkpoint(resumed / "checkpoint.pt")["step"] == resume_with["train.max_steps"]
    run(fp32(mnist_root, **{"train.ema": DECAY}), resumed)
    a, b = (read_encoder(d / "encoder.safetensors")[0] for d in (ema_straight, resumed))
    assert_states_equal(a, b)
    assert (ema_straight / "encoder.safetensors").read_bytes() == \
        (resumed / "encoder.safetensors").read_bytes()
    sa, sb = (load_checkpoint(d / "checkpoint.pt") for d in (ema_straight, resumed))
    assert sa["step"] == sb["step"] == STEPS
    assert_states_equal(sa["average"], sb["average"])
    assert_states_equal(sa["model"], sb["model"])


# ---- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "-0.1", "1.5"])
def test_bad_ema_is_one_line(mnist_root, tmp_path, value):
    out = tmp_path / "run"
    proc = cli("pretrain", "--run-dir", out, "--data.name=mnist", f"--data.root={mnist_root}",
               "--data.download=false", "--model.width=0.0625", f"--train.ema={value}")
    one_line_error(proc, "train.ema must be in [0, 1)")
    assert not out.exists()
