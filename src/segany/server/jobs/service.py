"""Jobs, output files, webhooks and quotas wired into the FastAPI app, for the Replicate, Cog and Segmind dialects.

`install(app, settings)` adds those dialects' routes and `/files/{key}`, renders their errors in each
dialect's shape, and wraps the app's lifespan: at startup it opens the job database
(`<data_dir>/segany.db`, shared with the quotas) and the file storage (`<data_dir>/files`), settles jobs a
previous process left unfinished (`job_recovery`), and starts the job runner; at shutdown it stops them
before the engine stops, so running jobs can finish.

Handlers run on the runner's worker threads and reach the async engine through `JobServices.call`.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import inspect
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from segany.errors import InvalidImage, InvalidInput, SeganyError
from segany.io.images import decode_base64_image
from segany.server.http.auth import key_from_headers, key_from_query
from segany.server.jobs.database import Database
from segany.server.dialects import render_error
from segany.server.engine.engine import DecodedImage, Engine
from segany.server.http.errors import ErrorInfo, RequestTimeout, ServerBusy, UrlNotAllowed, describe
from segany.server.http.url_fetch import check_public_url, fetch_url_bytes
from segany.server.http.image_source import is_url
from segany.server.jobs.store import Job, JobStore
from segany.server.jobs.quotas import Quotas
from segany.server.jobs.workers import JobContext, JobRunner, purge_expired
from segany.server.settings import ServerSettings
from segany.server.jobs.storage import LocalStorage, Storage, StoredFileNotFound
from segany.server.jobs.webhooks import WebhookSender, new_signing_secret

log = logging.getLogger("segany.server")
T = TypeVar("T")

APP_NAME = "segany"
DB_FILE = "segany.db"
FILES_DIR = "files"
SECRET_FILE = "webhook_secret"


def default_data_dir() -> Path:
    """The per-user data folder: $XDG_DATA_HOME/segany (~/.local/share/segany), macOS Application Support,
    or %LOCALAPPDATA%\\segany on Windows."""
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / APP_NAME
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / APP_NAME
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / APP_NAME


@dataclass(frozen=True)
class JobSettings:
    """Options of the job machinery. `from_settings` reads the same-named `ServerSettings` fields when they exist."""

    data_dir: str | None = None  # None: `default_data_dir()`
    job_ttl_s: float = 24 * 3600.0  # finished jobs, their files and uploads are deleted this long after
    job_recovery: str = "retry"  # unfinished jobs at startup: "retry" (run again) or "fail" (with a reason)
    job_max_attempts: int = 2  # runs a job may get across restarts
    job_workers: int = 2  # jobs running at once (automatic mask generation itself runs one at a time)
    job_timeout_s: float = 900.0  # longest inference step (decode, generate) of one job
    webhook_allow_private: bool = False  # allow webhook targets on loopback/private networks
    webhook_signing_secret: str | None = None  # whsec_...; None: one generated and kept in the data dir
    public_url: str | None = None  # base of file and status URLs; None: the URL the request came to
    expire_every_s: float = 300.0
    webhook_attempts: int = 4
    webhook_timeout_s: float = 10.0
    webhook_backoff_s: float = 1.0

    def __post_init__(self) -> None:
        if self.job_recovery not in ("retry", "fail"):
            raise InvalidInput(f"job_recovery must be 'retry' or 'fail', got {self.job_recovery!r}", "job_recovery")
        for name in ("job_max_attempts", "job_workers", "webhook_attempts"):
            if int(getattr(self, name)) < 1:
                raise InvalidInput(f"{name} must be at least 1, got {getattr(self, name)}", name)
        for name in ("job_ttl_s", "job_timeout_s", "expire_every_s", "webhook_timeout_s"):
            if float(getattr(self, name)) <= 0:
                raise InvalidInput(f"{name} must be > 0, got {getattr(self, name)}", name)

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> JobSettings:
        """The job options present on `settings` (the rest keep their defaults)."""
        present = {f.name: getattr(settings, f.name) for f in fields(cls) if hasattr(settings, f.name)}
        return cls(**present)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser() if self.data_dir else default_data_dir()


Handler = Callable[["JobServices", Job, JobContext], Any]
Payload = Callable[[Job], Mapping[str, Any]]


@dataclass(frozen=True)
class KindSpec:
    """How jobs of one kind (the dialect that accepted them) run and look in webhooks."""

    handler: Handler
    payload: Payload


@dataclass
class JobServices:
    """Everything routes and job handlers share; created at startup as `app.state.job_services`."""

    app: FastAPI
    settings: ServerSettings
    job_settings: JobSettings
    engine: Engine
    store: JobStore
    quotas: Quotas
    storage: Storage
    webhooks: WebhookSender
    signing_secret: str
    loop: asyncio.AbstractEventLoop
    runner: JobRunner = field(init=False)

    def call(self, coroutine: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run `coroutine` on the server's event loop from a worker thread and wait for its result."""
        timeout_s = self.job_settings.job_timeout_s if timeout_s is None else timeout_s
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise RequestTimeout(f"the prediction took longer than {timeout_s:g} s") from None

    def base_url(self, request: Request) -> str:
        """Where clients reach this server: `public_url`, else the URL of the request."""
        return (self.job_settings.public_url or str(request.base_url)).rstrip("/")

    def file_url(self, key: str, job: Job) -> str:
        return self.storage.url_for(key, job.meta.get("base_url"))

    def charge(self, key_id: str | None) -> dict[str, str]:
        """Spend one credit of the key's quota (`QuotaExceeded` when none is left); the headers to send."""
        remaining = None if key_id is None else self.quotas.consume(key_id)
        return {} if remaining is None else {"x-remaining-credits": str(remaining)}

    def refund(self, key_id: str | None) -> None:
        if key_id is not None:
            self.quotas.refund(key_id)


