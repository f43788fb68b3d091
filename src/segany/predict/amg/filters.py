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


def fill_small_regions(logits: torch.Tensor, max_area: int, mask_threshold: float) -> torch.Tensor:
    """Fill small holes, then remove small islands, of a batch of low-resolution logit maps.

    Official semantics (`SAM2Transforms.postprocess_masks` with max_hole_area = max_sprinkle_area =
    `max_area`): 8-connected components of the background (logit <= threshold) with area <= max_area
    become threshold + 10; 8-connected components of the foreground (logit > threshold) with area
    <= max_area become threshold - 10. Both component sets come from the logits as given.

    Args:
        logits: (N, h, w) float32 on any device.
    Returns:
        (N, h, w) float32 on the input's device.
    """
    if max_area <= 0 or logits.shape[0] == 0:
        return logits
    values = logits.detach().float().cpu()
    background = (values <= mask_threshold).numpy()
    holes = torch.from_numpy(_small_components(background, max_area))
    islands = torch.from_numpy(_small_components(~background, max_area))
    filled = torch.where(holes, torch.tensor(mask_threshold + 10.0), values)
    filled = torch.where(islands, torch.tensor(mask_threshold - 10.0), filled)
    return filled.to(logits.device)


def _small_components(binary: np.ndarray, max_area: int) -> np.ndarray:
    """(N, h, w) bool: pixels of 8-connected components of `binary` with area <= max_area.

    All N maps are labelled in one OpenCV call: they are stacked vertically with an empty row
    between neighbours, so no component can span two maps.
    """
    cv2 = _cv2()
    n, h, w = binary.shape
    stacked = np.zeros((n, h + 1, w), dtype=np.uint8)
    stacked[:, :h] = binary
    _, labels, stats, _ = cv2.connectedComponentsWithStats(stacked.reshape(n * (h + 1), w), connectivity=8)
    areas = stats[:, cv2.CC_STAT_AREA].copy()
    small = areas <= max_area
    small[0] = False  # label 0 is everything outside `binary`
    return small[labels].reshape(n, h + 1, w)[:, :h]


def _cv2():
    try:
        import cv2
    except ImportError as exc:  # only min_mask_region_area needs it
        raise MissingExtra("opencv", "opencv-python-headless", "min_mask_region_area") from exc
    return cv2
