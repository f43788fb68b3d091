"""Point grids, crop boxes and box helpers of automatic mask generation (official semantics).

Frames: grids are normalized to [0, 1] (x, y); crop boxes are integer pixel XYXY in the full image
(exclusive right/bottom); mask boxes are integer pixel XYXY with inclusive right/bottom (the
official `batched_mask_to_box` convention), in the frame of the crop they were computed in.
"""
from __future__ import annotations

import math
from itertools import product

import numpy as np
import torch


def build_point_grid(points_per_side: int) -> np.ndarray:
    """(n*n, 2) float64 grid of cell centres in [0, 1], x varying fastest."""
    offset = 1.0 / (2 * points_per_side)
    along_side = np.linspace(offset, 1.0 - offset, points_per_side)
    xs = np.tile(along_side[None, :], (points_per_side, 1))
    ys = np.tile(along_side[:, None], (1, points_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(points_per_side: int, n_layers: int, downscale_per_layer: int) -> list[np.ndarray]:
    """One grid per crop layer; layer i has int(points_per_side / downscale**i) points per side."""
    return [
        build_point_grid(int(points_per_side / (downscale_per_layer**layer))) for layer in range(n_layers + 1)
    ]


def generate_crop_boxes(
    size_hw: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes (XYXY pixels) and their layer index: the whole image, then (2**i)**2 crops in layer i.

    Crops of a layer are listed x-major (all crops of the first column of x offsets first), as the
    official code does; that order decides ties in the final cross-crop NMS.
    """
    im_h, im_w = int(size_hw[0]), int(size_hw[1])
    short_side = min(im_h, im_w)
    boxes_xyxy: list[list[int]] = [[0, 0, im_w, im_h]]
    layers: list[int] = [0]
    for layer in range(1, n_layers + 1):
        crops_per_side = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / crops_per_side))
        crop_w = _crop_length(im_w, crops_per_side, overlap)
        crop_h = _crop_length(im_h, crops_per_side, overlap)
        x0s = [int((crop_w - overlap) * i) for i in range(crops_per_side)]
        y0s = [int((crop_h - overlap) * i) for i in range(crops_per_side)]
        for x0, y0 in product(x0s, y0s):
            boxes_xyxy.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layers.append(layer)
    return boxes_xyxy, layers


def _crop_length(full_length: int, n_crops: int, overlap: int) -> int:
    return int(math.ceil((overlap * (n_crops - 1) + full_length) / n_crops))


def is_box_near_crop_edge(
    boxes_xyxy: torch.Tensor, crop_box_xyxy: list[int], image_box_xyxy: list[int], atol: float = 20.0
) -> torch.Tensor:
    """(N,) bool: a mask box (crop frame) lies within `atol` of a crop edge that is not an image edge."""
    crop = torch.as_tensor(crop_box_xyxy, dtype=torch.float32, device=boxes_xyxy.device)
    image = torch.as_tensor(image_box_xyxy, dtype=torch.float32, device=boxes_xyxy.device)
    offset = torch.as_tensor([crop_box_xyxy[0], crop_box_xyxy[1]] * 2, device=boxes_xyxy.device)
    boxes = (boxes_xyxy + offset).float()
    near_crop = (boxes - crop[None, :]).abs() <= atol
    near_image = (boxes - image[None, :]).abs() <= atol
    return (near_crop & ~near_image).any(dim=1)


def box_xyxy_to_xywh(boxes_xyxy: np.ndarray) -> np.ndarray:
    """(N, 4) XYXY -> XYWH in the same dtype (width = right - left, as the official records)."""
    out = boxes_xyxy.copy()
    out[:, 2] = boxes_xyxy[:, 2] - boxes_xyxy[:, 0]
    out[:, 3] = boxes_xyxy[:, 3] - boxes_xyxy[:, 1]
    return out


def box_area(boxes_xyxy: torch.Tensor) -> torch.Tensor:
    """(N,) area (right - left) * (bottom - top), in the boxes' dtype."""
    return (boxes_xyxy[:, 2] - boxes_xyxy[:, 0]) * (boxes_xyxy[:, 3] - boxes_xyxy[:, 1])
