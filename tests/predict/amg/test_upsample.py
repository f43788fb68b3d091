"""Counts, boxes and windows from low-res logits equal those of the full bilinear upsampling."""
from __future__ import annotations

import math
import platform

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segany.predict.amg.upsample import DENSE_SHARE, UpsamplePlan

THRESHOLDS = [-1.0, 0.0, 1.0]


def _smooth_logits(n: int, seed: int) -> torch.Tensor:
    """Blobby maps like a decoder's, plus constant maps sitting on and around the thresholds."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 1, 12, 12, generator=generator) * 15
    x = F.interpolate(coarse, (256, 256), mode="bicubic", align_corners=False)[:, 0]
    x[0], x[1], x[2], x[3] = -5.0, 5.0, 0.0, 1.0
    x[4] = torch.randn(256, 256, generator=generator) * 3  # noisy, like random weights
    return x.contiguous()


def _dense(x: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x[:, None], size_hw, mode="bilinear", align_corners=False)[:, 0]


def _dense_box(mask: torch.Tensor) -> list[int]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(ys) == 0:
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


def _assert_equals_dense(
    x: torch.Tensor, size_hw: tuple[int, int], thresholds: list[float], box_threshold: float,
    dense_share: float = DENSE_SHARE,
) -> None:
    """Counts, boxes and windows of the plan against the full `F.interpolate` upsampling."""
    plan = UpsamplePlan(x.shape[-1], size_hw, dense_share=dense_share)
    stats = plan.stats(x, thresholds, box_threshold)
    dense = _dense(x, size_hw)
    expected = torch.stack([(dense > t).flatten(1).sum(1) for t in thresholds], dim=1)
    assert torch.equal(stats.counts, expected)
    masks = dense > box_threshold
    for k in range(len(x)):
        assert stats.boxes_xyxy[k].tolist() == _dense_box(masks[k]), k
    windows = plan.windows(x, stats.boxes_xyxy, box_threshold)
    for k in range(len(x)):
        left, top, right, bottom = stats.boxes_xyxy[k].tolist()
        assert torch.equal(windows[k, : bottom - top + 1, : right - left + 1], masks[k, top : bottom + 1, left : right + 1])
        assert int(windows[k].sum()) == int(masks[k].sum())  # padding is False
    # Boxes larger than the masks (here the whole crop) reach beyond where any source is above.
    full = torch.tensor([[0, 0, size_hw[1] - 1, size_hw[0] - 1]] * len(x))
    assert torch.equal(plan.windows(x, full, box_threshold), masks)


@pytest.mark.parametrize("size_hw", [(300, 451), (768, 1024), (256, 256), (200, 130), (256, 700), (1000, 257)])
def test_stats_and_windows_equal_dense_upsampling(size_hw):
    _assert_equals_dense(_smooth_logits(10, seed=size_hw[0]), size_hw, THRESHOLDS, 0.0)


def _edge_logits() -> torch.Tensor:
    """Masks whose only values above the thresholds sit in corners, on edges, or a margin away from them."""
    x = torch.full((9, 256, 256), -20.0)
    x[0, 0, 0] = x[1, 255, 255] = x[2, 0, 255] = 5.0  # single sources in corners
    x[3, :, 255] = 0.5  # the last column only
    x[4, 255, :] = torch.linspace(-2, 2, 256)  # the last row, crossing every threshold
    x[5, 100:140, 0:3] = 1.0  # exactly at a threshold, on the left edge
    x[6, 50:60, 50:60] = float(np.nextafter(np.float32(0), np.float32(1)))  # just above 0
    x[7, 50:60, 50:60] = -1.0 + 2e-6  # within the classification margin of -1
    x[8] = 0.0  # all on a threshold
    return x


@pytest.mark.parametrize("size_hw", [(768, 1024), (256, 256), (256, 9), (3, 700), (1, 1), (2, 7), (17, 3), (120, 90)])
def test_edges_corners_and_tiny_crops_equal_dense_upsampling(size_hw):
    x = torch.cat([_edge_logits(), _smooth_logits(6, seed=3)])
    _assert_equals_dense(x, size_hw, THRESHOLDS, 0.0)
    _assert_equals_dense(x, size_hw, [-0.5, -0.5, 0.25], -0.5)


@pytest.mark.parametrize("dense_share", [0.0, math.inf], ids=["all-dense", "all-cells"])
@pytest.mark.parametrize("size_hw", [(427, 640), (120, 90), (2, 7)])
def test_each_route_alone_equals_dense_upsampling(size_hw, dense_share):
    x = torch.cat([_edge_logits(), _smooth_logits(6, seed=3)])
    x[12, 128, 128] = float("nan")  # the noisy map
    x[13, 255, :] = float("nan")
    _assert_equals_dense(x, size_hw, THRESHOLDS, 0.0, dense_share)


def test_maps_straddling_most_cells_take_the_dense_route_and_smooth_ones_the_cells():
    ramp = ((torch.arange(256.0) - 127.5) / 10).expand(256, 256)  # three straight contours, 1.2% of the cells
    x = torch.stack([_smooth_logits(5, seed=3)[4], ramp, torch.zeros(256, 256)])  # noisy, ramp, on a threshold
    _, _, by_dense = UpsamplePlan(256, (427, 640))._routes(x, THRESHOLDS)
    assert by_dense.tolist() == [0, 2]
    _assert_equals_dense(x, (427, 640), THRESHOLDS, 0.0)


def test_empty_masks_and_empty_batches():
    x = torch.full((3, 256, 256), -5.0)
    stats = UpsamplePlan(256, (300, 400)).stats(x, THRESHOLDS, 0.0)
    assert stats.counts.tolist() == [[0, 0, 0]] * 3
    assert stats.boxes_xyxy.tolist() == [[0, 0, 0, 0]] * 3
    stats = UpsamplePlan(256, (300, 400)).stats(x[:0], THRESHOLDS, 0.0)
    assert stats.counts.shape == (0, 3) and stats.boxes_xyxy.shape == (0, 4)


def test_nan_sources_count_as_below_like_interpolate():
    x = _smooth_logits(6, seed=13)
    x[0, 10:12, 20] = float("nan")
    x[4, 128, 128] = float("nan")  # inside the noisy map
    x[5, 255, :] = float("nan")
    _assert_equals_dense(x, (333, 500), THRESHOLDS, 0.0)


def test_repeated_thresholds_share_one_count():
    x = _smooth_logits(6, seed=7)
    plan = UpsamplePlan(256, (320, 480))
    stats = plan.stats(x, [0.0, 0.0, 0.0], 0.0)
    assert torch.equal(stats.counts[:, 0], stats.counts[:, 2])
    assert torch.equal(stats.counts[:, 0], (_dense(x, (320, 480)) > 0).flatten(1).sum(1))


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="emulates the x86 kernel's fused rounding")
def test_values_match_interpolate_bit_for_bit():
    """Thresholds equal to upsampled values: a value off by one ulp would flip its own pixel."""
    x = _smooth_logits(6, seed=11)[4:]  # the noisy map and a smooth one
    size_hw = (333, 777)
    plan = UpsamplePlan(256, size_hw)
    dense = _dense(x, size_hw)
    full = torch.tensor([[0, 0, size_hw[1] - 1, size_hw[0] - 1]] * 2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(6):
        k, y, x_ = (int(torch.randint(0, hi, (1,), generator=generator)) for hi in (2, *size_hw))
        threshold = float(dense[k, y, x_])
        window = plan.windows(x, full, threshold)
        assert torch.equal(window, dense > threshold)
        assert not window[k, y, x_]


def test_batches_larger_than_a_chunk_give_the_same_answers():
    x = _smooth_logits(300, seed=5)
    size_hw = (120, 90)  # downsampling: some cells own no output pixel
    stats = UpsamplePlan(256, size_hw).stats(x, THRESHOLDS, 0.0)
    dense = _dense(x, size_hw)
    expected = torch.stack([(dense > t).flatten(1).sum(1) for t in THRESHOLDS], dim=1)
    assert torch.equal(stats.counts, expected)
    assert [stats.boxes_xyxy[k].tolist() for k in range(0, 300, 37)] == [_dense_box(dense[k] > 0) for k in range(0, 300, 37)]
