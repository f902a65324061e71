"""Run under torchrun by tests/test_dist.py: ``python -m torch.distributed.run
--nproc_per_node=2 tests/dist_worker.py MODE OUT_DIR``, MODE one of ``equal`` (every
"distributed equals one process" computation), ``pretrain`` (the 2-process ``simclr pretrain``
runs, rank 0 slow) and ``fail`` (rank 1 raises). Each rank saves its results to
OUT_DIR/rank{R}.pt (``pretrain``: rank{R}.json) for the test to check."""

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simclr.config import build_config
from simclr.models.factory import build_model
from simclr.train import dist
from simclr.train.loss import multi_nt_xent, nt_xent
from simclr.train.optim import build_optimizer, set_lr
from simclr.train.step import train_step

N, D, T = 6, 5, 0.3  # rows per rank, projection dim, temperature
BATCH = 4  # images per rank in the training-step check
VIEWS = 3  # views per image in the multi-view loss check


def global_multi_z(world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """V x (N x world) x D projections and N x world labels (3 classes) of the global batch."""
    g = torch.Generator().manual_seed(2)
    return (torch.randn(VIEWS, N * world, D, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (N * world,), generator=g))


def global_z(world: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(N * world, D, generator=g, dtype=torch.float64),
            torch.randn(N * world, D, generator=g, dtype=torch.float64))


def step_config(sized: bool = False):
    """The step checks' config; ``sized``: 2 views at 16 px + 2 at 8 px (global BN per size)."""
    views = {"augment.views": [[2, 1], [2, 0.5]]} if sized else {}
    return build_config(overrides={"model.width": 0.0625, "model.proj_dim": 8,
                                   "model.proj_bn": True, "optim.name": "lars",
                                   "optim.weight_decay": 1e-4, "train.precision": "fp32",
                                   **views})


def global_views(world: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    shape = (BATCH * world, 3, 16, 16)
    return (torch.randn(shape, generator=g, dtype=torch.float64),
            torch.randn(shape, generator=g, dtype=torch.float64))


def global_sized_views(world: int) -> list[torch.Tensor]:
    """Per view size (16 px, 8 px): 2 views x (BATCH x world) images x 3 x S x S."""
    g = torch.Generator().manual_seed(3)
    return [torch.randn(2, BATCH * world, 3, side, side, generator=g, dtype=torch.float64)
            for side in (16, 8)]


def view_major(views: list[torch.Tensor], rows: slice) -> list[torch.Tensor]:
    """The images ``rows`` of each size's views, as the loop passes them: (2 x n) x 3 x S x S."""
    return [v[:, rows].reshape(-1, *v.shape[2:]) for v in views]


def make_model(cfg):
    torch.manual_seed(0)
    return build_model(cfg.model, 3, 16).double()


def run_steps(model, train_model, cfg, v1, v2, rank=0, gather=None, steps=2):
    return run_view_steps(model, train_model, cfg, torch.cat([v1, v2]), rank, gather, steps)


def run_view_steps(model, train_model, cfg, views, rank=0, gather=None, steps=2):
    optimizer = build_optimizer(model, cfg.optim)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    losses = []
    for _ in range(steps):
        set_lr(optimizer, 0.5)
        losses.append(train_step(train_model, optimizer, scaler, views, cfg,
                                 torch.device("cpu"), "fp32", rank, gather).item())
    return losses


SLOW_S = 3.0  # rank 0's monitor and each checkpoint write take this long; the test sets the
# collectives' timeout (SIMCLR_DIST_TIMEOUT) below it


def equal(rank: int, world: int) -> dict:
    """Every "distributed equals one process" computation in one process group: the gathered
    NT-Xent (``loss``), the multi-view loss with and without labels (``views``), two training
    steps (``step``) and steps on views of two sizes (``sized_step``)."""
    rows = slice(rank * N, (rank + 1) * N)
    z1, z2 = (z[rows].clone().requires_grad_() for z in global_z(world))
    loss = nt_xent(z1, z2, T, rank=rank, gather=dist.gather_with_grad)
    loss.backward()
    results = {"loss": {"loss": loss.detach(), "g1": z1.grad, "g2": z2.grad}}

    z, labels = global_multi_z(world)
    local = z[:, rows].reshape(VIEWS * N, D).requires_grad_()  # view-major
    results["views"] = {}
    for name, lab in (("self", None), ("supervised", labels[rows])):
        loss = multi_nt_xent(local, VIEWS, T, rank=rank, gather=dist.gather_with_grad,
                             labels=lab)
        results["views"][name] = (loss.detach(), torch.autograd.grad(loss, local)[0])

    for mode in ("step", "sized_step"):
        cfg = step_config(sized=mode == "sized_step")
        model = dist.convert_batchnorm(make_model(cfg))
        ddp = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
        if mode == "step":
            v1, v2 = (v[rank * BATCH:(rank + 1) * BATCH] for v in global_views(world))
            losses = run_steps(model, ddp, cfg, v1, v2, rank, dist.gather_with_grad)
        else:
            views = view_major(global_sized_views(world), slice(rank * BATCH, (rank + 1) * BATCH))
            losses = run_view_steps(model, ddp, cfg, views, rank, dist.gather_with_grad)
        global_losses = [float(dist.reduce_mean(torch.tensor(x, dtype=torch.float64)))
                         for x in losses]
        results[mode] = {"state": model.state_dict(), "losses": global_losses}
    return results


def pretrain_runs(out: Path, rank: int) -> dict:
    """``simclr pretrain`` (in this process, as the console shows it) on 2 processes, twice:
    a fresh 1-epoch run in OUT/two while rank 0's kNN monitor and checkpoint writes are slow
    (the test then resumes it on one process), and the resume to 2 epochs of OUT/single (which
    the test pretrained on one process). The args of each run are in OUT/args.json."""
    import simclr.train.loop as train_mod
    import simclr.train.rundir as rundir_mod
    from tests.helpers import cli

    def slow(fn):
        def wrapper(*args, **kwargs):
            time.sleep(SLOW_S)
            return fn(*args, **kwargs)
        return wrapper

    results = {}
    for name, args in json.loads((out / "args.json").read_text()).items():
        saved = train_mod.knn_monitor, rundir_mod.save_checkpoint
        if name == "two" and rank == 0:
            train_mod.knn_monitor = slow(train_mod.knn_monitor)
            rundir_mod.save_checkpoint = slow(rundir_mod.save_checkpoint)
        try:
            result = cli(*args)
        finally:
            train_mod.knn_monitor, rundir_mod.save_checkpoint = saved
        results[name] = vars(result)
        if result.returncode != 0:
            raise RuntimeError(f"rank {rank}: simclr {name} run failed:\n{result.stderr}")
    return results


def main(mode: str, out: Path) -> None:
    assert dist.init("cpu"), "run me under torchrun with 2 processes"
    rank, world = dist.rank(), dist.world_size()
    if mode == "equal":
        torch.save(equal(rank, world), out / f"rank{rank}.pt")
    elif mode == "pretrain":
        (out / f"rank{rank}.json").write_text(json.dumps(pretrain_runs(out, rank)))
    elif mode == "fail":
        if rank == 1:
            raise RuntimeError("rank 1 failed on purpose")
        torch.distributed.all_reduce(torch.ones(1))  # rank 0 waits for a peer that is gone
    else:
        raise ValueError(f"unknown mode {mode!r}")
    dist.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
