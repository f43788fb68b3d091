"""Livepeer AI runner dialect: `POST /segment-anything-2` (multipart), as `livepeer-ai` clients call it.

Request: `image` (file), `model_id` ("" = the server's model), `point_coords`, `point_labels`, `box`,
`mask_input` (JSON-array strings), `multimask_output`, `return_logits`, `normalize_coords` (booleans,
default true). Response: `{"masks", "scores", "logits"}`, each a string holding a nested JSON array;
masks are sorted by score (highest first) within each prompt row (Livepeer's runner sorts a batch of
boxes wrongly; segany sorts each row). With `return_logits` (the default) "masks" holds full-size
logits, else 0.0/1.0 values. Errors: `{"detail": {"msg": "..."}}`; request validation keeps
FastAPI's 422 shape, as the runner does.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from segany.errors import InvalidPrompt
from segany.predict.types import Prediction
from segany.server.context import server_context
from segany.server.dialects.dialect import Dialect
from segany.server.http.errors import ErrorInfo
from segany.server.http.mask_encoding import check_logits
from segany.server.http.prompt_fields import check_coords

PATH_PREFIXES = ("/segment-anything-2",)
router = APIRouter(tags=["livepeer"])


class APIErrorBody(BaseModel):
    msg: str


class HTTPErrorOut(BaseModel):
    detail: APIErrorBody


class MasksResponse(BaseModel):
    masks: str
    scores: str
    logits: str


def error_response(info: ErrorInfo) -> JSONResponse:
    return JSONResponse({"detail": {"msg": info.message}}, status_code=info.status, headers=info.headers)


def _parse_array(text: str | None, field: str) -> np.ndarray | None:
    """A form field's JSON array as float64, or None when absent/empty."""
    if text is None or not text.strip():
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as error:  # RecursionError: nested too deeply
        raise InvalidPrompt(f"Error parsing JSON for {field}: {error}", field) from None
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InvalidPrompt(f"{field} must be a (nested) array of numbers: {error}", field) from None
    return array


def _check(arrays: dict[str, np.ndarray | None]) -> None:
    for name in ("point_coords", "box"):
        if arrays[name] is not None:
            check_coords(arrays[name], name)
    if arrays["point_labels"] is not None and not np.isin(arrays["point_labels"], (-1, 0, 1)).all():
        raise InvalidPrompt("point_labels must be 1 (foreground), 0 (background) or -1", "point_labels")
    if arrays["mask_input"] is not None:
        check_logits(arrays["mask_input"], "mask_input")


def _sorted_strings(prediction: Prediction, return_logits: bool) -> dict[str, str]:
    """Sort masks/scores/logits by score within each row; render each as JSON-array text."""
    scores = np.nan_to_num(prediction.scores.astype(np.float64), nan=0.0)
    order = np.argsort(-scores, axis=-1, kind="stable")
    masks = np.take_along_axis(prediction.masks, order.reshape(*order.shape, 1, 1), axis=-3)
    logits = np.take_along_axis(prediction.low_res_logits, order.reshape(*order.shape, 1, 1), axis=-3)
    masks = masks.astype(np.float32) if not return_logits else np.nan_to_num(masks)
    return {
        "masks": json.dumps(masks.tolist()),
        "scores": json.dumps(np.take_along_axis(scores, order, axis=-1).tolist()),
        "logits": json.dumps(np.nan_to_num(logits).tolist()),
    }


@router.post(
    "/segment-anything-2",
    response_model=None,
    responses={200: {"model": MasksResponse}, 400: {"model": HTTPErrorOut}, 401: {"model": HTTPErrorOut},
               500: {"model": HTTPErrorOut}},
)
async def segment_anything_2(
    request: Request,
    image: UploadFile = File(..., description="Image to segment."),
    model_id: str = Form("", description="Model to use; empty for the server's default."),
    point_coords: str | None = Form(None, description="Nx2 (or BxNx2) JSON array of [x, y] points."),
    point_labels: str | None = Form(None, description="N (or BxN) JSON array: 1 foreground, 0 background."),
    box: str | None = Form(None, description="[x0, y0, x1, y1] (or Bx4) JSON array."),
    mask_input: str | None = Form(None, description="1x256x256 JSON array of low-res logits."),
    multimask_output: bool = Form(True),
    return_logits: bool = Form(True),
    normalize_coords: bool = Form(True),
) -> JSONResponse:
    """Segment objects in an image (Livepeer `genSegmentAnything2`)."""
    engine = server_context(request).engine
    arrays = {name: _parse_array(text, name) for name, text in (
        ("point_coords", point_coords), ("point_labels", point_labels), ("box", box), ("mask_input", mask_input))}
    _check(arrays)
    engine.limits.check_raw_arrays(arrays["point_coords"], arrays["box"])  # before the image is even decoded
    if arrays["point_labels"] is not None:
        arrays["point_labels"] = arrays["point_labels"].astype(np.int32)
    data = await image.read()

    async def work() -> dict[str, Any]:
        decoded = await engine.decode_image(data, "image")
        embedded = await engine.embed(decoded, model_id or None)
        prediction = await engine.predict_raw(embedded, multimask_output=multimask_output,
                                              return_logits=return_logits, normalize_coords=normalize_coords,
                                              **arrays)
        return await asyncio.to_thread(_sorted_strings, prediction, return_logits)

    return JSONResponse(await engine.run(work))


# Validation errors keep FastAPI's own 422 list: Livepeer's runner is a FastAPI app.
DIALECT = Dialect("livepeer", router, PATH_PREFIXES, error_response, renders_validation_errors=False)
