"""Automatic-mask-generation parameters shared by `/v1/auto` and the Hugging Face dialect.

Every field is optional: an omitted one takes the server's `--auto-defaults` value if set, else the
`segany.MaskGenerator` default (the official generator's). Bounds keep one request's work finite.
"""
from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, create_model

from segany.predict.amg.params import amg_fields
from segany.server.http.json_body import parse_json_object

# `output_mode` follows the response format; `max_masks` is the native API's own field.
GENERATOR_FIELDS = tuple(name for name in amg_fields() if name not in ("output_mode", "max_masks"))
_TYPES = {"int": int, "real": float, "bool": bool}


def request_field(name: str, *, default: Any = None, description: str | None = None,
                  annotation: Any = None, **extra: Any) -> tuple[Any, Any]:
    """A pydantic field for the generator parameter `name`, from its one declaration in
    `segany.predict.amg.params`: type, library bounds capped by the per-request maximum, help text."""
    spec = amg_fields()[name]
    meta = spec.metadata
    bounds = dict(meta["bounds"])
    if meta["request_max"] is not None:
        bounds["le"] = min(bounds.get("le", meta["request_max"]), meta["request_max"])
    kind = annotation or _TYPES[meta["kind"]]
    if default is None:
        kind = kind | None
    shown = str(spec.default).lower() if isinstance(spec.default, bool) else f"{spec.default:g}"
    return kind, Field(default, description=description or f"{meta['help']} (default {shown})", **bounds, **extra)


# Every field optional: an omitted one takes the server default, else the generator's.
AutoParams = create_model(
    "AutoParams", __config__=ConfigDict(extra="forbid", allow_inf_nan=False),
    **{name: request_field(name) for name in GENERATOR_FIELDS},
)


def parse_auto_defaults(text: str | None) -> dict[str, Any]:
    """The `--auto-defaults` JSON object, validated like request parameters."""
    document = parse_json_object(text or "", "auto_defaults", empty={})
    if not document:
        return {}
    return AutoParams.model_validate(document).model_dump(exclude_none=True)


def auto_params_with_defaults(params: AutoParams, defaults: dict[str, Any],
                              exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """MaskGenerator keyword arguments: the request's values over the server defaults."""
    merged = {k: v for k, v in defaults.items() if k not in exclude}
    for name in GENERATOR_FIELDS:
        value = getattr(params, name, None)
        if value is not None and name not in exclude:
            merged[name] = value
    return merged
