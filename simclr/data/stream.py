"""Image folders too large for the device, streamed: decode + resize in DataLoader workers.

`StreamLoader` has the interface and the batch order of
`simclr.data.loader.TensorLoader` (same permutation of ``(seed, epoch)``, same rank
slices, drop-last), but holds only the file list: each batch is decoded by
`simclr.data.folder.decode_image` (the in-memory reader's own decoder, so both paths give
identical uint8 images) in ``workers`` processes, collated to a contiguous uint8 ``B x 3 x S x
S`` tensor, pinned when the device is CUDA, and copied with ``non_blocking``. Augmentation stays
batched on the device, as for in-memory data.

Unreadable files: `simclr.data.folder.list_folder` leaves out, with a warning, every file
whose header Pillow cannot read (not images, decompression bombs), as the in-memory reader skips
them. A file whose header is valid but whose data is corrupt (truncated) is found only when
decoded; it cannot be skipped without changing the batch order, so it stops the run with a
SimCLRError naming it (the in-memory path would have skipped it at load time).

`fits_in_memory` decides whether a folder can be loaded whole instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from simclr.data import download
from simclr.data.folder import FOLDER_DEFAULT_SIZE, decode_image, list_folder
from simclr.data.loader import check_batch, epoch_permutation, rank_batches
from simclr.errors import SimCLRError

DEFAULT_SAFETY = 4.0  # decoded bytes x this must fit: the reader holds ~3 copies at its peak


def fits_in_memory(n_files: int, image_size: int, channels: int = 3,
                   device: str | torch.device = "cpu", safety: float = DEFAULT_SAFETY) -> bool:
    """Whether ``n_files`` decoded uint8 ``channels x S x S`` images fit comfortably in memory.

    ``safety`` x their bytes must fit in the available host memory (Linux MemAvailable: the
    in-memory reader decodes there and holds about three copies at its peak) and, for a CUDA
    device, in its free memory too (the rest is for the model's activations). Unknown
    available memory counts as enough. ``image_size`` 0 means `FOLDER_DEFAULT_SIZE`.
    """
    size = image_size or FOLDER_DEFAULT_SIZE
    need = n_files * channels * size * size * safety
    free = download.available_memory()
    if free is not None and need > free:
        return False
    device = torch.device(device)
    if device.type == "cuda":
        free_device, _ = torch.cuda.mem_get_info(device)
        if need > free_device:
            return False
    return True


class _Decode(Dataset):
    """Item i: (i, size x size x 3 uint8 array of file i, or None if it does not decode)."""

    def __init__(self, files: Sequence[Path], size: int) -> None:
        self.files, self.size = [str(f) for f in files], size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None]:
        return i, decode_image(self.files[i], self.size)


def _collate(items: list[tuple[int, np.ndarray | None]]) -> tuple[Tensor, list[int]]:
    """(contiguous uint8 B x 3 x S x S, []) as the in-memory reader stacks, or (empty, bad)."""
    bad = [i for i, a in items if a is None]
    if bad:
        return torch.empty(0, dtype=torch.uint8), bad
    images = np.stack([a for _, a in items])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), []


class _Plan(Sampler):
    """A batch sampler replaying ``batches`` (lists of indices); replaced for each pass."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StreamLoader:
    """Shuffled batches of image files, decoded on the fly: `TensorLoader`'s batches.

    Each epoch is `epoch_permutation` of ``(seed, epoch)`` (drawn on the CPU); batches
    drop the last incomplete one; under DDP each rank decodes only its contiguous
    ``batch_size // world_size`` slice of each global batch. One `batches` (or
    `chunks`) pass runs at a time per loader: starting another ends the previous one.

    Args:
        files: image files, in the reader's order (`simclr.data.folder.list_folder`).
        labels: their int labels (-1 = unlabeled), or None; kept as ``self.labels``.
        image_size: side S of the decoded images; 0 = `FOLDER_DEFAULT_SIZE`.
        batch_size: the global batch, divisible by ``world_size``.
        seed: the run's seed.
        rank: this process's rank.
        world_size: number of processes.
        device: where batches are delivered (the training device).
        workers: decoding processes; None = min(4, CPU count); 0 decodes in this process.
        pin_memory: pin host batches before the copy; None = on for CUDA devices.
        prefetch: batches each worker decodes ahead.
    """

    channels = 3

    def __init__(self, files: Sequence[str | Path], labels: Sequence[int] | Tensor | None,
                 image_size: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, device: str | torch.device = "cpu",
                 workers: int | None = None, pin_memory: bool | None = None,
                 prefetch: int = 4) -> None:
        n = len(files)
        check_batch(n, batch_size, world_size)
        self.files = [Path(f) for f in files]
        self.labels = (torch.full((n,), -1, dtype=torch.int64) if labels is None
                       else torch.as_tensor(labels, dtype=torch.int64))
        if self.labels.shape != (n,):
            raise ValueError(f"{len(self.labels)} labels for {n} files")
        self.image_size = image_size or FOLDER_DEFAULT_SIZE
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.local_batch = batch_size // world_size
        self.device = torch.device(device)
        self.workers = min(4, os.cpu_count() or 1) if workers is None else workers
        self.pin_memory = self.device.type == "cuda" if pin_memory is None else pin_memory
        self.prefetch = prefetch
        self._loader: DataLoader | None = None
        self._pass = 0  # counts passes: an older generator stops when a newer one starts

    @classmethod
    def from_folder(cls, root: str | Path, split: str, image_size: int, batch_size: int,
                    seed: int, subset: int = 0, **kwargs) -> StreamLoader:
        """A loader over `list_folder` (``subset``: the first files)."""
        files, labels, _ = list_folder(root, split)
        if subset:
            if subset > len(files):
                raise SimCLRError(f"data.subset={subset} is larger than folder {split} "
                                  f"({len(files)} images): lower it, or set 0 to use all")
            files, labels = files[:subset], labels[:subset]
        return cls(files, labels, image_size, batch_size, seed, **kwargs)

    def __len__(self) -> int:
        return len(self.files) // self.batch_size

    @property
    def shape(self) -> tuple[int, int, int]:
        """C x S x S of every image."""
        return self.channels, self.image_size, self.image_size

    def permutation(self, epoch: int) -> Tensor:
        """int64 N: `epoch_permutation` on ``device``, as TensorLoader's on its device."""
        return epoch_permutation(len(self.files), self.seed, epoch, self.device)

    def batches(self, epoch: int, start: int = 0) -> Iterator[Tensor]:
        """This rank's batches of ``epoch`` from step ``start`` (uint8 local_batch x C x S x S)."""
        perm = epoch_permutation(len(self.files), self.seed, epoch)  # on the CPU, as drawn
        plan = [idx.tolist() for idx in rank_batches(perm, self.batch_size, self.rank,
                                                     self.world_size, start)]
        return self._run(plan, self.device)

    def chunks(self, size: int = 4096) -> Iterator[Tensor]:
        """All images in file order, uint8 CPU chunks of ``size`` (the last one shorter)."""
        n = len(self.files)
        return self._run([list(range(i, min(i + size, n))) for i in range(0, n, size)],
                         torch.device("cpu"))

    def sample(self, k: int, seed: int = 0) -> Tensor:
        """k images (all if k >= N) drawn without replacement, in file order: uint8 CPU."""
        n = len(self.files)
        if k >= n:
            return torch.cat(list(self.chunks()))
        pick = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]
        return torch.cat(list(self._run([sorted(pick.tolist())], torch.device("cpu"))))

    def close(self) -> None:
        """Stop the worker processes (they also stop when the loader is garbage-collected)."""
        self._pass += 1
        self._loader = None

    def __enter__(self) -> StreamLoader:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def _dataloader(self) -> DataLoader:
        if self._loader is None:
            workers = self.workers
            self._loader = DataLoader(
                _Decode(self.files, self.image_size), batch_sampler=_Plan(),
                num_workers=workers, collate_fn=_collate, pin_memory=self.pin_memory,
                persistent_workers=workers > 0, prefetch_factor=self.prefetch if workers else None)
        return self._loader

    def _run(self, plan: list[list[int]], device: torch.device) -> Iterator[Tensor]:
        self._pass += 1
        if plan:  # set here, not in the generator: a later pass must replace this one's plan
            loader = self._dataloader()
            loader.batch_sampler.batches = plan
        return self._deliver(plan, device, self._pass)

    def _deliver(self, plan: list[list[int]], device: torch.device,
                 current: int) -> Iterator[Tensor]:
        if not plan:
            return
        it = iter(self._dataloader())
        for _ in range(len(plan)):
            if current != self._pass:
                raise RuntimeError("another pass over this StreamLoader started: run one "
                                   "batches()/chunks() iteration at a time")
            images, bad = next(it)
            if bad:
                path = self.files[bad[0]]
                more = f" (and {len(bad) - 1} more in the batch)" if len(bad) > 1 else ""
                raise SimCLRError(f"cannot decode {path}{more} while streaming (its header is "
                                  "valid, its data is not): fix or remove it and restart")
            yield images.to(device, non_blocking=True)


__all__ = ["StreamLoader", "fits_in_memory", "list_folder"]
