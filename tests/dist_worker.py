"""Run under torchrun by tests/test_dist.py: ``python -m torch.distributed.run
--nproc_per_node=2 tests/dist_worker.py MODE OUT_DIR``. Each rank saves its results to
OUT_DIR/rank{R}.pt for the test to compare with one process."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simclr import dist  # noqa: E402
from simclr.config import build_config  # noqa: E402
from simclr.loss import nt_xent  # noqa: E402
from simclr.models import build_model  # noqa: E402
from simclr.optim import build_optimizer, set_lr  # noqa: E402
from simclr.train import train_step  # noqa: E402

N, D, T = 6, 5, 0.3  # rows per rank, projection dim, temperature
BATCH = 4  # images per rank in the training-step check


def global_z(world: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(N * world, D, generator=g, dtype=torch.float64),
            torch.randn(N * world, D, generator=g, dtype=torch.float64))


def step_config():
    return build_config(overrides={"model.width": 0.0625, "model.proj_dim": 8,
                                   "model.proj_bn": True, "optim.name": "lars",
                                   "optim.weight_decay": 1e-4, "train.precision": "fp32"})


def global_views(world: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    shape = (BATCH * world, 3, 16, 16)
    return (torch.randn(shape, generator=g, dtype=torch.float64),
            torch.randn(shape, generator=g, dtype=torch.float64))


def make_model(cfg):
    torch.manual_seed(0)
    return build_model(cfg.model, 3, 16).double()


def run_steps(model, train_model, cfg, v1, v2, rank=0, gather=None, steps=2):
    optimizer = build_optimizer(model, cfg.optim)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    losses = []
    for _ in range(steps):
        set_lr(optimizer, 0.5)
        views = torch.cat([v1, v2])
        losses.append(train_step(train_model, optimizer, scaler, views, cfg,
                                 torch.device("cpu"), "fp32", rank, gather).item())
    return losses


SLOW_S = 4.0  # rank 0's monitor and each checkpoint write take this long; the test sets the
# collectives' timeout (SIMCLR_DIST_TIMEOUT) below it


def slow_main(out: Path, rank: int) -> None:
    """Pretrain (data in OUT/data) while rank 0's kNN monitor and checkpoint writes are slow."""
    import time

    import simclr.train as train_mod

    def slow(fn):
        def wrapper(*args, **kwargs):
            time.sleep(SLOW_S)
            return fn(*args, **kwargs)
        return wrapper

    if rank == 0:
        train_mod.knn_monitor = slow(train_mod.knn_monitor)
        train_mod.save_checkpoint = slow(train_mod.save_checkpoint)
    cfg = build_config(overrides={
        "data.name": "mnist", "data.root": str(out / "data"), "data.download": False,
        "model.width": 0.0625, "model.proj_dim": 8, "train.batch_size": 32, "train.epochs": 1,
        "train.checkpoint_every": 2, "train.progress": False, "train.device": "cpu",
        "eval.every": 1, "eval.knn_k": 10})
    train_mod.pretrain(cfg, out / "run", log=lambda *_: None)


def main(mode: str, out: Path) -> None:
    assert dist.init("cpu"), "run me under torchrun with 2 processes"
    rank, world = dist.rank(), dist.world_size()
    rows = slice(rank * N, (rank + 1) * N)
    if mode == "loss":
        z1, z2 = (z[rows].clone().requires_grad_() for z in global_z(world))
        loss = nt_xent(z1, z2, T, rank=rank, gather=dist.gather_with_grad)
        loss.backward()
        torch.save({"loss": loss.detach(), "g1": z1.grad, "g2": z2.grad}, out / f"rank{rank}.pt")
    elif mode == "step":
        cfg = step_config()
        model = dist.convert_batchnorm(make_model(cfg))
        ddp = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
        v1, v2 = (v[rank * BATCH:(rank + 1) * BATCH] for v in global_views(world))
        losses = run_steps(model, ddp, cfg, v1, v2, rank, dist.gather_with_grad)
        global_losses = [float(dist.reduce_mean(torch.tensor(x, dtype=torch.float64)))
                         for x in losses]
        torch.save({"state": model.state_dict(), "losses": global_losses}, out / f"rank{rank}.pt")
    elif mode == "slow_main":
        slow_main(out, rank)
    elif mode == "fail":
        if rank == 1:
            raise RuntimeError("rank 1 failed on purpose")
        torch.distributed.all_reduce(torch.ones(1))  # rank 0 waits for a peer that is gone
    dist.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
