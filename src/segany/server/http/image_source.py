"""The one image-source resolver: base64 text, data URIs, uploads, this server's stored files and (when
enabled) URLs, to encoded bytes and then decoded pixels."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from fastapi import Request
from starlette.datastructures import UploadFile

from segany.errors import InvalidImage, InvalidInput
from segany.io.images import decode_base64_image
from segany.server.engine.engine import DecodedImage, Engine
from segany.server.http.errors import UrlNotAllowed
from segany.server.http.json_body import parse_json_object
from segany.server.http.url_fetch import check_public_url, fetch_url_bytes
from segany.server.settings import ServerSettings


def is_url(text: str) -> bool:
    return text[:8].lower().startswith(("http://", "https://"))


def own_file_key(url: str, base_url: str | None) -> tuple[str, bool] | None:
    """`(key, is_upload)` when `url` names a file of this server (`/files/{key}` or `/v1/files/{id}`)."""
    if not base_url:
        return None
    parts, base = urlsplit(url), urlsplit(base_url)
    if (parts.scheme.lower(), parts.netloc.lower()) != (base.scheme.lower(), base.netloc.lower()):
        return None
    path = parts.path
    prefix_path = base.path.rstrip("/")
    if prefix_path and path.startswith(prefix_path + "/"):
        path = path[len(prefix_path):]
    for prefix, upload in (("/files/", False), ("/v1/files/", True)):
        rest = path[len(prefix):]
        if path.startswith(prefix) and rest and "/" not in rest:
            return rest, upload
    return None


@dataclass(frozen=True)
class ImageSource:
    """Where a request's image comes from, before any bytes are read.

    kind: "inline" (base64 or a data URI), "url" (http(s), fetched if the server allows it), "stored" (a file
    of this server: `key`, `upload` for `/v1/files/` uploads) or "upload" (multipart bytes in `data`).
    """

    kind: Literal["inline", "url", "stored", "upload"]
    text: str
    field: str
    key: str = ""
    upload: bool = False
    data: bytes | None = None

    def inline_bytes(self) -> bytes:
        return self.data if self.data is not None else decode_base64_image(self.text, field=self.field)

    async def read(self, engine: Engine, read_stored: Callable[[str], bytes] | None = None) -> bytes:
        """The encoded image bytes (a URL is fetched; a stored file read with `read_stored`)."""
        if self.kind == "url":
            return await fetch_image(engine, self.text, self.field)
        if self.kind == "stored":
            if read_stored is None:
                raise InvalidImage(f"{self.field}: files of this server are not accepted here", self.field)
            return await asyncio.to_thread(read_stored, self.key)
        return self.inline_bytes()

    async def decode(self, engine: Engine, read_stored: Callable[[str], bytes] | None = None) -> DecodedImage:
        return await engine.decode_image(await self.read(engine, read_stored), self.field)


def classify(value: Any, field: str, *, base_url: str | None = None, plain_base64: bool = True) -> ImageSource:
    """What kind of image reference `value` is; raises InvalidImage naming `field` when it is none.

    Without `plain_base64`, inline images must be data URIs (the job dialects' rule); with `base_url`,
    URLs of this server's own files are recognised (read from storage, never fetched).
    """
    if not isinstance(value, str) or not value.strip():
        raise InvalidImage(f"{field}: expected an image URL or a data URI", field)
    own = own_file_key(value, base_url)
    if own is not None:
        return ImageSource("stored", value, field, key=own[0], upload=own[1])
    if is_url(value):
        return ImageSource("url", value, field)
    if value[:5].lower() != "data:" and not plain_base64:
        raise InvalidImage(f"{field}: expected an http(s) URL or a data: URI, got {value[:40]!r}", field)
    return ImageSource("inline", value, field)


def _check_fetch_allowed(settings: ServerSettings, field: str) -> None:
    if not settings.allow_url_fetch:
        raise UrlNotAllowed(f"{field}: fetching images by URL is turned off on this server "
                            "(start it with --allow-url-fetch); send the image itself", field)


def check_url_allowed(settings: ServerSettings, url: str, field: str) -> None:
    """Refuse a URL the server would not fetch (fetching off, or not a public address), without fetching it."""
    _check_fetch_allowed(settings, field)
    check_public_url(url, field)


async def fetch_image(engine: Engine, url: str, field: str, max_bytes: int | None = None) -> bytes:
    """Download an image URL (or a video's: `max_bytes`, default `fetch_max_mb`) if the server allows it
    (public addresses only)."""
    settings = engine.settings
    _check_fetch_allowed(settings, field)
    return await asyncio.to_thread(fetch_url_bytes, url, max_bytes=max_bytes or settings.fetch_max_bytes,
                                   timeout_s=settings.fetch_timeout_s, field=field)


async def image_from_text(engine: Engine, text: Any, field: str = "image") -> DecodedImage:
    """Decode base64 / data-URI text, or fetch an http(s) URL, into RGB pixels."""
    if not isinstance(text, str):
        raise InvalidImage(f"{field}: expected a base64 string, got {type(text).__name__}", field)
    source = ImageSource("url" if is_url(text) else "inline", text, field)
    return await source.decode(engine)


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
    return parse_json_object(body), None
