"""Batched augmentations vs slow per-pixel references (colorsys, numpy) and exact identities."""

import colorsys

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from simclr.augment import ops as A
from simclr.config import Augment

MEAN3, STD3 = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def stats(c: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return (MEAN3, STD3) if c == 3 else ((0.3,), (0.3,))


def images(n: int, c: int, side: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, side, side), generator=gen(seed), dtype=torch.uint8)


# ---------------------------------------------------------------- recipe


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("side", [28, 32, 96])
def test_shapes_dtype_range(c, side):
    x = images(6, c, side)
    mean, std = stats(c)
    cfg = Augment(blur_p=0.5)
    v = A.simclr_augment(x, cfg, mean, std, gen())
    assert v.shape == x.shape and v.dtype == torch.float32 and torch.isfinite(v).all()
    raw = A.denormalize(v, mean, std)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    small = A.simclr_augment(x, cfg, mean, std, gen(), size=20)
    assert small.shape == (6, c, 20, 20)
    v1, v2 = A.two_views(x, cfg, mean, std, gen())
    assert v1.shape == v2.shape == x.shape and not torch.equal(v1, v2)


def test_seed_determinism_and_two_views_is_one_call():
    x, cfg = images(8, 3, 32), Augment(blur_p=1.0)
    a = A.two_views(x, cfg, MEAN3, STD3, gen(1))
    b = A.two_views(x, cfg, MEAN3, STD3, gen(1))
    c = A.two_views(x, cfg, MEAN3, STD3, gen(2))
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    both = A.simclr_augment(x.repeat(2, 1, 1, 1), cfg, MEAN3, STD3, gen(1))
    assert torch.equal(torch.cat(a), both)


def test_samples_get_independent_parameters():
    x = images(1, 3, 32).expand(16, -1, -1, -1)  # 16 copies of one image
    v = A.simclr_augment(x, Augment(), MEAN3, STD3, gen())
    flat = v.flatten(1)
    assert (torch.cdist(flat, flat) + torch.eye(16) > 1e-3).all()


