"""SimCLR contrastive self-supervised learning on PyTorch.

The public API is imported on first use (``simclr.pretrain``, ``from simclr import nt_xent``),
so ``import simclr`` and ``simclr --help`` do not pay for importing torch.
"""

from __future__ import annotations

import importlib

from simclr.errors import SimCLRError  # noqa: F401  (in __all__)

# public name -> the module that defines it
_EXPORTS = {
    "Config": "simclr.config", "build_config": "simclr.config",
    "evaluate": "simclr.eval_run", "load_encoder": "simclr.eval_run",
    "nt_xent": "simclr.loss",
    "ProjectionHead": "simclr.models", "ResNet": "simclr.models", "SimCLR": "simclr.models",
    "build_model": "simclr.models",
    "LARS": "simclr.optim", "lr_at": "simclr.optim",
    "pretrain": "simclr.train",
}

__all__ = sorted([*_EXPORTS, "SimCLRError"])
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'simclr' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
