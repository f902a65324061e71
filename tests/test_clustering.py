"""Clustering metrics: Hungarian accuracy vs brute force, NMI / ARI vs scikit-learn, k-means
vs scikit-learn's inertia and on separable blobs."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

import simclr.evaluation.clustering as K
from simclr.errors import SimCLRError
from tests.helpers import blobs


def brute_force_accuracy(true, pred):
    classes, clusters = np.unique(true), np.unique(pred)
    best = 0
    small, large = (clusters, classes) if len(clusters) <= len(classes) else (classes, clusters)
    for image in itertools.permutations(large, len(small)):
        m = dict(zip(small, image, strict=True))
        if len(clusters) <= len(classes):
            best = max(best, sum(m[p] == t for t, p in zip(true, pred, strict=True)))
        else:
            best = max(best, sum(m[t] == p for t, p in zip(true, pred, strict=True)))
    return best / len(true)


def test_cluster_accuracy_hand_made_permuted_and_rectangular():
    true = np.array([0, 0, 1, 1, 2, 2])
    assert K.cluster_accuracy(true, np.array([0, 0, 0, 1, 1, 1])) == pytest.approx(4 / 6)
    assert K.cluster_accuracy(np.array([0, 0, 0, 1, 1, 1]),
                              np.array([0, 0, 1, 2, 2, 2])) == pytest.approx(5 / 6)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 200)
    assert K.cluster_accuracy(labels, rng.permutation(6)[labels] + 10) == 1.0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        t, p = rng.integers(0, 4, 40), rng.integers(0, [3, 4, 6][seed % 3], 40)
        assert K.cluster_accuracy(t, p) == pytest.approx(brute_force_accuracy(t, p))


@pytest.mark.parametrize("seed", range(8))
def test_nmi_and_ari_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 400))
    t = rng.integers(0, int(rng.integers(1, 10)), n)
    p = rng.integers(0, int(rng.integers(1, 12)), n) if seed % 2 else (t + rng.integers(0, 2, n))
    assert abs(K.nmi(t, p) - normalized_mutual_info_score(t, p)) < 1e-10
    assert abs(K.ari(t, p) - adjusted_rand_score(t, p)) < 1e-10
    assert abs(K.nmi(torch.from_numpy(t), torch.from_numpy(p)) - K.nmi(t, p)) < 1e-15


@pytest.mark.parametrize("t,p", [([0, 0, 0], [1, 1, 1]), ([0, 1, 2], [2, 0, 1]),
                                 ([0, 0, 1, 1], [0, 0, 0, 0]), ([0, 1, 2, 3], [0, 0, 1, 1])])
def test_nmi_and_ari_edge_cases_match_sklearn(t, p):
    assert K.nmi(t, p) == pytest.approx(normalized_mutual_info_score(t, p), abs=1e-12)
    assert K.ari(t, p) == pytest.approx(adjusted_rand_score(t, p), abs=1e-12)


def test_kmeans_recovers_blobs_and_matches_sklearn_inertia():
    from sklearn.cluster import KMeans

    x, y = blobs(600, 5, 16, spread=3.0, seed=7)
    m = K.clustering_metrics(x, y, seed=0)
    assert m == {"nmi": 1.0, "ari": 1.0, "accuracy": 1.0, "k": 5}  # nmi clipped at exactly 1
    x, _ = blobs(800, 8, 12, spread=0.6, seed=8)  # overlapping: restarts matter
    labels = K.kmeans(x, 8, n_init=10, seed=3)
    assert torch.equal(labels, K.kmeans(x, 8, n_init=10, seed=3))
    centers = torch.stack([x[labels == c].mean(0) for c in range(8)])
    inertia = ((x - centers[labels]) ** 2).sum().item()
    ref = KMeans(8, n_init=10, random_state=0).fit(x.numpy()).inertia_
    assert inertia <= ref * 1.01


def test_kmeans_more_clusters_than_classes():
    x, y = blobs(300, 3, 8, spread=3.0, seed=9)
    m = K.clustering_metrics(x, y, k=6)
    assert m["k"] == 6 and 0.3 <= m["accuracy"] <= 1.0
    # the metric is k-means on L2-normalized features scored against the labels; recompute it
    # independently: brute-force matching (unmatched clusters count as errors) and scikit-learn
    pred = K.kmeans(F.normalize(x, dim=1), 6, n_init=10, seed=0)
    assert torch.equal(pred, K.kmeans(F.normalize(x, dim=1), 6, n_init=10, seed=0))
    assert len(torch.unique(pred)) == 6  # more clusters than classes: 3 of them unmatched
    t, p = y.numpy(), pred.numpy()
    assert m["accuracy"] == pytest.approx(brute_force_accuracy(t, p), abs=1e-12)
    assert m["nmi"] == pytest.approx(normalized_mutual_info_score(t, p), abs=1e-10)
    assert m["ari"] == pytest.approx(adjusted_rand_score(t, p), abs=1e-10)
    with pytest.raises(SimCLRError, match="k-means needs"):
        K.kmeans(x[:4], 5)
