"""Webhook delivery to a real HTTP receiver on 127.0.0.1: retries, timeouts, signing, address rules, events."""
from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from segany.errors import InvalidInput
from segany.server.http.errors import UrlNotAllowed
from segany.server.jobs.store import Job, JobStatus, JobStore
from segany.server.jobs.workers import JobContext, JobRunner
from segany.server.jobs.webhooks import (
    WebhookSender,
    new_signing_secret,
    parse_events_filter,
    validate_webhook_url,
    wants_event,
)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self):
        return json.loads(self.body)


@dataclass
class Receiver:
    """An HTTP server that records POSTs and answers from a plan of (status, headers, delay_s), then 200."""

    plan: deque = field(default_factory=deque)
    requests: list[Received] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)
    url: str = ""

    def expect(self, count: int, timeout_s: float = 30.0) -> list[Received]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.requests) >= count, timeout_s), self.requests
            return list(self.requests)


@contextmanager
def serving(tls: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    """A `Receiver` on 127.0.0.1 (HTTPS with `tls`); its `url` carries a query to check it is kept."""
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            status, headers, delay_s = state.plan.popleft() if state.plan else (200, {}, 0.0)
            time.sleep(delay_s)
            with state.arrived:
                state.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                state.arrived.notify_all()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}/hook?token=abc"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    with serving() as state:
        yield state


@pytest.fixture()
def sender() -> Iterator[WebhookSender]:
    sender = WebhookSender(allow_private=True, attempts=3, backoff_s=0.05, timeout_s=5.0)
    yield sender
    sender.close()


def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def test_delivers_json_to_the_exact_url(sender: WebhookSender, receiver: Receiver) -> None:
    payload = {"id": "abc", "status": "succeeded", "output": ["http://x/files/m0.png"]}
    result = sender.deliver(receiver.url, payload)
    assert (result.ok, result.attempts, result.status_code) == (True, 1, 200)
    [request] = receiver.expect(1)
    assert request.json == payload and request.path == "/hook?token=abc"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["host"] == receiver.url.split("/")[2]


def test_retries_after_a_failed_attempt_with_the_same_message_id(receiver: Receiver) -> None:
    receiver.plan.extend([(503, {}, 0.0), (429, {"Retry-After": "0"}, 0.0)])
    sender = WebhookSender(allow_private=True, attempts=3, backoff_s=0.05, signing_secret=new_signing_secret())
    try:
        result = sender.deliver(receiver.url, {"n": 1})
    finally:
        sender.close()
    assert (result.ok, result.attempts) == (True, 3)
    requests = receiver.expect(3)
    assert len({request.headers["webhook-id"] for request in requests}) == 1
    assert all(request.json == {"n": 1} for request in requests)


def test_gives_up_after_the_last_attempt(sender: WebhookSender, receiver: Receiver) -> None:
    receiver.plan.extend([(500, {}, 0.0)] * 3)
    result = sender.deliver(receiver.url, {"n": 1})
    assert (result.ok, result.attempts, result.status_code, result.error) == (False, 3, 500, "HTTP 500")
    assert len(receiver.expect(3)) == 3


def test_unreachable_target_is_retried_then_reported(sender: WebhookSender) -> None:
    result = sender.deliver(_closed_port_url(), {"n": 1})
    assert (result.ok, result.attempts, result.status_code) == (False, 3, None)
    assert "ConnectError" in result.error


def test_slow_receiver_times_out_and_is_retried(receiver: Receiver) -> None:
    receiver.plan.append((200, {}, 1.5))
    sender = WebhookSender(allow_private=True, attempts=2, backoff_s=0.05, timeout_s=0.3)
    try:
        started = time.monotonic()
        result = sender.deliver(receiver.url, {"n": 1})
        elapsed = time.monotonic() - started
    finally:
        sender.close()
    assert (result.ok, result.attempts) == (True, 2)
    assert elapsed < 1.5  # the first attempt was abandoned at the timeout, not waited out


@pytest.mark.parametrize("status, headers", [(400, {}), (404, {}), (302, {"Location": "/elsewhere"})])
def test_client_errors_and_redirects_are_final(sender: WebhookSender, receiver: Receiver, status, headers) -> None:
    receiver.plan.append((status, headers, 0.0))
    result = sender.deliver(receiver.url, {"n": 1})
    assert (result.ok, result.attempts, result.status_code) == (False, 1, status)
    time.sleep(0.2)
    assert len(receiver.requests) == 1  # neither retried nor redirected


def test_signature_validates_with_the_replicate_client(receiver: Receiver) -> None:
    from replicate.webhook import InvalidSignatureError, Webhooks, WebhookSigningSecret

    secret = new_signing_secret()
    sender = WebhookSender(allow_private=True, signing_secret=secret)
    try:
        assert sender.deliver(receiver.url, {"id": "p1", "status": "succeeded"}).ok
    finally:
        sender.close()
    [request] = receiver.expect(1)
    body = request.body.decode()
    Webhooks.validate(headers=request.headers, body=body, secret=WebhookSigningSecret(key=secret), tolerance=300)
    with pytest.raises(InvalidSignatureError):
        Webhooks.validate(headers=request.headers, body=body.replace("p1", "p2"),
                          secret=WebhookSigningSecret(key=secret))
    with pytest.raises(ValueError):
        WebhookSender(signing_secret="not-a-secret")


