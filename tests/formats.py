"""Tiny datasets written in the exact official file formats, for tests.

Each writer puts files where a user would (``dir`` plays the role of ``data.root``) and returns
the images and labels it wrote, as the readers must return them: uint8 ``N x C x H x W`` and
int64 ``N`` torch tensors, keyed by split. Pixels are random from ``seed``, so two calls with
the same arguments write the same bytes.

- :func:`write_cifar10_python`, :func:`write_cifar100_python`: protocol-2 pickles as Python 2
  wrote them (byte-string keys and values via BINSTRING, arrays through
  ``numpy.core.multiarray._reconstruct``, labels as lists), in the official tar.gz or its
  extracted folder.
- :func:`write_cifar10_binary`: ``cifar-10-batches-bin/*.bin`` records (label byte + 3072).
- :func:`write_idx`: the four MNIST/Fashion-MNIST IDX files, gzip-compressed or raw.
- :func:`write_stl10`: ``stl10_binary/*.bin`` (each channel stored column-major).
- :func:`write_image_folder`: PNGs in one subfolder per class, or flat.
- :func:`py2_pickle`: the Python-2-style pickler behind the CIFAR writers.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

Split = tuple[Tensor, Tensor]


class _Global:
    """A reference to ``module.name`` written as a GLOBAL opcode without importing it."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self) -> None:  # pickle requires reduce functions to be callable
        raise NotImplementedError


_RECONSTRUCT = _Global("numpy.core.multiarray", "_reconstruct")  # numpy 1.x / Python 2 name


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler lets us replace opcode writers
    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes | str) -> None:
        data = obj if isinstance(obj, bytes) else obj.encode("latin-1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    def save_raw_global(self, obj: _Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[bytes] = save_py2_str  # a Python 2 ``str``
    dispatch[str] = save_py2_str
    dispatch[_Global] = save_raw_global

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray):  # as numpy 1.x under Python 2 reduced arrays
            state = obj.__reduce__()[2]  # (1, shape, dtype, is_fortran, raw bytes)
            return _RECONSTRUCT, (np.ndarray, (0,), b"b"), state
        return NotImplemented


def py2_pickle(obj: Any) -> bytes:
    """Pickle ``obj`` as Python 2's cPickle protocol 2 wrote the CIFAR batches."""
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def _rng_images(rng: np.random.Generator, n: int, c: int, side: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, c, side, side), dtype=np.uint8)


def _write_tree(files: dict[str, bytes], dir: Path, archive: str | None) -> None:
    """Write ``{relative path: bytes}`` as files under dir, or as the tar.gz ``dir/archive``."""
    dir.mkdir(parents=True, exist_ok=True)
    if archive is None:
        for rel, data in files.items():
            (dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (dir / rel).write_bytes(data)
        return
    with tarfile.open(dir / archive, "w:gz") as tar:
        for rel, data in files.items():
            info = tarfile.TarInfo(rel)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))


def _tensors(images: np.ndarray, labels: np.ndarray) -> Split:
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def write_cifar10_python(dir: str | Path, n_per_batch: int, archive: bool = True,
                         seed: int = 0) -> dict[str, Split]:
    """``cifar-10-python.tar.gz`` (or its ``cifar-10-batches-py/`` folder when not archive).

    Five train batches and one test batch of ``n_per_batch`` images each, plus batches.meta.

    Returns:
        ``{"train": (5n x 3 x 32 x 32, 5n), "test": (n x 3 x 32 x 32, n)}``.
    """
    rng = np.random.default_rng(seed)
    files, out = {}, {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        x = _rng_images(rng, n_per_batch, 3, 32)
        y = rng.integers(0, 10, n_per_batch)
        files[f"cifar-10-batches-py/{name}"] = py2_pickle({
            b"batch_label": f"batch {i + 1} of 6".encode(),
            b"labels": [int(v) for v in y],
            b"data": x.reshape(n_per_batch, 3072),
            b"filenames": [f"img_{i}_{j}.png".encode() for j in range(n_per_batch)],
        })
        out[name] = (x, y)
    files["cifar-10-batches-py/batches.meta"] = py2_pickle({
        b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog",
                         b"horse", b"ship", b"truck"],
        b"num_cases_per_batch": n_per_batch, b"num_vis": 3072})
    _write_tree(files, Path(dir), "cifar-10-python.tar.gz" if archive else None)
    train = [out[n] for n in names[:5]]
    return {"train": _tensors(np.concatenate([x for x, _ in train]),
                              np.concatenate([y for _, y in train])),
            "test": _tensors(*out["test_batch"])}


