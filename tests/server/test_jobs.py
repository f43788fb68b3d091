"""JobStore and JobRunner on real SQLite files: idempotency, atomic claims, restart recovery, expiry."""
from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from segany.errors import InvalidInput
from segany.server.jobs.database import Database
from segany.server.jobs.store import Job, JobConflict, JobNotFound, JobStatus, JobStore, iso8601
from segany.server.jobs.workers import JobContext, JobRunner, purge_expired
from segany.server.jobs.storage import LocalStorage, StoredFileNotFound

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "segany.db"


@pytest.fixture()
def store(db_path: Path) -> JobStore:
    store = JobStore(db_path)
    yield store
    store.close()


def _create(store: JobStore, **overrides) -> Job:
    args = {"kind": "replicate", "model": "lucataco/segment-anything-2", "input": {"image": "data:,x"}} | overrides
    job, created = store.create(**args)
    assert created
    return job


def test_database_file_is_wal_and_versioned(store: JobStore, db_path: Path) -> None:
    assert db_path.is_file()
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT component, version FROM schema_migrations").fetchall() == [("jobs", 1)]
    conn.close()
    JobStore(db_path).close()  # reopening applies nothing twice
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0] == 1
    conn.execute("INSERT INTO schema_migrations VALUES ('jobs', 2, 0)")  # as written by a newer segany
    conn.commit()
    conn.close()
    with pytest.raises(RuntimeError, match="newer"):
        JobStore(db_path)


def test_create_records_everything(store: JobStore) -> None:
    job = _create(store, input={"image": "https://example.com/a.png", "mask_limit": -1}, api_key_id="key-1",
                  webhook="https://example.com/hook", webhook_events=["start", "completed"],
                  meta={"version": "abc", "base_url": "http://127.0.0.1:8000"})
    assert re.fullmatch(r"[a-z2-7]{26}", job.id)
    assert job.status is JobStatus.STARTING and not job.finished
    again = store.get(job.id)
    assert again == job
    assert (again.input, again.webhook_events, again.meta["version"]) == (
        {"image": "https://example.com/a.png", "mask_limit": -1}, ("start", "completed"), "abc")
    assert again.attempts == 0 and again.max_attempts == 2
    assert again.to_dict()["created_at"] == iso8601(job.created_at)
    assert len({_create(store).id for _ in range(200)}) == 200


def test_create_is_idempotent_on_a_given_id(store: JobStore) -> None:
    first, created = store.create(id="wjx3whax6rf4vphkegkhcvpv6a", kind="cog", model="m", input={"a": 1, "b": 2})
    assert created and first.id == "wjx3whax6rf4vphkegkhcvpv6a"
    again, created = store.create(id=first.id, kind="cog", model="m", input={"b": 2, "a": 1})
    assert not created and again == first
    store.mark_processing(first.id)
    store.mark_succeeded(first.id, ["/files/x.png"])
    finished, created = store.create(id=first.id, kind="cog", model="m", input={"a": 1, "b": 2})
    assert not created and finished.status is JobStatus.SUCCEEDED and finished.output == ["/files/x.png"]
    with pytest.raises(JobConflict):
        store.create(id=first.id, kind="cog", model="m", input={"a": 2, "b": 2})
    with pytest.raises(JobConflict):
        store.create(id=first.id, kind="cog", model="m", input={"a": 1, "b": 2}, api_key_id="other")
    assert len(store.list()) == 1


def test_idempotency_keys_are_scoped_to_the_api_key(store: JobStore) -> None:
    a, _ = store.create(kind="replicate", model="m", input={}, idempotency_key="req-1", api_key_id="alice")
    b, created_b = store.create(kind="replicate", model="m", input={}, idempotency_key="req-1", api_key_id="bob")
    a2, created_a2 = store.create(kind="replicate", model="m", input={}, idempotency_key="req-1", api_key_id="alice")
    assert created_b and not created_a2 and a2.id == a.id != b.id


