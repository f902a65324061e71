"""Views of several sizes through the training loop: the default equals the two-view loop bit for
bit, a multi-size step is the multi-positive loss on per-size encoder passes, loss.scale applies
to it, multi-view runs resume exactly, and loss.supervised takes positives from labels."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from simclr.augment.ops import two_views
from simclr.config import build_config
from simclr.data.datasets import channel_stats, load_train
from simclr.data.loader import TensorLoader, batch_labels
from simclr.errors import SimCLRError
from simclr.models.factory import build_model
from simclr.runtime.compute import step_generator
from simclr.train.loss import multi_nt_xent, nt_xent
from simclr.train.optim import build_optimizer, lr_at, scaled_lr, set_lr, step_counts
from simclr.train.step import train_step
from tests.formats import write_stl10
from tests.test_train import BATCH, run
from tests.test_train import tiny as train_tiny

MULTI = [[2, 1], [4, 0.5, 0.05, 0.4]]  # 2 global views + 4 local views at half size


def tiny(root, **extra):
    """test_train's tiny run (96 images, batch 32, 3 steps an epoch) in fp32, no monitor."""
    return train_tiny(root, **{"train.log_every": 1, "train.precision": "fp32",
                               "eval.every": 0, **extra})


def two_view_loop(cfg, images):
    """The training loop as it was before view groups, written out: ``two_views`` -> one
    forward of the 2B views -> ``nt_xent`` -> LARS, lr per step. Returns the encoder state."""
    mean, std = channel_stats(images)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, images.shape[1], images.shape[-1]).to(
        memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim)
    loader = TensorLoader(images, cfg.train.batch_size, cfg.train.seed)
    total, warmup = step_counts(len(images), cfg.train.batch_size, cfg.train.epochs,
                                cfg.optim.warmup_epochs, cfg.train.step_rule)
    peak = scaled_lr(cfg.optim.lr, cfg.train.batch_size, cfg.optim.lr_scaling)
    model.train()
    step = 0
    for epoch in range(cfg.train.epochs):
        for x in loader.batches(epoch):
            set_lr(optimizer, lr_at(step, peak, warmup, total))
            v1, v2 = two_views(x, cfg.augment, mean, std,
                               step_generator(cfg.train.seed, step, torch.device("cpu")))
            _, z = model(torch.cat([v1, v2]).contiguous(memory_format=torch.channels_last))
            loss = nt_xent(*z.chunk(2), cfg.loss.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    return model.encoder.state_dict()


def test_default_views_run_is_bit_identical_to_the_two_view_loop(mnist_root, tmp_path):
    cfg = tiny(mnist_root, **{"augment.blur_p": 0.5})
    assert cfg.augment.views == ((2, 1),)
    got = load_file(str(run(cfg, tmp_path / "run") / "encoder.safetensors"))
    want = two_view_loop(cfg, load_train(cfg.data)[0])
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k


def _step_inputs(views_spec):
    cfg = build_config(overrides={"model.width": 0.0625, "model.proj_dim": 8,
                                  "model.proj_bn": True, "train.precision": "fp32",
                                  "augment.views": views_spec})
    torch.manual_seed(0)
    model = build_model(cfg.model, 3, 16).double()
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(2 * 4, 3, 16, 16, generator=g, dtype=torch.float64),
             torch.randn(4 * 4, 3, 8, 8, generator=g, dtype=torch.float64)]
    return cfg, model, views


def test_a_step_on_views_of_two_sizes_is_the_multi_positive_loss():
    cfg, model, views = _step_inputs([[2, 1], [4, 0.5]])
    reference = build_model(cfg.model, 3, 16).double()
    reference.load_state_dict(model.state_dict())
    # by hand: the encoder once per size, the head once on all features, 6 views per image
    z = reference.head(torch.cat([reference.encoder(v) for v in views]))
    want = multi_nt_xent(z, 6, cfg.loss.temperature)
    opt = build_optimizer(model, cfg.optim)
    set_lr(opt, 0.1)
    got = train_step(model, opt, torch.amp.GradScaler("cpu", enabled=False), views, cfg,
                     torch.device("cpu"), "fp32")
    assert float(got) == pytest.approx(float(want.detach()), rel=1e-12)