def _self_signed(tmp_path: Path, host_name: str) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = tmp_path / f"{host_name}.crt", tmp_path / f"{host_name}.key"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(key),
                    "-out", str(cert), "-subj", f"/CN={host_name}", "-addext", f"subjectAltName=DNS:{host_name}"],
                   check=True, capture_output=True)
    return cert, key


@pytest.mark.parametrize("cert_name, delivered", [("localhost", True), ("other.example", False)])
def test_https_connects_to_the_checked_address_and_verifies_the_host_name(
        tmp_path: Path, cert_name: str, delivered: bool) -> None:
    if socket.getaddrinfo("localhost", 443, type=socket.SOCK_STREAM)[0][4][0] != "127.0.0.1":
        pytest.skip("localhost does not resolve to 127.0.0.1 first here")
    cert, key = _self_signed(tmp_path, cert_name)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    with serving(server_tls) as receiver:
        url = receiver.url.replace("127.0.0.1", "localhost")
        sender = WebhookSender(allow_private=True, attempts=1, verify=ssl.create_default_context(cafile=str(cert)))
        try:
            result = sender.deliver(url, {"n": 1})
        finally:
            sender.close()
        assert result.ok is delivered
        if delivered:
            [request] = receiver.expect(1)
            assert request.headers["host"] == url.split("/")[2] and request.json == {"n": 1}
        else:
            assert "CERTIFICATE_VERIFY_FAILED" in result.error


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8000/hook", "http://localhost/hook", "http://10.1.2.3/hook", "http://192.168.0.10/",
    "http://169.254.169.254/latest/meta-data", "http://[::1]/hook", "http://0.0.0.0/",
])
def test_private_targets_are_refused_by_default(url: str) -> None:
    with pytest.raises(UrlNotAllowed) as caught:
        validate_webhook_url(url)
    assert caught.value.field == "webhook"
    assert validate_webhook_url(url, allow_private=True) == url


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "http://", "not a url", "", None,
                                 "http://host:99999/", "http://x/" + "a" * 3000])
def test_malformed_targets_are_refused_even_when_private_is_allowed(url) -> None:
    for allow_private in (False, True):
        with pytest.raises(UrlNotAllowed) as caught:
            validate_webhook_url(url, allow_private=allow_private, field="webhook_url")
        assert caught.value.field == "webhook_url"


def test_default_sender_does_not_reach_a_private_receiver(receiver: Receiver) -> None:
    sender = WebhookSender(attempts=3, backoff_s=0.05)
    try:
        result = sender.deliver(receiver.url, {"n": 1})
    finally:
        sender.close()
    assert (result.ok, result.attempts) == (False, 0) and "non-public" in result.error
    time.sleep(0.2)
    assert receiver.requests == []


def test_events_filter_parsing() -> None:
    assert parse_events_filter(None) == ()
    assert parse_events_filter(["completed", "start", "start"]) == ("start", "completed")
    for bad in (["done"], "completed", 5):
        with pytest.raises(InvalidInput) as caught:
            parse_events_filter(bad)
        assert caught.value.field == "webhook_events_filter"
    assert wants_event((), "logs") and wants_event(("logs",), "logs") and not wants_event(("start",), "logs")


def test_send_keeps_order_per_key(receiver: Receiver) -> None:
    receiver.plan.append((200, {}, 0.3))  # the first delivery is slow; later ones must still wait for it
    sender = WebhookSender(allow_private=True, workers=4)
    try:
        futures = [sender.send(receiver.url, {"seq": i}, key="job-1") for i in range(4)]
        assert all(future.result(30).ok for future in futures)
    finally:
        sender.close()
    assert [request.json["seq"] for request in receiver.expect(4)] == [0, 1, 2, 3]


def test_close_interrupts_pending_retries(receiver: Receiver) -> None:
    receiver.plan.extend([(503, {}, 0.0)] * 5)
    sender = WebhookSender(allow_private=True, attempts=5, backoff_s=30.0)
    future = sender.send(receiver.url, {"n": 1})
    receiver.expect(1)
    started = time.monotonic()
    sender.close()
    result = future.result(5)
    assert result.interrupted and not result.ok and time.monotonic() - started < 5


# ---- through the JobRunner ----


def _payload(job: Job) -> dict:
    return {"id": job.id, "status": job.status.value, "output": job.output, "logs": job.logs}


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[JobStore]:
    store = JobStore(tmp_path / "segany.db")
    yield store
    store.close()


