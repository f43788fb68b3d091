"""JSON request bodies that must be one object: parsed once, with the same 400 messages on every route."""
from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from segany.errors import InvalidInput


def parse_json_object(data: bytes | str, field: str = "body", *, empty: dict[str, Any] | None = None) -> dict[str, Any]:
    """`data` as a JSON object; `empty` (when given) stands for no data at all, else empty data is refused.
    Anything else is an `InvalidInput` naming `field`."""
    if not data:
        if empty is not None:
            return dict(empty)
        raise InvalidInput(f"{field}: expected a JSON object", field)
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise InvalidInput(f"{field}: not valid JSON ({error})", field) from None
    if not isinstance(document, dict):
        raise InvalidInput(f"{field}: expected a JSON object", field)
    return document


async def json_object_body(request: Request, *, empty: dict[str, Any] | None = None) -> dict[str, Any]:
    """The request body as a JSON object (see `parse_json_object`)."""
    return parse_json_object(await request.body(), "body", empty=empty)
