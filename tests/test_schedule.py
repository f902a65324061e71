"""The view-size schedule (augment.size_start / size_ramp / size_stages): size_scale against a
hand formula in exact arithmetic, the sizes the training loop makes, exact resume, the run's
FLOPs that ``simclr bench --images`` counts, and one-line config errors."""

import json
import math
from fractions import Fraction

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import simclr.train.loop as loop_mod
from simclr.augment.views import make_views, size_scale, view_groups
from simclr.config import build_config
from simclr.models.factory import build_model
from simclr.tools.bench import bench_one, run_tflop
from simclr.train.loss import multi_nt_xent, nt_xent
from simclr.train.rundir import load_checkpoint, read_encoder
from tests.helpers import cli, one_line_error
from tests.test_train import run, tiny

STEPS = 6  # tiny(): 96 images, batch 32, 2 epochs


def augment(start=1.0, ramp=(0.0, 1.0), stages=0, **extra):
    return build_config(overrides={"augment.size_start": start, "augment.size_ramp": list(ramp),
                                   "augment.size_stages": stages,
                                   **{f"augment.{k}": v for k, v in extra.items()}}).augment


def hand_scale(start, ramp, stages, step, total) -> Fraction:
    """The schedule in exact arithmetic (the decimal settings as written): the start until the
    ramp, then linear to 1 at its end; with n stages, stage k = floor(progress x n) of
    0 .. n - 1 takes start + (1 - start) x k / (n - 1)."""
    start, lo, hi = (Fraction(str(v)) for v in (start, *ramp))
    t = Fraction(step, total)
    if t <= lo:
        progress = Fraction(0)
    elif t >= hi:
        progress = Fraction(1)
    else:
        progress = (t - lo) / (hi - lo)
    if stages:
        progress = Fraction(min(stages - 1, math.floor(progress * stages)), stages - 1)
    return start + (1 - start) * progress


def on_a_stage_boundary(ramp, stages, step, total) -> bool:
    """Whether the step's exact progress x stages is a whole number inside the ramp (where a
    stage begins)."""
    lo, hi = (Fraction(str(v)) for v in ramp)
    t = Fraction(step, total)
    if not stages or not lo < t < hi:
        return False
    return ((t - lo) / (hi - lo) * stages).denominator == 1


STARTS = [0.25, 0.5, 0.3, 0.37, 0.9]
RAMPS = [(0.0, 1.0), (0.2, 0.8), (0.1, 0.5), (0.0, 0.3), (0.5, 1.0), (0.25, 0.75)]
STAGES = [0, 2, 3, 4]
TOTALS = [7, 60, 97, 100]


# ---- size_scale ------------------------------------------------------------------------------


def test_no_schedule_is_exactly_one():
    for cfg in (augment(), augment(1.0, (0.2, 0.8), 3)):
        for total in (1, 10, 97):
            for step in range(total + 2):
                s = size_scale(cfg, step, total)
                assert s == 1.0 and isinstance(s, float)


@pytest.mark.parametrize("stages", STAGES)
@pytest.mark.parametrize("ramp", RAMPS, ids=str)
def test_size_scale_is_the_hand_formula(ramp, stages):
    for start in STARTS:
        cfg = augment(start, ramp, stages)
        for total in TOTALS:
            for step in range(total + 1):
                got, want = size_scale(cfg, step, total), hand_scale(start, ramp, stages, step,
                                                                      total)
                if on_a_stage_boundary(ramp, stages, step, total):
                    # float rounding may place the switch one step late here (see
                    # test_stages_switch_exactly_on_their_boundary): either neighbour
                    k = Fraction(stages - 1)
                    below = want - (1 - Fraction(str(start))) / k
                    assert min(abs(got - float(want)), abs(got - float(below))) < 1e-12, (
                        start, total, step)
                else:
                    assert got == pytest.approx(float(want), abs=1e-12), (start, total, step)