def _run_one(store: JobStore, receiver: Receiver, events, handler=lambda job, context: ["m0.png"]) -> Job:
    sender = WebhookSender(allow_private=True, backoff_s=0.05)
    runner = JobRunner(store, handler, webhooks=sender, payload_for=_payload, poll_interval_s=0.05)
    runner.start()
    try:
        job, _ = runner.submit(kind="replicate", model="m", input={}, webhook=receiver.url,
                               webhook_events=parse_events_filter(events))
        done = runner.wait(job.id, 30)
    finally:
        runner.stop()
        sender.close(wait=True)
    return done


@pytest.mark.parametrize("events, statuses", [
    (None, ["processing", "succeeded"]),
    (["start", "completed"], ["processing", "succeeded"]),
    (["completed"], ["succeeded"]),
    (["start"], ["processing"]),
    (["output"], ["succeeded"]),
    (["logs"], []),
])
def test_runner_sends_the_events_asked_for(store: JobStore, receiver: Receiver, events, statuses) -> None:
    done = _run_one(store, receiver, events)
    time.sleep(0.2)
    assert [request.json["status"] for request in receiver.requests] == statuses
    if statuses and statuses[-1] == "succeeded":
        assert receiver.requests[-1].json == _payload(done)
    assert store.get(done.id).webhook_done


def test_runner_failure_is_a_completed_event_but_not_an_output(store: JobStore, receiver: Receiver) -> None:
    def fail(job: Job, context: JobContext) -> None:
        raise InvalidInput("image: cannot decode", field="image")

    _run_one(store, receiver, ["output"], fail)
    _run_one(store, receiver, ["completed"], fail)
    time.sleep(0.2)
    assert [(r.json["status"], r.json["output"]) for r in receiver.requests] == [("failed", None)]


def test_logs_events_are_throttled(store: JobStore, receiver: Receiver) -> None:
    def chatty(job: Job, context: JobContext) -> str:
        for step in range(5):
            context.log(f"step {step}")
        return "done"

    _run_one(store, receiver, ["logs", "completed"], chatty)
    time.sleep(0.2)
    assert [r.json["logs"] for r in receiver.requests] == ["step 0\n", "".join(f"step {i}\n" for i in range(5))]


def test_completion_webhooks_survive_a_restart(store: JobStore, receiver: Receiver) -> None:
    # Finished before the crash, webhook never delivered: sent at the next start.
    finished, _ = store.create(kind="replicate", model="m", input={"a": 1}, webhook=receiver.url)
    store.mark_processing(finished.id)
    store.mark_succeeded(finished.id, ["m0.png"])
    # Running at the crash, and the restart policy fails it: its completion is sent too.
    interrupted, _ = store.create(kind="replicate", model="m", input={"a": 2}, webhook=receiver.url)
    store.mark_processing(interrupted.id)
    sender = WebhookSender(allow_private=True, backoff_s=0.05)
    runner = JobRunner(store, lambda job, context: None, webhooks=sender, payload_for=_payload)
    runner.start(recover="fail")
    try:
        requests = receiver.expect(2)
    finally:
        runner.stop()
        sender.close()
    assert sorted((r.json["id"], r.json["status"]) for r in requests) == sorted(
        [(finished.id, "succeeded"), (interrupted.id, "failed")])
    assert store.get(finished.id).webhook_done and store.get(interrupted.id).webhook_done
    assert store.pending_completion_webhooks() == []


def test_cancel_of_a_queued_job_sends_its_completion(store: JobStore, receiver: Receiver) -> None:
    sender = WebhookSender(allow_private=True)
    runner = JobRunner(store, lambda job, context: None, webhooks=sender, payload_for=_payload)
    job, _ = runner.submit(kind="replicate", model="m", input={}, webhook=receiver.url)
    assert runner.cancel(job.id).status is JobStatus.CANCELED
    try:
        [request] = receiver.expect(1)
    finally:
        sender.close()
    assert request.json["status"] == "canceled"
    runner.cancel(job.id)  # already finished: nothing more is sent
    time.sleep(0.2)
    assert len(receiver.requests) == 1


def test_each_api_key_signs_with_its_own_secret(receiver: Receiver) -> None:
    from replicate.webhook import InvalidSignatureError, Webhooks, WebhookSigningSecret

    from segany.server.jobs.webhooks import secret_for_key

    secret = new_signing_secret()
    alice, bob = secret_for_key(secret, "key_alice"), secret_for_key(secret, "key_bob")
    assert len({secret, alice, bob}) == 3 and secret_for_key(secret, None) == secret
    sender = WebhookSender(allow_private=True, signing_secret=secret)
    try:
        assert sender.send(receiver.url, {"id": "p1"}, api_key_id="key_alice").result(30).ok
    finally:
        sender.close()
    [request] = receiver.expect(1)
    body = request.body.decode()
    Webhooks.validate(headers=request.headers, body=body, secret=WebhookSigningSecret(key=alice), tolerance=300)
    with pytest.raises(InvalidSignatureError):  # Bob's secret (all Bob can learn) cannot vouch for Alice's hooks
        Webhooks.validate(headers=request.headers, body=body, secret=WebhookSigningSecret(key=bob), tolerance=300)
