"""Cog's local HTTP API for the seed model (what `cog predict` and Replicate's runners talk to).

- `POST /predictions` with `{"input": {...}}` runs synchronously: 200 with the finished prediction.
  With `Prefer: respond-async` it answers 202 at once and reports through `webhook`.
- `PUT /predictions/{id}`: the same, idempotent on the id (the same request again returns the same
  prediction; another request under that id is a 409).
- `POST /predictions/{id}/cancel`: 200 `{}`, or 404.
- `GET /health-check`: `READY` once the model is loaded (`STARTING`, `SETUP_FAILED` before).
- `/openapi.json` carries Cog's `Input`, `Output`, `PredictionRequest` and `PredictionResponse` components.

Outputs are URLs of mask PNGs under `/files/` (Cog without an upload URL would inline data URIs; files keep
job rows and webhooks small). Validation errors have FastAPI's 422 shape, as Cog's own server (FastAPI)
answers; other errors are `{"detail": "..."}`.
"""
from __future__ import annotations

import hashlib

from datetime import datetime
from enum import Enum
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from segany.errors import InvalidInput
from segany.server.context import server_context
from segany.server.dialects import replicate_seed
from segany.server.dialects.dialect import Dialect
from segany.server.http.json_body import json_object_body
from segany.server.dialects.replicate_seed import Input, Output
from segany.server.http.errors import ErrorInfo
from segany.server.jobs.store import Job, JobConflict, JobNotFound, JobStore, check_client_id, iso8601
from segany.server.jobs.service import JobKind
from segany.server.http.openapi import body_schema

PATH_PREFIXES = ("/predictions", "/health-check")
KIND = "cog"
router = APIRouter(tags=["cog"])


class Status(str, Enum):
    STARTING = "starting"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    CANCELED = "canceled"
    FAILED = "failed"


class WebhookEvent(str, Enum):
    START = "start"
    OUTPUT = "output"
    LOGS = "logs"
    COMPLETED = "completed"


class PredictionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, description="the prediction's id (PUT takes it from the URL)")
    created_at: datetime | None = None
    input: Input
    webhook: str | None = Field(None, description="URL to POST the prediction to as it changes")
    webhook_events_filter: list[WebhookEvent] | None = Field(None, description="events to send (default: all)")
    output_file_prefix: str | None = Field(None, description="accepted for compatibility; outputs go to /files/")


class PredictionResponse(BaseModel):
    input: Input | None = None
    output: Output | None = None
    id: str | None = None
    version: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    logs: str = ""
    error: str | None = None
    status: Status | None = None
    metrics: dict[str, Any] | None = None


class ValidationErrorOut(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class HTTPValidationErrorOut(BaseModel):
    detail: list[ValidationErrorOut]


class DetailOut(BaseModel):
    detail: str


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": PredictionResponse}, 202: {"model": PredictionResponse},
    422: {"model": HTTPValidationErrorOut},
    **{code: {"model": DetailOut} for code in (400, 401, 403, 404, 406, 409, 413)},
}


def error_response(info: ErrorInfo) -> JSONResponse:
    """FastAPI's 422 list for validation errors (located under `body`), else `{"detail": message}`."""
    if info.status == 422:
        where = info.field.split(".") if info.field else []
        prefix = f"{info.field}: " if info.field else ""
        message = info.message[len(prefix):] if info.message.startswith(prefix) else info.message
        body: dict[str, Any] = {"detail": [{"loc": ["body", *where], "msg": message, "type": info.code}]}
    else:
        body = {"detail": info.message}
    return JSONResponse(body, status_code=info.status, headers=info.headers)


def stored_prediction_id(client_id: str, key_id: str | None) -> str:
    """The job id a client-chosen prediction id is kept under: per API key, so that one key's PUT of another
    key's id creates its own prediction and learns nothing about the other's (no conflict, no 404)."""
    if key_id is None:
        return client_id
    stored = f"{key_id[4:16]}_{client_id}"  # the key id's hex part: what the store's id rule admits
    return stored if len(stored) <= 128 else f"{key_id[4:16]}_{hashlib.sha256(client_id.encode()).hexdigest()}"


def response_json(job: Job) -> dict[str, Any]:
    """Cog's prediction response (also the webhook payload)."""
    metrics = {"predict_time": job.predict_time} if job.predict_time is not None else {}
    return {
        "id": job.meta.get("client_id", job.id), "version": job.meta.get("version"), "input": dict(job.input), "output": job.output,
        "logs": job.logs, "error": job.error, "status": job.status.value, "metrics": metrics,
        "created_at": iso8601(job.created_at), "started_at": iso8601(job.started_at),
        "completed_at": iso8601(job.completed_at),
    }