def test_float32_under_autocast():
    x = images(4, 3, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v = A.simclr_augment(x, Augment(blur_p=1.0), MEAN3, STD3, gen())
    assert v.dtype == torch.float32
    assert torch.equal(v, A.simclr_augment(x, Augment(blur_p=1.0), MEAN3, STD3, gen()))


def test_blur_probability_default_follows_reference():
    assert A.blur_probability(Augment(), 32) == 0.0
    assert A.blur_probability(Augment(), 28) == 0.0
    assert A.blur_probability(Augment(), 96) == 0.5
    assert A.blur_probability(Augment(blur_p=0.3), 32) == 0.3


def test_all_off_recipe_is_normalize_only():
    cfg = Augment(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0,
                  gray_p=0.0, blur_p=0.0)
    x = images(4, 3, 32)
    v = A.simclr_augment(x, cfg, MEAN3, STD3, gen())
    torch.testing.assert_close(v, A.normalize(x.float() / 255, MEAN3, STD3), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- p = 0 and p = 1


def test_p0_is_exact_identity():
    x = torch.rand(5, 3, 40, 40, generator=gen())
    assert torch.equal(A.random_flip(x, 0.0, gen()), x)
    assert torch.equal(A.color_jitter(x, 1.0, 0.0, gen()), x)
    assert torch.equal(A.random_grayscale(x, 0.0, gen()), x)
    assert torch.equal(A.gaussian_blur(x, 0.0, (0.1, 2.0), gen()), x)
    # the per-sample machinery itself (not only the p <= 0 shortcut) leaves samples untouched
    identity = torch.tensor([1.0, 1.0, 1.0, 0.0]).expand(5, 4)
    order = torch.rand(5, 4, generator=gen()).argsort(1)
    for by_index in (True, False):
        assert torch.equal(A._jitter(x, identity, order, by_index=by_index), x)
        none = torch.zeros(5, dtype=torch.bool)
        assert torch.equal(A._on_samples(A._blur, x, none, torch.rand(5, 5), by_index=by_index), x)


@pytest.mark.parametrize("hw", [(32, 32), (24, 40)])
def test_full_crop_is_identity(hw):
    x = torch.rand(3, 3, *hw, generator=gen())
    y = A.random_resized_crop(x, hw, (1.0, 1.0), (1.0, 1.0), gen())
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


def test_flip():
    x = torch.rand(4, 3, 8, 8, generator=gen())
    assert torch.equal(A.random_flip(x, 1.0, gen()), x.flip(-1))
    half = A.random_flip(x, 0.5, gen(3))
    flipped = [torch.equal(h, f) for h, f in zip(half, x.flip(-1), strict=True)]
    kept = [torch.equal(h, o) for h, o in zip(half, x, strict=True)]
    assert all(a or b for a, b in zip(flipped, kept, strict=True))
    # the flip fused into the crop equals a flip after the crop
    crop = A.random_resized_crop(x, 8, (0.3, 1.0), (0.75, 4 / 3), gen(5))
    fused = A.random_resized_crop(x, 8, (0.3, 1.0), (0.75, 4 / 3), gen(5), flip_p=1.0)
    torch.testing.assert_close(fused, crop.flip(-1), atol=1e-5, rtol=0)


def test_grayscale_is_luma():
    x = torch.rand(4, 3, 6, 6, generator=gen())
    y = A.random_grayscale(x, 1.0, gen())
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    for ch in range(3):
        torch.testing.assert_close(y[:, ch], luma)
    one = torch.rand(4, 1, 6, 6)
    assert torch.equal(A.random_grayscale(one, 1.0, gen()), one)


# ---------------------------------------------------------------- colour jitter math


def ref_jitter(img: np.ndarray, factors, order) -> np.ndarray:
    """One image (3 x H x W), ops applied one by one as the reference, hue through colorsys."""
    x = img.astype(np.float64)
    for op in order:
        f = factors[op]
        if op == 0:
            x = x * f
        elif op == 1:  # tf.image.adjust_contrast
            m = x.mean(axis=(1, 2), keepdims=True)
            x = (x - m) * f + m
        elif op == 2:
            gray = (np.array(A.LUMA)[:, None, None] * x).sum(0, keepdims=True)
            x = (x - gray) * f + gray
        elif f != 0:  # tf.image.adjust_hue
            out = np.empty_like(x)
            for i in range(x.shape[1]):
                for j in range(x.shape[2]):
                    h, s, v = colorsys.rgb_to_hsv(*x[:, i, j])
                    out[:, i, j] = colorsys.hsv_to_rgb((h + f) % 1.0, s, v)
            x = out
        x = np.clip(x, 0, 1)
    return x


@pytest.mark.parametrize("by_index", [True, False])
def test_jitter_matches_sequential_reference(by_index):
    n = 6
    x = torch.rand(n, 3, 5, 7, generator=gen())
    factors = torch.tensor([[1.4, 0.6, 1.5, 0.1], [0.5, 1.7, 0.2, -0.15], [1.0, 1.0, 1.0, 0.3],
                            [1.8, 1.8, 1.8, -0.4], [0.2, 0.3, 0.0, 0.05], [1.0, 1.0, 1.0, 0.0]])
    order = torch.rand(n, 4, generator=gen(1)).argsort(1)
    y = A._jitter(x, factors, order, by_index=by_index)
    for i in range(n):
        ref = ref_jitter(x[i].numpy(), factors[i].tolist(), order[i].tolist())
        np.testing.assert_allclose(y[i].numpy(), ref, atol=2e-5)


def test_brightness_only_is_a_clipped_product():
    x = torch.rand(64, 3, 8, 8, generator=gen()) * 0.5  # no clipping below factor 2
    y = A.color_jitter(x, 0.0, 1.0, gen(), brightness=0.5)
    f = (y / x).flatten(1)
    torch.testing.assert_close(f, f[:, :1].expand_as(f))  # one factor per sample
    assert f.min() >= 0.5 and f.max() <= 1.5 and f[:, 0].std() > 0.1
    z = A.color_jitter(x * 2, 0.0, 1.0, gen(), brightness=0.5)  # same draws
    torch.testing.assert_close(z, (x * 2 * f[:, :1].view(-1, 1, 1, 1)).clamp(0, 1))


def test_jitter_probability_and_one_channel():
    x = torch.rand(400, 3, 4, 4, generator=gen())
    y = A.color_jitter(x, 0.5, 0.3, gen())
    changed = (y != x).flatten(1).any(1).float().mean()
    assert 0.2 < changed < 0.4
    one = torch.rand(8, 1, 6, 6, generator=gen())
    assert torch.equal(A.color_jitter(one, 0.0, 1.0, gen(), saturation=0.9, hue=0.4), one)
    assert not torch.equal(A.color_jitter(one, 0.0, 1.0, gen(), contrast=0.9), one)


def test_hue_shift_zero_and_hsv_round_trip():
    x = torch.rand(8, 3, 16, 16, generator=gen())
    x[0] = 0.5  # gray: zero chroma
    torch.testing.assert_close(A.adjust_hue(x, torch.zeros(8)), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(A.hsv_to_rgb(A.rgb_to_hsv(x)), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(A.adjust_hue(x, torch.ones(8)), x, atol=1e-5, rtol=0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 1, width=32), min_size=3, max_size=3), st.floats(-1, 1, width=32))
@example([0.0, 0.0, 1.1754943508222875e-38], 0.0)  # found by CI: tiny V once gave S ~ 1e-8
@example([1e-38, 0.0, 5e-39], 0.0)
def test_hsv_matches_colorsys(rgb, shift):
    x = torch.tensor(rgb).view(1, 3, 1, 1)
    h, s, v = colorsys.rgb_to_hsv(*rgb)
    hsv = A.rgb_to_hsv(x).flatten().tolist()
    if s > 1e-6:  # hue is arbitrary for grays
        assert min(abs(hsv[0] - h), 1 - abs(hsv[0] - h)) < 1e-5
    assert hsv[1:] == pytest.approx([s, v], abs=1e-5)
    ref = colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
    got = A.adjust_hue(x, torch.tensor([shift])).flatten().tolist()
    assert got == pytest.approx(list(ref), abs=1e-5)


# ---------------------------------------------------------------- blur


def ref_blur(img: np.ndarray, sigma: float, r: int) -> np.ndarray:
    """Direct 2-D convolution with the outer-product Gaussian, reflect padding."""
    t = np.arange(-r, r + 1)
    k1 = np.exp(-(t**2) / (2 * sigma**2))
    k2 = np.outer(k1, k1) / k1.sum() ** 2
    pad = np.pad(img, ((0, 0), (r, r), (r, r)), mode="reflect")
    out = np.zeros_like(img, dtype=np.float64)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out += k2[dy, dx] * pad[:, dy:dy + img.shape[1], dx:dx + img.shape[2]]
    return out


@pytest.mark.parametrize("by_index", [True, False])
def test_blur_matches_reference(by_index):
    x = torch.rand(3, 3, 96, 50, generator=gen())
    sigma = 1.3
    y = A.gaussian_blur(x, 1.0, (sigma, sigma), gen())
    r = 4  # reference: kernel_size = 96 // 10 = 9 -> radius 4
    for i in range(3):
        np.testing.assert_allclose(y[i].numpy(), ref_blur(x[i].numpy(), sigma, r), atol=1e-5)
    t = torch.arange(-r, r + 1.0)
    k = torch.exp(-(t**2) / (2 * sigma**2)).expand(3, -1)
    sel = torch.tensor([True, False, True])
    z = A._on_samples(A._blur, x, sel, k / k.sum(1, keepdim=True), by_index=by_index)
    torch.testing.assert_close(z[sel], y[sel], atol=1e-6, rtol=0)
    assert torch.equal(z[1], x[1])


def test_blur_tiny_sigma_and_flat_image():
    x = torch.rand(4, 3, 64, 64, generator=gen())
    torch.testing.assert_close(A.gaussian_blur(x, 1.0, (1e-3, 1e-3), gen()), x)
    flat = torch.full((4, 1, 64, 64), 0.37)
    torch.testing.assert_close(A.gaussian_blur(flat, 1.0, (0.1, 2.0), gen()), flat)
    small = torch.rand(2, 3, 19, 19)  # kernel side 19 // 10 = 1 -> radius 0: no blur
    assert torch.equal(A.gaussian_blur(small, 1.0, (0.1, 2.0), gen()), small)


# ---------------------------------------------------------------- crop geometry


def recovered_boxes(out: torch.Tensor, s: int) -> tuple[torch.Tensor, ...]:
    """(x0, y0, w, h) from a crop of the coordinate image (pixel j holds j + 0.5)."""
    gx, gy = out[:, 0, 0, :], out[:, 1, :, 0]
    w = (gx[:, -1] - gx[:, 0]) * s / (s - 1)
    h = (gy[:, -1] - gy[:, 0]) * s / (s - 1)
    return gx[:, 0] - w / (2 * s), gy[:, 0] - h / (2 * s), w, h


def test_crop_area_aspect_and_bounds():
    n, side, s, scale, ratio = 4000, 256, 16, (0.08, 1.0), (3 / 4, 4 / 3)
    ramp = torch.arange(side, dtype=torch.float32) + 0.5
    coords = torch.stack([ramp.expand(side, side), ramp[:, None].expand(side, side)])
    out = A.random_resized_crop(coords.expand(n, -1, -1, -1), s, scale, ratio, gen())
    x0, y0, w, h = recovered_boxes(out, s)
    area, aspect = w * h / side**2, w / h
    tol = 1e-3
    assert area.min() >= scale[0] - tol and area.max() <= scale[1] + tol
    assert aspect.min() >= ratio[0] - tol and aspect.max() <= ratio[1] + tol
    assert x0.min() >= -tol and y0.min() >= -tol
    assert (x0 + w).max() <= side + tol and (y0 + h).max() <= side + tol
    assert area.min() < 0.1 and area.max() > 0.95  # the whole range is used
    assert abs(torch.log(aspect).mean()) < 0.02  # log-uniform aspect is symmetric
    assert 0.3 < (x0 / (side - w)).mean() < 0.7  # positions spread over the free room
    # the fused flip mirrors the box: x runs backwards, same boxes
    flip = A.random_resized_crop(coords.expand(8, -1, -1, -1), s, scale, ratio, gen(), 1.0)
    assert (flip[:, 0, 0, -1] < flip[:, 0, 0, 0]).all()


def test_crop_boxes_fallback_and_output_aspect():
    n = A.CROP_ATTEMPTS
    u = torch.rand(500, 2 * n + 2, generator=gen())
    # the aspect range is scaled by the output's aspect, as the reference's crop_and_resize
    boxes = A._crop_boxes(u, (10, 40), (10, 40), (1.0, 1.0), (1.0, 1.0))
    assert boxes[0].tolist() == pytest.approx([0, 0, 40, 10])
    # impossible boxes -> the fallback: whole image clamped to the aspect range, centred
    boxes = A._crop_boxes(u, (10, 40), (10, 10), (1.0, 1.0), (1.0, 1.0))
    assert boxes[0].tolist() == pytest.approx([15, 0, 10, 10])
    boxes = A._crop_boxes(u, (40, 10), (10, 10), (1.0, 1.0), (2.0, 3.0))
    assert boxes[0].tolist() == pytest.approx([0, 17.5, 10, 5])
    # random boxes always fit, whatever the image shape
    for hw in [(17, 53), (64, 9), (32, 32)]:
        b = A._crop_boxes(u, hw, (8, 8), (0.08, 1.0), (0.5, 2.0))
        assert (b[:, :2] >= 0).all()
        assert (b[:, 0] + b[:, 2] <= hw[1] + 1e-4).all()
        assert (b[:, 1] + b[:, 3] <= hw[0] + 1e-4).all()


# ---------------------------------------------------------------- normalisation


def test_normalize_round_trip():
    x = torch.rand(3, 3, 5, 5, generator=gen())
    y = A.normalize(x, MEAN3, STD3)
    torch.testing.assert_close(y[:, 1], (x[:, 1] - MEAN3[1]) / STD3[1])
    torch.testing.assert_close(A.denormalize(y, MEAN3, STD3), x)
    assert torch.equal(A.to_float(torch.tensor([0, 255], dtype=torch.uint8)),
                       torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("c, expected", [
    (3, (38342.13153025435, 24357.087198571277, 19029444.985368468)),
    (1, (12721.807647082787, 8549.384137963001, 6260025.820589652)),
])
def test_same_draws_give_the_pixels_of_the_code_before_draws_left_the_device(c, expected):
    """Jitter, grayscale, blur and flip now take their parameters from the generator's device
    (and compute hue and blur on the selected samples only); on the CPU the pixels are those
    the previous code (commit bf63df7, all on x's device) gave: sum, sum of squares and a
    position-weighted sum of the result, computed with that code."""
    x = torch.rand(16, c, 40, 40, generator=torch.Generator().manual_seed(c))
    g = torch.Generator().manual_seed(5)
    y = A.color_jitter(x, 1.0, 0.8, g)
    y = A.random_grayscale(y, 0.2, g)
    y = A.gaussian_blur(y, 0.5, (0.1, 2.0), g)
    y = A.random_flip(y, 0.5, g).double()
    w = (torch.arange(y.numel(), dtype=torch.float64) % 997).view_as(y)
    got = (float(y.sum()), float((y * y).sum()), float((y * w).sum()))
    assert got == pytest.approx(expected, rel=1e-6)


def test_blur_layouts_agree():
    x = torch.rand(6, 3, 24, 24, generator=gen(1))
    k = torch.rand(6, 5, generator=gen(2))
    k = k / k.sum(1, keepdim=True)
    nhwc, nchw = A._blur(x, k, channels_last=True), A._blur(x, k, channels_last=False)
    torch.testing.assert_close(nhwc, nchw, rtol=0, atol=1e-6)
    assert torch.equal(A._blur(x, k), nhwc)  # the CPU default
