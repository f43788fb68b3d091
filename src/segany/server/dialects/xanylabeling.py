"""X-AnyLabeling remote-server dialect, under `/xanylabeling` (the client's "server_url" points there).

Routes (X-AnyLabeling-Server's `docs/router.md`): `GET /health`, `GET /v1/models`,
`GET /v1/models/{model_id}/info`, `POST /v1/predict` with `{model, image: data URI or base64,
params: {marks, text_prompt, conf_threshold, epsilon_factor, ...}}`. `marks` are
`{"type": "point", "data": [x, y], "label": 1|0}` and `{"type": "rectangle", "data": [x1, y1, x2, y2]}` in
image pixels; one object per rectangle (every point goes with each), or one object from points alone.
`text_prompt` ("cat, dog") finds boxes with the server's open-vocabulary detector, one object each
(`conf_threshold` > 0 is its box threshold; `box_threshold` / `text_threshold` set both exactly).
Answer: `{"success": true, "data": {"shapes": [{label, shape_type: "polygon", points, score, ...}],
"description": ""}}`; each object's best-scoring mask becomes its largest polygon (closed: last = first).
Errors: HTTP 200 `{"success": false, "error": {"code", "message"}}`, except a full queue (503
`{"detail": ...}`), as the client reads them. Auth: the `Token` header carries a segany API key.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from segany.errors import InvalidImage, InvalidInput
from segany.io.images import decode_base64_image
from segany.io.masks import mask_to_polygons
from segany.server.context import server_context
from segany.server.dialects.dialect import Dialect
from segany.server.dialects.xanylabeling_schemas import PredictIn, model_card
from segany.server.engine.engine import EmbedResult, Engine, Prompt, PromptOutput
from segany.server.http.errors import ErrorInfo
from segany.server.http.limits import Limits
from segany.server.http.prompt_fields import make_prompt

PREFIX = "/xanylabeling"
PATH_PREFIXES = (PREFIX + "/",)
router = APIRouter(prefix=PREFIX, tags=["x-anylabeling"])
DEFAULT_LABEL = "AUTOLABEL_OBJECT"  # X-AnyLabeling's own name for an unlabelled auto-labelled object

# segany's error codes -> the codes X-AnyLabeling-Server uses (others are upper-cased as they are).
_CODES = {"model_not_found": "MODEL_NOT_FOUND", "invalid_image": "INVALID_IMAGE", "image_too_large": "INVALID_IMAGE",
          "unauthorized": "UNAUTHORIZED", "internal_error": "INFERENCE_ERROR", "server_busy": "QUEUE_FULL"}


def error_response(info: ErrorInfo) -> JSONResponse:
    if info.status == 503:  # the one error the client sees as an HTTP status (it retries later)
        return JSONResponse({"detail": info.message}, status_code=503, headers=info.headers)
    code = _CODES.get(info.code, info.code.upper())
    return JSONResponse({"success": False, "error": {"code": code, "message": info.message}}, status_code=200)


def _variants(engine: Engine) -> list[str]:
    return list(dict.fromkeys([engine.pool.default_variant, *engine.pool.loaded_variants]))


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    engine: Engine = server_context(request).engine
    return JSONResponse({"status": "healthy", "models_loaded": len(engine.pool.loaded_variants),
                         "timestamp": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")})


@router.get("/v1/models")
async def models(request: Request) -> JSONResponse:
    """Every variant this server answers for, with the widgets X-AnyLabeling shows for it."""
    engine: Engine = server_context(request).engine
    text = server_context(request).settings.text_model
    return JSONResponse({"success": True, "data": {name: model_card(name, text) for name in _variants(engine)}})


@router.get("/v1/models/{model_id}/info")
async def model_info(request: Request, model_id: str) -> JSONResponse:
    engine: Engine = server_context(request).engine
    variant = engine.pool.resolve(model_id)  # ModelNotFound -> MODEL_NOT_FOUND
    card = model_card(variant, server_context(request).settings.text_model)
    return JSONResponse({"success": True, "data": {"model_id": variant, **card}})


def _mark_prompts(body: PredictIn, limits: Limits) -> list[Prompt]:
    """One prompt per rectangle mark (with every point mark), or one prompt from the points alone."""
    points = [mark for mark in body.params.marks if mark.type == "point"]
    boxes = [mark for mark in body.params.marks if mark.type == "rectangle"]
    coords = [list(mark.data) for mark in points] or None
    labels = [1 if mark.label == 1 else 0 for mark in points] or None
    if not boxes:
        return [make_prompt(coords, labels, None, None, field="params.marks", limits=limits)] if coords else []
    limits.check_prompt_count(len(boxes))
    return [make_prompt(coords, labels, list(box.data), None, field=f"params.marks[{i}]", limits=limits)
            for i, box in enumerate(boxes)]


def _shapes(outputs: list[PromptOutput], labels: list[str], epsilon_factor: float) -> list[dict[str, Any]]:
    """The best mask of each prompt -> its largest polygon, simplified by `epsilon_factor` x perimeter."""
    shapes = []
    for output, label in zip(outputs, labels):
        best = int(np.argmax(output.scores))
        score = float(np.clip(np.nan_to_num(output.scores[best]), 0.0, 1.0))
        polygons = mask_to_polygons(output.masks[best], keep_holes=False)
        if not polygons:
            continue
        ring = np.asarray(polygons[0].exterior, dtype=np.float64)
        if epsilon_factor > 0:
            perimeter = float(np.linalg.norm(np.diff(np.vstack([ring, ring[:1]]), axis=0), axis=1).sum())
            simplified = mask_to_polygons(output.masks[best], keep_holes=False, epsilon=epsilon_factor * perimeter)
            ring = np.asarray(simplified[0].exterior, dtype=np.float64) if simplified else ring
        points = ring.tolist()
        points.append(points[0])
        shapes.append({"label": label, "shape_type": "polygon", "points": points, "score": score,
                       "attributes": {}, "description": None, "difficult": False, "direction": 0, "flags": None,
                       "group_id": None, "kie_linking": []})
    return shapes


def _image_bytes(text: str) -> bytes:
    if not text:
        raise InvalidImage("image: send the image as a data URI or base64", "image")
    return decode_base64_image(text, field="image")


@router.post("/v1/predict")
async def predict(request: Request) -> JSONResponse:
    """Segment the marked objects (points / rectangles) or the objects named by `text_prompt`."""
    engine: Engine = server_context(request).engine
    limits: Limits = server_context(request).limits
    body = PredictIn.model_validate_json(await request.body())
    params = body.params
    prompts = _mark_prompts(body, limits)
    text = (params.text_prompt or "").strip()
    if not prompts and not text:
        raise InvalidInput("params: send 'marks' (points or rectangles) or a 'text_prompt'", "params.marks")
    variant = engine.pool.resolve(body.model)
    data = _image_bytes(body.image)

    async def work() -> list[dict[str, Any]]:
        image = await engine.decode_image(data, "image")
        embedded: EmbedResult = await engine.embed(image, variant)
        labels = [params.label or DEFAULT_LABEL] * len(prompts)
        if not prompts:  # text: one box prompt per detected phrase
            box_threshold = params.box_threshold if params.box_threshold is not None else params.conf_threshold or None
            found = await engine.ground(image, text.rstrip("."), box_threshold=box_threshold,
                                        text_threshold=params.text_threshold)
            limits.check_prompt_count(len(found))
            prompts.extend(make_prompt(box=box.tolist(), field="text_prompt", limits=limits) for box in found.xyxy)
            labels = [name or DEFAULT_LABEL for name in found.class_names]
            if not prompts:
                return []
        outputs = await engine.predict(embedded, prompts, multimask=True)
        return await asyncio.to_thread(_shapes, outputs, labels, params.epsilon_factor)

    shapes = await engine.run(work)
    return JSONResponse({"success": True, "data": {"shapes": shapes, "description": ""}})


DIALECT = Dialect("xanylabeling", router, PATH_PREFIXES, error_response)
