"""Segmind's `sam-v2-image`, synchronous (v1) and submit-and-poll (v2), as the `segmind` SDK calls them.

Request (JSON): `image` (base64, data URI, or an http(s) URL when URL fetching is on), `prompt` (text naming
the object), `coordinates` (positive points, `"[x,y]"` or `"[[x,y],...]"`), `remove_coordinates`
(negative points, same format), `overlay_mask` (default true), `base64` (default false). As Segmind
documents, a prompt wins: the coordinates are then ignored (but must still be well formed). One point
picks the best of three candidate masks; several points (or negatives) give one mask. Text goes to the
engine's open-vocabulary detector (`--text-model`, Grounding DINO tiny by default) and the masks of every
box it finds are merged; no box gives an empty mask.

- `POST /v1/sam-v2-image` -> `image/jpeg` (the image with the mask drawn over it, or the mask itself), or
  `{"image": "<base64 JPEG>"}` with `base64`.
- `POST /v2/sam-v2-image` -> `{request_id, status, status_url, response_url}`;
  `GET /v2/requests/{id}/status` -> `{request_id, status}` (`QUEUED`, `PROCESSING`, `COMPLETED`, `FAILED`
  with `error`); `GET /v2/requests/{id}` -> adds `output` (the JPEG's URL, or its base64 with `base64`)
  and `metrics.inference_time`. A failed request is answered with 422, as Segmind's gateway does.

Errors are `{"error": "..."}`; running out of credits is 406 (`x-remaining-credits` is sent whenever the
API key has a quota).
"""
from __future__ import annotations

import asyncio
import base64 as b64
import json
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from segany.errors import InvalidInput, InvalidPrompt
from segany.io.masks import encode_image, overlay_masks
from segany.server.context import ServerContext, server_context
from segany.server.dialects.dialect import Dialect
from segany.server.http.json_body import json_object_body
from segany.server.engine.engine import DecodedImage, Engine, Prompt
from segany.server.http.errors import ErrorInfo, validation_message
from segany.server.http.image_source import classify
from segany.server.http.limits import Limits
from segany.server.jobs.job_images import load_job_image, prepare_image
from segany.server.jobs.service import JobKind, JobService
from segany.server.jobs.store import Job, JobNotFound, JobStatus, iso8601
from segany.server.jobs.storage import read_owned
from segany.server.http.openapi import body_schema
from segany.server.jobs.workers import JobContext

PATH_PREFIXES = ("/v1/sam-v2-image", "/v2/")
SLUG = "sam-v2-image"
KIND = "segmind"
JPEG_QUALITY = 90
router = APIRouter(tags=["segmind"])

_STATUS = {JobStatus.STARTING: "QUEUED", JobStatus.PROCESSING: "PROCESSING", JobStatus.SUCCEEDED: "COMPLETED",
           JobStatus.FAILED: "FAILED", JobStatus.CANCELED: "FAILED"}


class SamV2ImageIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    image: str = Field(description="the image: base64, a data URI, or an http(s) URL (when enabled)")
    prompt: str | None = Field(None, max_length=1000, description="text naming the object; wins over coordinates")
    coordinates: str | list[Any] | None = Field(None, description='positive points: "[x,y]" or "[[x,y],...]"')
    remove_coordinates: str | list[Any] | None = Field(None, description="negative points, same format")
    overlay_mask: bool = Field(True, description="draw the mask over the image (false: return the mask)")
    base64: bool = Field(False, description='answer {"image": "<base64 JPEG>"} instead of JPEG bytes')


class ErrorOut(BaseModel):
    error: str


_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (400, 401, 403, 404, 405, 406, 413)}


def error_response(info: ErrorInfo) -> JSONResponse:
    return JSONResponse({"error": info.message}, status_code=info.status, headers=info.headers)


