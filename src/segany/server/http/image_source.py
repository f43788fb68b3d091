"""Request images to decoded pixels: base64 text, data URIs, uploads, and (when enabled) URLs."""
from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from segany.errors import InvalidImage, InvalidInput
from segany.io.images import decode_base64_image
from segany.server.engine.engine import DecodedImage, Engine
from segany.server.http.errors import UrlNotAllowed
from segany.server.http.url_fetch import fetch_url_bytes


def is_url(text: str) -> bool:
    return text[:8].lower().startswith(("http://", "https://"))


async def fetch_image(engine: Engine, url: str, field: str) -> bytes:
    """Download an image URL if the server allows it (public addresses only)."""
    settings = engine.settings
    if not settings.allow_url_fetch:
        raise UrlNotAllowed(f"{field}: fetching images by URL is turned off on this server "
                            "(start it with --allow-url-fetch); send the image itself", field)
    return await asyncio.to_thread(fetch_url_bytes, url, max_bytes=settings.fetch_max_bytes,
                                   timeout_s=settings.fetch_timeout_s, field=field)


async def image_from_text(engine: Engine, text: str, field: str = "image") -> DecodedImage:
    """Decode base64 / data-URI text, or fetch an http(s) URL, into RGB pixels."""
    if not isinstance(text, str):
        raise InvalidImage(f"{field}: expected a base64 string, got {type(text).__name__}", field)
    data = await fetch_image(engine, text, field) if is_url(text) else decode_base64_image(text, field=field)
    return await engine.decode_image(data, field)


async def read_form_or_json(request: Request, json_fields: tuple[str, ...] = ()
                            ) -> tuple[dict[str, Any], bytes | None]:
    """Body fields and the uploaded `image` file's bytes, for routes that take JSON or multipart.

    JSON must be an object; in multipart every non-file field is text, and the `json_fields` (JSON
    text, e.g. `prompts`) are parsed here so both encodings validate against the same model.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        try:
            form = await request.form()
        except Exception as error:  # noqa: BLE001 - malformed multipart framing is the client's mistake
            raise InvalidInput(f"body: malformed form data ({error})", "body") from None
        fields: dict[str, Any] = {}
        upload: bytes | None = None
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key == "image":
                    upload = await value.read()
                continue
            fields[key] = value
        for name in json_fields:
            if isinstance(fields.get(name), str):
                try:
                    fields[name] = json.loads(fields[name])
                except ValueError as error:
                    raise InvalidInput(f"{name}: not valid JSON ({error})", name) from None
        if upload is None and isinstance(fields.get("image"), str) and not fields["image"]:
            fields.pop("image")
        return fields, upload
    body = await request.body()
    if not body:
        raise InvalidInput("body: empty request; send JSON or multipart/form-data", "body")
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidInput(f"body: not valid JSON ({error})", "body") from None
    if not isinstance(document, dict):
        raise InvalidInput("body: expected a JSON object", "body")
    return document, None
