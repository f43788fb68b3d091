"""The native API: `/v1/embed`, `/v1/segment`, `/v1/auto` (JSON or multipart), documented in docs/api.md.

Errors are `{"error": {"code", "message", "field"}}` with the status from `segany.server.http.errors`.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from segany.errors import InvalidImage, InvalidInput
from segany.io.masks import mask_to_png_base64, mask_to_polygons
from segany.io.rle import coco_encode
from segany.server.context import server_context
from segany.server.dialects.dialect import Dialect
from segany.predict.types import Detections
from segany.server.dialects.native_labelled import detection_boxes, label_fields, text_boxes
from segany.server.dialects.native_schemas import (
    AutoIn, AutoOut, EmbedIn, EmbedOut, ErrorOut, SegmentIn, SegmentOut,
)
from segany.server.engine.engine import DecodedImage, EmbedResult, Engine, PromptOutput
from segany.server.http.errors import ErrorInfo, ImageIdNotFound
from segany.server.http.image_source import image_from_text, read_form_or_json
from segany.server.http.limits import Limits
from segany.server.http.openapi import body_schema
from segany.server.http.mask_encoding import finite_float, mask_entries
from segany.server.http.prompt_fields import make_prompt

PATH_PREFIXES = ("/v1/",)
router = APIRouter(tags=["native"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 403, 404, 413, 422, 503, 504)
}


def error_response(info: ErrorInfo) -> JSONResponse:
    body = {"error": {"code": info.code, "message": info.message, "field": info.field}}
    return JSONResponse(body, status_code=info.status, headers=info.headers)


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


async def _decoded(engine: Engine, image_text: str | None, upload: bytes | None) -> DecodedImage:
    if upload is not None:
        return await engine.decode_image(upload, "image")
    if image_text:
        return await image_from_text(engine, image_text, "image")
    raise InvalidImage("image: send an image (base64 JSON field or multipart file)", "image")


async def _embedding(engine: Engine, fields: Any, upload: bytes | None, image_id: str | None,
                     timing: dict[str, float], owner: str | None) -> EmbedResult:
    """The request's embedding: cached by image_id when possible, else decoded and embedded.

    Decoded images are remembered (`engine.recent_images`) for text prompts that later arrive with only
    the image_id. Ids are the key's own (`owner`): the image_id of an image another key embedded is not found.
    """
    if image_id:
        try:
            return engine.lookup(image_id, fields.model, owner)
        except ImageIdNotFound:
            if upload is None and not fields.image:
                raise
    start = time.perf_counter()
    image = await _decoded(engine, fields.image, upload)
    timing["decode_image"] = _ms(start)
    engine.recent_images.put(image)
    result = await engine.embed(image, fields.model)
    engine.name_image(image.digest, image.digest, owner)
    timing["embed"] = round(result.embed_ms, 3)
    return result


def _segment_results(outputs: list[PromptOutput], fmt: str) -> list[dict[str, Any]]:
    return [{"masks": mask_entries(out.masks, out.scores, fmt, out.low_res_logits)} for out in outputs]


@router.post("/v1/embed", openapi_extra=body_schema(EmbedIn), responses={200: {"model": EmbedOut}, **_ERRORS})
async def embed(request: Request) -> JSONResponse:
    """Embed an image once; later /v1/segment calls pass the returned `image_id` instead of the image."""
    context = server_context(request)
    engine, owner = context.engine, context.api_key_id(request)
    fields, upload = await read_form_or_json(request)
    body = EmbedIn.model_validate(fields)

    async def work() -> tuple[EmbedResult, dict[str, float]]:
        timing: dict[str, float] = {}
        return await _embedding(engine, body, upload, None, timing, owner), timing

    start = time.perf_counter()
    result, timing = await engine.run(work)
    timing["total"] = _ms(start)
    height, width = result.embedding.orig_hw
    return JSONResponse({"image_id": result.image_id, "model": result.variant, "width": width, "height": height,
                         "cached": result.cached, "timing_ms": timing})


@router.post("/v1/segment", openapi_extra=body_schema(SegmentIn, json_fields=("prompts", "detections")),
             responses={200: {"model": SegmentOut}, **_ERRORS})
async def segment(request: Request) -> JSONResponse:
    """Masks for point / box / mask prompts, a text prompt, or detector boxes, on an image or an `image_id`.

    Point/box results come first in request order, masks sorted by score; then one result per detected or
    given box, each with its label fields (`label` + `detector_score` for text; `class`, `class_id`,
    `confidence`, `parent_id` for detections).
    """
    context = server_context(request)
    engine, limits = context.engine, context.limits
    fields, upload = await read_form_or_json(request, json_fields=("prompts", "detections"))
    body = SegmentIn.model_validate(fields)
    if not body.prompts and body.text is None and body.detections is None:
        raise InvalidInput("send at least one of 'prompts', 'text' or 'detections'", "prompts")
    limits.check_prompt_count(len(body.prompts) + len(body.detections or ()))
    prompts = [make_prompt(p.points, p.labels, p.box, p.model_dump()["mask_input"], field=f"prompts[{i}]",
                           limits=limits) for i, p in enumerate(body.prompts)]
    given = detection_boxes(body.detections) if body.detections is not None else None
    if upload is None and not body.image and not body.image_id:
        raise InvalidImage("image: send an image or an image_id from /v1/embed", "image")

    async def work() -> tuple[EmbedResult, list[dict[str, Any]], dict[str, float]]:
        timing: dict[str, float] = {}
        embedded = await _embedding(engine, body, upload, body.image_id, timing, context.api_key_id(request))
        start = time.perf_counter()
        outputs = await engine.predict(embedded, prompts, body.multimask) if prompts else []
        results = await asyncio.to_thread(_segment_results, outputs, body.format)
        labelled = [given] if given is not None else []
        if body.text is not None:
            detect_start = time.perf_counter()
            labelled.append(await text_boxes(engine, engine.recent_images.get(embedded.image_id), body.text,
                                             body.box_threshold, body.text_threshold))
            timing["detect"] = _ms(detect_start)
        for boxes in labelled:
            results += await _labelled_results(engine, embedded, boxes, body.min_score, body.format, limits)
        timing["decode"] = _ms(start)
        return embedded, results, timing

    start = time.perf_counter()
    embedded, results, timing = await engine.run(work)
    timing["total"] = _ms(start)
    height, width = embedded.embedding.orig_hw
    return JSONResponse({"image_id": embedded.image_id, "model": embedded.variant, "width": width, "height": height,
                         "results": results, "timing_ms": timing})


async def _labelled_results(engine: Engine, embedded: EmbedResult, boxes: Detections, min_score: float,
                            fmt: str, limits: Limits) -> list[dict[str, Any]]:
    """One single-mask result per box, with the box's label fields; masks below `min_score` dropped."""
    if len(boxes) == 0:
        return []
    prompts = [make_prompt(box=box.tolist(), field=f"boxes[{i}]", limits=limits) for i, box in enumerate(boxes.xyxy)]
    outputs = await engine.predict(embedded, prompts, False)
    kept = [(out, label) for out, label in zip(outputs, label_fields(boxes)) if float(out.scores[0]) >= min_score]
    encoded = await asyncio.to_thread(_segment_results, [out for out, _ in kept], fmt)
    return [{**label, **entry} for (_, label), entry in zip(kept, encoded)]


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return finite_float(value)
    return value


