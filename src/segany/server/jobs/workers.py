"""Running queued jobs: worker threads, a handler per job, cancellation, webhooks and expiry.

`JobRunner` claims jobs from a `JobStore` (oldest first, atomically, so several processes sharing a
database never run one job twice), calls `handler(job, context)` and records the outcome; `JobContext`
gives the handler cancellation checks, logs and output-file bookkeeping. A janitor thread deletes
expired jobs and their files (`purge_expired`).
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from segany.errors import SeganyError
from segany.server.jobs.store import Job, JobCanceled, JobStatus, JobStore, RecoveryPolicy, RecoveryReport
from segany.server.jobs.webhooks import DeliveryResult, WebhookSender, wants_event

if TYPE_CHECKING:
    from segany.server.jobs.storage import Storage

log = logging.getLogger(__name__)

Handler = Callable[[Job, "JobContext"], Any]
PayloadBuilder = Callable[[Job], Mapping[str, Any]]

_running = threading.local()  # the JobContext of the job this worker thread runs


def current_context() -> JobContext | None:
    """The context of the job the calling worker thread is running (None outside a job)."""
    return getattr(_running, "context", None)


class JobContext:
    """Given to a handler with its job: cancellation checks, logs, output files and extra metrics."""

    LOGS_WEBHOOK_INTERVAL_S = 0.5  # Replicate sends `logs` (and `output`) events at most every 500 ms

    def __init__(self, runner: JobRunner, job: Job) -> None:
        self.job = job
        self.metrics: dict[str, Any] = {}  # merged into the job's metrics on success (e.g. inference_time)
        self._runner = runner
        self._last_logs_webhook = float("-inf")

    def canceled(self) -> bool:
        """True once a cancel was requested (by this or any process sharing the database)."""
        return self._runner.store.is_cancel_requested(self.job.id)

    def raise_if_canceled(self) -> None:
        """Call between steps of long work; raises `JobCanceled`, which the runner turns into `canceled`."""
        if self.canceled():
            raise JobCanceled(f"prediction {self.job.id} was canceled")

    def log(self, line: str) -> None:
        """Append a line to the job's logs (sending a throttled `logs` webhook)."""
        self._runner.store.append_logs(self.job.id, line if line.endswith("\n") else line + "\n")
        now = time.monotonic()
        if self._runner._wants(self.job, "logs") and now - self._last_logs_webhook >= self.LOGS_WEBHOOK_INTERVAL_S:
            self._last_logs_webhook = now
            self._runner._notify(self._runner.store.get(self.job.id), "logs")

    def add_files(self, *keys: str) -> None:
        """Tie storage keys (output files) to the job so they expire with it."""
        self._runner.store.add_file_keys(self.job.id, keys)


