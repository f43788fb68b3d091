"""Request bodies held in memory are bounded server-wide (`max_buffered_mb`): while one client's large body
is being received, another's answers 503 with Retry-After naming the limit; once it is done, the budget is
free again. A body without a valid key is refused before it takes any of the budget."""
from __future__ import annotations

import socket
import time

import httpx
import pytest

KEY = "key-budget"
HELD = 700_000  # bytes the slow client declares (and so reserves) before sending them


@pytest.fixture(scope="module")
def budgeted(start_server):
    with start_server(api_keys=(KEY,), max_buffered_mb=1.0, max_body_mb=2.0) as live:
        yield live


def _start_slow_body(url: str, key: str | None) -> socket.socket:
    """A POST that declares HELD bytes and sends only the first few (the body is still arriving)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    sock.sendall(f"POST /v1/embed HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{auth}"
                 f"Content-Length: {HELD}\r\n\r\n".encode() + b'{"image": "')
    return sock


def _post(live, size: int) -> httpx.Response:
    return httpx.post(f"{live.url}/v1/embed", content=b'{"image": "' + b"A" * size + b'"}', timeout=30,
                      headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})



def test_bodies_past_the_budget_wait_for_503_and_the_budget_comes_back(budgeted):
    slow = _start_slow_body(budgeted.url, KEY)
    try:
        time.sleep(0.3)  # the server has read the headers and reserved the declared length
        refused = _post(budgeted, 500_000)
        assert refused.status_code == 503, refused.text[:200]
        assert int(refused.headers["retry-after"]) >= 1
        assert "max_buffered_mb" in refused.text and "request bodies" in refused.text
        small = _post(budgeted, 100_000)  # what still fits in the budget is served (a 400: not an image)
        assert small.status_code == 400, small.text[:200]
        slow.sendall(b"A" * (HELD - len(b'{"image": "') - 2) + b'"}')
        answer = slow.recv(65536)
        assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
    finally:
        slow.close()
    again = _post(budgeted, 500_000)
    assert again.status_code == 400, again.text[:200]  # the slow body's bytes were given back


def test_a_keyless_body_takes_none_of_the_budget(budgeted):
    held, keyless = _start_slow_body(budgeted.url, KEY), _start_slow_body(budgeted.url, None)
    try:
        answer = keyless.recv(65536)  # answered before its body is read
        assert answer.startswith(b"HTTP/1.1 401"), answer[:100]
        # The unread rest of that body must not be taken for a next request on the same connection.
        assert b"\r\nconnection: close\r\n" in answer.lower(), answer[:300]
        time.sleep(0.3)
        served = _post(budgeted, 300_000)  # fits beside the keyed body only: the keyless one holds nothing
        assert served.status_code == 400, served.text[:200]
    finally:
        held.close()
        keyless.close()
