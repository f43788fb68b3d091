"""FastAPI application factory: one engine behind every dialect's routes."""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

import segany
from segany.server.context import ServerContext
from segany.server.dialects import DIALECTS, job_kinds, render_error
from segany.server.dialects.auto_params import parse_auto_defaults
from segany.server.dialects.error_handlers import install_exception_handlers
from segany.server.engine.engine import Engine
from segany.server.engine.model_pool import ModelLoader
from segany.server.http import docs_assets, health, openapi, webpage
from segany.server.http.middleware import GuardMiddleware
from segany.server.jobs import files_route
from segany.server.jobs.service import JobService
from segany.server.settings import ServerSettings, settings_from

log = logging.getLogger("segany.server")

DESCRIPTION = """Self-hosted Segment Anything 2. One inference engine answers the native API (`/v1/...`),
Livepeer (`/segment-anything-2`), Hugging Face (`/models/{id}`, `/`) and Roboflow (`/sam2/...`) requests.
With API keys configured, send `Authorization: Bearer <key>` (or `x-api-key`, or `?api_key=`)."""


def create_app(settings: ServerSettings | None = None, *, engine: Engine | None = None,
               loader: ModelLoader | None = None) -> FastAPI:
    """Build the server. `settings` default to the environment (`SEGANY_...`); `loader` replaces
    `segany.load_model` (tests use it only to count loads; it must return a real model)."""
    settings = settings or settings_from()
    engine = engine or Engine(settings, loader=loader)
    context = ServerContext(settings, engine, engine.limits, parse_auto_defaults(settings.auto_defaults))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        try:
            context.job_service = JobService.start(settings, engine, context.limits, job_kinds())
            try:
                yield
            finally:
                jobs, context.job_service = context.job_service, None
                await jobs.stop()  # before the engine, so running jobs can finish
        finally:
            await engine.stop()

    app = FastAPI(title="segany", version=segany.__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = engine
    app.state.context = context
    for router in (health.router, webpage.router, files_route.router):
        app.include_router(router)
    for dialect in DIALECTS:
        app.include_router(dialect.router)
    install_exception_handlers(app)
    app.add_middleware(GuardMiddleware, max_body_bytes=settings.max_body_bytes, api_keys=settings.api_keys,
                       metrics=engine.metrics, render_error=render_error, weights=engine.pool.default_weights,
                       body_timeout_s=settings.body_timeout_s, max_buffered_bytes=settings.max_buffered_bytes)
    openapi.install(app)
    docs_assets.install(app)  # /docs and /redoc with their assets served from here (they work offline)
    return app
