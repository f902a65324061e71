"""Distributed training through torchrun: process-group setup, rank helpers, a gradient-correct
all-gather for NT-Xent, and global BatchNorm that also works on CPU (gloo).

Without torchrun (no ``WORLD_SIZE`` > 1 in the environment) every function here is the identity
or a constant, so there is one code path.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from simclr.errors import SimCLRError

TIMEOUT_S = int(os.environ.get("SIMCLR_DIST_TIMEOUT", "600"))
# gloo needs some timeout; a year is past any job, so waiting for rank 0 never times out
WAIT_TIMEOUT = timedelta(days=365)
_wait_group: dist.ProcessGroup | None = None


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init(device_type: str) -> bool:
    """Join the torchrun process group when started by torchrun with more than one process.

    NCCL on CUDA (bound to this process's GPU, ``device_id``), gloo otherwise; collectives
    time out after ``SIMCLR_DIST_TIMEOUT`` seconds (default 600) so a dead rank cannot hang the
    others forever. Also makes the group of `wait_for_main`.

    Returns:
        True when running distributed.
    """
    if is_dist():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_available():
        raise SimCLRError("WORLD_SIZE > 1 but this torch build has no torch.distributed; "
                          "run without torchrun")
    backend, extra = "gloo", {}
    if device_type == "cuda":
        backend, extra["device_id"] = "nccl", torch.device("cuda", local_rank())
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend, timeout=timedelta(seconds=TIMEOUT_S), **extra)
    _make_wait_group()
    return True


def _make_wait_group() -> dist.ProcessGroup:
    """The gloo group of `wait_for_main` (a collective: every rank calls it together)."""
    global _wait_group
    if _wait_group is None:
        _wait_group = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
    return _wait_group


def wait_for_main() -> None:
    """Every rank waits here until all have arrived, however long rank 0 takes for its work
    alone (the kNN monitor, a checkpoint on a slow disk): a barrier over a gloo group whose
    timeout is `WAIT_TIMEOUT`, not the collectives' ``SIMCLR_DIST_TIMEOUT``, which would
    kill the job. A rank that dies still ends it (gloo sees its connection close; torchrun
    stops the others). No-op on one process."""
    if world_size() > 1:
        dist.barrier(group=_make_wait_group())


def shutdown() -> None:
    global _wait_group
    if is_dist():
        dist.destroy_process_group()
    _wait_group = None


def barrier() -> None:
    if is_dist():
        dist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums every rank's gradient for the local rows."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # the other ranks' losses also depend on our rows
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate N x D tensors of all ranks (rank order) -> (N x world) x D, with gradient.

    Each rank's loss depends on every rank's rows, so the backward all-reduces (sums) the
    gradient before taking this rank's slice; with DDP's gradient averaging this gives exactly
    the gradient of the mean loss over the global batch. Identity on one process.
    """
    return _GatherWithGrad.apply(x) if world_size() > 1 else x


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_sum(x: Tensor) -> Tensor:
    """Differentiable sum over ranks (identity on one process)."""
    return _AllReduceSum.apply(x) if world_size() > 1 else x


def reduce_mean(x: Tensor) -> Tensor:
    """Mean of a (non-differentiable) tensor over ranks, e.g. for logging the loss."""
    if world_size() == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / world_size()


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics cover the global batch of all ranks (the paper's
    global BN), with the gradient flowing through the all-reduce. Works on any backend (gloo on
    CPU included, where ``nn.SyncBatchNorm`` refuses CPU tensors). Same parameters and buffers
    as ``nn.BatchNorm*d``, so checkpoints move freely between 1 and K processes."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        dims = [d for d in range(x.dim()) if d != 1]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # bf16 -> fp32, fp64 stays
        count = torch.tensor(float(x.numel() // x.shape[1]), dtype=xf.dtype, device=x.device)
        total = all_reduce_sum(torch.cat([xf.sum(dims), count.view(1)]))
        n = total[-1]
        mean = total[:-1] / n  # C
        var = all_reduce_sum(((xf - mean.view(shape)) ** 2).sum(dims)) / n  # C, biased
        with torch.no_grad():
            m = self.momentum if self.momentum is not None else 0.1
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
            self.num_batches_tracked.add_(1)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm for global BatchNorm: torch's ``SyncBatchNorm`` on CUDA,
    `GlobalBatchNorm` elsewhere. Parameters and buffers are kept."""
    for p in module.parameters():
        if p.is_cuda:
            return nn.SyncBatchNorm.convert_sync_batchnorm(module)
        break
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        like = next(module.buffers())  # running_mean: the module's device and dtype
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats, device=like.device, dtype=like.dtype)
        new.load_state_dict(module.state_dict())
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_batchnorm(child))
    return module