def test_loss_scale_applies_to_the_multi_view_loss():
    deltas = []
    for scale in (1.0, 2.0):
        cfg, model, views = _step_inputs([[2, 1], [4, 0.5]])
        cfg.loss.scale = scale
        cfg.optim.name, cfg.optim.momentum, cfg.optim.weight_decay = "sgd", 0.0, 0.0
        start = [p.detach().clone() for p in model.parameters()]
        opt = build_optimizer(model, cfg.optim)
        set_lr(opt, 0.1)
        train_step(model, opt, torch.amp.GradScaler("cpu", enabled=False), views, cfg,
                   torch.device("cpu"), "fp32")
        deltas.append([p.detach() - s for p, s in zip(model.parameters(), start, strict=True)])
    for one, two in zip(*deltas, strict=True):  # plain SGD: twice the objective, twice the step
        torch.testing.assert_close(two, 2 * one, rtol=1e-9, atol=1e-15)


def test_multi_size_views_train_log_their_loss_and_resume_exactly(mnist_root, tmp_path):
    straight = run(tiny(mnist_root, **{"augment.views": MULTI}), tmp_path / "straight")
    rows = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in rows if r["kind"] == "window")
    assert abs(first["loss"] - np.log(6 * BATCH - 1)) < 0.5  # ln(VN - 1) at init
    resumed = tmp_path / "resumed"
    run(tiny(mnist_root, **{"augment.views": MULTI, "train.max_steps": 4}), resumed)
    run(tiny(mnist_root, **{"augment.views": MULTI}), resumed)
    a, b = (load_file(str(d / "encoder.safetensors")) for d in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    default = load_file(str(run(tiny(mnist_root), tmp_path / "two") / "encoder.safetensors"))
    assert not all(torch.equal(a[k], default[k]) for k in a)  # the views did change training


def test_batch_labels_follow_the_batches():
    ids = torch.arange(40)
    images = ids.view(40, 1, 1, 1).expand(40, 1, 2, 2).contiguous()
    for rank in (0, 1):
        loader = TensorLoader(images, 8, seed=3, rank=rank, world_size=2)
        for epoch in (0, 1):
            batches = [x[:, 0, 0, 0] for x in loader.batches(epoch, 1)]
            assert [y.tolist() for y in batch_labels(loader, 100 + ids, epoch, 1)] == \
                [(100 + b).tolist() for b in batches]


def test_supervised_loss_trains_on_labels(mnist_root, tmp_path, monkeypatch):
    import simclr.train.loss as step_mod

    seen = []
    real = step_mod.multi_nt_xent

    def spy(z, views, t, rank=0, gather=None, labels=None):
        seen.append(labels)
        return real(z, views, t, rank, gather, labels)

    monkeypatch.setattr(step_mod, "multi_nt_xent", spy)
    cfg = tiny(mnist_root, **{"loss.supervised": True, "train.epochs": 1})
    run(cfg, tmp_path / "run")
    images, labels = load_train(cfg.data)
    loader = TensorLoader(images, BATCH, cfg.train.seed)
    assert len(seen) == 3 and all(torch.equal(s, y) for s, y in
                                  zip(seen, batch_labels(loader, labels, 0), strict=True))


def test_supervised_loss_refuses_unlabeled_data(tmp_path):
    write_stl10(tmp_path / "stl", 8, n_unlabeled=40)
    cfg = build_config(overrides={
        "data.name": "stl10", "data.root": str(tmp_path / "stl"), "data.download": False,
        "data.split": "unlabeled", "data.image_size": 32, "model.width": 0.0625,
        "train.batch_size": 8, "loss.supervised": True})
    with pytest.raises(SimCLRError, match="40 training images .* are unlabeled"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
