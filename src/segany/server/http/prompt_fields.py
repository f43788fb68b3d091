"""Turning request prompt fields into engine `Prompt`s, with checks that name the offending field.

Coordinates are bounded (|v| <= 1e6 pixels) so that no finite-but-absurd value can overflow the
model's positional encoding into NaNs; the predictor checks the remaining shape rules.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from segany.errors import InvalidPrompt
from segany.server.engine.engine import Prompt
from segany.server.http.limits import Limits
from segany.server.http.mask_encoding import check_logits, decode_logits

MAX_ABS_COORD = 1e6


def check_coords(array: np.ndarray, field: str) -> None:
    if not np.isfinite(array).all() or (np.abs(array) > MAX_ABS_COORD).any():
        raise InvalidPrompt(f"{field}: coordinates must be finite pixels within +-{MAX_ABS_COORD:g}", field)


def make_prompt(points: Any = None, labels: Any = None, box: Any = None, mask_input: Any = None, *,
                field: str, limits: Limits) -> Prompt:
    """A `Prompt` from points [[x, y], ...], labels [1|0|-1, ...], box [x0, y0, x1, y1], mask_input.

    `field` is the prompt's path in the request (e.g. "prompts[2]"), used in every error message.
    """
    points_xy = labels_array = box_xyxy = mask = None
    if points is not None and len(points) > 0:
        try:
            points_xy = np.asarray(points, dtype=np.float64)
        except (TypeError, ValueError):
            raise InvalidPrompt(f"{field}.points: expected [[x, y], ...]", f"{field}.points") from None
        if points_xy.ndim != 2 or points_xy.shape[1] != 2:
            raise InvalidPrompt(f"{field}.points: expected [[x, y], ...]", f"{field}.points")
        check_coords(points_xy, f"{field}.points")
        limits.check_point_count(len(points_xy), f"{field}.points")
        if labels is None:
            labels_array = np.ones(len(points_xy), dtype=np.int32)  # unlabeled clicks are positive
        else:
            labels_array = np.asarray(labels, dtype=object)
            if labels_array.shape != (len(points_xy),):
                raise InvalidPrompt(
                    f"{field}.labels: {labels_array.size} labels for {len(points_xy)} points; give one per point",
                    f"{field}.labels",
                )
            if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v in (-1, 0, 1)
                       for v in labels_array):
                raise InvalidPrompt(f"{field}.labels: each label must be 1 (positive), 0 (negative) or -1",
                                    f"{field}.labels")
            labels_array = labels_array.astype(np.int32)
    elif labels is not None and len(labels) > 0:
        raise InvalidPrompt(f"{field}.labels: labels given without points", f"{field}.labels")
    if box is not None:
        try:
            box_xyxy = np.asarray(box, dtype=np.float64)
        except (TypeError, ValueError):
            raise InvalidPrompt(f"{field}.box: expected [x0, y0, x1, y1]", f"{field}.box") from None
        if box_xyxy.shape != (4,):
            raise InvalidPrompt(f"{field}.box: expected [x0, y0, x1, y1]", f"{field}.box")
        check_coords(box_xyxy, f"{field}.box")
        if box_xyxy[2] < box_xyxy[0] or box_xyxy[3] < box_xyxy[1]:
            raise InvalidPrompt(f"{field}.box: expected x0 <= x1 and y0 <= y1", f"{field}.box")
    if mask_input is not None:
        mask = decode_logits(mask_input, f"{field}.mask_input")
        check_logits(mask, f"{field}.mask_input")
    return Prompt(points_xy, labels_array, box_xyxy, mask)