@pytest.mark.parametrize("stages", STAGES)
@pytest.mark.parametrize("ramp", RAMPS, ids=str)
def test_size_scale_properties(ramp, stages):
    lo, hi = ramp
    for start in STARTS:
        cfg = augment(start, ramp, stages)
        for total in TOTALS:
            values = [size_scale(cfg, step, total) for step in range(total + 1)]
            assert all(a <= b for a, b in zip(values, values[1:], strict=False)), values
            for step, v in enumerate(values):
                if step <= lo * total:
                    assert v == start, (start, total, step)  # the start until the ramp
                if step >= hi * total:
                    assert v == 1.0, (start, total, step)  # exactly full size from its end
            assert size_scale(cfg, total + 5, total) == 1.0
            if stages and (hi - lo) * total >= stages:  # a step in every stage: exactly the
                # n stage values over the run, the first and the last included
                seen = set(values[:total])
                assert len(seen) == stages and min(seen) == start and max(seen) == 1.0, (
                    start, total, sorted(seen))
                want = [float(Fraction(str(start)) + (1 - Fraction(str(start))) *
                              Fraction(k, stages - 1)) for k in range(stages)]
                assert sorted(seen) == pytest.approx(want, abs=1e-12)
            assert values[0] == start and values[-1] == 1.0


def test_stages_switch_exactly_on_their_boundary():
    """Step 5 of 10 on the ramp 0.2-0.8 is exactly half way: the second of 2 stages starts
    there (in floats the progress lands just below 1/2 and the stage would start a step late)."""
    cfg = augment(0.25, (0.2, 0.8), 2)
    assert [size_scale(cfg, s, 10) for s in range(10)] == [0.25] * 5 + [1.0] * 5


# ---- view sizes ------------------------------------------------------------------------------


def test_view_groups_scale_every_side_and_keep_the_crop_scales():
    cfg = augment(views=[[2, 1], [4, 0.5, 0.05, 0.4], [2, 20]], crop_scale=[0.2, 1.0])
    assert view_groups(cfg, (28, 28)) == view_groups(cfg, (28, 28), 1.0) == [
        (2, (28, 28), (0.2, 1.0)), (4, (14, 14), (0.05, 0.4)), (2, (20, 20), (0.2, 1.0))]
    assert view_groups(cfg, (28, 28), 0.5) == [
        (2, (14, 14), (0.2, 1.0)), (4, (7, 7), (0.05, 0.4)), (2, (10, 10), (0.2, 1.0))]
    # rounded to whole pixels: 28 x 0.55 = 15.4, 14 x 0.55 = 7.7, 20 x 0.55 = 11
    assert [g[1] for g in view_groups(cfg, (28, 28), 0.55)] == [(15, 15), (8, 8), (11, 11)]
    assert [g[1] for g in view_groups(cfg, (28, 40), 0.5)] == [(14, 20), (7, 10), (10, 10)]
    assert [g[1] for g in view_groups(cfg, (28, 28), 0.01)] == [(1, 1)] * 3  # at least 1


def test_make_views_at_a_scale():
    cfg = build_config(overrides={"data.name": "mnist",
                                  "augment.views": [[2, 1], [4, 0.5, 0.05, 0.4]]}).augment
    x = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0))
    views = make_views(x, cfg, [0.5], [0.25], torch.Generator().manual_seed(1), 0.75)
    assert [tuple(v.shape) for v in views] == [(6, 1, 21, 21), (12, 1, 10, 10)]  # 10.5 -> 10
    full = make_views(x, cfg, [0.5], [0.25], torch.Generator().manual_seed(1))
    assert [tuple(v.shape) for v in full] == [(6, 1, 28, 28), (12, 1, 14, 14)]


def spy_the_loop(monkeypatch):
    """Per step: the scale the loop passes to make_views and the sides train_step gets."""
    seen = {"scale": [], "sides": []}
    real_views, real_step = loop_mod.make_views, loop_mod.train_step

    def views_spy(x, cfg, mean, std, generator, scale=1.0):
        seen["scale"].append(scale)
        return real_views(x, cfg, mean, std, generator, scale)

    def step_spy(model, optimizer, scaler, views, *args, **kwargs):
        views = views if isinstance(views, list) else [views]
        seen["sides"].append([tuple(v.shape[-2:]) for v in views])
        return real_step(model, optimizer, scaler, views[0] if len(views) == 1 else views,
                         *args, **kwargs)

    monkeypatch.setattr(loop_mod, "make_views", views_spy)
    monkeypatch.setattr(loop_mod, "train_step", step_spy)
    return seen


@pytest.mark.parametrize("ramp,stages", [((0.0, 1.0), 0), ((0.0, 0.5), 0), ((0.2, 1.0), 3)],
                         ids=["whole-run", "first-half", "3-stages"])
