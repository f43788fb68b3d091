"""The HTTP entry of `segany serve --ray`: a thin ingress that routes each request to the right replica.

Ray Serve's proxy hands every HTTP request to this deployment (no model, no CPU reserved, on the head
node by default). It reads the request's image key (`segany.server.ray.affinity`) and forwards the request
through a `DeploymentHandle` to the model replicas with `multiplexed_model_id=key`, so requests for one
image reach the replica that holds its embedding. Every dialect passes through unchanged: the ingress
forwards method, path, query, headers and body, and returns the replica's status, headers and body.

When a replica dies under a request (killed, or its node lost), the ingress sends the request again to
another replica if that cannot do anything twice (`retry_safe`); otherwise, or when no replica answers in
time, the client gets a deliberate 503 with `Retry-After` in its dialect's error shape. No request waits
longer than `request_timeout_s` plus a little. `/metrics` adds the embedding cache counters summed over
every replica that has answered (each answer carries its replica's counters).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from segany.server.http.errors import ErrorInfo
from segany.server.ray.affinity import ImageKey, affinity_key, retry_safe
from segany.server.ray.backend import ForwardedRequest, ReplicaAnswer

log = logging.getLogger("segany.server.ray")

RETRY_AFTER_S = 2  # about the time Ray needs to notice a dead replica and route around it
RETRY_PAUSE_S = 0.5
# Replicas report the keys they hold to the router, which takes a moment, and longer on a loaded machine (over
# 2.5 s once in CI); until the router knows, a click sent right after its image's upload may go to any
# replica with few keys and get 404. Such a 404 is asked again (a read), each try another draw, over ~10 s,
# unless it came from the replica that last answered for that key: there the image was evicted, and the 404
# is final at once (the client uploads again).
UNKNOWN_ID_RETRY_S = (0.3, 0.7, 1.5, 3.0, 4.5)
HOLDERS_KEPT = 1 << 16  # image keys (and aliases) the ingress remembers a replica (digest) of, ~100 bytes each


def _retryable_errors() -> tuple[type[BaseException], ...]:
    """Errors meaning 'the replica went away', not 'the application failed' (those come back as answers)."""
    from ray import exceptions as ray_errors
    from ray.serve import exceptions as serve_errors

    return (ray_errors.RayActorError, ray_errors.NodeDiedError, ray_errors.WorkerCrashedError,
            ray_errors.ObjectLostError, serve_errors.BackPressureError, serve_errors.ReplicaUnavailableError)


class SeganyIngress:
    """Forwards HTTP requests to `backend` (a handle to `SeganyBackend`) by image key; see the module docstring."""

    def __init__(self, backend: Any, max_image_pixels: int, request_timeout_s: float, retries: int = 3) -> None:
        self.backend = backend
        self.max_image_pixels = max_image_pixels
        self.timeout_s = request_timeout_s + 10.0  # the replica's own limit answers first when it is alive
        self.retries = retries
        self.replicas: dict[str, ReplicaAnswer] = {}  # latest answer per replica (counters only are read)
        self.holders: OrderedDict[str, str] = OrderedDict()  # image key -> replica that last answered 200
        self.aliases: OrderedDict[str, str] = OrderedDict()  # client image id -> digest it was uploaded with
        self.retried = 0
        self.unavailable = 0

    async def __call__(self, request: Request) -> Response:
        body = await request.body()
        path = request.url.path
        key = self.through_aliases(await asyncio.to_thread(
            affinity_key, request.headers.get("content-type", ""), body, self.max_image_pixels))
        forwarded = ForwardedRequest(method=request.method, path=path, query=request.url.query,
                                     headers=[(k.decode("latin-1"), v.decode("latin-1"))
                                              for k, v in request.headers.raw],
                                     body=body)
        answer = await self._forward(forwarded, key)
        if isinstance(answer, Response):
            return answer
        content = answer.body
        if path == "/metrics" and request.method == "GET" and answer.status == 200:
            content = content.rstrip(b"\n") + b"\n" + self.cluster_metrics().encode()
        response = Response(content=content, status_code=answer.status)
        response.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers
                                if k.lower() != "content-length"]
        response.headers["content-length"] = str(len(content))
        response.headers["x-segany-replica"] = answer.replica
        response.headers["x-segany-node"] = answer.node
        return response

    async def _forward(self, forwarded: ForwardedRequest, key: ImageKey | None) -> ReplicaAnswer | Response:
        handle = self.backend.options(multiplexed_model_id=key.key) if key else self.backend
        deadline = time.monotonic() + self.timeout_s
        safe = retry_safe(forwarded.method, forwarded.path)
        attempt = 0
        unknown_id_pauses = list(UNKNOWN_ID_RETRY_S) if key is not None and key.by_id and safe else []
        while True:
            pending = handle.handle.remote(forwarded)
            try:
                answer = await asyncio.wait_for(_result(pending), timeout=max(0.1, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                pending.cancel()
                return self._unavailable(forwarded.path, "no replica answered in time")
            except _retryable_errors() as error:
                attempt += 1
                log.warning("replica lost under %s %s (attempt %d): %s", forwarded.method, forwarded.path, attempt,
                            type(error).__name__)
                if not safe or attempt > self.retries or time.monotonic() + RETRY_PAUSE_S >= deadline:
                    return self._unavailable(forwarded.path, "the replica serving this request went away")
                self.retried += 1
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            self.replicas[answer.replica] = answer
            if key is not None and answer.status == 200:
                self.remember_holder(key.key, answer.replica)
            if (answer.status == 404 and unknown_id_pauses and not self.miss_is_final(key.key, answer.replica)
                    and time.monotonic() + unknown_id_pauses[0] < deadline):
                await asyncio.sleep(unknown_id_pauses.pop(0))  # the router may not know where the id lives yet
                continue
            return answer

    def through_aliases(self, key: ImageKey | None) -> ImageKey | None:
        """An upload naming an alias teaches the alias's digest; a request by a known alias is keyed by it.

        Aliases are remembered per id, not per API key: two keys naming different images alike route one of
        them by the other's digest, where it gets 404 and is asked again like any unknown id.
        """
        if key is None:
            return None
        if key.alias is not None:
            _remember(self.aliases, key.alias, key.key)
        elif key.by_id and key.key in self.aliases:
            return ImageKey(self.aliases[key.key], by_id=True)
        return key

    def remember_holder(self, key: str, replica: str) -> None:
        """Note that `replica` just served image `key` (so it holds the embedding), forgetting the oldest keys."""
        _remember(self.holders, key, replica)

    def miss_is_final(self, key: str, replica: str) -> bool:
        """Whether a 404 for image id `key` from `replica` stands: that replica last served the key and has
        since evicted it. From any other replica (or for a key never served here) the router may have guessed."""
        if self.holders.get(key) != replica:
            return False
        del self.holders[key]
        return True

    def _unavailable(self, path: str, why: str) -> Response:
        from segany.server.dialects import render_error

        self.unavailable += 1
        info = ErrorInfo(503, "unavailable", f"{why}; retry in {RETRY_AFTER_S} s", None,
                         {"Retry-After": str(RETRY_AFTER_S)})
        response = render_error(path, info)
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response

    def cluster_metrics(self) -> str:
        """Prometheus lines: cache counters per replica and summed, and this ingress's retries and 503s."""
        hits = sum(a.cache_hits for a in self.replicas.values())
        misses = sum(a.cache_misses for a in self.replicas.values())
        lines = [
            "# HELP segany_cluster_embedding_cache_hits_total embedding cache hits summed over the replicas",
            "# TYPE segany_cluster_embedding_cache_hits_total counter",
            f"segany_cluster_embedding_cache_hits_total {hits}",
            "# HELP segany_cluster_embedding_cache_misses_total embedding cache misses summed over the replicas",
            "# TYPE segany_cluster_embedding_cache_misses_total counter",
            f"segany_cluster_embedding_cache_misses_total {misses}",
            "# HELP segany_replica_embedding_cache_hits_total embedding cache hits of one replica (last answer)",
            "# TYPE segany_replica_embedding_cache_hits_total counter",
        ]
        labelled = [(f'replica="{replica}",node="{answer.node}"', answer) for replica, answer in sorted(self.replicas.items())]
        lines += [f"segany_replica_embedding_cache_hits_total{{{labels}}} {answer.cache_hits}" for labels, answer in labelled]
        lines += [
            "# HELP segany_replica_embedding_cache_misses_total embedding cache misses of one replica (last answer)",
            "# TYPE segany_replica_embedding_cache_misses_total counter",
        ]
        lines += [f"segany_replica_embedding_cache_misses_total{{{labels}}} {answer.cache_misses}"
                  for labels, answer in labelled]
        lines += [
            "# HELP segany_ingress_retries_total requests sent again after their replica went away",
            "# TYPE segany_ingress_retries_total counter",
            f"segany_ingress_retries_total {self.retried}",
            "# HELP segany_ingress_unavailable_total requests answered 503 because no replica could answer",
            "# TYPE segany_ingress_unavailable_total counter",
            f"segany_ingress_unavailable_total {self.unavailable}",
        ]
        return "\n".join(lines) + "\n"


def _remember(table: OrderedDict[str, str], key: str, value: str) -> None:
    """table[key] = value as the newest entry, dropping the oldest beyond `HOLDERS_KEPT`."""
    table[key] = value
    table.move_to_end(key)
    if len(table) > HOLDERS_KEPT:
        table.popitem(last=False)


async def _result(pending: Any) -> ReplicaAnswer:
    return await pending