def services_of(app: FastAPI) -> JobServices:
    services = getattr(app.state, "job_services", None)
    if services is None:
        raise ServerBusy("the job store is not started yet; retry shortly", retry_after_s=1)
    return services


def key_id(key: str) -> str:
    """The opaque id jobs, files and quotas are kept under for an API key (never the key itself)."""
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:24]


def api_key_id(request: Request) -> str | None:
    """`key_id` of the request's API key; None when auth is off (every caller then sees every job)."""
    settings: ServerSettings = request.app.state.settings
    if not settings.api_keys:
        return None
    key = key_from_headers(request.headers) or key_from_query(request.url.query)
    return None if key is None else key_id(key)


# ---- the /files route ------------------------------------------------------------------------------------

files_router = APIRouter(tags=["files"])


@files_router.head("/files/{key}", include_in_schema=False)
@files_router.get("/files/{key}", responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}, 404: {}})
async def get_file(key: str, request: Request) -> Response:
    """An output file (mask PNG, overlay JPEG) or an input image, by its unguessable key."""
    storage = services_of(request.app).storage
    info = storage.info(key)
    headers = {"cache-control": "private, max-age=3600"}
    if isinstance(storage, LocalStorage):
        return FileResponse(storage.path_for(key), media_type=info.content_type, headers=headers)
    return Response(await asyncio.to_thread(storage.get, key), media_type=info.content_type, headers=headers)


# ---- input images of jobs --------------------------------------------------------------------------------

_IMAGE_TYPES = ((b"\x89PNG", ".png", "image/png"), (b"\xff\xd8", ".jpg", "image/jpeg"), (b"GIF8", ".gif", "image/gif"),
                (b"BM", ".bmp", "image/bmp"))


def _image_type(data: bytes) -> tuple[str, str]:
    """(suffix, content type) of encoded image bytes, by their signature."""
    for signature, suffix, content_type in _IMAGE_TYPES:
        if data.startswith(signature):
            return suffix, content_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp", "image/webp"
    return "", "application/octet-stream"


def own_file_key(url: str, base_url: str | None) -> tuple[str, bool] | None:
    """`(key, is_upload)` when `url` names a file of this server (`/files/{key}` or `/v1/files/{id}`)."""
    if not base_url:
        return None
    parts, base = urlsplit(url), urlsplit(base_url)
    if (parts.scheme.lower(), parts.netloc.lower()) != (base.scheme.lower(), base.netloc.lower()):
        return None
    path = parts.path
    prefix_path = base.path.rstrip("/")
    if prefix_path and path.startswith(prefix_path + "/"):
        path = path[len(prefix_path):]
    for prefix, upload in (("/files/", False), ("/v1/files/", True)):
        rest = path[len(prefix):]
        if path.startswith(prefix) and rest and "/" not in rest:
            return rest, upload
    return None


class PreparedImage(NamedTuple):
    value: str  # what the job records: the URL (an inline image's stored copy)
    keys: list[str]  # storage keys to tie to the job
    size_hw: tuple[int, int] | None  # None for remote URLs, fetched only when the job runs


