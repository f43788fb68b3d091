"""API dialects: one module per API, each owning its routes, schemas and error shape."""
from __future__ import annotations

from starlette.responses import JSONResponse

from segany.server.http.errors import ErrorInfo


def render_error(path: str, info: ErrorInfo) -> JSONResponse:
    """Render `info` in the error shape of the dialect that serves `path` (native by default)."""
    from segany.server.dialects import cog, huggingface, livepeer, native, replicate, roboflow, segmind
    from segany.server.dialects import cvat, label_studio, xanylabeling

    for tool in (xanylabeling, label_studio, cvat):
        if path.startswith(tool.PATH_PREFIXES):
            return tool.error_response(info)
    # Replicate and Segmind share the /v1/ prefix with the native API: check them first.
    for dialect in (replicate, segmind, cog):
        if path.startswith(dialect.PATH_PREFIXES):
            return dialect.error_response(info)
    if path.startswith(livepeer.PATH_PREFIXES):
        return livepeer.error_response(info)
    if path.startswith(roboflow.PATH_PREFIXES):
        return roboflow.error_response(info)
    if path.startswith(huggingface.PATH_PREFIXES) or path in huggingface.EXACT_PATHS:
        return huggingface.error_response(info)
    return native.error_response(info)