def parse_request(document: dict[str, Any]) -> SamV2ImageIn:
    """The request body; malformed fields are 400s naming the field, like every Segmind input error."""
    try:
        return SamV2ImageIn.model_validate(document)
    except ValidationError as error:
        message, where = validation_message(error.errors(include_url=False))
        raise InvalidInput(message, where or "body") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_points(value: str | list[Any] | None, field: str) -> np.ndarray:
    """`"[x,y]"`, `"[[x,y],...]"` (or the same as JSON arrays) -> (N, 2) float64 pixels; nothing -> (0, 2)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return np.zeros((0, 2))
    expected = f'{field}: expected "[x,y]" or "[[x,y],...]" with numbers, got {str(value)[:60]!r}'
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise InvalidPrompt(expected, field) from None
    if isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value):
        value = [value]
    if not isinstance(value, list) or not all(
            isinstance(point, list) and len(point) == 2 and all(_is_number(v) for v in point) for point in value):
        raise InvalidPrompt(expected, field)
    points = np.asarray(value, dtype=np.float64).reshape(-1, 2)
    if not np.isfinite(points).all():
        raise InvalidPrompt(f"{field}: coordinates must be finite numbers", field)
    return points


async def segment_mask(engine: Engine, fields: SamV2ImageIn, image: DecodedImage) -> np.ndarray:
    """The request's (H, W) bool mask: from the text prompt if there is one, else from the points."""
    prompt = (fields.prompt or "").strip()
    if prompt:
        found = await engine.segment_text(image, prompt, max_boxes=engine.limits.max_prompts)
        if found.mask is None or len(found) == 0:
            return np.zeros(image.size_hw, dtype=bool)
        return found.mask.any(axis=0)
    positive = parse_points(fields.coordinates, "coordinates")
    negative = parse_points(fields.remove_coordinates, "remove_coordinates")
    if len(positive) + len(negative) == 0:
        raise InvalidPrompt("prompt: give a text prompt or coordinates", "prompt")
    # Points outside the image are clipped to it, as on every route (segany.predict.prompts).
    points = np.concatenate([positive, negative])
    labels = np.concatenate([np.ones(len(positive)), np.zeros(len(negative))]).astype(np.int32)
    embedded = await engine.embed(image)
    [output] = await engine.predict(embedded, [Prompt(points_xy=points, labels=labels)], multimask=len(points) == 1)
    return output.masks[int(np.argmax(output.scores))]


def render_jpeg(image: DecodedImage, mask: np.ndarray, overlay: bool) -> bytes:
    """The image with `mask` drawn over it, or the mask as a black and white picture, as JPEG."""
    pixels = overlay_masks(image.rgb, mask[None]) if overlay else mask
    return encode_image(pixels, "jpeg", quality=JPEG_QUALITY)


async def segment_jpeg(engine: Engine, fields: SamV2ImageIn, image: DecodedImage) -> bytes:
    mask = await segment_mask(engine, fields, image)
    return await asyncio.to_thread(render_jpeg, image, mask, fields.overlay_mask)


def _check_prompt_fields(fields: SamV2ImageIn, limits: Limits) -> None:
    """Malformed coordinates are 400s before any work, even when a text prompt will win over them."""
    positive = parse_points(fields.coordinates, "coordinates")
    negative = parse_points(fields.remove_coordinates, "remove_coordinates")
    limits.check_point_count(len(positive) + len(negative), "coordinates")
    if not (fields.prompt or "").strip() and len(positive) + len(negative) == 0:
        raise InvalidPrompt("prompt: give a text prompt or coordinates", "prompt")


async def _accept(request: Request) -> tuple[ServerContext, SamV2ImageIn, str | None]:
    """The context, the checked request fields and the caller's API key id (the job store must be up)."""
    context = server_context(request)
    context.jobs  # noqa: B018 - a 503 before any work while the job store is starting
    fields = parse_request(await json_object_body(request))
    _check_prompt_fields(fields, context.limits)
    return context, fields, context.api_key_id(request)


@router.post("/v1/sam-v2-image", openapi_extra=body_schema(SamV2ImageIn, multipart=False),
             responses={200: {"content": {"image/jpeg": {}, "application/json": {}}}, **_ERRORS})
