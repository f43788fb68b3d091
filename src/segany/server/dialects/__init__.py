"""API dialects, registered in one place: `DIALECTS` lists one `Dialect` per wire protocol.

To add a dialect, write its module (schemas, routes, `error_response`, a `DIALECT = Dialect(...)` at the
end) and append `<module>.DIALECT` below; `create_app` includes its router, routes its errors and starts
its job kinds. The native dialect answers errors on paths no other dialect claims.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.responses import Response

from segany.server.dialects import (
    cog, cvat, huggingface, label_studio, livepeer, native, native_video, replicate, roboflow, segmind, xanylabeling,
)
from segany.server.dialects.dialect import Dialect
from segany.server.http.errors import ErrorInfo

if TYPE_CHECKING:
    from segany.server.jobs.service import JobKind

DIALECTS: tuple[Dialect, ...] = (
    native.DIALECT,
    native_video.DIALECT,
    livepeer.DIALECT,
    huggingface.DIALECT,
    roboflow.DIALECT,
    replicate.DIALECT,
    cog.DIALECT,
    segmind.DIALECT,
    label_studio.DIALECT,
    cvat.DIALECT,
    xanylabeling.DIALECT,
)
FALLBACK = native.DIALECT


def dialect_for(path: str) -> Dialect:
    """The dialect that serves `path` (the longest matching prefix wins; native by default)."""
    best = max(DIALECTS, key=lambda dialect: dialect.match_length(path))
    return best if best.match_length(path) > 0 else FALLBACK


def render_error(path: str, info: ErrorInfo) -> Response:
    """Render `info` in the error shape of the dialect that serves `path`."""
    return dialect_for(path).render_error(info)


def job_kinds() -> dict[str, JobKind]:
    """Every registered dialect's job kinds, by name."""
    return {name: kind for dialect in DIALECTS for name, kind in dialect.job_kinds.items()}
