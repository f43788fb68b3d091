"""Prediction jobs kept in SQLite so that accepted work survives crashes and restarts.

`JobStore` records every accepted prediction in the `jobs` table of the data directory's database
(`segany.server.jobs.database`); `segany.server.jobs.workers.JobRunner` executes queued jobs on worker threads with a
dialect's handler and sends their webhooks.

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
import re
import secrets
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from segany.errors import InvalidInput, SeganyError
from segany.server.jobs.database import Database, returning_one
from segany.server.jobs.errors import JobConflict, JobNotFound

__all__ = [
    "Database", "Job", "JobCanceled", "JobConflict", "JobNotFound", "JobStatus", "JobStore", "RecoveryPolicy",
    "RecoveryReport", "check_client_id", "iso8601", "new_job_id", "returning_one",
]

RecoveryPolicy = Literal["retry", "fail"]

# Client-chosen ids (Cog's PUT /predictions/{id}) travel in URLs and logs: keep them to a safe alphabet.
_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_LOGS_MAX_CHARS = 1_000_000  # keep the tail: a chatty handler must not grow a row without bound


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


def check_client_id(job_id: str, field: str = "id") -> str:
    """A client-chosen job id (Cog's PUT /predictions/{id}), or InvalidInput naming `field`."""
    if not isinstance(job_id, str) or not _CLIENT_ID_RE.match(job_id):
        raise InvalidInput(f"{field} must be 1-128 characters from A-Z, a-z, 0-9, '_' and '-'", field=field)
    return job_id


def new_job_id() -> str:
    """128 random bits as 26 lowercase base32 characters, the shape of Replicate's prediction ids."""
    return base64.b32encode(secrets.token_bytes(16)).decode("ascii").lower().rstrip("=")


def iso8601(timestamp: float | None) -> str | None:
    """Unix seconds -> ``2024-07-31T12:00:00.123456Z`` (None stays None)."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
        Webhook URLs and event names must already be validated (`segany.server.jobs.webhooks`).
        """
        if id is not None:
            check_client_id(id)
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

    def count_unfinished(self) -> int:
        """Jobs queued or running (the submission bound)."""
        with self.db.transaction() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM jobs WHERE status IN " + _UNFINISHED_SQL).fetchone()[0])

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
