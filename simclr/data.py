"""Datasets as tensors: official-format readers and the ``DATASETS`` registry.

Every reader returns ``(images, labels)``: uint8 ``N x C x H x W`` (contiguous, CPU) and int64
``N`` labels, -1 meaning unlabeled. Readers take the files in their official formats, either
the archive or its extracted folder in the data root; bad input is a one-line SimCLRError.

Formats:
    cifar10, cifar100, cifar100_coarse: python-2 pickles (``cifar-10-python.tar.gz``,
        ``cifar-100-python.tar.gz`` or their ``cifar-10-batches-py/``, ``cifar-100-python/``
        folders) read by a restricted unpickler; CIFAR-10's binary version
        (``cifar-10-binary.tar.gz`` / ``cifar-10-batches-bin/``) too. Rows are 3072 bytes,
        channel-major 3 x 32 x 32. ``cifar100_coarse`` uses the 20 superclass labels.
    stl10: ``stl10_binary/`` (or its tar.gz); each image channel-major with every channel
        stored column-major, hence the transpose of the last two axes; labels 1..10 -> 0..9.
    fashion_mnist, mnist: IDX files, gz or raw; images N x 1 x 28 x 28.
    folder: a folder of images, one subfolder per class or flat (see :mod:`simclr.folder`).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from simclr.download import (
    check_memory,
    ensure_files,
    read_tar_members,
    restricted_load,
)
from simclr.errors import SimCLRError
from simclr.folder import FOLDER_DEFAULT_SIZE, cache_home, read_folder
from simclr.idx import read_idx

if TYPE_CHECKING:  # a type only: config imports this module's registry
    from simclr.config import Data

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


def _to_torch(images: np.ndarray, labels: Any) -> tuple[Tensor, Tensor]:
    images = np.require(images, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"])
    return torch.from_numpy(images), torch.as_tensor(np.asarray(labels), dtype=torch.int64)


def _check_labels(labels: np.ndarray, classes: int, source: str | Path) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise SimCLRError(f"{source} has labels outside 0..{classes - 1} (found {labels.min()}.."
                          f"{labels.max()}): it is not the official file; download it again")


def _pick(table: dict[str, Any], split: str, name: str) -> Any:
    if split not in table:
        raise SimCLRError(f"{name} has no split '{split}': choose one of {', '.join(table)}")
    return table[split]


def _members(folder: Path, subdir: str, archive: str, names: list[str]) -> dict[str, bytes] | None:
    """Files ``subdir/name`` from the extracted folder, else from the archive; None if neither."""
    if (folder / subdir).is_dir():
        paths = [folder / subdir / n for n in names]
        check_memory(sum(p.stat().st_size for p in paths if p.is_file()), f"{folder / subdir}")
        out = {}
        for n in names:
            path = folder / subdir / n
            try:
                out[n] = path.read_bytes()
            except OSError as e:
                raise SimCLRError(f"cannot read {path} ({e.strerror}): the folder is incomplete; "
                                  f"delete it and extract {archive} again") from None
        return out
    if (folder / archive).is_file():
        got = read_tar_members(folder / archive, [f"{subdir}/{n}" for n in names])
        return {n: got[f"{subdir}/{n}"] for n in names}
    return None


# --- CIFAR -------------------------------------------------------------------------------

_CIFAR10_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def _cifar_pickle(data: bytes, source: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """(N x 3 x 32 x 32 uint8, N int64) from one python-2 CIFAR batch pickle."""
    batch = restricted_load(io.BytesIO(data), source)
    if not isinstance(batch, dict):
        raise SimCLRError(f"{source} is not a CIFAR batch (no dict inside): download it again")
    batch = {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    x, y = batch.get("data"), batch.get(label_key)
    if isinstance(y, np.ndarray) and y.ndim == 1 and y.dtype.kind in "iu":
        y = y.astype(np.int64)
    elif isinstance(y, list) and all(type(v) is int and abs(v) < 2**63 for v in y):
        y = np.array(y, dtype=np.int64)  # the official files hold lists of ints
    else:
        y = None
    ok = (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 2
          and x.shape[1] == 3072 and y is not None and y.shape == (len(x),))
    if not ok:
        raise SimCLRError(f"{source} lacks CIFAR 'data' (uint8 N x 3072) with matching "
                          f"'{label_key}': it is not the official file; download it again")
    return x.reshape(-1, 3, 32, 32), y


def _cifar_binary(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(N x 3 x 32 x 32 uint8, N int64) from CIFAR-10 binary records (label byte + 3072)."""
    if not data or len(data) % 3073:
        raise SimCLRError(f"{source} is corrupt or truncated ({len(data)} bytes is not a whole "
                          "number of 3073-byte records): delete it and download again")
    records = np.frombuffer(data, np.uint8).reshape(-1, 3073)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)


