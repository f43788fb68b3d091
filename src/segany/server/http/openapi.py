"""OpenAPI request bodies for routes that parse their own body (JSON and multipart, or raw bytes).

FastAPI documents a body only when it validates it itself; routes that accept both JSON and
multipart read the body by hand, so `body_schema(Model)` describes both encodings and
`install(app)` adds the pydantic models' schemas to `components/schemas` of the generated document.
"""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

_REF = "#/components/schemas/{model}"
_COMPONENTS: dict[str, dict[str, Any]] = {}


def _register(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=_REF)
    for name, definition in schema.pop("$defs", {}).items():
        _COMPONENTS.setdefault(name, definition)
    _COMPONENTS.setdefault(model.__name__, schema)
    return schema


def body_schema(model: type[BaseModel], *, multipart: bool = True, file_field: str = "image",
                json_fields: tuple[str, ...] = (), extra_content: dict[str, Any] | None = None) -> dict[str, Any]:
    """`openapi_extra` documenting a JSON body of `model` and, with `multipart`, the same as form fields.

    In the multipart form, `file_field` is an uploaded file and `json_fields` carry JSON text.
    """
    schema = _register(model)
    content: dict[str, Any] = {"application/json": {"schema": {"$ref": _REF.format(model=model.__name__)}}}
    if multipart:
        properties: dict[str, Any] = {}
        for name, prop in schema.get("properties", {}).items():
            if name == file_field:
                properties[name] = {"type": "string", "format": "binary", "description": "the image file"}
            elif name in json_fields:
                properties[name] = {"type": "string", "description": f"{name} as JSON text"}
            else:
                properties[name] = prop
        content["multipart/form-data"] = {"schema": {"type": "object", "properties": properties}}
    content.update(extra_content or {})
    return {"requestBody": {"required": True, "content": content}}


def install(app: FastAPI) -> None:
    """Make `app.openapi()` include the schemas registered by `body_schema`."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, description=app.description,
                                   routes=app.routes)
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in _COMPONENTS.items():
                schemas.setdefault(name, definition)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