def test_the_loop_trains_each_step_at_its_size(mnist_root, tmp_path, monkeypatch, ramp, stages):
    seen = spy_the_loop(monkeypatch)
    cfg = tiny(mnist_root, **{"augment.views": [[2, 20]], "augment.size_start": 0.5,
                              "augment.size_ramp": list(ramp), "augment.size_stages": stages,
                              "eval.every": 0, "train.precision": "fp32"})
    run_dir = run(cfg, tmp_path / "run")
    want = [hand_scale(0.5, ramp, stages, s, STEPS) for s in range(STEPS)]
    assert seen["scale"] == pytest.approx([float(w) for w in want], abs=1e-12)
    # 2 views of each of the 32 images, each side round(20 x scale): 10 px at the start
    assert seen["sides"] == [[(round(20 * w), round(20 * w))] for w in want]
    assert seen["sides"][0] == [(10, 10)] and len({s[0] for s in seen["sides"]}) > 1
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == STEPS


def test_the_loop_scales_every_view_group(mnist_root, tmp_path, monkeypatch):
    seen = spy_the_loop(monkeypatch)
    cfg = tiny(mnist_root, **{"augment.views": [[2, 1], [4, 0.5, 0.05, 0.4]],
                              "augment.size_start": 0.5, "eval.every": 0,
                              "train.precision": "fp32"})
    run(cfg, tmp_path / "run")
    want = [hand_scale(0.5, (0, 1), 0, s, STEPS) for s in range(STEPS)]
    assert seen["sides"] == [[(round(28 * w),) * 2, (round(14 * w),) * 2] for w in want]


def test_without_a_schedule_the_loop_keeps_the_sizes(mnist_root, tmp_path, monkeypatch):
    seen = spy_the_loop(monkeypatch)
    run(tiny(mnist_root, **{"eval.every": 0, "train.epochs": 1, "optim.warmup_epochs": 0.1}),
        tmp_path / "run")
    assert seen["scale"] == [1.0] * 3 and seen["sides"] == [[(28, 28)]] * 3


# ---- resume ----------------------------------------------------------------------------------


SCHEDULE = {"augment.size_start": 0.5, "augment.size_ramp": [0.0, 0.9], "eval.every": 0,
            "train.precision": "fp32"}


@pytest.fixture(scope="module")
def scheduled_straight(mnist_root, tmp_path_factory):
    return run(tiny(mnist_root, **SCHEDULE), tmp_path_factory.mktemp("straight") / "run")


@pytest.mark.parametrize("stop_at", [4, 3], ids=["mid-epoch-2", "after-epoch-1"])
def test_a_scheduled_run_resumes_exactly(mnist_root, tmp_path, scheduled_straight, stop_at):
    resumed = tmp_path / "resumed"
    run(tiny(mnist_root, **SCHEDULE, **{"train.max_steps": stop_at}), resumed)
    assert load_checkpoint(resumed / "checkpoint.pt")["step"] == stop_at
    run(tiny(mnist_root, **SCHEDULE), resumed)
    a, b = (read_encoder(d / "encoder.safetensors")[0] for d in (scheduled_straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = (load_checkpoint(d / "checkpoint.pt") for d in (scheduled_straight, resumed))
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])


# ---- FLOPs of a run --------------------------------------------------------------------------


TINY = {"data.name": "mnist", "model.width": 0.0625, "model.proj_dim": 8,
        "train.batch_size": 8, "train.precision": "fp32", "train.epochs": 2}
N_IMAGES = 40  # 5 steps an epoch, 10 steps


def step_flops(cfg, sides) -> int:
    """FLOPs of one step (forward of 2B views per group, the loss, backward) at these sides,
    counted here: the model on random views, NT-Xent (one group) or the multi-positive loss."""
    model = build_model(cfg.model, 1, 28)
    b = cfg.train.batch_size
    counts = [int(g[0]) for g in cfg.augment.views]
    counter = FlopCounterMode(display=False)
    with counter:
        xs = [torch.rand(n * b, 1, s, s) for n, s in zip(counts, sides, strict=True)]
        _, z = model(xs[0] if len(xs) == 1 else xs)
        loss = nt_xent(z[:b], z[b:], 0.5) if counts == [2] else multi_nt_xent(z, sum(counts), 0.5)
        loss.backward()
    return counter.get_total_flops()


