"""Image folders as tensors: decode once with Pillow, resize, cache as safetensors.

Layout: ``root/<class>/**/*.png`` (label = index of the class folder in sorted order) or flat
``root/*.png`` (labels -1); a root with both ``train/`` and ``test/`` subfolders gives those two
splits, class indices taken from the sorted union of their class folders. Hidden files and
folders are skipped. `list_folder` gives the files and labels without decoding them
(the streaming loader, `simclr.data.stream`, reads them one by one).

Images are decoded to RGB, always (grayscale ones are replicated to 3 channels, so a folder
gives one shape), center-cropped to a square and resized (bicubic) to ``image_size``, which is
`FOLDER_DEFAULT_SIZE` when 0, by `decode_image`, the one decoder of both the
in-memory and the streaming path. Unreadable files (corrupt, truncated, not images,
decompression bombs) are skipped with a warning naming them; none readable is a SimCLRError,
and so is a folder whose decoded images would not fit in the available memory. The result is
cached in ``$SIMCLR_CACHE/folders`` (default ``~/.cache/simclr``), keyed on the files' relative
paths, sizes and mtimes and the image size, so a second load skips decoding.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from simclr.data.download import check_memory
from simclr.errors import SimCLRError
from simclr.runtime.files import atomic_write

FOLDER_DEFAULT_SIZE = 64
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                    ".pgm"}
_CACHE_FORMAT = 1  # bump when the folder decoding changes, to invalidate old caches


def cache_home() -> Path:
    """``$SIMCLR_CACHE`` or ``~/.cache/simclr``."""
    return Path(os.environ.get("SIMCLR_CACHE") or "~/.cache/simclr").expanduser()


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not any(s.startswith(".") for s in p.relative_to(folder).parts))


def _too_big(im) -> bool:
    from PIL import Image

    # Pillow only warns up to twice MAX_IMAGE_PIXELS; a bomb is unreadable here
    return im.width * im.height > (Image.MAX_IMAGE_PIXELS or math.inf)


def decode_image(path: str | Path, size: int) -> np.ndarray | None:
    """size x size x 3 uint8 RGB (center crop + bicubic resize), or None if unreadable."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            if _too_big(im):
                return None
            im = im.convert("RGB")
            if im.size != (size, size):
                im = ImageOps.fit(im, (size, size), Image.Resampling.BICUBIC)
            return np.asarray(im, dtype=np.uint8)
    except Exception:  # an unreadable file of any kind is skipped, with a warning
        return None


_decode_image = decode_image  # the name read_folder calls (tests patch it)


