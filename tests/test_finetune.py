"""The fine-tuning step: fp16 goes through a GradScaler (an overflowing step is skipped, the
update is SGD on the unscaled gradient); bf16/fp32 are plain steps."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from simclr.evaluation.finetune import finetune_step
from simclr.models.resnet import ResNet

CPU = torch.device("cpu")


def model_and_batch(seed=0):
    torch.manual_seed(seed)
    encoder = ResNet("resnet18", 0.0625, "cifar", 1)
    model = nn.Sequential(encoder, nn.Linear(encoder.feature_dim, 3))
    x = torch.rand(6, 1, 12, 12, generator=torch.Generator().manual_seed(seed))
    return model, x, torch.tensor([0, 1, 2, 0, 1, 2])


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1)


def test_fp16_overflow_skips_the_step_and_halves_the_scale():
    model, x, y = model_and_batch()
    before = copy.deepcopy(model.state_dict())
    x[0, 0, 0, 0] = float("inf")  # the loss, hence every gradient, is non-finite
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, enabled=True)
    optimizer = sgd(model)
    finetune_step(model, optimizer, scaler, x, y, CPU, "fp16")
    assert scaler.get_scale() == 2.0**15
    params = dict(model.named_parameters())
    for k, v in before.items():
        if k in params:  # weights untouched (BatchNorm running stats did see the batch)
            assert torch.equal(params[k], v), k


def test_fp16_step_is_sgd_on_the_unscaled_gradient():
    model, x, y = model_and_batch()
    reference = copy.deepcopy(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, enabled=True)
    finetune_step(model, sgd(model), scaler, x, y, CPU, "fp16")
    with torch.autocast("cpu", dtype=torch.float16):
        logits = reference(x)
    F.cross_entropy(logits.float(), y).backward()
    with torch.no_grad():  # the same fp16 gradient, up to the rounding that scaling changes
        for (name, p), q in zip(reference.named_parameters(), model.parameters(), strict=True):
            update = (p - q) / 0.1
            assert (update - p.grad).norm() <= 0.02 * p.grad.norm(), name


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_disabled_scaler_is_a_plain_step(precision):
    model, x, y = model_and_batch()
    reference = copy.deepcopy(model)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = finetune_step(model, sgd(model), scaler, x, y, CPU, precision)
    optimizer = sgd(reference)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    with torch.autocast("cpu", dtype=dtype, enabled=precision == "bf16"):
        logits = reference(x)
    expected = F.cross_entropy(logits.float(), y)
    expected.backward()
    optimizer.step()
    assert torch.equal(loss, expected.detach())
    for p, q in zip(reference.parameters(), model.parameters(), strict=True):
        assert torch.equal(p, q)
