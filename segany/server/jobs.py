"""Prediction jobs kept in SQLite so that accepted work survives crashes and restarts.

`Database` is the SQLite file under the data directory (WAL mode, one connection per thread, per-component
schema versions in `schema_migrations`); `JobStore` records every accepted prediction in it; `JobRunner`
executes queued jobs on worker threads with a dialect's handler and sends their webhooks.

Statuses follow Replicate's prediction lifecycle, which the other dialects map onto:

    starting --claim--> processing --> succeeded | failed | canceled
    starting --cancel--> canceled

Segmind's async API reads them as QUEUED (starting), PROCESSING, COMPLETED (succeeded) and FAILED (failed,
canceled).
Timestamps are unix seconds (UTC floats); `iso8601` formats them the way Replicate does.

One server process per database file is assumed: `recover_interrupted` treats every `processing` job as
interrupted, so it must run at startup before this process claims anything.
"""
from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from segany.errors import InvalidInput, SeganyError
from segany.server.webhooks import DeliveryResult, WebhookSender, wants_event

if TYPE_CHECKING:
    from segany.server.storage import Storage

log = logging.getLogger(__name__)

RecoveryPolicy = Literal["retry", "fail"]

# Client-chosen ids (Cog's PUT /predictions/{id}) travel in URLs and logs: keep them to a safe alphabet.
_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_LOGS_MAX_CHARS = 1_000_000  # keep the tail: a chatty handler must not grow a row without bound


class JobNotFound(SeganyError, LookupError):
    """No job with that id (or not visible to the calling API key)."""


class JobConflict(SeganyError):
    """An idempotent create reused an id or idempotency key for a different request."""


class JobCanceled(SeganyError):
    """Raised inside a handler (by `JobContext.raise_if_canceled`) to stop a job whose cancel was requested."""


class JobStatus(str, Enum):
    STARTING = "starting"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    def __str__(self) -> str:  # the value in f-strings too (a str-mixin Enum would print "JobStatus.FAILED")
        return self.value

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


_UNFINISHED_SQL = "('starting', 'processing')"
_FINISHED_SQL = "('succeeded', 'failed', 'canceled')"


def new_job_id() -> str:
    """128 random bits as 26 lowercase base32 characters, the shape of Replicate's prediction ids."""
    return base64.b32encode(secrets.token_bytes(16)).decode("ascii").lower().rstrip("=")


def iso8601(timestamp: float | None) -> str | None:
    """Unix seconds -> ``2024-07-31T12:00:00.123456Z`` (None stays None)."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def returning_one(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
    """Run a write with RETURNING to completion, so its implicit transaction ends here, and give its row."""
    rows = conn.execute(sql, params).fetchall()
    return rows[0] if rows else None


class Database:
    """An SQLite file in WAL mode with one connection per thread, shared by the job store and the quotas."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._connections: dict[int, sqlite3.Connection] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.connection().execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " component TEXT NOT NULL, version INTEGER NOT NULL, applied_at REAL NOT NULL,"
            " PRIMARY KEY (component, version))"
        )

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (autocommit; use `transaction()` to group statements)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and not self._closed:
            return conn
        with self._lock:
            if self._closed:
                raise RuntimeError(f"database {self.path} is closed")
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: an acknowledged job must survive power loss too, not only a process crash.
            conn.execute("PRAGMA synchronous=FULL")
            alive = {thread.ident for thread in threading.enumerate()}
            for ident in [i for i in self._connections if i not in alive]:  # threads that ended
                self._connections.pop(ident).close()
            stale = self._connections.pop(threading.get_ident(), None)  # an ended thread whose id was reused
            if stale is not None:
                stale.close()
            self._connections[threading.get_ident()] = conn
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front so read-then-write steps are atomic."""
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def migrate(self, component: str, steps: Sequence[Sequence[str]]) -> int:
        """Apply the not yet applied `steps` (each a list of SQL statements) of `component`; returns its version."""
        with self.transaction() as conn:
            current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations WHERE component = ?",
                                   (component,)).fetchone()[0]
            if current > len(steps):
                raise RuntimeError(f"{self.path}: {component} schema version {current} is newer than this "
                                   f"segany knows ({len(steps)}); upgrade segany or use another --data-dir")
            for version in range(current + 1, len(steps) + 1):
                for statement in steps[version - 1]:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (component, version, time.time()))
        return len(steps)

    def close(self) -> None:
        """Close every thread's connection; later use raises."""
        with self._lock:
            self._closed = True
            for conn in self._connections.values():
                conn.close()
            self._connections.clear()


