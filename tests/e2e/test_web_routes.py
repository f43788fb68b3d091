"""The page's routes over real HTTP: static files with the right types, nothing outside the folder, nothing
fetched from another host, and `/web/capabilities`."""
from __future__ import annotations

import json
import re

import httpx
import pytest

from segany.server.http.webpage import STATIC_DIR, text_capability
from web_support import FAST_AUTO, WebServer

MODULE_IMPORT = re.compile(r"""^import\s[^"']*["']\./([\w-]+\.js)["'];""", re.MULTILINE)


def test_index_is_html_that_loads_local_files(web_server: WebServer) -> None:
    response = httpx.get(web_server.url + "/", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/app.js">' in response.text
    assert '<link rel="stylesheet" href="/static/style.css">' in response.text
    assert "default-src 'self'" in response.headers["content-security-policy"]  # the browser enforces offline


@pytest.mark.parametrize("name", sorted(p.name for p in STATIC_DIR.iterdir() if p.is_file()))
def test_every_static_file_is_served_with_its_type_and_no_remote_url(web_server: WebServer, name: str) -> None:
    response = httpx.get(f"{web_server.url}/static/{name}", timeout=30)
    assert response.status_code == 200
    assert response.content == (STATIC_DIR / name).read_bytes()
    expected = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}[(STATIC_DIR / name).suffix]
    assert response.headers["content-type"].startswith(expected)  # browsers refuse modules served otherwise
    assert response.headers["x-content-type-options"] == "nosniff"
    assert not re.search(r"https?://", response.text), "the page must work offline: no remote URL"
    for imported in MODULE_IMPORT.findall(response.text):
        assert (STATIC_DIR / imported).is_file(), f"{name} imports a missing module {imported}"


@pytest.mark.parametrize("path", ["/static/", "/static/missing.js", "/static/%2e%2e/webpage.py",
                                  "/static/..%2fwebpage.py", "/static/%2e%2e/__init__.py"])
def test_nothing_outside_the_static_folder_is_served(web_server: WebServer, path: str) -> None:
    response = httpx.get(web_server.url + path, timeout=30)
    assert response.status_code == 404
    assert "def " not in response.text


def test_capabilities_describe_text_and_automatic_defaults(web_server: WebServer) -> None:
    response = httpx.get(web_server.url + "/web/capabilities", timeout=30)
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "sam2.1_hiera_tiny"
    assert body["text"] == text_capability()
    if not body["text"]["available"]:
        assert "text" in body["text"]["reason"]
    assert body["auto_defaults"] == json.loads(FAST_AUTO)
    assert body["limits"]["max_points_per_side"] == 128


def test_page_routes_stay_out_of_the_api_description(web_server: WebServer) -> None:
    paths = httpx.get(web_server.url + "/openapi.json", timeout=30).json()["paths"]
    assert "/web/capabilities" not in paths and not any(p.startswith("/static") for p in paths)
    assert "get" not in paths.get("/", {})
