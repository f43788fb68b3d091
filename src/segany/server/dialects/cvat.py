"""CVAT serverless-interactor dialect: segany stands in for nuclio and its SAM 2 functions.

CVAT's lambda manager (`cvat/apps/lambda_manager/views.py`) lists functions from the nuclio dashboard
(`GET /api/functions`, reading `metadata.name`, `metadata.annotations` {type, name, version, spec,
min_pos_points, min_neg_points, help_message, ...}, `spec.description`, `status`) and invokes one through
`POST /api/function_invocations` with the `x-nuclio-function-name` header. Pointing CVAT's
`CVAT_NUCLIO_HOST` / `CVAT_NUCLIO_PORT` at segany is enough. The same bodies are also served at
`POST /cvat/functions/{name}` for a proxy or a nuclio function that forwards to segany.

Body (an interactor call): `{image: base64 frame, pos_points: [[x, y]...], neg_points, obj_bbox:
[[x0, y0], [x1, y1]] | null}` in pixels. Functions:
- `segany-sam2`: `{"mask": H x W rows of 0/255}`, the best of three masks, as CVAT's SAM 2 function answers.
- `pth-facebookresearch-sam2-hiera-large` (the id CVAT's SAM 2.1 browser plugin intercepts): base64 float32
  (little-endian, C order) `image_embed` 1x256x64x64, `high_res_feats_0` 1x32x256x256 and
  `high_res_feats_1` 1x64x128x128, decoded in the browser by `segany export onnx-decoder`'s model.
Errors: `{"error": "..."}` with the HTTP status. Auth: basic auth (`user:KEY@host` in CVAT's nuclio host).
"""
from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from segany.errors import InvalidInput, InvalidPrompt, ModelNotFound
from segany.io.images import decode_base64_image
from segany.server.context import server_context
from segany.server.dialects.dialect import Dialect
from segany.server.engine.engine import EmbedResult, Engine
from segany.server.http.json_body import json_object_body
from segany.server.http.errors import ErrorInfo
from segany.server.http.limits import Limits
from segany.server.http.prompt_fields import make_prompt

PATH_PREFIXES = ("/api/functions", "/api/function_invocations", "/cvat/")
router = APIRouter(tags=["cvat"])
MASK_FUNCTION = "segany-sam2"
EMBEDDING_FUNCTION = "pth-facebookresearch-sam2-hiera-large"  # CVAT's SAM 2.1 plugin matches this id
_HELP = "Click inside the object (and outside it for negative points); segany answers with its mask."
_DESCRIPTIONS = {
    MASK_FUNCTION: ("Segment Anything 2 (segany)", "Interactive segmentation with segany's SAM 2: masks on the server"),
    EMBEDDING_FUNCTION: ("Segment Anything 2.1 (segany, browser decoder)",
                         "SAM 2.1 embeddings for CVAT's SAM 2.1 plugin, which decodes every click in the browser"),
}


def error_response(info: ErrorInfo) -> JSONResponse:
    return JSONResponse({"error": info.message}, status_code=info.status, headers=info.headers)


def _function(name: str, port: int, variant: str) -> dict[str, Any]:
    title, description = _DESCRIPTIONS[name]
    annotations = {"name": title, "type": "interactor", "version": "2", "spec": "", "framework": "segany",
                   "min_pos_points": "1", "min_neg_points": "0", "help_message": _HELP, "animated_gif": "",
                   "segany_model": variant}
    return {"metadata": {"name": name, "namespace": "cvat", "annotations": annotations},
            "spec": {"description": description, "handler": "segany", "runtime": "segany"},
            "status": {"state": "ready", "httpPort": port}}


@router.get("/api/functions")
async def list_functions(request: Request) -> JSONResponse:
    """The nuclio dashboard's function list, as CVAT reads it."""
    engine: Engine = server_context(request).engine
    port = server_context(request).settings.port
    return JSONResponse({name: _function(name, port, engine.pool.default_variant) for name in _DESCRIPTIONS})


