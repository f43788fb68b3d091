"""Replicate's HTTP API for the models of `MODELS` (the seed `lucataco/segment-anything-2` and
`meta/sam-2-video`), as the official `replicate` client calls it.

- `POST /v1/predictions` (`version`, `input`, `webhook`, `webhook_events_filter`) and
  `POST /v1/models/{owner}/{name}/predictions` -> 201 with a prediction. `Prefer: wait` (60 s) or
  `Prefer: wait=N` (1-60) holds the response until the prediction finishes; one still running then reads
  `starting`, which is what the client takes as "poll on".
- `GET /v1/predictions` (newest first, `cursor`), `GET /v1/predictions/{id}`, `POST .../{id}/cancel`.
- `GET /v1/models/{owner}/{name}`, `.../versions`, `.../versions/{id}`: a served model, with its Cog schema.
- Files (what the client uploads local files through): `POST /v1/files` (multipart `content`),
  `GET` and `DELETE /v1/files/{id}`; a file's `urls.get` is accepted as an input image. Listing is not offered.
  A key keeps at most `max_upload_mb_per_key` of uploads (429 past it).
- `GET /v1/webhooks/default/secret`: the key webhooks are signed with (`replicate.webhooks.validate`).

Predictions and files are visible only to the API key that made them. Output URLs point at `/files/{key}`
of this server (or `public_url`). Errors are problem JSON: `{"title", "detail", "status"}`, plus
`invalid_fields` for a rejected input.
"""
from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile

from segany.errors import InvalidInput, ModelNotFound
from segany.server.context import server_context
from segany.server.dialects import replicate_seed, replicate_video
from segany.server.dialects.dialect import Dialect
from segany.server.dialects.replicate_model import ReplicateModel
from segany.server.http.json_body import json_object_body
from segany.server.http.errors import ErrorInfo
from segany.server.jobs.store import Job, JobNotFound, iso8601
from segany.server.jobs.service import JobKind, JobService
from segany.server.http.openapi import body_schema
from segany.server.jobs.webhooks import secret_for_key
from segany.server.jobs.storage import StoredFile, StoredFileNotFound, check_content_type

PATH_PREFIXES = ("/v1/predictions", "/v1/models", "/v1/files", "/v1/webhooks")
MODELS: tuple[ReplicateModel, ...] = (replicate_seed.MODEL, replicate_video.MODEL)
KINDS = tuple(model.kind for model in MODELS)
MAX_WAIT_S = 60
router = APIRouter(tags=["replicate"])

_TITLES = {400: "Bad request", 401: "Unauthenticated", 403: "Forbidden", 404: "Not found", 405: "Method not allowed",
           406: "Not enough credits", 409: "Conflict", 413: "Payload too large", 422: "Input validation failed",
           429: "Too many requests",
           500: "Internal server error", 501: "Not implemented", 503: "Service unavailable", 504: "Timeout"}


class ProblemOut(BaseModel):
    title: str
    detail: str
    status: int
    invalid_fields: list[dict[str, str]] | None = None


class ModelPredictionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: dict[str, Any] = Field(description="the model's inputs (see the version's openapi_schema)")
    webhook: str | None = Field(None, description="URL to POST the prediction to when it changes")
    webhook_completed: str | None = Field(None, description="older form: webhook for completion only")
    webhook_events_filter: list[str] | None = Field(None, description="start, output, logs, completed")
    stream: bool | None = Field(None, description="accepted; output is not streamed")


class ReplicatePredictionIn(ModelPredictionIn):
    version: str = Field(description="model version id (e.g. " + ", ".join(f"{m.version[:12]}..." for m in MODELS)
                         + "), or owner/name[:version]")


class ReplicatePrediction(BaseModel):
    id: str
    model: str
    version: str
    status: str
    input: dict[str, Any]
    output: list[str] | None
    error: str | None
    logs: str
    metrics: dict[str, float]
    created_at: str
    started_at: str | None
    completed_at: str | None
    urls: dict[str, str]


_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ProblemOut} for code in (400, 401, 403, 404, 406, 422)}


def error_response(info: ErrorInfo) -> JSONResponse:
    body: dict[str, Any] = {"title": _TITLES.get(info.status, info.code.replace("_", " ")), "detail": info.message,
                            "status": info.status}
    if info.field and info.status in (400, 403, 413, 422):
        body["invalid_fields"] = [{"type": info.code, "field": info.field, "description": info.message}]
    return JSONResponse(body, status_code=info.status, headers=info.headers, media_type="application/problem+json")


