"""Replicate's `meta/sam-2-video`: an asynchronous prediction that tracks clicked objects through a video.

Served by `replicate.py` (same routes, job store and `submit`; job kind `replicate_video`). The input video
(`input_video`: an uploaded file's URL, a data: URI, or an http(s) URL under the server's fetch rules) is
checked at submission when it is here (not a video, over `max_video_*`, a click past the last frame: 4xx).
The job opens an engine video session, adds each object's clicks, propagates forward from the first
clicked frame, and writes, for every `output_frame_interval`-th frame:
- `binary`: white where any object is, black elsewhere; `highlighted`: the frame with each object's mask
  (`annotation_type` mask), its bounding box (box) or both drawn in its colour; `greenscreen`: the objects
  over pure green;
- as one file per frame (`output_format`, `output_quality`), or with `output_video` one H.264 MP4 at
  `video_fps`. The output is the list of the files' URLs, in frame order.
Frames before the first clicked frame have no object (black / the plain frame / green).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import io
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any, TypeVar

import av
import numpy as np

from segany.errors import InvalidInput, InvalidPrompt, SeganyError
from segany.io.masks import encode_image, mask_palette, masks_to_bboxes_xyxy, overlay_masks
from segany.io.rle import coco_decode
from segany.server.dialects.replicate_model import ReplicateModel, cog_document
from segany.server.dialects.replicate_video_schema import (
    MODEL_NAME, MODEL_OWNER, MODEL_VERSION, VERSION_CREATED_AT, Input, ObjectClicks, output_schema, parse_clicks,
    parse_input,
)
from segany.server.engine.video_sessions import FrameMasks
from segany.server.http.image_source import check_url_allowed, classify, fetch_image, own_file_key
from segany.server.jobs.errors import StoredFileNotFound
from segany.server.jobs.service import JobService
from segany.server.jobs.store import Job
from segany.server.jobs.storage import read_owned
from segany.server.jobs.workers import JobContext

KIND = "replicate_video"
FIELD = "input.input_video"
GREEN = np.array([0, 255, 0], np.uint8)
_FORMATS = {"webp": (".webp", "image/webp"), "jpg": (".jpg", "image/jpeg"), "png": (".png", "image/png")}
T = TypeVar("T")


def _max_clicks(jobs: JobService) -> int:
    return jobs.limits.max_prompts * jobs.limits.max_points_per_prompt


def _data_uri_bytes(text: str) -> tuple[bytes, str]:
    """(bytes, media type) of a base64 data: URI."""
    header, _, payload = text.partition(",")
    media = header[5:].split(";")[0] or "application/octet-stream"
    if ";base64" not in header.lower():
        raise InvalidInput(f"{FIELD}: a data: URI must be base64 (data:video/mp4;base64,...)", FIELD)
    try:
        return base64.b64decode("".join(payload.split()), validate=True), media
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{FIELD}: invalid base64 in the data: URI", FIELD) from None


def _stored(jobs: JobService, key: str, upload: bool, api_key_id: str | None) -> bytes:
    try:
        return read_owned(jobs.storage, key, api_key_id, upload)
    except StoredFileNotFound:
        raise InvalidInput(f"{FIELD}: no file {key[:80]!r} on this server (expired or deleted?)", FIELD) from None


def _check_frames(clicks: list[ObjectClicks], num_frames: int) -> None:
    last = max(group.frame for group in clicks)
    if last >= num_frames:
        raise InvalidPrompt(f"input.click_frames: frame {last} is past the end of the video ({num_frames} frames)",
                            "input.click_frames")


async def accept_input(jobs: JobService, raw: Any, api_key_id: str | None,
                       base_url: str) -> tuple[dict[str, Any], list[str]]:
    """Validate a submitted input (the video too, when it is here); the input to record and its storage keys."""
    params = parse_input(raw)
    clicks = parse_clicks(params, _max_clicks(jobs))
    source = classify(params.input_video, FIELD, base_url=base_url, plain_base64=False)
    if source.kind == "url":
        await asyncio.to_thread(check_url_allowed, jobs.settings, source.text, FIELD)
        return {**raw, "input_video": source.text}, []
    if source.kind == "stored":
        data = await asyncio.to_thread(_stored, jobs, source.key, source.upload, api_key_id)
        media = None
    else:
        data, media = _data_uri_bytes(source.text)
    num_frames, _ = await jobs.engine.video.probe(data, FIELD)
    _check_frames(clicks, num_frames)
    if source.kind == "stored":
        return {**raw, "input_video": source.text}, []
    key = await asyncio.to_thread(jobs.storage.put, data, ".mp4", media or "video/mp4", owner=api_key_id)
    return {**raw, "input_video": jobs.storage.url_for(key, base_url)}, [key]


def _video_bytes(jobs: JobService, job: Job, value: str) -> bytes:
    own = own_file_key(value, job.meta.get("base_url"))
    if own is not None:
        try:
            return jobs.storage.get(own[0])
        except StoredFileNotFound:
            raise InvalidInput(f"{FIELD}: the input file was deleted before the prediction ran", FIELD) from None
    return jobs.call(fetch_image(jobs.engine, value, FIELD, max_bytes=jobs.settings.max_video_bytes))


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable  # JobService.call takes coroutines; an async generator's steps are awaitables


def _tracked(jobs: JobService, frames: AsyncIterator[FrameMasks], context: JobContext) -> Iterator[FrameMasks]:
    """The propagation's frames, one engine step at a time, from the worker thread."""
    try:
        while True:
            context.raise_if_canceled()
            masks = jobs.call(_awaited(anext(frames, None)))
            if masks is None:
                return
            yield masks
    finally:
        jobs.call(_awaited(frames.aclose()))


