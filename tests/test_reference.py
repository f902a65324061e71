"""The official presets take google-research/simclr's (tf2) step.

The reference below is written from the tf2 code's rules (``objective.py``,
``lars_optimizer.py``, ``model.py``, ``resnet.py``, ``run.py``), not from our modules: its own
forward pass over tf-named variables, its own loss with ``LARGE_NUM`` masking, its own LARS
excluding variables by name, its own schedule. Our preset is built by our code path (config ->
build_model -> build_optimizer -> train_step with the loop's lr). Same initial weights (copied),
same fixed views, float64; the parameters after 3 steps must agree.
"""

import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from simclr.augment.crop import _bicubic_boxes
from simclr.config import build_config
from simclr.data.datasets import load_split
from simclr.evaluation.encoder import load_encoder
from simclr.evaluation.protocols import linear_sgd
from simclr.models.factory import build_model
from simclr.models.head import ScaleOnlyBatchNorm1d
from simclr.models.resnet import ResNet
from simclr.train.optim import build_optimizer, lr_at, scaled_lr, set_lr, step_counts
from simclr.train.pretrain import pretrain
from simclr.train.rundir import METRICS
from simclr.train.step import train_step
from tests.formats import write_cifar10_python

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "cifar10_resnet18_lars.yaml"
N_CIFAR10 = 50_000
TINY = {"model.width": 0.0625, "train.device": "cpu", "train.precision": "fp32"}

# ---------------------------------------------------------------- the reference (tf2 rules)

LARGE_NUM = 1e9
BN_EPS = 1e-5  # resnet.py BATCH_NORM_EPSILON
EETA = 1e-3
# The reference README's CIFAR-10 command, then the tf2 run.py defaults it leaves in force.
REF = {"train_batch_size": 512, "train_epochs": 1000, "learning_rate": 1.0, "weight_decay": 1e-4,
       "temperature": 0.5, "dataset": "cifar10", "image_size": 32, "resnet_depth": 18,
       "use_blur": False, "color_jitter_strength": 0.5,
       "learning_rate_scaling": "linear", "warmup_epochs": 10, "optimizer": "lars",
       "momentum": 0.9, "width_multiplier": 1, "proj_head_mode": "nonlinear",
       "num_proj_layers": 3, "proj_out_dim": 128, "hidden_norm": True, "global_bn": True}


