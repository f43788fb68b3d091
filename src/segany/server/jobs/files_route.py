"""`GET /files/{key}`: output files (mask PNGs, overlay JPEGs, videos) and stored input images, by unguessable key.

Only the media types segany itself writes are served inline; anything else (an upload claiming `text/html`)
is sent as an attachment of type `application/octet-stream`, so no stored file runs as a page on this
origin (the web page keeps the API key in `sessionStorage`). Uploads (`private`) answer only their owner's
key and look absent to anyone else.
"""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from segany.server.context import server_context
from segany.server.jobs.errors import StoredFileNotFound
from segany.server.jobs.storage import LocalStorage, readable_by

PATH_PREFIXES = ("/files/",)
INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "video/mp4"})
router = APIRouter(tags=["files"])


@router.head("/files/{key}", include_in_schema=False)
@router.get("/files/{key}", responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}, 404: {}})
async def get_file(key: str, request: Request) -> Response:
    """An output file (mask PNG, overlay JPEG) or an input image, by its unguessable key."""
    context = server_context(request)
    storage = context.jobs.storage
    info = storage.info(key)
    if not readable_by(info, context.api_key_id(request)):
        raise StoredFileNotFound(f"no stored file {key!r}")
    headers = {"cache-control": "private, max-age=3600", "x-content-type-options": "nosniff"}
    media_type = info.content_type.split(";")[0].strip().lower()
    if media_type not in INLINE_TYPES:
        media_type = "application/octet-stream"
        headers["content-disposition"] = "attachment"
    if isinstance(storage, LocalStorage):
        return FileResponse(storage.path_for(key), media_type=media_type, headers=headers)
    return Response(await asyncio.to_thread(storage.get, key), media_type=media_type, headers=headers)