_JOB_MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            model TEXT NOT NULL,
            input_json TEXT NOT NULL,
            meta_json TEXT NOT NULL DEFAULT '{}',
            status TEXT NOT NULL CHECK (status IN ('starting', 'processing', 'succeeded', 'failed', 'canceled')),
            created_at REAL NOT NULL,
            started_at REAL,
            completed_at REAL,
            output_json TEXT,
            error TEXT,
            logs TEXT NOT NULL DEFAULT '',
            metrics_json TEXT NOT NULL DEFAULT '{}',
            webhook TEXT,
            webhook_events_json TEXT NOT NULL DEFAULT '[]',
            webhook_done INTEGER NOT NULL DEFAULT 0,
            api_key_id TEXT,
            idempotency_key TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            file_keys_json TEXT NOT NULL DEFAULT '[]')""",
        "CREATE INDEX jobs_queue ON jobs (status, created_at)",
        "CREATE INDEX jobs_finished ON jobs (completed_at) WHERE completed_at IS NOT NULL",
        "CREATE INDEX jobs_owner ON jobs (api_key_id, created_at)",
        "CREATE UNIQUE INDEX jobs_idempotency ON jobs (COALESCE(api_key_id, ''), idempotency_key)"
        " WHERE idempotency_key IS NOT NULL",
    ],
]


@dataclass(frozen=True)
class Job:
    """One recorded prediction. `input`, `output`, `meta` and `metrics` are whatever JSON the dialect stored."""

    id: str
    kind: str  # the dialect that accepted it: "replicate", "cog", "segmind", "native"...
    model: str
    input: Mapping[str, Any]
    status: JobStatus
    created_at: float
    started_at: float | None = None
    completed_at: float | None = None
    output: Any = None
    error: str | None = None
    logs: str = ""
    metrics: Mapping[str, Any] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)  # dialect extras: Replicate version, request base URL
    webhook: str | None = None
    webhook_events: tuple[str, ...] = ()  # empty: every event
    webhook_done: bool = False  # the completion webhook was delivered (or given up on)
    api_key_id: str | None = None
    idempotency_key: str | None = None
    attempts: int = 0
    max_attempts: int = 1
    cancel_requested: bool = False
    file_keys: tuple[str, ...] = ()

    @property
    def finished(self) -> bool:
        return self.status.finished

    @property
    def predict_time(self) -> float | None:
        """Seconds between the (last) start and completion; Replicate's `metrics.predict_time`."""
        if self.started_at is None or self.completed_at is None:
            return None
        return max(0.0, self.completed_at - self.started_at)

    def to_dict(self) -> dict[str, Any]:
        """A dialect-neutral JSON view (timestamps in ISO 8601); the default webhook payload."""
        metrics = dict(self.metrics)
        if self.predict_time is not None:
            metrics["predict_time"] = self.predict_time
        return {
            "id": self.id, "kind": self.kind, "model": self.model, "status": self.status.value,
            "input": dict(self.input), "output": self.output, "error": self.error, "logs": self.logs,
            "metrics": metrics,
            "created_at": iso8601(self.created_at), "started_at": iso8601(self.started_at),
            "completed_at": iso8601(self.completed_at), "attempts": self.attempts,
        }

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        return cls(
            id=row["id"], kind=row["kind"], model=row["model"], input=json.loads(row["input_json"]),
            status=JobStatus(row["status"]), created_at=row["created_at"], started_at=row["started_at"],
            completed_at=row["completed_at"],
            output=None if row["output_json"] is None else json.loads(row["output_json"]),
            error=row["error"], logs=row["logs"], metrics=json.loads(row["metrics_json"]),
            meta=json.loads(row["meta_json"]), webhook=row["webhook"],
            webhook_events=tuple(json.loads(row["webhook_events_json"])), webhook_done=bool(row["webhook_done"]),
            api_key_id=row["api_key_id"], idempotency_key=row["idempotency_key"], attempts=row["attempts"],
            max_attempts=row["max_attempts"], cancel_requested=bool(row["cancel_requested"]),
            file_keys=tuple(json.loads(row["file_keys_json"])),
        )


