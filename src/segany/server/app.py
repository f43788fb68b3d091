"""FastAPI application factory: one engine behind every dialect's routes."""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.responses import Response

import segany
from segany.errors import SeganyError
from segany.server.http import docs_assets, health, openapi, webpage
from segany.server.jobs import service as jobs_service
from segany.server.dialects import huggingface, livepeer, native, render_error, roboflow
from segany.server.dialects.auto_params import parse_auto_defaults
from segany.server.dialects.native_labelled import RecentImages
from segany.server.engine.engine import Engine
from segany.server.http.errors import ErrorInfo, describe
from segany.server.http.limits import Limits
from segany.server.engine.logits_cache import LogitsCache
from segany.server.http.middleware import GuardMiddleware
from segany.server.engine.model_pool import ModelLoader
from segany.server.settings import ServerSettings, settings_from

log = logging.getLogger("segany.server")

DESCRIPTION = """Self-hosted Segment Anything 2. One inference engine answers the native API (`/v1/...`),
Livepeer (`/segment-anything-2`), Hugging Face (`/models/{id}`, `/`) and Roboflow (`/sam2/...`) requests.
With API keys configured, send `Authorization: Bearer <key>` (or `x-api-key`, or `?api_key=`)."""


async def _handle_error(request: Request, error: Exception) -> Response:
    return render_error(request.url.path, describe(error))


async def _handle_validation(request: Request, error: Exception) -> Response:
    path = request.url.path
    assert isinstance(error, RequestValidationError)
    if path.startswith(livepeer.PATH_PREFIXES):
        return await request_validation_exception_handler(request, error)  # the runner's own 422 shape
    first = error.errors()[0] if error.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    message = f"{where}: {first.get('msg', 'invalid request')}" if where else str(first.get("msg", "invalid"))
    return render_error(path, ErrorInfo(422, "validation_error", message, where or None))


def create_app(settings: ServerSettings | None = None, *, engine: Engine | None = None,
               loader: ModelLoader | None = None) -> FastAPI:
    """Build the server. `settings` default to the environment (`SEGANY_...`); `loader` replaces
    `segany.load_model` (tests use it only to count loads; it must return a real model)."""
    settings = settings or settings_from()
    engine = engine or Engine(settings, loader=loader)
    auto_defaults = parse_auto_defaults(settings.auto_defaults)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()

    app = FastAPI(title="segany", version=segany.__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = engine
    app.state.limits = Limits.from_settings(settings)
    app.state.auto_defaults = auto_defaults
    app.state.logits_cache = LogitsCache()
    app.state.recent_images = RecentImages()
    for router in (health.router, webpage.router, native.router, livepeer.router, huggingface.router, roboflow.router):
        app.include_router(router)
    app.add_exception_handler(SeganyError, _handle_error)
    app.add_exception_handler(ValidationError, _handle_error)
    app.add_exception_handler(RequestValidationError, _handle_validation)
    app.add_exception_handler(Exception, _handle_error)
    app.add_middleware(GuardMiddleware, max_body_bytes=settings.max_body_bytes, api_keys=settings.api_keys,
                       metrics=engine.metrics, render_error=render_error, weights=engine.pool.default_weights)
    openapi.install(app)
    docs_assets.install(app)  # /docs and /redoc with their assets served from here (they work offline)
    jobs_service.install(app, settings)  # Replicate, Cog and Segmind routes on the job store
    return app
