"""Bad data through the CLI: each row is one ``simclr pretrain``, run in this process
(:func:`tests.helpers.cli`) with the environment and working directory a user's shell gives it.

Every bad input must end with exit code 2 and exactly one stderr line ``simclr: error: ...``
naming the problem and the fix, no traceback, no run directory, nothing written into (or out
of) the data folder, and no code run from a pickle. The rows run one after another in one
module-scoped fixture (in-process calls share stdout, stderr and the environment, so no
threads), then each row is checked in its own test.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests import formats
from tests.helpers import Result, cli

SMALL = ["--model.width=0.0625", "--model.proj_dim=16", "--train.progress=false",
         "--train.epochs=1", "--train.batch_size=4"]


@dataclass
class Row:
    """One bad input: ``setup(case_dir)`` writes ``case_dir/data`` and returns CLI overrides."""

    setup: Callable[[Path], list[str]]
    fragments: tuple[str, ...]  # each must be in the error line; {root} = the data folder
    check: Callable[[Path], None] = lambda d: None  # more checks after the run
    env: Callable[[Path], dict[str, str]] = lambda d: {}
    rc: int = 2


def cifar(d: Path, download: bool = False) -> list[str]:
    return ["--data.name=cifar10", f"--data.root={d / 'data'}",
            f"--data.download={str(download).lower()}"]


def mnist(d: Path) -> list[str]:
    return ["--data.name=mnist", f"--data.root={d / 'data'}", "--data.download=false"]


def folder(d: Path) -> list[str]:
    return ["--data.name=folder", f"--data.root={d / 'data'}", "--data.image_size=8"]


def missing(d: Path) -> list[str]:
    (d / "data").mkdir()
    return cifar(d)


def truncated_archive(d: Path) -> list[str]:
    formats.write_cifar10_python(d / "data", 2)
    tgz = d / "data" / "cifar-10-python.tar.gz"
    tgz.write_bytes(tgz.read_bytes()[: tgz.stat().st_size // 2])
    return cifar(d)


def random_archive(d: Path) -> list[str]:
    (d / "data").mkdir()
    noise = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    (d / "data" / "cifar-10-python.tar.gz").write_bytes(noise)
    return cifar(d)


def archive_with(member: Callable[[Path], str]) -> Callable[[Path], list[str]]:
    """A CIFAR-10 archive whose valid members are followed by one named ``member(case_dir)``."""

    def setup(d: Path) -> list[str]:
        formats.write_cifar10_python(d / "data", 1)
        tgz = d / "data" / "cifar-10-python.tar.gz"
        with tarfile.open(tgz) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        with tarfile.open(tgz, "w:gz") as tar:
            evil = tarfile.TarInfo(member(d))
            for info, body in [*members, (evil, b"evil")]:
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
        return cifar(d)

    return setup


def only_the_archive(d: Path) -> None:
    assert sorted(p.name for p in (d / "data").iterdir()) == ["cifar-10-python.tar.gz"]
    assert not (d / "evil").exists() and not (d / "outside").exists()


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def code_pickle(d: Path) -> list[str]:
    formats.write_cifar10_python(d / "data", 1, archive=False)
    batch = {b"data": RunsCode(d / "pwned"), b"labels": [0]}
    (d / "data" / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(batch, 2))
    return cifar(d)


def no_code_ran(d: Path) -> None:
    assert not (d / "pwned").exists(), "the pickle ran code"


def idx_edit(edit: Callable[[bytes], bytes]) -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        formats.write_idx(d / "data", 8, gz=False)
        images = d / "data" / "train-images-idx3-ubyte"
        images.write_bytes(edit(images.read_bytes()))
        return mnist(d)

    return setup


def unreadable_folder(good: int) -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        if good:
            formats.write_image_folder(d / "data", ["a", "b"], good, 8)
        for c in ("a", "b"):
            (d / "data" / c).mkdir(parents=True, exist_ok=True)
        (d / "data" / "a" / "zz_bad.png").write_bytes(b"not a png")
        (d / "data" / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut")
        return folder(d)

    return setup


def wrong_checksum(d: Path) -> list[str]:
    formats.write_cifar10_python(d / "mirror", 1)  # a valid archive, but not the official one
    return cifar(d, download=True)


def nothing_downloaded(d: Path) -> None:
    assert not (d / "data").exists() or not list((d / "data").iterdir())


ROWS: dict[str, Row] = {
    "missing-offline": Row(missing, ("cifar10 files not found in {root}",
                                     "put cifar-10-python.tar.gz (from https://", "there")),
    "truncated-archive": Row(truncated_archive, ("cifar-10-python.tar.gz is corrupt or truncated",
                                                 "delete it and download again")),
    "random-bytes-archive": Row(random_archive, ("cifar-10-python.tar.gz is corrupt or truncated",
                                                 "delete it and download again")),
    "tar-absolute-member": Row(archive_with(lambda d: f"{d}/outside/evil"),
                               ("holds an absolute path", "refusing"), only_the_archive),
    "tar-dotdot-member": Row(archive_with(lambda d: "cifar-10-batches-py/../../evil"),
                             ("holds a '..' path", "refusing"), only_the_archive),
    "pickle-runs-code": Row(code_pickle, ("data_batch_1 tries to load", "refused"), no_code_ran),
    "idx-wrong-magic": Row(idx_edit(lambda b: b"\x00\x00\x08\x01" + b[4:]),
                           ("train-images-idx3-ubyte is not an IDX image file",
                            "put the official image file there")),
    "idx-short-data": Row(idx_edit(lambda b: b[:-100]),
                          ("train-images-idx3-ubyte is corrupt or truncated",
                           "download again")),
    "folder-none-readable": Row(unreadable_folder(0), ("no readable image in {root}",
                                                       "2 files failed to decode")),
    "wrong-checksum": Row(wrong_checksum, ("checksum mismatch for cifar-10-python.tar.gz",
                                           "expected c58f30108f718f92721af3b95e74349a"),
                          nothing_downloaded,
                          env=lambda d: {"SIMCLR_MIRROR": (d / "mirror").as_uri()}),
    "folder-some-unreadable": Row(unreadable_folder(2), ("zz_bad.png", "broken.jpg"), rc=0),
}


def run_row(row: Row, d: Path) -> dict:
    d.mkdir(parents=True)
    # a user's environment: no SIMCLR_* variable but those the row sets
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("SIMCLR_")}
    env.update(SIMCLR_CACHE=str(d / "cache"), SIMCLR_NO_CONTENTION_WARNING="1", **row.env(d))
    got: Result = cli("pretrain", "--run-dir", d / "run", *row.setup(d), *SMALL, env=env, cwd=d)
    return {"rc": got.returncode, "stdout": got.stdout, "stderr": got.stderr, "dir": d}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict | Exception]:
    """Every row's outcome, one after another; a row that fails to run fails only its test."""
    base = tmp_path_factory.mktemp("bad_input")
    out: dict[str, dict | Exception] = {}
    for name, row in ROWS.items():
        try:
            out[name] = run_row(row, base / name)
        except Exception as e:  # raised again by the row's own test
            out[name] = e
    return out


@pytest.mark.parametrize("name", list(ROWS))
def test_bad_data_is_one_clean_error(name, results):
    row, got = ROWS[name], results[name]
    if isinstance(got, Exception):
        raise got
    d, stderr = got["dir"], got["stderr"]
    report = f"rc {got['rc']}\nstderr:\n{stderr}\nstdout:\n{got['stdout']}"
    assert got["rc"] == row.rc, report
    assert "Traceback" not in stderr + got["stdout"], report
    if row.rc == 2:
        lines = stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("simclr: error: "), report
        assert not (d / "run").exists(), "a failed run left its run dir"
        text = lines[0]
    else:
        assert (d / "run" / "encoder.safetensors").is_file(), report
        text = stderr  # the warning naming the skipped files
    for fragment in row.fragments:
        assert fragment.format(root=d / "data") in text, report
    row.check(d)
