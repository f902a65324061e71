"""``simclr export``: a run's encoder for use outside simclr. ``torchvision``: a state_dict for
``torchvision.models.resnet18/34/50`` (no ``fc``), and the lines that build the model it loads
into (stem, shortcut, classifier), so nothing about the architecture is left to guess. ``pt2``:
the whole encoder, normalization included, as a `torch.export` program that runs with torch
alone (any batch size)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import torch
from torch import Tensor

from simclr.config import CUSTOM
from simclr.errors import SimCLRError
from simclr.evaluation.encoder import load_encoder
from simclr.models.resnet import ARCHS
from simclr.runtime.files import atomic_write
from simclr.train.rundir import encoder_file, read_encoder

FORMATS = ("torchvision", "pt2")
TORCHVISION_FILE = "encoder_torchvision.pt"
PROGRAM_FILE = "encoder.pt2"

_STEM = {"stem.0.": "conv1.", "stem.1.": "bn1."}  # ours -> torchvision


def _rename(key: str, stem: dict[str, str], pattern: str, stage_shift: int, layer: str,
            shortcut: tuple[str, str]) -> str:
    for old, new in stem.items():
        if key.startswith(old):
            return new + key[len(old):]
    m = re.fullmatch(pattern, key)
    if m is None:
        raise ValueError(f"{key} is not a key of a ResNet encoder")
    stage, block, rest = m.groups()
    return f"{layer}{int(stage) + stage_shift}.{block}.{rest.replace(*shortcut, 1)}"


def to_torchvision(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our ResNet's state_dict -> torchvision ResNet's names (same tensors, no ``fc``):
    ``stem.0`` -> ``conv1``, ``stem.1`` -> ``bn1``, ``stages.i.j`` -> ``layer{i+1}.j``,
    ``shortcut.0/1`` -> ``downsample.0/1``; block layers keep their names (conv1, bn1, ...)."""
    return {_rename(k, _STEM, r"stages\.(\d+)\.(\d+)\.(.+)", 1, "layer",
                    ("shortcut.", "downsample.")): v for k, v in state.items()}


def from_torchvision(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of `to_torchvision`; a torchvision classifier (``fc.*``) is dropped."""
    stem = {tv: ours for ours, tv in _STEM.items()}
    return {_rename(k, stem, r"layer(\d+)\.(\d+)\.(.+)", -1, "stages.",
                    ("downsample.", "shortcut.")): v
            for k, v in state.items() if not k.startswith("fc.")}


def torchvision_code(meta: dict, path: str | Path) -> str:
    """Python lines that build the torchvision ResNet an exported state_dict loads into."""
    c = meta["in_channels"]
    lines = ["import torch, torchvision", "from torch import nn",
             f"model = torchvision.models.{meta['arch']}()"]
    if meta["stem"] == "cifar":
        lines += [f"model.conv1 = nn.Conv2d({c}, 64, kernel_size=3, stride=1, padding=1, "
                  "bias=False)  # the CIFAR stem", "model.maxpool = nn.Identity()"]
    elif c != 3:
        lines += [f"model.conv1 = nn.Conv2d({c}, 64, kernel_size=7, stride=2, padding=3, "
                  f"bias=False)  # {c}-channel images"]
    if meta.get("shortcut") == "projection" and ARCHS[meta["arch"]][0].expansion == 1:
        lines += ["model.layer1[0].downsample = nn.Sequential(nn.Conv2d(64, 64, 1, bias=False), "
                  "nn.BatchNorm2d(64))  # projection shortcut"]
    lines += ["model.fc = nn.Identity()  # features, not classes",
              f"model.load_state_dict(torch.load({str(path)!r}, weights_only=True))",
              f"# inputs: images in [0, 1], normalized per channel with mean {meta['mean']}, "
              f"std {meta['std']}"]
    return "\n".join(lines)


def export_torchvision(run_dir_or_file: str | Path, out: str | Path | None = None
                       ) -> tuple[Path, str]:
    """Write a run's encoder as a torchvision ResNet state_dict (``torch.save``; loads with
    ``weights_only=True``).

    Returns:
        The file written (default ``encoder_torchvision.pt`` beside the encoder) and the code
        that builds the model it loads into.
    """
    source = encoder_file(run_dir_or_file)
    tensors, meta = read_encoder(source)
    arch = meta["arch"]
    if arch.startswith("torchvision:"):
        raise SimCLRError(f"{source} is already a torchvision model ({arch}) with its own key "
                          "names: load encoder.safetensors (safetensors.torch.load_file) into "
                          "it directly")
    if arch not in ARCHS:
        kind = "a custom module" if arch == CUSTOM else arch
        raise SimCLRError(f"only our resnet18/34/50 map to torchvision's ResNet; {source} holds "
                          f"{kind}: use --format pt2, or its encoder.safetensors")
    if meta["width"] != 1.0:
        raise SimCLRError(f"{source} is a {arch} of width {meta['width']:g}; torchvision's ResNet "
                          "has no width multiplier, so its weights cannot load there: use "
                          "--format pt2, or encoder.safetensors with simclr.load_encoder")
    path = Path(out) if out is not None else source.parent / TORCHVISION_FILE
    state = to_torchvision(tensors)
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    return path, torchvision_code(meta, path)


def export_program(run_dir_or_file: str | Path, out: str | Path | None = None
                   ) -> tuple[Path, str]:
    """Write a run's encoder as a `torch.export` program: float images in [0, 1]
    (N x C x H x W, any N, the run's image size) -> features (N x D), the run's normalization
    inside. It loads with ``torch.export.load(path).module()``, no simclr needed.

    Returns:
        The file written (default ``encoder.pt2`` beside the encoder) and the code that loads it.
    """
    source = encoder_file(run_dir_or_file)
    _, meta = read_encoder(source)
    if meta["arch"] == CUSTOM:
        raise SimCLRError(f"{source} holds a custom module, which cannot be rebuilt from its "
                          "file: export it in Python with torch.export.export(simclr."
                          "load_encoder(run, encoder=module), (images,))")
    encoder = load_encoder(source)
    c, size = meta["in_channels"], meta["image_size"]
    example = torch.zeros(2, c, size, size)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.export.export(encoder, (example,), dynamic_shapes=({0: batch},))
    path = Path(out) if out is not None else source.parent / PROGRAM_FILE
    buffer = io.BytesIO()  # torch names a .pt2 by its suffix; the temporary file has none
    torch.export.save(program, buffer)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))
    code = "\n".join([
        "import torch",
        f"encoder = torch.export.load({str(path)!r}).module()",
        f"features = encoder(images)  # images: float in [0, 1], N x {c} x {size} x {size} -> "
        f"N x {encoder.feature_dim}"])
    return path, code


__all__ = ["FORMATS", "PROGRAM_FILE", "TORCHVISION_FILE", "export_program", "export_torchvision",
           "from_torchvision", "to_torchvision", "torchvision_code"]