@router.get("/api/functions/{name}")
async def get_function(request: Request, name: str) -> JSONResponse:
    if name not in _DESCRIPTIONS:
        raise ModelNotFound(f"function {name!r} does not exist; segany serves {', '.join(_DESCRIPTIONS)}")
    engine: Engine = server_context(request).engine
    return JSONResponse(_function(name, server_context(request).settings.port, engine.pool.default_variant))


def _points(body: dict[str, Any], key: str) -> list[list[float]]:
    value = body.get(key) or []
    if not isinstance(value, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
        raise InvalidPrompt(f"{key}: expected [[x, y], ...] in pixels", key)
    return [list(p) for p in value]


def _prompt_fields(body: dict[str, Any]) -> tuple[list[list[float]] | None, list[int] | None, list[float] | None]:
    positive, negative = _points(body, "pos_points"), _points(body, "neg_points")
    bbox = body.get("obj_bbox")
    box = None
    if bbox:
        corners = _points(body, "obj_bbox")
        if len(corners) != 2:
            raise InvalidPrompt("obj_bbox: expected two corners [[x0, y0], [x1, y1]]", "obj_bbox")
        (x0, y0), (x1, y1) = corners
        box = [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
    if not positive and box is None:
        raise InvalidPrompt("pos_points: give at least one positive point (or obj_bbox)", "pos_points")
    coords = positive + negative
    return (coords or None), ([1] * len(positive) + [0] * len(negative) or None), box


def _float32_base64(tensor: Any) -> str:
    array = np.ascontiguousarray(tensor.detach().float().cpu().numpy(), dtype="<f4")
    return base64.b64encode(array.tobytes()).decode("ascii")


def _mask_rows(mask: np.ndarray) -> list[list[int]]:
    return (mask.astype(np.uint8) * 255).tolist()


async def _invoke(request: Request, name: str) -> Response:
    if name not in _DESCRIPTIONS:
        raise ModelNotFound(f"function {name!r} does not exist; segany serves {', '.join(_DESCRIPTIONS)}")
    engine: Engine = server_context(request).engine
    limits: Limits = server_context(request).limits
    body = await json_object_body(request)
    image_text = body.get("image")
    if not isinstance(image_text, str) or not image_text:
        raise InvalidInput("image: send the frame as base64", "image")
    data = decode_base64_image(image_text, field="image")
    prompt = None
    if name == MASK_FUNCTION:
        coords, labels, box = _prompt_fields(body)
        prompt = make_prompt(coords, labels, box, None, field="pos_points", limits=limits)

    async def work() -> dict[str, Any]:
        image = await engine.decode_image(data, "image")
        embedded: EmbedResult = await engine.embed(image)
        if prompt is None:  # the plugin decodes in the browser: send the embedding itself
            feats_0, feats_1 = embedded.embedding.high_res_feats
            return await asyncio.to_thread(lambda: {
                "image_embed": _float32_base64(embedded.embedding.image_embed),
                "high_res_feats_0": _float32_base64(feats_0), "high_res_feats_1": _float32_base64(feats_1)})
        (output,) = await engine.predict(embedded, [prompt], multimask=True)
        best = int(np.argmax(output.scores))
        return {"mask": await asyncio.to_thread(_mask_rows, output.masks[best])}

    return JSONResponse(await engine.run(work))


@router.post("/api/function_invocations")
async def invoke_via_dashboard(request: Request) -> Response:
    """CVAT's default invoke method: the function named by `x-nuclio-function-name`."""
    name = request.headers.get("x-nuclio-function-name", "")
    if not name:
        raise InvalidInput("x-nuclio-function-name: the header naming the function is missing",
                           "x-nuclio-function-name")
    return await _invoke(request, name)


@router.post("/cvat/functions/{name}")
async def invoke_directly(request: Request, name: str) -> Response:
    return await _invoke(request, name)


DIALECT = Dialect("cvat", router, PATH_PREFIXES, error_response)
