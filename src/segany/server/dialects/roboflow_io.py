"""Roboflow image inputs and mask outputs.

Images: `base64` (plain or data URI), `url` (only when the server allows fetching), `numpy` as a
nested list (H, W, 3) of 0..255 or base64 of an `.npy` file. Pickled arrays and `pil` objects, which
Roboflow's server unpickles, are refused: unpickling client data runs arbitrary code.
"""
from __future__ import annotations

import io
from typing import Any

import numpy as np
from fastapi.responses import Response

from segany.errors import InvalidImage
from segany.io.images import decode_base64_image
from segany.io.masks import mask_to_polygons, polygons_to_coco
from segany.io.rle import coco_encode
from segany.server.engine.engine import DecodedImage, Engine, PromptOutput
from segany.server.http.image_source import ImageSource
from segany.server.http.mask_encoding import finite_float

_NPY_MAGIC = b"\x93NUMPY"


def _check_npy_header(raw: bytes, max_pixels: int) -> None:
    """Refuse an `.npy` whose header declares more than an (H, W, 4) image of `max_pixels`, or more data
    than it holds, before NumPy allocates the declared shape."""
    stream = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(stream)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = reader(stream)
    except (ValueError, SyntaxError, TypeError) as error:
        raise InvalidImage(f"image: unreadable .npy header ({error})", "image") from None
    count = int(np.prod(shape, dtype=object))
    if count > 4 * max_pixels:
        raise InvalidImage(f"image: the .npy array has shape {tuple(shape)}, more than the pixel limit of "
                           f"{max_pixels}", "image")
    if count * dtype.itemsize > len(raw):
        raise InvalidImage(f"image: the .npy header declares shape {tuple(shape)} but the data is shorter", "image")


def _numpy_image(value: Any, max_pixels: int) -> np.ndarray:
    if isinstance(value, list):
        try:
            array = np.asarray(value)
        except ValueError as error:
            raise InvalidImage(f"image.value: not a rectangular array ({error})", "image") from None
        if array.size > 3 * max_pixels:
            raise InvalidImage("image.value: the array is larger than the pixel limit", "image")
        return array
    if isinstance(value, str):
        raw = decode_base64_image(value, field="image")
        if not raw.startswith(_NPY_MAGIC):
            raise InvalidImage("image: numpy input must be a nested list or base64 of an .npy file "
                               "(pickles are refused)", "image")
        _check_npy_header(raw, max_pixels)
        try:
            return np.load(io.BytesIO(raw), allow_pickle=False)
        except ValueError as error:
            raise InvalidImage(f"image: unreadable .npy data ({error})", "image") from None
    raise InvalidImage("image.value: numpy input must be a nested list or base64 .npy text", "image")


async def decode_request_image(engine: Engine, kind: str, value: Any) -> DecodedImage:
    """Decode a Roboflow `{"type", "value"}` image into RGB pixels."""
    if kind in ("base64", "url"):
        if not isinstance(value, str):
            raise InvalidImage("image.value: base64 images are text" if kind == "base64" else
                               "image.value: expected a URL string", "image")
        return await ImageSource("inline" if kind == "base64" else "url", value, "image").decode(engine)
    if kind == "numpy":
        array = _numpy_image(value, engine.settings.max_image_pixels)
        return await engine.decode_image(array, "image")
    raise InvalidImage(f"image.type {kind!r} is not accepted (it would unpickle client data); "
                       "send base64, url or numpy", "image")


def prediction_entry(mask: np.ndarray, score: float, fmt: str) -> dict[str, Any]:
    """One prompt's best mask as Roboflow's `{masks, confidence, format}`."""
    if fmt == "rle":
        return {"masks": coco_encode(mask), "confidence": finite_float(score), "format": "rle"}
    polygons = []
    for flat in polygons_to_coco(mask_to_polygons(mask)):
        points = np.asarray(flat).reshape(-1, 2).round().astype(int)
        polygons.append(points.tolist())
    return {"masks": polygons, "confidence": finite_float(score), "format": "polygon"}


def binary_response(outputs: list[PromptOutput], best: list[int]) -> Response:
    """`np.savez_compressed(masks=(P, H, W), low_res_masks=(P, 256, 256))` float32 logits of the best masks."""
    masks = np.stack([out.masks[choice] for out, choice in zip(outputs, best)])
    low_res = np.stack([out.low_res_logits[choice] for out, choice in zip(outputs, best)])
    buffer = io.BytesIO()
    np.savez_compressed(buffer, masks=masks, low_res_masks=low_res)
    return Response(buffer.getvalue(), media_type="application/octet-stream")
