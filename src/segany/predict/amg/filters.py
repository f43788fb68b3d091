"""Box NMS and small-region clean-up of automatic mask generation.

`batched_nms` reproduces torchvision's `batched_nms` exactly (torchvision is not a dependency):
float32 IoU ``inter / (area_i + area_j - inter)`` with areas ``(x2 - x1) * (y2 - y1)``, a stable
descending sort by score (ties keep input order), suppression when IoU > threshold, result in
score order. `fill_small_regions` is the official predictor's `max_hole_area` / `max_sprinkle_area`
post-processing on low-resolution logits, done on CPU with OpenCV instead of the CUDA extension.
"""
from __future__ import annotations

import numpy as np
import torch

from segany.errors import MissingExtra


def batched_nms(
    boxes_xyxy: torch.Tensor | np.ndarray,
    scores: torch.Tensor | np.ndarray,
    categories: torch.Tensor | np.ndarray,
    iou_threshold: float,
) -> np.ndarray:
    """Indices (int64, by descending score) of the boxes kept by per-category greedy NMS.

    Args:
        boxes_xyxy: (N, 4) boxes, compared in float32.
        scores: (N,) higher first; equal scores keep their input order.
        categories: (N,) int; boxes only suppress boxes of their own category.
        iou_threshold: a box is dropped when its IoU with a kept, higher-scored box is > this.
    """
    boxes = np.asarray(torch.as_tensor(boxes_xyxy).detach().cpu().float(), dtype=np.float32).reshape(-1, 4)
    score = np.asarray(torch.as_tensor(scores).detach().cpu().float()).reshape(-1)
    category = np.asarray(torch.as_tensor(categories).detach().cpu()).reshape(-1)
    order = np.argsort(-score, kind="stable")
    boxes, category = boxes[order], category[order]
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    threshold = np.float32(iou_threshold)
    suppressed = np.zeros(len(order), dtype=bool)
    keep: list[int] = []
    # Greedy by nature: each step suppresses, in one vectorized pass, what the next kept box overlaps.
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = slice(i + 1, None)
        inter_w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        inter_h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = inter_w * inter_h
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest] |= (iou > threshold) & (category[rest] == category[i])
    return order[np.asarray(keep, dtype=np.int64)]


def fill_small_regions(logits: torch.Tensor, max_area: int, mask_threshold: float, in_place: bool = False) -> torch.Tensor:
    """Fill small holes, then remove small islands, of a batch of low-resolution logit maps.

    Official semantics (`SAM2Transforms.postprocess_masks` with max_hole_area = max_sprinkle_area =
    `max_area`): 8-connected components of the background (logit <= threshold) with area <= max_area
    become threshold + 10; 8-connected components of the foreground (logit > threshold) with area
    <= max_area become threshold - 10. Both component sets come from the logits as given.

    Args:
        logits: (N, h, w) float32 on any device.
        in_place: the caller owns `logits` and lets it be overwritten (a CPU float32 batch then is).
    Returns:
        (N, h, w) float32 on the input's device; `logits` itself (as float32) when nothing changes.
    """
    if max_area <= 0 or logits.shape[0] == 0:
        return logits
    values = logits.detach().float().cpu().numpy()
    foreground = values > np.float32(mask_threshold)  # NumPy's comparison beats PyTorch's several times on CPU
    windows = _windows(foreground, max_area)
    holes, islands = _small_components(foreground, windows, max_area)
    if not holes and not islands:
        return logits.float()
    # Overwriting the caller's batch saves a copy of it (22 MB for 85 masks at 256x256).
    writable = in_place and logits.device.type == "cpu" and logits.dtype == torch.float32
    filled = values if writable else values.copy()
    for small, value in ((holes, mask_threshold + 10.0), (islands, mask_threshold - 10.0)):
        for k, (top, bottom, left, right), pixels in small:
            filled[k, top:bottom, left:right][pixels] = np.float32(value)
    return logits if filled is values else torch.from_numpy(filled).to(logits.device)


