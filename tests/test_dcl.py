"""Decoupled contrastive loss (Yeh et al. 2022, DCL and DCLW) against a loop-by-loop reference of
eq. 6, known values, a simulated second rank, and lightly's DCLLoss / DCLWLoss."""

import math

import pytest
import torch
import torch.nn.functional as F

from simclr.train.loss import _nmf_weights, contrastive_loss, decoupled_loss
from tests.helpers import cli, one_line_error, second_rank_gather, two_rank_shards


def reference_anchors(z: torch.Tensor, views: int, t: float, labels=None, sigma=None,
                      split: bool = False) -> list:
    """Eq. 6 anchor by anchor over the whole batch, on float64 scalars (differentiable): for
    anchor i with positives P (other views of its image, or of its label) and negatives N (every
    other view), mean_{p in P} w_ip * (-s_ip / t) + log sum_{k in N} exp(s_ik / t). DCLW
    (``sigma``): w_ip = 2 - exp(s_ip / sigma) / E, E the mean of exp(s / sigma) over every
    ordered pair of different views of one image, a constant. ``split``: lightly <= 1.5.20's
    form, one log per set of negatives (the anchor's own view v and the others) instead of one
    log over all. Rows are view-major (row v*N + k is view v of image k)."""
    total = len(z)
    n = total // views
    u = [row / torch.sqrt((row * row).sum()) for row in z]
    image = [k % n for k in range(total)]
    group = [labels[k] if labels is not None else k for k in image]

    def sim(i, j):
        return (u[i] * u[j]).sum()

    if sigma is not None:
        pairs = [(i, p) for i in range(total) for p in range(total)
                 if p != i and image[p] == image[i]]
        mean = sum(math.exp(sim(i, p).item() / sigma) for i, p in pairs) / len(pairs)
    losses = []
    for i in range(total):
        pos = [p for p in range(total) if p != i and group[p] == group[i]]
        neg = [k for k in range(total) if k != i and k not in pos]
        sets = [[k for k in neg if (k // n == i // n) == same] for same in (True, False)]
        w = [1.0 if sigma is None else 2 - math.exp(sim(i, p).item() / sigma) / mean
             for p in pos]
        attract = sum(wp * sim(i, p) / t for wp, p in zip(w, pos, strict=True)) / len(pos)
        repel = sum(torch.log(sum(torch.exp(sim(i, k) / t) for k in s))
                    for s in (sets if split else [neg]))
        losses.append(repel - attract)
    return losses


def reference(z, views, t, labels=None, sigma=None, split=False):
    losses = reference_anchors(z, views, t, labels, sigma, split)
    return sum(losses) / len(losses)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


CASES = [  # views, images, temperature, labels, sigma
    (2, 5, 0.1, None, None), (2, 3, 1.0, None, None), (3, 4, 0.2, None, None),
    (4, 3, 0.5, None, None), (3, 6, 0.3, [0, 1, 0, 2, 1, 0], None),
    (2, 5, 0.1, None, 0.5), (3, 4, 0.2, None, 0.3), (4, 2, 0.7, None, 1.0)]


@pytest.mark.parametrize("views,n,t,labels,sigma", CASES)
def test_loss_and_gradient_match_the_loop_reference(views, n, t, labels, sigma):
    z = randn(views * n, 5, seed=views * 10 + n).requires_grad_()
    lab = torch.tensor(labels) if labels is not None else None
    got = decoupled_loss(z, views, t, labels=lab, sigma=sigma)
    want = reference(z, views, t, labels, sigma)
    assert got.item() == pytest.approx(want.item(), rel=1e-12, abs=1e-12)
    (g_got,) = torch.autograd.grad(got, z)
    (g_want,) = torch.autograd.grad(want, z)
    torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sigma", [None, 0.5])
@pytest.mark.parametrize("views,n", [(2, 2), (2, 64), (3, 5), (6, 4)])
def test_uniform_similarity_gives_log_v_times_m_minus_1(views, n, sigma):
    z = torch.ones(views * n, 3, dtype=torch.float64)  # every cosine 1: every DCLW weight 1
    want = math.log(views * (n - 1))
    assert float(decoupled_loss(z, views, 0.3, sigma=sigma)) == pytest.approx(want, rel=1e-12)
    assert float(decoupled_loss(z.float(), views, 0.3, sigma=sigma)) == pytest.approx(want,
                                                                                     rel=1e-6)


@pytest.mark.parametrize("sigma", [None, 0.5])
@pytest.mark.parametrize("views", [2, 3])
def test_gather_of_a_second_rank_gives_that_ranks_share_of_the_global_loss(views, sigma):
    n, t = 4, 0.4
    z = randn(views * 2 * n, 6, seed=views)  # view-major global batch of 2 ranks x n images
    shard = two_rank_shards(z, views, n)

    def gather_on(r):
        return second_rank_gather(shard, r, views, n)

    loss = [decoupled_loss(shard[r], views, t, rank=r, gather=gather_on(r), sigma=sigma)
            for r in range(2)]
    # the per-anchor reference over the global batch (DCLW: its weights' mean too), averaged
    # over each rank's anchors
    full = reference_anchors(z, views, t, sigma=sigma)
    for r in range(2):
        mine = [full[v * 2 * n + k] for v in range(views) for k in range(r * n, (r + 1) * n)]
        assert float(loss[r]) == pytest.approx(float(sum(mine) / len(mine)), rel=1e-12)
    assert abs(float(loss[0]) - float(loss[1])) > 1e-3  # the two ranks' shares differ
    one = decoupled_loss(z, views, t, sigma=sigma)
    assert float(sum(loss)) / 2 == pytest.approx(float(one), rel=1e-12)
    # without the other rank's rows rank 1's loss differs
    assert abs(float(decoupled_loss(shard[1], views, t, sigma=sigma)) - float(loss[1])) > 1e-3


def test_supervised_positives_come_from_labels():
    views, n = 3, 6
    z = randn(views * n, 4, seed=2)
    # labels that are all distinct give back the self-supervised loss
    assert float(decoupled_loss(z, views, 0.4, labels=torch.arange(n))) == pytest.approx(
        float(decoupled_loss(z, views, 0.4)), rel=1e-12)
    with pytest.raises(ValueError, match="no labels"):
        decoupled_loss(z, views, 0.4, labels=torch.arange(n), sigma=0.5)


def test_anchors_with_nothing_to_repel_are_left_out():
    """With labels, an anchor whose label every image of the batch has has no negatives: it is
    left out of the mean (not -inf, not nan), the others keep the reference's losses."""
    z = randn(3 * 4, 5, seed=7).requires_grad_()
    labels = torch.tensor([0, 0, 0, 0])  # nobody to repel: 0, with zero (finite) gradients
    loss = decoupled_loss(z, 3, 0.4, labels=labels)
    (grad,) = torch.autograd.grad(loss, z)
    assert loss.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))
    labels = [0, 0, 1, 2]  # images 2 and 3 each alone in their class: they still repel 0, 1
    per_anchor = reference_anchors(z.detach(), 3, 0.4, labels)
    want = sum(per_anchor) / len(per_anchor)
    got = decoupled_loss(z, 3, 0.4, labels=torch.tensor(labels))
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    assert torch.isfinite(torch.autograd.grad(got, z)[0]).all()


def test_float32_and_bf16_inputs_compute_in_float32():
    z = randn(12, 8, seed=5).float()
    for sigma in (None, 0.5):
        assert decoupled_loss(z, 3, 0.5, sigma=sigma).dtype == torch.float32
        zb = z.bfloat16()  # computed in float32 from the bf16 values, not in bf16 then cast
        assert torch.equal(decoupled_loss(zb, 3, 0.5, sigma=sigma),
                           decoupled_loss(zb.float(), 3, 0.5, sigma=sigma))
        for dtype in (torch.float16, torch.float64):
            assert decoupled_loss(z.to(dtype), 3, 0.5, sigma=sigma).dtype == \
                torch.promote_types(dtype, torch.float32)


def test_small_sigma_stays_finite_in_float32():
    """exp(s / sigma) overflows float32 for s / sigma > 88; the weights are formed in log space,
    finite also off the positives, where they multiply 0 (anti-aligned views: E = e^{-1/sigma})."""
    z = randn(3 * 8, 16, seed=6)
    anti = torch.cat([z[:8], -z[:8]])  # V = 2, every positive cosine -1
    for x, views in ((z, 3), (anti, 2)):
        xf = x.float().requires_grad_()
        loss = decoupled_loss(xf, views, 0.2, sigma=0.005)
        (grad,) = torch.autograd.grad(loss, xf)
        assert torch.isfinite(grad).all()
        want = decoupled_loss(x, views, 0.2, sigma=0.005).item()
        assert loss.item() == pytest.approx(want, rel=1e-4)


def test_contrastive_loss_dispatches_dcl_and_dclw():
    z = randn(2 * 6, 5, seed=7)
    assert torch.equal(contrastive_loss(z, 2, 0.2, name="dcl"), decoupled_loss(z, 2, 0.2))
    assert torch.equal(contrastive_loss(z, 2, 0.2, name="dclw", sigma=0.3),
                       decoupled_loss(z, 2, 0.2, sigma=0.3))


# ------------------------------------------------------------------------------ lightly


@pytest.mark.filterwarnings("ignore:To copy construct from a tensor:UserWarning")  # lightly's
@pytest.mark.parametrize("n,t,sigma", [(6, 0.1, None), (16, 0.5, None), (6, 0.1, 0.5),
                                       (16, 0.2, 1.0)])
def test_agrees_with_lightly(n, t, sigma):
    """lightly 1.6.0 implements eq. 6 with ONE logsumexp over both sets of negatives
    (``cat([sim_00, sim_01])``, since lightly 1.5.21, PR #1827), the form ``decoupled_loss``
    follows; lightly <= 1.5.20 summed two logsumexps, one per set (the reference's ``split``),
    a different loss. Its DCLW weights, ``2 - N softmax(s / sigma)`` over the N images of the
    (local) batch, detached, are ours for V = 2 on one process (with several processes lightly
    averages over the local batch, we over the global one)."""
    loss_mod = pytest.importorskip(
        "lightly.loss.dcl_loss", reason="lightly is not installed (it is only a cross-check)")
    z = randn(2 * n, 8, seed=n)
    z1, z2 = z[:n], z[n:]
    theirs = (loss_mod.DCLLoss(temperature=t) if sigma is None
              else loss_mod.DCLWLoss(temperature=t, sigma=sigma))(z1, z2)
    ours = decoupled_loss(z, 2, t, sigma=sigma)
    assert float(theirs) == pytest.approx(float(ours), rel=1e-12)
    assert float(ours) == pytest.approx(float(reference(z, 2, t, sigma=sigma)), rel=1e-12)
    # the old two-log form is measurably another loss: log(a) + log(b) vs log(a + b)
    assert abs(float(reference(z, 2, t, sigma=sigma, split=True)) - float(theirs)) > 0.5
    if sigma is not None:
        s = torch.einsum("nd,nd->n", F.normalize(z1, dim=1), F.normalize(z2, dim=1))
        with pytest.warns(UserWarning):  # lightly copies with torch.tensor(tensor)
            want = loss_mod.negative_mises_fisher_weights(
                F.normalize(z1, dim=1), F.normalize(z2, dim=1), sigma=sigma)
        torch.testing.assert_close(_nmf_weights(s, torch.cat([s, s]), sigma), want,
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("args, fragment", [
    (["--loss.name=dclw", "--loss.dclw_sigma=0"], "loss.dclw_sigma must be > 0"),
    (["--loss.name=dclw", "--loss.supervised=true"],
     "loss.name=dclw weights the two views of one image"),
    (["--loss.name=dcll"], "loss.name"),
], ids=["sigma-0", "dclw-supervised", "unknown-name"])
def test_impossible_loss_settings_are_one_line_and_write_nothing(mnist_root, tmp_path, args,
                                                                 fragment):
    out = tmp_path / "run"
    proc = cli("pretrain", "--run-dir", out, "--data.name=mnist", f"--data.root={mnist_root}",
               "--data.download=false", "--model.width=0.0625", *args)
    one_line_error(proc, fragment)
    assert not out.exists()
