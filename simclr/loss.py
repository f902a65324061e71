"""NT-Xent, the normalized temperature-scaled cross-entropy of SimCLR (Chen et al. 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nt_xent(z1: Tensor, z2: Tensor, temperature: float, rank: int = 0,
            gather=None) -> Tensor:
    """Mean NT-Xent loss over the 2N views of a batch.

    Row i of ``z1`` and row i of ``z2`` are two views of one image (the positive pair); every
    other view in the (global) batch is a negative. Similarities are cosine / T, a view's
    similarity to itself is masked out, and each of the 2N views contributes one cross-entropy
    term; the result is their mean. The tf reference (google-research/simclr
    ``add_contrastive_loss``) returns ``mean(loss_a + loss_b)``, which is 2x this value. With all
    similarities equal the loss is ln(2N - 1).

    Args:
        z1: N x D projections of the first views (any scale: rows are L2-normalized here).
        z2: N x D projections of the second views.
        temperature: T > 0.
        rank: this process's rank; its rows sit at offset ``rank * N`` of the gathered batch.
        gather: ``Tensor -> Tensor`` concatenating a tensor over ranks with gradient
            (``dist.gather_with_grad``); None means one process.

    Returns:
        Scalar loss (float32, or float64 for float64 inputs).
    """
    dtype = torch.promote_types(z1.dtype, torch.float32)  # bf16/fp16 -> fp32, fp64 stays
    z1 = F.normalize(z1.to(dtype), dim=1)  # N x D
    z2 = F.normalize(z2.to(dtype), dim=1)
    n = z1.shape[0]
    a1, a2 = (gather(z1), gather(z2)) if gather is not None else (z1, z2)  # M x D, M = N x ranks
    m = a1.shape[0]
    own = torch.arange(n, device=z1.device) + rank * n  # rows of this rank in the gathered batch
    # Each local view against all 2M gathered views: [views of set 1 | views of set 2].
    keys = torch.cat([a1, a2], dim=0)  # 2M x D
    queries = torch.cat([z1, z2], dim=0)  # 2N x D
    logits = queries @ keys.T / temperature  # 2N x 2M
    self_idx = torch.cat([own, own + m])  # 2N: column of each query itself
    logits[torch.arange(2 * n, device=z1.device), self_idx] = float("-inf")
    positive = torch.cat([own + m, own])  # 2N: column of each query's other view
    return F.cross_entropy(logits, positive)