@pytest.mark.parametrize("bad_id", ["", "../x", "a b", "x" * 129, "ünïcode"])
def test_client_ids_are_restricted(store: JobStore, bad_id: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        store.create(id=bad_id, kind="cog", model="m", input={})
    assert caught.value.field == "id"


def test_input_must_be_json(store: JobStore) -> None:
    for bad in ({"x": object()}, {"x": float("nan")}):
        with pytest.raises(InvalidInput) as caught:
            store.create(kind="cog", model="m", input=bad)
        assert caught.value.field == "input"


def test_get_and_list_respect_the_api_key(store: JobStore) -> None:
    mine = [_create(store, api_key_id="alice", now=100.0 + i) for i in range(3)]
    theirs = _create(store, api_key_id="bob", kind="segmind", now=200.0)
    assert store.get(mine[0].id, api_key_id="alice") == mine[0]
    with pytest.raises(JobNotFound):
        store.get(mine[0].id, api_key_id="bob")
    with pytest.raises(JobNotFound):
        store.get("nope")
    assert [job.id for job in store.list(api_key_id="alice")] == [job.id for job in reversed(mine)]
    assert [job.id for job in store.list(kind="segmind")] == [theirs.id]
    assert [job.id for job in store.list(api_key_id="alice", created_before=102.0, limit=1)] == [mine[1].id]


def test_claim_takes_the_oldest_and_records_the_attempt(store: JobStore) -> None:
    late = _create(store, now=20.0)
    early = _create(store, now=10.0, kind="segmind")
    assert store.claim_next(kinds=["cog"]) is None
    claimed = store.claim_next(now=30.0)
    assert (claimed.id, claimed.status, claimed.started_at, claimed.attempts) == (
        early.id, JobStatus.PROCESSING, 30.0, 1)
    assert store.claim_next().id == late.id
    assert store.claim_next() is None
    assert store.mark_processing(late.id) is None  # not queued any more


def test_concurrent_claims_never_double_claim(db_path: Path) -> None:
    setup = JobStore(db_path)
    ids = {_create(setup).id for _ in range(150)}
    setup.close()
    claimed: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(6)
    shared = JobStore(db_path)

    def claim_all(own_store: bool) -> None:
        store = JobStore(db_path) if own_store else shared  # separate connections vs per-thread ones
        start.wait()
        while (job := store.claim_next()) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=claim_all, args=(i % 2 == 0,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claimed) == len(set(claimed)) == 150 and set(claimed) == ids
    assert {job.attempts for job in shared.list(limit=1000)} == {1}


def test_first_outcome_wins_and_timings(store: JobStore) -> None:
    job = _create(store)
    store.mark_processing(job.id, now=1000.0)
    done = store.mark_succeeded(job.id, {"masks": ["a.png"]}, metrics={"inference_time": 0.5}, now=1002.5)
    assert (done.status, done.output, done.predict_time, done.metrics) == (
        JobStatus.SUCCEEDED, {"masks": ["a.png"]}, 2.5, {"inference_time": 0.5})
    assert done.to_dict()["metrics"] == {"inference_time": 0.5, "predict_time": 2.5}
    assert store.mark_failed(job.id, "too late") == done
    assert store.mark_canceled(job.id).status is JobStatus.SUCCEEDED


def test_cancel_queued_running_and_finished(store: JobStore) -> None:
    queued = _create(store)
    canceled = store.cancel(queued.id)
    assert canceled.status is JobStatus.CANCELED and canceled.completed_at is not None
    assert store.claim_next() is None
    running = _create(store)
    store.claim_next()
    flagged = store.cancel(running.id)
    assert flagged.status is JobStatus.PROCESSING and flagged.cancel_requested
    assert store.is_cancel_requested(running.id)
    assert store.cancel(canceled.id) == canceled
    with pytest.raises(JobNotFound):
        store.cancel(running.id, api_key_id="someone-else")


def test_logs_and_file_keys_accumulate(store: JobStore) -> None:
    job = _create(store)
    store.append_logs(job.id, "one\n")
    store.append_logs(job.id, "two\n")
    store.add_file_keys(job.id, ["a.png", "b.png"])
    store.add_file_keys(job.id, ["b.png", "c.png"])
    again = store.get(job.id)
    assert (again.logs, again.file_keys) == ("one\ntwo\n", ("a.png", "b.png", "c.png"))


def _interrupt(db_path: Path, *, max_attempts: int = 2) -> tuple[str, str]:
    """A queued job and a job left `processing` by a store closed mid-job (as a crash would)."""
    store = JobStore(db_path, max_attempts=max_attempts)
    queued_first = _create(store, now=1.0)
    waiting = _create(store, now=2.0)
    assert store.claim_next().id == queued_first.id
    store.close()
    return queued_first.id, waiting.id


def test_recover_retry_requeues_until_max_attempts(db_path: Path) -> None:
    running_id, waiting_id = _interrupt(db_path)
    store = JobStore(db_path)
    report = store.recover_interrupted("retry")
    assert [job.id for job in report.requeued] == [running_id] and report.failed == ()
    assert store.get(waiting_id).status is JobStatus.STARTING
    again = store.claim_next()
    assert (again.id, again.attempts) == (running_id, 2)
    store.close()  # interrupted a second time
    store = JobStore(db_path)
    report = store.recover_interrupted("retry")
    assert report.requeued == () and [job.id for job in report.failed] == [running_id]
    failed = store.get(running_id)
    assert failed.status is JobStatus.FAILED and "giving up after 2 attempt(s)" in failed.error
    assert failed.completed_at is not None
    store.close()


def test_recover_fail_marks_every_unfinished_job_with_a_reason(db_path: Path) -> None:
    running_id, waiting_id = _interrupt(db_path)
    store = JobStore(db_path)
    report = store.recover_interrupted("fail")
    assert {job.id for job in report.failed} == {running_id, waiting_id}
    assert "while this prediction was running" in store.get(running_id).error
    assert "before this prediction started" in store.get(waiting_id).error
    assert store.list(status=JobStatus.STARTING) == store.list(status=JobStatus.PROCESSING) == []
    with pytest.raises(ValueError):
        store.recover_interrupted("ignore")  # type: ignore[arg-type]
    store.close()


def test_recover_finishes_a_requested_cancel(db_path: Path) -> None:
    running_id, _ = _interrupt(db_path)
    store = JobStore(db_path)
    store.cancel(running_id)
    report = store.recover_interrupted("retry")
    assert [job.id for job in report.canceled] == [running_id]
    assert store.get(running_id).status is JobStatus.CANCELED
    store.close()


_CHILD = """
import sys, time
from pathlib import Path
from segany.server.jobs.store import JobStore
from segany.server.jobs.workers import JobRunner

def handler(job, context):
    context.log("started")
    Path(job.input["marker"]).write_text(job.id)
    time.sleep(600)

for db, marker in zip(sys.argv[1::2], sys.argv[2::2]):
    store = JobStore(db)
    store.create(kind="native", model="m", input={"marker": marker})
    JobRunner(store, handler).start()
time.sleep(600)
"""


def test_jobs_of_a_killed_process_are_rerun_or_failed(tmp_path: Path) -> None:
    """SIGKILL a process mid-job (one database per recovery policy), restart, and settle its jobs."""
    dbs = {policy: tmp_path / policy / "segany.db" for policy in ("retry", "fail")}
    markers = {policy: tmp_path / f"{policy}.running" for policy in dbs}
    argv = [str(path) for policy in dbs for path in (dbs[policy], markers[policy])]
    child = subprocess.Popen([sys.executable, "-c", _CHILD, *argv], cwd=REPO,
<<<<<<< HEAD
                             env=dict(os.environ))
=======
                             env={**os.environ, "PYTHONPATH": str(REPO / "src")})
