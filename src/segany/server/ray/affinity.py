"""Which replica a request belongs on: the affinity key of a request, read by the ingress.

The key is the image the request is about, so that every request for one image reaches the replica whose
embedding cache holds it (Ray Serve routes a request with `multiplexed_model_id=key` to a replica that has
served that key before, else to the replica holding the fewest keys):

- a request naming an image (`image_id`: the native API's pixel digest, or a Roboflow client id) without
  sending it is keyed by that id (the ingress first maps a client id to the digest it was uploaded with);
- a request carrying the image itself (also when it names an `image_id` for it, which becomes the key's
  `alias`) (JSON `image` / `inputs` / `input.image` as base64 or a data URI, a
  multipart `image` upload, or a raw image body) is keyed by the digest of its decoded pixels
  (`segany.io.images.image_digest`), which is exactly the `image_id` the server answers with, so the
  upload and the clicks that follow it land on the same replica;
- anything else (URLs, job status, files, metrics) has no key and may go to any replica.

Decoding here costs a few milliseconds per upload, once per image and client in the web page's flow; the
replica decodes again (the pixels are not shipped twice across the cluster).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from segany.errors import SeganyError
from segany.io.images import decode_base64_image, image_digest, load_image

# POSTs that create a job or a file: repeating one after a replica died mid-request could run it twice, so
# the ingress answers 503 with Retry-After instead of retrying it itself. Everything else is safe to resend.
_CREATES = re.compile(r"^/(v1/predictions|v1/models/[^/]+/[^/]+/predictions|predictions|v2/sam-v2-image|v1/files)/?$")
_IMAGE_FIELDS = ("image", "inputs")
MAX_KEY_CHARS = 200


@dataclass(frozen=True)
class ImageKey:
    """A request's affinity key; `by_id` when the request named an image id rather than carrying pixels."""

    key: str
    by_id: bool
    alias: str | None = None  # the image_id an upload names its pixels by (its key is their digest)


def _named_or_pixels(image_id: Any, pixels: ImageKey | None) -> ImageKey | None:
    """The key of a request with (readable) pixels and/or an image id: pixels win, naming their alias.

    Keying an aliased upload by its digest sends it where that image may already be embedded, and gives
    the ingress a digest to route the alias's later requests by: a brand-new alias alone would be a key
    the router learns of only after a replica reports it.
    """
    named = image_id if isinstance(image_id, str) and 0 < len(image_id) <= MAX_KEY_CHARS else None
    if pixels is not None:
        return ImageKey(pixels.key, by_id=False, alias=named)
    return ImageKey(named, by_id=True) if named is not None else None


def retry_safe(method: str, path: str) -> bool:
    """True when sending the request again cannot do anything twice (all reads; inference; idempotent PUTs)."""
    return method.upper() != "POST" or _CREATES.match(path) is None


def affinity_key(content_type: str, body: bytes, max_pixels: int) -> ImageKey | None:
    """The request's image key (see the module docstring), or None when it names no image we can read."""
    kind = content_type.split(";")[0].strip().lower()
    if not body:
        return None
    if kind == "application/json" or (not kind and body[:1] == b"{"):
        return _json_key(body, max_pixels)
    if kind == "multipart/form-data":
        return _multipart_key(content_type, body, max_pixels)
    if kind.startswith("image/") or kind == "application/octet-stream":
        return _pixels_key(body, max_pixels)
    return None


def _json_key(body: bytes, max_pixels: int) -> ImageKey | None:
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    nested = payload.get("input")
    candidates = [payload.get(name) for name in _IMAGE_FIELDS]
    if isinstance(nested, dict):
        candidates.append(nested.get("image"))
    for value in candidates:
        if isinstance(value, dict):  # Roboflow: {"type": "base64", "value": ...}
            value = value.get("value") if value.get("type", "base64") == "base64" else None
        if isinstance(value, str) and value and not value[:8].lower().startswith(("http://", "https://")):
            try:
                pixels = _pixels_key(decode_base64_image(value, field="image"), max_pixels)
            except SeganyError:
                pixels = None
            return _named_or_pixels(payload.get("image_id"), pixels)
    return _named_or_pixels(payload.get("image_id"), None)


def _multipart_key(content_type: str, body: bytes, max_pixels: int) -> ImageKey | None:
    # The standard library's MIME parser reads form-data well enough for two fields; no request object needed.
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
                                                  + body)
    if not message.is_multipart():
        return None
    image_part: Any = None
    image_id = None
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name == "image_id":
            image_id = part.get_payload(decode=True).decode("utf-8", "replace").strip()
        elif name == "image":
            image_part = part
    return _named_or_pixels(image_id, None if image_part is None else _part_pixels(image_part, max_pixels))


def _part_pixels(image_part: Any, max_pixels: int) -> ImageKey | None:
    data = image_part.get_payload(decode=True) or b""
    if image_part.get_filename() is None:  # a text field: base64 or a URL
        text = data.decode("utf-8", "replace").strip()
        if not text or text[:8].lower().startswith(("http://", "https://")):
            return None
        try:
            data = decode_base64_image(text, field="image")
        except SeganyError:
            return None
    return _pixels_key(data, max_pixels)


def _pixels_key(data: bytes, max_pixels: int) -> ImageKey | None:
    try:
        return ImageKey(image_digest(load_image(data, max_pixels=max_pixels)), by_id=False)
    except SeganyError:
        return None  # the replica will answer the proper 4xx