async def _predict(request: Request, path_id: str | None) -> JSONResponse:
    context = server_context(request)
    jobs = context.jobs
    document = await json_object_body(request)
    raw_input = document.get("input")
    body = PredictionRequest.model_validate(document)
    if path_id is not None and body.id is not None and body.id != path_id:
        raise InvalidInput(f"id: {body.id!r} in the body differs from {path_id!r} in the URL", "id")
    client_id = path_id or body.id
    if client_id is not None:
        check_client_id(client_id)
    respond_async = "respond-async" in request.headers.get("prefer", "").lower()
    key_id = context.api_key_id(request)
    prediction_id = None if client_id is None else stored_prediction_id(client_id, key_id)
    digest = replicate_seed.input_digest(raw_input)
    job = _existing(jobs.store, prediction_id, digest, key_id) if prediction_id else None
    headers: dict[str, str] = {}
    if job is None:
        base = jobs.base_url(request)
        stored_input, keys = await replicate_seed.accept_input(jobs, raw_input, api_key_id=key_id, base_url=base)
        events = None if body.webhook_events_filter is None else [event.value for event in body.webhook_events_filter]
        try:
            job, headers = jobs.submit(
                kind=KIND, job_id=prediction_id, model=replicate_seed.MODEL_ID, input=stored_input,
                api_key_id=key_id, base_url=base, webhook=body.webhook, webhook_events=events,
                meta={"version": replicate_seed.MODEL_VERSION, "input_digest": digest,
                      **({"client_id": client_id} if client_id is not None else {})}, file_keys=keys)
        except JobConflict:
            # The same request, sent twice at once, loses the race to its twin: answer with the twin's job.
            raced = _existing(jobs.store, prediction_id, digest, key_id) if prediction_id else None
            if raced is None:
                raise
            job = raced
    if respond_async:
        return JSONResponse(response_json(job), status_code=202, headers=headers)
    job = await jobs.runner.wait_async(job.id, jobs.settings.job_timeout_s, api_key_id=key_id,
                                      max_waiting=jobs.settings.max_waiting)
    return JSONResponse(response_json(job), headers=headers)


def _existing(store: JobStore, prediction_id: str, digest: str, key_id: str | None) -> Job | None:
    """The job already under this id when it came from the same request; `JobConflict` if from another."""
    try:
        job = store.get(prediction_id)
    except JobNotFound:
        return None
    if (job.kind, job.api_key_id, job.meta.get("input_digest")) != (KIND, key_id, digest):
        raise JobConflict(f"prediction id {prediction_id!r} is already used by another request")
    return job


@router.post("/predictions", openapi_extra=body_schema(PredictionRequest, multipart=False), responses=_RESPONSES)
async def predict(request: Request) -> JSONResponse:
    """Run a prediction (synchronous unless `Prefer: respond-async`)."""
    return await _predict(request, None)


@router.put("/predictions/{prediction_id}", openapi_extra=body_schema(PredictionRequest, multipart=False),
            responses=_RESPONSES)
async def predict_idempotent(prediction_id: str, request: Request) -> JSONResponse:
    """Run a prediction under a client-chosen id; repeating the request returns the same prediction."""
    return await _predict(request, prediction_id)


@router.post("/predictions/{prediction_id}/cancel",
             responses={200: {"model": dict[str, Any]}, 404: {"model": DetailOut}})
async def cancel(prediction_id: str, request: Request) -> JSONResponse:
    """Cancel a queued or running prediction."""
    context = server_context(request)
    key_id = context.api_key_id(request)
    try:
        job = context.jobs.store.get(stored_prediction_id(prediction_id, key_id), api_key_id=key_id)
    except JobNotFound:  # a prediction made without a client-chosen id
        job = context.jobs.store.get(prediction_id, api_key_id=key_id)
    if job.kind != KIND:
        raise JobNotFound(f"no prediction with id {prediction_id!r}")
    context.jobs.runner.cancel(job.id)
    return JSONResponse({})


@router.get("/health-check", responses={200: {"model": dict[str, Any]}})
async def health_check(request: Request) -> JSONResponse:
    """`READY` once the model is loaded; `STARTING` before, `SETUP_FAILED` if loading failed."""
    engine = server_context(request).engine
    if engine.ready:
        status, setup = "READY", "succeeded"
    elif engine.load_error:
        status, setup = "SETUP_FAILED", "failed"
    else:
        status, setup = "STARTING", None
    return JSONResponse({"status": status, "setup": {"status": setup, "logs": engine.load_error or ""},
                         "version": {"cog": replicate_seed.COG_VERSION, "segany_model": engine.pool.default_variant}})


DIALECT = Dialect("cog", router, PATH_PREFIXES, error_response, renders_http_errors=True,
                  job_kinds={KIND: JobKind(replicate_seed.run_prediction, response_json)})
