"""Datasets as tensors: the ``DATASETS`` registry, the data root of each, loading a split
(resized when asked), the training split of a config, and the images' channel statistics.

Every dataset gives ``(images, labels)``: uint8 ``N x C x H x W`` (contiguous, CPU) and int64
``N`` labels, -1 meaning unlabeled (`simclr.data.readers`, `simclr.data.folder`).
The registry's keys are the schema's ``data.name`` choices
(`simclr.config.schema.DatasetName`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from simclr.config import Data
from simclr.data.download import check_memory
from simclr.data.folder import FOLDER_DEFAULT_SIZE, cache_home, read_folder
from simclr.data.readers import STL_SPLITS, read_cifar10, read_cifar100, read_mnist, read_stl10
from simclr.errors import SimCLRError

SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian dataset-fashion-mnist


def default_root(name: str) -> Path:
    """Where dataset ``name`` is looked for (and downloaded to) when ``data.root`` is None.

    Fashion-MNIST: the Debian package's folder if it exists. Otherwise
    ``$SIMCLR_DATA/<files>`` or ``<cache_home>/data/<files>``, ``<files>`` being the dataset
    whose files it reads (``cifar100_coarse`` shares ``cifar100``).
    """
    if name == "fashion_mnist" and SYSTEM_FASHION_MNIST.is_dir():
        return SYSTEM_FASHION_MNIST
    base = os.environ.get("SIMCLR_DATA")
    home = Path(base).expanduser() if base else cache_home() / "data"
    return home / (_spec(name).get("files") or name)


# --- registry and entry points -----------------------------------------------------------

_TRAIN_TEST = ("train", "test")
DATASETS: dict[str, dict[str, Any]] = {
    # reader(root, split, download, image_size) -> (uint8 N x C x H x W, int64 N);
    # size: native side (folder: the side used when image_size is 0);
    # classes: 0 = from the data; files: the RESOURCES entry whose files it reads.
    "cifar10": {"reader": read_cifar10, "channels": 3, "size": 32, "classes": 10,
                "splits": _TRAIN_TEST, "files": "cifar10"},
    "cifar100": {"reader": read_cifar100, "channels": 3, "size": 32, "classes": 100,
                 "splits": _TRAIN_TEST, "files": "cifar100"},
    "cifar100_coarse": {"reader": partial(read_cifar100, coarse=True), "channels": 3,
                        "size": 32, "classes": 20, "splits": _TRAIN_TEST, "files": "cifar100"},
    "stl10": {"reader": read_stl10, "channels": 3, "size": 96, "classes": 10,
              "splits": tuple(STL_SPLITS), "files": "stl10"},
    "fashion_mnist": {"reader": partial(read_mnist, name="fashion_mnist"), "channels": 1,
                      "size": 28, "classes": 10, "splits": _TRAIN_TEST, "files": "fashion_mnist"},
    "mnist": {"reader": read_mnist, "channels": 1, "size": 28, "classes": 10,
              "splits": _TRAIN_TEST, "files": "mnist"},
    "folder": {"reader": read_folder, "channels": 3, "size": FOLDER_DEFAULT_SIZE, "classes": 0,
               "splits": _TRAIN_TEST, "files": None},
}


def _spec(name: str) -> dict[str, Any]:
    if name not in DATASETS:
        raise SimCLRError(f"unknown dataset '{name}': choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def resize(images: Tensor, size: int, chunk_bytes: int = 1 << 28) -> Tensor:
    """uint8 N x C x H x W -> uint8 N x C x size x size: bilinear, antialiased, rounded.

    Works in float on chunks of at most about ``chunk_bytes``, on the images' device.
    """
    n, c, h, w = images.shape
    out = torch.empty((n, c, size, size), dtype=torch.uint8, device=images.device)
    step = max(1, chunk_bytes // (8 * c * max(h * w, size * size)))
    for i in range(0, n, step):
        x = images[i:i + step].float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
        out[i:i + step] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


def load_split(name: str, split: str = "train", root: str | Path | None = None,
               download: bool = True, image_size: int = 0) -> tuple[Tensor, Tensor]:
    """One split of a dataset as (uint8 N x C x H x W contiguous CPU, int64 N; -1 = unlabeled).

    Args:
        name: a key of `DATASETS`.
        split: one of the dataset's ``splits`` (STL-10 also ``unlabeled``, ``train+unlabeled``).
        root: the data folder; None -> `default_root`.
        download: fetch missing official files (md5-checked).
        image_size: resize to this side; 0 keeps the native size.
    """
    spec = _spec(name)
    if split not in spec["splits"]:
        raise SimCLRError(f"{name} has no split '{split}': set data.split to one of "
                          f"{', '.join(spec['splits'])}")
    if root is None and name == "folder":
        raise SimCLRError("data.name=folder needs data.root: set it to a folder of images")
    path = default_root(name) if root is None else Path(root).expanduser()
    images, labels = spec["reader"](path, split, download, image_size)
    if image_size > 0 and tuple(images.shape[-2:]) != (image_size, image_size):
        n, c = images.shape[:2]
        check_memory(n * c * image_size**2, f"{name} at data.image_size={image_size}",
                     "use a smaller data.image_size")
        images = resize(images, image_size)
    return images, labels


def load_train(cfg: Data) -> tuple[Tensor, Tensor]:
    """The training images of a `Data` config, ``subset`` applied."""
    images, labels = load_split(cfg.name, cfg.split, cfg.root, cfg.download, cfg.image_size)
    if cfg.subset:
        if cfg.subset > len(images):
            raise SimCLRError(f"data.subset={cfg.subset} is larger than {cfg.name} {cfg.split} "
                              f"({len(images)} images): lower it, or set 0 to use all")
        images, labels = images[:cfg.subset].clone(), labels[:cfg.subset].clone()
    return images, labels




def channel_stats(images: torch.Tensor | Iterable[torch.Tensor],
                  chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units of uint8 images N x C x H x W.

    ``images`` may also be an iterable of such chunks (a streamed folder's ``chunks()``); the
    same chunks give the same bits.
    """
    chunks = images
    if isinstance(images, torch.Tensor):
        chunks = (images[i:i + chunk] for i in range(0, images.shape[0], chunk))
    total = squares = None
    n = 0
    for x in chunks:
        x = x.to(torch.float64) / 255
        if total is None:
            total = torch.zeros(x.shape[1], dtype=torch.float64)
            squares = torch.zeros(x.shape[1], dtype=torch.float64)
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
        n += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / n
    std = (squares / n - mean**2).clamp_min(1e-12).sqrt()
    return [round(v, 6) for v in mean.tolist()], [round(v, 6) for v in std.tolist()]


__all__ = ["DATASETS", "channel_stats", "default_root", "load_split", "load_train", "resize"]