def write_cifar100_python(dir: str | Path, n_train: int, n_test: int, archive: bool = True,
                          seed: int = 0) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """``cifar-100-python.tar.gz`` (or its ``cifar-100-python/`` folder): train, test, meta.

    Returns:
        ``{split: (images N x 3 x 32 x 32, fine labels N, coarse labels N)}``.
    """
    rng = np.random.default_rng(seed)
    files, out = {}, {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = _rng_images(rng, n, 3, 32)
        fine, coarse = rng.integers(0, 100, n), rng.integers(0, 20, n)
        files[f"cifar-100-python/{split}"] = py2_pickle({
            b"filenames": [f"{split}_{j}.png".encode() for j in range(n)],
            b"batch_label": f"{split}ing batch 1 of 1".encode(),
            b"fine_labels": [int(v) for v in fine],
            b"coarse_labels": [int(v) for v in coarse],
            b"data": x.reshape(n, 3072),
        })
        out[split] = (*_tensors(x, fine), torch.from_numpy(coarse.astype(np.int64)))
    files["cifar-100-python/meta"] = py2_pickle({
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    _write_tree(files, Path(dir), "cifar-100-python.tar.gz" if archive else None)
    return out


def write_cifar10_binary(dir: str | Path, n_per_batch: int, archive: bool = True,
                         seed: int = 0) -> dict[str, Split]:
    """``cifar-10-binary.tar.gz`` (or ``cifar-10-batches-bin/``): 3073-byte records.

    Returns:
        ``{"train": (5n x 3 x 32 x 32, 5n), "test": (n x 3 x 32 x 32, n)}``.
    """
    rng = np.random.default_rng(seed)
    files, xs, ys = {}, [], []
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name in names:
        x = _rng_images(rng, n_per_batch, 3, 32)
        y = rng.integers(0, 10, n_per_batch).astype(np.uint8)
        records = np.concatenate([y[:, None], x.reshape(n_per_batch, 3072)], axis=1)
        files[f"cifar-10-batches-bin/{name}"] = records.tobytes()
        xs.append(x)
        ys.append(y)
    files["cifar-10-batches-bin/batches.meta.txt"] = b"airplane\nautomobile\nbird\ncat\ndeer\n" \
        b"dog\nfrog\nhorse\nship\ntruck\n"
    _write_tree(files, Path(dir), "cifar-10-binary.tar.gz" if archive else None)
    return {"train": _tensors(np.concatenate(xs[:5]), np.concatenate(ys[:5])),
            "test": _tensors(xs[5], ys[5])}


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of a uint8 array: magic 0x000008NN (NN = ndim), big-endian dims, data."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(dir: str | Path, n: int, gz: bool = True, n_test: int | None = None,
              seed: int = 0) -> dict[str, Split]:
    """The four (Fashion-)MNIST IDX files: ``train-images-idx3-ubyte[.gz]`` etc.

    Returns:
        ``{"train": (n x 1 x 28 x 28, n), "test": (n_test x 1 x 28 x 28, n_test)}``.
    """
    rng, dir, out = np.random.default_rng(seed), Path(dir), {}
    dir.mkdir(parents=True, exist_ok=True)
    for split, prefix, count in (("train", "train", n), ("test", "t10k", n_test or n)):
        x = _rng_images(rng, count, 1, 28)
        y = rng.integers(0, 10, count).astype(np.uint8)
        for kind, data in (("images-idx3", idx_bytes(x[:, 0])), ("labels-idx1", idx_bytes(y))):
            path = dir / f"{prefix}-{kind}-ubyte"
            if gz:
                path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
            else:
                path.write_bytes(data)
        out[split] = _tensors(x, y)
    return out


def write_levels_idx(root: Path, n_train: int, n_test: int) -> None:
    """MNIST-format files whose class c (0-9) is the brightness level 25 + 22 c, with uniform
    noise of +-60 per pixel: a task a random small encoder half solves (on a CPU, fp32: ~88%
    linear, ~81% kNN), so results are neither saturated nor near chance. Crop and flip keep
    the class (fine-tuning)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        noise = rng.integers(-60, 61, (n, 28, 28))
        x = (25 + 22 * y[:, None, None] + noise).clip(0, 255).astype(np.uint8)
        for kind, data in (("images-idx3", idx_bytes(x)), ("labels-idx1", idx_bytes(y))):
            (root / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(data))


def write_stl10(dir: str | Path, n: int, archive: bool = False, n_unlabeled: int | None = None,
                seed: int = 0) -> dict[str, Split]:
    """``stl10_binary/`` (or ``stl10_binary.tar.gz``): train/test X and y, unlabeled_X.

    Images are stored as the official files store them: channel-major, each 96 x 96 channel
    column-major; labels are 1..10 on disk.

    Returns:
        ``{"train", "test", "unlabeled": (N x 3 x 96 x 96, N)}``, labels 0..9 or -1.
    """
    rng, files, out = np.random.default_rng(seed), {}, {}
    for split in ("train", "test", "unlabeled"):
        count = (n_unlabeled or n) if split == "unlabeled" else n
        x = _rng_images(rng, count, 3, 96)
        files[f"stl10_binary/{split}_X.bin"] = x.transpose(0, 1, 3, 2).tobytes()
        if split == "unlabeled":
            y = np.full(count, -1)
        else:
            y = rng.integers(0, 10, count)
            files[f"stl10_binary/{split}_y.bin"] = (y + 1).astype(np.uint8).tobytes()
        out[split] = _tensors(x, y)
    files["stl10_binary/class_names.txt"] = b"airplane\nbird\ncar\ncat\ndeer\ndog\nhorse\n" \
        b"monkey\nship\ntruck\n"
    _write_tree(files, Path(dir), "stl10_binary.tar.gz" if archive else None)
    return out


def write_image_folder(dir: str | Path, classes: int | list[str], n_per_class: int, size: int,
                       seed: int = 0, mode: str = "RGB") -> Split:
    """PNGs ``dir/<class>/<000>.png``, or ``dir/<000>.png`` when ``classes`` is 0 (flat).

    Args:
        classes: a number of classes (named ``class0``...) or their names; 0 = flat.
        mode: Pillow mode to save ("RGB" or "L"); grayscale is returned replicated to RGB.

    Returns:
        (N x 3 x size x size, N) in the reader's order (sorted class, then file name);
        labels are class indices in sorted name order, or -1 when flat.
    """
    from PIL import Image

    rng, dir = np.random.default_rng(seed), Path(dir)
    names = [f"class{i}" for i in range(classes)] if isinstance(classes, int) else list(classes)
    folders = [(dir / c, i) for i, c in enumerate(sorted(names))] or [(dir, -1)]
    xs, ys = [], []
    for folder, label in folders:
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(n_per_class):
            x = _rng_images(rng, 1, 3 if mode == "RGB" else 1, size)[0]
            hwc = x.transpose(1, 2, 0)
            Image.fromarray(hwc if mode == "RGB" else hwc[:, :, 0]).save(folder / f"{j:03d}.png")
            xs.append(np.repeat(x, 3, axis=0) if mode == "L" else x)
            ys.append(label)
    return _tensors(np.stack(xs), np.array(ys))