@dataclass(frozen=True)
class RecoveryReport:
    """What `recover_interrupted` did: jobs put back in the queue and jobs failed with a reason."""

    requeued: tuple[Job, ...]
    failed: tuple[Job, ...]
    canceled: tuple[Job, ...]


def _to_json(value: Any, field_name: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{field_name} must be JSON-serialisable: {exc}", field=field_name) from exc


class JobStore:
    """Every accepted prediction, in the `jobs` table of `db` (a `Database` or the path of its file)."""

    def __init__(self, db: Database | str | Path, *, max_attempts: int = 2, ttl_s: float = 24 * 3600) -> None:
        """`max_attempts`: runs a job may get across restarts; `ttl_s`: how long finished jobs are kept."""
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.db = db if isinstance(db, Database) else Database(db)
        self.max_attempts = max_attempts
        self.ttl_s = ttl_s
        self.db.migrate("jobs", _JOB_MIGRATIONS)

    def close(self) -> None:
        self.db.close()

    def create(self, *, kind: str, model: str, input: Mapping[str, Any], id: str | None = None,
               meta: Mapping[str, Any] | None = None, webhook: str | None = None,
               webhook_events: Sequence[str] = (), api_key_id: str | None = None,
               idempotency_key: str | None = None, max_attempts: int | None = None,
               now: float | None = None) -> tuple[Job, bool]:
        """Record a queued job; returns `(job, created)`.

        Idempotent: with an `id` (Cog's PUT /predictions/{id}) or an `idempotency_key` (scoped to the API key)
        that already exists, the existing job is returned with `created=False`; the same id or key with
        another kind, model, input or API key raises `JobConflict`. Without `id` an unguessable one is made.
        Webhook URLs and event names must already be validated (`segany.server.webhooks`).
        """
        if id is not None and not _CLIENT_ID_RE.match(id):
            raise InvalidInput("id must be 1-128 characters from A-Z, a-z, 0-9, '_' and '-'", field="id")
        input_json = _to_json(dict(input), "input")
        meta_json = _to_json(dict(meta or {}), "meta")
        with self.db.transaction() as conn:
            existing = None
            if id is not None:
                existing = conn.execute("SELECT * FROM jobs WHERE id = ?", (id,)).fetchone()
            if existing is None and idempotency_key is not None:
                existing = conn.execute(
                    "SELECT * FROM jobs WHERE idempotency_key = ? AND COALESCE(api_key_id, '') = ?",
                    (idempotency_key, api_key_id or "")).fetchone()
            if existing is not None:
                same = (existing["kind"], existing["model"], existing["input_json"], existing["api_key_id"]) == (
                    kind, model, input_json, api_key_id)
                if not same:
                    raise JobConflict(f"prediction id {id or idempotency_key!r} is already used by another request")
                return Job.from_row(existing), False
            row = returning_one(
                conn, "INSERT INTO jobs (id, kind, model, input_json, meta_json, status, created_at, webhook,"
                " webhook_events_json, api_key_id, idempotency_key, max_attempts)"
                " VALUES (?, ?, ?, ?, ?, 'starting', ?, ?, ?, ?, ?, ?) RETURNING *",
                (id or new_job_id(), kind, model, input_json, meta_json, time.time() if now is None else now,
                 webhook, json.dumps(list(webhook_events)), api_key_id, idempotency_key,
                 max_attempts or self.max_attempts))
        return Job.from_row(row), True

    def get(self, job_id: str, *, api_key_id: str | None = None) -> Job:
        """The job; with `api_key_id`, only if that key created it. Raises `JobNotFound`."""
        row = self.db.connection().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None or (api_key_id is not None and row["api_key_id"] != api_key_id):
            raise JobNotFound(f"no prediction with id {job_id!r}")
        return Job.from_row(row)

    def list(self, *, api_key_id: str | None = None, kind: str | None = None, status: JobStatus | None = None,
             created_before: float | None = None, limit: int = 100) -> list[Job]:
        """Newest first; page with `created_before=<last job's created_at>`."""
        clauses, params = [], []
        for column, value in (("api_key_id", api_key_id), ("kind", kind),
                              ("status", None if status is None else JobStatus(status).value)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if created_before is not None:
            clauses.append("created_at < ?")
            params.append(created_before)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.db.connection().execute(
            f"SELECT * FROM jobs {where} ORDER BY created_at DESC, rowid DESC LIMIT ?", (*params, limit)).fetchall()
        return [Job.from_row(row) for row in rows]

    def claim_next(self, *, kinds: Sequence[str] | None = None, now: float | None = None) -> Job | None:
        """Atomically move the oldest queued job (of `kinds`, if given) to processing; None if the queue is empty."""
        kind_filter = f" AND kind IN ({', '.join('?' * len(kinds))})" if kinds else ""
        row = returning_one(
            self.db.connection(), "UPDATE jobs SET status = 'processing', started_at = ?, attempts = attempts + 1"
            f" WHERE id = (SELECT id FROM jobs WHERE status = 'starting'{kind_filter} ORDER BY created_at, rowid"
            " LIMIT 1)"
            " AND status = 'starting' RETURNING *",
            (time.time() if now is None else now, *(kinds or ())))
        return None if row is None else Job.from_row(row)

    def mark_processing(self, job_id: str, *, now: float | None = None) -> Job | None:
        """Claim this queued job (for callers that run it inline); None if it is not queued any more."""
        row = returning_one(
            self.db.connection(), "UPDATE jobs SET status = 'processing', started_at = ?, attempts = attempts + 1"
            " WHERE id = ? AND status = 'starting' RETURNING *",
            (time.time() if now is None else now, job_id))
        return None if row is None else Job.from_row(row)

    def mark_succeeded(self, job_id: str, output: Any, *, metrics: Mapping[str, Any] | None = None,
                       now: float | None = None) -> Job:
        return self._finish(job_id, JobStatus.SUCCEEDED, output=output, metrics=metrics, now=now)

    def mark_failed(self, job_id: str, error: str, *, now: float | None = None) -> Job:
        return self._finish(job_id, JobStatus.FAILED, error=error, now=now)

    def mark_canceled(self, job_id: str, *, now: float | None = None) -> Job:
        return self._finish(job_id, JobStatus.CANCELED, now=now)

    def _finish(self, job_id: str, status: JobStatus, *, output: Any = None, error: str | None = None,
                metrics: Mapping[str, Any] | None = None, now: float | None = None) -> Job:
        """Set a terminal status once; a job already finished keeps its first outcome and is returned as is."""
        output_json = None if output is None else _to_json(output, "output")
        row = returning_one(
            self.db.connection(), "UPDATE jobs SET status = ?, completed_at = ?, output_json = ?, error = ?,"
            " metrics_json = ? WHERE id = ? AND status IN " + _UNFINISHED_SQL + " RETURNING *",
            (status.value, time.time() if now is None else now, output_json, error,
             _to_json(dict(metrics or {}), "metrics"), job_id))
        return self.get(job_id) if row is None else Job.from_row(row)

    def cancel(self, job_id: str, *, api_key_id: str | None = None, now: float | None = None) -> Job:
        """Cancel: a queued job becomes canceled now; a processing one gets `cancel_requested` for its handler
        to notice; a finished one is returned unchanged. Raises `JobNotFound`."""
        self.get(job_id, api_key_id=api_key_id)
        conn = self.db.connection()
        conn.execute("UPDATE jobs SET status = 'canceled', completed_at = ? WHERE id = ? AND status = 'starting'",
                     (time.time() if now is None else now, job_id))
        conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'processing'", (job_id,))
        return self.get(job_id)

    def is_cancel_requested(self, job_id: str) -> bool:
        row = self.db.connection().execute("SELECT cancel_requested, status FROM jobs WHERE id = ?",
                                           (job_id,)).fetchone()
        return row is None or bool(row["cancel_requested"]) or row["status"] == "canceled"

    def append_logs(self, job_id: str, text: str) -> None:
        self.db.connection().execute("UPDATE jobs SET logs = substr(logs || ?, ?) WHERE id = ?",
                                     (text, -_LOGS_MAX_CHARS, job_id))

    def add_file_keys(self, job_id: str, keys: Sequence[str]) -> None:
        """Tie storage keys to the job so that `expire` returns them for deletion."""
        with self.db.transaction() as conn:
            row = conn.execute("SELECT file_keys_json FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(f"no prediction with id {job_id!r}")
            merged = list(dict.fromkeys([*json.loads(row["file_keys_json"]), *keys]))
            conn.execute("UPDATE jobs SET file_keys_json = ? WHERE id = ?", (json.dumps(merged), job_id))

    def mark_webhook_done(self, job_id: str) -> None:
        self.db.connection().execute("UPDATE jobs SET webhook_done = 1 WHERE id = ?", (job_id,))

    def pending_completion_webhooks(self) -> list[Job]:
        """Finished jobs with a webhook whose completion delivery never ended (the process died first)."""
        rows = self.db.connection().execute(
            "SELECT * FROM jobs WHERE status IN " + _FINISHED_SQL + " AND webhook IS NOT NULL AND webhook_done = 0"
            " ORDER BY completed_at").fetchall()
        return [Job.from_row(row) for row in rows]

    def recover_interrupted(self, policy: RecoveryPolicy = "retry", *, now: float | None = None) -> RecoveryReport:
        """Run at startup, before claiming: settle the jobs a previous process accepted but did not finish.

        "retry": processing jobs go back to the queue while `attempts < max_attempts`, else fail with the
        reason; queued jobs stay queued. "fail": every unfinished job fails with the reason. Jobs whose cancel
        was requested become canceled. Nothing is left in `processing`.
        """
        if policy not in ("retry", "fail"):
            raise ValueError(f"policy must be 'retry' or 'fail', not {policy!r}")
        now = time.time() if now is None else now
        requeued: list[Job] = []
        failed: list[Job] = []
        canceled: list[Job] = []
        with self.db.transaction() as conn:
            rows = conn.execute("SELECT * FROM jobs WHERE status IN " + _UNFINISHED_SQL).fetchall()
            for row in rows:
                job = Job.from_row(row)
                if job.cancel_requested:
                    updated = returning_one(conn, "UPDATE jobs SET status = 'canceled', completed_at = ?"
                                            " WHERE id = ? RETURNING *", (now, job.id))
                    canceled.append(Job.from_row(updated))
                    continue
                if job.status is JobStatus.STARTING and policy == "retry":
                    continue
                if job.status is JobStatus.PROCESSING and policy == "retry" and job.attempts < job.max_attempts:
                    updated = returning_one(conn, "UPDATE jobs SET status = 'starting', started_at = NULL"
                                            " WHERE id = ? RETURNING *", (job.id,))
                    requeued.append(Job.from_row(updated))
                    continue
                if job.status is JobStatus.STARTING:
                    reason = "the server restarted before this prediction started; not run (recovery policy 'fail')"
                elif policy == "fail":
                    reason = ("the server stopped while this prediction was running; not retried"
                              " (recovery policy 'fail')")
                else:
                    reason = (f"the server stopped while this prediction was running, {job.attempts} time(s);"
                              f" giving up after {job.max_attempts} attempt(s)")
                updated = returning_one(conn, "UPDATE jobs SET status = 'failed', completed_at = ?, error = ?"
                                        " WHERE id = ? RETURNING *", (now, reason, job.id))
                failed.append(Job.from_row(updated))
        return RecoveryReport(requeued=tuple(requeued), failed=tuple(failed), canceled=tuple(canceled))

    def expire(self, now: float | None = None, *, ttl_s: float | None = None) -> list[str]:
        """Delete finished jobs completed more than `ttl_s` (default: the store's) ago; returns their file keys
        for the caller to delete from storage (files orphaned by a crash in between expire there by age)."""
        cutoff = (time.time() if now is None else now) - (self.ttl_s if ttl_s is None else ttl_s)
        with self.db.transaction() as conn:
            rows = conn.execute("DELETE FROM jobs WHERE status IN " + _FINISHED_SQL + " AND completed_at < ?"
                                " RETURNING file_keys_json", (cutoff,)).fetchall()
        return [key for row in rows for key in json.loads(row["file_keys_json"])]


Handler = Callable[[Job, "JobContext"], Any]
PayloadBuilder = Callable[[Job], Mapping[str, Any]]


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

    async def wait_async(self, job_id: str, timeout_s: float, *, api_key_id: str | None = None) -> Job:
        """`wait` from an event loop without blocking it."""
        import anyio.to_thread

        return await anyio.to_thread.run_sync(lambda: self.wait(job_id, timeout_s, api_key_id=api_key_id))

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
        self._notify_completed(finished)

    def _wants(self, job: Job, event: str) -> bool:
        return self.webhooks is not None and bool(job.webhook) and wants_event(job.webhook_events, event)

    def _send(self, job: Job, on_done: Callable[[DeliveryResult], None] | None = None) -> None:
        assert self.webhooks is not None and job.webhook is not None
        try:
            self.webhooks.send(job.webhook, self.payload_for(job), key=job.id, on_done=on_done)
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
