"""The interactive page at `/`: static files from `segany/server/static/` and what the page needs to know.

Everything is served from the package (no CDN, no build step), so the page works on a machine that is
offline. `/web/capabilities` tells the page which optional features this server has (text prompts) and
the defaults it should show for "Segment everything".
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse

from segany.server.context import server_context
from segany.server.dialects.native import error_response
from segany.server.dialects.native_schemas import SegmentIn
from segany.server.http.errors import ErrorInfo

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

# Explicit types: ES modules are refused by browsers unless served as JavaScript, and the platform's
# mimetypes table (read from /etc/mime.types when present) differs between machines.
_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
}
# The page changes with the installed package; revalidate (ETag / Last-Modified) instead of caching blindly.
_CACHE_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
# The browser itself refuses anything not from this server, so the page cannot quietly depend on the network.
_PAGE_HEADERS = {
    **_CACHE_HEADERS,
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(include_in_schema=False)


def _static_file(relative: str) -> Path | None:
    """The file under STATIC_DIR named by a URL path, or None (missing, a folder, or outside the folder)."""
    candidate = (STATIC_DIR / relative).resolve()
    if STATIC_DIR not in candidate.parents or not candidate.is_file():
        return None
    if candidate.suffix not in _MEDIA_TYPES:
        return None
    return candidate


def _file_response(path: Path, headers: dict[str, str] = _CACHE_HEADERS) -> FileResponse:
    return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix], headers=headers)


@router.get("/")
async def index() -> FileResponse:
    """The segmentation page."""
    return _file_response(STATIC_DIR / "index.html", _PAGE_HEADERS)


@router.get("/static/{relative:path}")
async def static_file(relative: str) -> Any:
    """A file of the page (scripts, style); 404 for anything else."""
    path = _static_file(relative)
    if path is None:
        return error_response(ErrorInfo(404, "not_found", f"path: no static file {relative!r}", "path"))
    return _file_response(path)


def text_capability() -> dict[str, Any]:
    """Whether `/v1/segment` takes a `text` phrase here; when not, a sentence the page shows instead."""
    if "text" not in SegmentIn.model_fields:
        return {"available": False,
                "reason": "This server's /v1/segment does not take text prompts yet; use points, boxes or "
                          "Segment everything."}
    if importlib.util.find_spec("transformers") is None:
        return {"available": False,
                "reason": "Text prompts need the text extra on the server: pip install 'segany[text]', then "
                          "restart segany serve."}
    return {"available": True, "reason": None}


@router.get("/web/capabilities")
async def capabilities(request: Request) -> JSONResponse:
    """What the page adapts to: text prompts, the default model, AMG defaults and limits."""
    context = server_context(request)
    limits = context.limits
    return JSONResponse({
        "model": context.engine.pool.default_variant,
        "text": text_capability(),
        "auto_defaults": dict(context.auto_defaults),
        "limits": {"max_points_per_side": limits.max_points_per_side,
                   "max_points_per_prompt": limits.max_points_per_prompt,
                   "max_image_pixels": limits.max_image_pixels,
                   "max_body_bytes": limits.max_body_bytes},
    }, headers={"Cache-Control": "no-store"})
