"""Request-size limits that become clear 4xx errors naming the field.

The body-size limit is enforced while the body is read (`read_body_limited`), before any parsing, and so
is the server-wide budget of buffered body bytes (`BodyBudget`); the pixel limit is passed to image decoding, which checks it from the image header before decoding any
pixel (Pillow's own decompression-bomb guard stays in place behind it);
prompt counts and AMG grid sizes are checked here before any inference is queued.
"""
from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from segany.errors import InvalidInput, InvalidPrompt
from segany.server.http.errors import BodyTimeout, PayloadTooLarge, ServerBusy
from segany.server.settings import ServerSettings

if TYPE_CHECKING:
    from segany.server.engine.types import Prompt

Receive = Callable[[], Awaitable[dict]]


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int
    max_image_pixels: int
    max_prompts: int
    max_points_per_prompt: int
    max_points_per_side: int
    max_auto_points: int

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> Limits:
        return cls(settings.max_body_bytes, settings.max_image_pixels, settings.max_prompts,
                   settings.max_points_per_prompt, settings.max_points_per_side, settings.max_auto_points)

    def check_prompt_count(self, count: int, field: str = "prompts") -> None:
        if count > self.max_prompts:
            raise InvalidPrompt(f"{field}: {count} prompts, more than the limit of {self.max_prompts}", field)

    def check_point_count(self, count: int, field: str = "points") -> None:
        if count > self.max_points_per_prompt:
            raise InvalidPrompt(
                f"{field}: {count} points in one prompt, more than the limit of {self.max_points_per_prompt}", field
            )

    def check_prompts(self, prompts: Sequence[Prompt], field: str = "prompts") -> None:
        """Prompt count and points per prompt of engine `Prompt`s (every dialect's prompts end up as these)."""
        self.check_prompt_count(len(prompts), field)
        for index, prompt in enumerate(prompts):
            if prompt.points_xy is not None:
                self.check_point_count(len(prompt.points_xy), f"{field}[{index}].points")

    def check_raw_arrays(self, point_coords: np.ndarray | None, box: np.ndarray | None) -> None:
        """Official-predictor arrays: point_coords (N, 2) or (B, N, 2), box (4,) or (B, 4)."""
        if point_coords is not None:
            coords = np.asarray(point_coords)
            if coords.ndim >= 3:
                self.check_prompt_count(int(np.prod(coords.shape[:-2])), "point_coords")
            if coords.ndim >= 2:
                self.check_point_count(int(coords.shape[-2]), "point_coords")
            elif coords.size > 2 * self.max_points_per_prompt:
                self.check_point_count(coords.size // 2, "point_coords")
        if box is not None:
            boxes = np.asarray(box)
            self.check_prompt_count(int(np.prod(boxes.shape[:-1])) if boxes.ndim >= 2 else 1, "box")

    def check_auto_grid(self, points_per_side: int | None, crop_n_layers: int, downscale: int,
                        explicit_points: int | None = None) -> None:
        """Bound automatic mask generation: grid side and total point count over every crop layer."""
        if points_per_side is not None and not 1 <= points_per_side <= self.max_points_per_side:
            raise InvalidInput(
                f"points_per_side must be between 1 and {self.max_points_per_side}, got {points_per_side}",
                "points_per_side",
            )
        if not 0 <= crop_n_layers <= 4:
            raise InvalidInput(f"crop_n_layers must be between 0 and 4, got {crop_n_layers}", "crop_n_layers")
        if downscale < 1:
            raise InvalidInput(
                f"crop_n_points_downscale_factor must be at least 1, got {downscale}", "crop_n_points_downscale_factor"
            )
        total = 0
        for layer in range(crop_n_layers + 1):
            crops = 1 if layer == 0 else (2**layer) ** 2
            side = (points_per_side or 0) // (downscale**layer)
            per_crop = explicit_points if explicit_points is not None else side * side
            total += crops * per_crop
        if total > self.max_auto_points:
            raise InvalidInput(
                f"the automatic mask generation grid has {total} points over all crops, more than the limit of "
                f"{self.max_auto_points}; lower points_per_side or crop_n_layers",
                "points_per_side",
            )


MAX_JSON_DEPTH = 64  # no request format nests deeper than ~6; Python's json recursion fails near 1000
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # unrolled: one pass per string, no backtracking


def check_json_depth(body: bytes, max_depth: int = MAX_JSON_DEPTH, field: str = "body") -> None:
    """Refuse a JSON text nested deeper than `max_depth` (InvalidInput, a 400) before any parser recurses.

    Strings are dropped first (brackets inside them do not nest); the depth is the running sum of
    openers minus closers, computed with NumPy so a 32 MB body costs milliseconds."""
    if b"[" not in body and b"{" not in body:
        return
    stripped = np.frombuffer(_JSON_STRING.sub(b'""', body), dtype=np.uint8)
    steps = (np.isin(stripped, _OPENERS).astype(np.int32) - np.isin(stripped, _CLOSERS).astype(np.int32))
    depth = int(np.cumsum(steps).max(initial=0))
    if depth > max_depth:
        raise InvalidInput(f"{field}: JSON nested {depth} levels deep, more than the limit of {max_depth}", field)


_OPENERS = np.frombuffer(b"[{", dtype=np.uint8)
_CLOSERS = np.frombuffer(b"]}", dtype=np.uint8)


class BodyBudget:
    """Bytes of request bodies all requests hold in memory at once (`max_buffered_mb`), so that a burst of
    large uploads cannot take the server's memory. Used on the event loop only (no lock).

    When the last body of a burst that held at least `idle_after_bytes` is given back, `on_idle` runs (the
    server hands the freed heap back to the OS then)."""

    def __init__(self, max_bytes: int, on_idle: Callable[[], None] | None = None,
                 idle_after_bytes: int = 64 * 2**20) -> None:
        self.max_bytes = max_bytes
        self.held = 0
        self.peak = 0  # most held since the budget was last empty
        self._on_idle = on_idle
        self._idle_after_bytes = idle_after_bytes

    def take(self, count: int) -> None:
        """Reserve `count` more bytes; `ServerBusy` (503, Retry-After) when others already hold the budget.
        A body alone is always let in (it is bounded by `max_body_mb`)."""
        if self.held and self.held + count > self.max_bytes:
            raise ServerBusy(f"the server is holding {self.held / 2**20:.0f} MiB of request bodies, its limit "
                             f"(max_buffered_mb {self.max_bytes / 2**20:g}); retry later", retry_after_s=2)
        self.held += count
        self.peak = max(self.peak, self.held)

    def give_back(self, count: int) -> None:
        self.held = max(0, self.held - count)
        if self.held == 0:
            burst, self.peak = self.peak, 0
            if burst >= self._idle_after_bytes and self._on_idle is not None:
                self._on_idle()


class BodyReader:
    """Reads one ASGI request body under a size limit (`PayloadTooLarge`), a deadline (`BodyTimeout`) and,
    from `charge_to(budget)` on, the server's `BodyBudget` (call `release` when the request is done with it)."""

    def __init__(self, receive: Receive, max_bytes: int, declared_length: int | None, timeout_s: float) -> None:
        if declared_length is not None and declared_length > max_bytes:
            raise PayloadTooLarge(f"the request body is {declared_length} bytes, more than the limit of {max_bytes}",
                                  "body")
        self.receive = receive
        self.max_bytes = max_bytes
        self.deadline = time.monotonic() + timeout_s
        self.timeout_s = timeout_s
        self.chunks: list[bytes] = []
        self.size = 0
        self.done = False
        self.declared_length = declared_length
        self.budget: BodyBudget | None = None
        self.reserved = 0

    def charge_to(self, budget: BodyBudget) -> None:
        """Count this body against `budget`: its declared length at once (before the rest is read), then
        whatever arrives beyond it; `ServerBusy` when the budget is spent."""
        self.budget = budget
        self._reserve(max(self.declared_length or 0, self.size))

    def _reserve(self, total: int) -> None:
        if self.budget is not None and total > self.reserved:
            self.budget.take(total - self.reserved)
            self.reserved = total

    def release(self) -> None:
        """Give the reserved bytes back to the budget (idempotent)."""
        if self.budget is not None:
            self.budget.give_back(self.reserved)
        self.reserved = 0

    async def _next(self) -> None:
        remaining = self.deadline - time.monotonic()
        try:
            message = await asyncio.wait_for(self.receive(), max(remaining, 0.001))
        except asyncio.TimeoutError:
            raise BodyTimeout(f"body: the request body did not arrive within {self.timeout_s:g} s", "body") from None
        if message["type"] == "http.disconnect":
            self.done = True
            return
        chunk = message.get("body", b"")
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise PayloadTooLarge(f"the request body is more than the limit of {self.max_bytes} bytes", "body")
        self._reserve(self.size)  # a body without (or beyond) a declared length
        self.chunks.append(chunk)
        self.done = not message.get("more_body", False)

    async def read_up_to(self, count: int) -> bytes:
        """At least `count` bytes of the body (fewer if it is shorter), read so far."""
        while not self.done and self.size < count:
            await self._next()
        return b"".join(self.chunks)

    async def read_all(self) -> bytes:
        while not self.done:
            await self._next()
        body = b"".join(self.chunks)
        self.chunks = [body]  # not the parts as well: one copy of a large body in memory
        return body


async def read_body_limited(receive: Receive, max_bytes: int, declared_length: int | None,
                            timeout_s: float = 60.0) -> bytes:
    """Read the whole ASGI request body, raising `PayloadTooLarge` as soon as it exceeds `max_bytes`."""
    return await BodyReader(receive, max_bytes, declared_length, timeout_s).read_all()
