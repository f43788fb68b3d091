"""The job service every asynchronous dialect (Replicate, Cog, Segmind) submits through.

`JobService.start(...)` (in the app's lifespan) opens the job database (`<data_dir>/segany.db`, shared
with the quotas) and the file storage (`<data_dir>/files`), settles jobs a previous process left
unfinished (`job_recovery`) and starts the job runner; `stop()` lets running jobs finish, then closes.
`submit(...)` is the one way a job is created: webhook check, quota charge (refunded if the job cannot be
created), the store, and the storage keys tied to the job. Job handlers run on the runner's worker
threads and reach the async engine through `call`.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from fastapi import Request

from segany.server.engine.engine import Engine
from segany.server.http.errors import RequestTimeout, ServerBusy
from segany.server.http.limits import Limits
from segany.server.jobs.database import Database
from segany.server.jobs.quotas import Quotas
from segany.server.jobs.storage import LocalStorage, Storage
from segany.server.jobs.store import Job, JobCanceled, JobStore
from segany.server.jobs.upload_quota import UploadQuota
from segany.server.jobs.webhooks import WebhookSender, new_signing_secret, parse_events_filter, validate_webhook_url
from segany.server.jobs.workers import JobContext, JobRunner, current_context
from segany.server.settings import ServerSettings

log = logging.getLogger("segany.server")
T = TypeVar("T")
CANCEL_POLL_S = 0.5  # how often a job's engine call looks for a cancel request

DB_FILE = "segany.db"
FILES_DIR = "files"
SECRET_FILE = "webhook_secret"


@dataclass(frozen=True)
class JobKind:
    """How jobs of one kind (named after the dialect that accepts them) run and look in webhooks."""

    handler: Callable[[JobService, Job, JobContext], Any]  # runs on a worker thread; returns the JSON output
    payload: Callable[[Job], Mapping[str, Any]]  # the dialect's view of a job (webhook body)


class Submitted(NamedTuple):
    job: Job
    headers: dict[str, str]  # `x-remaining-credits` when the API key has a quota


@dataclass
class JobService:
    """The job store, quotas, file storage, webhooks and runner of one server process."""

    settings: ServerSettings
    engine: Engine
    limits: Limits
    store: JobStore
    quotas: Quotas
    uploads: UploadQuota
    storage: Storage
    webhooks: WebhookSender
    signing_secret: str
    loop: asyncio.AbstractEventLoop
    runner: JobRunner = field(init=False)

    # ---- lifecycle -----------------------------------------------------------------------------------
    @classmethod
    def start(cls, settings: ServerSettings, engine: Engine, limits: Limits,
              kinds: Mapping[str, JobKind]) -> JobService:
        """Open the stores, settle jobs left unfinished by a previous process, start the workers (in the loop)."""
        data_dir = settings.data_path
        data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(data_dir / DB_FILE)
        store = JobStore(db, max_attempts=settings.job_max_attempts, ttl_s=settings.job_ttl_s)
        secret = _signing_secret(settings, data_dir)
        webhooks = WebhookSender(attempts=settings.webhook_attempts, timeout_s=settings.webhook_timeout_s,
                                 backoff_s=settings.webhook_backoff_s, allow_private=settings.webhook_allow_private,
                                 signing_secret=secret)
        service = cls(settings=settings, engine=engine, limits=limits, store=store, quotas=Quotas(db),
                      uploads=UploadQuota(db, settings.max_upload_bytes_per_key, settings.job_ttl_s),
                      storage=LocalStorage(data_dir / FILES_DIR), webhooks=webhooks, signing_secret=secret,
                      loop=asyncio.get_running_loop())
        service.runner = JobRunner(
            store, lambda job, context: kinds[job.kind].handler(service, job, context),
            workers=settings.job_workers, webhooks=webhooks, payload_for=lambda job: kinds[job.kind].payload(job),
            kinds=tuple(kinds), storage=service.storage, expire_every_s=settings.expire_every_s)
        report = service.runner.start(recover=settings.job_recovery)  # type: ignore[arg-type]
        if report is not None and (report.requeued or report.failed or report.canceled):
            log.warning("jobs left by the previous run: %d queued again, %d failed, %d canceled",
                        len(report.requeued), len(report.failed), len(report.canceled))
        return service

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop claiming, give running jobs `timeout_s` to finish (the rest are recovered at next start), close."""
        await asyncio.to_thread(self.runner.stop, timeout_s)
        # Waiting lets deliveries in flight end and be recorded (retries are cut short and resent at next start).
        await asyncio.to_thread(self.webhooks.close, wait=True)
        self.store.close()

    # ---- submitting ----------------------------------------------------------------------------------
    def submit(self, *, kind: str, model: str, input: Mapping[str, Any], api_key_id: str | None, base_url: str,
               webhook: str | None = None, webhook_events: Sequence[str] | None = None,
               job_id: str | None = None, meta: Mapping[str, Any] | None = None,
               file_keys: Sequence[str] = ()) -> Submitted:
        """Create a job: check the webhook, charge one credit, queue it, tie `file_keys` (stored inputs) to it.

        `webhook_events` None means every event. If the job cannot be created the credit is refunded and the
        stored inputs are deleted before the error propagates (a `JobConflict` for a reused `job_id`, too).
        `meta` gets `base_url`, which file and status URLs of the job are built on.
        """
        if webhook is not None:
            validate_webhook_url(webhook, allow_private=self.settings.webhook_allow_private)
        events = parse_events_filter(None if webhook_events is None else list(webhook_events))
        pending = self.store.count_unfinished()
        if pending >= self.settings.max_pending_jobs:  # backpressure: the queue is bounded, like inference's
            for key in file_keys:
                self.storage.delete(key)
            retry = max(1, min(60, pending // max(1, self.settings.job_workers)))
            raise ServerBusy(f"{pending} jobs are queued or running, the most this server takes; retry later",
                             retry_after_s=retry)
        headers = self.charge(api_key_id)
        try:
            job, _ = self.runner.submit(kind=kind, id=job_id, model=model, input=dict(input),
                                        meta={**(meta or {}), "base_url": base_url}, webhook=webhook,
                                        webhook_events=events, api_key_id=api_key_id)
        except BaseException:
            self.refund(api_key_id)
            for key in file_keys:
                self.storage.delete(key)
            raise
        if file_keys:
            self.store.add_file_keys(job.id, list(file_keys))
        return Submitted(job, headers)

    def charge(self, api_key_id: str | None) -> dict[str, str]:
        """Spend one credit of the key's quota (`QuotaExceeded` when none is left); the headers to send."""
        remaining = None if api_key_id is None else self.quotas.consume(api_key_id)
        return {} if remaining is None else {"x-remaining-credits": str(remaining)}

    def refund(self, api_key_id: str | None) -> None:
        if api_key_id is not None:
            self.quotas.refund(api_key_id)

    # ---- helpers for routes and handlers -------------------------------------------------------------
    def call(self, coroutine: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run `coroutine` on the server's event loop from a worker thread and wait for its result.

        Past `timeout_s` (default `job_timeout_s`; `RequestTimeout`), or once the job this thread runs is
        canceled (`JobCanceled`), the coroutine is cancelled: the engine stops its work at the next batch."""
        timeout_s = self.settings.job_timeout_s if timeout_s is None else timeout_s
        context = current_context()
        deadline = time.monotonic() + timeout_s
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            try:  # inside a job, wake up every CANCEL_POLL_S to look for a cancel request
                return future.result(remaining if context is None else min(remaining, CANCEL_POLL_S))
            except concurrent.futures.TimeoutError:
                if context is None or time.monotonic() >= deadline:
                    future.cancel()
                    raise RequestTimeout(f"the prediction took longer than {timeout_s:g} s") from None
                if context.canceled():
                    future.cancel()
                    raise JobCanceled(f"prediction {context.job.id} was canceled") from None

    def base_url(self, request: Request) -> str:
        """Where clients reach this server: `public_url`, else the URL of the request."""
        return (self.settings.public_url or str(request.base_url)).rstrip("/")

    def file_url(self, key: str, job: Job) -> str:
        return self.storage.url_for(key, job.meta.get("base_url"))


def _signing_secret(settings: ServerSettings, data_dir: Path) -> str:
    """The configured secret, else the one kept in the data dir (made on first start, readable by the owner only)."""
    if settings.webhook_signing_secret:
        return settings.webhook_signing_secret
    path = data_dir / SECRET_FILE
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    secret = new_signing_secret()
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secret)
    return secret
