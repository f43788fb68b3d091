"""Image URL fetching: only http(s) to public addresses, with size, time and redirect limits."""
from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from segany.server.http.errors import FetchFailed, UrlNotAllowed
from segany.server.http.url_fetch import check_public_url, fetch_url_bytes, is_public_address

LOOPBACK_ONLY = ipaddress.ip_address("127.0.0.1")


def _loopback_policy(address) -> bool:
    """Test policy: the local test server (127.0.0.1) is allowed, nothing else."""
    return address == LOOPBACK_ONLY


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x.png", "http://localhost:8000/x.png", "http://10.1.2.3/", "http://172.16.0.1/",
        "http://192.168.1.1/", "http://169.254.169.254/latest/meta-data", "http://[::1]/", "http://[fe80::1]/",
        "http://0.0.0.0/", "http://100.64.0.1/", "http://[::ffff:127.0.0.1]/", "http://224.0.0.1/",
        "http://[fc00::1]/", "file:///etc/passwd", "ftp://8.8.8.8/x", "gopher://8.8.8.8/", "http://user:pw@8.8.8.8/",
        "http:///nohost", "http://[::1", "not a url",
    ],
)
def test_non_public_urls_are_refused(url):
    with pytest.raises(UrlNotAllowed) as caught:
        check_public_url(url, field="image")
    assert caught.value.field == "image"


@pytest.mark.parametrize("url", ["http://8.8.8.8/x.png", "https://1.1.1.1/a/b?c=d", "http://[2606:4700::1111]/"])
def test_public_addresses_pass(url):
    check_public_url(url)  # IP literals resolve without DNS


def test_address_classification():
    assert is_public_address(ipaddress.ip_address("8.8.8.8"))
    assert not is_public_address(ipaddress.ip_address("::ffff:10.0.0.1"))
    assert not is_public_address(ipaddress.ip_address("198.18.0.1"))  # benchmarking range


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/ok":
            self._send(200, b"x" * 1000)
        elif self.path == "/big":
            self._send(200, b"x" * 50_000)
        elif self.path == "/big-no-length":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"x" * 50_000)
        elif self.path == "/missing":
            self._send(404, b"no")
        elif self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.05)
        elif self.path.startswith("/redirect-to/"):
            self.send_response(302)
            self.send_header("Location", self.path.removeprefix("/redirect-to/"))
            self.end_headers()
        elif self.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def local_http() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _fetch(url: str, **kwargs):
    options = {"max_bytes": 10_000, "timeout_s": 2.0, "policy": _loopback_policy, **kwargs}
    return fetch_url_bytes(url, **options)


def test_fetch_within_limits(local_http):
    assert _fetch(f"{local_http}/ok") == b"x" * 1000
    assert _fetch(f"{local_http}/redirect-to//ok") == b"x" * 1000  # relative redirect, re-checked


def test_fetch_limits(local_http):
    with pytest.raises(FetchFailed, match="limit"):
        _fetch(f"{local_http}/big")  # refused from Content-Length
    with pytest.raises(FetchFailed, match="limit"):
        _fetch(f"{local_http}/big-no-length")  # refused while streaming
    with pytest.raises(FetchFailed, match="404"):
        _fetch(f"{local_http}/missing")
    started = time.monotonic()
    with pytest.raises(FetchFailed):
        _fetch(f"{local_http}/slow", timeout_s=0.5)
    assert time.monotonic() - started < 2.0
    with pytest.raises(FetchFailed, match="redirects"):
        _fetch(f"{local_http}/loop")


def test_redirects_are_checked_again(local_http):
    port = local_http.rsplit(":", 1)[1]
    with pytest.raises(UrlNotAllowed):
        _fetch(f"{local_http}/redirect-to/http://127.0.0.2:{port}/ok")
    with pytest.raises(UrlNotAllowed):  # the default policy refuses the loopback server itself
        fetch_url_bytes(f"{local_http}/ok", max_bytes=10_000, timeout_s=2.0)


def test_server_fetch_is_off_by_default_and_guarded_when_on(server, start_server, local_http):
    with server.client() as client:
        off = client.post("/v1/embed", json={"image": f"{local_http}/ok"})
    assert off.status_code == 403 and "turned off" in off.json()["error"]["message"]
    with start_server(allow_url_fetch=True, preload=False) as live:
        with live.client() as client:
            on = client.post("/v1/embed", json={"image": f"{local_http}/ok"})
            hf = client.post("/", json={"inputs": f"{local_http}/ok"})
    assert on.status_code == 403 and "non-public" in on.json()["error"]["message"]
    assert hf.status_code == 403 and "non-public" in hf.json()["error"]
