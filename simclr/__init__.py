"""SimCLR contrastive self-supervised learning on PyTorch.

Layers, lowest first; a module imports only its own layer or lower ones (``tests/test_layout.py``
checks every import, and that there is no cycle):

1. ``errors``, ``runtime`` (device, precision, seeded generators, atomic writes, allocator),
   ``config`` (the schema, YAML, overrides, checks): what every layer may use.
2. ``data`` (official formats -> uint8 tensors, the batch order), ``augment`` (views, batched on
   the device), ``models`` (encoders, head, the one encoder factory): side by side.
3. ``train`` (pretrain -> the loop -> one step of the loss; the run directory; processes).
4. ``evaluation`` (features, protocols, fine-tuning, eval.json, the one pipeline). Training's
   online kNN monitor uses its pure functions (features, protocols, splits), nothing else.
5. ``tools`` (sweep, report, pictures, bench, export), then ``cli``.

The public API is imported on first use (``simclr.pretrain``, ``from simclr import nt_xent``),
so ``import simclr`` and ``simclr --help`` do not pay for importing torch.
"""

from __future__ import annotations

import importlib

from simclr.errors import SimCLRError  # noqa: F401  (in __all__)

# public name -> the module that defines it ("module:name" where the name there differs)
_EXPORTS = {
    "Config": "simclr.config", "build_config": "simclr.config",
    "evaluate_encoder": "simclr.evaluation.pipeline",
    "evaluate": "simclr.evaluation.pipeline", "load_encoder": "simclr.evaluation.encoder",
    "kmeans_scores": "simclr.evaluation.clustering:clustering_metrics",
    "multi_nt_xent": "simclr.train.loss", "nt_xent": "simclr.train.loss",
    "ProjectionHead": "simclr.models.head", "ResNet": "simclr.models.resnet",
    "SimCLR": "simclr.models.head", "build_model": "simclr.models.factory",
    "LARS": "simclr.train.optim", "lr_at": "simclr.train.optim",
    "extract_features": "simclr.evaluation.features",
    "knn_accuracy": "simclr.evaluation.protocols", "linear_probe": "simclr.evaluation.protocols",
    "pretrain": "simclr.train.pretrain",
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
