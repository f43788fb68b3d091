"""Mask encodings shared by the dialects: COCO RLE, base64 PNG, polygons, low-res logits.

Low-res logits travel as `{"size": [256, 256], "dtype": "float32", "data": <base64 of little-endian
float32, row-major>}`; the same object is accepted back as `mask_input`, so a client can refine a
mask by sending the logits of its previous answer.
"""
from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np

from segany.errors import InvalidPrompt
from segany.io.masks import mask_to_png_base64, mask_to_polygons, masks_to_bboxes_xyxy
from segany.io.rle import coco_encode

MASK_FORMATS = ("rle", "png", "polygon", "logits")
LOW_RES_HW = (256, 256)
# Logits the decoder produces are clamped to +-32; anything far beyond is garbage that would overflow.
MAX_ABS_LOGIT = 1000.0


def finite_float(value: float) -> float:
    """A JSON-safe float: NaN and infinities (possible only with broken weights) become 0.0."""
    value = float(value)
    return value if np.isfinite(value) else 0.0


def encode_logits(logits: np.ndarray) -> dict[str, Any]:
    """(256, 256) float logits -> the JSON object described in the module docstring."""
    array = np.ascontiguousarray(np.nan_to_num(logits, nan=0.0), dtype="<f4")
    return {"size": list(array.shape), "dtype": "float32", "data": base64.b64encode(array.tobytes()).decode("ascii")}


def decode_logits(value: Any, field: str = "mask_input") -> np.ndarray:
    """`mask_input` as a (1, 256, 256) float32 array, from nested lists or an `encode_logits` object."""
    if isinstance(value, dict):
        size = value.get("size")
        if value.get("dtype", "float32") != "float32" or list(size or []) != list(LOW_RES_HW):
            raise InvalidPrompt(f"{field}: expected size [256, 256] and dtype float32", field)
        try:
            raw = base64.b64decode(str(value.get("data", "")), validate=True)
        except (binascii.Error, ValueError) as error:
            raise InvalidPrompt(f"{field}: data is not valid base64 ({error})", field) from None
        if len(raw) != 4 * LOW_RES_HW[0] * LOW_RES_HW[1]:
            raise InvalidPrompt(f"{field}: data holds {len(raw)} bytes, expected {4 * 256 * 256}", field)
        array = np.frombuffer(raw, dtype="<f4").reshape(1, *LOW_RES_HW).astype(np.float32)
    else:
        try:
            array = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError) as error:
            raise InvalidPrompt(f"{field}: must be numbers ({error})", field) from None
        if array.shape == LOW_RES_HW:
            array = array[None]
        if array.shape != (1, *LOW_RES_HW):
            raise InvalidPrompt(f"{field}: expected shape (256, 256) or (1, 256, 256), got {array.shape}", field)
    check_logits(array, field)
    return array


def check_logits(array: np.ndarray, field: str = "mask_input") -> None:
    if not np.isfinite(array).all() or (np.abs(array) > MAX_ABS_LOGIT).any():
        raise InvalidPrompt(f"{field}: logits must be finite and within +-{MAX_ABS_LOGIT:g}", field)


def encode_mask(mask: np.ndarray, fmt: str, low_res_logits: np.ndarray | None = None) -> dict[str, Any]:
    """{"rle"|"png"|"polygons"|"logits": ...} for one (H, W) bool mask."""
    if fmt == "rle":
        return {"rle": coco_encode(mask)}
    if fmt == "png":
        return {"png": mask_to_png_base64(mask)}
    if fmt == "polygon":
        return {"polygons": [polygon.to_dict() for polygon in mask_to_polygons(mask)]}
    if fmt == "logits":
        if low_res_logits is None:
            raise InvalidPrompt("format 'logits' is only available for prompted segmentation", "format")
        return {"logits": encode_logits(low_res_logits)}
    raise InvalidPrompt(f"format must be one of {', '.join(MASK_FORMATS)}, got {fmt!r}", "format")


def mask_entries(masks: np.ndarray, scores: np.ndarray, fmt: str,
                 low_res_logits: np.ndarray | None = None) -> list[dict[str, Any]]:
    """One entry per mask, sorted by score (highest first): score, box_xyxy, area and the encoded mask.

    masks (C, H, W) bool, scores (C,), low_res_logits (C, 256, 256). box_xyxy is inclusive pixels.
    """
    order = np.argsort(-np.nan_to_num(scores.astype(np.float64), nan=-np.inf), kind="stable")
    boxes = masks_to_bboxes_xyxy(masks)
    areas = masks.reshape(masks.shape[0], -1).sum(axis=1)
    entries = []
    for index in order:
        entry: dict[str, Any] = {
            "score": finite_float(scores[index]),
            "box_xyxy": [int(v) for v in boxes[index]],
            "area": int(areas[index]),
        }
        entry.update(encode_mask(masks[index], fmt, None if low_res_logits is None else low_res_logits[index]))
        entries.append(entry)
    return entries
