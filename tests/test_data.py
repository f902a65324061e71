"""Tests of simclr.data: readers return the exact pixels and labels of official-format files."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import simclr.data.datasets as data
import simclr.data.download
import simclr.data.folder
from simclr.config import Data
from simclr.data.datasets import DATASETS, load_split, load_train, resize
from simclr.data.download import RESOURCES, Resource, md5sum
from simclr.data.loader import TensorLoader
from simclr.errors import SimCLRError
from tests import formats


@pytest.fixture(autouse=True)
def private_dirs(tmp_path, monkeypatch):
    """Keep caches and default data roots inside the test's folder (hidden: folder skips it)."""
    monkeypatch.setenv("SIMCLR_CACHE", str(tmp_path / ".cache"))
    monkeypatch.delenv("SIMCLR_DATA", raising=False)
    monkeypatch.delenv("SIMCLR_MIRROR", raising=False)


def assert_same(got: tuple[torch.Tensor, torch.Tensor], images, labels):
    x, y = got
    assert x.dtype == torch.uint8 and y.dtype == torch.int64
    assert x.is_contiguous() and x.device.type == "cpu"
    assert x.shape == images.shape
    assert torch.equal(x, images) and torch.equal(y, labels)


def one_line(err: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(err.value)
    return str(err.value)


# --- CIFAR ---------------------------------------------------------------------------------


@pytest.mark.parametrize("archive", [True, False])
def test_cifar10_python(tmp_path, archive):
    want = formats.write_cifar10_python(tmp_path, 3, archive=archive)
    for split in ("train", "test"):
        assert_same(load_split("cifar10", split, tmp_path, download=False), *want[split])
    assert load_split("cifar10", "train", tmp_path, download=False)[0].shape == (15, 3, 32, 32)


def test_cifar10_channel_order(tmp_path):
    """Row layout is channel-major: the first 1024 bytes are the red plane."""
    want = formats.write_cifar10_python(tmp_path, 1, archive=False)
    x, _ = load_split("cifar10", "test", tmp_path, download=False)
    row = pickle_row(tmp_path / "cifar-10-batches-py" / "test_batch")
    assert torch.equal(x[0, 0].flatten(), row[:1024])
    assert torch.equal(x[0, 2, 0, :], row[2048:2080])  # blue, first image row
    assert torch.equal(x, want["test"][0])


def pickle_row(path: Path) -> torch.Tensor:
    from simclr.data.download import restricted_load

    with open(path, "rb") as f:
        return torch.from_numpy(restricted_load(f)[b"data"][0].copy())


@pytest.mark.parametrize("archive", [True, False])
def test_cifar10_binary(tmp_path, archive):
    want = formats.write_cifar10_binary(tmp_path, 4, archive=archive)
    for split in ("train", "test"):
        assert_same(load_split("cifar10", split, tmp_path, download=False), *want[split])


@pytest.mark.parametrize("archive", [True, False])
def test_cifar100_fine_and_coarse(tmp_path, archive):
    want = formats.write_cifar100_python(tmp_path, 6, 4, archive=archive)
    for split in ("train", "test"):
        images, fine, coarse = want[split]
        assert_same(load_split("cifar100", split, tmp_path, download=False), images, fine)
        assert_same(load_split("cifar100_coarse", split, tmp_path, download=False),
                    images, coarse)


def test_malicious_cifar_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    formats.write_cifar10_python(tmp_path, 2, archive=False)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(
        pickle.dumps({"data": Payload(), "labels": [0]}, protocol=2))
    with pytest.raises(SimCLRError, match="system': refused") as err:
        load_split("cifar10", "test", tmp_path, download=False)
    assert "test_batch" in one_line(err)
    assert not marker.exists()


def test_cifar_wrong_content_and_truncation(tmp_path):
    formats.write_cifar10_python(tmp_path, 2, archive=False)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(formats.py2_pickle({b"data": b"x" * 10, b"labels": [1]}))
    with pytest.raises(SimCLRError, match="lacks CIFAR 'data'"):
        load_split("cifar10", "test", tmp_path, download=False)
    archive = tmp_path / "a"
    formats.write_cifar10_python(archive, 2)
    tgz = archive / "cifar-10-python.tar.gz"
    tgz.write_bytes(tgz.read_bytes()[:-200])
    with pytest.raises(SimCLRError, match="corrupt or truncated"):
        load_split("cifar10", "train", archive, download=False)
    formats.write_cifar10_binary(tmp_path / "b", 2, archive=False)
    (tmp_path / "b" / "cifar-10-batches-bin" / "test_batch.bin").write_bytes(b"\0" * 3000)
    with pytest.raises(SimCLRError, match="3073-byte records"):
        load_split("cifar10", "test", tmp_path / "b", download=False)


def test_cifar_download_from_mirror(tmp_path, monkeypatch):
    """download=True fetches the archive (md5-checked) into the root, then reads it."""
    want = formats.write_cifar10_python(tmp_path / "mirror", 2)
    tgz = tmp_path / "mirror" / "cifar-10-python.tar.gz"
    monkeypatch.setitem(RESOURCES, "cifar10", [
        Resource(tgz.as_uri(), "cifar-10-python.tar.gz", md5sum(tgz))])
    root = tmp_path / "root"
    assert_same(load_split("cifar10", "test", root, download=True), *want["test"])
    assert (root / "cifar-10-python.tar.gz").is_file()


# --- IDX -----------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx(tmp_path, gz, name):
    want = formats.write_idx(tmp_path, 9, gz=gz, n_test=5)
    assert_same(load_split(name, "train", tmp_path, download=False), *want["train"])
    assert_same(load_split(name, "test", tmp_path, download=False), *want["test"])


def test_idx_bad_magic_truncation_and_mismatch(tmp_path):
    formats.write_idx(tmp_path, 4, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    good = images.read_bytes()
    images.write_bytes(b"\x00\x00\x08\x01" + good[4:])
    with pytest.raises(SimCLRError, match=r"not an IDX image file \(magic 0x00000801"):
        load_split("mnist", "train", tmp_path, download=False)
    images.write_bytes(good[:-1])
    with pytest.raises(SimCLRError, match="corrupt or truncated") as err:
        load_split("mnist", "train", tmp_path, download=False)
    assert str(images) in one_line(err)
    images.write_bytes(b"\x00\x00")
    with pytest.raises(SimCLRError, match="not an IDX image file"):
        load_split("mnist", "train", tmp_path, download=False)
    images.write_bytes(formats.idx_bytes(torch.zeros(3, 28, 28, dtype=torch.uint8).numpy()))
    with pytest.raises(SimCLRError, match="has 3 images but .* has 4 labels"):
        load_split("mnist", "train", tmp_path, download=False)


def test_idx_truncated_gzip(tmp_path):
    formats.write_idx(tmp_path, 4, gz=True)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-10])
    with pytest.raises(SimCLRError, match="t10k-labels-idx1-ubyte.gz is corrupt or truncated"):
        load_split("fashion_mnist", "test", tmp_path, download=False)


