"""The native video-session API under `/v1/video/sessions` (documented in docs/api.md, "Video").

- `POST /v1/video/sessions`: open a session on a video: multipart (file field `video`, or text field `url`;
  optional `model`), a raw body (`Content-Type: video/...` or `application/octet-stream`, `?model=`), or
  JSON `{"url": ..., "model": ...}` (fetched under the server's URL rules). 201 with the session.
- `GET /v1/video/sessions/{id}`, `DELETE /v1/video/sessions/{id}` (204).
- `POST .../{id}/prompts`: `{frame, obj_id, points, labels, box, mask, clear}` -> every object's mask on
  that frame. `mask` is COCO RLE `{size, counts}` or a base64 PNG.
- `POST .../{id}/propagate`: `{start, reverse, max_frames}` -> NDJSON (`application/x-ndjson`), one line per
  frame as it is computed: `{"frame", "obj_ids", "masks" (COCO RLE), "object_scores"}`, then
  `{"done": true, "frames": N}`; an error after streaming began is a last line `{"error": {...}}`.
- `GET .../{id}/results?start=&stop=`: the frames computed so far, in the same shape.
- `DELETE .../{id}/objects/{obj_id}`, `POST .../{id}/reset`.

Errors are the native `{"error": {"code", "message", "field"}}`.
"""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile

from segany.errors import InvalidInput, InvalidPrompt
from segany.io.images import decode_base64_image
from segany.io.masks import png_to_mask
from segany.io.rle import coco_decode
from segany.server.context import ServerContext, server_context
from segany.server.dialects.dialect import Dialect
from segany.server.dialects.native import error_response
from segany.server.dialects.native_schemas import ErrorOut
from segany.server.engine.video_sessions import FrameMasks, VideoSession
from segany.server.http.json_body import json_object_body
from segany.server.http.errors import describe
from segany.server.http.image_source import classify, fetch_image

PATH_PREFIXES = ("/v1/video/",)
BASE = "/v1/video/sessions"
NDJSON = "application/x-ndjson"
router = APIRouter(tags=["video"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 413, 422, 503)
}


class SessionOut(BaseModel):
    session_id: str
    model: str
    num_frames: int
    width: int
    height: int
    obj_ids: list[int]
    computed_frames: int = Field(description="frames whose masks can be fetched from /results")
    idle_timeout_s: float


class UrlIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(description="http(s) URL of the video (needs --allow-url-fetch; public addresses only)")
    model: str | None = None


class PromptIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    frame: int = Field(ge=0, description="frame index, from 0")
    obj_id: int = Field(description="the object's id (any int; new ids start new objects)")
    points: list[list[float]] | None = Field(None, description="clicks [[x, y], ...] in video pixels")
    labels: list[int] | None = Field(None, description="one per point: 1 keeps, 0 excludes")
    box: list[float] | None = Field(None, description="[x0, y0, x1, y1] in video pixels")
    mask: dict[str, Any] | str | None = Field(None, description="COCO RLE {size, counts} or a base64 PNG")
    clear: bool = Field(True, description="false adds the clicks to the frame's earlier ones")


class PropagateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: int | None = Field(None, ge=0, description="first frame (default: the earliest prompted frame)")
    reverse: bool = Field(False, description="track towards frame 0")
    max_frames: int | None = Field(None, ge=1, description="most frames to yield")


class FrameOut(BaseModel):
    frame: int
    obj_ids: list[int]
    masks: list[dict[str, Any]] = Field(description="COCO RLE of each object's mask ({size: [h, w], counts})")
    object_scores: list[float] = Field(description="object-score logits; > 0: the object is visible")


def frame_json(masks: FrameMasks) -> dict[str, Any]:
    return {"frame": masks.index, "obj_ids": list(masks.obj_ids), "masks": [dict(rle) for rle in masks.rles],
            "object_scores": [round(score, 4) for score in masks.object_scores]}


def session_json(context: ServerContext, session: VideoSession) -> dict[str, Any]:
    height, width = session.size_hw
    return {"session_id": session.id, "model": session.variant, "num_frames": session.num_frames, "width": width,
            "height": height, "obj_ids": list(session.obj_ids), "computed_frames": len(session.results),
            "idle_timeout_s": context.settings.video_session_idle_s}


