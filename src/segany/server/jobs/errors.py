"""Errors of the job machinery (store, quotas, storage); `segany.server.http.errors` maps them to statuses."""
from __future__ import annotations

from segany.errors import SeganyError


class JobNotFound(SeganyError, LookupError):
    """No job with that id (or not visible to the calling API key)."""


class JobConflict(SeganyError):
    """An idempotent create reused an id or idempotency key for a different request."""


class QuotaExceeded(SeganyError):
    """The API key has fewer credits left than the request costs (Segmind: 406 "Not enough credits")."""

    def __init__(self, message: str = "Not enough credits", remaining: int = 0) -> None:
        super().__init__(message)
        self.remaining = remaining


class UploadQuotaExceeded(SeganyError):
    """The API key already keeps `max_upload_mb_per_key` of uploads (HTTP 429)."""

    field = "content"


class StoredFileNotFound(SeganyError, LookupError):
    """No stored file under that key (also raised for keys that cannot be valid, such as '../x')."""
