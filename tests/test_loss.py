"""NT-Xent against loop-by-loop references (the paper's Algorithm 1; Khosla et al. eq. 2 for V
views) and known values."""

import math

import pytest
import torch
import torch.nn.functional as F

from simclr.train.loss import multi_nt_xent, nt_xent
from tests.helpers import second_rank_gather, two_rank_shards


def algorithm1(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """SimCLR Algorithm 1, literally: views interleaved as 2k-1, 2k; mean of l(2k-1,2k)+l(2k,2k-1)
    over 2N (:func:`algorithm1_images` over every image)."""
    return algorithm1_images(z1, z2, t, range(len(z1)))


@pytest.mark.parametrize("n,d,t", [(2, 3, 0.5), (5, 8, 0.1), (8, 16, 1.0), (3, 4, 0.07)])
def test_matches_algorithm1(n, d, t):
    g = torch.Generator().manual_seed(n * 100 + d)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64)
    z2 = torch.randn(n, d, generator=g, dtype=torch.float64)
    got = nt_xent(z1.float(), z2.float(), t).item()
    assert got == pytest.approx(algorithm1(z1, z2, t), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("n", [1, 4, 64])
def test_uniform_similarity_gives_log_2n_minus_1(n):
    z = torch.ones(n, 7)  # every pair has cosine similarity 1
    assert nt_xent(z, z.clone(), 0.5).item() == pytest.approx(math.log(2 * n - 1), rel=1e-6)


def test_symmetric_in_views():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)
    assert nt_xent(z1, z2, 0.2).item() == pytest.approx(nt_xent(z2, z1, 0.2).item(), rel=1e-6)


def test_scale_invariant_and_perfect_pairs_give_low_loss():
    g = torch.Generator().manual_seed(1)
    z = torch.nn.functional.normalize(torch.randn(32, 64, generator=g), dim=1)
    assert nt_xent(z, 3 * z, 0.5).item() == pytest.approx(nt_xent(z, z, 0.5).item(), rel=1e-5)
    # identical views at low temperature: the positive dominates, loss near 0
    assert nt_xent(z, z, 0.01).item() < 1e-3


def test_gradient_matches_autograd_of_reference():
    g = torch.Generator().manual_seed(2)
    z1 = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    nt_xent(z1, z2, 0.3).backward()
    eps, i, j = 1e-6, 1, 2
    base = z1.detach().clone()
    plus, minus = base.clone(), base.clone()
    plus[i, j] += eps
    minus[i, j] -= eps
    numeric = (algorithm1(plus, z2.detach(), 0.3) - algorithm1(minus, z2.detach(), 0.3)) / (2 * eps)
    assert z1.grad[i, j].item() == pytest.approx(numeric, rel=1e-3, abs=1e-6)


def test_gather_identity_is_one_process():
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    assert nt_xent(z1, z2, 0.5, gather=lambda t: t).item() == pytest.approx(
        nt_xent(z1, z2, 0.5).item(), rel=1e-6)


def algorithm1_images(z1: torch.Tensor, z2: torch.Tensor, t: float, images) -> float:
    """Algorithm 1's terms over the whole batch, averaged over the anchors of ``images`` only
    (both views of each): the loss one rank computes for its images of a global batch."""
    z = []
    for a, b in zip(z1, z2, strict=True):
        z += [a, b]

    def sim(u, v):
        return float(u @ v) / (math.sqrt(float(u @ u)) * math.sqrt(float(v @ v)))

    def ell(i, j):
        den = sum(math.exp(sim(z[i], z[k]) / t) for k in range(len(z)) if k != i)
        return -math.log(math.exp(sim(z[i], z[j]) / t) / den)

    return sum(ell(2 * k, 2 * k + 1) + ell(2 * k + 1, 2 * k) for k in images) / (2 * len(images))


