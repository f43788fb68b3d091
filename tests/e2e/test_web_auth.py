"""The page on a server with API keys: it asks for a key once and sends it as a bearer token."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from web_support import IMAGES, WebServer, web_server_running

KEY = "web-page-secret"


@pytest.fixture(scope="module")
def keyed_server(browser: Any, tiny_checkpoint: Path) -> Iterator[WebServer]:
    with web_server_running(tiny_checkpoint, api_keys=(KEY,)) as live:
        assert httpx.get(live.url + "/static/app.js", timeout=30).status_code == 200, "page files are public"
        yield live


def test_page_asks_for_a_key_and_sends_it(browser: Any, keyed_server: WebServer) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(240_000)
    try:
        page.goto(keyed_server.url + "/")
        page.wait_for_selector("#key-section:not([hidden])")  # /web/capabilities answered 401
        assert "needs an API key" in page.inner_text("#key-section")
        page.fill("#key-input", KEY)
        with page.expect_response(lambda r: r.url.endswith("/web/capabilities")) as caps:
            page.click("#key-form button")
        assert caps.value.status == 200
        assert caps.value.request.headers["authorization"] == f"Bearer {KEY}"
        with page.expect_response(lambda r: r.url.endswith("/v1/embed")) as embed:
            page.set_input_files("#file-input", str(IMAGES / "chelsea.png"))
        assert embed.value.status == 200
        page.wait_for_selector('#stage[data-state="ready"]')
        assert page.is_hidden("#key-section")
    finally:
        context.close()
