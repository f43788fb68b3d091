"""Request-size limits that become clear 4xx errors naming the field.

The body-size limit is enforced while the body is read (`read_body_limited`), before any parsing; the
pixel limit is passed to image decoding, which checks it from the image header before decoding any
pixel (Pillow's own decompression-bomb guard stays in place behind it);
prompt counts and AMG grid sizes are checked here before any inference is queued.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from segany.errors import InvalidInput, InvalidPrompt
from segany.server.http.errors import PayloadTooLarge
from segany.server.settings import ServerSettings

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


async def read_body_limited(receive: Receive, max_bytes: int, declared_length: int | None) -> bytes:
    """Read the whole ASGI request body, raising `PayloadTooLarge` as soon as it exceeds `max_bytes`."""
    if declared_length is not None and declared_length > max_bytes:
        raise PayloadTooLarge(f"the request body is {declared_length} bytes, more than the limit of {max_bytes}",
                              "body")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"the request body is more than the limit of {max_bytes} bytes", "body")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)
