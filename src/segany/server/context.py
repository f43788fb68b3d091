"""What a dialect's route is given: the engine, the job service and the request limits, nothing else.

`create_app` builds one `ServerContext` per app; routes take it with `server_context(request)` (or as the
FastAPI dependency `Depends(server_context)`), never from `app.state` directly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request

from segany.server.engine.engine import Engine
from segany.server.http.auth import api_key_id
from segany.server.http.errors import ServerBusy
from segany.server.http.limits import Limits
from segany.server.settings import ServerSettings

if TYPE_CHECKING:
    from segany.server.jobs.service import JobService


@dataclass
class ServerContext:
    settings: ServerSettings
    engine: Engine
    limits: Limits
    auto_defaults: dict[str, Any] = field(default_factory=dict)  # MaskGenerator defaults of /v1/auto and HF
    job_service: JobService | None = None  # set while the app runs (the lifespan starts and stops it)

    @property
    def jobs(self) -> JobService:
        """The job service; `ServerBusy` (503) before startup finished."""
        if self.job_service is None:
            raise ServerBusy("the job store is not started yet; retry shortly", retry_after_s=1)
        return self.job_service

    def api_key_id(self, request: Request) -> str | None:
        """The opaque id of the request's API key (None when auth is off)."""
        return api_key_id(self.settings.api_keys, request.headers, request.url.query)


def server_context(request: Request) -> ServerContext:
    """The app's `ServerContext` (a FastAPI dependency)."""
    return request.app.state.context
