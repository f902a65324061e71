"""LARS against the hand formula, exclusions, the lr schedule and state_dict round trips."""

import copy
import math

import pytest
import torch
from torch import nn

from simclr.config import Optim
from simclr.train.optim import LARS, build_optimizer, lr_at, param_groups, scaled_lr, set_lr


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))


def _grads(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 4, generator=g)
    model.zero_grad()
    model(x).square().sum().backward()


def test_param_groups_split_by_ndim():
    groups = param_groups(_model(), 1e-4)
    assert all(p.ndim > 1 for p in groups[0]["params"]) and len(groups[0]["params"]) == 2
    assert all(p.ndim == 1 for p in groups[1]["params"]) and len(groups[1]["params"]) == 4
    assert groups[0]["weight_decay"] == 1e-4 and groups[1]["weight_decay"] == 0.0
    assert groups[0]["lars_adapt"] and not groups[1]["lars_adapt"]


def test_lars_one_step_matches_hand_formula():
    model = _model()
    before = copy.deepcopy(model)
    lr, wd, eta, mom = 0.7, 1e-2, 1e-3, 0.9
    opt = LARS(param_groups(model, wd), lr=lr, momentum=mom, eta=eta)
    _grads(model)
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    for p0, g, p1 in zip(before.parameters(), grads, model.parameters(), strict=True):
        if p0.ndim > 1:
            d = g + wd * p0
            trust = eta * p0.norm() / d.norm()
            expected = p0 - lr * trust * d  # v = 0*mom + lr*trust*d
        else:
            expected = p0 - lr * g  # no decay, no adaptation
        torch.testing.assert_close(p1, expected, rtol=1e-6, atol=1e-7)


def test_lars_zero_norm_guard():
    w = nn.Parameter(torch.zeros(3, 3))
    opt = LARS([{"params": [w], "weight_decay": 0.0, "lars_adapt": True}], lr=0.5)
    w.grad = torch.ones(3, 3)
    opt.step()  # ||w|| = 0 -> trust 1
    torch.testing.assert_close(w.detach(), torch.full((3, 3), -0.5))


def test_excluded_params_step_as_sgd_with_momentum():
    torch.manual_seed(0)
    bias = nn.Parameter(torch.randn(5))
    twin = nn.Parameter(bias.detach().clone())
    model = nn.Module()
    model.bias, model.w = bias, nn.Parameter(torch.randn(5, 5))
    lars = LARS(param_groups(model, weight_decay=0.1), lr=0.1, momentum=0.9)
    sgd = torch.optim.SGD([twin], lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        grad = torch.randn(5, generator=g)
        bias.grad, twin.grad = grad.clone(), grad.clone()
        model.w.grad = torch.randn(5, 5, generator=g)
        lars.step()
        sgd.step()
    # ndim == 1: no weight decay, no trust ratio -> plain momentum SGD at a constant lr
    torch.testing.assert_close(bias, twin, rtol=1e-6, atol=1e-7)


def test_lr_schedule_endpoints():
    assert lr_at(0, 2.0, 10, 100) == 0.0
    assert lr_at(5, 2.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(10, 2.0, 10, 100) == pytest.approx(2.0)
    assert lr_at(55, 2.0, 10, 100) == pytest.approx(1.0)  # half-way through the cosine
    assert lr_at(100, 2.0, 10, 100) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(0, 2.0, 0, 100) == pytest.approx(2.0)  # no warmup starts at the peak
    lrs = [lr_at(s, 1.0, 10, 100) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_lr_scaling():
    assert scaled_lr(1.0, 512, "linear") == 2.0
    assert scaled_lr(1.0, 1024, "sqrt") == pytest.approx(32.0)  # lr x sqrt(B), the tf rule
    assert scaled_lr(0.3, 4096, "none") == 0.3
    assert math.isclose(scaled_lr(0.06, 256, "linear"), 0.06)


@pytest.mark.parametrize("name", ["lars", "sgd", "adam", "adamw"])
def test_state_dict_round_trip_gives_identical_next_steps(name):
    cfg = Optim(name=name, weight_decay=1e-3, nesterov=name == "sgd")
    m1 = _model()
    o1 = build_optimizer(m1, cfg)
    for step in range(2):
        set_lr(o1, 0.1)
        _grads(m1, seed=step)
        o1.step()
    m2 = copy.deepcopy(m1)
    o2 = build_optimizer(m2, cfg)
    o2.load_state_dict(copy.deepcopy(o1.state_dict()))
    for step in range(2, 4):
        for m, o in ((m1, o1), (m2, o2)):
            set_lr(o, 0.05)
            _grads(m, seed=step)
            o.step()
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b)
