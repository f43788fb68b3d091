"""Test support for the job-backed dialects (Replicate, Cog, Segmind): real servers and a webhook receiver.

`shared_server(...)` serves `create_app(settings)` (its job service included) with uvicorn on 127.0.0.1 over
HTTPS (a throwaway self-signed certificate for 127.0.0.1: the `replicate` client turns only https: URLs
into readable file outputs). One server per configuration is shared by every test module of the session,
so the tiny model is embedded once per image; it stops when the pytest session ends.
"""
from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from live_server import free_port, serve_in_thread

from segany.server.app import create_app
from segany.server.settings import ServerSettings

KEYS = ("key-alice", "key-bob")
# Small automatic-mask-generation runs of the seed model: 4 grid points, 3 masks each, nothing filtered.
TINY_SEED_INPUT: dict[str, Any] = {
    "points_per_side": 2, "points_per_batch": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
    "crop_n_layers": 0, "box_nms_thresh": 1.0, "min_mask_region_area": 0, "mask_2_mask": False,
    "multimask_output": True,
}


@dataclass
class JobServer:
    url: str
    app: Any
    tls: ssl.SSLContext
    cert: Path  # the server's self-signed certificate (for clients that read SSL_CERT_FILE)
    data_dir: Path

    def client(self, key: str | None = KEYS[0], **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, verify=self.tls, timeout=300, headers=headers, **kwargs)

    @property
    def services(self) -> Any:
        return self.app.state.context.jobs


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """(certificate, key) for IP 127.0.0.1, made with the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the job dialect tests need the openssl command for a test certificate")
    cert, key = folder / "server.crt", folder / "server.key"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(key),
                    "-out", str(cert), "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


@contextmanager
def serve(settings: ServerSettings, loader: Callable[..., Any]) -> Iterator[JobServer]:
    """A server over TLS in a thread until the block exits."""
    folder = Path(tempfile.mkdtemp(prefix="segany-tls-"))
    cert, key = self_signed_certificate(folder)
    tls = ssl.create_default_context(cafile=str(cert))
    settings = settings.with_(host="127.0.0.1", port=free_port())
    app = create_app(settings, loader=loader)
    try:
        with serve_in_thread(app, settings.port, timeout_s=180, ssl_certfile=str(cert), ssl_keyfile=str(key),
                             verify=tls) as url:
            yield JobServer(url, app, tls, cert, Path(settings.data_dir or ""))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


_SHARED: dict[str, JobServer] = {}
_SHARED_LOCK = threading.Lock()


def shared_server(request: Any, settings: ServerSettings, loader: Callable[..., Any], **job_options: Any) -> JobServer:
    """The session's server for these settings (API keys `KEYS`, loopback webhooks allowed), started once;
    `request` is a pytest fixture request (the server stops when its session ends)."""
    with _SHARED_LOCK:
        name = json.dumps(job_options, sort_keys=True)
        if name not in _SHARED:
            data_dir = tempfile.mkdtemp(prefix="segany-jobs-")
            options = {"webhook_allow_private": True, "webhook_backoff_s": 0.05, "expire_every_s": 3600.0,
                       **job_options}
            context = serve(settings.with_(api_keys=KEYS, data_dir=data_dir, **options), loader)
            _SHARED[name] = context.__enter__()

            def stop() -> None:
                context.__exit__(None, None, None)
                shutil.rmtree(data_dir, ignore_errors=True)

            request.config.add_cleanup(stop)
        return _SHARED[name]


# ---- webhook receiver ------------------------------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Records every POST it gets (and answers 200)."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout_s: float = 120.0) -> list[Received]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: predicate(self.requests), timeout_s), self.requests
            return list(self.requests)


@contextmanager
def receiving() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            with state.arrived:
                state.requests.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
                state.arrived.notify_all()
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
