"""Getting the official dataset files safely: download, checksum, archives, pickles.

Everything here treats files as untrusted input:

- `download` streams to ``FILE.part``, checks the md5 and renames; a failure leaves
  neither a partial file nor a ``.part`` behind.
- `safe_extract` and `read_tar_members` refuse archive members that could write
  outside their folder (absolute paths, ``..``, links leading out, device files).
- `simclr.data.unpickle.restricted_load` (re-exported here) unpickles the CIFAR python-2
  batches without being able to run code.
- `check_memory` refuses, before allocating, to load more than the available memory.

Every problem a user can fix is a `SimCLRError` with one line naming the fix.

Environment: ``SIMCLR_MIRROR`` (a base URL such as ``https://mirror.example/data/`` or
``file:///srv/datasets/``) fetches every official file as ``$SIMCLR_MIRROR/<filename>``
instead of from its authors' site; the published md5 is still checked, so a mirror cannot
substitute other content.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import posixpath
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from simclr.data.unpickle import restricted_load
from simclr.errors import SimCLRError, corrupt_error


@dataclass(frozen=True)
class Resource:
    """One official file of a dataset.

    Attributes:
        url: where the dataset's authors publish it.
        filename: its name in the data folder.
        md5: the published checksum, checked on files we download.
        alternatives: other names in the data folder that stand for this file (its extracted
            folder, the uncompressed file, another official format); any one of them is enough.
        extract: unpack the archive after downloading it (worth it for large archives).
    """

    url: str
    filename: str
    md5: str
    alternatives: tuple[str, ...] = ()
    extract: bool = False


_KRIZ = "https://www.cs.toronto.edu/~kriz/"
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_IDX_MD5 = {  # published checksums of the four IDX gz files (as listed by torchvision)
    "fashion_mnist": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                      "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"),
    "mnist": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
              "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"),
}
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx_resources(base: str, name: str) -> list[Resource]:
    return [Resource(f"{base}{f}.gz", f"{f}.gz", md5, alternatives=(f,))
            for f, md5 in zip(_IDX_FILES, _IDX_MD5[name], strict=True)]


RESOURCES: dict[str, list[Resource]] = {
    # The python version is what we download; the binary version (no pickles) is read too.
    "cifar10": [Resource(f"{_KRIZ}cifar-10-python.tar.gz", "cifar-10-python.tar.gz",
                         "c58f30108f718f92721af3b95e74349a",
                         alternatives=("cifar-10-batches-py", "cifar-10-batches-bin",
                                       "cifar-10-binary.tar.gz"))],
    "cifar10_binary": [Resource(f"{_KRIZ}cifar-10-binary.tar.gz", "cifar-10-binary.tar.gz",
                                "c32a1d4ab5d03f1284b67883e8d87530",
                                alternatives=("cifar-10-batches-bin",))],
    "cifar100": [Resource(f"{_KRIZ}cifar-100-python.tar.gz", "cifar-100-python.tar.gz",
                          "eb9058c3a382ffc7106e4002c42a8d85", alternatives=("cifar-100-python",))],
    "stl10": [Resource("http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
                       "stl10_binary.tar.gz", "91f7769df0f17e558f3565bffb0c7dfb",
                       alternatives=("stl10_binary",), extract=True)],
    "fashion_mnist": _idx_resources(_FASHION, "fashion_mnist"),
    "mnist": _idx_resources(_MNIST, "mnist"),
}

# Where torchvision keeps the same files, so its data folders work as data.root too.
_SUBDIRS: dict[str, tuple[str, ...]] = {"fashion_mnist": ("FashionMNIST/raw",),
                                        "mnist": ("MNIST/raw",)}


def candidate_folders(name: str, root: Path) -> list[Path]:
    """Folders that may hold dataset ``name``'s files, given ``data.root``: the root itself,
    torchvision's subfolder, and ``<name>`` spelled with ``_`` or ``-`` (so a parent folder
    such as ``/usr/share/datasets``, holding ``fashion-mnist/``, works too)."""
    subdirs = (*_SUBDIRS.get(name, ()), name, name.replace("_", "-"))
    return [root, *(root / s for s in dict.fromkeys(subdirs))]


def md5sum(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex md5 of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: str | Path, md5: str, timeout: float = 30) -> Path:
    """Fetch ``url`` (http, https or file) to ``dest`` if its md5 matches.

    The bytes stream to ``dest.part`` in the same folder, which is renamed to ``dest`` only
    once the checksum is right; on any failure (including Ctrl-C) the ``.part`` is removed,
    and so are the folders this call created.

    Returns:
        ``dest``.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    made = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]  # deepest first
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        out = open(part, "wb")
    except OSError as e:
        raise SimCLRError(f"cannot write {part} ({e.strerror}): make {dest.parent} writable "
                          "or set data.root to another folder") from None
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    total = int(response.headers.get("Content-Length") or 0) or None
                    _stream(response, out, digest, total, dest.name)
            except (OSError, ValueError, http.client.HTTPException) as e:
                if isinstance(e, urllib.error.HTTPError):
                    e.close()  # it holds the open response
                reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
                raise SimCLRError(f"cannot download {url} ({reason}); download it by hand and "
                                  f"put it in {dest.parent}, or point data.root at the folder "
                                  "that holds it") from None
        got = digest.hexdigest()
        if got != md5.lower():
            raise SimCLRError(f"checksum mismatch for {dest.name} (md5 {got}, expected {md5}): "
                              f"the download is corrupt; delete it and retry, or fetch {url} "
                              f"by hand into {dest.parent}")
        os.replace(part, dest)
    except BaseException:
        part.unlink(missing_ok=True)
        for folder in made:  # the folders this call created, if still empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return dest


