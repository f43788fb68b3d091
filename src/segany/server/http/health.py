"""`/healthz` (the process answers), `/readyz` (the default model is loaded) and `/metrics`."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

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
        "error": engine.load_error,
    }
    return JSONResponse(body, status_code=200 if engine.ready else 503)


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition: requests, latency, queue depth, cache hits, embed/decode time."""
    engine: Engine = request.app.state.engine
    return Response(engine.metrics.registry.render(), media_type=engine.metrics.registry.content_type)
