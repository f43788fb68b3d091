"""What one wire protocol registers: its routes, the paths it answers, its error shape and its job kinds."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import APIRouter
from starlette.responses import Response

from segany.server.http.errors import ErrorInfo

if TYPE_CHECKING:
    from segany.server.jobs.service import JobKind


@dataclass(frozen=True)
class Dialect:
    """One API dialect. Errors on a path are rendered by the dialect with the longest matching prefix
    (or an exact path); the native dialect answers the rest."""

    name: str
    router: APIRouter
    path_prefixes: tuple[str, ...]
    render_error: Callable[[ErrorInfo], Response]
    exact_paths: tuple[str, ...] = ()
    # Render FastAPI's own errors (unknown route 404, 405) in this dialect's shape; else FastAPI's {"detail"}.
    renders_http_errors: bool = False
    # Render request-validation errors in this dialect's shape; else FastAPI's own 422 list.
    renders_validation_errors: bool = True
    job_kinds: Mapping[str, JobKind] = field(default_factory=dict)  # job kind -> how its jobs run

    def match_length(self, path: str) -> int:
        """How specifically this dialect claims `path`: the matched prefix's length, 0 for none."""
        if path in self.exact_paths:
            return len(path) + 1
        return max((len(prefix) for prefix in self.path_prefixes if path.startswith(prefix)), default=0)