def _stream(src: IO[bytes], dst: IO[bytes], digest: Any, total: int | None, name: str) -> None:
    from tqdm import tqdm

    show = total is not None and total > (8 << 20)
    with tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=not show or None,
              leave=False) as bar:
        while block := src.read(1 << 20):
            dst.write(block)
            digest.update(block)
            bar.update(len(block))


def _present(folder: Path, resource: Resource) -> bool:
    return any((folder / n).exists() for n in (resource.filename, *resource.alternatives))


def ensure_files(name: str, root: str | Path, download: bool = True) -> Path:
    """The folder holding dataset ``name``'s files, downloading what is missing.

    Files already in ``root`` (or a subfolder of `candidate_folders`) are used as
    they are: the readers check their format, not their md5, so recompressed copies (Debian's
    Fashion-MNIST) work. Files we download are md5-checked.

    Args:
        name: a key of `RESOURCES`.
        root: the data folder.
        download: fetch missing files; if False a missing file is an error naming it.
    """
    if name not in RESOURCES:
        raise SimCLRError(f"no official files known for '{name}': choose one of "
                          f"{', '.join(RESOURCES)}")
    root = Path(root).expanduser()
    resources = RESOURCES[name]
    for folder in candidate_folders(name, root):
        if all(_present(folder, r) for r in resources):
            return folder
    missing = [r for r in resources if not _present(root, r)]
    if not download:
        url = resource_url(missing[0])
        source = url if len(missing) == 1 else url.rsplit("/", 1)[0] + "/"
        raise SimCLRError(f"{name} files not found in {root}: put "
                          f"{', '.join(r.filename for r in missing)} (from {source}) there, "
                          "point data.root at the folder that holds them, or set "
                          "data.download=true")
    for r in missing:
        _fetch(r, root)
    return root


def resource_url(resource: Resource) -> str:
    """The URL a resource is fetched from: ``$SIMCLR_MIRROR/<filename>`` if set, else its own."""
    mirror = os.environ.get("SIMCLR_MIRROR")
    return f"{mirror.rstrip('/')}/{resource.filename}" if mirror else resource.url


def _fetch(resource: Resource, root: Path) -> None:
    path = download(resource_url(resource), root / resource.filename, resource.md5)
    if resource.extract:
        safe_extract(path, root)


