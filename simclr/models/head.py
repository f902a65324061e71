"""The projection head g and ``SimCLR(f, g)``, which returns features h and projections z."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ScaleOnlyBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d with a learned scale and no shift (tf ``BatchNormalization(center=False)``),
    the reference head's output layer."""

    def __init__(self, dim: int):
        super().__init__(dim)
        self.register_parameter("bias", None)


class ProjectionHead(nn.Module):
    """MLP g: h B x D -> z B x out_dim; ``layers`` linear layers, ReLU between them.

    ``bn``: BatchNorm1d after each hidden linear layer (which then has no bias); ``bn_last``:
    also after the output layer, scale only, and the output layer has no bias (the tf
    reference's head with 3 layers). ``init="reference"`` draws the linear weights from
    N(0, 0.01^2) as the reference's ``LinearLayer``; else PyTorch's default.
    """

    def __init__(self, in_dim: int, hidden: int = 0, out_dim: int = 128, layers: int = 2,
                 bn: bool = False, bn_last: bool = False, init: str = "torchvision"):
        super().__init__()
        hidden = hidden or in_dim
        mods: list[nn.Module] = []
        dim = in_dim
        for _ in range(layers - 1):
            mods += [nn.Linear(dim, hidden, bias=not bn)]
            mods += [nn.BatchNorm1d(hidden)] if bn else []
            mods += [nn.ReLU(inplace=True)]
            dim = hidden
        mods.append(nn.Linear(dim, out_dim, bias=not bn_last))
        mods += [ScaleOnlyBatchNorm1d(out_dim)] if bn_last else []
        self.net = nn.Sequential(*mods)
        if init == "reference":
            for m in self.net:
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0.0, 0.01)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)


class SimCLR(nn.Module):
    """Encoder f and projection head g: ``forward(x) -> (h, z)``; evaluation uses h.

    ``x`` is one batch B x C x H x W, or a list of batches of different sizes (multi-crop
    views): the encoder then runs once per batch, so each size group has its own BatchNorm
    statistics (a joint forward is impossible across sizes), and the head runs once on all
    features together. ``feature_dim``: D of h (the encoder's, or found by a forward pass).
    """

    def __init__(self, encoder: nn.Module, head: ProjectionHead, feature_dim: int | None = None):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.feature_dim = feature_dim if feature_dim is not None else encoder.feature_dim

    def forward(self, x: Tensor | list[Tensor]) -> tuple[Tensor, Tensor]:
        if isinstance(x, (list, tuple)):
            h = torch.cat([self.encoder(v) for v in x])  # sum of batches x D
        else:
            h = self.encoder(x)  # B x D
        return h, self.head(h)


__all__ = ["ProjectionHead", "ScaleOnlyBatchNorm1d", "SimCLR"]
