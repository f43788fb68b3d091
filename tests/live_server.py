"""Serving an app for real on 127.0.0.1 in a test: uvicorn in a daemon thread, torn down on exit."""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve_in_thread(app: Any, port: int, *, wait_ready: bool = True, timeout_s: float = 300.0,
                    ssl_certfile: str | None = None, ssl_keyfile: str | None = None,
                    verify: Any = True) -> Iterator[str]:
    """Run `app` on 127.0.0.1:`port`; yields the base URL once uvicorn has started and, when
    `wait_ready`, `/readyz` answers 200 (the default model has loaded)."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                            ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"{'https' if ssl_certfile else 'http'}://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    try:
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        while wait_ready and httpx.get(f"{url}/readyz", verify=verify, timeout=30).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the test server's model did not load")
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