def _cifar(root: Path, split: str, download: bool, files: str, classes: int,
           label_key: str, python: tuple[str, str], batches: dict[str, list[str]],
           binary: tuple[str, str] | None = None) -> tuple[Tensor, Tensor]:
    folder = ensure_files(files, root, download)
    names = _pick(batches, split, files)
    parts = []
    if (got := _members(folder, *python, names)) is not None:
        parts = [_cifar_pickle(got[n], f"{folder / python[0] / n}", label_key) for n in names]
    elif binary and (got := _members(folder, *binary, [f"{n}.bin" for n in names])) is not None:
        parts = [_cifar_binary(got[f"{n}.bin"], f"{folder / binary[0] / n}.bin") for n in names]
    else:
        raise SimCLRError(f"{files} files not found in {folder}: put {python[1]} there")
    images = np.concatenate([x for x, _ in parts])
    labels = np.concatenate([y for _, y in parts])
    _check_labels(labels, classes, folder)
    return _to_torch(images, labels)


def read_cifar10(root: Path, split: str = "train", download: bool = True,
                 image_size: int = 0) -> tuple[Tensor, Tensor]:
    """CIFAR-10 (python or binary version): train 50000 / test 10000 x 3 x 32 x 32."""
    return _cifar(root, split, download, "cifar10", 10, "labels",
                  ("cifar-10-batches-py", "cifar-10-python.tar.gz"), _CIFAR10_BATCHES,
                  ("cifar-10-batches-bin", "cifar-10-binary.tar.gz"))


def read_cifar100(root: Path, split: str = "train", download: bool = True,
                  image_size: int = 0, coarse: bool = False) -> tuple[Tensor, Tensor]:
    """CIFAR-100: 100 fine labels, or the 20 superclasses with ``coarse``."""
    return _cifar(root, split, download, "cifar100", 20 if coarse else 100,
                  "coarse_labels" if coarse else "fine_labels",
                  ("cifar-100-python", "cifar-100-python.tar.gz"),
                  {"train": ["train"], "test": ["test"]})


# --- IDX (MNIST, Fashion-MNIST) ----------------------------------------------------------

