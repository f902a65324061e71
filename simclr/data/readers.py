"""The official-format readers: each returns ``(images, labels)``, uint8 ``N x C x H x W``
(contiguous, CPU) and int64 ``N`` labels (-1 unlabeled), from the archive or its extracted
folder in the data root; bad input is a one-line SimCLRError.

Formats:
    cifar10, cifar100, cifar100_coarse: python-2 pickles (``cifar-10-python.tar.gz``,
        ``cifar-100-python.tar.gz`` or their ``cifar-10-batches-py/``, ``cifar-100-python/``
        folders) read by a restricted unpickler; CIFAR-10's binary version
        (``cifar-10-binary.tar.gz`` / ``cifar-10-batches-bin/``) too. Rows are 3072 bytes,
        channel-major 3 x 32 x 32. ``cifar100_coarse`` uses the 20 superclass labels.
    stl10: ``stl10_binary/`` (or its tar.gz); each image channel-major with every channel
        stored column-major, hence the transpose of the last two axes; labels 1..10 -> 0..9.
    fashion_mnist, mnist: IDX files, gz or raw; images N x 1 x 28 x 28.
    folder: a folder of images (`simclr.data.folder`).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from simclr.data.download import check_memory, ensure_files, read_tar_members, restricted_load
from simclr.data.idx import read_idx
from simclr.errors import SimCLRError


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

STL_SPLITS = {"train": [("train_X.bin", "train_y.bin")], "test": [("test_X.bin", "test_y.bin")],
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
    for x_name, y_name in _pick(STL_SPLITS, split, "stl10"):
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


__all__ = ["read_cifar10", "read_cifar100", "read_mnist", "read_stl10"]
