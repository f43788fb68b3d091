"""Counts, boxes and windows from low-res logits equal those of the full bilinear upsampling."""
from __future__ import annotations

import platform

import pytest
import torch
import torch.nn.functional as F

from segany.predict.amg.upsample import UpsamplePlan

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


@pytest.mark.parametrize("size_hw", [(300, 451), (768, 1024), (256, 256), (200, 130), (256, 700), (1000, 257)])
def test_stats_and_windows_equal_dense_upsampling(size_hw):
    x = _smooth_logits(10, seed=size_hw[0])
    plan = UpsamplePlan(256, size_hw)
    stats = plan.stats(x, THRESHOLDS, 0.0)
    dense = _dense(x, size_hw)
    expected = torch.stack([(dense > t).flatten(1).sum(1) for t in THRESHOLDS], dim=1)
    assert torch.equal(stats.counts, expected)
    masks = dense > 0.0
    for k in range(len(x)):
        assert stats.boxes_xyxy[k].tolist() == _dense_box(masks[k])
    windows = plan.windows(x, stats.boxes_xyxy, 0.0)
    for k in range(len(x)):
        left, top, right, bottom = stats.boxes_xyxy[k].tolist()
        assert torch.equal(windows[k, : bottom - top + 1, : right - left + 1], masks[k, top : bottom + 1, left : right + 1])
        assert int(windows[k].sum()) == int(masks[k].sum())  # padding is False


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
