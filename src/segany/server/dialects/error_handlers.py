"""The app's one set of exception handlers: every error is rendered in the shape of the dialect serving the path.

Domain errors go through `segany.server.http.errors.describe` (one status table). FastAPI's own errors
(unknown route, wrong method; request validation) keep FastAPI's shape on the paths of dialects that do
not claim them (see `Dialect.renders_http_errors`, `Dialect.renders_validation_errors`).
"""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from segany.errors import SeganyError
from segany.server.dialects import dialect_for
from segany.server.http.errors import describe


async def _handle_error(request: Request, error: Exception) -> Response:
    return dialect_for(request.url.path).render_error(describe(error))


async def _handle_http_error(request: Request, error: Exception) -> Response:
    dialect = dialect_for(request.url.path)
    if not dialect.renders_http_errors:
        assert isinstance(error, StarletteHTTPException)
        return await http_exception_handler(request, error)
    return dialect.render_error(describe(error))


async def _handle_validation(request: Request, error: Exception) -> Response:
    dialect = dialect_for(request.url.path)
    if not dialect.renders_validation_errors:
        assert isinstance(error, RequestValidationError)
        return await request_validation_exception_handler(request, error)  # e.g. Livepeer's runner's 422 shape
    return dialect.render_error(describe(error))


def install_exception_handlers(app: FastAPI) -> None:
    for error_class in (SeganyError, ValidationError, Exception):
        app.add_exception_handler(error_class, _handle_error)
    app.add_exception_handler(StarletteHTTPException, _handle_http_error)
    app.add_exception_handler(RequestValidationError, _handle_validation)