def _windows(foreground: np.ndarray, max_area: int) -> list[tuple[int, int, int, int, int]]:
    """(map, top, bottom, left, right) half-open windows that hold every small component.

    A window is the map's foreground box grown by one background pixel where the map goes on. The
    background outside the box is made of strips spanning the map's height or width, so any
    background component reaching it has area >= min(h, w); when that exceeds max_area, such
    components (the ones touching the grown rim) are never small and only the window needs
    labelling. Maps without foreground then need nothing; otherwise whole maps are labelled.
    """
    n, h, w = foreground.shape
    if max_area >= min(h, w):
        return [(k, 0, h, 0, w) for k in range(n)]
    rows, cols = foreground.any(axis=2), foreground.any(axis=1)  # (n, h), (n, w)
    has = rows.any(axis=1)
    top, bottom = rows.argmax(axis=1), h - rows[:, ::-1].argmax(axis=1)
    left, right = cols.argmax(axis=1), w - cols[:, ::-1].argmax(axis=1)
    top, left = np.maximum(top - 1, 0), np.maximum(left - 1, 0)
    bottom, right = np.minimum(bottom + 1, h), np.minimum(right + 1, w)
    return [(k, int(top[k]), int(bottom[k]), int(left[k]), int(right[k])) for k in np.flatnonzero(has)]


_Found = list[tuple[int, tuple[int, int, int, int], np.ndarray]]  # (map, window, pixels)


def _small_components(
    foreground: np.ndarray, windows: list[tuple[int, int, int, int, int]], max_area: int
) -> tuple[_Found, _Found]:
    """Small background and foreground components inside the windows: (map, window, bool pixels) each.

    All windows are labelled in one OpenCV call per kind: they are stacked vertically, left-aligned,
    with an empty row after each and empty padding on the right, so no component spans two windows.
    """
    if not windows:
        return [], []
    cv2 = _cv2()
    n, h, w = foreground.shape
    heights = np.array([bottom - top for _, top, bottom, _, _ in windows])
    widths = np.array([right - left for _, _, _, left, right in windows])
    starts = np.concatenate([[0], np.cumsum(heights + 1)[:-1]])
    shape = (int(starts[-1] + heights[-1] + 1), int(widths.max()))
    fg_canvas, bg_canvas = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
    for (k, top, bottom, left, right), y in zip(windows, starts):
        window = foreground[k, top:bottom, left:right]
        fg_canvas[y : y + bottom - top, : right - left] = window
        np.logical_not(window, out=bg_canvas[y : y + bottom - top, : right - left])
    # Rim sides: window edges that are not the map's edge (there the background goes on outside).
    rims = np.array([(top > 0, bottom < h, left > 0, right < w) for _, top, bottom, left, right in windows])
    found = []
    for canvas, is_background in ((bg_canvas, True), (fg_canvas, False)):
        _, labels, stats, _ = cv2.connectedComponentsWithStats(canvas.view(np.uint8), connectivity=8)
        small = stats[:, cv2.CC_STAT_AREA] <= max_area
        small[0] = False  # label 0 is everything outside the canvas's set
        candidates = np.flatnonzero(small)
        box = stats[candidates]
        owner = np.searchsorted(starts, box[:, cv2.CC_STAT_TOP], side="right") - 1
        if is_background and len(candidates):
            y0, x0 = box[:, cv2.CC_STAT_TOP] - starts[owner], box[:, cv2.CC_STAT_LEFT]
            y1, x1 = y0 + box[:, cv2.CC_STAT_HEIGHT], x0 + box[:, cv2.CC_STAT_WIDTH]
            rim = rims[owner]
            on_rim = (rim[:, 0] & (y0 == 0)) | (rim[:, 1] & (y1 == heights[owner]))
            on_rim |= (rim[:, 2] & (x0 == 0)) | (rim[:, 3] & (x1 == widths[owner]))
            small[candidates[on_rim]] = False  # part of a component reaching outside the window
            owner = owner[~on_rim]
        found.append([
            (windows[i][0], windows[i][1:], small[labels[starts[i] : starts[i] + heights[i], : widths[i]]])
            for i in np.unique(owner).tolist()
        ])
    holes, islands = found
    return holes, islands


def _cv2():
    try:
        import cv2
    except ImportError as exc:  # only min_mask_region_area needs it
        raise MissingExtra("opencv", "opencv-python-headless", "min_mask_region_area") from exc
    return cv2
