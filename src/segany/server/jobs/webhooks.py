"""Webhook delivery: POST a job's JSON to the URL its request named, with a timeout, retries and signing.

Events are Replicate's (`start`, `output`, `logs`, `completed`); a request's `webhook_events_filter` picks a
subset, and no filter means all. Targets follow the image-URL address rules of `segany.server.http.url_fetch`
(http(s), public addresses only): checked when the job is accepted, and resolved and checked again at every
attempt, which then connects to that checked address (DNS rebinding cannot redirect it). Redirects are not
followed, so a public URL cannot bounce to a private one.

Deliveries are signed like Replicate's (Standard Webhooks): `webhook-id`, `webhook-timestamp` and
`webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` with a `whsec_<base64>` secret, so
`replicate.webhooks.validate` accepts them.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from segany.errors import InvalidInput
from segany.server.http.errors import UrlNotAllowed
from segany.server.http.url_fetch import check_public_url, is_public_address, resolve_checked

log = logging.getLogger(__name__)

WEBHOOK_EVENTS: tuple[str, ...] = ("start", "output", "logs", "completed")
_MAX_URL_CHARS = 2048
# Worth another try: timeouts, rate limits, server errors. Other 4xx mean the receiver rejects this payload.
_RETRYABLE_STATUS = frozenset({408, 425, 429}) | frozenset(range(500, 600))


def parse_events_filter(events: Iterable[str] | None, field: str = "webhook_events_filter") -> tuple[str, ...]:
    """Validate event names; returns them de-duplicated in canonical order, `()` (all events) for None."""
    if events is None:
        return ()
    if isinstance(events, (str, bytes)) or not isinstance(events, Iterable):
        raise InvalidInput(f"{field} must be a list of event names from {list(WEBHOOK_EVENTS)}", field=field)
    chosen = list(events)
    unknown = [event for event in chosen if event not in WEBHOOK_EVENTS]
    if unknown:
        raise InvalidInput(f"{field} has unknown event(s) {unknown}; use {list(WEBHOOK_EVENTS)}", field=field)
    return tuple(event for event in WEBHOOK_EVENTS if event in chosen)


def wants_event(events_filter: Iterable[str], event: str) -> bool:
    """Whether a job with this (parsed) filter gets `event`; an empty filter means every event."""
    events = tuple(events_filter)
    return not events or event in events


def validate_webhook_url(url: Any, *, allow_private: bool = False, field: str = "webhook") -> str:
    """Check a webhook target; returns it unchanged or raises `UrlNotAllowed` naming `field`.

    `allow_private=True` skips the public-address rule (for receivers on loopback in tests or on trusted
    networks); the http(s) and shape rules always apply.
    """
    if not isinstance(url, str) or not url:
        raise UrlNotAllowed(f"{field}: must be an http(s) URL", field)
    if len(url) > _MAX_URL_CHARS:
        raise UrlNotAllowed(f"{field}: longer than {_MAX_URL_CHARS} characters", field)
    if not allow_private:
        check_public_url(url, field)  # the image fetcher's rules are the one source of truth
        return url
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise UrlNotAllowed(f"{field}: malformed URL ({exc})", field) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UrlNotAllowed(f"{field}: must be an http(s) URL with a host", field)
    return url


def _allow_any_address(address: Any) -> bool:
    return True


def new_signing_secret() -> str:
    """A fresh `whsec_<base64 of 32 random bytes>` secret in the format Replicate's client validates."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def secret_for_key(secret: str, api_key_id: str | None) -> str:
    """The `whsec_` secret the webhooks of one API key are signed with: derived from the server's secret, so
    no key holder can compute (and so forge) another key's signatures. No key (auth off): the server's own."""
    if api_key_id is None:
        return secret
    derived = hmac.new(_secret_bytes(secret), b"segany-webhooks:" + api_key_id.encode(), hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(derived).decode("ascii")


def _secret_bytes(secret: str) -> bytes:
    prefix, _, encoded = secret.partition("_")
    if prefix != "whsec" or not encoded:
        raise ValueError("webhook signing secret must look like 'whsec_<base64>'")
    return base64.b64decode(encoded, validate=True)


@dataclass(frozen=True)
class DeliveryResult:
    """How one delivery ended. `interrupted`: cut short by `close()`, so worth redelivering at next start."""

    ok: bool
    attempts: int
    status_code: int | None = None
    error: str | None = None
    interrupted: bool = False


DeliveryCallback = Callable[[DeliveryResult], None]


class WebhookSender:
    """POSTs JSON payloads with retries (exponential backoff, `Retry-After` honoured up to `max_backoff_s`).

    `deliver` blocks; `send` queues on worker threads and keeps deliveries with the same `key` (a job id)
    in order, so a job's `start` never arrives after its `completed`.
    """

    def __init__(self, *, attempts: int = 4, timeout_s: float = 10.0, backoff_s: float = 1.0,
                 max_backoff_s: float = 30.0, allow_private: bool = False, signing_secret: str | None = None,
                 workers: int = 2, user_agent: str = "segany-webhooks", verify: ssl.SSLContext | bool = True) -> None:
        """`verify`: TLS verification for https targets (an `ssl.SSLContext` to trust a private CA)."""
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.allow_private = allow_private
        self._secret_text = signing_secret
        self._secret = None if signing_secret is None else _secret_bytes(signing_secret)
        self._user_agent = user_agent
        # trust_env=False: environment proxies would route around the address rules and loopback receivers.
        # No keep-alive: pooled connections are keyed by IP, and a TLS session verified for one host name
        # must not carry a request for another name that resolves to the same address.
        self._client = httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False, verify=verify,
                                    limits=httpx.Limits(max_keepalive_connections=0))
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="segany-webhook")
        self._queues: dict[str, deque[tuple[str, bytes, Future[DeliveryResult], DeliveryCallback | None,
                                            str | None]]] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()

    def secret_for(self, api_key_id: str | None) -> str | None:
        """The secret one key's webhooks are signed with (see `secret_for_key`); None when unsigned."""
        return None if self._secret_text is None else secret_for_key(self._secret_text, api_key_id)

    def _signature_headers(self, message_id: str, body: bytes, api_key_id: str | None = None) -> dict[str, str]:
        if self._secret is None:
            return {}
        secret = _secret_bytes(self.secret_for(api_key_id))  # type: ignore[arg-type]
        timestamp = str(int(time.time()))
        signed = f"{message_id}.{timestamp}.".encode() + body
        digest = hmac.new(secret, signed, hashlib.sha256).digest()
        return {"webhook-id": message_id, "webhook-timestamp": timestamp,
                "webhook-signature": "v1," + base64.b64encode(digest).decode("ascii")}

    def _delay_before(self, attempt: int, retry_after: str | None) -> float:
        delay = self.backoff_s * 2 ** (attempt - 2)
        if retry_after is not None and retry_after.strip().isdigit():
            delay = max(delay, float(retry_after))
        return min(delay, self.max_backoff_s)

    def _pinned_request(self, url: str) -> tuple[str, dict[str, str], dict[str, Any]]:
        """(URL with the checked IP as host, Host header, TLS server name): the connection goes to the very
        address that passed the rules, so a second DNS answer cannot redirect it (DNS rebinding)."""
        policy = _allow_any_address if self.allow_private else is_public_address
        scheme, host, port, address = resolve_checked(url, "webhook", policy)
        parts = urlsplit(url)
        netloc = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        extensions = {"sni_hostname": host} if scheme == "https" else {}
        return urlunsplit((scheme, netloc, parts.path, parts.query, "")), {"host": parts.netloc}, extensions

    def deliver(self, url: str, payload: Mapping[str, Any] | bytes, *, message_id: str | None = None,
                api_key_id: str | None = None) -> DeliveryResult:
        """POST `payload` (a JSON-able mapping or ready JSON bytes) to `url` until a 2xx or attempts run out."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload, separators=(",", ":")).encode()
        message_id = message_id or "msg_" + secrets.token_hex(12)  # the same id on every retry: receivers dedupe
        status_code: int | None = None
        error: str | None = None
        retry_after: str | None = None
        for attempt in range(1, self.attempts + 1):
            if attempt > 1 and self._closing.wait(self._delay_before(attempt, retry_after)):
                return DeliveryResult(False, attempt - 1, status_code, error, interrupted=True)
            try:
                pinned_url, host_header, extensions = self._pinned_request(url)
            except InvalidInput as exc:  # refused (or unresolvable) now: retrying the same answer cannot help
                return DeliveryResult(False, attempt - 1, None, str(exc))
            headers = {"content-type": "application/json", "user-agent": self._user_agent, **host_header,
                       **self._signature_headers(message_id, body, api_key_id)}
            try:
                response = self._client.post(pinned_url, content=body, headers=headers, extensions=extensions)
            except httpx.HTTPError as exc:
                status_code, error, retry_after = None, f"{type(exc).__name__}: {exc}", None
            else:
                status_code = response.status_code
                if 200 <= status_code < 300:
                    return DeliveryResult(True, attempt, status_code)
                error, retry_after = f"HTTP {status_code}", response.headers.get("retry-after")
                if status_code not in _RETRYABLE_STATUS:
                    return DeliveryResult(False, attempt, status_code, error)
            log.info("webhook attempt %d/%d to %s failed: %s", attempt, self.attempts, urlsplit(url).hostname, error)
        return DeliveryResult(False, self.attempts, status_code, error)

    def send(self, url: str, payload: Mapping[str, Any], *, key: str | None = None,
             on_done: DeliveryCallback | None = None, api_key_id: str | None = None) -> Future[DeliveryResult]:
        """Queue a delivery; same-`key` deliveries run one after another in submission order.

        The payload is serialised now, so later changes to the job do not leak into this event.
        """
        body = json.dumps(payload, separators=(",", ":")).encode()
        future: Future[DeliveryResult] = Future()
        key = key or secrets.token_hex(8)
        with self._lock:
            if self._closing.is_set():
                raise RuntimeError("webhook sender is closed")
            queue = self._queues.get(key)
            if queue is not None:  # a drain for this key is running and will pick this up
                queue.append((url, body, future, on_done, api_key_id))
                return future
            self._queues[key] = deque([(url, body, future, on_done, api_key_id)])
        self._executor.submit(self._drain, key)
        return future

    def _drain(self, key: str) -> None:
        while True:
            with self._lock:
                queue = self._queues[key]
                if not queue:
                    del self._queues[key]
                    return
                url, body, future, on_done, owner = queue.popleft()
            try:
                result = self.deliver(url, body, api_key_id=owner)
            except Exception as exc:  # never let one bad delivery stall the key's queue
                log.exception("webhook delivery crashed")
                result = DeliveryResult(False, 0, None, f"{type(exc).__name__}: {exc}")
            if on_done is not None:
                try:
                    on_done(result)
                except Exception:
                    log.exception("webhook completion callback failed")
            future.set_result(result)

    def close(self, *, wait: bool = True) -> None:
        """Stop retrying (pending retries end as `interrupted`) and, with `wait`, let queued deliveries finish."""
        with self._lock:
            self._closing.set()
        self._executor.shutdown(wait=wait)
        self._client.close()