def probe_image(path: str | Path) -> bool:
    """Whether Pillow reads ``path``'s header as an image that is not a decompression bomb.

    Reads the header only: a file that passes may still fail to decode (truncated data).
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            return not _too_big(im)
    except Exception:
        return False


def _listing(root: Path, split: str) -> tuple[Path, list[str], list[tuple[Path, int]]]:
    """(the split's folder, class names, [(file, label)] in reader order), unreadable or not."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise SimCLRError(f"image folder {root} not found: set data.root to a folder of images")
    bases = [root]
    if (root / "train").is_dir() and (root / "test").is_dir():
        bases = [root / "train", root / "test"]
    if split not in ("train", "test") or (split == "test" and len(bases) == 1):
        raise SimCLRError(f"{root} has no '{split}' split: add {root}/train and {root}/test "
                          "subfolders, or use the train split")
    base = root / split if len(bases) == 2 else root
    classes = sorted({d.name for b in bases for d in b.iterdir()
                      if d.is_dir() and not d.name.startswith(".")})
    if classes:
        files = [(p, i) for i, c in enumerate(classes) if (base / c).is_dir()
                 for p in _list_images(base / c)]
    else:
        files = [(p, -1) for p in _list_images(base)]
    if not files:
        raise SimCLRError(f"no images found in {base}: add .png/.jpg files, one subfolder per "
                          "class (or all in one folder for unlabeled data)")
    return base, classes, files


def _warn_skipped(bad: list[str], base: Path, total: int, stacklevel: int = 3) -> None:
    """Warn about skipped files; SimCLRError when all ``total`` of them were."""
    if len(bad) == total:
        raise SimCLRError(f"no readable image in {base} ({len(bad)} files failed to decode): "
                          "check that they are valid images")
    if bad:
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        warnings.warn(f"skipped {len(bad)} unreadable image(s) in {base}: "
                      f"{', '.join(bad[:10])}{more}", stacklevel=stacklevel)


def _threads() -> int:
    return min(8, os.cpu_count() or 1)


def list_folder(root: str | Path, split: str = "train",
                probe: bool = True) -> tuple[list[Path], list[int], list[str]]:
    """The image files of one split without decoding them: (files, labels, classes).

    In the order and with the labels of `read_folder` (-1 when flat). With ``probe``,
    files whose header Pillow cannot read as an image (not images, decompression bombs) are
    left out with the same warning as `read_folder`; a file with a valid header but
    corrupt data is only found when decoded (`simclr.data.stream` raises on it).
    """
    base, classes, files = _listing(Path(root), split)
    if probe:
        with ThreadPoolExecutor(max_workers=_threads()) as pool:
            ok = list(pool.map(probe_image, [p for p, _ in files]))
        bad = [str(p.relative_to(base)) for (p, _), good in zip(files, ok, strict=True)
               if not good]
        _warn_skipped(bad, base, len(files))
        files = [f for f, good in zip(files, ok, strict=True) if good]
    return [p for p, _ in files], [y for _, y in files], classes


def read_folder(root: Path, split: str = "train", download: bool = True,
                image_size: int = 0) -> tuple[Tensor, Tensor]:
    """One split of an image folder: (uint8 N x 3 x S x S, int64 N), S = image_size or 64.

    ``download`` is ignored (there is nothing to download); it keeps the reader signature.
    """
    base, classes, files = _listing(Path(root), split)
    size = image_size or FOLDER_DEFAULT_SIZE
    check_memory(len(files) * 3 * size * size, f"{len(files)} images at {size}x{size}",
                 "use a smaller data.image_size or fewer images")
    try:
        stats = [(str(p.relative_to(base)), p.stat().st_size, p.stat().st_mtime_ns, y)
                 for p, y in files]
    except OSError as e:
        raise SimCLRError(f"cannot read {e.filename} ({e.strerror}): check the image "
                          "folder's permissions") from None
    key = json.dumps([_CACHE_FORMAT, size, classes, str(base.resolve()), stats])
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    cache = cache_home() / "folders" / f"{digest}.safetensors"
    if cache.is_file():
        try:
            from safetensors.torch import load_file

            x, y = (cached := load_file(cache))["images"], cached["labels"]
            if x.dtype == torch.uint8 and x.shape[1:] == (3, size, size) and \
                    y.dtype == torch.int64 and y.shape == (len(x),) and x.is_contiguous():
                return x, y
        except Exception:  # a damaged cache is rebuilt
            pass
    with ThreadPoolExecutor(max_workers=_threads()) as pool:
        decoded = list(pool.map(lambda p: _decode_image(p, size), [p for p, _ in files]))
    bad = [str(p.relative_to(base)) for (p, _), a in zip(files, decoded, strict=True) if a is None]
    _warn_skipped(bad, base, len(files))
    good = [(a, y) for (_, y), a in zip(files, decoded, strict=True) if a is not None]
    images = torch.from_numpy(np.stack([a for a, _ in good])).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([y for _, y in good], dtype=torch.int64)
    _save_cache(cache, images, labels)
    return images, labels  # N x 3 x size x size


def _save_cache(path: Path, images: Tensor, labels: Tensor) -> None:
    from safetensors.torch import save_file

    try:
        atomic_write(path, lambda tmp: save_file({"images": images, "labels": labels}, str(tmp)))
    except OSError:  # no cache (read-only home, full disk) only costs time
        pass


__all__ = ["FOLDER_DEFAULT_SIZE", "IMAGE_EXTENSIONS", "cache_home", "decode_image", "list_folder",
           "probe_image", "read_folder"]