class JobRunner:
    """Runs queued jobs on `workers` threads: `handler(job, context) -> output` (JSON-able).

    A handler raising `JobCanceled` ends `canceled`; a `SeganyError` ends `failed` with its message; any other
    exception is logged and ends `failed` without internals. Webhooks (if a sender is given) get `start` when
    a job is claimed and one completion delivery (`completed`, or `output` for a success when only that was
    asked for) with the payload `payload_for(job)` — the dialect's view, e.g. a Replicate prediction.
    With `storage`, a janitor thread deletes expired jobs and their files every `expire_every_s`.
    """

    def __init__(self, store: JobStore, handler: Handler, *, workers: int = 1, webhooks: WebhookSender | None = None,
                 payload_for: PayloadBuilder = Job.to_dict, kinds: Sequence[str] | None = None,
                 poll_interval_s: float = 0.5, storage: Storage | None = None, expire_every_s: float = 300.0) -> None:
        self.store = store
        self.handler = handler
        self.webhooks = webhooks
        self.payload_for = payload_for
        self.kinds = tuple(kinds) if kinds else None
        self.storage = storage
        self._workers = workers
        self._poll_interval_s = poll_interval_s
        self._expire_every_s = expire_every_s
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._work_ready = threading.Event()
        self._done = threading.Condition()
        self._waiting = 0  # requests in wait_async (event-loop only, so no lock)
        self._done_generation = 0  # bumped on every completion so `wait` never misses a wake-up

    def start(self, *, recover: RecoveryPolicy | None = "retry") -> RecoveryReport | None:
        """Settle jobs a previous process left unfinished, resend undelivered completion webhooks, start threads."""
        self._stopping.clear()
        report = self.store.recover_interrupted(recover) if recover else None
        for job in self.store.pending_completion_webhooks():
            self._notify_completed(job)
        names = [f"segany-job-{i}" for i in range(self._workers)]
        self._threads = [threading.Thread(target=self._work, name=name, daemon=True) for name in names]
        if self.storage is not None:
            self._threads.append(threading.Thread(target=self._janitor, name="segany-janitor", daemon=True))
        for thread in self._threads:
            thread.start()
        return report

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop claiming and wait for running handlers; a job still running is recovered at next start."""
        self._stopping.set()
        self._work_ready.set()
        for thread in self._threads:
            thread.join(timeout_s)

    def submit(self, **create_args: Any) -> tuple[Job, bool]:
        """`JobStore.create(**create_args)` and wake a worker; returns `(job, created)`."""
        job, created = self.store.create(**create_args)
        self._work_ready.set()
        return job, created

    def cancel(self, job_id: str, *, api_key_id: str | None = None) -> Job:
        """Cancel (see `JobStore.cancel`); a queued job canceled now gets its completion webhook here."""
        before = self.store.get(job_id, api_key_id=api_key_id)
        job = self.store.cancel(job_id, api_key_id=api_key_id)
        if not before.finished and job.finished:
            self._notify_completed(job)
        return job

    def wait(self, job_id: str, timeout_s: float, *, api_key_id: str | None = None) -> Job:
        """Block until the job finishes or `timeout_s` passes; returns its latest state either way."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._done:
                generation = self._done_generation
            job = self.store.get(job_id, api_key_id=api_key_id)
            remaining = deadline - time.monotonic()
            if job.finished or remaining <= 0:
                return job
            with self._done:  # polls too, for jobs finished by another process
                if generation == self._done_generation:
                    self._done.wait(min(remaining, self._poll_interval_s))

    async def wait_async(self, job_id: str, timeout_s: float, *, api_key_id: str | None = None,
                         max_waiting: int | None = None) -> Job:
        """`wait` from an event loop without holding a thread: polls the store (each read a short thread call).
        With `max_waiting` waiters already, answers at once with the job's current state (the client polls)."""
        if max_waiting is not None and self._waiting >= max_waiting:
            timeout_s = 0.0
        self._waiting += 1
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                job = await asyncio.to_thread(self.store.get, job_id, api_key_id=api_key_id)
                remaining = deadline - time.monotonic()
                if job.finished or remaining <= 0:
                    return job
                await asyncio.sleep(min(remaining, 0.1))
        finally:
            self._waiting -= 1

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                job = self.store.claim_next(kinds=self.kinds)
                if job is not None:
                    self._run(job)
                    continue
            except Exception:  # e.g. disk full: keep the worker alive; an unfinished job is recovered at restart
                log.exception("job worker error")
            if self._work_ready.wait(self._poll_interval_s):
                self._work_ready.clear()

    def _run(self, job: Job) -> None:
        self._notify(job, "start")
        context = JobContext(self, job)
        _running.context = context
        try:
            output = self.handler(job, context)
            if self.store.is_cancel_requested(job.id):
                raise JobCanceled(f"prediction {job.id} was canceled")
            finished = self.store.mark_succeeded(job.id, output, metrics=context.metrics)
        except JobCanceled:
            finished = self.store.mark_canceled(job.id)
        except SeganyError as exc:
            finished = self.store.mark_failed(job.id, str(exc))
        except Exception:
            log.exception("prediction %s failed", job.id)
            finished = self.store.mark_failed(job.id, "internal error while running the prediction")
        finally:
            _running.context = None
        self._notify_completed(finished)

    def _wants(self, job: Job, event: str) -> bool:
        return self.webhooks is not None and bool(job.webhook) and wants_event(job.webhook_events, event)

    def _send(self, job: Job, on_done: Callable[[DeliveryResult], None] | None = None) -> None:
        assert self.webhooks is not None and job.webhook is not None
        try:
            self.webhooks.send(job.webhook, self.payload_for(job), key=job.id, on_done=on_done,
                               api_key_id=job.api_key_id)
        except Exception:  # a payload bug or a closed sender must not fail the job itself
            log.exception("could not queue the webhook of prediction %s", job.id)

    def _notify(self, job: Job, event: str) -> None:
        if self._wants(job, event):
            self._send(job)

    def _notify_completed(self, job: Job) -> None:
        with self._done:
            self._done_generation += 1
            self._done.notify_all()
        if job.webhook_done or not job.webhook:
            return
        if not (self._wants(job, "completed") or (job.status is JobStatus.SUCCEEDED and self._wants(job, "output"))):
            self.store.mark_webhook_done(job.id)
            return

        def settle(result: DeliveryResult) -> None:
            if not result.interrupted:  # delivered or given up; an interrupted one is resent at next start
                self.store.mark_webhook_done(job.id)

        self._send(job, settle)

    def _janitor(self) -> None:
        while not self._stopping.wait(self._expire_every_s):
            try:
                purge_expired(self.store, self.storage)
            except Exception:
                log.exception("expiring jobs and files failed")


def purge_expired(store: JobStore, storage: Storage | None, *, now: float | None = None,
                  file_ttl_s: float | None = None) -> tuple[int, int]:
    """Delete expired jobs, then their files and any stored file older than `file_ttl_s` (default: the
    store's TTL; catches uploads and files orphaned by a crash). Returns `(files of jobs, files by age)`."""
    keys = store.expire(now)
    if storage is None:
        return len(keys), 0
    for key in keys:
        storage.delete(key)
    by_age = storage.expire(store.ttl_s if file_ttl_s is None else file_ttl_s, now=now)
    return len(keys), len(by_age)
