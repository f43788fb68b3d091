"""Domain errors shared by the library, the CLI and the server.

Every error a user can cause is a subclass of `SeganyError`; the server maps these classes to HTTP
status codes through one table (`segany.server.http.errors`), so raising the right class here is all a
module needs to do to produce the right 4xx. Input errors also subclass `ValueError` so plain Python
callers can catch them the usual way.
"""
from __future__ import annotations


class SeganyError(Exception):
    """Base class of every error segany raises on purpose."""


class InvalidInput(SeganyError, ValueError):
    """A request value is malformed. `field` names the offending input (``"point_coords"``, ``"image"``...)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidPrompt(InvalidInput):
    """Points, labels, boxes or mask input with a wrong shape, value or combination."""


class InvalidImage(InvalidInput):
    """An image that cannot be decoded, has an unsupported format, or is too large."""

    def __init__(self, message: str, field: str | None = "image") -> None:
        super().__init__(message, field)


class ImageTooLarge(InvalidImage):
    """The image has more pixels (or bytes) than the configured limit."""


class ModelNotFound(SeganyError, LookupError):
    """An unknown variant name, or an id whose weights are not available locally (offline)."""


class CheckpointError(SeganyError, RuntimeError):
    """A checkpoint file that is truncated, of another variant, or has missing/unexpected keys."""


class MissingExtra(SeganyError, ImportError):
    """An optional dependency is needed; the message names the `pip install segany[extra]` to run."""

    def __init__(self, extra: str, package: str, purpose: str) -> None:
        super().__init__(f"{purpose} needs the optional package {package!r}: pip install 'segany[{extra}]'")
        self.extra = extra
        self.package = package
