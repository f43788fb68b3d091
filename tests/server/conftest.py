"""Real segany servers (uvicorn on 127.0.0.1, a free port, in a thread) for the server tests.

Models load through `segany.load_model` once per (variant, checkpoint) for the whole session and are
shared by the servers (a loaded model is stateless and thread-safe), so starting another server with
other settings costs no model load. Every server runs on CPU in float32 with the tiny random model.
"""
from __future__ import annotations

import base64
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from live_server import free_port, serve_in_thread
import pytest
import torch

import segany
from segany.server.app import create_app
from segany.server.engine.engine import Engine
from segany.server.settings import ServerSettings

SHARED = Path(os.environ.get("SEGANY_SHARED", Path(__file__).resolve().parents[2].parent / "shared"))
IMAGES = SHARED / "fixtures" / "images"
# Small automatic-mask-generation grids: the tiny model on 2 CPU cores decodes slowly.
FAST_AUTO = '{"points_per_side": 4, "points_per_batch": 16, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}'


@dataclass
class LiveServer:
    url: str
    settings: ServerSettings
    engine: Engine
    loads: list[str]  # variants loaded by this server's pool, in order

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=300, **kwargs)

    def metric(self, name: str) -> float:
        """Sum of every sample of a metric (all label sets) from /metrics."""
        text = httpx.get(f"{self.url}/metrics", headers=self.auth_headers(), timeout=30).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def auth_headers(self) -> dict[str, str]:
        keys = self.settings.api_keys
        return {"Authorization": f"Bearer {keys[0]}"} if keys else {}


@pytest.fixture(scope="session")
def shared_loader() -> Callable[..., Any]:
    """`segany.load_model`, memoised per (variant, checkpoint) for the session."""
    models: dict[tuple[str, str], Any] = {}
    lock = threading.Lock()

    def load(name: str, checkpoint: Any = None, device: Any = None, dtype: Any = None, encoder_runtime: Any = None) -> Any:
        key = (name, str(checkpoint))
        with lock:
            if key not in models:
                models[key] = segany.load_model(name, checkpoint=checkpoint, device="cpu", dtype=torch.float32)
            return models[key]

    return load


@contextmanager
def run_server(settings: ServerSettings, loader: Callable[..., Any]) -> Iterator[LiveServer]:
    """Serve `create_app(settings)` with uvicorn until the block exits; waits for /readyz when preloading."""
    loads: list[str] = []

    def counting_loader(name: str, **kwargs: Any) -> Any:
        loads.append(name)
        return loader(name, **kwargs)

    settings = settings.with_(host="127.0.0.1", port=free_port())
    app = create_app(settings, loader=counting_loader)
    with serve_in_thread(app, settings.port, wait_ready=settings.preload, timeout_s=120) as url:
        yield LiveServer(url, settings, app.state.engine, loads)


@pytest.fixture(scope="session")
def base_settings(tiny_checkpoint: Path, tmp_path_factory) -> ServerSettings:
    return ServerSettings(checkpoint=str(tiny_checkpoint), device="cpu", dtype="float32", auto_defaults=FAST_AUTO,
                          max_queue=64, data_dir=str(tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="session")
def server(base_settings: ServerSettings, shared_loader: Callable[..., Any]) -> Iterator[LiveServer]:
    """The shared default server: no API keys, tiny model, small AMG grids."""
    with run_server(base_settings, shared_loader) as live:
        yield live


@pytest.fixture(scope="session")
def start_server(base_settings: ServerSettings, shared_loader: Callable[..., Any]):
    """`with start_server(**setting_changes) as live:` a server with other settings."""

    def start(**changes: Any):
        return run_server(base_settings.with_(**changes), shared_loader)

    return start


@pytest.fixture(scope="session")
def image_path() -> Path:
    """The image most tests use (one embedding, then cache hits): chelsea.png, 451x300."""
    return IMAGES / "chelsea.png"


@pytest.fixture(scope="session")
def image_bytes(image_path: Path) -> bytes:
    return image_path.read_bytes()


@pytest.fixture(scope="session")
def image_b64(image_bytes: bytes) -> str:
    return base64.b64encode(image_bytes).decode("ascii")


@pytest.fixture(scope="session")
def embedded(server: LiveServer, image_b64: str) -> dict[str, Any]:
    """The test image embedded once on the shared server through /v1/embed: its response body."""
    with server.client() as client:
        response = client.post("/v1/embed", json={"image": image_b64})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="session")
def embedded_id(embedded: dict[str, Any]) -> str:
    return embedded["image_id"]
