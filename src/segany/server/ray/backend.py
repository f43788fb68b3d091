"""The model replica of `segany serve --ray`: the whole server application, called through a handle.

Each replica builds the same FastAPI application as `segany serve` (`segany.server.app.create_app`), runs
its startup (model loading, job runner on the shared job store) in the constructor, so a replica counts as
up only once it can answer, and answers forwarded HTTP requests in-process (ASGI, no socket). Requests
arrive from the ingress with `multiplexed_model_id` set to the image key (`segany.server.ray.affinity`);
`@serve.multiplexed` records the keys this replica has served, which is what Ray Serve's router reads to
send the next request for that image here again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray import serve

# Image keys each replica advertises to the router (least recently used forgotten first). Past the
# embedding cache's capacity an advertised key only costs one re-embed, so this need not match it exactly.
IMAGES_PER_REPLICA = 256
_HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive"}


@dataclass(frozen=True)
class ForwardedRequest:
    """One HTTP request as the ingress received it. `headers` are (name, value) pairs in latin-1."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True)
class ReplicaAnswer:
    """The application's response, and which replica (on which node) gave it with its cache counters."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    replica: str
    node: str
    cache_hits: int
    cache_misses: int


class SeganyBackend:
    """A Ray Serve replica holding models and an embedding cache; see the module docstring."""

    async def __init__(self, settings_values: dict[str, Any]) -> None:
        import httpx
        import ray

        from segany.server.app import create_app
        from segany.server.settings import ServerSettings

        self.app = create_app(ServerSettings(**settings_values))
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()  # models load here: the replica is not RUNNING before it can answer
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
        self._client = httpx.AsyncClient(transport=transport, timeout=None)
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.node = ray.get_runtime_context().get_node_id()

    @serve.multiplexed(max_num_models_per_replica=IMAGES_PER_REPLICA)
    async def _image_slot(self, key: str) -> str:
        return key  # nothing to load: the engine embeds (and caches) on the first request itself

    async def handle(self, request: ForwardedRequest) -> ReplicaAnswer:
        key = serve.get_multiplexed_model_id()
        if key:
            await self._image_slot(key)
        headers = [(name, value) for name, value in request.headers if name.lower() not in _HOP_HEADERS]
        host = next((value for name, value in headers if name.lower() == "host"), "segany")
        url = f"http://{host}{request.path}" + (f"?{request.query}" if request.query else "")
        response = await self._client.request(request.method, url, headers=headers, content=request.body)
        cache = self.app.state.engine.cache
        return ReplicaAnswer(
            status=response.status_code,
            headers=[(name.decode("latin-1"), value.decode("latin-1")) for name, value in response.headers.raw
                     if name.decode("latin-1").lower() not in _HOP_HEADERS],
            body=response.content, replica=self.replica, node=self.node,
            cache_hits=int(cache.hits), cache_misses=int(cache.misses))

    async def __del__(self) -> None:
        await self._client.aclose()
        await self._lifespan.__aexit__(None, None, None)  # stop the job runner, release the models
