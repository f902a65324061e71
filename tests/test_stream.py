"""Tests of simclr.stream: streamed folders give TensorLoader's exact batches, in its order."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import simclr.data.download
from simclr.config import Data
from simclr.data.datasets import load_split, load_train
from simclr.data.folder import decode_image, list_folder
from simclr.data.loader import TensorLoader, epoch_permutation
from simclr.data.stream import StreamLoader, fits_in_memory
from simclr.errors import SimCLRError
from tests import formats

SIZE = 16


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMCLR_CACHE", str(tmp_path / ".cache"))


def write_mixed_folder(root: Path) -> None:
    """3 classes: PNGs (24 px), a third of them re-saved as JPEG, non-square JPEGs, a gray
    PNG and one file that is not an image (left out by both paths)."""
    from PIL import Image

    formats.write_image_folder(root, ["ant", "bee", "cat"], 12, 24)
    for i, png in enumerate(sorted(root.rglob("*.png"))):
        if i % 3 == 0:
            Image.open(png).save(png.with_suffix(".jpg"), quality=90)
            png.unlink()
    rng = np.random.default_rng(1)
    for j, (w, h) in enumerate([(30, 20), (17, 41)]):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "bee" / f"wide{j}.jpeg")
    Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(root / "cat" / "g.png")
    (root / "ant" / "zz_not_an_image.png").write_bytes(b"not a png")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stream") / "imgs"
    write_mixed_folder(root)
    return root


def in_memory(root: Path, batch: int, seed: int, **kw) -> TensorLoader:
    with warnings.catch_warnings():  # skipped 1 unreadable (only when not cached)
        warnings.simplefilter("ignore")
        images, _ = load_split("folder", "train", root, image_size=SIZE)
    return TensorLoader(images, batch, seed, **kw)


def streamed(root: Path, batch: int, seed: int, **kw) -> StreamLoader:
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\).*zz_not_an_image"):
        files, labels, _ = list_folder(root)
    return StreamLoader(files, labels, SIZE, batch, seed, **kw)


def assert_same_batches(a, b) -> None:
    a, b = list(a), list(b)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype == torch.uint8 and x.is_contiguous()
        assert torch.equal(x, y)


def test_listing_matches_the_reader(folder):
    with pytest.warns(UserWarning):
        files, labels, classes = list_folder(folder)
    with pytest.warns(UserWarning):
        images, want = load_split("folder", "train", folder, image_size=SIZE)
    assert classes == ["ant", "bee", "cat"] and len(files) == len(images) == 39
    assert {f.suffix for f in files} == {".png", ".jpg", ".jpeg"}
    assert torch.equal(torch.tensor(labels), want)
    for i in (0, 13, 38):
        decoded = torch.tensor(decode_image(files[i], SIZE)).permute(2, 0, 1)
        assert torch.equal(decoded, images[i])


@pytest.mark.parametrize("workers", [0, 2])
def test_same_batches_as_tensor_loader(folder, workers):
    ref = in_memory(folder, 8, seed=3)
    with streamed(folder, 8, seed=3, workers=workers) as stream:
        assert len(stream) == len(ref) == 4
        for epoch in (0, 1):
            assert torch.equal(stream.permutation(epoch), ref.permutation(epoch))
            assert_same_batches(stream.batches(epoch), ref.batches(epoch))
        assert_same_batches(stream.batches(1, start=2), ref.batches(1, start=2))
        assert list(stream.batches(1, start=4)) == []
        partial = stream.batches(0)
        next(partial)  # an abandoned pass does not disturb the next one
        assert_same_batches(stream.batches(5, start=1), ref.batches(5, start=1))


def test_rank_slices_match(folder):
    world = 2
    for rank in range(world):
        ref = in_memory(folder, 12, seed=7, rank=rank, world_size=world)
        stream = streamed(folder, 12, seed=7, rank=rank, world_size=world, workers=1)
        for epoch in (0, 1):
            assert_same_batches(stream.batches(epoch), ref.batches(epoch))
        assert_same_batches(stream.batches(1, start=1), ref.batches(1, start=1))
        assert all(x.shape == (6, 3, SIZE, SIZE) for x in stream.batches(0))
        stream.close()


def test_len_drop_last_and_errors_match():
    files = [Path(f"{i}.png") for i in range(10)]  # never decoded here
    images = torch.zeros(10, 3, 2, 2, dtype=torch.uint8)
    for batch, world in [(1, 1), (3, 1), (5, 1), (10, 1), (4, 2), (9, 3)]:
        a = StreamLoader(files, None, 2, batch, seed=0, world_size=world)
        b = TensorLoader(images, batch, seed=0, world_size=world)
        assert len(a) == len(b) == 10 // batch and a.local_batch == b.local_batch
    for batch, world in [(11, 1), (6, 4)]:
        with pytest.raises(SimCLRError) as want:
            TensorLoader(images, batch, seed=0, world_size=world)
        with pytest.raises(SimCLRError) as got:
            StreamLoader(files, None, 2, batch, seed=0, world_size=world)
        assert str(got.value) == str(want.value)


def test_permutation_is_tensor_loaders():
    for n, seed, epoch in [(1, 0, 0), (10, 5, 3), (1000, 2**40, 7), (37, -1, 0)]:
        ref = TensorLoader(torch.zeros(n, 1), 1, seed).permutation(epoch)
        assert torch.equal(epoch_permutation(n, seed, epoch), ref)


def test_chunks_sample_and_subset(folder):
    with pytest.warns(UserWarning):
        images, _ = load_train(Data(name="folder", root=str(folder), image_size=SIZE))
        stream = StreamLoader.from_folder(folder, "train", SIZE, 4, 0, workers=0)
    assert torch.equal(torch.cat(list(stream.chunks(size=16))), images)
    sample = stream.sample(5, seed=1)
    assert sample.shape == (5, 3, SIZE, SIZE)
    assert all(any(torch.equal(s, x) for x in images) for s in sample)
    assert torch.equal(stream.sample(100), images)
    with pytest.warns(UserWarning):
        sub = StreamLoader.from_folder(folder, "train", SIZE, 4, 0, subset=9, workers=0)
    assert len(sub.files) == 9 and torch.equal(sub.labels, torch.zeros(9, dtype=torch.int64))
    with pytest.warns(UserWarning), pytest.raises(SimCLRError, match="data.subset=99"):
        StreamLoader.from_folder(folder, "train", SIZE, 4, 0, subset=99)


def test_one_pass_at_a_time(folder):
    stream = streamed(folder, 8, seed=0, workers=0)
    first = stream.batches(0)
    next(first)
    second = stream.batches(1)
    with pytest.raises(RuntimeError, match="another pass"):
        next(first)
    assert len(list(second)) == 4


def test_corrupt_data_with_valid_header_stops_the_stream(tmp_path):
    from PIL import Image

    formats.write_image_folder(tmp_path, 0, 4, 24)
    good = tmp_path / "x.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(good)
    data = good.read_bytes()
    (tmp_path / "y.jpg").write_bytes(data[:len(data) // 2])  # truncated: header intact
    files, labels, _ = list_folder(tmp_path)
    assert len(files) == 6  # the header check keeps it
    stream = StreamLoader(files, labels, SIZE, 6, seed=0, workers=0)
    with pytest.raises(SimCLRError, match=r"cannot decode .*y\.jpg while streaming"):
        list(stream.batches(0))
    with pytest.warns(UserWarning, match="y.jpg"):  # the in-memory path skips it
        assert len(load_split("folder", "train", tmp_path, image_size=SIZE)[0]) == 5


def test_fits_in_memory(monkeypatch):
    need = 40 * 3 * SIZE * SIZE * 4  # 4 = the default safety factor
    monkeypatch.setattr(simclr.data.download, "available_memory", lambda: need)
    assert fits_in_memory(40, SIZE, 3, "cpu")
    assert not fits_in_memory(41, SIZE, 3, "cpu")
    assert fits_in_memory(40, SIZE, 3, "cpu", safety=1) and not fits_in_memory(4, 0, 3, "cpu")
    monkeypatch.setattr(simclr.data.download, "available_memory", lambda: None)  # unknown: fits
    assert fits_in_memory(10**9, 256, 3, "cpu")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (need // 2, 2 * need))
    assert not fits_in_memory(40, SIZE, 3, "cuda") and fits_in_memory(20, SIZE, 3, "cuda:0")


def test_no_warning_for_a_clean_folder(tmp_path):
    formats.write_image_folder(tmp_path, ["a"], 3, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        files, labels, classes = list_folder(tmp_path)
    assert len(files) == 3 and labels == [0, 0, 0] and classes == ["a"]


def test_cli_corrupt_file_while_streaming_is_one_line(tmp_path):
    from PIL import Image

    from tests.helpers import cli

    root = tmp_path / "data"
    formats.write_image_folder(root, 0, 40, 24)
    good = root / "x.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(good)
    data = good.read_bytes()
    (root / "y.jpg").write_bytes(data[:len(data) // 2])  # truncated: the header still reads
    out = tmp_path / "run"
    proc = cli("pretrain", "--run-dir", out, "--data.name=folder", f"--data.root={root}",
               "--data.stream=on", f"--data.image_size={SIZE}", "--train.batch_size=8",
               "--model.width=0.0625", "--model.proj_dim=16", "--train.progress=false")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("simclr: error: cannot decode "), proc.stderr
    assert "y.jpg while streaming" in lines[0] and "Traceback" not in proc.stderr
    assert not out.exists()  # found while measuring channel stats, before the run dir exists


def test_permutation_is_drawn_on_the_cpu_for_any_device(monkeypatch):
    """A CUDA generator draws another permutation than a CPU one for the same seed, so the
    order is drawn on the CPU and only moved: same batches on every device (resume included)."""
    import simclr.data.loader

    moved = []
    monkeypatch.setattr(simclr.data.loader, "to_device", lambda t, d: moved.append((t, d)) or t)
    for device in ("cuda", "cuda:1", "mps"):
        perm = epoch_permutation(50, 3, 2, device)
        assert moved[-1][1] == torch.device(device) and perm is moved[-1][0]
        assert perm.device.type == "cpu" and torch.equal(perm, epoch_permutation(50, 3, 2))