def fake_gather(rank: int, local: list, others: list):
    """A stand-in for ``gather_with_grad`` on rank ``rank`` of 2: the tensor it is given (one
    of ``local``, L2-normalized, matched by value) with the other rank's rows for the same
    tensor (``others``, normalized) before (rank 1) or after (rank 0) it."""
    def gather(t):
        (i,) = [i for i, x in enumerate(local)
                if torch.allclose(t, F.normalize(x.to(t.dtype), dim=1), rtol=0, atol=1e-12)]
        other = F.normalize(others[i].to(t.dtype), dim=1)
        return torch.cat([t, other] if rank == 0 else [other, t])
    return gather


def test_gather_of_a_second_rank_gives_that_ranks_share_of_the_global_loss():
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(10, 8, generator=g), torch.randn(10, 8, generator=g)
    t, n = 0.5, 5
    a, b = (z1[:n], z2[:n]), (z1[n:], z2[n:])  # rank 0's and rank 1's images
    loss0 = nt_xent(*a, t, rank=0, gather=fake_gather(0, list(a), list(b)))
    loss1 = nt_xent(*b, t, rank=1, gather=fake_gather(1, list(b), list(a)))
    assert float(loss0) == pytest.approx(algorithm1_images(z1, z2, t, range(n)), rel=1e-5)
    assert float(loss1) == pytest.approx(algorithm1_images(z1, z2, t, range(n, 2 * n)),
                                         rel=1e-5)
    assert abs(float(loss0) - float(loss1)) > 1e-3  # the two ranks' shares differ
    # equal shards: the mean over ranks is the loss of the concatenated batch
    assert float(loss0 + loss1) / 2 == pytest.approx(float(nt_xent(z1, z2, t)), rel=1e-6)
    # without the other rank's rows (a gather ignored) rank 1's loss differs
    assert abs(float(nt_xent(*b, t)) - float(loss1)) > 1e-3


# ---------------------------------------------------------------- V views, several positives


def multi_reference(z: torch.Tensor, views: int, t: float, labels=None) -> float:
    """Khosla et al. 2020 eq. 2 (L_out), loop by loop: for every anchor i, the mean over its
    positives p of -log(exp(s_ip / t) / sum_{a != i} exp(s_ia / t)); the mean over anchors.
    Rows are view-major (row v*N + k is view v of image k)."""
    losses = multi_reference_anchors(z, views, t, labels)
    return sum(losses) / len(losses)


def multi_reference_anchors(z: torch.Tensor, views: int, t: float, labels=None) -> list:
    """``multi_reference``'s per-anchor terms, one per row of ``z``."""
    rows = [r.tolist() for r in z]
    total = len(rows)
    n = total // views
    group = [labels[k % n] if labels is not None else k % n for k in range(total)]

    def sim(u, v):
        dot = sum(a * b for a, b in zip(u, v, strict=True))
        return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))

    losses = []
    for i in range(total):
        den = sum(math.exp(sim(rows[i], rows[a]) / t) for a in range(total) if a != i)
        positives = [p for p in range(total) if p != i and group[p] == group[i]]
        losses.append(sum(-math.log(math.exp(sim(rows[i], rows[p]) / t) / den)
                          for p in positives) / len(positives))
    return losses


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("n,d,t", [(1, 3, 0.5), (5, 8, 0.1), (16, 4, 1.0), (7, 32, 0.07)])
def test_multi_view_with_two_views_is_nt_xent(n, d, t):
    z = randn(2 * n, d, seed=n)
    multi = multi_nt_xent(z, 2, t)
    assert abs(float(multi) - float(nt_xent(z[:n], z[n:], t))) < 1e-12
    assert abs(float(multi) - algorithm1(z[:n], z[n:], t)) < 1e-12


