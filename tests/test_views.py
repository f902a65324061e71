"""View groups (multi-crop): sizes and crop scales resolved, one batched call per group, sizes
joined, the default equal to ``two_views`` bit for bit, and ``augment.views`` checked."""

import pytest
import torch

from simclr.augment import ops as A
from simclr.augment import views as V
from simclr.config import Augment, build_config
from simclr.errors import SimCLRError
from tests.test_augment import MEAN3, STD3, gen, images


def test_default_views_are_two_views_bit_for_bit():
    x, cfg = images(8, 3, 32), Augment(blur_p=1.0)
    assert cfg.views == ((2, 1),)
    (both,) = V.make_views(x, cfg, MEAN3, STD3, gen(3))
    assert torch.equal(both, torch.cat(A.two_views(x, cfg, MEAN3, STD3, gen(3))))


def test_view_groups_resolve_sizes_and_crop_scales():
    cfg = Augment(crop_scale=(0.2, 1.0), views=((2, 1), (4, 0.5, 0.05, 0.4), (1, 12)))
    assert V.view_groups(cfg, (32, 32)) == [(2, (32, 32), (0.2, 1.0)), (4, (16, 16), (0.05, 0.4)),
                                            (1, (12, 12), (0.2, 1.0))]
    assert V.view_groups(cfg, (28, 20))[:2] == [(2, (28, 20), (0.2, 1.0)),
                                                (4, (14, 10), (0.05, 0.4))]


def test_each_group_is_one_batched_call_and_sizes_are_joined():
    x = images(5, 3, 32)
    cfg = Augment(views=((2, 1), (3, 0.5, 0.05, 0.4), (1, 16, 0.3, 0.6)))
    got = V.make_views(x, cfg, MEAN3, STD3, gen(4))
    g = gen(4)  # the same generator, drawn group after group in config order
    full = A.simclr_augment(x.repeat(2, 1, 1, 1), cfg, MEAN3, STD3, g)
    small = A.simclr_augment(x.repeat(3, 1, 1, 1), Augment(crop_scale=(0.05, 0.4)), MEAN3, STD3, g,
                             size=16)
    last = A.simclr_augment(x, Augment(crop_scale=(0.3, 0.6)), MEAN3, STD3, g, size=16)
    assert [tuple(v.shape) for v in got] == [(10, 3, 32, 32), (20, 3, 16, 16)]
    assert torch.equal(got[0], full) and torch.equal(got[1], torch.cat([small, last]))


def test_local_views_crop_smaller_parts_of_the_image():
    # A horizontal ramp: a crop's spread of values grows with its width, so small crops
    # (scale <= 0.1) must show a smaller spread than whole-image views.
    ramp = torch.linspace(0, 1, 64).expand(16, 1, 64, 64).contiguous()
    cfg = Augment(flip_p=0, jitter_p=0, gray_p=0, blur_p=0,
                  views=((2, 1, 0.9, 1.0), (2, 0.5, 0.02, 0.1)))
    big, small = V.make_views(ramp, cfg, (0.0,), (1.0,), gen(5))
    spread = [float((v.amax((1, 2, 3)) - v.amin((1, 2, 3))).mean()) for v in (big, small)]
    assert spread[0] > 0.9 and spread[1] < 0.45


@pytest.mark.parametrize("value,match", [
    ("2,1", r"each group is \[count, size\].*got \[\[2\], \[1\]\]"),  # a flat list
    ("[[2, 1.5]]", "> 1 whole pixels"),
    ("[[2.5, 1]]", "count >= 1"),
    ("[[2, 1, 0.5, 0.2]]", "scale_lo <= scale_hi"),
    ("[[1, 1]]", "at least 2 views per image"),
])
def test_views_key_is_checked(value, match):
    with pytest.raises(SimCLRError, match=match):
        build_config(overrides=[f"augment.views={value}"])
    cfg = build_config(overrides=["augment.views=[[2, 1], [4, 0.5, 0.05, 0.4], [1, 24]]"])
    assert cfg.augment.views == ((2, 1), (4, 0.5, 0.05, 0.4), (1, 24))
