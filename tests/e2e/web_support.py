"""Shared pieces of the browser tests: paths, Chromium flags and a real segany server with the web page.

Imported by name (`import web_support`): pytest puts this folder on sys.path for its test modules.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from live_server import free_port, serve_in_thread

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


@contextmanager
def web_server_running(checkpoint: Path, **settings_changes: Any) -> Iterator[WebServer]:
    """Serve `create_app(...)` (page included) with uvicorn in a thread until the block exits."""
    from segany.server.app import create_app
    from segany.server.settings import ServerSettings

    fields = {"checkpoint": str(checkpoint), "device": "cpu", "dtype": "float32", "auto_defaults": FAST_AUTO,
              "host": "127.0.0.1", "port": free_port(), **settings_changes}
    settings = ServerSettings(**fields)
    app = create_app(settings)
    with serve_in_thread(app, settings.port) as url:
        yield WebServer(url, app)


@dataclass
class PageVisit:
    page: Any
    requests: list[str]  # every URL the page asked for
    errors: list[str]  # console errors and uncaught exceptions