@pytest.mark.parametrize("views,n,t", [(3, 4, 0.5), (4, 3, 0.2), (6, 2, 1.0), (8, 1, 0.1)])
def test_multi_view_matches_the_loop_reference(views, n, t):
    z = randn(views * n, 5, seed=views)
    assert float(multi_nt_xent(z, views, t)) == pytest.approx(multi_reference(z, views, t),
                                                               rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("views,n", [(3, 1), (4, 8), (6, 5)])
def test_multi_view_uniform_similarity_gives_log_vn_minus_1(views, n):
    z = torch.ones(views * n, 3, dtype=torch.float64)
    assert float(multi_nt_xent(z, views, 0.5)) == pytest.approx(math.log(views * n - 1),
                                                                 rel=1e-12)


def test_multi_view_does_not_depend_on_the_order_of_views():
    views, n = 4, 5
    z = randn(views * n, 6, seed=1)
    blocks = list(z.split(n))
    shuffled = torch.cat([blocks[2], blocks[0], blocks[3], blocks[1]])
    assert float(multi_nt_xent(shuffled, views, 0.3)) == pytest.approx(
        float(multi_nt_xent(z, views, 0.3)), rel=1e-12)


def test_supervised_positives_come_from_labels():
    views, n = 3, 6
    z = randn(views * n, 4, seed=2)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    got = float(multi_nt_xent(z, views, 0.4, labels=labels))
    assert got == pytest.approx(multi_reference(z, views, 0.4, labels.tolist()), rel=1e-12)
    # labels that are all distinct give back the self-supervised loss
    assert float(multi_nt_xent(z, views, 0.4, labels=torch.arange(n))) == pytest.approx(
        float(multi_nt_xent(z, views, 0.4)), rel=1e-12)


def test_multi_view_gradient_matches_the_reference():
    views, n, t = 3, 3, 0.3
    z = randn(views * n, 4, seed=3).requires_grad_()
    multi_nt_xent(z, views, t).backward()
    eps = 1e-6
    for i, j in [(0, 1), (4, 0), (8, 3)]:
        plus, minus = z.detach().clone(), z.detach().clone()
        plus[i, j] += eps
        minus[i, j] -= eps
        numeric = (multi_reference(plus, views, t) - multi_reference(minus, views, t)) / (2 * eps)
        assert z.grad[i, j].item() == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_multi_view_gather_identity_is_one_process():
    z = randn(12, 8, seed=4)
    assert float(multi_nt_xent(z, 3, 0.5, gather=lambda t: t)) == pytest.approx(
        float(multi_nt_xent(z, 3, 0.5)), rel=1e-12)


def test_multi_view_gather_of_a_second_rank_gives_that_ranks_share_of_the_global_loss():
    views, n, t = 3, 4, 0.5
    z = randn(views * 2 * n, 8, seed=4)  # view-major global batch of 2 ranks x n images
    shard = two_rank_shards(z, views, n)

    def gather_on(r):
        return second_rank_gather(shard, r, views, n)

    loss = [multi_nt_xent(shard[r], views, t, rank=r, gather=gather_on(r)) for r in range(2)]
    # the per-anchor reference over the global batch, averaged over each rank's anchors
    full = multi_reference_anchors(z, views, t)
    for r in range(2):
        mine = [full[v * 2 * n + k] for v in range(views) for k in range(r * n, (r + 1) * n)]
        assert float(loss[r]) == pytest.approx(sum(mine) / len(mine), rel=1e-12)
    assert float(sum(loss)) / 2 == pytest.approx(float(multi_nt_xent(z, views, t)), rel=1e-12)


def test_multi_view_float32_and_bf16_inputs_compute_in_float32():
    z = randn(12, 8, seed=5).float()
    assert multi_nt_xent(z, 3, 0.5).dtype == torch.float32
    assert multi_nt_xent(z.bfloat16(), 3, 0.5).dtype == torch.float32
    # computed in float32 from the bf16 values, not in bf16 then cast
    zb = z.bfloat16()
    assert torch.equal(multi_nt_xent(zb, 3, 0.5), multi_nt_xent(zb.float(), 3, 0.5))
    z1, z2 = zb[:6], zb[6:]
    assert nt_xent(z1, z2, 0.5).dtype == torch.float32
    assert torch.equal(nt_xent(z1, z2, 0.5), nt_xent(z1.float(), z2.float(), 0.5))
    assert float(nt_xent(z1, z2, 0.5)) == pytest.approx(algorithm1(z1.double(), z2.double(), 0.5),
                                                        rel=1e-5)
    for dtype in (torch.float16, torch.float64):
        assert multi_nt_xent(z.to(dtype), 3, 0.5).dtype == torch.promote_types(dtype,
                                                                               torch.float32)