def test_idx_missing_files_without_download(tmp_path):
    with pytest.raises(SimCLRError, match="put train-images-idx3-ubyte.gz") as err:
        load_split("mnist", "train", tmp_path, download=False)
    assert str(tmp_path) in one_line(err)


def test_fashion_mnist_found_automatically():
    if not data.SYSTEM_FASHION_MNIST.is_dir():
        pytest.skip("needs the Debian package dataset-fashion-mnist "
                    "(/usr/share/datasets/fashion-mnist)")
    assert data.default_root("fashion_mnist") == data.SYSTEM_FASHION_MNIST
    x, y = load_split("fashion_mnist", "train", download=False)
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.uint8
    assert torch.equal(torch.bincount(y), torch.full((10,), 6000))
    x, y = load_split("fashion_mnist", "test", download=False)
    assert x.shape == (10000, 1, 28, 28)
    assert torch.equal(torch.bincount(y), torch.full((10,), 1000))


# --- STL-10 --------------------------------------------------------------------------------


@pytest.mark.parametrize("archive", [True, False])
def test_stl10_splits(tmp_path, archive):
    want = formats.write_stl10(tmp_path, 3, archive=archive, n_unlabeled=2)
    for split in ("train", "test", "unlabeled"):
        assert_same(load_split("stl10", split, tmp_path, download=False), *want[split])
    assert_same(load_split("stl10", "train+unlabeled", tmp_path, download=False),
                torch.cat([want["train"][0], want["unlabeled"][0]]),
                torch.cat([want["train"][1], torch.full((2,), -1)]))
    assert torch.equal(want["unlabeled"][1], torch.full((2,), -1))