def available_memory(meminfo: str | Path = "/proc/meminfo") -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable), None if unknown."""
    try:
        with open(meminfo, "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the value is in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(nbytes: int, what: str,
                 fix: str = "free some memory or use a machine with more") -> None:
    """SimCLRError naming ``fix`` if ``what`` (``nbytes`` decoded) would not fit in memory.

    Call it with the size a reader will allocate, computed from headers or file sizes, before
    allocating: a damaged header claiming 2^40 images is refused instead of swapping.
    """
    free = available_memory()
    if free is not None and nbytes > free:
        raise SimCLRError(f"{what} needs {_size(nbytes)} of memory but only {_size(free)} is "
                          f"available: {fix}")


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def _check_member(member: tarfile.TarInfo, archive: str | Path) -> str:
    """The member's normalized relative name, or SimCLRError if it could leave its folder."""
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    parts = PurePosixPath(name).parts
    bad = None
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        bad = "an absolute path"
    elif ".." in parts or "\\" in name:
        bad = "a '..' path"
    elif member.isdev():
        bad = "a device file"
    elif member.issym() or member.islnk():
        target = member.linkname
        base = posixpath.dirname(name) if member.issym() else ""
        joined = posixpath.normpath(posixpath.join(base, target))
        if target.startswith("/") or joined == ".." or joined.startswith("../"):
            bad = f"a link to {target}"
    elif not (member.isfile() or member.isdir()):
        bad = "an unsupported member type"
    if bad:
        raise SimCLRError(f"{archive} holds {bad} ('{member.name}'): refusing to extract it; "
                          "delete the archive and download the official one")
    return name


def _open_tar(path: str | Path) -> tuple[tarfile.TarFile, list[tarfile.TarInfo]]:
    try:
        tar = tarfile.open(path, "r:*")
    except FileNotFoundError:
        raise SimCLRError(f"{path} not found: check data.root") from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise corrupt_error(path, e) from None
    try:
        members = tar.getmembers()  # reads every header: a truncated archive fails here
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        tar.close()
        raise corrupt_error(path, e) from None
    return tar, members


def safe_extract(tar_path: str | Path, dest: str | Path) -> Path:
    """Extract a tar archive into ``dest`` without letting it write anywhere else.

    Every member is checked before anything is written. The archive is unpacked into a
    hidden temporary folder inside ``dest`` (same filesystem) and its top-level entries are
    renamed into ``dest`` only once all of it extracted, replacing same-named entries; so a
    refused, corrupt or truncated archive leaves ``dest`` as it was.

    Returns:
        ``dest``.
    """
    dest = Path(dest)
    tar, members = _open_tar(tar_path)
    with tar:
        for m in members:
            _check_member(m, tar_path)
        created = not dest.exists()
        dest.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
        try:
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmp, members=members, **kwargs)
            for entry in sorted(tmp.iterdir()):
                target = dest / entry.name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                elif target.exists() or target.is_symlink():
                    target.unlink()
                os.replace(entry, target)
        except (tarfile.TarError, EOFError, zlib.error) as e:
            raise corrupt_error(tar_path, e) from None
        except OSError as e:
            raise SimCLRError(f"cannot extract {tar_path} into {dest} ({e.strerror}): free some "
                              "space or make the folder writable") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if created and not any(dest.iterdir()):
                dest.rmdir()
    return dest


def read_tar_members(tar_path: str | Path, names: list[str]) -> dict[str, bytes]:
    """Read the named regular files of a tar archive into memory, extracting nothing.

    All members are checked as in `safe_extract`, so an unsafe archive is refused.

    Args:
        tar_path: a ``.tar``, ``.tar.gz`` or similar archive.
        names: member paths such as ``cifar-10-batches-py/data_batch_1``.

    Returns:
        ``{name: bytes}``; SimCLRError if a name is missing or they would not fit in memory.
    """
    tar, members = _open_tar(tar_path)
    out: dict[str, bytes] = {}
    with tar:
        found = {_check_member(m, tar_path): m for m in members}
        for name in names:
            if name not in found or not found[name].isfile():
                raise SimCLRError(f"{tar_path} has no file {name}: it is not the official "
                                  "archive; delete it and download again")
        check_memory(sum(found[n].size for n in names), f"reading {tar_path}")
        for name in names:
            member = found[name]
            try:
                out[name] = tar.extractfile(member).read()
            except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
                raise corrupt_error(tar_path, e) from None
    return out


__all__ = ["RESOURCES", "Resource", "available_memory", "candidate_folders", "check_memory",
           "corrupt_error", "download", "ensure_files", "md5sum", "read_tar_members",
           "resource_url", "restricted_load", "safe_extract"]
