"""Roboflow inference-server dialect: `POST /sam2/embed_image` and `POST /sam2/segment_image`.

Requests are JSON as `inference_sdk.InferenceHTTPClient` sends them (`api_key` in the body, the query
or a bearer header). `sam2_version_id` hiera_tiny / hiera_small / hiera_b_plus / hiera_large selects
the SAM 2.1 model of that size (Roboflow's legacy server ran SAM 2.0 weights of the same sizes); it
defaults to the server's model. Prompt boxes are centre-based `{x, y, width, height}`; points are
`{x, y, positive}`. A prompt with neither (or no prompts at all) asks for the whole-image mask, as
Roboflow does (one padding point). Each prompt answers with its best mask only.

Formats: `json` (polygons; holes are kept by splicing each hole into its outer ring, which Roboflow's
flat polygon lists allow), `rle` (COCO RLE) or `binary` (an `.npz` with `masks`, full-resolution
logits as Roboflow sends them, and `low_res_masks`, as `application/octet-stream`). Errors are
`{"message": "..."}`.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from segany.errors import InvalidInput
from segany.server.dialects.roboflow_io import binary_response, decode_request_image, prediction_entry
from segany.server.context import server_context
from segany.server.dialects.dialect import Dialect
from segany.server.engine.engine import EmbedResult, Engine, Prompt
from segany.server.http.auth import key_id
from segany.server.http.errors import ErrorInfo
from segany.server.http.limits import Limits
from segany.server.engine.logits_cache import PromptKey
from segany.server.http.openapi import body_schema
from segany.server.http.mask_encoding import decode_logits
from segany.server.http.prompt_fields import make_prompt

PATH_PREFIXES = ("/sam2/",)
router = APIRouter(tags=["roboflow"])

VERSION_TO_VARIANT = {
    "hiera_tiny": "sam2.1_hiera_tiny",
    "hiera_small": "sam2.1_hiera_small",
    "hiera_b_plus": "sam2.1_hiera_base_plus",
    "hiera_large": "sam2.1_hiera_large",
}


class _Lenient(BaseModel):
    # The SDK adds bookkeeping fields (source, usage tags...) that Roboflow's server ignores too.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class InferenceImage(_Lenient):
    type: Literal["base64", "url", "numpy", "pil"] = Field(description="how `value` holds the image")
    value: Any = Field(description="base64 text, a URL, or (numpy) a nested list / base64 .npy file")


class Box(_Lenient):
    x: float = Field(description="centre x")
    y: float = Field(description="centre y")
    width: float = Field(ge=0)
    height: float = Field(ge=0)


class Point(_Lenient):
    x: float
    y: float
    positive: bool


class Sam2Prompt(_Lenient):
    box: Box | None = None
    points: list[Point] | None = None


class Sam2PromptSet(_Lenient):
    prompts: list[Sam2Prompt] | None = None


class Sam2Request(_Lenient):
    api_key: str | None = None
    sam2_version_id: str | None = Field(None, description="hiera_tiny, hiera_small, hiera_b_plus or hiera_large")
    model_id: str | None = Field(None, description="sam2/<version id>, used when sam2_version_id is absent")
    image_id: str | None = None


class Sam2EmbeddingRequest(Sam2Request):
    image: InferenceImage | None = None


class Sam2SegmentationRequest(Sam2Request):
    image: InferenceImage | None = None
    prompts: Sam2PromptSet | list[Sam2Prompt] | Sam2Prompt | None = None
    multimask_output: bool = True
    format: Literal["json", "rle", "binary"] = "json"
    mask_input: list[list[float]] | list[list[list[float]]] | None = Field(
        None, description="256x256 low-res logits applied to every prompt"
    )
    save_logits_to_cache: bool = False
    load_logits_from_cache: bool = False

    def prompt_list(self) -> list[Sam2Prompt]:
        if self.prompts is None:
            return []
        if isinstance(self.prompts, Sam2PromptSet):
            return list(self.prompts.prompts or [])
        return self.prompts if isinstance(self.prompts, list) else [self.prompts]


class EmbedOut(BaseModel):
    image_id: str
    time: float


class PredictionOut(BaseModel):
    masks: Any
    confidence: float
    format: str


class SegmentOut(BaseModel):
    predictions: list[PredictionOut]
    time: float


class RoboflowError(BaseModel):
    message: str


def error_response(info: ErrorInfo) -> JSONResponse:
    return JSONResponse({"message": info.message}, status_code=info.status, headers=info.headers)


def _variant_name(request: Sam2Request) -> str | None:
    version = request.sam2_version_id
    if version is None and request.model_id and request.model_id.startswith("sam2/"):
        version = request.model_id.split("/", 1)[1]
    if version is None:
        return None
    return VERSION_TO_VARIANT.get(version, version)  # a full variant name or HF id is accepted as well


async def _json_body(request: Request, model: type[BaseModel]) -> Any:
    """The body validated as `model`; malformed JSON is a pydantic error too (422)."""
    return model.model_validate_json(await request.body() or b"{}")


def _owner(request: Request, body: Sam2Request) -> str | None:
    """The request's key id: from its headers or query, else the body's `api_key` (inference_sdk's habit)."""
    context = server_context(request)
    found = context.api_key_id(request)
    if found is None and context.settings.api_keys and isinstance(body.api_key, str) and body.api_key:
        found = key_id(body.api_key)  # the middleware has already checked that it is a configured key
    return found


async def _embedded(engine: Engine, request: Sam2Request, image: InferenceImage | None,
                    owner: str | None) -> EmbedResult:
    """The attached image (decoded, embedded, and named `image_id` for this key: a resend under the same id
    updates it), else the cached embedding this key named `image_id`."""
    model = _variant_name(request)
    if image is None:
        if request.image_id:
            return engine.lookup(request.image_id, model, owner)
        raise InvalidInput("image: send an image, or the image_id of an embedded one", "image")
    decoded = await decode_request_image(engine, image.type, image.value)
    result = await engine.embed(decoded, model)
    engine.name_image(decoded.digest, decoded.digest, owner)
    if request.image_id:
        engine.name_image(request.image_id, decoded.digest, owner)
    return result


_ERRORS: dict[int | str, dict[str, Any]] = {c: {"model": RoboflowError} for c in (400, 401, 403, 404, 413, 422, 503)}


@router.post("/sam2/embed_image", openapi_extra=body_schema(Sam2EmbeddingRequest, multipart=False),
             responses={200: {"model": EmbedOut}, **_ERRORS})
async def embed_image(request: Request) -> JSONResponse:
    """Embed an image and cache it under `image_id` (given, or the pixel digest)."""
    engine = server_context(request).engine
    body: Sam2EmbeddingRequest = await _json_body(request, Sam2EmbeddingRequest)
    started = time.perf_counter()
    result = await engine.run(lambda: _embedded(engine, body, body.image, _owner(request, body)))
    return JSONResponse({"image_id": body.image_id or result.image_id, "time": time.perf_counter() - started})


def _prompts(body: Sam2SegmentationRequest, limits: Limits) -> list[Prompt]:
    items = body.prompt_list() or [Sam2Prompt()]
    limits.check_prompt_count(len(items))
    mask = decode_logits(body.mask_input, "mask_input") if body.mask_input is not None else None
    prompts = []
    for index, item in enumerate(items):
        box = None
        if item.box is not None:
            b = item.box
            box = [b.x - b.width / 2, b.y - b.height / 2, b.x + b.width / 2, b.y + b.height / 2]
        points = [[p.x, p.y] for p in item.points] if item.points else None
        labels = [int(p.positive) for p in item.points] if item.points else None
        if box is None and points is None:
            points, labels = [[0.0, 0.0]], [-1]  # Roboflow's "no prompt": a padding point, whole-image mask
        prompts.append(make_prompt(points, labels, box, None, field=f"prompts[{index}]", limits=limits))
        if mask is not None:
            prompts[-1] = Prompt(prompts[-1].points_xy, prompts[-1].labels, prompts[-1].box_xyxy, mask)
    return prompts


@router.post("/sam2/segment_image", openapi_extra=body_schema(Sam2SegmentationRequest, multipart=False),
             responses={200: {"model": SegmentOut, "content": {"application/octet-stream": {}}}, **_ERRORS})
async def segment_image(request: Request) -> Response:
    """Best mask per prompt as polygons (`json`), COCO RLE (`rle`) or an npz file (`binary`)."""
    context = server_context(request)
    engine, limits = context.engine, context.limits
    logits_cache = engine.logits_cache
    body: Sam2SegmentationRequest = await _json_body(request, Sam2SegmentationRequest)
    prompts = _prompts(body, limits)
    owner = _owner(request, body)
    keys = [PromptKey.of(p.points_xy, p.labels, p.box_xyxy) for p in prompts]
    started = time.perf_counter()

    async def work() -> Response:
        embedded = await _embedded(engine, body, body.image, owner)
        ready = list(prompts)
        if body.load_logits_from_cache and body.mask_input is None:
            for index, prompt in enumerate(ready):
                prior = logits_cache.find_prior(embedded.variant, embedded.image_id, keys[index])
                if prior is not None:
                    ready[index] = Prompt(prompt.points_xy, prompt.labels, prompt.box_xyxy, prior)
        # Roboflow's binary format carries full-resolution logits, not thresholded masks.
        outputs = await engine.predict(embedded, ready, body.multimask_output, return_logits=body.format == "binary")
        best = [int(np.argmax(np.nan_to_num(out.scores, nan=-np.inf))) for out in outputs]
        if body.save_logits_to_cache:
            for key, out, choice in zip(keys, outputs, best):
                logits_cache.put(embedded.variant, embedded.image_id, key, out.low_res_logits[choice])
        if body.format == "binary":
            return await asyncio.to_thread(binary_response, outputs, best)
        predictions = await asyncio.to_thread(
            lambda: [prediction_entry(out.masks[choice], out.scores[choice], body.format)
                     for out, choice in zip(outputs, best)])
        return JSONResponse({"predictions": predictions, "time": time.perf_counter() - started})

    return await engine.run(work)


DIALECT = Dialect("roboflow", router, PATH_PREFIXES, error_response)