def test_run_tflop_without_a_schedule_is_steps_times_a_step():
    cfg = build_config(overrides=TINY)
    tflop, steps = run_tflop(cfg, N_IMAGES)
    row = bench_one(cfg, steps=1, warmup=1, windows=1)
    assert steps == 10
    assert tflop == pytest.approx(steps * row["gflop_per_step"] / 1000, rel=1e-9)
    assert tflop == pytest.approx(steps * step_flops(cfg, [28]) / 1e12, rel=1e-9)


@pytest.mark.parametrize("extra", [{}, {"train.max_steps": 4},
                                   {"augment.size_ramp": [0.2, 0.6], "augment.size_stages": 3},
                                   {"augment.views": [[2, 1], [4, 0.5, 0.05, 0.4]]}],
                         ids=["whole-run", "max-steps", "3-stages", "two-groups"])
def test_run_tflop_counts_each_step_at_its_size(extra):
    cfg = build_config(overrides={**TINY, "augment.size_start": 0.5, **extra})
    tflop, steps = run_tflop(cfg, N_IMAGES)
    total = 10  # the schedule runs over the whole run, also when max_steps stops it early
    assert steps == min(total, cfg.train.max_steps or total)
    ramp, stages = tuple(cfg.augment.size_ramp), cfg.augment.size_stages
    bases = [28 * float(g[1]) if float(g[1]) <= 1 else float(g[1]) for g in cfg.augment.views]
    cache: dict = {}
    flops = 0
    for step in range(steps):
        scale = hand_scale(0.5, ramp, stages, step, total)
        sides = tuple(max(1, round(b * scale)) for b in bases)
        if sides not in cache:
            cache[sides] = step_flops(cfg, sides)
        flops += cache[sides]
    assert len(cache) > 1  # the sizes did change within the run
    assert tflop == pytest.approx(flops / 1e12, rel=1e-9)
    plain, plain_steps = run_tflop(build_config(overrides={**TINY, **extra}), N_IMAGES)
    assert plain_steps == steps and tflop < plain


def test_bench_images_prints_and_records_the_run_tflop(tmp_path):
    args = {**TINY, "augment.size_start": 0.5}
    out = tmp_path / "bench.json"
    proc = cli("bench", "--steps=1", "--windows=1", "--warmup=1", f"--images={N_IMAGES}",
               "--json", out, *[f"--{k}={v}" for k, v in args.items()])
    assert proc.returncode == 0, proc.stderr
    tflop, steps = run_tflop(build_config(overrides=args), N_IMAGES)
    assert f"a run on {N_IMAGES} images: {steps} steps, {tflop:.1f} TFLOP" in proc.stdout
    [row] = json.loads(out.read_text())["rows"]
    assert row["run_images"] == N_IMAGES and row["run_steps"] == steps == 10
    assert row["run_tflop"] == pytest.approx(tflop, rel=1e-9)


# ---- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize("arg,fragment", [
    ("--augment.size_start=0", "augment.size_start must be in (0, 1]"),
    ("--augment.size_start=1.5", "augment.size_start must be in (0, 1]"),
    ("--augment.size_start=-0.5", "augment.size_start must be in (0, 1]"),
    ("--augment.size_ramp=0.8,0.2", "augment.size_ramp must be two fractions of the run"),
    ("--augment.size_ramp=0.5,0.5", "augment.size_ramp must be two fractions of the run"),
    ("--augment.size_ramp=-0.1,0.5", "augment.size_ramp must be two fractions of the run"),
    ("--augment.size_ramp=0.2,1.5", "augment.size_ramp must be two fractions of the run"),
    ("--augment.size_stages=1", "augment.size_stages must be 0 (pixel by pixel) or >= 2"),
    ("--augment.size_stages=-2", "augment.size_stages must be 0 (pixel by pixel) or >= 2"),
])
def test_bad_schedule_is_one_line(mnist_root, tmp_path, arg, fragment):
    out = tmp_path / "run"
    proc = cli("pretrain", "--run-dir", out, "--data.name=mnist", f"--data.root={mnist_root}",
               "--data.download=false", "--model.width=0.0625", arg)
    one_line_error(proc, fragment)
    assert not out.exists()


def test_a_valid_schedule_is_accepted():
    cfg = build_config(overrides={"augment.size_start": 0.25, "augment.size_ramp": [0, 1],
                                  "augment.size_stages": 2})
    assert cfg.augment.size_start == 0.25 and tuple(cfg.augment.size_ramp) == (0.0, 1.0)