async def sam_v2_image(request: Request) -> Response:
    """Segment the object named by `prompt` or `coordinates`; answers the JPEG (or its base64)."""
    context, fields, key_id = await _accept(request)
    jobs = context.jobs
    headers = jobs.charge(key_id)
    # This server's own files are read from storage (never fetched from our own URL).
    source = classify(fields.image, "image", base_url=jobs.base_url(request))

    async def work() -> bytes:
        def read(key: str) -> bytes:  # another key's upload looks absent
            return read_owned(jobs.storage, key, key_id, source.upload)

        return await segment_jpeg(context.engine, fields, await source.decode(context.engine, read))

    try:
        jpeg = await context.engine.run(work)
    except BaseException:
        jobs.refund(key_id)
        raise
    if fields.base64:
        return JSONResponse({"image": b64.b64encode(jpeg).decode("ascii")}, headers=headers)
    return Response(jpeg, media_type="image/jpeg", headers=headers)


@router.post("/v2/sam-v2-image", openapi_extra=body_schema(SamV2ImageIn, multipart=False),
             responses={200: {"model": dict[str, Any]}, **_ERRORS})
async def submit(request: Request) -> JSONResponse:
    """Queue the request; poll `status_url`, then read `response_url`."""
    context, fields, key_id = await _accept(request)
    jobs = context.jobs
    base = jobs.base_url(request)
    image = await prepare_image(jobs, fields.image, api_key_id=key_id, base_url=base, field="image",
                                plain_base64=True)
    job, headers = jobs.submit(kind=KIND, model=SLUG, input={**fields.model_dump(), "image": image.value},
                               api_key_id=key_id, base_url=base, file_keys=image.keys)
    return JSONResponse({"request_id": job.id, "status": _STATUS[job.status],
                         "status_url": f"{base}/v2/requests/{job.id}/status",
                         "response_url": f"{base}/v2/requests/{job.id}"}, headers=headers)


def run_job(jobs: JobService, job: Job, context: JobContext) -> str:
    """The v2 job handler: the JPEG is stored and its URL returned (its base64 with `base64`)."""
    fields = SamV2ImageIn.model_validate(job.input)
    image = load_job_image(jobs, job, fields.image, "image")
    context.raise_if_canceled()
    started = time.perf_counter()
    jpeg = jobs.call(segment_jpeg(jobs.engine, fields, image))
    context.metrics["inference_time"] = round(time.perf_counter() - started, 4)
    if fields.base64:
        return b64.b64encode(jpeg).decode("ascii")
    key = jobs.storage.put(jpeg, ".jpg", "image/jpeg", owner=job.api_key_id)
    context.add_files(key)
    return jobs.file_url(key, job)


def status_json(job: Job) -> dict[str, Any]:
    body: dict[str, Any] = {"request_id": job.id, "status": _STATUS[job.status]}
    if job.status in (JobStatus.FAILED, JobStatus.CANCELED):
        body["error"] = job.error or "the request was canceled"
    return body


def result_json(job: Job) -> dict[str, Any]:
    """The v2 response body (also the webhook payload of Segmind jobs)."""
    return {**status_json(job), "output": job.output, "metrics": dict(job.metrics),
            "created_at": iso8601(job.created_at), "completed_at": iso8601(job.completed_at)}


def _own_job(request: Request, request_id: str) -> Job:
    context = server_context(request)
    job = context.jobs.store.get(request_id, api_key_id=context.api_key_id(request))
    if job.kind != KIND:
        raise JobNotFound(f"no request with id {request_id!r}")
    return job


def _answer(body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=422 if body["status"] == "FAILED" else 200)


@router.get("/v2/requests/{request_id}/status", responses={200: {"model": dict[str, Any]}, 422: {}, **_ERRORS})
async def request_status(request_id: str, request: Request) -> JSONResponse:
    """QUEUED, PROCESSING, COMPLETED or FAILED (with `error`)."""
    return _answer(status_json(_own_job(request, request_id)))


@router.get("/v2/requests/{request_id}", responses={200: {"model": dict[str, Any]}, 422: {}, **_ERRORS})
async def request_result(request_id: str, request: Request) -> JSONResponse:
    """The status with `output` and `metrics` once COMPLETED."""
    return _answer(result_json(_own_job(request, request_id)))


DIALECT = Dialect("segmind", router, PATH_PREFIXES, error_response, renders_http_errors=True,
                  job_kinds={KIND: JobKind(run_job, result_json)})