def _model_of(job: Job) -> ReplicateModel:
    return next((model for model in MODELS if model.kind == job.kind), replicate_seed.MODEL)


def prediction_json(job: Job, *, waited: bool = False) -> dict[str, Any]:
    """A Replicate prediction object; with `waited`, an unfinished one reads `starting` (see the module doc)."""
    base = job.meta.get("base_url", "")
    metrics = {"predict_time": job.predict_time} if job.predict_time is not None else {}
    status = "starting" if waited and not job.finished else job.status.value
    model = _model_of(job)
    return {
        "id": job.id, "model": model.id, "version": job.meta.get("version", model.version),
        "input": dict(job.input), "logs": job.logs, "output": job.output, "data_removed": False,
        "error": job.error, "status": status, "source": "api", "metrics": metrics,
        "created_at": iso8601(job.created_at), "started_at": iso8601(job.started_at),
        "completed_at": iso8601(job.completed_at),
        "urls": {"get": f"{base}/v1/predictions/{job.id}", "cancel": f"{base}/v1/predictions/{job.id}/cancel"},
    }


def version_json(model: ReplicateModel) -> dict[str, Any]:
    return {"id": model.version, "created_at": model.created_at, "cog_version": replicate_seed.COG_VERSION,
            "openapi_schema": model.openapi_schema()}


def _served() -> str:
    return ", ".join(f"{model.id}:{model.version}" for model in MODELS)


def _check_model(owner: str, name: str) -> ReplicateModel:
    for model in MODELS:
        if (owner, name) == (model.owner, model.name):
            return model
    raise ModelNotFound(f"model {owner}/{name} does not exist here; this server runs {_served()}")


def _check_version(version: str) -> ReplicateModel:
    for model in MODELS:
        if model.knows_version(version):
            return model
    raise ModelNotFound(f"version: {version[:80]!r} does not exist (or you may not use it); "
                        f"this server runs {_served()}")


def _prefer_wait(prefer: str | None) -> float | None:
    """Seconds to hold the response from `Prefer: wait[=N]`, None without it."""
    for token in (prefer or "").split(","):
        name, _, value = token.strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        if not value.strip():
            return float(MAX_WAIT_S)
        if not value.strip().isdigit() or not 1 <= int(value) <= MAX_WAIT_S:
            raise InvalidInput(f"Prefer: wait must be an integer number of seconds from 1 to {MAX_WAIT_S}, "
                               f"got {value.strip()[:20]!r}", "Prefer")
        return float(value)
    return None


async def _create(request: Request, body: ModelPredictionIn, model: ReplicateModel) -> JSONResponse:
    context = server_context(request)
    jobs = context.jobs
    wait_s = _prefer_wait(request.headers.get("prefer"))
    webhook = body.webhook or body.webhook_completed
    events = body.webhook_events_filter
    if body.webhook is None and body.webhook_completed is not None:
        events = ["completed"]
    key_id = context.api_key_id(request)
    base = jobs.base_url(request)
    stored_input, keys = await model.accept_input(jobs, body.input, key_id, base)
    job, headers = jobs.submit(kind=model.kind, model=model.id, input=stored_input, api_key_id=key_id,
                               base_url=base, webhook=webhook, webhook_events=events, meta={"version": model.version},
                               file_keys=keys)
    if wait_s is not None:
        job = await jobs.runner.wait_async(job.id, wait_s, api_key_id=key_id, max_waiting=jobs.settings.max_waiting)
    return JSONResponse(prediction_json(job, waited=wait_s is not None), status_code=201, headers=headers)


@router.post("/v1/predictions", status_code=201, openapi_extra=body_schema(ReplicatePredictionIn, multipart=False),
             responses={201: {"model": ReplicatePrediction}, **_ERRORS})
async def create_prediction(request: Request) -> JSONResponse:
    """Create a prediction of a served model by version id."""
    body = ReplicatePredictionIn.model_validate(await json_object_body(request))
    return await _create(request, body, _check_version(body.version))


@router.post("/v1/models/{owner}/{name}/predictions", status_code=201,
             openapi_extra=body_schema(ModelPredictionIn, multipart=False),
             responses={201: {"model": ReplicatePrediction}, **_ERRORS})
