"""Tests of simclr.data.download: checksummed downloads, safe tar extraction, restricted
unpickling."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import pickle
import re
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

import simclr.data.download
from simclr.data.download import (
    RESOURCES,
    Resource,
    available_memory,
    candidate_folders,
    check_memory,
    download,
    ensure_files,
    md5sum,
    read_tar_members,
    resource_url,
    restricted_load,
    safe_extract,
)
from simclr.errors import SimCLRError
from tests.formats import py2_pickle


@pytest.fixture(autouse=True)
def no_mirror(monkeypatch):
    """Tests name the official URLs: a developer's SIMCLR_MIRROR must not change them."""
    monkeypatch.delenv("SIMCLR_MIRROR", raising=False)


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and message
    return message


# --- resources and md5 ---------------------------------------------------------------------


def test_resources_are_the_official_files():
    assert RESOURCES["cifar10"][0].md5 == "c58f30108f718f92721af3b95e74349a"
    assert RESOURCES["cifar10_binary"][0].md5 == "c32a1d4ab5d03f1284b67883e8d87530"
    assert RESOURCES["cifar100"][0].md5 == "eb9058c3a382ffc7106e4002c42a8d85"
    assert RESOURCES["stl10"][0].md5 == "91f7769df0f17e558f3565bffb0c7dfb"
    assert RESOURCES["cifar10"][0].url == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert RESOURCES["stl10"][0].url == "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
    assert [r.filename for r in RESOURCES["mnist"]] == [
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    assert RESOURCES["fashion_mnist"][0].url.startswith(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/")
    assert RESOURCES["mnist"][0].url.startswith("https://ossci-datasets.s3.amazonaws.com/mnist/")
    for resources in RESOURCES.values():
        for r in resources:
            assert r.url.rsplit("/", 1)[1] == r.filename
            assert re.fullmatch(r"[0-9a-f]{32}", r.md5)


def test_md5sum_known_value(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    assert md5sum(tmp_path / "f") == "900150983cd24fb0d6963f7d28e17f72"
    assert md5sum(tmp_path / "f", chunk=1) == "900150983cd24fb0d6963f7d28e17f72"


# --- download ------------------------------------------------------------------------------


@pytest.fixture
def payload(tmp_path):
    src = tmp_path / "served"
    src.mkdir()
    data = os.urandom(100_000)
    (src / "blob.bin").write_bytes(data)
    return src, data, hashlib.md5(data).hexdigest()


@pytest.fixture
def http_server(payload):
    """A real HTTP server on 127.0.0.1 (random port) serving the payload folder."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(payload[0]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_over_http(tmp_path, payload, http_server):
    _, data, md5 = payload
    dest = tmp_path / "out" / "blob.bin"
    assert download(f"{http_server}/blob.bin", dest, md5) == dest
    assert dest.read_bytes() == data
    assert leftovers(dest.parent) == ["blob.bin"]


def test_download_http_404_is_one_line_error(tmp_path, payload, http_server):
    dest = tmp_path / "out" / "blob.bin"
    with pytest.raises(SimCLRError, match="cannot download") as err:
        download(f"{http_server}/missing.bin", dest, payload[2])
    assert str(dest.parent) in one_line(err)
    assert leftovers(dest.parent) == []


def test_download_file_url(tmp_path, payload):
    src, data, md5 = payload
    dest = tmp_path / "out" / "blob.bin"
    download((src / "blob.bin").as_uri(), dest, md5)
    assert dest.read_bytes() == data
    assert leftovers(dest.parent) == ["blob.bin"]


def test_download_wrong_md5_leaves_nothing(tmp_path, payload):
    src, _, md5 = payload
    dest = tmp_path / "out" / "blob.bin"
    wrong = "0" * 32
    with pytest.raises(SimCLRError, match="checksum mismatch for blob.bin") as err:
        download((src / "blob.bin").as_uri(), dest, wrong)
    message = one_line(err)
    assert md5 in message and wrong in message and str(dest.parent) in message
    assert leftovers(dest.parent) == []


def test_download_offline_names_where_to_put_the_file(tmp_path):
    dest = tmp_path / "data" / "x.tar.gz"
    with pytest.raises(SimCLRError, match="cannot download http://127.0.0.1:1/x") as err:
        download("http://127.0.0.1:1/x", dest, "0" * 32, timeout=5)
    assert f"put it in {dest.parent}" in one_line(err)
    assert leftovers(dest.parent) == []


def test_offline_errors_point_at_data_root_without_asking_to_set_it(tmp_path):
    """With data.root set (and wrong), "or set data.root" would mislead: the fix named is to
    point it at the folder that holds the files."""
    with pytest.raises(SimCLRError) as err:
        download("http://127.0.0.1:1/x", tmp_path / "d" / "x", "0" * 32, timeout=5)
    assert one_line(err).endswith("or point data.root at the folder that holds it")
    assert "set data.root" not in one_line(err)
    with pytest.raises(SimCLRError) as err:
        ensure_files("mnist", tmp_path, download=False)
    assert "point data.root at the folder that holds them, or set data.download=true" in \
        one_line(err)


def test_download_keeps_existing_file_on_failure(tmp_path, payload):
    src, _, _ = payload
    dest = tmp_path / "blob.bin"
    dest.write_bytes(b"old")
    with pytest.raises(SimCLRError):
        download((src / "blob.bin").as_uri(), dest, "0" * 32)
    assert dest.read_bytes() == b"old"


# --- ensure_files --------------------------------------------------------------------------


def test_ensure_files_missing_without_download_names_file_and_folder(tmp_path):
    with pytest.raises(SimCLRError) as err:
        ensure_files("cifar100", tmp_path, download=False)
    message = one_line(err)
    assert "cifar-100-python.tar.gz" in message and str(tmp_path) in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in message
    with pytest.raises(SimCLRError, match="t10k-labels-idx1-ubyte.gz"):
        ensure_files("mnist", tmp_path, download=False)


def test_ensure_files_accepts_extracted_and_torchvision_layouts(tmp_path):
    (tmp_path / "cifar-10-batches-bin").mkdir()
    assert ensure_files("cifar10", tmp_path, download=False) == tmp_path
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for r in RESOURCES["fashion_mnist"]:
        (raw / r.alternatives[0]).write_bytes(b"")  # uncompressed names count too
    assert ensure_files("fashion_mnist", tmp_path, download=False) == raw


@pytest.mark.parametrize("folder", ["fashion-mnist", "fashion_mnist"])
def test_ensure_files_finds_the_dataset_below_a_parent_folder(tmp_path, folder):
    """data.root=/usr/share/datasets holds Debian's fashion-mnist/ folder."""
    sub = tmp_path / folder
    sub.mkdir()
    for r in RESOURCES["fashion_mnist"]:
        (sub / r.filename).write_bytes(b"")
    assert ensure_files("fashion_mnist", tmp_path, download=False) == sub
    assert candidate_folders("fashion_mnist", tmp_path) == [
        tmp_path, tmp_path / "FashionMNIST/raw", tmp_path / "fashion_mnist",
        tmp_path / "fashion-mnist"]


def test_ensure_files_downloads_and_checks_md5(tmp_path, payload, monkeypatch):
    src, data, md5 = payload
    url = (src / "blob.bin").as_uri()
    monkeypatch.setitem(RESOURCES, "toy", [Resource(url, "blob.bin", md5)])
    assert ensure_files("toy", tmp_path / "root") == tmp_path / "root"
    assert (tmp_path / "root" / "blob.bin").read_bytes() == data
    monkeypatch.setitem(RESOURCES, "bad", [Resource(url, "blob.bin", "f" * 32)])
    with pytest.raises(SimCLRError, match="checksum mismatch"):
        ensure_files("bad", tmp_path / "other")
    assert leftovers(tmp_path / "other") == []


def test_ensure_files_unknown_name(tmp_path):
    with pytest.raises(SimCLRError, match="no official files known for 'imagenet'"):
        ensure_files("imagenet", tmp_path)


# --- tar -----------------------------------------------------------------------------------


def make_tar(path: Path, members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None):
    data = data or {}
    with tarfile.open(path, "w:gz") as tar:
        for info in members:
            body = data.get(info.name)
            if body is not None:
                info.size = len(body)
            tar.addfile(info, io.BytesIO(body) if body is not None else None)
    return path


def file_member(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def link_member(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def test_safe_extract_extracts_exact_contents(tmp_path):
    archive = make_tar(tmp_path / "ok.tar.gz",
                       [file_member("top/a.bin"), file_member("./top/sub/b.bin"),
                        link_member("top/link", "a.bin")],
                       {"top/a.bin": b"A" * 10, "./top/sub/b.bin": b"B"})
    dest = tmp_path / "dest"
    assert safe_extract(archive, dest) == dest
    assert (dest / "top" / "a.bin").read_bytes() == b"A" * 10
    assert (dest / "top" / "sub" / "b.bin").read_bytes() == b"B"
    assert (dest / "top" / "link").read_bytes() == b"A" * 10  # links inside are fine
    assert leftovers(dest) == ["top"]  # no temporary folder left


@pytest.mark.parametrize("member, why", [
    (file_member("../evil"), "'..' path"),
    (file_member("ok/../../evil"), "'..' path"),
    (file_member("/tmp/simclr_abs_evil"), "absolute path"),
    (link_member("ok/link", "/etc/passwd"), "link to /etc/passwd"),
    (link_member("ok/link", "../../evil"), "link to ../../evil"),
    (link_member("ok/hard", "../evil", tarfile.LNKTYPE), "link to ../evil"),
    (link_member("ok/dev", "", tarfile.CHRTYPE), "device file"),
])
def test_unsafe_members_are_refused_and_nothing_is_written(tmp_path, member, why):
    work = tmp_path / "work"
    work.mkdir()
    archive = make_tar(work / "bad.tar.gz", [file_member("ok/a.bin"), member],
                       {"ok/a.bin": b"a", member.name: b"evil"} if member.isfile() else
                       {"ok/a.bin": b"a"})
    dest = work / "dest"
    with pytest.raises(SimCLRError, match=re.escape(why)) as err:
        safe_extract(archive, dest)
    assert "refusing" in one_line(err)
    assert not dest.exists()
    assert leftovers(work) == ["bad.tar.gz"]
    assert not Path("/tmp/simclr_abs_evil").exists()
    with pytest.raises(SimCLRError, match=re.escape(why)):
        read_tar_members(archive, ["ok/a.bin"])


def test_truncated_archive_is_corrupt_and_leaves_dest_alone(tmp_path):
    good = make_tar(tmp_path / "good.tar.gz", [file_member("d/x.bin")],
                    {"d/x.bin": os.urandom(200_000)})
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[:50_000])
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(SimCLRError, match="cut.tar.gz is corrupt or truncated") as err:
        safe_extract(cut, dest)
    assert "download again" in one_line(err)
    assert leftovers(dest) == ["keep.txt"]
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar at all")
    with pytest.raises(SimCLRError, match="corrupt or truncated"):
        read_tar_members(tmp_path / "junk.tar.gz", ["x"])


def test_read_tar_members_reads_without_extracting(tmp_path):
    archive = make_tar(tmp_path / "a.tar.gz", [file_member("./d/x"), file_member("d/y")],
                       {"./d/x": b"xx", "d/y": b"yy"})
    assert read_tar_members(archive, ["d/x", "d/y"]) == {"d/x": b"xx", "d/y": b"yy"}
    assert leftovers(tmp_path) == ["a.tar.gz"]
    with pytest.raises(SimCLRError, match="has no file d/z"):
        read_tar_members(archive, ["d/z"])


# --- restricted unpickling -----------------------------------------------------------------


class _Payload:
    """Unpickling this would run ``os.system`` (creating a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_load_reads_python2_cifar_pickles():
    x = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    got = restricted_load(io.BytesIO(py2_pickle({b"data": x, b"labels": [3, 7]})))
    assert set(got) == {b"data", b"labels"}
    assert got[b"labels"] == [3, 7]
    assert got[b"data"].dtype == np.uint8 and np.array_equal(got[b"data"], x)


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_restricted_load_refuses_code(tmp_path, protocol):
    marker = tmp_path / "pwned"
    blob = pickle.dumps({"data": _Payload(marker)}, protocol=protocol)
    with pytest.raises(SimCLRError, match=r"batch tries to load '(os|posix)\.system': refused"):
        restricted_load(io.BytesIO(blob), "batch")
    assert not marker.exists()


@pytest.mark.parametrize("blob", [b"", b"garbage", pickle.dumps([1, 2])[:-3]])
def test_restricted_load_damaged_input_is_corrupt(blob):
    with pytest.raises(SimCLRError, match="src is corrupt or truncated") as err:
        restricted_load(io.BytesIO(blob), "src")
    one_line(err)


def test_restricted_load_refuses_other_builtins():
    blob = pickle.dumps(eval)  # builtins.eval
    with pytest.raises(SimCLRError, match="'builtins.eval': refused"):
        restricted_load(io.BytesIO(blob), "x")


# --- memory and mirror ---------------------------------------------------------------------


def test_available_memory_reads_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  1000 kB\nMemFree:  10 kB\nMemAvailable:  500 kB\n")
    assert available_memory(meminfo) == 500 * 1024
    meminfo.write_text("MemTotal:  1000 kB\n")
    assert available_memory(meminfo) is None
    assert available_memory(tmp_path / "missing") is None
    if Path("/proc/meminfo").is_file():
        assert available_memory() > 0


def test_check_memory(monkeypatch):
    monkeypatch.setattr(simclr.data.download, "available_memory", lambda: 3 << 30)
    check_memory(3 << 30, "x", "fix")
    with pytest.raises(SimCLRError, match=r"^big data needs 3.5 GiB of memory but only 3.0 GiB is "
                                          r"available: use less$"):
        check_memory(7 << 29, "big data", "use less")
    monkeypatch.setattr(simclr.data.download, "available_memory", lambda: None)
    check_memory(1 << 60, "x", "fix")  # unknown: no check


def test_read_tar_members_refuses_more_than_memory(tmp_path, monkeypatch):
    archive = make_tar(tmp_path / "a.tar.gz", [file_member("d/x")], {"d/x": b"x" * 5000})
    monkeypatch.setattr(simclr.data.download, "available_memory", lambda: 4000)
    with pytest.raises(SimCLRError, match=r"a.tar.gz needs 0.0 MiB of memory but only 0.0 MiB"):
        read_tar_members(archive, ["d/x"])


def test_mirror_replaces_the_base_url_and_keeps_the_md5(tmp_path, payload, monkeypatch):
    src, data, md5 = payload
    resource = Resource("https://unreachable.invalid/files/blob.bin", "blob.bin", md5)
    assert resource_url(resource) == resource.url
    monkeypatch.setenv("SIMCLR_MIRROR", src.as_uri() + "/")
    assert resource_url(resource) == f"{src.as_uri()}/blob.bin"
    monkeypatch.setitem(RESOURCES, "toy", [resource])
    assert (ensure_files("toy", tmp_path / "root") / "blob.bin").read_bytes() == data
    (src / "blob.bin").write_bytes(b"other content")
    with pytest.raises(SimCLRError, match="checksum mismatch for blob.bin"):
        ensure_files("toy", tmp_path / "new" / "root")
    assert not (tmp_path / "new").exists()  # the folders it made are gone again
