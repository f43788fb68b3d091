"""`GET /files/{key}`: output files (mask PNGs, overlay JPEGs) and stored input images, by unguessable key."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from segany.server.context import server_context
from segany.server.jobs.storage import LocalStorage

PATH_PREFIXES = ("/files/",)
router = APIRouter(tags=["files"])


@router.head("/files/{key}", include_in_schema=False)
@router.get("/files/{key}", responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}, 404: {}})
async def get_file(key: str, request: Request) -> Response:
    """An output file (mask PNG, overlay JPEG) or an input image, by its unguessable key."""
    storage = server_context(request).jobs.storage
    info = storage.info(key)
    headers = {"cache-control": "private, max-age=3600"}
    if isinstance(storage, LocalStorage):
        return FileResponse(storage.path_for(key), media_type=info.content_type, headers=headers)
    return Response(await asyncio.to_thread(storage.get, key), media_type=info.content_type, headers=headers)
