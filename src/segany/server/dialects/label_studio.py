"""Label Studio ML-backend dialect under `/label-studio` (the URL to give in Label Studio's model settings).

Routes as `label-studio-ml-backend` serves them: `GET /health` and `GET /` -> `{"status": "UP", ...}`,
`POST /setup` -> `{"model_version"}`, `POST /predict`, `POST /webhook`. Interactive pre-annotation: the
`params.context.result` keypoints (`keypointlabels`, `is_positive`) and rectangle (`rectanglelabels`), in
percent of the image, become one prompt; the best of the three masks is answered as one region per
`<BrushLabels>` (brush RLE) and `<PolygonLabels>` (largest outline) tag on that image, with the label the
user picked. Without clicks the answer is no prediction (segany does not guess objects unasked).
Images named by Label Studio paths are fetched from Label Studio (`label_studio_fetch`). Errors:
`{"status": <HTTP status>, "detail": "..."}`. Auth: HTTP basic auth whose password is a segany API key.
"""
from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

import segany
from segany.errors import InvalidInput
from segany.server.context import server_context
from segany.server.dialects.dialect import Dialect
from segany.server.dialects.label_studio_fetch import LabelStudioSites, task_image_bytes
from segany.server.dialects.label_studio_schemas import (
    Clicks, OutputTag, PredictIn, SetupIn, mask_regions, parse_clicks, parse_label_config,
)
from segany.server.engine.engine import Engine
from segany.server.http.errors import ErrorInfo
from segany.server.http.limits import Limits
from segany.server.http.prompt_fields import make_prompt

PREFIX = "/label-studio"
PATH_PREFIXES = (PREFIX + "/", PREFIX)
router = APIRouter(prefix=PREFIX, tags=["label-studio"])


def error_response(info: ErrorInfo) -> JSONResponse:
    return JSONResponse({"status": info.status, "detail": info.message}, status_code=info.status,
                        headers=info.headers)


def _sites(request: Request) -> LabelStudioSites:
    """The Label Studio addresses and tokens of this app (from the settings, then from each `/setup`)."""
    context = server_context(request)
    sites = context.dialect_state.get("label_studio")
    if sites is None:
        settings = context.settings
        sites = context.dialect_state["label_studio"] = LabelStudioSites(settings.label_studio_url,
                                                                         settings.label_studio_api_key)
    return sites


def _model_version(engine: Engine) -> str:
    return f"segany-{segany.__version__}-{engine.pool.default_variant}"


@router.get("/health")
@router.get("/")
async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "UP", "model_dir": None, "v2": "true",
                         "model_version": _model_version(server_context(request).engine)})


@router.post("/setup")
async def setup(request: Request) -> JSONResponse:
    """Label Studio connects a project: remember its address and token for fetching task images."""
    body = SetupIn.model_validate_json(await request.body() or b"{}")
    if body.schema_:
        parse_label_config(body.schema_)  # a config segany cannot answer is refused at connection time
    _sites(request).remember(str(body.project) if body.project is not None else None, body.hostname,
                             body.access_token)
    return JSONResponse({"model_version": _model_version(server_context(request).engine)})


@router.post("/webhook", status_code=201)
async def webhook(request: Request) -> JSONResponse:
    """Training events (START_TRAINING, ANNOTATION_CREATED, ...): segany does not train; acknowledged."""
    return JSONResponse({"status": "ok", "trained": False}, status_code=201)


def _targets(config_outputs: tuple[OutputTag, ...], clicks: Clicks, images: dict[str, str]
             ) -> tuple[str, list[OutputTag]]:
    """The image the clicks are on (its data key) and the output tags drawing on it."""
    to_name = clicks.to_name if clicks.to_name in images else next(iter(images))
    tags = [tag for tag in config_outputs if tag.to_name == to_name]
    if not tags:
        raise InvalidInput(f"label_config: no <BrushLabels> or <PolygonLabels> with toName={to_name!r}",
                           "label_config")
    return images[to_name], tags


@router.post("/predict")
async def predict(request: Request) -> JSONResponse:
    """One region set for the first task, from the clicks in `params.context`."""
    engine: Engine = server_context(request).engine
    limits: Limits = server_context(request).limits
    body = PredictIn.model_validate_json(await request.body())
    version = _model_version(engine)
    clicks = parse_clicks((body.params or {}).get("context"))
    if clicks is None:
        return JSONResponse({"results": [], "model_version": version})
    config = parse_label_config(body.label_config)
    data_key, tags = _targets(config.outputs, clicks, config.images)
    task = body.tasks[0]
    reference = (task.get("data") or {}).get(data_key)
    project = str(body.project) if body.project is not None else None
    sites = _sites(request)

    async def work() -> dict[str, Any]:
        data = await task_image_bytes(engine, sites, project, reference, f"tasks[0].data.{data_key}")
        image = await engine.decode_image(data, f"tasks[0].data.{data_key}")
        height, width = image.size_hw
        points, labels, box = clicks.in_pixels(width, height)
        prompt = make_prompt(points, labels, box, None, field="params.context.result", limits=limits)
        embedded = await engine.embed(image)
        (output,) = await engine.predict(embedded, [prompt], multimask=True)
        best = int(np.argmax(output.scores))
        score = float(np.nan_to_num(output.scores[best]))
        regions = await asyncio.to_thread(mask_regions, output.masks[best], score, tags, clicks.label)
        return {"result": regions, "score": score, "model_version": version}

    prediction = await engine.run(work)
    return JSONResponse({"results": [prediction], "model_version": version})


DIALECT = Dialect("label_studio", router, PATH_PREFIXES, error_response)
