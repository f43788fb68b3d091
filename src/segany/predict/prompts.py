"""Validation and normalisation of point / box / mask prompts into the model's input frame.

Every malformed prompt raises `InvalidPrompt` naming the field; nothing reaches the network as an
assert or a raw tensor error.

Out-of-image coordinates have one policy, here, for the library and every server route alike: points
and box corners are clipped to the image (`[0, W] x [0, H]` in pixels, `[0, 1]` when normalised). A box
that sticks out of the image keeps its visible part; a click past the edge lands on the edge. Clipping
never fails, so one client's prompt cannot fail a decoder batch it shares with other requests.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from segany.errors import InvalidPrompt
from segany.model.prompt_encoder import LABEL_BOX_BOTTOM_RIGHT, LABEL_BOX_TOP_LEFT

VALID_LABELS = (-1, 0, 1, 2, 3)  # padding, negative, positive, box top-left, box bottom-right


@dataclass(frozen=True)
class PromptBatch:
    """B prompts ready for the decoder: box corners first, then clicks, in the model input frame."""

    coords_xy: torch.Tensor | None  # (B, N, 2) float32
    labels: torch.Tensor | None  # (B, N) int32
    mask_input: torch.Tensor | None  # (B or 1, 1, 256, 256) float32

    @property
    def batch_size(self) -> int:
        if self.coords_xy is not None:
            return self.coords_xy.shape[0]
        return self.mask_input.shape[0] if self.mask_input is not None else 1


def _as_float_array(value, field: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidPrompt(f"{field} must be numeric: {exc}", field) from exc
    if not np.isfinite(arr).all():
        raise InvalidPrompt(f"{field} contains NaN or infinite values", field)
    return arr


def _points(point_coords, point_labels) -> tuple[np.ndarray, np.ndarray]:
    """-> coords (B, N, 2), labels (B, N)."""
    coords = _as_float_array(point_coords, "point_coords")
    if coords.ndim == 2:
        coords = coords[None]
    if coords.ndim != 3 or coords.shape[-1] != 2 or coords.shape[1] == 0 or coords.shape[0] == 0:
        raise InvalidPrompt(f"point_coords must have shape (N, 2) or (B, N, 2) with N >= 1, got {np.shape(point_coords)}",
                            "point_coords")
    if point_labels is None:
        raise InvalidPrompt("point_labels is required when point_coords is given (1 positive, 0 negative)", "point_labels")
    labels = _as_float_array(point_labels, "point_labels")
    if labels.ndim == 1:
        labels = labels[None]
    if labels.shape != coords.shape[:2]:
        raise InvalidPrompt(f"point_labels shape {np.shape(point_labels)} does not match point_coords "
                            f"{np.shape(point_coords)}: one label per point", "point_labels")
    if not np.isin(labels, VALID_LABELS).all():
        bad = sorted(set(labels[~np.isin(labels, VALID_LABELS)].tolist()))[:5]
        raise InvalidPrompt(f"point_labels must be 1 (positive), 0 (negative) or -1 (padding); got {bad}", "point_labels")
    return coords, labels.astype(np.int32)


def _boxes(box) -> np.ndarray:
    """-> corners (B, 2, 2) as [[x0, y0], [x1, y1]]."""
    arr = _as_float_array(box, "box")
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[-1] != 4 or arr.shape[0] == 0:
        raise InvalidPrompt(f"box must have shape (4,) or (B, 4) as x0, y0, x1, y1; got {np.shape(box)}", "box")
    if (arr[:, 2] < arr[:, 0]).any() or (arr[:, 3] < arr[:, 1]).any():
        raise InvalidPrompt("box must be x0, y0, x1, y1 with x0 <= x1 and y0 <= y1", "box")
    return arr.reshape(-1, 2, 2)


def _mask_input(mask_input, mask_hw: tuple[int, int]) -> np.ndarray:
    arr = _as_float_array(mask_input, "mask_input")
    while arr.ndim < 4:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[1] != 1 or tuple(arr.shape[2:]) != mask_hw:
        raise InvalidPrompt(f"mask_input must be low-res logits of shape (1, {mask_hw[0]}, {mask_hw[1]}) or "
                            f"(B, 1, {mask_hw[0]}, {mask_hw[1]}); got {np.shape(mask_input)}", "mask_input")
    return arr


def clip_to_image(coords_xy: np.ndarray, orig_hw: tuple[int, int], normalized: bool = False) -> np.ndarray:
    """(..., 2) x, y clipped to the image: [0, W] x [0, H] pixels, or [0, 1] when `normalized`."""
    upper = np.array([1.0, 1.0]) if normalized else np.array([orig_hw[1], orig_hw[0]], dtype=np.float64)
    return np.clip(coords_xy, 0.0, upper)


def _broadcast_batch(sizes: dict[str, int]) -> int:
    """Prompt parts may have batch B or 1 (shared by every row); anything else is ambiguous."""
    big = {n for n in sizes.values() if n != 1}
    if len(big) > 1:
        shown = ", ".join(f"{k}: {v}" for k, v in sizes.items())
        raise InvalidPrompt(f"prompt batch sizes disagree ({shown}); each must be B or 1", next(iter(sizes)))
    return big.pop() if big else 1


def prepare_prompts(
    point_coords, point_labels, box, mask_input, *, orig_hw: tuple[int, int], image_size: int,
    mask_hw: tuple[int, int], normalize_coords: bool = True, device: torch.device | str = "cpu",
) -> PromptBatch:
    """Validate prompts and map them to the model input frame.

    Coordinates are pixels of the original image when `normalize_coords` (the official meaning), else
    already in [0, 1]; either way they are clipped to the image (see the module docstring). Several
    boxes may each carry their own points: box (B, 4) with points (B, N, 2).
    """
    if point_coords is None and point_labels is not None:
        raise InvalidPrompt("point_labels given without point_coords", "point_labels")
    coords = labels = corners = None
    sizes: dict[str, int] = {}
    if point_coords is not None:
        coords, labels = _points(point_coords, point_labels)
        sizes["point_coords"] = coords.shape[0]
    if box is not None:
        corners = _boxes(box)
        sizes["box"] = corners.shape[0]
    masks = _mask_input(mask_input, mask_hw) if mask_input is not None else None
    if masks is not None:
        sizes["mask_input"] = masks.shape[0]
    batch = _broadcast_batch(sizes) if sizes else 1

    if corners is not None:
        corner_labels = np.tile(np.array([[LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT]], np.int32), (corners.shape[0], 1))
        if coords is not None:
            corners = np.broadcast_to(corners, (batch, 2, 2))
            corner_labels = np.broadcast_to(corner_labels, (batch, 2))
            coords = np.broadcast_to(coords, (batch, *coords.shape[1:]))
            labels = np.broadcast_to(labels, (batch, labels.shape[1]))
            coords = np.concatenate([corners, coords], axis=1)
            labels = np.concatenate([corner_labels, labels], axis=1)
        else:
            coords, labels = corners, corner_labels
    elif coords is not None and batch != coords.shape[0]:
        coords = np.broadcast_to(coords, (batch, *coords.shape[1:]))
        labels = np.broadcast_to(labels, (batch, labels.shape[1]))

    coords_t = labels_t = None
    if coords is not None:
        coords = clip_to_image(coords, orig_hw, normalized=not normalize_coords)
        h, w = orig_hw
        scale = np.array([image_size / w, image_size / h]) if normalize_coords else np.array([image_size, image_size])
        coords_t = torch.as_tensor(coords * scale, dtype=torch.float32, device=device)
        labels_t = torch.as_tensor(np.ascontiguousarray(labels), dtype=torch.int32, device=device)
    masks_t = torch.as_tensor(masks, dtype=torch.float32, device=device) if masks is not None else None

    return PromptBatch(coords_t, labels_t, masks_t)
