"""NT-Xent, the normalized temperature-scaled cross-entropy of SimCLR (Chen et al. 2020): the
loss of a step (`contrastive_loss`, its one entry point), two views (`nt_xent`), V views
per image with several positives each (`multi_nt_xent`), and the decoupled loss DCL / DCLW
of Yeh et al. 2022 (`decoupled_loss`)."""

from __future__ import annotations

import math

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


def _view_logits(z: Tensor, views: int, temperature: float, rank: int, gather,
                 labels: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """The setup the V-view losses share: each local view against every view of the global batch.

    Rows are L2-normalized in float32 (float64 stays float64) and gathered once as N x (V·D)
    rows, so each rank's images stay together (image j of the gathered batch: rank j // N).

    Returns:
        logits: VN x VM, cosine / T of local view v·N + i (row) and gathered view u·M + j
            (column, view-major; M images in the global batch), a view's own column at -inf.
        positive: VN x VM bool, the anchor's positives: the other views of its image, or with
            ``labels`` of every image with its label; never itself.
        keys: VM x D, the gathered views (normalized, view-major).
    """
    dtype = torch.promote_types(z.dtype, torch.float32)
    z = F.normalize(z.to(dtype), dim=1)  # VN x D
    n, d = z.shape[0] // views, z.shape[1]
    keys = z
    if gather is not None:  # one gather: N x (V·D) rows, so each rank's images stay together
        rows = gather(z.view(views, n, d).transpose(0, 1).reshape(n, views * d))  # M x VD
        keys = rows.view(-1, views, d).transpose(0, 1).reshape(-1, d)  # VM x D, view-major
    m = keys.shape[0] // views
    dev = z.device
    query_ids = (torch.arange(n, device=dev) + rank * n).repeat(views)  # VN: image in batch
    key_ids = torch.arange(m, device=dev).repeat(views)  # VM
    if labels is not None:
        key_labels = gather(labels) if gather is not None else labels  # M
        positive = labels.repeat(views)[:, None] == key_labels.repeat(views)[None, :]
    else:
        positive = query_ids[:, None] == key_ids[None, :]  # VN x VM
    rows = torch.arange(views * n, device=dev)
    self_idx = query_ids + torch.arange(views, device=dev).repeat_interleave(n) * m  # VN
    logits = z @ keys.T / temperature  # VN x VM
    logits[rows, self_idx] = float("-inf")
    positive[rows, self_idx] = False
    return logits, positive, keys


def multi_nt_xent(z: Tensor, views: int, temperature: float, rank: int = 0, gather=None,
                  labels: Tensor | None = None) -> Tensor:
    """Multi-positive NT-Xent over V views per image (Khosla et al. 2020 eq. 2, "L_out").

    Every view is an anchor. Its positives are the other V - 1 views of its image; with
    ``labels`` (SupCon), every other view of every image with its label. Every other view in
    the (global) batch is a negative. Per anchor: the mean over its positives of
    -log softmax(cosine / T) over all views but itself; the result is the mean over the local
    V·N anchors. For V = 2 without labels this is `nt_xent`; with all similarities equal
    it is ln(V·M - 1) (M images in the global batch).

    Args:
        z: (V·N) x D projections, view-major: row v·N + i is view v of image i (any scale:
            rows are L2-normalized here).
        views: V >= 2.
        temperature: T > 0.
        rank: this process's rank; its images sit at offset ``rank * N`` of the gathered batch.
        gather: ``Tensor -> Tensor`` concatenating a tensor over ranks with gradient
            (``dist.gather_with_grad``); None means one process.
        labels: N int64 class labels of this rank's images, or None (self-supervised).

    Returns:
        Scalar loss (float32, or float64 for float64 inputs).
    """
    logits, positive, _ = _view_logits(z, views, temperature, rank, gather, labels)
    log_prob = torch.log_softmax(logits, dim=1)
    per_anchor = torch.where(positive, log_prob, 0.0).sum(1) / positive.sum(1)  # VN
    return -per_anchor.mean()


def decoupled_loss(z: Tensor, views: int, temperature: float, rank: int = 0, gather=None,
                   labels: Tensor | None = None, sigma: float | None = None) -> Tensor:
    """Decoupled contrastive loss, DCL, and its weighted form DCLW (Yeh et al. 2022 eq. 6, for V
    views per image).

    Every view a is an anchor. Its positives P(a) are the other V - 1 views of its image; with
    ``labels`` (SupCon), every other view of every image with its label. Its negatives N(a) are
    all the other views of the (global) batch: the positives are taken out of the denominator
    (decoupled). With s = cosine:

        loss_a = mean_{p in P(a)} w(a, p) * (-s(a, p) / T) + log sum_{n in N(a)} exp(s(a, n) / T)

    w = 1 for DCL; for DCLW the negative von Mises-Fisher weight
    w(a, p) = 2 - exp(s(a, p) / sigma) / E[exp(s / sigma)], the mean over all positive pairs (the
    ordered pairs of different views of one image) of the global batch, from detached cosines:
    a constant, as in lightly's ``DCLWLoss``. The result is the mean over the local V·N anchors.
    For V = 2 without labels this is eq. 6, the log over the 2(M - 1) views of the other images.
    With all similarities equal (and no labels) DCL and DCLW are ln(V(M - 1)), M images in the
    global batch. An anchor without negatives (with ``labels``, when every image of the global
    batch has its label) has nothing to repel: it is left out of the mean (0 if none is left).

    Args:
        z: (V·N) x D projections, view-major: row v·N + i is view v of image i (any scale:
            rows are L2-normalized here).
        views: V >= 2.
        temperature: T > 0.
        rank: this process's rank; its images sit at offset ``rank * N`` of the gathered batch.
        gather: ``Tensor -> Tensor`` concatenating a tensor over ranks with gradient
            (``dist.gather_with_grad``), called once on the N x (V·D) normalized rows (and on
            ``labels``); None means one process.
        labels: N int64 class labels of this rank's images, or None (self-supervised).
        sigma: DCLW's sigma > 0, or None for DCL. Not with ``labels``.

    Returns:
        Scalar loss (float32, or float64 for float64 inputs).
    """
    if labels is not None and sigma is not None:
        raise ValueError("DCLW weights the views of one image: it takes no labels")
    logits, positive, keys = _view_logits(z, views, temperature, rank, gather, labels)
    attract = torch.where(positive, logits, 0.0)  # VN x VM: s(a, p) / T
    if sigma is not None:
        k = keys.detach().view(views, -1, keys.shape[1])  # V x M x D
        off = ~torch.eye(views, dtype=torch.bool, device=keys.device)
        pairs = torch.einsum("umd,vmd->muv", k, k)[:, off]  # M x V(V-1): every positive pair
        # off the positives a weight multiplies 0: at cosine -1 it is finite (0 x inf: nan)
        cosine = torch.where(positive, logits.detach() * temperature, -1.0)
        attract = attract * _nmf_weights(cosine, pairs, sigma)
    negatives = logits.masked_fill(positive, float("-inf"))  # VN x VM; self: -inf already
    has = torch.isfinite(negatives).any(1)  # VN: anchors with something to repel
    repel = torch.logsumexp(torch.where(has[:, None], negatives, 0.0), dim=1)  # finite grads
    per_anchor = torch.where(has, repel - attract.sum(1) / positive.sum(1), 0.0)
    return per_anchor.sum() / has.sum().clamp_min(1)


def _nmf_weights(cosine: Tensor, pairs: Tensor, sigma: float) -> Tensor:
    """DCLW's negative von Mises-Fisher weights 2 - exp(s / sigma) / mean(exp(pairs / sigma)) of
    every cosine s of ``cosine`` (any shape), the mean over ``pairs``, the cosines of all positive
    pairs of the global batch (any shape). In log space: no overflow for cosines <= max(pairs)."""
    log_mean = torch.logsumexp(pairs.flatten() / sigma, 0) - math.log(pairs.numel())
    return 2 - torch.exp(cosine / sigma - log_mean)


def contrastive_loss(z: Tensor, views: int, temperature: float, rank: int = 0, gather=None,
                     labels: Tensor | None = None, name: str = "ntxent",
                     sigma: float = 0.5) -> Tensor:
    """The loss of a training step on V views of N images (the mean over the V·N views).

    ``name`` ntxent: two views and no labels, `nt_xent` on the two halves, which is
    `multi_nt_xent` for V = 2 (a test proves them equal) written as the reference's
    two-view form: the official presets' step, bit for bit; otherwise `multi_nt_xent`.
    ``dcl`` / ``dclw``: `decoupled_loss` (``dclw``: weighted, with ``sigma``).

    Args:
        z: (V·N) x D projections, view-major (row v·N + i: view v of image i).
        views: V >= 2.
        temperature: T > 0.
        rank, gather: this process's rank and the gather across processes (None: one).
        labels: N class labels (SupCon positives), or None.
        name: ``ntxent``, ``dcl`` or ``dclw``.
        sigma: DCLW's sigma (``dclw`` only).
    """
    if name != "ntxent":
        return decoupled_loss(z, views, temperature, rank, gather, labels,
                              sigma=sigma if name == "dclw" else None)
    if views == 2 and labels is None:
        z1, z2 = z.chunk(2)
        return nt_xent(z1, z2, temperature, rank=rank, gather=gather)
    return multi_nt_xent(z, views, temperature, rank, gather, labels)