>>>>>>> server
    try:
        deadline = time.monotonic() + 120
        while not all(m.exists() for m in markers.values()) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(m.exists() for m in markers.values()), "the child never started its jobs"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()

    for policy, db in dbs.items():
        job_id = markers[policy].read_text()
        store = JobStore(db)
        interrupted = store.get(job_id)
        assert (interrupted.status, interrupted.attempts, interrupted.logs) == (JobStatus.PROCESSING, 1, "started\n")
        runner = JobRunner(store, lambda job, context: {"attempt": job.attempts}, poll_interval_s=0.05)
        report = runner.start(recover=policy)
        try:
            final = runner.wait(job_id, timeout_s=30)
        finally:
            runner.stop()
        if policy == "retry":
            assert [job.id for job in report.requeued] == [job_id]
            assert (final.status, final.output) == (JobStatus.SUCCEEDED, {"attempt": 2})
        else:
            assert (final.status, final.output) == (JobStatus.FAILED, None)
            assert "server stopped" in final.error
        store.close()


def test_expire_deletes_old_finished_jobs_and_returns_their_files(store: JobStore) -> None:
    old = _create(store)
    store.claim_next()
    store.add_file_keys(old.id, ["m0.png", "m1.png"])
    store.mark_succeeded(old.id, ["m0.png", "m1.png"], now=1000.0)
    old_failed = _create(store)
    store.mark_failed(old_failed.id, "bad image", now=1000.0)
    recent = _create(store)
    store.mark_canceled(recent.id, now=5000.0)
    unfinished = _create(store, now=0.0)
    assert store.expire(now=1000.0 + 3599, ttl_s=3600) == []
    assert sorted(store.expire(now=1000.0 + 3601, ttl_s=3600)) == ["m0.png", "m1.png"]
    for gone in (old.id, old_failed.id):
        with pytest.raises(JobNotFound):
            store.get(gone)
    assert store.get(recent.id).status is JobStatus.CANCELED
    assert store.get(unfinished.id).status is JobStatus.STARTING


def test_purge_expired_deletes_job_files_and_old_uploads(store: JobStore, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "files")
    job = _create(store)
    mask = storage.put(b"png", ".png")
    upload = storage.put(b"jpeg", ".jpg")  # a file uploaded without a job
    keep = storage.put(b"new", ".png")
    store.add_file_keys(job.id, [mask])
    store.mark_failed(job.id, "x", now=time.time() - 2 * store.ttl_s)
    for key in (upload,):
        path = storage.path_for(key)
        os.utime(path, (time.time() - 2 * store.ttl_s,) * 2)
    assert purge_expired(store, storage) == (1, 1)
    for key in (mask, upload):
        with pytest.raises(StoredFileNotFound):
            storage.get(key)
    assert storage.get(keep) == b"new"