def _masks(found: FrameMasks | None, obj_ids: tuple[int, ...], size_hw: tuple[int, int]) -> np.ndarray:
    """(N, H, W) bool masks of `obj_ids` on a frame (none where the frame was not tracked)."""
    masks = np.zeros((len(obj_ids), *size_hw), bool)
    if found is not None:
        for i, obj_id in enumerate(obj_ids):
            if obj_id in found.obj_ids:
                masks[i] = coco_decode(found.rles[found.obj_ids.index(obj_id)])
    return masks


def _draw_boxes(rgb: np.ndarray, masks: np.ndarray, width_px: int = 2) -> np.ndarray:
    """Each non-empty mask's bounding box as a `width_px` outline in its palette colour."""
    out = rgb.copy()
    palette = mask_palette(len(masks))
    for index, (x0, y0, x1, y1) in enumerate(masks_to_bboxes_xyxy(masks).astype(int)):
        if not masks[index].any():
            continue
        w = width_px
        out[y0:y0 + w, x0:x1 + 1] = out[max(y1 - w + 1, 0):y1 + 1, x0:x1 + 1] = palette[index]
        out[y0:y1 + 1, x0:x0 + w] = out[y0:y1 + 1, max(x1 - w + 1, 0):x1 + 1] = palette[index]
    return out


def render(params: Input, rgb: np.ndarray | None, masks: np.ndarray) -> np.ndarray:
    """One output frame, (H, W, 3) uint8 RGB (binary: (H, W) uint8 0/255); `rgb` is None only for binary."""
    union = masks.any(axis=0)
    if params.mask_type == "binary":
        return union.astype(np.uint8) * np.uint8(255)
    assert rgb is not None
    if params.mask_type == "greenscreen":
        return np.where(union[..., None], rgb, GREEN)
    out = overlay_masks(rgb, masks) if params.annotation_type in ("mask", "both") else rgb
    return _draw_boxes(out, masks) if params.annotation_type in ("box", "both") else out


class _Mp4:
    """H.264 MP4 written frame by frame into memory (odd sizes padded to even, as yuv420p needs)."""

    def __init__(self, size_hw: tuple[int, int], fps: int) -> None:
        self.buffer = io.BytesIO()
        self.container = av.open(self.buffer, "w", format="mp4")
        self.stream = self.container.add_stream("h264", rate=fps)
        self.stream.height, self.stream.width = (size_hw[0] + 1) // 2 * 2, (size_hw[1] + 1) // 2 * 2
        self.stream.pix_fmt = "yuv420p"

    def add(self, frame: np.ndarray) -> None:
        rgb = np.repeat(frame[..., None], 3, axis=2) if frame.ndim == 2 else frame
        pad = ((0, self.stream.height - rgb.shape[0]), (0, self.stream.width - rgb.shape[1]), (0, 0))
        picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.pad(rgb, pad, mode="edge")), format="rgb24")
        for packet in self.stream.encode(picture):
            self.container.mux(packet)

    def finish(self) -> bytes:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        return self.buffer.getvalue()


def run_prediction(jobs: JobService, job: Job, context: JobContext) -> list[str]:
    """The job handler: clicks -> tracked masks -> rendered frames (or one video) -> their URLs."""
    params = parse_input(job.input)
    clicks = parse_clicks(params, _max_clicks(jobs))
    video = jobs.engine.video
    owner = job.api_key_id
    session = jobs.call(video.create(_video_bytes(jobs, job, params.input_video), owner=owner, field=FIELD))
    try:
        _check_frames(clicks, session.num_frames)
        height, width = session.size_hw
        objects = {group.obj_id: group.name for group in clicks}
        context.log(f"tracking {len(objects)} objects ({', '.join(objects.values())}) through "
                    f"{session.num_frames} frames of {width}x{height}")
        for group in clicks:
            jobs.call(video.add_points(session.id, group.frame, group.obj_id, group.points_xy, group.labels,
                                       owner=owner))
        tracked = {masks.index: masks for masks in _tracked(jobs, video.propagate(session.id, owner=owner), context)}
        context.log(f"{len(tracked)} frames tracked; writing every {params.output_frame_interval}. frame")
        obj_ids = tuple(sorted(objects))
        movie = _Mp4(session.size_hw, params.video_fps) if params.output_video else None
        suffix, content_type = _FORMATS[params.output_format]
        urls = []
        for index in range(0, session.num_frames, params.output_frame_interval):
            context.raise_if_canceled()
            rgb = None if params.mask_type == "binary" else jobs.call(video.frame(session.id, index, owner=owner))
            picture = render(params, rgb, _masks(tracked.get(index), obj_ids, session.size_hw))
            if movie is not None:
                movie.add(picture)
                continue
            data = encode_image(picture, params.output_format, max(1, params.output_quality))
            key = jobs.storage.put(data, suffix, content_type, name=f"frame_{index:05d}{suffix}", owner=owner)
            context.add_files(key)
            urls.append(jobs.file_url(key, job))
        if movie is not None:
            key = jobs.storage.put(movie.finish(), ".mp4", "video/mp4", name="output.mp4", owner=owner)
            context.add_files(key)
            urls.append(jobs.file_url(key, job))
        return urls
    finally:
        try:
            jobs.call(video.delete(session.id, owner))
        except SeganyError:  # already closed (the server stopping): the job's own outcome stands
            pass


def openapi_schema() -> dict[str, Any]:
    return cog_document(Input.model_json_schema(), output_schema())


MODEL = ReplicateModel(MODEL_OWNER, MODEL_NAME, MODEL_VERSION, VERSION_CREATED_AT,
                       "SAM 2 video object tracking from clicks, served by segany", KIND, accept_input,
                       run_prediction, openapi_schema)
