"""Fixtures of the browser tests: a real segany server with the web page (uvicorn on 127.0.0.1) and
headless Chromium driven by Playwright.

Chromium is Debian's `chromium` package (scripts/test.sh installs it); Playwright's own browser download is
never used. Without either, the browser tests skip with the reason.
"""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from web_support import CHROMIUM, CHROMIUM_ARGS, PageVisit, WebServer, web_server_running


@pytest.fixture(scope="session")
def web_server(tiny_checkpoint: Path) -> Iterator[WebServer]:
    with web_server_running(tiny_checkpoint) as live:
        yield live


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium, or a clean skip naming what is missing.

    Module scope, not session: Playwright's sync API runs an event loop on the main thread while it is
    open, and tests collected after these call `asyncio.run` there.
    """
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is not installed (pip install playwright)")
    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        except Exception as error:  # noqa: BLE001 - any launch failure means "no usable browser here"
            pytest.skip(f"Chromium did not start under Playwright: {error}")
        yield launched
        launched.close()


@pytest.fixture
def visit(browser: Any, web_server: WebServer) -> Iterator[PageVisit]:
    """A fresh page (1280x900) on the web server's `/`, recording requests and script errors."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(240_000)  # an embed of the tiny model on a busy 2-core machine takes a while
    record = PageVisit(page, [], [])
    page.on("request", lambda request: record.requests.append(request.url))
    page.on("console", lambda message: message.type == "error" and record.errors.append(message.text))
    page.on("pageerror", lambda error: record.errors.append(str(error)))
    page.goto(web_server.url + "/")
    try:
        yield record
    finally:
        context.close()
