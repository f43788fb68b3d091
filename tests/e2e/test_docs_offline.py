"""`/docs` (Swagger UI) and `/redoc` in headless Chromium with every request off 127.0.0.1 refused: the API
reference must render from what this server serves itself, as on an air-gapped machine."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest

from web_support import WebServer


@pytest.fixture
def offline_page(browser: Any, web_server: WebServer) -> Iterator[tuple[Any, list[str]]]:
    """A page whose context aborts every request not addressed to 127.0.0.1; yields (page, refused URLs)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    refused: list[str] = []

    def only_loopback(route: Any) -> None:
        if urlparse(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", only_loopback)
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        yield page, refused
    finally:
        context.close()


def test_swagger_ui_lists_the_operations_offline(offline_page: tuple[Any, list[str]], web_server: WebServer) -> None:
    page, refused = offline_page
    page.goto(web_server.url + "/docs")
    page.wait_for_selector(".opblock")  # one block per operation, drawn from /openapi.json
    paths = page.eval_on_selector_all(".opblock-summary-path", "nodes => nodes.map(n => n.textContent.trim())")
    assert "/v1/segment" in paths and "/v1/embed" in paths and "/readyz" in paths, paths[:20]
    assert refused == [], f"the docs page asked the internet for {refused}"


def test_redoc_renders_the_reference_offline(offline_page: tuple[Any, list[str]], web_server: WebServer) -> None:
    page, refused = offline_page
    page.goto(web_server.url + "/redoc")
    page.wait_for_selector("[data-section-id^='operation/']", state="attached")
    sections = page.eval_on_selector_all("[data-section-id^='operation/']", "nodes => nodes.length")
    assert sections > 10
    # ReDoc's bundle links its logo from a CDN: the page's Content-Security-Policy stops that in the browser.
    assert refused == [], f"the ReDoc page asked the internet for {refused}"
