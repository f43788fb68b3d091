"""Shared pieces of the browser tests: paths, Chromium flags and a real segany server with the web page.

Imported by name (`import web_support`): pytest puts this folder on sys.path for its test modules.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SEGANY_SHARED", REPO.parent / "shared"))
IMAGES = SHARED / "fixtures" / "images"
ARTIFACTS = REPO / ".artifacts"
CHROMIUM = os.environ.get("SEGANY_CHROMIUM", "/usr/bin/chromium")
# Offline, deterministic headless Chromium: no sandbox (containers), no background traffic to Google.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# "Segment everything" stays quick with the tiny model on a shared CPU; the page's fields override it.
FAST_AUTO = '{"points_per_side": 4, "points_per_batch": 16, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}'


@dataclass
class WebServer:
    url: str
    app: Any


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_web_server(checkpoint: Path, **settings_changes: Any) -> tuple[WebServer, Any, threading.Thread]:
    """Serve `create_app(...)` plus the page router with uvicorn in a thread; returns once /readyz is 200."""
    import uvicorn

    from segany.server import webpage
    from segany.server.app import create_app
    from segany.server.settings import ServerSettings

    fields = {"checkpoint": str(checkpoint), "device": "cpu", "dtype": "float32", "auto_defaults": FAST_AUTO,
              "host": "127.0.0.1", "port": _free_port(), **settings_changes}
    settings = ServerSettings(**fields)
    app = create_app(settings)
    if not any(getattr(route, "path", None) == "/web/capabilities" for route in app.routes):
        app.include_router(webpage.router)  # until app.py lists the page router itself
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.port}"
    deadline = time.monotonic() + 300
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the web test server did not start")
        time.sleep(0.02)
    while httpx.get(f"{url}/readyz", timeout=30).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("the web test server's model did not load")
        time.sleep(0.1)
    return WebServer(url, app), server, thread


@dataclass
class PageVisit:
    page: Any
    requests: list[str]  # every URL the page asked for
    errors: list[str]  # console errors and uncaught exceptions
