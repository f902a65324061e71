"""IDX files (MNIST, Fashion-MNIST): the official binary format, gzip-compressed or raw, read
with its header checked before anything big is allocated."""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from simclr.data.download import check_memory, corrupt_error
from simclr.errors import SimCLRError

_IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # unsigned byte data, 3 or 1 dimensions


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """uint8 array of an IDX file, gzip-compressed or raw: ndim 3 = N x H x W, 1 = N labels.

    The header's dims are checked against the file size (raw) or the available memory (gz)
    before reading, and gz data is read in chunks: a damaged header allocates nothing big.
    """
    kind, head = ("image" if ndim == 3 else "label"), 4 + 4 * ndim
    try:
        with open(path, "rb") as file:
            gz = file.read(2) == b"\x1f\x8b"
            file.seek(0)
            f = gzip.GzipFile(fileobj=file) if gz else file
            header = f.read(head)
            magic = int.from_bytes(header[:4], "big")
            if len(header) < 4 or magic != _IDX_MAGIC[ndim]:
                raise SimCLRError(f"{path} is not an IDX {kind} file (magic 0x{magic:08x}, "
                                  f"expected 0x{_IDX_MAGIC[ndim]:08x}): put the official {kind} "
                                  "file there")
            dims = tuple(int.from_bytes(header[i:i + 4], "big") for i in range(4, head, 4))
            size, data = math.prod(dims), None
            if len(header) == head and (gz or os.fstat(file.fileno()).st_size - head == size):
                check_memory(size, f"{path} (dims {dims})")
                chunks, got = [], 0  # in chunks: gz data is only as long as it really is
                while got <= size and (chunk := f.read(min(size + 1 - got, 1 << 18))):
                    chunks.append(chunk)
                    got += len(chunk)
                data = b"".join(chunks)  # one byte more than size: the file must end there
            if data is None or len(data) != size:
                raise SimCLRError(f"{path} is corrupt or truncated (dims {dims} in its header "
                                  "do not match its size): delete it and download again")
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise corrupt_error(path, e) from None
    except OSError as e:
        raise SimCLRError(f"cannot read {path} ({e.strerror}): check data.root") from None
    return np.frombuffer(data, np.uint8).reshape(dims)
