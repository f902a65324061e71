"""Optional TensorBoard logging (``train.tensorboard=true``): the metrics.jsonl scalars and a few
augmented views, in ``RUN_DIR/tensorboard``. Needs the ``tensorboard`` package."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from simclr.augment.ops import denormalize
from simclr.errors import SimCLRError


def check_available() -> None:
    """Fail before training when tensorboard is asked for but not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise SimCLRError("train.tensorboard=true needs the tensorboard package: pip install "
                          "tensorboard (or set train.tensorboard=false)") from None


class TensorBoard:
    """Writes every metrics record as scalars ``KIND/KEY`` at its step, and view grids."""

    def __init__(self, run_dir: Path):
        check_available()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def record(self, rec: dict[str, Any]) -> None:
        for key, value in rec.items():
            if key in ("kind", "epoch", "step") or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)):
                self.writer.add_scalar(f"{rec['kind']}/{key}", value, rec["step"])

    def views(self, v1: torch.Tensor, v2: torch.Tensor, mean, std, step: int, n: int = 8) -> None:
        """The first ``n`` images' two views (rows: view 1, view 2), un-normalized."""
        x = torch.cat([v1[:n], v2[:n]]).float().cpu().contiguous()
        self.writer.add_images("views", denormalize(x, mean, std).clamp(0, 1), step)

    def close(self) -> None:
        self.writer.close()