def test_shared_database_closes_all_thread_connections(db_path: Path) -> None:
    db = Database(db_path)
    seen = []
    thread = threading.Thread(target=lambda: seen.append(db.connection()))
    thread.start()
    thread.join()
    assert seen[0] is not db.connection()
    db.close()
    with pytest.raises(RuntimeError, match="closed"):
        db.connection()


# ---- JobRunner (webhooks are covered in test_webhooks.py) ----


@pytest.fixture()
def run_with(store: JobStore):
    runners: list[JobRunner] = []

    def start(handler, **options) -> JobRunner:
        runner = JobRunner(store, handler, poll_interval_s=0.05, **options)
        runner.start()
        runners.append(runner)
        return runner

    yield start
    for runner in runners:
        runner.stop(timeout_s=10)


def test_runner_success_with_logs_files_and_metrics(store: JobStore, run_with) -> None:
    def handler(job: Job, context: JobContext) -> list[str]:
        context.log("embedding")
        context.add_files("m0.png")
        context.metrics["inference_time"] = 0.25
        return [f"/files/m0.png?n={job.input['n']}"]

    runner = run_with(handler)
    job, _ = runner.submit(kind="native", model="m", input={"n": 3})
    done = runner.wait(job.id, timeout_s=30)
    assert (done.status, done.output, done.logs, done.file_keys, done.metrics["inference_time"]) == (
        JobStatus.SUCCEEDED, ["/files/m0.png?n=3"], "embedding\n", ("m0.png",), 0.25)
    assert done.predict_time is not None and done.attempts == 1


def test_runner_errors_become_failed_jobs(store: JobStore, run_with) -> None:
    def handler(job: Job, context: JobContext) -> None:
        if job.input["kind"] == "user":
            raise InvalidInput("coordinates: expected [x,y]", field="coordinates")
        raise RuntimeError("secret internal detail")

    runner = run_with(handler)
    user, _ = runner.submit(kind="segmind", model="m", input={"kind": "user"})
    crash, _ = runner.submit(kind="segmind", model="m", input={"kind": "crash"})
    assert runner.wait(user.id, 30).error == "coordinates: expected [x,y]"
    crashed = runner.wait(crash.id, 30)
    assert crashed.status is JobStatus.FAILED and "secret" not in crashed.error


def test_runner_cancels_a_running_job(store: JobStore, run_with) -> None:
    started = threading.Event()

    def handler(job: Job, context: JobContext) -> str:
        started.set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            context.raise_if_canceled()
            time.sleep(0.01)
        return "not canceled"

    runner = run_with(handler)
    job, _ = runner.submit(kind="replicate", model="m", input={})
    assert started.wait(30)
    assert runner.wait(job.id, timeout_s=0.1).status is JobStatus.PROCESSING  # times out, still running
    runner.cancel(job.id)
    assert runner.wait(job.id, timeout_s=30).status is JobStatus.CANCELED


def test_runner_discards_output_of_a_job_canceled_while_running(store: JobStore, run_with) -> None:
    release = threading.Event()
    started = threading.Event()

    def handler(job: Job, context: JobContext) -> str:
        started.set()
        release.wait(30)
        return "ignored"

    runner = run_with(handler)
    job, _ = runner.submit(kind="replicate", model="m", input={})
    assert started.wait(30)
    runner.cancel(job.id)
    release.set()
    done = runner.wait(job.id, 30)
    assert (done.status, done.output) == (JobStatus.CANCELED, None)


def test_runner_never_runs_a_job_canceled_while_queued(store: JobStore, run_with) -> None:
    calls: list[str] = []
    job = _create(store)
    JobRunner(store, lambda j, c: calls.append(j.id)).cancel(job.id)
    runner = run_with(lambda j, c: calls.append(j.id))
    other, _ = runner.submit(kind="replicate", model="m", input={"x": 1})
    assert runner.wait(other.id, 30).status is JobStatus.SUCCEEDED
    assert calls == [other.id] and store.get(job.id).status is JobStatus.CANCELED


def test_runner_wait_async(store: JobStore, run_with) -> None:
    import anyio

    runner = run_with(lambda job, context: job.input["n"] * 2)
    job, _ = runner.submit(kind="native", model="m", input={"n": 21})
    assert anyio.run(runner.wait_async, job.id, 30.0).output == 42


def test_runner_workers_run_in_parallel(store: JobStore, run_with) -> None:
    together = threading.Barrier(3, timeout=30)
    runner = run_with(lambda job, context: together.wait(), workers=3)
    jobs = [runner.submit(kind="native", model="m", input={"i": i})[0] for i in range(3)]
    assert {runner.wait(job.id, 30).status for job in jobs} == {JobStatus.SUCCEEDED}
