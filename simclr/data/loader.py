"""The batch order every loader shares: a shuffle that is a pure function of (seed, epoch),
global batches that drop the last incomplete one, and each rank's contiguous slice of them.

`TensorLoader` serves tensors already in memory; `simclr.data.stream.StreamLoader`
decodes files in this same order, so both give the same batches and a run may resume either way.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from simclr.errors import SimCLRError
from simclr.runtime.compute import to_device


def epoch_permutation(n: int, seed: int, epoch: int,
                      device: str | torch.device = "cpu") -> Tensor:
    """int64 permutation of 0..n-1 on ``device``, a function of (seed, epoch) alone.

    Drawn on the CPU whatever ``device`` (a CUDA generator would give another permutation for
    the same seed), so every device, in-memory or streamed, sees the same batches.
    """
    state = np.random.SeedSequence([seed & (2**63 - 1), epoch]).generate_state(2)
    generator = torch.Generator()
    generator.manual_seed(int(state[0]) << 31 ^ int(state[1]))
    return to_device(torch.randperm(n, generator=generator), torch.device(device))


def check_batch(n: int, batch_size: int, world_size: int) -> None:
    """SimCLRError unless ``batch_size`` fits in ``n`` items and divides by ``world_size``."""
    if batch_size > n:
        raise SimCLRError(f"train.batch_size {batch_size} is larger than the dataset ({n} "
                          "images): lower it or use more data")
    if batch_size % world_size:
        raise SimCLRError(f"train.batch_size {batch_size} does not divide by the "
                          f"{world_size} processes: make it a multiple of {world_size}")


def rank_batches(perm: Tensor, batch_size: int, rank: int, world_size: int,
                 start: int = 0) -> Iterator[Tensor]:
    """Index tensors (batch_size // world_size each) of this rank's slice of global batches
    ``start``, ``start + 1``, ... of the permutation ``perm`` (N), dropping the last incomplete
    batch."""
    local = batch_size // world_size
    for step in range(start, len(perm) // batch_size):
        lo = step * batch_size + rank * local
        yield perm[lo:lo + local]


def batch_labels(loader, labels: Tensor, epoch: int, start: int = 0) -> Iterator[Tensor]:
    """The labels of the images ``loader.batches(epoch, start)`` yields, batch by batch in the
    same order (``loader``: a `TensorLoader` or a ``StreamLoader``; ``labels``: N)."""
    perm = loader.permutation(epoch)
    labels = labels.to(perm.device)
    for idx in rank_batches(perm, loader.batch_size, loader.rank, loader.world_size, start):
        yield labels[idx]


class TensorLoader:
    """Shuffled batches of an image tensor that already lives on the training device.

    Each epoch is a permutation of ``(seed, epoch)`` alone (drawn on the CPU, moved to the
    images' device), so any epoch (and any step in it) can be regenerated for an exact resume,
    on any device. Batches drop the last incomplete one. Under DDP every rank builds the same
    permutation and takes its contiguous ``batch_size // world_size`` slice of each global
    batch.

    Args:
        images: N x C x H x W (any dtype; uint8 in training).
        batch_size: the global batch, divisible by ``world_size``.
        seed: the run's seed.
        rank: this process's rank.
        world_size: number of processes.
    """

    def __init__(self, images: Tensor, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1) -> None:
        check_batch(len(images), batch_size, world_size)
        self.images, self.batch_size, self.seed = images, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.local_batch = batch_size // world_size

    def __len__(self) -> int:
        return len(self.images) // self.batch_size

    def permutation(self, epoch: int) -> Tensor:
        """int64 N: a permutation of 0..N-1, on the images' device, a function of (seed, epoch)."""
        return epoch_permutation(len(self.images), self.seed, epoch, self.images.device)

    def batches(self, epoch: int, start: int = 0) -> Iterator[Tensor]:
        """This rank's batches of ``epoch`` from step ``start`` (local_batch x C x H x W each)."""
        for idx in rank_batches(self.permutation(epoch), self.batch_size, self.rank,
                                self.world_size, start):
            yield self.images[idx]


__all__ = ["TensorLoader", "batch_labels", "check_batch", "epoch_permutation", "rank_batches"]