def test_stl10_is_stored_column_major(tmp_path):
    """Byte k of an image's first channel on disk is pixel (row k % 96, column k // 96)."""
    formats.write_stl10(tmp_path, 1)
    raw = (tmp_path / "stl10_binary" / "test_X.bin").read_bytes()
    x, y = load_split("stl10", "test", tmp_path, download=False)
    assert x[0, 0, 5, 0].item() == raw[5] and x[0, 0, 0, 1].item() == raw[96]
    assert y.item() + 1 == (tmp_path / "stl10_binary" / "test_y.bin").read_bytes()[0]


def test_stl10_truncated_and_download_extracts(tmp_path, monkeypatch):
    formats.write_stl10(tmp_path / "a", 2)
    x_file = tmp_path / "a" / "stl10_binary" / "train_X.bin"
    x_file.write_bytes(x_file.read_bytes()[:-1])
    with pytest.raises(SimCLRError, match="not a whole number of 96x96 RGB images"):
        load_split("stl10", "train", tmp_path / "a", download=False)
    want = formats.write_stl10(tmp_path / "mirror", 2, archive=True)
    tgz = tmp_path / "mirror" / "stl10_binary.tar.gz"
    monkeypatch.setitem(RESOURCES, "stl10", [Resource(
        tgz.as_uri(), tgz.name, md5sum(tgz), alternatives=("stl10_binary",), extract=True)])
    assert_same(load_split("stl10", "test", tmp_path / "b"), *want["test"])
    assert (tmp_path / "b" / "stl10_binary" / "test_X.bin").is_file()


# --- image folders -------------------------------------------------------------------------


def test_folder_classes_and_cache(tmp_path, monkeypatch):
    want = formats.write_image_folder(tmp_path / "imgs", ["dog", "cat", "ant"], 3, 20)
    assert torch.equal(want[1], torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2]))  # ant, cat, dog
    assert_same(load_split("folder", "train", tmp_path / "imgs", image_size=20), *want)
    assert len(list((tmp_path / ".cache").rglob("*.safetensors"))) == 1

    def broken(path, size):
        raise AssertionError("decoded again: the cache was not used")

    monkeypatch.setattr(simclr.data.folder, "_decode_image", broken)
    assert_same(load_split("folder", "train", tmp_path / "imgs", image_size=20), *want)
    with pytest.raises(AssertionError, match="decoded again"):  # another size: a new key
        load_split("folder", "train", tmp_path / "imgs", image_size=10)


def test_folder_flat_gray_and_resized(tmp_path):
    want = formats.write_image_folder(tmp_path, 0, 4, 12, mode="L")
    x, y = load_split("folder", "train", tmp_path, image_size=12)
    assert torch.equal(y, torch.full((4,), -1))
    assert torch.equal(x, want[0]) and torch.equal(x[:, 0], x[:, 2])  # gray -> RGB
    x, _ = load_split("folder", "train", tmp_path, image_size=0)
    assert x.shape == (4, 3, data.FOLDER_DEFAULT_SIZE, data.FOLDER_DEFAULT_SIZE)
    with pytest.raises(SimCLRError, match="has no 'test' split"):
        load_split("folder", "test", tmp_path)


def test_folder_train_test_split(tmp_path):
    train = formats.write_image_folder(tmp_path / "train", ["a", "b"], 2, 8, seed=1)
    test = formats.write_image_folder(tmp_path / "test", ["b"], 2, 8, seed=2)
    assert_same(load_split("folder", "train", tmp_path, image_size=8), *train)
    x, y = load_split("folder", "test", tmp_path, image_size=8)
    assert torch.equal(x, test[0]) and torch.equal(y, torch.tensor([1, 1]))  # 'b' is class 1


def test_folder_unreadable_skipped_with_warning(tmp_path):
    want = formats.write_image_folder(tmp_path, ["a"], 2, 8)
    (tmp_path / "a" / "zz_broken.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\).*zz_broken.png"):
        assert_same(load_split("folder", "train", tmp_path, image_size=8), *want)