async def prepare_image(services: JobServices, value: Any, *, api_key_id: str | None, base_url: str, field: str,
                        plain_base64: bool = False) -> PreparedImage:
    """Check a job's input image when the job is submitted, so bad images get a 4xx instead of a failed job.

    Inline images (data URIs, and plain base64 with `plain_base64`) are decoded, then kept in storage: the
    job records their URL (rows stay small, and a retried job finds its image). Files of this server must
    exist (uploads: of the same API key); other http(s) URLs must pass the fetch rules and are fetched when
    the job runs.
    """
    if not isinstance(value, str) or not value.strip():
        raise InvalidImage(f"{field}: expected an image URL or a data URI", field)
    engine, storage = services.engine, services.storage
    own = own_file_key(value, base_url)
    if own is not None:
        key, upload = own
        try:
            info = storage.info(key)
            if upload and info.owner != api_key_id:
                raise StoredFileNotFound(key)
            data = await asyncio.to_thread(storage.get, key)
        except StoredFileNotFound:
            raise InvalidImage(f"{field}: no file {key[:80]!r} on this server (expired or deleted?)", field) from None
        decoded = await engine.decode_image(data, field)
        return PreparedImage(value, [], decoded.size_hw)
    if is_url(value):
        if not services.settings.allow_url_fetch:
            raise UrlNotAllowed(f"{field}: fetching images by URL is turned off on this server "
                                "(start it with --allow-url-fetch); send the image itself", field)
        await asyncio.to_thread(check_public_url, value, field)
        return PreparedImage(value, [], None)
    if value[:5].lower() != "data:" and not plain_base64:
        raise InvalidImage(f"{field}: expected an http(s) URL or a data: URI, got {value[:40]!r}", field)
    data = decode_base64_image(value, field=field)
    decoded = await engine.decode_image(data, field)
    suffix, content_type = _image_type(data)
    key = await asyncio.to_thread(storage.put, data, suffix, content_type, owner=api_key_id)
    return PreparedImage(storage.url_for(key, base_url), [key], decoded.size_hw)


def load_job_image(services: JobServices, job: Job, value: str, field: str) -> DecodedImage:
    """A job's input image, decoded (from a worker thread): from storage, or fetched by URL."""
    own = own_file_key(value, job.meta.get("base_url"))
    if own is not None:
        try:
            data = services.storage.get(own[0])
        except StoredFileNotFound:
            raise InvalidImage(f"{field}: the input file was deleted before the prediction ran", field) from None
    elif is_url(value):
        settings = services.settings
        if not settings.allow_url_fetch:
            raise UrlNotAllowed(f"{field}: fetching images by URL is turned off on this server", field)
        data = fetch_url_bytes(value, max_bytes=settings.fetch_max_bytes, timeout_s=settings.fetch_timeout_s,
                               field=field)
    else:
        data = decode_base64_image(value, field=field)
    return services.call(services.engine.decode_image(data, field))


# ---- errors in each dialect's shape ----------------------------------------------------------------------

def describe_job_error(exc: BaseException) -> ErrorInfo:
    """`segany.server.http.errors.describe` plus the HTTP and request-validation errors FastAPI raises itself."""
    if isinstance(exc, StarletteHTTPException):
        return ErrorInfo(exc.status_code, "http_error", str(exc.detail), None, dict(exc.headers or {}))
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        message = str(first.get("msg", "invalid request"))
        return ErrorInfo(422, "validation_error", f"{where}: {message}" if where else message, where or None)
    return describe(exc)


