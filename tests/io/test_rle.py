"""Uncompressed and COCO RLE: the official column-major layout, round trips, and windowed encoding."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from segany.errors import InvalidInput
from segany.io.rle import (
    coco_decode,
    coco_encode,
    masks_to_rle,
    rle_area,
    rle_to_coco,
    rle_to_mask,
    window_masks_to_rle,
)


def _reference_counts(mask: np.ndarray) -> list[int]:
    """Runs of the column-major flattening, starting with a (possibly empty) run of zeros."""
    flat = mask.T.reshape(-1)
    counts, current, run = [], False, 0
    for value in flat:
        if bool(value) == current:
            run += 1
        else:
            counts.append(run)
            current, run = bool(value), 1
    counts.append(run)
    return counts


def _random_masks(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    masks = rng.random((n, h, w)) < rng.random()
    masks[0] = True  # full: counts [0, H*W]
    if n > 1:
        masks[1] = False  # empty: counts [H*W]
    return masks


@pytest.mark.parametrize("shape", [(3, 1, 1), (4, 1, 7), (4, 6, 1), (5, 9, 13), (3, 32, 17)])
def test_counts_match_column_major_runs(shape):
    masks = _random_masks(np.random.default_rng(sum(shape)), *shape)
    for mask, rle in zip(masks, masks_to_rle(masks)):
        assert rle["size"] == [shape[1], shape[2]]
        assert rle["counts"] == _reference_counts(mask)
        assert all(count > 0 for count in rle["counts"][1:])  # only the first run may be empty


def test_torch_and_numpy_inputs_agree():
    masks = _random_masks(np.random.default_rng(1), 6, 20, 30)
    assert masks_to_rle(masks) == masks_to_rle(torch.from_numpy(masks))
    assert masks_to_rle(masks.astype(np.uint8)) == masks_to_rle(masks)


def test_round_trips_through_masks_and_coco():
    masks = _random_masks(np.random.default_rng(2), 8, 37, 23)
    for mask, rle in zip(masks, masks_to_rle(masks)):
        np.testing.assert_array_equal(rle_to_mask(rle), mask)
        coco = rle_to_coco(rle)
        assert isinstance(coco["counts"], str)
        assert coco == coco_encode(mask)
        np.testing.assert_array_equal(coco_decode(coco), mask)
        assert rle_area(rle) == rle_area(coco) == int(mask.sum()) == int(mask_utils.area(_bytes(coco)))


def _bytes(coco: dict) -> dict:
    return {"size": coco["size"], "counts": coco["counts"].encode()}


def test_windows_encode_like_the_full_masks():
    rng = np.random.default_rng(3)
    height, width = 23, 19
    full = np.zeros((40, height, width), dtype=bool)
    windows = np.zeros((40, 9, 8), dtype=bool)
    origins = np.zeros((40, 2), dtype=np.int64)
    for k in range(40):
        win_h, win_w = rng.integers(1, 10), rng.integers(1, 9)
        top, left = rng.integers(0, height - win_h + 1), rng.integers(0, width - win_w + 1)
        if k % 4 == 0:  # windows spanning the full height exercise column-to-column runs
            top, win_h = 0, min(9, height)
        content = rng.random((win_h, win_w)) < 0.6
        if k % 3 == 0:
            content[:] = True
        windows[k, :win_h, :win_w] = content
        full[k, top : top + win_h, left : left + win_w] = content
        origins[k] = (top, left)
    got = window_masks_to_rle(torch.from_numpy(windows), origins, (height, width))
    assert got == masks_to_rle(full)


def test_window_columns_touching_bottom_and_top_join_into_one_run():
    height, width = 4, 3
    full = np.zeros((1, height, width), dtype=bool)
    full[0, :, 1:] = True  # column 1 ends set at the bottom, column 2 starts set at the top
    windows = torch.ones(1, height, 2, dtype=torch.bool)
    got = window_masks_to_rle(windows, np.array([[0, 1]]), (height, width))
    assert got == masks_to_rle(full)
    assert got[0]["counts"] == [4, 8]


def test_rejects_malformed_input():
    with pytest.raises(InvalidInput) as excinfo:
        masks_to_rle(np.zeros((4, 4), dtype=bool))
    assert excinfo.value.field == "masks"
    with pytest.raises(InvalidInput) as excinfo:
        rle_to_mask({"size": [2, 2], "counts": [1, 1]})
    assert excinfo.value.field == "counts"


def test_empty_batch():
    assert masks_to_rle(np.zeros((0, 5, 5), dtype=bool)) == []