def _auto_records(records: list[dict[str, Any]], fmt: str) -> list[dict[str, Any]]:
    """Official AMG records with `segmentation` replaced by the requested encoding."""
    out = []
    for record in records:
        mask = record["segmentation"]
        entry = {key: _jsonable(value) for key, value in record.items() if key != "segmentation"}
        if fmt == "rle":
            entry["rle"] = mask if isinstance(mask, dict) else coco_encode(np.asarray(mask))
        elif fmt == "png":
            entry["png"] = mask_to_png_base64(np.asarray(mask))
        else:
            entry["polygons"] = [polygon.to_dict() for polygon in mask_to_polygons(np.asarray(mask))]
        out.append(entry)
    return out


@router.post("/v1/auto", openapi_extra=body_schema(AutoIn, json_fields=("point_grids",)),
             responses={200: {"model": AutoOut}, **_ERRORS})
async def auto(request: Request) -> JSONResponse:
    """Automatic mask generation ("segment everything") with every `segany.MaskGenerator` parameter."""
    context = server_context(request)
    engine = context.engine
    fields, upload = await read_form_or_json(request, json_fields=("point_grids",))
    body = AutoIn.model_validate(fields)
    params = body.generator_params(context.auto_defaults)
    engine.check_generate(params)
    params["output_mode"] = "coco_rle" if body.format == "rle" else "binary_mask"

    async def work() -> tuple[DecodedImage, str, list[dict[str, Any]], dict[str, float]]:
        timing: dict[str, float] = {}
        start = time.perf_counter()
        image = await _decoded(engine, body.image, upload)
        timing["decode_image"] = _ms(start)
        start = time.perf_counter()
        variant = engine.pool.resolve(body.model)
        records = await engine.generate(image, variant, params)
        engine.name_image(image.digest, image.digest, context.api_key_id(request))
        timing["generate"] = _ms(start)
        start = time.perf_counter()
        encoded = await asyncio.to_thread(_auto_records, records, body.format)
        timing["encode"] = _ms(start)
        return image, variant, encoded, timing

    start = time.perf_counter()
    image, variant, records, timing = await engine.run(work)
    timing["total"] = _ms(start)
    height, width = image.size_hw
    return JSONResponse({"image_id": image.digest, "model": variant, "width": width, "height": height,
                         "records": records, "timing_ms": timing})


DIALECT = Dialect("native", router, PATH_PREFIXES, error_response)
