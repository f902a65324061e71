"""Clustering metrics as pure functions: batched k-means, NMI, ARI and Hungarian accuracy.

``clustering_metrics`` is the ``kmeans`` protocol of ``simclr eval``: k-means on L2-normalized
frozen features with k = the number of classes, scored against the labels. NMI and ARI match
scikit-learn's definitions (tests check them against it).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from simclr.errors import SimCLRError
from simclr.evaluation.protocols import check_features


def _sq_dists(x: Tensor, sq: Tensor, centers: Tensor) -> Tensor:
    """Squared distances N x R x k of N x D points (squared norms ``sq``) to R x k x D centers."""
    r, k, d = centers.shape
    cross = x @ centers.reshape(r * k, d).T  # N x Rk
    return (sq[:, None] - 2 * cross + (centers * centers).sum(2).reshape(1, r * k)).view(-1, r, k)


def kmeans(feats: Tensor, k: int, n_init: int = 10, iters: int = 100, seed: int = 0) -> Tensor:
    """k-means (Lloyd's) on N x D features -> N cluster ids in [0, k), int64.

    ``n_init`` restarts run together as batched matmuls on the features' device: k-means++
    seeding, then Lloyd steps until no assignment changes (or ``iters``); an emptied cluster
    keeps its previous center. The restart with the lowest inertia (sum of squared distances)
    wins. Deterministic for a seed.
    """
    n = feats.shape[0]
    if not 1 <= k <= n:
        raise SimCLRError(f"k-means needs 1 <= k <= N, got k={k} for {n} points")
    x = feats.detach().float()
    device = x.device
    g = torch.Generator(device=device).manual_seed(seed)
    sq = (x * x).sum(1)  # N
    centers = torch.empty(n_init, k, x.shape[1], device=device)  # R x k x D
    first = torch.randint(n, (n_init,), generator=g, device=device)
    centers[:, 0] = x[first]
    closest = (sq[None] - 2 * x[first] @ x.T + sq[first][:, None]).clamp_min(0)  # R x N
    for j in range(1, k):  # k-means++: next center drawn with probability ~ squared distance
        pick = torch.multinomial(closest + 1e-12, 1, generator=g)[:, 0]  # R
        centers[:, j] = x[pick]
        dist = (sq[None] - 2 * x[pick] @ x.T + sq[pick][:, None]).clamp_min(0)
        closest = torch.minimum(closest, dist)
    assign = None
    for _ in range(iters):
        new = _sq_dists(x, sq, centers).argmin(2)  # N x R
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        onehot = F.one_hot(assign.T, k).float()  # R x N x k
        counts = onehot.sum(1)[..., None]  # R x k x 1
        sums = onehot.transpose(1, 2) @ x  # R x k x D
        centers = torch.where(counts > 0, sums / counts.clamp_min(1), centers)
    dist, assign = _sq_dists(x, sq, centers).min(2)  # N x R
    best = dist.double().sum(0).argmin()
    return assign[:, best].long()


def _contingency(labels_true, labels_pred) -> np.ndarray:
    """Counts classes x clusters (int64) of two labelings of the same N items (any int ids)."""
    t, p = (np.asarray(v.cpu() if isinstance(v, Tensor) else v) for v in (labels_true, labels_pred))
    if t.ndim != 1 or t.shape != p.shape:
        raise SimCLRError(f"labelings must be two 1-D arrays of equal length, got shapes "
                          f"{t.shape} and {p.shape}")
    _, ti = np.unique(t, return_inverse=True)
    _, pi = np.unique(p, return_inverse=True)
    nt, npred = int(ti.max(initial=-1)) + 1, int(pi.max(initial=-1)) + 1
    return np.bincount(ti * npred + pi, minlength=nt * npred).reshape(nt, npred)


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi(labels_true, labels_pred) -> float:
    """Normalized mutual information, MI / mean(H(true), H(pred)) (arithmetic mean, as
    scikit-learn's default); 1.0 when both labelings are a single cluster."""
    c = _contingency(labels_true, labels_pred)
    if c.shape[0] == c.shape[1] == 1 or c.size == 0:
        return 1.0
    n = c.sum()
    a, b = c.sum(1), c.sum(0)  # class sizes, cluster sizes
    i, j = np.nonzero(c)
    nij = c[i, j].astype(np.float64)
    mi = float((nij / n * (np.log(nij * n) - np.log(a[i] * 1.0 * b[j]))).sum())
    if mi <= 0.0:
        return 0.0
    return min(1.0, mi / ((_entropy(a) + _entropy(b)) / 2))  # 1 + 1e-16 rounding -> 1


def ari(labels_true, labels_pred) -> float:
    """Adjusted Rand index (Hubert & Arabie): pair-counting agreement corrected for chance;
    1.0 for identical partitions (up to renaming)."""
    c = _contingency(labels_true, labels_pred)
    n, sum_sq = int(c.sum()), int((c * c).sum())
    # ordered-pair confusion counts; Python ints so the products below cannot overflow
    same_both = sum_sq - n
    same_pred_only = int((c.sum(0) ** 2).sum()) - sum_sq
    same_true_only = int((c.sum(1) ** 2).sum()) - sum_sq
    diff_both = n * n - same_pred_only - same_true_only - sum_sq
    if same_pred_only == 0 and same_true_only == 0:
        return 1.0
    num = 2 * (same_both * diff_both - same_true_only * same_pred_only)
    den = ((same_both + same_true_only) * (same_true_only + diff_both)
           + (same_both + same_pred_only) * (same_pred_only + diff_both))
    return num / den


def cluster_accuracy(labels_true, labels_pred) -> float:
    """Accuracy under the best one-to-one matching of clusters to classes (Hungarian, on the
    contingency table). With more clusters than classes the unmatched clusters count as
    errors; with fewer, the unmatched classes do."""
    from scipy.optimize import linear_sum_assignment

    c = _contingency(labels_true, labels_pred)
    if c.size == 0:
        return 0.0
    rows, cols = linear_sum_assignment(c, maximize=True)
    return float(c[rows, cols].sum() / c.sum())


def clustering_metrics(feats: Tensor, labels: Tensor, k: int | None = None, n_init: int = 10,
                       seed: int = 0) -> dict:
    """k-means on L2-normalized features (k = number of distinct labels by default), scored
    against the labels.

    Returns:
        ``{"nmi", "ari", "accuracy" (Hungarian), "k"}``.
    """
    check_features(feats, labels, "clustering")
    k = k or int(torch.unique(labels).numel())
    pred = kmeans(F.normalize(feats.float(), dim=1), k, n_init=n_init, seed=seed)
    return {"nmi": nmi(labels, pred), "ari": ari(labels, pred),
            "accuracy": cluster_accuracy(labels, pred), "k": k}
