"""ASGI middleware in front of every route: API keys, body-size and body-time limits, JSON depth, request
metrics, the weights and nosniff headers.

The key is checked before any body byte is read (on the Roboflow body-key routes, from at most the first
64 KiB); then the body is read (up to `max_body_mb`, 413 as soon as it is larger; 408 past `body_timeout_s`;
503 while other requests hold `max_buffered_mb` of bodies), its JSON nesting bounded, and it is replayed to
the route; its bytes count against that budget until the route has answered. Errors are rendered in the
dialect of the path; one given before the body was read to its end also closes the connection.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from segany.runtime import release_free_memory
from segany.server.http.auth import check_request, wants_body_key
from segany.server.http.errors import ErrorInfo, SeganyError, describe
from segany.server.http.limits import BodyBudget, BodyReader, check_json_depth
from segany.server.http.metrics import ServerMetrics

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
ErrorRenderer = Callable[[str, ErrorInfo], Any]  # (path, info) -> starlette Response
WeightsSource = Callable[[], str | None]  # "official" | "file" | "random" of the default model; None: not loaded
WEIGHTS_HEADER = "x-segany-weights"

_BODY_METHODS = {"POST", "PUT", "PATCH"}
BODY_KEY_SCAN_BYTES = 64 * 1024  # inference_sdk puts api_key before the image, within the first few hundred bytes
NOSNIFF = (b"x-content-type-options", b"nosniff")


def _headers(scope: Scope) -> dict[str, str]:
    return {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope.get("headers", [])}


class GuardMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, api_keys: tuple[str, ...], metrics: ServerMetrics,
                 render_error: ErrorRenderer, weights: WeightsSource | None = None, body_timeout_s: float = 60.0,
                 max_buffered_bytes: int | None = None) -> None:
        self.app = app
        self.bodies = BodyBudget(max_buffered_bytes if max_buffered_bytes is not None else 8 * max_body_bytes,
                                 on_idle=self._trim_heap)
        self._trimming: asyncio.Future | None = None
        self.body_timeout_s = body_timeout_s
        self.weights = weights
        self.max_body_bytes = max_body_bytes
        self.api_keys = api_keys
        self.metrics = metrics
        self.render_error = render_error

    def _trim_heap(self) -> None:
        """After a burst of large bodies: return their freed memory to the OS, off the event loop (glibc
        keeps it otherwise, see `segany.runtime.tune_cpu_allocator`), one trim at a time."""
        if self._trimming is None or self._trimming.done():
            self._trimming = asyncio.get_running_loop().run_in_executor(None, release_free_memory)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                # Every answer says where the model's weights came from: random weights give noise masks.
                source = self.weights() if self.weights is not None else None
                extra = [] if any(name.lower() == NOSNIFF[0] for name, _ in message.get("headers", [])) else [NOSNIFF]
                if source:
                    extra.append((WEIGHTS_HEADER.encode(), source.encode("latin-1")))
                # No answer is ever content-sniffed into a script or page (stored files included).
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self._guarded(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.inc(route=label, status=str(status["code"]))
            self.metrics.latency.observe(time.perf_counter() - started, route=label)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            reader, body = await self._admit(scope, receive)
        except _Refused as refused:
            response = self.render_error(scope.get("path", ""), describe(refused.error))
            if refused.body_left:
                # Answered before its body arrived in full: on a kept-alive connection whatever of it is
                # still to come would be parsed as the start of the next request, so the client is told to
                # open a new connection for that one.
                response.headers["connection"] = "close"
            await response(scope, receive, send)
            return
        if reader is None:
            await self.app(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect as usual

        try:
            await self.app(scope, replay, send)
        finally:
            reader.release()

    async def _admit(self, scope: Scope, receive: Receive) -> tuple[BodyReader | None, bytes]:
        """Check the key and, for body methods, read the whole body under the limits and the body budget.

        Returns the reader holding the body's share of the budget (release it when the route has answered)
        and the body; (None, b"") for methods without a body. On failure (`_Refused`) the budget is
        released here.
        """
        path = scope.get("path", "")
        method = scope.get("method", "GET")
        headers = _headers(scope)
        query = scope.get("query_string", b"").decode("latin-1")
        reader: BodyReader | None = None
        try:
            if method not in _BODY_METHODS:
                check_request(path, headers, query, None, self.api_keys, method)
                return None, b""
            length = headers.get("content-length")
            declared = int(length) if length and length.isdigit() else None
            reader = BodyReader(receive, self.max_body_bytes, declared, self.body_timeout_s)  # 413 on the length
            if wants_body_key(path, headers, query, self.api_keys, method):
                # Only a bounded start of an unauthenticated body is read to find its key.
                head = await reader.read_up_to(BODY_KEY_SCAN_BYTES)
                check_request(path, headers, query, head, self.api_keys, method)
            else:
                check_request(path, headers, query, None, self.api_keys, method)  # before any body byte
            reader.charge_to(self.bodies)  # authenticated: now its bytes may take server memory
            body = await reader.read_all()
            if "json" in headers.get("content-type", "json"):  # JSON bodies (and untyped ones routes parse)
                check_json_depth(body)
        except BaseException as error:  # errors and disconnects alike give the budget back
            if reader is not None:
                reader.release()
            if isinstance(error, SeganyError):
                body_left = method in _BODY_METHODS and (reader is None or not reader.done)
                raise _Refused(error, body_left) from error
            raise
        return reader, body


class _Refused(Exception):
    """A request answered with `error` before its route; `body_left`: its body was not read to the end."""

    def __init__(self, error: SeganyError, body_left: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.body_left = body_left