async def _fetch(context: ServerContext, url: Any) -> bytes:
    """A video by URL, through the one source resolver (fetching on, public addresses only)."""
    source = classify(url, "url", plain_base64=False)
    if source.kind != "url":
        raise InvalidInput("url: expected an http(s) URL of a video", "url")
    return await fetch_image(context.engine, source.text, "url", max_bytes=context.settings.max_video_bytes)


async def _video_bytes(request: Request, context: ServerContext) -> tuple[bytes, str | None]:
    """(encoded video, model) from a multipart upload, a raw body or a JSON URL."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        try:
            form = await request.form()
        except Exception as error:  # noqa: BLE001 - malformed multipart framing is the client's mistake
            raise InvalidInput(f"body: malformed form data ({error})", "body") from None
        model = form.get("model")
        model = model if isinstance(model, str) and model else None
        upload = form.get("video")
        if isinstance(upload, UploadFile):
            return await upload.read(), model
        if isinstance(form.get("url"), str) and form["url"]:
            return await _fetch(context, form["url"]), model
        raise InvalidInput("video: send the video file in the multipart field 'video' (or a 'url')", "video")
    if content_type == "application/json":
        body = UrlIn.model_validate(await json_object_body(request, empty={}))
        return await _fetch(context, body.url), body.model
    return await request.body(), request.query_params.get("model")


_CREATE_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "video": {"type": "string", "format": "binary"}, "url": {"type": "string"}, "model": {"type": "string"}}}},
    "video/mp4": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "application/json": {"schema": UrlIn.model_json_schema()}}}}


@router.post(BASE, status_code=201, openapi_extra=_CREATE_BODY, responses={201: {"model": SessionOut}, **_ERRORS})
async def create_session(request: Request) -> JSONResponse:
    """Open a tracking session on a video (see the module doc for the three ways to send it)."""
    context = server_context(request)
    data, model = await _video_bytes(request, context)
    session = await context.engine.video.create(data, model=model, owner=context.api_key_id(request))
    return JSONResponse(session_json(context, session), status_code=201)


@router.get(BASE + "/{session_id}", responses={200: {"model": SessionOut}, **_ERRORS})
async def get_session(session_id: str, request: Request) -> JSONResponse:
    context = server_context(request)
    return JSONResponse(session_json(context, context.engine.video.get(session_id, context.api_key_id(request))))


@router.delete(BASE + "/{session_id}", status_code=204, responses={204: {"description": "closed"}, **_ERRORS})
async def delete_session(session_id: str, request: Request) -> Response:
    """Close the session and free its memory."""
    context = server_context(request)
    await context.engine.video.delete(session_id, context.api_key_id(request))
    return Response(status_code=204)


def _mask(value: dict[str, Any] | str, size_hw: tuple[int, int]) -> np.ndarray:
    """A prompt mask (COCO RLE or base64 PNG) as (H, W) bool; it must be the video's size."""
    if isinstance(value, dict):
        if not isinstance(value.get("size"), list) or not isinstance(value.get("counts"), (str, list)):
            raise InvalidPrompt("mask: expected COCO RLE {size: [h, w], counts}", "mask")
        try:
            mask = coco_decode(value) if isinstance(value["counts"], str) else _uncompressed(value)
        except (ValueError, TypeError, KeyError) as error:
            raise InvalidPrompt(f"mask: not a valid COCO RLE ({error})", "mask") from None
    else:
        mask = png_to_mask(decode_base64_image(value, field="mask"), field="mask")
    if tuple(mask.shape) != tuple(size_hw):
        raise InvalidPrompt(f"mask: {mask.shape[1]}x{mask.shape[0]}, unlike the video's {size_hw[1]}x{size_hw[0]}",
                            "mask")
    return mask


def _uncompressed(rle: dict[str, Any]) -> np.ndarray:
    height, width = (int(v) for v in rle["size"])
    counts = [int(c) for c in rle["counts"]]
    if sum(counts) != height * width or min(counts, default=0) < 0:
        raise ValueError("counts do not add up to size")
    values = np.repeat(np.arange(len(counts)) % 2, counts).astype(bool)
    return values.reshape(width, height).T  # COCO RLE runs down the columns


