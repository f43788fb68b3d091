"""Batched NMS (torchvision semantics) and small-region filling of low-res logits."""
from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from segany.predict.amg.filters import batched_nms, fill_small_regions


def _greedy_nms(boxes: np.ndarray, scores: np.ndarray, categories: np.ndarray, threshold: float) -> list[int]:
    """Plain per-pair greedy NMS, with a stable descending sort and float32 IoU."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # Python's sort is stable
    boxes = boxes.astype(np.float32)
    suppressed, keep = set(), []
    for pos, i in enumerate(order):
        if i in suppressed:
            continue
        keep.append(i)
        for j in order[pos + 1 :]:
            if categories[j] != categories[i]:
                continue
            w = max(np.float32(0), min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]))
            h = max(np.float32(0), min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]))
            inter = np.float32(w * h)
            area_i = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
            area_j = (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])
            with np.errstate(invalid="ignore", divide="ignore"):
                iou = inter / (area_i + area_j - inter)
            if iou > np.float32(threshold):
                suppressed.add(j)
    return keep


@pytest.mark.parametrize("seed", range(6))
def test_matches_plain_greedy_nms_with_ties_and_categories(seed):
    rng = np.random.default_rng(seed)
    n = 120
    xy = rng.integers(0, 60, size=(n, 2))
    wh = rng.integers(0, 40, size=(n, 2))  # zero-width boxes included
    boxes = np.concatenate([xy, xy + wh], axis=1)
    scores = rng.integers(0, 8, size=n).astype(np.float32) / 8  # many exact ties
    categories = rng.integers(0, 3, size=n)
    for threshold in (0.0, 0.3, 0.7, 1.0):
        got = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(categories), threshold)
        assert got.tolist() == _greedy_nms(boxes, scores, categories, threshold)


def test_equal_scores_keep_input_order():
    boxes = torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], dtype=torch.float32)
    scores = torch.tensor([0.5, 0.5, 0.5])
    keep = batched_nms(boxes, scores, torch.zeros(3), 0.5)
    assert keep.tolist() == [0, 1]  # the duplicate later in the input is the one dropped


def test_iou_equal_to_threshold_is_kept():
    boxes = torch.tensor([[0, 0, 10, 10], [5, 0, 15, 10]], dtype=torch.float32)  # IoU = 50 / 150
    scores = torch.tensor([0.9, 0.8])
    iou = np.float32(50) / np.float32(150)
    assert batched_nms(boxes, scores, torch.zeros(2), float(iou)).tolist() == [0, 1]  # suppression needs IoU > t
    assert batched_nms(boxes, scores, torch.zeros(2), float(np.nextafter(iou, np.float32(0)))).tolist() == [0]


def test_result_is_in_descending_score_order():
    boxes = torch.tensor([[0, 0, 1, 1], [10, 10, 11, 11], [20, 20, 21, 21]], dtype=torch.float32)
    keep = batched_nms(boxes, torch.tensor([0.1, 0.9, 0.5]), torch.zeros(3), 0.5)
    assert keep.tolist() == [1, 2, 0]


def test_empty_input():
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0), 0.5).tolist() == []


def _components(binary: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected components by breadth-first search."""
    h, w = binary.shape
    seen = np.zeros_like(binary, dtype=bool)
    found = []
    for y in range(h):
        for x in range(w):
            if not binary[y, x] or seen[y, x]:
                continue
            queue, pixels = deque([(y, x)]), []
            seen[y, x] = True
            while queue:
                cy, cx = queue.popleft()
                pixels.append((cy, cx))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < h and 0 <= nx < w and binary[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
            found.append(pixels)
    return found


def _reference_fill(logits: np.ndarray, max_area: int, threshold: float) -> np.ndarray:
    out = logits.copy()
    for pixels in _components(logits <= threshold):
        if len(pixels) <= max_area:
            for y, x in pixels:
                out[y, x] = threshold + 10.0
    for pixels in _components(logits > threshold):
        if len(pixels) <= max_area:
            for y, x in pixels:
                out[y, x] = threshold - 10.0
    return out


@pytest.mark.parametrize("max_area", [1, 3, 12])
def test_fill_matches_component_reference(max_area):
    rng = np.random.default_rng(max_area)
    logits = rng.normal(size=(5, 16, 16)).astype(np.float32)
    logits[0] = 1.0  # no background at all
    logits[1] = -1.0  # no foreground at all
    got = fill_small_regions(torch.from_numpy(logits), max_area, 0.2)
    for k in range(len(logits)):
        np.testing.assert_array_equal(got[k].numpy(), _reference_fill(logits[k], max_area, 0.2))


def test_fill_uses_eight_connectivity_and_area_inclusive():
    logits = np.full((1, 8, 8), -5.0, dtype=np.float32)
    logits[0, 2, 2] = logits[0, 3, 3] = 5.0  # diagonal neighbours: one island of area 2
    logits[0, 6, 6] = 5.0  # an island of area 1
    filled = fill_small_regions(torch.from_numpy(logits), 1, 0.0)[0]
    assert filled[2, 2] == 5.0 and filled[3, 3] == 5.0
    assert filled[6, 6] == -10.0
    filled = fill_small_regions(torch.from_numpy(logits), 2, 0.0)[0]
    assert filled[2, 2] == -10.0 and filled[3, 3] == -10.0


def test_fill_is_a_no_op_for_zero_area():
    logits = torch.randn(2, 8, 8)
    assert fill_small_regions(logits, 0, 0.0) is logits


def _dense_fill(logits: np.ndarray, max_area: int, threshold: float) -> np.ndarray:
    """The fill labelled map by map over whole maps (OpenCV), no windows."""
    import cv2

    out = logits.copy()
    for k in range(len(logits)):
        for binary, value in ((logits[k] <= threshold, threshold + 10.0), (logits[k] > threshold, threshold - 10.0)):
            _, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
            small = stats[:, cv2.CC_STAT_AREA] <= max_area
            small[0] = False
            out[k][small[labels]] = np.float32(value)
    return out


def _rectangles(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """Rectangles (some off the edges) with speckled insides, and flipped specks everywhere."""
    x = np.full((n, h, w), -1.0, dtype=np.float32)
    for k in range(n):
        for _ in range(rng.integers(0, 4)):
            y0, x0 = rng.integers(-3, h), rng.integers(-3, w)
            y1, x1 = y0 + rng.integers(1, 15), x0 + rng.integers(1, 15)
            x[k, max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = 1.0
            inner = x[k, max(y0 + 2, 0) : max(y1 - 2, 0), max(x0 + 2, 0) : max(x1 - 2, 0)]
            inner[...] = np.where(rng.random(inner.shape) > 0.5, 1.0, 0.0)  # 0.0 sits on the threshold: background
        specks = rng.random((h, w)) > 0.99
        x[k][specks] = -x[k][specks]
    return x


@pytest.mark.parametrize("seed", range(4))
def test_fill_matches_dense_labelling_on_holes_islands_and_edges(seed):
    """Small windows around the foreground: holes and islands on, next to and away from map edges."""
    rng = np.random.default_rng(seed)
    logits = _rectangles(rng, 40, int(rng.integers(20, 70)), int(rng.integers(20, 70)))
    logits[0] = -1.0  # no foreground: nothing to label
    logits[1] = 1.0  # no background
    logits[2, 5, 5] = 1.0  # a lone speck in an empty map
    for max_area in (1, 2, 5, 12, 19):  # all below min(h, w): the windowed path
        got = fill_small_regions(torch.from_numpy(logits), max_area, 0.0).numpy()
        np.testing.assert_array_equal(got, _dense_fill(logits, max_area, 0.0))


def test_fill_with_areas_beyond_the_map_size_labels_whole_maps():
    rng = np.random.default_rng(9)
    logits = _rectangles(rng, 12, 18, 30)
    logits[0] = -1.0  # all background, area 540: filled when max_area >= 540
    for max_area in (18, 40, 539, 540):
        got = fill_small_regions(torch.from_numpy(logits), max_area, 0.0).numpy()
        np.testing.assert_array_equal(got, _dense_fill(logits, max_area, 0.0))
    assert (fill_small_regions(torch.from_numpy(logits), 540, 0.0)[0] == 10.0).all()


def test_fill_on_decoder_like_maps_matches_dense_labelling_and_is_a_view_when_clean():
    """Smooth blobs (one component each, many on the edges) plus a few with specks, at 256x256."""
    generator = torch.Generator().manual_seed(3)
    centres = torch.rand(24, 2, 1, 1, generator=generator) * 256  # many near the edges
    radii = torch.rand(24, 1, 1, generator=generator) * 60 + 10
    grid = torch.arange(256.0)
    dist = ((grid[None, :, None] - centres[:, 0]) ** 2 + (grid[None, None, :] - centres[:, 1]) ** 2).sqrt()
    logits = (radii - dist) * 0.5  # > 0 inside the disc
    np.testing.assert_array_equal(_dense_fill(logits.numpy(), 25, 0.0), logits.numpy())  # nothing small
    assert fill_small_regions(logits, 25, 0.0) is logits  # no copy when nothing changes
    logits[3, 100:103, 100:102] = -logits[3, 100:103, 100:102].sign() * 5  # a 3x2 hole or island
    logits[4, 0, 0] = -logits[4, 0, 0].sign() * 5  # a speck in the corner
    logits[5, 255, 128] = 0.0  # exactly at the threshold
    expected = _dense_fill(logits.numpy(), 25, 0.0)
    assert not np.array_equal(expected, logits.numpy())
    np.testing.assert_array_equal(fill_small_regions(logits, 25, 0.0).numpy(), expected)
    np.testing.assert_array_equal(fill_small_regions(logits, 25, -0.5).numpy(), _dense_fill(logits.numpy(), 25, -0.5))
    owned = logits.clone()
    filled = fill_small_regions(owned, 25, 0.0, in_place=True)
    assert filled is owned  # overwritten, not copied
    np.testing.assert_array_equal(filled.numpy(), expected)


def test_fill_of_many_small_components_matches_dense_labelling():
    """Noise (as random weights give): thousands of components per map, every window the whole map."""
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(6, 256, 256)).astype(np.float32)
    got = fill_small_regions(torch.from_numpy(logits), 25, 0.0).numpy()
    np.testing.assert_array_equal(got, _dense_fill(logits, 25, 0.0))