async def create_model_prediction(owner: str, name: str, request: Request) -> JSONResponse:
    """Create a prediction of the model's latest version."""
    model = _check_model(owner, name)
    body = ModelPredictionIn.model_validate(await json_object_body(request))
    return await _create(request, body, model)


def _own_job(jobs: JobService, prediction_id: str, request: Request) -> Job:
    job = jobs.store.get(prediction_id, api_key_id=server_context(request).api_key_id(request))
    if job.kind not in KINDS:
        raise JobNotFound(f"no prediction with id {prediction_id!r}")
    return job


@router.get("/v1/predictions", responses={200: {"model": dict[str, Any]}, **_ERRORS})
async def list_predictions(request: Request, cursor: str | None = None) -> JSONResponse:
    """Predictions of the calling key, newest first, 100 per page (`next` is the following page's URL)."""
    context = server_context(request)
    jobs = context.jobs
    before = None
    if cursor is not None:
        try:
            before = float(cursor)
        except ValueError:
            raise InvalidInput(f"cursor: not a cursor from a previous page ({cursor[:40]!r})", "cursor") from None
    found = sorted((job for kind in KINDS for job in jobs.store.list(api_key_id=context.api_key_id(request), kind=kind,
                                                                      created_before=before, limit=100)),
                   key=lambda job: -job.created_at)[:100]
    base = jobs.base_url(request)
    following = f"{base}/v1/predictions?cursor={found[-1].created_at!r}" if len(found) == 100 else None
    return JSONResponse({"previous": None, "next": following, "results": [prediction_json(job) for job in found]})


@router.get("/v1/predictions/{prediction_id}", responses={200: {"model": ReplicatePrediction}, **_ERRORS})
async def get_prediction(prediction_id: str, request: Request) -> JSONResponse:
    """The prediction's current state."""
    return JSONResponse(prediction_json(_own_job(server_context(request).jobs, prediction_id, request)))


@router.post("/v1/predictions/{prediction_id}/cancel", responses={200: {"model": ReplicatePrediction}, **_ERRORS})
async def cancel_prediction(prediction_id: str, request: Request) -> JSONResponse:
    """Cancel: a queued prediction ends now, a running one when its current step ends."""
    jobs = server_context(request).jobs
    job = _own_job(jobs, prediction_id, request)
    return JSONResponse(prediction_json(jobs.runner.cancel(job.id, api_key_id=job.api_key_id)))


@router.get("/v1/models/{owner}/{name}", responses={200: {"model": dict[str, Any]}, **_ERRORS})
async def get_model(owner: str, name: str) -> JSONResponse:
    """The model and its latest version."""
    model = _check_model(owner, name)
    return JSONResponse({
        "url": f"https://replicate.com/{model.id}", "owner": model.owner, "name": model.name,
        "description": model.description,
        "visibility": "public", "github_url": None, "paper_url": None, "license_url": None, "run_count": 0,
        "cover_image_url": None, "default_example": None, "latest_version": version_json(model),
    })


@router.get("/v1/models/{owner}/{name}/versions", responses={200: {"model": dict[str, Any]}, **_ERRORS})
async def list_versions(owner: str, name: str) -> JSONResponse:
    return JSONResponse({"previous": None, "next": None, "results": [version_json(_check_model(owner, name))]})


@router.get("/v1/models/{owner}/{name}/versions/{version_id}", responses={200: {"model": dict[str, Any]}, **_ERRORS})
async def get_version(owner: str, name: str, version_id: str) -> JSONResponse:
    """The version with its `openapi_schema` (Cog's `Input` and `Output`)."""
    model = _check_model(owner, name)
    if version_id != model.version:
        raise ModelNotFound(f"version {version_id[:80]!r} of {model.id} does not exist")
    return JSONResponse(version_json(model))


# ---- files -----------------------------------------------------------------------------------------------


