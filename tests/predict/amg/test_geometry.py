"""Point grids, crop boxes and crop-edge rejection of automatic mask generation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from segany.predict.amg.geometry import (
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    build_point_grid,
    generate_crop_boxes,
    is_box_near_crop_edge,
)


@pytest.mark.parametrize("n", [1, 2, 5, 32])
def test_point_grid_is_cell_centres_x_fastest(n):
    grid = build_point_grid(n)
    assert grid.shape == (n * n, 2) and grid.dtype == np.float64
    centres = (np.arange(n) + 0.5) / n
    np.testing.assert_allclose(grid[:n, 0], centres)  # first row: x varies
    np.testing.assert_allclose(grid[::n, 1], centres)  # first column: y varies
    assert np.all(grid[:n, 1] == grid[0, 1])


def test_layer_grids_shrink_by_the_downscale_factor():
    grids = build_all_layer_point_grids(32, 2, 2)
    assert [len(g) for g in grids] == [32 * 32, 16 * 16, 8 * 8]
    grids = build_all_layer_point_grids(10, 2, 3)
    assert [len(g) for g in grids] == [100, 9, 1]  # int(10 / 3) = 3, int(10 / 9) = 1


def test_crop_boxes_cover_the_image_with_the_official_overlap():
    height, width = 400, 600
    boxes, layers = generate_crop_boxes((height, width), 2, 512 / 1500)
    assert boxes[0] == [0, 0, width, height] and layers[0] == 0
    assert layers.count(1) == 4 and layers.count(2) == 16
    for layer in (1, 2):
        per_side = 2**layer
        overlap = int(512 / 1500 * min(height, width) * 2 / per_side)
        crop_w = math.ceil((overlap * (per_side - 1) + width) / per_side)
        crop_h = math.ceil((overlap * (per_side - 1) + height) / per_side)
        layer_boxes = [b for b, l in zip(boxes, layers) if l == layer]
        x0s = sorted({b[0] for b in layer_boxes})
        y0s = sorted({b[1] for b in layer_boxes})
        assert x0s == [int((crop_w - overlap) * i) for i in range(per_side)]
        assert y0s == [int((crop_h - overlap) * i) for i in range(per_side)]
        # x-major order: the first per_side crops share x0 = 0
        assert [b[0] for b in layer_boxes[:per_side]] == [0] * per_side
        covered = np.zeros((height, width), dtype=int)
        for x0, y0, x1, y1 in layer_boxes:
            assert x1 <= width and y1 <= height
            covered[y0:y1, x0:x1] += 1
        assert covered.min() >= 1


def test_crop_edge_rejection_spares_image_edges():
    crop = [100, 0, 300, 200]  # touches the image's top edge only
    image = [0, 0, 400, 200]
    boxes_in_crop = torch.tensor(
        [
            [50, 50, 150, 150],  # well inside
            [5, 50, 150, 150],  # within 20 px of the crop's left edge (x=100), not an image edge
            [50, 0, 150, 150],  # at the crop's top edge, which is also the image's top edge
            [50, 50, 150, 199],  # at the crop's bottom, which is the image's bottom edge
            [50, 50, 181, 150],  # right edge at x=281, 19 px from the crop edge at 300
            [50, 50, 179, 150],  # 21 px away
        ]
    )
    near = is_box_near_crop_edge(boxes_in_crop, crop, image)
    assert near.tolist() == [False, True, False, False, True, False]


def test_xyxy_to_xywh_keeps_inclusive_convention():
    boxes = np.array([[3, 4, 10, 20]], dtype=np.float32)
    np.testing.assert_array_equal(box_xyxy_to_xywh(boxes), [[3, 4, 7, 16]])
