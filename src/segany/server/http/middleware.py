"""ASGI middleware in front of every route: body-size limit, API keys, request metrics, weights header.

The body is read here (up to `max_body_mb`, refused with 413 as soon as it is larger) and replayed to
the route, so an oversized or unauthenticated upload is rejected before any parsing. Errors are
rendered in the dialect of the requested path.
"""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from segany.server.http.auth import check_request
from segany.server.http.errors import ErrorInfo, SeganyError, describe
from segany.server.http.limits import read_body_limited
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


def _headers(scope: Scope) -> dict[str, str]:
    return {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope.get("headers", [])}


class GuardMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, api_keys: tuple[str, ...], metrics: ServerMetrics,
                 render_error: ErrorRenderer, weights: WeightsSource | None = None) -> None:
        self.app = app
        self.weights = weights
        self.max_body_bytes = max_body_bytes
        self.api_keys = api_keys
        self.metrics = metrics
        self.render_error = render_error

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
                if source:
                    message = {**message, "headers": [*message.get("headers", []),
                                                      (WEIGHTS_HEADER.encode(), source.encode("latin-1"))]}
            await send(message)

        try:
            await self._guarded(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.inc(route=label, status=str(status["code"]))
            self.metrics.latency.observe(time.perf_counter() - started, route=label)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        headers = _headers(scope)
        body: bytes | None = None
        try:
            if scope.get("method") in _BODY_METHODS:
                length = headers.get("content-length")
                declared = int(length) if length and length.isdigit() else None
                body = await read_body_limited(receive, self.max_body_bytes, declared)
            check_request(path, headers, scope.get("query_string", b"").decode("latin-1"), body, self.api_keys,
                          scope.get("method", "GET"))
        except SeganyError as error:
            response = self.render_error(path, describe(error))
            await response(scope, receive, send)
            return
        if body is None:
            await self.app(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect as usual

        await self.app(scope, replay, send)