def file_json(info: StoredFile, jobs: JobService, base: str,
              metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Replicate file object; `urls.get` is accepted as an input image of this server."""
    return {
        "id": info.key, "name": info.name or info.key, "content_type": info.content_type, "size": info.size,
        "etag": info.md5 or "", "checksums": {name: value for name, value in (("sha256", info.sha256),
                                                                              ("md5", info.md5)) if value},
        "metadata": metadata or {}, "created_at": iso8601(info.created_at),
        "expires_at": iso8601(info.created_at + jobs.settings.job_ttl_s),
        "urls": {"get": f"{base}/v1/files/{info.key}"},
    }


def _own_file(jobs: JobService, file_id: str, request: Request) -> StoredFile:
    info = jobs.storage.info(file_id)
    if info.owner != server_context(request).api_key_id(request):
        raise StoredFileNotFound(f"no file {file_id[:80]!r}")
    return info


_UPLOAD_SCHEMA = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["content"], "properties": {
        "content": {"type": "string", "format": "binary"}, "filename": {"type": "string"},
        "type": {"type": "string"}, "metadata": {"type": "string", "description": "a JSON object"}}}}}}}


@router.post("/v1/files", status_code=201, openapi_extra=_UPLOAD_SCHEMA,
             responses={201: {"model": dict[str, Any]}, **_ERRORS, 429: {"model": ProblemOut}})
async def create_file(request: Request) -> JSONResponse:
    """Upload a file (multipart field `content`) to use as an input; it expires after `job_ttl_s`. A key's
    uploads together stay under `max_upload_mb_per_key` (429 past it)."""
    context = server_context(request)
    jobs = context.jobs
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise InvalidInput("body: send multipart/form-data with the file in the field 'content'", "content")
    try:
        form = await request.form()
    except Exception as error:  # noqa: BLE001 - malformed multipart framing is the client's mistake
        raise InvalidInput(f"body: malformed form data ({error})", "body") from None
    upload = form.get("content")
    if not isinstance(upload, UploadFile):
        raise InvalidInput("content: the file is missing (multipart field 'content')", "content")
    metadata: dict[str, Any] = {}
    if isinstance(form.get("metadata"), str):
        try:
            metadata = json.loads(form["metadata"])  # type: ignore[arg-type]
        except (ValueError, RecursionError):
            metadata = None  # type: ignore[assignment]
        if not isinstance(metadata, dict):
            raise InvalidInput("metadata: expected a JSON object", "metadata")
    name = str(form.get("filename") or upload.filename or "file")[:255]
    suffix = "." + name.rsplit(".", 1)[1].lower() if "." in name else ""
    suffix = suffix if 2 <= len(suffix) <= 11 and suffix[1:].isalnum() else ""
    content_type = check_content_type(str(form.get("type") or upload.content_type or "application/octet-stream"),
                                      "type")
    data = await upload.read()
    owner = context.api_key_id(request)
    jobs.uploads.check(owner, len(data))  # refused (429, naming the limit) before anything is written
    key = jobs.storage.put(data, suffix, content_type, name=name, owner=owner, private=True)
    try:
        jobs.uploads.charge(owner, key, len(data))  # atomic: concurrent uploads of one key cannot overrun it
    except BaseException:
        jobs.storage.delete(key)
        raise
    info = jobs.storage.info(key)
    return JSONResponse(file_json(info, jobs, jobs.base_url(request), metadata), status_code=201)


@router.get("/v1/files/{file_id}", responses={200: {"model": dict[str, Any]}, **_ERRORS})
async def get_file(file_id: str, request: Request) -> JSONResponse:
    """An uploaded file's description."""
    jobs = server_context(request).jobs
    return JSONResponse(file_json(_own_file(jobs, file_id, request), jobs, jobs.base_url(request)))


@router.delete("/v1/files/{file_id}", status_code=204, responses={204: {"description": "deleted"}, **_ERRORS})
async def delete_file(file_id: str, request: Request) -> Response:
    """Delete an uploaded file."""
    jobs = server_context(request).jobs
    key = _own_file(jobs, file_id, request).key
    jobs.storage.delete(key)
    jobs.uploads.forget(key)
    return Response(status_code=204)


@router.get("/v1/webhooks/default/secret", responses={200: {"model": dict[str, str]}, **_ERRORS})
async def webhook_secret(request: Request) -> JSONResponse:
    """The `whsec_...` key this API key's webhooks are signed with (each key has its own)."""
    context = server_context(request)
    return JSONResponse({"key": secret_for_key(context.jobs.signing_secret, context.api_key_id(request))})


DIALECT = Dialect("replicate", router, PATH_PREFIXES, error_response, renders_http_errors=True,
                  job_kinds={model.kind: JobKind(model.run, prediction_json) for model in MODELS})