def read_mnist(root: Path, split: str = "train", download: bool = True, image_size: int = 0,
               name: str = "mnist") -> tuple[Tensor, Tensor]:
    """MNIST-style IDX files (gz or raw): N x 1 x 28 x 28; ``name`` picks the dataset's files."""
    folder = ensure_files(name, root, download)
    prefix = _pick({"train": "train", "test": "t10k"}, split, name)

    def path(stem: str) -> Path:
        gz = folder / f"{stem}.gz"
        return gz if gz.exists() else folder / stem

    images_path = path(f"{prefix}-images-idx3-ubyte")
    labels_path = path(f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
    if len(images) != len(labels):
        raise SimCLRError(f"{images_path} has {len(images)} images but {labels_path} has "
                          f"{len(labels)} labels: they do not belong together; download both again")
    _check_labels(labels, 10, labels_path)
    return _to_torch(images[:, None], labels.astype(np.int64))  # N x 1 x H x W


# --- STL-10 ------------------------------------------------------------------------------

_STL_SPLITS = {"train": [("train_X.bin", "train_y.bin")], "test": [("test_X.bin", "test_y.bin")],
               "unlabeled": [("unlabeled_X.bin", None)],
               "train+unlabeled": [("train_X.bin", "train_y.bin"), ("unlabeled_X.bin", None)]}
_STL_IMAGE = 3 * 96 * 96


def _stl_bytes(folder: Path, name: str) -> tuple[np.ndarray, str]:
    """A 1-D uint8 array of one stl10_binary file (memory-mapped when extracted)."""
    path = folder / "stl10_binary" / name
    if path.is_file():
        try:
            if path.stat().st_size == 0:
                return np.zeros(0, np.uint8), str(path)
            return np.memmap(path, np.uint8, mode="r"), str(path)
        except OSError as e:
            raise SimCLRError(f"cannot read {path} ({e.strerror}): check data.root") from None
    if (folder / "stl10_binary").is_dir():
        raise SimCLRError(f"{path} is missing: extract stl10_binary.tar.gz again")
    archive = folder / "stl10_binary.tar.gz"
    got = read_tar_members(archive, [f"stl10_binary/{name}"])
    return np.frombuffer(got[f"stl10_binary/{name}"], np.uint8), f"{archive}:{name}"


def read_stl10(root: Path, split: str = "train", download: bool = True,
               image_size: int = 0) -> tuple[Tensor, Tensor]:
    """STL-10: train 5000 / test 8000 / unlabeled 100000 (labels -1) x 3 x 96 x 96."""
    folder = ensure_files("stl10", root, download)
    parts, labels = [], []
    for x_name, y_name in _pick(_STL_SPLITS, split, "stl10"):
        raw, source = _stl_bytes(folder, x_name)
        if raw.size == 0 or raw.size % _STL_IMAGE:
            raise SimCLRError(f"{source} is corrupt or truncated ({raw.size} bytes is not a whole "
                              "number of 96x96 RGB images): delete it and download again")
        n = raw.size // _STL_IMAGE
        parts.append(raw.reshape(n, 3, 96, 96))  # as stored: the last two axes are (W, H)
        if y_name is None:
            labels.append(np.full(n, -1, np.int64))
            continue
        y, y_source = _stl_bytes(folder, y_name)
        if y.size != n:
            raise SimCLRError(f"{y_source} has {y.size} labels for {n} images in {source}: "
                              "they do not belong together; download the dataset again")
        y = y.astype(np.int64) - 1  # 1..10 -> 0..9
        _check_labels(y, 10, y_source)
        labels.append(y)
    total = sum(len(x) for x in parts)
    fix = "use data.split=train" if "unlabeled" in split else "use a machine with more"
    check_memory(total * _STL_IMAGE, f"stl10 {split} ({total} images)", f"free memory or {fix}")
    images = np.empty((total, 3, 96, 96), np.uint8)  # one copy, no concat
    start = 0
    for x in parts:
        images[start:start + len(x)] = x.transpose(0, 1, 3, 2)  # N x 3 x H x W
        start += len(x)
    return torch.from_numpy(images), torch.from_numpy(np.concatenate(labels))


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
              "splits": tuple(_STL_SPLITS), "files": "stl10"},
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
        name: a key of :data:`DATASETS`.
        split: one of the dataset's ``splits`` (STL-10 also ``unlabeled``, ``train+unlabeled``).
        root: the data folder; None -> :func:`default_root`.
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
    """The training images of a :class:`~simclr.config.Data` config, ``subset`` applied."""
    images, labels = load_split(cfg.name, cfg.split, cfg.root, cfg.download, cfg.image_size)
    if cfg.subset:
        if cfg.subset > len(images):
            raise SimCLRError(f"data.subset={cfg.subset} is larger than {cfg.name} {cfg.split} "
                              f"({len(images)} images): lower it, or set 0 to use all")
        images, labels = images[:cfg.subset].clone(), labels[:cfg.subset].clone()
    return images, labels


__all__ = ["DATASETS", "cache_home", "default_root", "load_split", "load_train",
           "read_cifar10", "read_cifar100", "read_folder", "read_idx", "read_mnist", "read_stl10",
           "resize"]


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

