"""NT-Xent against a loop-by-loop reference of the paper's Algorithm 1 and known values."""

import math

import pytest
import torch

from simclr.loss import nt_xent


def algorithm1(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """SimCLR Algorithm 1, literally: views interleaved as 2k-1, 2k; mean of l(2k-1,2k)+l(2k,2k-1)
    over 2N."""
    z = []
    for a, b in zip(z1, z2, strict=True):
        z += [a, b]

    def sim(u, v):
        return float(u @ v) / (math.sqrt(float(u @ u)) * math.sqrt(float(v @ v)))

    def ell(i, j):
        num = math.exp(sim(z[i], z[j]) / t)
        den = sum(math.exp(sim(z[i], z[k]) / t) for k in range(len(z)) if k != i)
        return -math.log(num / den)

    n = len(z1)
    return sum(ell(2 * k, 2 * k + 1) + ell(2 * k + 1, 2 * k) for k in range(n)) / (2 * n)


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
