"""Video tracking sessions, owned by the engine: one model serves image requests and video sessions.

A session is a `segany.VideoPredictor` session on a video file kept in a private temporary folder, on the
video model the model pool composes around the loaded image model (the weights are shared). Bounds:
- at most `max_video_sessions` open at once (another create gets `ServerBusy`, 503 with Retry-After: the
  seconds until the least recently used session would expire);
- videos of at most `max_video_mb`, `max_video_frames` frames and `max_video_pixels` per frame
  (`InvalidInput` naming the field, a 4xx);
- a session unused for `video_session_idle_s` is closed and its memory freed (a janitor task checks).
Work on one session is serialized: short steps (prompts, reset, removal) take the session's lock; a
propagation marks the session busy for its whole run, and anything else asked of a busy session is
`VideoSessionBusy` (409). Every step runs in a worker thread, never on the event loop.

Each computed frame is kept as COCO RLE per object (`FrameMasks`, a few hundred bytes a frame), so results
of frames already computed can be fetched again without holding masks or logits.
"""
from __future__ import annotations

import asyncio
import logging
import math
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from segany.errors import InvalidInput
from segany.io.rle import CocoRle, coco_encode
from segany.io.video import open_video
from segany.predict.video import FrameResult, Session, VideoPredictor
from segany.server.engine.model_pool import ModelPool
from segany.server.http.errors import PayloadTooLarge, ServerBusy, VideoSessionBusy, VideoSessionNotFound
from segany.server.settings import ServerSettings

log = logging.getLogger("segany.server")
T = TypeVar("T")
VIDEO_FILE = "video"


@dataclass(frozen=True, eq=False)
class FrameMasks:
    """Every object's mask on one frame, as kept by a session (objects in `obj_ids` order)."""

    index: int  # frame index, 0-based
    obj_ids: tuple[int, ...]
    rles: tuple[CocoRle, ...]  # COCO RLE of each object's (H, W) mask at the video's resolution
    object_scores: tuple[float, ...]  # object-score logits; > 0: the object is visible

    @classmethod
    def from_result(cls, result: FrameResult) -> FrameMasks:
        return cls(result.index, tuple(result.obj_ids), tuple(coco_encode(m) for m in result.masks),
                   tuple(float(s) for s in result.object_scores))

    def without(self, obj_id: int) -> FrameMasks:
        keep = [i for i, known in enumerate(self.obj_ids) if known != obj_id]
        return replace(self, obj_ids=tuple(self.obj_ids[i] for i in keep), rles=tuple(self.rles[i] for i in keep),
                       object_scores=tuple(self.object_scores[i] for i in keep))


@dataclass(eq=False)
class VideoSession:
    """One open session: its library `Session`, its folder and what it has computed."""

    id: str
    variant: str
    num_frames: int
    size_hw: tuple[int, int]
    session: Session
    folder: Path
    owner: str | None = None  # API key id of the creator: others see no such session
    created_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    busy: bool = False  # a propagation is running
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    results: dict[int, FrameMasks] = field(default_factory=dict)

    @property
    def obj_ids(self) -> tuple[int, ...]:
        return self.session.obj_ids


async def _in_thread(fn: Callable[[], T]) -> T:
    """Run `fn` in a worker thread; if the caller is cancelled, wait for the thread before letting go, so no
    other step can touch the session while it still runs."""
    task = asyncio.ensure_future(asyncio.to_thread(fn))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        try:
            await task
        except BaseException:  # noqa: BLE001 - the caller is going away; its error is moot
            pass
        raise


def _next_masks(frames: Iterator[FrameResult]) -> FrameMasks | None:
    result = next(frames, None)
    return None if result is None else FrameMasks.from_result(result)


def _renamed(error: InvalidInput, path: Path, field: str | None = None) -> InvalidInput:
    """The error without the server's temporary path; with `field`, naming the request's field."""
    message = str(error).replace(str(path), "the video")
    if field is None:
        return type(error)(message, error.field)
    return InvalidInput(message if message.startswith(field) else f"{field}: {message}", field)


