"""Hugging Face `image-segmentation` dialect: `POST /models/{model_id}` and `POST /` (Inference Endpoint).

Body: raw image bytes, or JSON `{"inputs": <base64 image>, "parameters": {...}}`. The answer is
`[{"label", "mask", "score"}]` from automatic mask generation, best score first: `mask` is a base64
PNG (mode L, 0/255, original size), `label` is `object_<rank>`, `score` the predicted IoU. Parameters:

- `threshold` -> the generator's `pred_iou_thresh` (masks below it are dropped);
- `mask_threshold` is a probability in (0, 1): the logit threshold is log(p / (1 - p)), so the
  default 0.5 is SAM's own 0.0;
- `overlap_mask_area_threshold`: going down the ranking, a mask is dropped when the share of its area
  not already covered by better masks is below this value;
- `subtask`: "instance" (default) keeps overlapping masks; "panoptic" and "semantic" give every pixel
  to its best-scoring mask, so the masks are disjoint.

Any other `segany.MaskGenerator` parameter (e.g. `points_per_side`) is also accepted in `parameters`.
Errors are `{"error": "..."}`. A model that is not loaded yet is loaded while the request waits (as
with `x-wait-for-model: true`).
"""
from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from segany.errors import InvalidInput
from segany.io.masks import mask_to_png_base64
from segany.server.dialects.auto_params import AutoParams, auto_params_with_defaults
from segany.server.context import server_context
from segany.server.dialects.dialect import Dialect
from segany.server.http.errors import ErrorInfo
from segany.server.http.image_source import image_from_text
from segany.server.http.openapi import body_schema
from segany.server.http.mask_encoding import finite_float

PATH_PREFIXES = ("/models/",)
EXACT_PATHS = ("/",)
router = APIRouter(tags=["huggingface"])


class SegmentationParameters(AutoParams):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    mask_threshold: float | None = Field(None, gt=0.0, lt=1.0, description="probability threshold for masks")
    overlap_mask_area_threshold: float | None = Field(None, ge=0.0, le=1.0)
    subtask: str | None = Field(None, description="instance (default), panoptic or semantic")
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="minimum predicted IoU")


class SegmentationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: str = Field(description="base64 image (or an http(s) URL when the server allows it)")
    parameters: SegmentationParameters | None = None


class SegmentOut(BaseModel):
    label: str
    mask: str
    score: float | None = None


class HFError(BaseModel):
    error: str


def error_response(info: ErrorInfo) -> JSONResponse:
    return JSONResponse({"error": info.message}, status_code=info.status, headers=info.headers)


def _generator_params(parameters: SegmentationParameters, defaults: dict[str, Any]) -> dict[str, Any]:
    # mask_threshold means a probability here, not the generator's logit threshold.
    params = auto_params_with_defaults(parameters, defaults, exclude=("mask_threshold",))
    if parameters.threshold is not None:
        params["pred_iou_thresh"] = parameters.threshold
    if parameters.mask_threshold is not None:
        p = parameters.mask_threshold
        params["mask_threshold"] = math.log(p / (1.0 - p))
    params["output_mode"] = "binary_mask"
    return params


def _drop_overlapping(masks: list[np.ndarray], keep_share: float) -> list[int]:
    """Indices (in ranking order) of masks whose not-yet-covered share of area is >= keep_share."""
    kept: list[int] = []
    covered: np.ndarray | None = None
    for index, mask in enumerate(masks):
        area = int(mask.sum())
        fresh = int((mask & ~covered).sum()) if covered is not None else area
        if area == 0 or fresh / area < keep_share:
            continue
        kept.append(index)
        covered = mask.copy() if covered is None else covered | mask
    return kept


def _answer(records: list[dict[str, Any]], parameters: SegmentationParameters) -> list[dict[str, Any]]:
    records = sorted(records, key=lambda r: -float(r["predicted_iou"]))
    masks = [np.asarray(r["segmentation"], dtype=bool) for r in records]
    scores = [finite_float(r["predicted_iou"]) for r in records]
    if parameters.overlap_mask_area_threshold is not None:
        keep = _drop_overlapping(masks, parameters.overlap_mask_area_threshold)
        masks, scores = [masks[i] for i in keep], [scores[i] for i in keep]
    if parameters.subtask in ("panoptic", "semantic") and masks:
        # Each pixel goes to the best mask covering it: masks are ranked, so the first True wins.
        stack = np.stack(masks)
        owner = np.where(stack.any(axis=0), stack.argmax(axis=0), -1)
        masks = [owner == i for i in range(len(masks))]
        kept = [i for i, mask in enumerate(masks) if mask.any()]
        masks, scores = [masks[i] for i in kept], [scores[i] for i in kept]
    return [{"label": f"object_{rank}", "mask": mask_to_png_base64(mask), "score": score}
            for rank, (mask, score) in enumerate(zip(masks, scores))]


async def _segment(request: Request, model_id: str | None) -> JSONResponse:
    context = server_context(request)
    engine = context.engine
    body = await request.body()
    if not body:
        raise InvalidInput("inputs: empty request body; send image bytes or JSON {\"inputs\": <base64>}", "inputs")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    parameters = SegmentationParameters()
    image_text: str | None = None
    if content_type == "application/json" or (not content_type and body[:1] == b"{"):
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError) as error:
            raise InvalidInput(f"body: not valid JSON ({error})", "body") from None
        request_in = SegmentationIn.model_validate(document)
        image_text = request_in.inputs
        parameters = request_in.parameters or parameters
    if parameters.subtask not in (None, "instance", "panoptic", "semantic"):
        raise InvalidInput(f"subtask must be instance, panoptic or semantic, got {parameters.subtask!r}", "subtask")
    params = _generator_params(parameters, context.auto_defaults)
    engine.check_generate(params)

    async def work() -> list[dict[str, Any]]:
        if image_text is None:
            image = await engine.decode_image(body, "inputs")
        else:
            image = await image_from_text(engine, image_text, "inputs")
        records = await engine.generate(image, model_id, params)
        return await asyncio.to_thread(_answer, records, parameters)

    return JSONResponse(await engine.run(work))


_DOCS: dict[str, Any] = {
    "openapi_extra": body_schema(SegmentationIn, multipart=False, extra_content={
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    }),
    "responses": {200: {"model": list[SegmentOut]}, 400: {"model": HFError}, 404: {"model": HFError},
                  413: {"model": HFError}, 422: {"model": HFError}},
}


@router.post("/models/{model_id:path}", **_DOCS)
async def segment_model(request: Request, model_id: str) -> JSONResponse:
    """Image segmentation with the named model (a variant or Hugging Face id, e.g. facebook/sam2.1-hiera-tiny)."""
    return await _segment(request, model_id)


@router.post("/", **_DOCS)
async def segment_endpoint(request: Request) -> JSONResponse:
    """Image segmentation with the server's default model (Inference Endpoint style)."""
    return await _segment(request, None)


DIALECT = Dialect("huggingface", router, PATH_PREFIXES, error_response, exact_paths=EXACT_PATHS)