@router.post(BASE + "/{session_id}/prompts", responses={200: {"model": FrameOut}, **_ERRORS})
async def add_prompt(session_id: str, request: Request) -> JSONResponse:
    """Points and/or a box, or a mask, for one object on one frame -> every object's mask on that frame."""
    context = server_context(request)
    owner = context.api_key_id(request)
    video = context.engine.video
    body = PromptIn.model_validate(await json_object_body(request, empty={}))
    if body.mask is not None:
        if body.points is not None or body.box is not None:
            raise InvalidPrompt("mask: give a mask alone, or points / a box, not both", "mask")
        mask = _mask(body.mask, video.get(session_id, owner).size_hw)
        result = await video.add_mask(session_id, body.frame, body.obj_id, mask, owner=owner)
    else:
        if body.points is not None:
            context.limits.check_point_count(len(body.points))
        result = await video.add_points(session_id, body.frame, body.obj_id, body.points, body.labels, box=body.box,
                                        clear=body.clear, owner=owner)
    return JSONResponse(frame_json(result))


@router.post(BASE + "/{session_id}/propagate", responses={
    200: {"description": "NDJSON: one FrameOut per line as computed, then {\"done\": true, \"frames\": N}",
          "content": {NDJSON: {}}}, **_ERRORS})
async def propagate(session_id: str, request: Request) -> StreamingResponse:
    """Track every object through the video, streaming each frame's masks as soon as it is computed."""
    context = server_context(request)
    body = PropagateIn.model_validate(await json_object_body(request, empty={}))
    frames = context.engine.video.propagate(session_id, body.start, body.reverse, body.max_frames,
                                            owner=context.api_key_id(request))
    # The first frame is computed before answering, so bad arguments still get a 4xx status.
    first = await anext(frames, None)

    async def lines() -> AsyncIterator[bytes]:
        count = 0
        try:
            if first is not None:
                count += 1
                yield (json.dumps(frame_json(first)) + "\n").encode()
            async for masks in frames:
                count += 1
                yield (json.dumps(frame_json(masks)) + "\n").encode()
        except Exception as error:  # noqa: BLE001 - the status is sent; the error becomes the last line
            info = describe(error)
            yield (json.dumps({"error": {"code": info.code, "message": info.message, "field": info.field,
                                         "status": info.status}}) + "\n").encode()
            return
        finally:
            await frames.aclose()
        yield (json.dumps({"done": True, "frames": count}) + "\n").encode()

    return StreamingResponse(lines(), media_type=NDJSON, headers={"Cache-Control": "no-store"})


@router.get(BASE + "/{session_id}/results", responses={200: {"model": dict[str, list[FrameOut]]}, **_ERRORS})
async def results(session_id: str, request: Request, start: int = 0, stop: int | None = None) -> JSONResponse:
    """Masks of the frames computed so far (`start <= frame < stop`), in frame order."""
    context = server_context(request)
    found = context.engine.video.results(session_id, start, stop, owner=context.api_key_id(request))
    return JSONResponse({"frames": [frame_json(masks) for masks in found]})


@router.delete(BASE + "/{session_id}/objects/{obj_id}", responses={200: {"model": dict[str, list[int]]}, **_ERRORS})
async def remove_object(session_id: str, obj_id: int, request: Request) -> JSONResponse:
    """Forget one object (its prompts, memories and masks)."""
    context = server_context(request)
    left = await context.engine.video.remove_object(session_id, obj_id, owner=context.api_key_id(request))
    return JSONResponse({"obj_ids": list(left)})


@router.post(BASE + "/{session_id}/reset", responses={200: {"model": dict[str, list[int]]}, **_ERRORS})
async def reset(session_id: str, request: Request) -> JSONResponse:
    """Forget every object and prompt; the video stays open."""
    context = server_context(request)
    await context.engine.video.reset(session_id, owner=context.api_key_id(request))
    return JSONResponse({"obj_ids": []})


DIALECT = Dialect("native_video", router, PATH_PREFIXES, error_response)