class VideoSessions:
    """The engine's video sessions (see the module doc); `start()` / `stop()` in the engine's lifecycle."""

    def __init__(self, settings: ServerSettings, pool: ModelPool) -> None:
        self.settings = settings
        self.pool = pool
        self._sessions: dict[str, VideoSession] = {}
        self._opening = 0  # creates in progress: they hold a slot
        self._janitor: asyncio.Task | None = None

    # ---- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        self._janitor = asyncio.get_running_loop().create_task(self._expire_forever())

    async def stop(self) -> None:
        if self._janitor is not None:
            self._janitor.cancel()
        for session_id in list(self._sessions):
            self._close(self._sessions.pop(session_id))

    async def _expire_forever(self) -> None:
        period = max(0.05, min(30.0, self.settings.video_session_idle_s / 4))
        while True:
            await asyncio.sleep(period)
            self.expire_idle()

    def expire_idle(self, now: float | None = None) -> list[str]:
        """Close sessions unused for `video_session_idle_s` (not while they propagate); their ids."""
        now = time.monotonic() if now is None else now
        expired = [s.id for s in self._sessions.values()
                   if not s.busy and not s.lock.locked() and now - s.last_used > self.settings.video_session_idle_s]
        for session_id in expired:
            log.info("video session %s closed after %.0f s idle", session_id, self.settings.video_session_idle_s)
            self._close(self._sessions.pop(session_id))
        return expired

    def _close(self, session: VideoSession) -> None:
        session.session.frames.close()
        shutil.rmtree(session.folder, ignore_errors=True)

    @property
    def count(self) -> int:
        return len(self._sessions)

    # ---- create / get / delete -----------------------------------------------------------------------
    async def create(self, data: bytes, *, model: str | None = None, owner: str | None = None,
                     field: str = "video") -> VideoSession:
        """Open a session on an encoded video file (`data`). Raises `ServerBusy` at the session limit,
        `PayloadTooLarge` / `InvalidInput` (naming `field`) for a video over the limits or not a video."""
        if len(data) > self.settings.max_video_bytes:
            raise PayloadTooLarge(f"{field}: {len(data)} bytes, more than the limit of "
                                  f"{self.settings.max_video_bytes} bytes (max_video_mb)", field)
        if not data:
            raise InvalidInput(f"{field}: the video is empty", field)
        variant = self.pool.resolve(model)
        self.expire_idle()
        if len(self._sessions) + self._opening >= self.settings.max_video_sessions:
            raise ServerBusy(f"{self.settings.max_video_sessions} video sessions are open (the limit); delete one "
                             "or retry later", retry_after_s=self._retry_after())
        self._opening += 1
        try:
            video_model = await self.pool.get_video(variant)
            folder = Path(tempfile.mkdtemp(prefix="segany-video-"))
            try:
                path = folder / VIDEO_FILE
                session = await asyncio.to_thread(self._open, video_model, data, path, field)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            num_frames = len(session.frames)
            opened = VideoSession(secrets.token_urlsafe(12), variant, num_frames, tuple(session.size_hw), session,
                                  folder, owner)
            self._sessions[opened.id] = opened
            return opened
        finally:
            self._opening -= 1

    def _open(self, video_model: Any, data: bytes, path: Path, field: str) -> Session:
        path.write_bytes(data)
        try:
            return VideoPredictor(video_model).start(path, max_frames=self.settings.max_video_frames,
                                                     max_pixels=self.settings.max_video_pixels)
        except InvalidInput as error:
            raise _renamed(error, path, field) from None

    async def probe(self, data: bytes, field: str = "video") -> tuple[int, tuple[int, int]]:
        """(frame count, (height, width)) of an encoded video under the same limits as `create`, without
        opening a session (a job checks its input video when submitted)."""
        if len(data) > self.settings.max_video_bytes:
            raise PayloadTooLarge(f"{field}: {len(data)} bytes, more than the limit of "
                                  f"{self.settings.max_video_bytes} bytes (max_video_mb)", field)

        def work() -> tuple[int, tuple[int, int]]:
            folder = Path(tempfile.mkdtemp(prefix="segany-video-"))
            path = folder / VIDEO_FILE
            try:
                path.write_bytes(data)
                try:
                    with open_video(path, max_frames=self.settings.max_video_frames,
                                    max_pixels=self.settings.max_video_pixels) as frames:
                        return len(frames), tuple(frames.size_hw)  # type: ignore[return-value]
                except InvalidInput as error:
                    raise _renamed(error, path, field) from None
            finally:
                shutil.rmtree(folder, ignore_errors=True)

        return await asyncio.to_thread(work)

    def _retry_after(self) -> int:
        if not self._sessions:
            return 1
        now = time.monotonic()
        soonest = min(self.settings.video_session_idle_s - (now - s.last_used) for s in self._sessions.values())
        return max(1, min(3600, math.ceil(soonest)))

    def get(self, session_id: str, owner: str | None = None) -> VideoSession:
        """The open session `session_id` of `owner`; `VideoSessionNotFound` (404) otherwise."""
        session = self._sessions.get(session_id)
        if session is None or session.owner != owner:
            raise VideoSessionNotFound(f"no video session {session_id[:64]!r} (never created, deleted, or closed "
                                       f"after {self.settings.video_session_idle_s:g} s idle)")
        session.last_used = time.monotonic()
        return session

    async def delete(self, session_id: str, owner: str | None = None) -> None:
        session = self.get(session_id, owner)
        if session.busy:
            raise VideoSessionBusy("the session is propagating; wait for it (or disconnect) before deleting it")
        async with session.lock:
            if self._sessions.pop(session.id, None) is not None:
                self._close(session)

    # ---- steps ---------------------------------------------------------------------------------------
    async def _step(self, session_id: str, owner: str | None, work: Callable[[Session], T]) -> tuple[VideoSession, T]:
        session = self.get(session_id, owner)
        if session.busy:
            raise VideoSessionBusy("the session is propagating; one propagation runs at a time, and prompts wait "
                                   "until it ends")
        async with session.lock:
            if session.id not in self._sessions:  # deleted while this step waited
                raise VideoSessionNotFound(f"the video session {session_id[:64]!r} was deleted")
            try:
                result = await _in_thread(lambda: work(session.session))
            except InvalidInput as error:
                raise _renamed(error, session.folder / VIDEO_FILE) from None
            session.last_used = time.monotonic()
            return session, result

    async def add_points(self, session_id: str, frame: int, obj_id: int, points: Any = None, labels: Any = None, *,
                         box: Any = None, clear: bool = True, owner: str | None = None) -> FrameMasks:
        """Clicks (N, 2) xy pixels with labels (N,) and/or a box (4,) xyxy for one object on one frame ->
        every object's mask on that frame (see `Session.add_points`)."""
        session, masks = await self._step(session_id, owner, lambda s: FrameMasks.from_result(
            s.add_points(frame, obj_id, points, labels, box=box, clear=clear)))
        session.results[masks.index] = masks
        return masks

    async def add_mask(self, session_id: str, frame: int, obj_id: int, mask: np.ndarray, *,
                       owner: str | None = None) -> FrameMasks:
        """An (H, W) bool mask for one object on one frame -> every object's mask on that frame."""
        session, masks = await self._step(session_id, owner,
                                          lambda s: FrameMasks.from_result(s.add_mask(frame, obj_id, mask)))
        session.results[masks.index] = masks
        return masks

    async def remove_object(self, session_id: str, obj_id: int, *, owner: str | None = None) -> tuple[int, ...]:
        """Forget one object (`InvalidPrompt` naming obj_id when unknown); the object ids left."""
        session, results = await self._step(
            session_id, owner, lambda s: [FrameMasks.from_result(r) for r in s.remove_object(obj_id)])
        session.results = {i: masks.without(obj_id) for i, masks in session.results.items()}
        session.results.update((masks.index, masks) for masks in results)
        return session.obj_ids

    async def reset(self, session_id: str, *, owner: str | None = None) -> None:
        """Forget every object, prompt and computed frame (the video stays open)."""
        session, _ = await self._step(session_id, owner, lambda s: s.reset())
        session.results.clear()

    async def propagate(self, session_id: str, start: int | None = None, reverse: bool = False,
                        max_frames: int | None = None, *, owner: str | None = None) -> AsyncIterator[FrameMasks]:
        """Track every object frame by frame, yielding each frame as soon as it is computed. Errors in the
        arguments (or a session without prompts) raise on the first `__anext__`, before any frame."""
        session = self.get(session_id, owner)
        if session.busy:
            raise VideoSessionBusy("the session is busy (a propagation is running); one runs at a time")
        session.busy = True
        try:
            async with session.lock:  # waits for a prompt step in progress, if any
                frames = await _in_thread(lambda: session.session.propagate(start, reverse, max_frames))
                while session.id in self._sessions:
                    # The frame and its RLE encoding both off the loop.
                    masks = await _in_thread(lambda: _next_masks(frames))
                    if masks is None:
                        break
                    session.results[masks.index] = masks
                    session.last_used = time.monotonic()
                    yield masks
        except InvalidInput as error:  # e.g. a corrupt frame: named without the server's temporary path
            raise _renamed(error, session.folder / VIDEO_FILE) from None
        finally:
            session.busy = False
            session.last_used = time.monotonic()

    async def frame(self, session_id: str, index: int, *, owner: str | None = None) -> np.ndarray:
        """Frame `index` of the session's video as (H, W, 3) uint8 RGB."""
        _, rgb = await self._step(session_id, owner, lambda s: s.frames[index])
        return rgb

    def results(self, session_id: str, start: int = 0, stop: int | None = None, *,
                owner: str | None = None) -> list[FrameMasks]:
        """Frames computed so far (by prompts or propagation) with `start <= index < stop`, in frame order."""
        session = self.get(session_id, owner)
        return [session.results[i] for i in sorted(session.results) if i >= start and (stop is None or i < stop)]
