"""The web page shows a banner while the server's weights are random, and none with real ones."""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from segany.model.weights import mark_random_checkpoint
from web_support import IMAGES, WebServer, web_server_running


@pytest.fixture(scope="module")
def random_web_server(tiny_checkpoint: Path, tmp_path_factory) -> Iterator[WebServer]:
    path = tmp_path_factory.mktemp("random") / "random.pt"
    shutil.copyfile(tiny_checkpoint, path)
    mark_random_checkpoint(path)
    with web_server_running(path) as live:
        yield live


def _banner_after_an_embed(browser: Any, server: WebServer) -> bool:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        page.set_default_timeout(240_000)
        page.goto(server.url + "/")
        with page.expect_response(lambda r: r.url.endswith("/v1/embed")) as embed:
            page.set_input_files("#file-input", str(IMAGES / "chelsea.png"))
        assert embed.value.status == 200
        page.wait_for_selector('#stage[data-state="ready"]')
        return page.is_visible("#weights-banner")
    finally:
        context.close()


def test_random_weights_show_the_banner(browser: Any, random_web_server: WebServer) -> None:
    assert _banner_after_an_embed(browser, random_web_server)


def test_file_weights_show_no_banner(browser: Any, web_server: WebServer) -> None:
    assert not _banner_after_an_embed(browser, web_server)