def ref_lr(step, base_lr, n, batch, epochs, warmup_epochs, scaling):
    """model.py WarmUpAndCosineDecay with get_train_steps."""
    warmup = int(round(warmup_epochs * n // batch))
    scaled = base_lr * batch / 256.0 if scaling == "linear" else base_lr * math.sqrt(batch)
    lr = step / float(warmup) * scaled if warmup else scaled
    total = n * epochs // batch + 1
    decay = total - warmup
    cosine = scaled * 0.5 * (1 + math.cos(math.pi * min(step - warmup, decay) / decay))
    return lr if step < warmup else cosine


def ref_contrastive_loss(hidden, temperature):
    """objective.py add_contrastive_loss, one replica."""
    hidden = hidden / hidden.pow(2).sum(-1, keepdim=True).clamp_min(1e-12).sqrt()
    h1, h2 = hidden.chunk(2)
    n = h1.shape[0]
    labels = F.one_hot(torch.arange(n), 2 * n).to(hidden.dtype)
    masks = F.one_hot(torch.arange(n), n).to(hidden.dtype)
    aa = h1 @ h1.T / temperature - masks * LARGE_NUM
    bb = h2 @ h2.T / temperature - masks * LARGE_NUM
    ab = h1 @ h2.T / temperature
    ba = h2 @ h1.T / temperature

    def xent(logits):
        return -(labels * torch.log_softmax(logits, 1)).sum(1)

    return (xent(torch.cat([ab, aa], 1)) + xent(torch.cat([ba, bb], 1))).mean()


def ref_variables(widths, depths, in_ch, head_layers, proj_dim):
    """Name -> shape of every trainable variable of tf2 resnet(18) + ProjectionHead, in torch
    layout (OIHW kernels, out x in dense kernels). Names carry tf's layer words, so LARS's
    name-based exclusion applies to them as written."""
    v = {"initial_conv/kernel": (widths[0], in_ch, 3, 3),
         "initial_bn/batch_normalization/gamma": (widths[0],),
         "initial_bn/batch_normalization/beta": (widths[0],)}
    c_in = widths[0]
    for g, (c, depth) in enumerate(zip(widths, depths, strict=True), 1):
        for b in range(depth):
            p = f"block_group{g}/block{b}/"
            if b == 0:  # BlockGroup: use_projection=True for the first block, always
                v[p + "projection/kernel"] = (c, c_in, 1, 1)
                v[p + "projection_bn/batch_normalization/gamma"] = (c,)
                v[p + "projection_bn/batch_normalization/beta"] = (c,)
            v[p + "conv1/kernel"] = (c, c_in if b == 0 else c, 3, 3)
            v[p + "bn1/batch_normalization/gamma"] = (c,)
            v[p + "bn1/batch_normalization/beta"] = (c,)
            v[p + "conv2/kernel"] = (c, c, 3, 3)
            v[p + "bn2/batch_normalization/gamma"] = (c,)
            v[p + "bn2/batch_normalization/beta"] = (c,)
        c_in = c
    dim = c_in
    for j in range(head_layers):  # LinearLayer(use_bn=True): dense without bias, then BN
        out = dim if j < head_layers - 1 else proj_dim
        v[f"head/nl_{j}/dense/kernel"] = (out, dim)
        v[f"head/nl_{j}/batch_normalization/gamma"] = (out,)
        if j < head_layers - 1:  # the last BN has center=False: no beta
            v[f"head/nl_{j}/batch_normalization/beta"] = (out,)
        dim = out
    return v


def ref_forward(p, x, depths, head_layers):
    """tf2 Resnet(cifar_stem=True) + ProjectionHead(nonlinear), training mode (batch stats)."""

    def bn(t, name, relu, center=True):
        dims = [0] + list(range(2, t.dim()))
        mean = t.mean(dims, keepdim=True)
        var = t.var(dims, unbiased=False, keepdim=True)
        shape = [1, -1] + [1] * (t.dim() - 2)
        t = (t - mean) / torch.sqrt(var + BN_EPS) * p[name + "/gamma"].view(shape)
        if center:
            t = t + p[name + "/beta"].view(shape)
        return torch.relu(t) if relu else t

    def conv(t, name, stride):  # Conv2dFixedPadding: SAME at stride 1, fixed pad + VALID at 2
        k = p[name].shape[-1]
        return F.conv2d(t, p[name], stride=stride, padding=(k - 1) // 2)

    x = bn(conv(x, "initial_conv/kernel", 1), "initial_bn/batch_normalization", relu=True)
    for g, depth in enumerate(depths, 1):
        for b in range(depth):
            q = f"block_group{g}/block{b}/"
            stride = 2 if (g > 1 and b == 0) else 1
            shortcut = x
            if b == 0:
                shortcut = bn(conv(x, q + "projection/kernel", stride),
                              q + "projection_bn/batch_normalization", relu=False)
            out = bn(conv(x, q + "conv1/kernel", stride), q + "bn1/batch_normalization", True)
            out = bn(conv(out, q + "conv2/kernel", 1), q + "bn2/batch_normalization", False)
            x = torch.relu(out + shortcut)
    h = x.mean((2, 3))
    for j in range(head_layers):
        last = j == head_layers - 1
        h = h @ p[f"head/nl_{j}/dense/kernel"].T
        h = bn(h, f"head/nl_{j}/batch_normalization", relu=not last, center=not last)
    return h


def ref_lars_step(params, grads, momenta, lr, weight_decay, momentum=0.9):
    """lars_optimizer.py, classic momentum, exclude_from_weight_decay (and from adaptation)
    ['batch_normalization', 'bias']."""
    for name, w in params.items():
        excluded = any(re.search(r, name) for r in ("batch_normalization", "bias"))
        g = grads[name]
        if not excluded:
            g = g + weight_decay * w
        trust = 1.0
        if not excluded:
            w_norm, g_norm = float(w.norm()), float(g.norm())
            trust = EETA * w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0
        momenta[name] = momentum * momenta[name] + lr * trust * g
        params[name] = w - momenta[name]


def tf_name(ours: str) -> str:
    """Our parameter name -> the reference variable it must equal."""
    m = re.fullmatch(r"encoder\.stem\.(\d)\.(weight|bias)", ours)
    if m:
        return ("initial_conv/kernel" if m[1] == "0" else
                f"initial_bn/batch_normalization/{'gamma' if m[2] == 'weight' else 'beta'}")
    m = re.fullmatch(r"encoder\.stages\.(\d)\.(\d)\.(\w+?)(?:\.(\d))?\.(weight|bias)", ours)
    if m:
        stage, block, layer, idx, kind = m.groups()
        p = f"block_group{int(stage) + 1}/block{block}/"
        bn_var = "gamma" if kind == "weight" else "beta"
        if layer == "shortcut":
            return p + ("projection/kernel" if idx == "0" else
                        f"projection_bn/batch_normalization/{bn_var}")
        if layer.startswith("conv"):
            return p + f"{layer}/kernel"
        return p + f"{layer}/batch_normalization/{bn_var}"
    m = re.fullmatch(r"head\.net\.(\d+)\.(weight|bias)", ours)
    if m:
        k, kind = int(m[1]), m[2]
        j = k // 3  # [Linear, BN, ReLU] x layers
        if k % 3 == 0:
            return f"head/nl_{j}/dense/{'kernel' if kind == 'weight' else 'bias'}"
        return f"head/nl_{j}/batch_normalization/{'gamma' if kind == 'weight' else 'beta'}"
    raise AssertionError(f"unmapped parameter {ours}")


def _preset_model(**extra):
    cfg = build_config(PRESET, overrides={**TINY, **extra})
    torch.manual_seed(0)
    return cfg, build_model(cfg.model, 3, 16).double()


# ---------------------------------------------------------------- structure and init


def test_preset_model_has_exactly_the_reference_variables():
    cfg, model = _preset_model()
    widths = [4, 8, 16, 32]  # 64-128-256-512 x 1/16
    want = ref_variables(widths, (2, 2, 2, 2), 3, 3, 128)
    got = {tf_name(n): tuple(p.shape) for n, p in model.named_parameters()}
    assert got == want


def test_preset_zero_inits_every_blocks_last_batchnorm():
    _, model = _preset_model()
    for stage in model.encoder.stages:
        for block in stage:
            assert torch.equal(block.bn2.weight, torch.zeros_like(block.bn2.weight))
            assert torch.equal(block.bn1.weight, torch.ones_like(block.bn1.weight))
    assert isinstance(model.head.net[-1], ScaleOnlyBatchNorm1d)
    assert model.head.net[-1].bias is None


def test_reference_init_is_variance_scaling_and_normal_001():
    torch.manual_seed(0)
    enc = ResNet("resnet18", 1.0, "cifar", 3, init="reference")
    w = enc.stages[3][1].conv2.weight.detach()  # 512 x 512 x 3 x 3: fan_in 4608
    std = math.sqrt(1 / 4608)
    assert float(w.std()) == pytest.approx(std, rel=0.01)  # truncation keeps std = sqrt(1/fan_in)
    assert float(w.abs().max()) <= 2 * std / 0.87962566103423978 + 1e-7
    _, model = _preset_model()
    head_w = model.head.net[0].weight.detach()
    assert float(head_w.std()) == pytest.approx(0.01, rel=0.15)
    # every head linear layer is N(0, 0.01^2), untruncated: pool their weights and test the
    # mean, std and the tail beyond 2 sigma to ~4 standard errors of the sample size
    ws = torch.cat([m.weight.detach().flatten() for m in model.head.net
                    if isinstance(m, torch.nn.Linear)]).double()
    n = ws.numel()
    assert n == 32 * 32 + 32 * 32 + 32 * 128
    assert abs(float(ws.mean())) <= 4 * 0.01 / math.sqrt(n)
    se_std = 0.01 / math.sqrt(2 * (n - 1))  # std error of a normal sample's std
    assert abs(float(ws.std()) - 0.01) <= 4 * se_std  # a 2-sigma truncation has std 0.0088
    p_tail = math.erfc(2 / math.sqrt(2))  # P(|w| > 2 sigma) = 4.55% for a normal
    tail = float((ws.abs() > 2 * 0.01).double().mean())
    assert tail > 0.02  # a normal truncated at +-2 sigma has no tail at all
    assert abs(tail - p_tail) <= 4 * math.sqrt(p_tail * (1 - p_tail) / n)


def test_preset_sets_every_flag_of_the_reference_command():
    cfg = build_config(PRESET)
    ours = {"train_batch_size": cfg.train.batch_size, "train_epochs": cfg.train.epochs,
            "learning_rate": cfg.optim.lr, "weight_decay": cfg.optim.weight_decay,
            "temperature": cfg.loss.temperature, "dataset": cfg.data.name,
            "image_size": 32 if cfg.model.stem == "cifar" else None,  # 32 px <=> cifar stem
            "resnet_depth": int(cfg.model.arch.removeprefix("resnet")),
            "use_blur": cfg.augment.blur_p != 0.0,
            "color_jitter_strength": cfg.augment.jitter_strength,
            "learning_rate_scaling": cfg.optim.lr_scaling,
            "warmup_epochs": cfg.optim.warmup_epochs, "optimizer": cfg.optim.name,
            "momentum": cfg.optim.momentum, "width_multiplier": cfg.model.width,
            "proj_head_mode": "nonlinear" if cfg.model.proj_layers > 1 else "linear",
            "num_proj_layers": cfg.model.proj_layers, "proj_out_dim": cfg.model.proj_dim,
            "hidden_norm": True, "global_bn": cfg.model.sync_bn}
    assert ours == REF
    assert cfg.optim.eta == EETA and cfg.optim.nesterov is False  # LARS defaults
    assert (cfg.augment.crop_scale, cfg.augment.flip_p, cfg.augment.jitter_p,
            cfg.augment.gray_p) == ((0.08, 1.0), 0.5, 0.8, 0.2)  # data_util.py


# ---------------------------------------------------------------- rules


def test_sqrt_rule_is_the_reference_rule():
    assert scaled_lr(0.075, 4096, "sqrt") == pytest.approx(4.8, rel=1e-12)
    assert scaled_lr(1.0, 512, "linear") == 2.0


@pytest.mark.parametrize("epochs,total", [(100, 9766), (1000, 97657)])
def test_step_counts_are_the_references_for_cifar10(epochs, total):
    assert step_counts(N_CIFAR10, 512, epochs, 10, "reference") == (total, 976)
    assert step_counts(N_CIFAR10, 512, epochs, 10, "epochs") == (epochs * 97, 970)


def _ref_lr(step: int) -> float:
    return ref_lr(step, REF["learning_rate"], N_CIFAR10, REF["train_batch_size"],
                  REF["train_epochs"], REF["warmup_epochs"], REF["learning_rate_scaling"])


def test_lr_schedule_equals_the_references_at_every_step_boundary():
    cfg = build_config(PRESET)
    o, t = cfg.optim, cfg.train
    total, warmup = step_counts(N_CIFAR10, t.batch_size, t.epochs, o.warmup_epochs, t.step_rule)
    peak = scaled_lr(o.lr, t.batch_size, o.lr_scaling)
    for step in [0, 1, 500, warmup - 1, warmup, warmup + 1, total // 2, total - 1, total]:
        want = _ref_lr(step)
        assert lr_at(step, peak, warmup, total) == pytest.approx(want, rel=1e-12, abs=1e-15)


# ---------------------------------------------------------------- the step


@pytest.mark.parametrize("first_step", [0, 975])  # warmup (lr 0 first), then across the peak
def test_three_preset_steps_equal_the_references(first_step):
    cfg, model = _preset_model()
    depths = (2, 2, 2, 2)
    params = {tf_name(n): p.detach().clone() for n, p in model.named_parameters()}
    start = {k: v.clone() for k, v in params.items()}
    opt = build_optimizer(model, cfg.optim)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    o, t = cfg.optim, cfg.train
    total, warmup = step_counts(N_CIFAR10, t.batch_size, t.epochs, o.warmup_epochs, t.step_rule)
    peak = scaled_lr(o.lr, t.batch_size, o.lr_scaling)
    g = torch.Generator().manual_seed(1)
    views = torch.randn(16, 3, 16, 16, generator=g, dtype=torch.float64)  # 8 images x 2 views
    momenta = {k: torch.zeros_like(v) for k, v in params.items()}
    for step in range(first_step, first_step + 3):
        set_lr(opt, lr_at(step, peak, warmup, total))
        logged = train_step(model, opt, scaler, views, cfg, torch.device("cpu"), "fp32")
        leaves = {k: v.requires_grad_() for k, v in params.items()}
        loss = ref_contrastive_loss(ref_forward(leaves, views, depths, 3), REF["temperature"])
        grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))
        params = {k: v.detach() for k, v in leaves.items()}
        ref_lars_step(params, grads, momenta, _ref_lr(step), REF["weight_decay"],
                      REF["momentum"])
        # the logged loss is the per-view mean: half the reference's objective
        assert float(logged) == pytest.approx(float(loss.detach()) / 2, rel=1e-12)
    ours = {tf_name(n): p.detach() for n, p in model.named_parameters()}
    moved = 0
    for name, w in ours.items():
        torch.testing.assert_close(w, params[name], rtol=0, atol=1e-8, msg=name)
        delta, ref_delta = w - start[name], params[name] - start[name]
        torch.testing.assert_close(delta, ref_delta, rtol=1e-6, atol=1e-12, msg=name)
        moved += bool(ref_delta.abs().max() > 0)
    assert moved == len(ours)  # every variable took a real step


def test_loop_runs_the_references_step_count_and_lr(tmp_path):
    """The training loop itself: N x E // B + 1 steps with the reference's lr at each."""
    write_cifar10_python(tmp_path / "data", 26)  # 130 train images
    cfg = build_config(PRESET, overrides={
        **TINY, "data.root": str(tmp_path / "data"), "data.download": False,
        "train.batch_size": 32, "train.epochs": 2, "optim.warmup_epochs": 1,
        "train.log_every": 1, "train.progress": False, "eval.every": 0, "model.proj_dim": 16})
    run = pretrain(cfg, tmp_path / "run", log=lambda *_: None)
    rows = [r for r in map(json.loads, (run / METRICS).read_text().splitlines())
            if r["kind"] == "window"]
    total = 130 * 2 // 32 + 1  # 9, where 2 epochs of 130 // 32 batches would be 8
    assert [r["step"] for r in rows] == list(range(1, total + 1))
    for r in rows:  # the lr of the step that row ends
        assert r["lr"] == pytest.approx(ref_lr(r["step"] - 1, 1.0, 130, 32, 2, 1, "linear"),
                                        rel=1e-12, abs=1e-15)


# ---------------------------------------------------------------- crop and linear eval


def _keys(d, a=-0.5):
    d = abs(d)
    if d <= 1:
        return ((a + 2) * d - (a + 3)) * d * d + 1
    return a * d ** 3 - 5 * a * d * d + 8 * a * d - 4 * a if d < 2 else 0.0


def _tf_resize_bicubic(img, oh, ow):
    """tf.image.resize(BICUBIC): half-pixel centres, Keys a=-0.5, out-of-image taps weighted 0
    and the rest renormalized (resize_bicubic_op.cc), with exact (not tabled) weights."""
    _, h, w = img.shape

    def taps(o, n_in, n_out):
        f = (o + 0.5) * n_in / n_out - 0.5
        idx = [math.floor(f) + d for d in (-1, 0, 1, 2)]
        wts = [_keys(f - i) if 0 <= i < n_in else 0.0 for i in idx]
        return [min(max(i, 0), n_in - 1) for i in idx], [v / sum(wts) for v in wts]

    out = torch.zeros(img.shape[0], oh, ow, dtype=torch.float64)
    for i in range(oh):
        ri, rw = taps(i, h, oh)
        for j in range(ow):
            ci, cw = taps(j, w, ow)
            out[:, i, j] = sum(a * b * img[:, y, x] for a, y in zip(rw, ri, strict=True)
                               for b, x in zip(cw, ci, strict=True))
    return out


def test_bicubic_crop_is_tfs_crop_and_resize():
    """data_util.py crop_and_resize: crop_to_bounding_box, then resize bicubically."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 12, 10, generator=g)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 12.0], [2.0, 3.0, 5.0, 4.0], [4.0, 1.0, 6.0, 9.0],
                          [1.0, 5.0, 9.0, 2.0]])  # x0, y0, w, h (integer, as tf's boxes)
    flip = torch.tensor([False, True, False, True])
    got = _bicubic_boxes(x, boxes, (8, 7), flip).double()
    for b in range(4):
        x0, y0, w, h = (int(v) for v in boxes[b])
        want = _tf_resize_bicubic(x[b, :, y0:y0 + h, x0:x0 + w].double(), 8, 7).clamp(0, 1)
        want = want.flip(-1) if flip[b] else want
        torch.testing.assert_close(got[b], want, rtol=0, atol=1e-6)


def ref_linear_sgd(x, y, xt, yt, epochs: int, batch: int, lr: float, seed: int,
                   classes: int) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """Keras SGD(nesterov=True) on zero-init logits, float64: v = m v - lr g; w += m v - lr g,
    lr from the cosine over N x E // B + 1 steps, batches from an endless stream of seeded
    epoch permutations. Returns (weight, bias, test top-1, steps)."""
    n, d = x.shape
    total = n * epochs // batch + 1
    w, b = torch.zeros(classes, d, dtype=torch.float64), torch.zeros(classes, dtype=torch.float64)
    vw, vb = torch.zeros_like(w), torch.zeros_like(b)
    perm_g = torch.Generator().manual_seed(seed)
    stream = torch.cat([torch.randperm(n, generator=perm_g) for _ in range(epochs + 1)])
    peak = lr * batch / 256
    for step in range(total):
        idx = stream[step * batch:(step + 1) * batch]
        xb, yb = x[idx].double(), y[idx]
        p = torch.softmax(xb @ w.T + b, 1) - F.one_hot(yb, classes).double()
        gw, gb = p.T @ xb / batch, p.sum(0) / batch
        step_lr = peak * 0.5 * (1 + math.cos(math.pi * step / total))
        vw, vb = 0.9 * vw - step_lr * gw, 0.9 * vb - step_lr * gb
        w, b = w + 0.9 * vw - step_lr * gw, b + 0.9 * vb - step_lr * gb
    top1 = ((xt.double() @ w.T + b).argmax(1) == yt).double().mean().item()
    return w, b, top1, total


def test_linear_sgd_is_tfs_nesterov_momentum_on_zero_init_logits():
    g = torch.Generator().manual_seed(0)
    n, d, classes, batch, epochs = 200, 6, 3, 64, 2
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    xt = torch.randn(50, d, generator=g)
    yt = torch.randint(0, classes, (50,), generator=g)
    got = linear_sgd(x, y, xt, yt, epochs=epochs, batch_size=batch, lr=0.1, seed=3)
    w, b, want, total = ref_linear_sgd(x, y, xt, yt, epochs, batch, 0.1, 3, classes)
    assert got["steps"] == total
    torch.testing.assert_close(got["weight"].double(), w, rtol=0, atol=1e-5)
    torch.testing.assert_close(got["bias"].double(), b, rtol=0, atol=1e-5)
    assert got["top1"] == pytest.approx(want, abs=1e-6)


def test_eval_reports_linear_sgd_as_its_own_protocol(run_copy):
    from simclr.evaluation.pipeline import evaluate

    settings = ["eval.baselines=false", "probe.sgd_epochs=3", "train.precision=fp32"]
    report = evaluate(run_copy, ["linear_sgd"], settings, log=lambda *_: None)
    (row,) = report["results"]
    assert row["protocol"] == "linear_sgd" and row["split"] == "test"
    s = row["settings"]
    assert (s["epochs"], s["batch_size"], s["lr"]) == (3, 512, 0.1)
    assert s["steps"] == 128 * 3 // 128 + 1  # the batch is capped at the 128 train images
    # independently: the run's encoder on the data as read from its files, then the
    # reference's SGD on those features (the batch capped at the 128 train images)
    root = yaml.safe_load((run_copy / "config.yaml").read_text())["data"]["root"]
    (x, y), (xt, yt) = (load_split("mnist", split, root, download=False)
                        for split in ("train", "test"))
    enc = load_encoder(run_copy)
    with torch.no_grad():
        f, ft = enc(x.float() / 255), enc(xt.float() / 255)
    *_, want, _ = ref_linear_sgd(f, y, ft, yt, 3, 128, 0.1, 0, int(y.max()) + 1)
    assert row["top1"] == pytest.approx(want, abs=1e-6)
