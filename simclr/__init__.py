"""SimCLR contrastive self-supervised learning on PyTorch.

The public API is imported on first use (``simclr.pretrain``, ``from simclr import nt_xent``),
so ``import simclr`` and ``simclr --help`` do not pay for importing torch.
"""

from __future__ import annotations

import importlib

from simclr.errors import SimCLRError  # noqa: F401  (in __all__)

# public name -> the module that defines it ("module:name" where the name there differs)
_EXPORTS = {
    "Config": "simclr.config", "build_config": "simclr.config",
    "evaluate_encoder": "simclr.encoder_eval",
    "evaluate": "simclr.eval_run", "load_encoder": "simclr.eval_run",
    "kmeans_scores": "simclr.clustering:clustering_metrics",
    "multi_nt_xent": "simclr.loss", "nt_xent": "simclr.loss",
    "ProjectionHead": "simclr.models", "ResNet": "simclr.models", "SimCLR": "simclr.models",
    "build_model": "simclr.models",
    "LARS": "simclr.optim", "lr_at": "simclr.optim",
    "extract_features": "simclr.protocols", "knn_accuracy": "simclr.protocols",
    "linear_probe": "simclr.protocols",
    "pretrain": "simclr.train",
}

__all__ = sorted([*_EXPORTS, "SimCLRError"])
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        module, _, attr = _EXPORTS[name].partition(":")
        value = getattr(importlib.import_module(module), attr or name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'simclr' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
