"""One table from domain errors to HTTP status codes, shared by every API dialect.

Modules raise classes from `segany.errors` (or the few server-only classes below); `describe(exc)` turns
any exception into an `ErrorInfo` (status, message, field, headers) and each dialect renders that in
its own JSON shape. Unknown exceptions are logged with their traceback and become a 500 whose message
reveals no internals.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from segany.errors import (
    CheckpointError,
    ImageTooLarge,
    InvalidImage,
    InvalidInput,
    InvalidPrompt,
    MissingExtra,
    ModelNotFound,
    SeganyError,
)
from segany.server.jobs.errors import JobConflict, JobNotFound, QuotaExceeded, StoredFileNotFound, UploadQuotaExceeded

log = logging.getLogger("segany.server")


class Unauthorized(SeganyError):
    """No API key, or one that is not configured, on a route that needs one."""


class PayloadTooLarge(InvalidInput):
    """The request body is larger than `max_body_mb`."""


class BodyTimeout(InvalidInput):
    """The request body did not arrive within `body_timeout_s` (a trickled or stalled upload)."""


class ImageIdNotFound(InvalidInput):
    """An `image_id` that is not (or no longer) in the embedding cache."""

    def __init__(self, message: str, field: str | None = "image_id") -> None:
        super().__init__(message, field)


class VideoSessionNotFound(InvalidInput):
    """A video session id that does not exist (never created, deleted, or closed after idling)."""

    def __init__(self, message: str, field: str | None = "session_id") -> None:
        super().__init__(message, field)


class VideoSessionBusy(SeganyError):
    """The video session is propagating; one propagation (and nothing else) runs on a session at a time."""


class UrlNotAllowed(InvalidInput):
    """Image URL fetching is off, or the URL points at a non-public address or scheme."""


class FetchFailed(InvalidInput):
    """The image URL could not be fetched (status, size or time limit)."""


class ServerBusy(SeganyError):
    """The inference queue is full; the client should retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTimeout(SeganyError):
    """The request did not finish within `request_timeout_s`."""


class WorkAbandoned(RequestTimeout):
    """Raised inside abandoned work at its next batch boundary, so that its thread stops computing."""


# Ordered most specific first: `describe` takes the first row the exception is an instance of.
ERROR_TABLE: tuple[tuple[type[BaseException], int, str], ...] = (
    (Unauthorized, 401, "unauthorized"),
    (PayloadTooLarge, 413, "payload_too_large"),
    (BodyTimeout, 408, "body_timeout"),
    (ImageTooLarge, 413, "image_too_large"),
    (ImageIdNotFound, 404, "image_id_not_found"),
    (VideoSessionNotFound, 404, "session_not_found"),
    (UrlNotAllowed, 403, "url_not_allowed"),
    (FetchFailed, 400, "fetch_failed"),
    (InvalidImage, 400, "invalid_image"),
    (InvalidPrompt, 400, "invalid_prompt"),
    (InvalidInput, 400, "invalid_input"),
    (ValidationError, 422, "validation_error"),
    (RequestValidationError, 422, "validation_error"),
    (ModelNotFound, 404, "model_not_found"),
    (QuotaExceeded, 406, "not_enough_credits"),  # Segmind's status for an exhausted key
    (UploadQuotaExceeded, 429, "upload_quota_exceeded"),
    (JobNotFound, 404, "not_found"),
    (StoredFileNotFound, 404, "not_found"),
    (JobConflict, 409, "conflict"),
    (VideoSessionBusy, 409, "session_busy"),
    # A checkpoint that fails to load makes that model unavailable: the client named it, so 4xx.
    (CheckpointError, 404, "model_unavailable"),
    (MissingExtra, 501, "missing_extra"),
    (ServerBusy, 503, "server_busy"),
    # JSON inside a form field nested too deeply for the parser (JSON bodies are refused earlier, by depth).
    (RecursionError, 400, "too_deeply_nested"),
    (RequestTimeout, 504, "timeout"),
)


@dataclass(frozen=True)
class ErrorInfo:
    """What every dialect needs to render an error response."""

    status: int
    code: str
    message: str
    field: str | None = None
    headers: dict[str, str] = dataclass_field(default_factory=dict)


def validation_message(errors: Sequence[Mapping[str, Any]]) -> tuple[str, str | None]:
    """Pydantic's errors as one 'field: message' with the dotted field path (FastAPI's leading 'body'
    dropped) and how many more errors there were; the one format every dialect shows."""
    if not errors:
        return "invalid request", None
    first = errors[0]
    path = ".".join(str(part) for i, part in enumerate(first.get("loc", ())) if not (i == 0 and part == "body"))
    message = f"{path}: {first.get('msg', 'invalid value')}" if path else str(first.get("msg", "invalid value"))
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return message, path or None


def describe(exc: BaseException) -> ErrorInfo:
    """Map any exception to an `ErrorInfo` through `ERROR_TABLE`; unknown ones become a logged 500."""
    if isinstance(exc, StarletteHTTPException):  # FastAPI's own: unknown route, wrong method
        return ErrorInfo(exc.status_code, "http_error", str(exc.detail), None, dict(exc.headers or {}))
    for error_class, status, code in ERROR_TABLE:
        if isinstance(exc, error_class):
            break
    else:
        log.error("unhandled error", exc_info=exc)
        return ErrorInfo(500, "internal_error", "internal server error")
    headers: dict[str, str] = {}
    if isinstance(exc, ValidationError):
        message, field_name = validation_message(exc.errors(include_url=False))
    elif isinstance(exc, RequestValidationError):
        message, field_name = validation_message(exc.errors())
    elif isinstance(exc, RecursionError):
        message, field_name = "the request holds JSON nested too deeply to parse", None
    else:
        message, field_name = str(exc) or code.replace("_", " "), getattr(exc, "field", None)
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, ServerBusy):
        headers["Retry-After"] = str(max(1, int(exc.retry_after_s)))
    if isinstance(exc, QuotaExceeded):
        headers["x-remaining-credits"] = str(exc.remaining)
    return ErrorInfo(status, code, message, field_name, headers)