def install_error_handlers(app: FastAPI) -> None:
    """Answer errors on the job dialects' paths (and job errors anywhere) here; leave the rest to the app."""
    from segany.server.dialects import cog, replicate, segmind

    own_prefixes = replicate.PATH_PREFIXES + segmind.PATH_PREFIXES + cog.PATH_PREFIXES

    def wrap(previous: Callable[..., Any] | None) -> Callable[[Request, Exception], Awaitable[Response]]:
        async def handle(request: Request, exc: Exception) -> Response:
            path = request.url.path
            if not path.startswith(own_prefixes) and previous is not None:
                result = previous(request, exc)
                return await result if inspect.isawaitable(result) else result
            info = describe_job_error(exc)
            if info.status >= 500 and not isinstance(exc, SeganyError):
                log.error("unhandled error on %s", path, exc_info=exc)
            return render_error(path, info)

        return handle

    for exc_class in (SeganyError, ValidationError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(exc_class, wrap(app.exception_handlers.get(exc_class)))


# ---- startup and shutdown --------------------------------------------------------------------------------


def _kinds() -> dict[str, KindSpec]:
    # Imported here: the dialect modules import this one for `services_of`.
    from segany.server.dialects import cog, replicate, replicate_seed, segmind

    return {
        "replicate": KindSpec(replicate_seed.run_prediction, replicate.prediction_json),
        "cog": KindSpec(replicate_seed.run_prediction, cog.response_json),
        "segmind": KindSpec(segmind.run_job, segmind.result_json),
    }


def _signing_secret(job_settings: JobSettings, data_dir: Path) -> str:
    """The configured secret, else the one kept in the data dir (made on first start, readable by the owner only)."""
    if job_settings.webhook_signing_secret:
        return job_settings.webhook_signing_secret
    path = data_dir / SECRET_FILE
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    secret = new_signing_secret()
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secret)
    return secret


def start_jobs(app: FastAPI, settings: ServerSettings, job_settings: JobSettings) -> JobServices:
    """Open the stores, settle jobs left unfinished by a previous process, start the workers (call in the loop)."""
    data_dir = job_settings.data_path
    data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(data_dir / DB_FILE)
    store = JobStore(db, max_attempts=job_settings.job_max_attempts, ttl_s=job_settings.job_ttl_s)
    secret = _signing_secret(job_settings, data_dir)
    webhooks = WebhookSender(attempts=job_settings.webhook_attempts, timeout_s=job_settings.webhook_timeout_s,
                             backoff_s=job_settings.webhook_backoff_s,
                             allow_private=job_settings.webhook_allow_private, signing_secret=secret)
    services = JobServices(app=app, settings=settings, job_settings=job_settings, engine=app.state.engine,
                           store=store, quotas=Quotas(db), storage=LocalStorage(data_dir / FILES_DIR),
                           webhooks=webhooks, signing_secret=secret, loop=asyncio.get_running_loop())
    kinds = _kinds()
    services.runner = JobRunner(
        store, lambda job, context: kinds[job.kind].handler(services, job, context),
        workers=job_settings.job_workers, webhooks=webhooks, payload_for=lambda job: kinds[job.kind].payload(job),
        kinds=tuple(kinds), storage=services.storage, expire_every_s=job_settings.expire_every_s)
    report = services.runner.start(recover=job_settings.job_recovery)  # type: ignore[arg-type]
    if report is not None and (report.requeued or report.failed or report.canceled):
        log.warning("jobs left by the previous run: %d queued again, %d failed, %d canceled",
                    len(report.requeued), len(report.failed), len(report.canceled))
    app.state.job_services = services
    return services


async def stop_jobs(services: JobServices, timeout_s: float = 10.0) -> None:
    """Stop claiming, give running jobs `timeout_s` to finish (the rest are recovered at next start), close."""
    services.app.state.job_services = None
    await asyncio.to_thread(services.runner.stop, timeout_s)
    # Waiting lets deliveries in flight end and be recorded (retries are cut short and resent at next start).
    await asyncio.to_thread(services.webhooks.close, wait=True)
    services.store.close()


def purge_now(app: FastAPI) -> tuple[int, int]:
    """Delete expired jobs and files now (the janitor does it every `expire_every_s`)."""
    services = services_of(app)
    return purge_expired(services.store, services.storage)


def install(app: FastAPI, settings: ServerSettings, job_settings: JobSettings | None = None) -> None:
    """Add the job-backed dialects to `app` (built by `create_app`); their stores start with the app.

    Calling it again only replaces the job settings used at the next startup (so tests can pick a data dir
    on an app whose factory already installed the dialects).
    """
    app.state.job_settings = job_settings or JobSettings.from_settings(settings)
    if getattr(app.state, "jobs_installed", False):
        return
    app.state.jobs_installed = True
    app.state.job_services = None
    from segany.server.dialects import cog, replicate, segmind

    for router in (files_router, replicate.router, cog.router, segmind.router):
        app.include_router(router)
    install_error_handlers(app)
    previous = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(instance: Any) -> AsyncIterator[Any]:
        async with previous(instance) as state:
            services = start_jobs(app, settings, app.state.job_settings)
            try:
                yield state
            finally:
                await stop_jobs(services)

    app.router.lifespan_context = lifespan
    app.openapi_schema = None  # regenerate with the new routes
