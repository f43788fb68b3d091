"""`/healthz` (the process answers), `/readyz` (the default model is loaded), `/v1/info` (the models and
where their weights came from) and `/metrics`."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

import segany
from segany.model.variants import get_variant, list_variants
from segany.server.engine.engine import Engine

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: 200 while the process serves requests."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "the default model is not loaded yet (or failed)"}})
async def readyz(request: Request) -> JSONResponse:
    """Readiness: 200 once the default model is loaded, else 503 with the reason."""
    engine: Engine = request.app.state.engine
    body = {
        "ready": engine.ready,
        "model": engine.pool.default_variant,
        "loaded_models": engine.pool.loaded_variants,
        "weights": engine.pool.default_weights(),
        "error": engine.load_error,
    }
    return JSONResponse(body, status_code=200 if engine.ready else 503)


@router.get("/v1/info")
async def info(request: Request) -> dict[str, Any]:
    """The models this server can serve: which are loaded, and where each loaded one's weights came from.

    `weights` is "official" (the Hugging Face checkpoint), "file" (a checkpoint file given to the server)
    or "random" (random weights: masks are noise), and null for a model not loaded yet.
    """
    pool = request.app.state.engine.pool
    models = []
    for name in list_variants():
        spec = get_variant(name)
        models.append({"id": name, "hf_id": spec.hf_id if spec else None, "default": name == pool.default_variant,
                       "loaded": pool.is_loaded(name), "weights": pool.weights.get(name)})
    return {"version": segany.__version__, "default_model": pool.default_variant,
            "weights": pool.default_weights(), "models": models}


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition: requests, latency, queue depth, cache hits, embed/decode time."""
    engine: Engine = request.app.state.engine
    return Response(engine.metrics.registry.render(), media_type=engine.metrics.registry.content_type)