def test_folder_empty_or_unreadable_or_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SimCLRError, match="no images found in"):
        load_split("folder", "train", tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"garbage")
    with pytest.raises(SimCLRError, match="no readable image"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_split("folder", "train", tmp_path / "bad")
    with pytest.raises(SimCLRError, match="not found: set data.root"):
        load_split("folder", "train", tmp_path / "nope")
    with pytest.raises(SimCLRError, match="needs data.root"):
        load_split("folder")


# --- memory, unreadable files -----------------------------------------------------------


def test_readers_refuse_what_does_not_fit_in_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(simclr.data.download, "available_memory", lambda: 20_000)
    formats.write_image_folder(tmp_path / "imgs", 0, 3, 8)
    assert load_split("folder", "train", tmp_path / "imgs", image_size=40)[0].shape[0] == 3
    with pytest.raises(SimCLRError, match=r"3 images at 48x48 needs .*: use a smaller "
                                          r"data.image_size"):
        load_split("folder", "train", tmp_path / "imgs", image_size=48)
    formats.write_idx(tmp_path / "idx", 3)
    with pytest.raises(SimCLRError, match=r"mnist at data.image_size=100 needs"):
        load_split("mnist", "train", tmp_path / "idx", download=False, image_size=100)
    formats.write_stl10(tmp_path / "stl", 1)
    with pytest.raises(SimCLRError, match=r"stl10 train\+unlabeled \(2 images\) needs .*: "
                                          r"free memory or use data.split=train"):
        load_split("stl10", "train+unlabeled", tmp_path / "stl", download=False)
    formats.write_cifar10_binary(tmp_path / "bin", 7, archive=False)
    with pytest.raises(SimCLRError, match="cifar-10-batches-bin needs 0.1 MiB of memory"):
        load_split("cifar10", "train", tmp_path / "bin", download=False)


def test_stl10_unreadable_file(tmp_path, monkeypatch):
    formats.write_stl10(tmp_path, 1)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(np, "memmap", denied)
    with pytest.raises(SimCLRError, match=r"cannot read .*test_X.bin \(Permission denied\)"):
        load_split("stl10", "test", tmp_path, download=False)


def test_folder_cache_with_wrong_content_is_rebuilt(tmp_path):
    from safetensors.torch import save_file

    want = formats.write_image_folder(tmp_path / "imgs", ["a"], 2, 8)
    load_split("folder", "train", tmp_path / "imgs", image_size=8)
    (cache,) = (tmp_path / ".cache").rglob("*.safetensors")
    save_file({"images": torch.zeros(5, 3, 4, 4, dtype=torch.uint8),
               "labels": torch.zeros(5, dtype=torch.int64)}, cache)
    assert_same(load_split("folder", "train", tmp_path / "imgs", image_size=8), *want)


# --- registry, resize, load_train ----------------------------------------------------------


def test_registry():
    assert set(DATASETS) == {"cifar10", "cifar100", "cifar100_coarse", "stl10",
                             "fashion_mnist", "mnist", "folder"}
    for spec in DATASETS.values():
        assert {"reader", "channels", "size", "classes", "splits"} <= set(spec)
    assert (DATASETS["cifar100_coarse"]["classes"], DATASETS["stl10"]["size"]) == (20, 96)
    assert "train+unlabeled" in DATASETS["stl10"]["splits"]


def test_unknown_names_are_one_line_errors(tmp_path):
    with pytest.raises(SimCLRError, match="unknown dataset 'cifar1'") as err:
        load_split("cifar1")
    assert "cifar10" in one_line(err)
    with pytest.raises(SimCLRError, match="cifar10 has no split 'unlabeled'"):
        load_split("cifar10", "unlabeled", tmp_path)


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("SIMCLR_DATA", str(tmp_path / "d"))
    assert data.default_root("cifar100_coarse") == tmp_path / "d" / "cifar100"
    monkeypatch.delenv("SIMCLR_DATA")
    assert data.default_root("mnist") == tmp_path / ".cache" / "data" / "mnist"


def test_resize_known_values():
    flat = torch.full((3, 2, 8, 8), 77, dtype=torch.uint8)
    assert torch.equal(resize(flat, 5), torch.full((3, 2, 5, 5), 77, dtype=torch.uint8))
    x = torch.randint(0, 256, (5, 3, 6, 6), dtype=torch.uint8)
    want = torch.nn.functional.interpolate(x.float(), size=(4, 4), mode="bilinear",
                                           antialias=True).round().to(torch.uint8)
    assert torch.equal(resize(x, 4, chunk_bytes=1), want)  # chunked == one batch
    assert torch.equal(resize(x, 6), x)


def test_load_split_resizes_and_load_train_subsets(tmp_path):
    want = formats.write_idx(tmp_path, 10)
    x, _ = load_split("mnist", "train", tmp_path, download=False, image_size=32)
    assert x.shape == (10, 1, 32, 32) and x.dtype == torch.uint8 and x.is_contiguous()
    cfg = Data(name="mnist", root=str(tmp_path), subset=4, download=False)
    x, y = load_train(cfg)
    assert torch.equal(x, want["train"][0][:4]) and torch.equal(y, want["train"][1][:4])
    cfg.subset = 11
    with pytest.raises(SimCLRError, match=r"data.subset=11 is larger than mnist train \(10"):
        load_train(cfg)


# --- TensorLoader --------------------------------------------------------------------------


def make_loader(n=10, batch=3, seed=0, **kw) -> TensorLoader:
    images = torch.arange(n).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return TensorLoader(images, batch, seed, **kw)


def ids(batch: torch.Tensor) -> list[int]:
    return batch[:, 0, 0, 0].tolist()


def test_loader_epoch_is_a_permutation_with_drop_last():
    loader = make_loader()
    assert len(loader) == 3
    perm = loader.permutation(0)
    assert sorted(perm.tolist()) == list(range(10)) and perm.dtype == torch.int64
    seen = [i for b in loader.batches(0) for i in ids(b)]
    assert seen == perm[:9].tolist() and len(set(seen)) == 9
    assert all(b.shape == (3, 1, 2, 2) for b in loader.batches(0))


def test_loader_reproducible_and_resumable():
    a, b = make_loader(seed=5), make_loader(seed=5)
    assert torch.equal(a.permutation(3), b.permutation(3))
    assert not torch.equal(a.permutation(3), a.permutation(4))
    assert not torch.equal(a.permutation(3), make_loader(seed=6).permutation(3))
    full = [ids(x) for x in a.batches(2)]
    assert [ids(x) for x in b.batches(2, start=1)] == full[1:]
    assert list(b.batches(2, start=3)) == []


def test_loader_rank_slices_partition_the_global_batch():
    single = make_loader(n=20, batch=4, seed=1)
    ranks = [make_loader(n=20, batch=4, seed=1, rank=r, world_size=2) for r in range(2)]
    for glob, r0, r1 in zip(single.batches(7), ranks[0].batches(7), ranks[1].batches(7),
                            strict=True):
        assert ids(r0) + ids(r1) == ids(glob) and len(ids(r0)) == 2


def test_loader_errors():
    with pytest.raises(SimCLRError, match=r"train.batch_size 11 is larger than the dataset "
                                          r"\(10 images\): lower it"):
        make_loader(batch=11)
    with pytest.raises(SimCLRError, match="does not divide by the 4 processes"):
        make_loader(batch=6, world_size=4)


def test_formats_writers_are_deterministic(tmp_path):
    a = formats.write_idx(tmp_path / "a", 3, seed=4)
    b = formats.write_idx(tmp_path / "b", 3, seed=4)
    assert torch.equal(a["train"][0], b["train"][0])
    raw = gzip.decompress((tmp_path / "a" / "train-labels-idx1-ubyte.gz").read_bytes())
    assert raw[:8] == b"\x00\x00\x08\x01\x00\x00\x00\x03"
    with tarfile.open(formats_cifar(tmp_path)) as tar:
        assert "cifar-10-batches-py/batches.meta" in tar.getnames()


def formats_cifar(tmp_path: Path) -> Path:
    formats.write_cifar10_python(tmp_path / "c", 1)
    return tmp_path / "c" / "cifar-10-python.tar.gz"


def test_py2_pickle_uses_python2_opcodes():
    import pickletools

    blob = formats.py2_pickle({b"data": torch.zeros(1, 2, dtype=torch.uint8).numpy()})
    ops = {op.name for op, _, _ in pickletools.genops(io.BytesIO(blob))}
    assert "SHORT_BINSTRING" in ops and "BINBYTES" not in ops and "SHORT_BINBYTES" not in ops
    assert b"numpy.core.multiarray\n_reconstruct\n" in blob


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="needs the real Fashion-MNIST: apt-get install -y "
                    "dataset-fashion-mnist")
@pytest.mark.parametrize("name", ["fashion_mnist", "FashionMNIST", "fashion-mnist"])
def test_real_fashion_mnist_from_its_parent_folder_and_common_names(name):
    from simclr.config import build_config

    cfg = build_config(overrides={"data.name": name, "data.root": "/usr/share/datasets",
                                  "data.download": False, "data.subset": 10})
    images, labels = load_train(cfg.data)
    assert cfg.data.name == "fashion_mnist" and images.shape == (10, 1, 28, 28)
