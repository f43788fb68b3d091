"""`/docs` (Swagger UI) and `/redoc` with their scripts served by segany itself, so they work offline.

FastAPI's default pages load Swagger UI and ReDoc from a CDN, which leaves them blank on an air-gapped
machine. The same pages are rendered here with their asset URLs pointing at `/docs/assets/...`, and
those files are read from the installed `fastapi-offline` package (a core dependency that ships the
Swagger UI bundle, its CSS, the ReDoc standalone bundle and FastAPI's favicon); nothing is copied
into this repository.
"""
from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response
from starlette.routing import Route

ASSET_PACKAGE = "fastapi_offline"
ASSET_PREFIX = "/docs/assets"  # public under API keys, like the pages themselves (see http/auth.py)
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
_ASSET_HEADERS = {"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"}
# The browser itself keeps the pages on this server: ReDoc's bundle links its logo from a CDN, which is
# refused here instead of being tried (the pages start with inline scripts and styles of their own).
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' "
                               "'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; worker-src 'self' "
                               "blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-cache",
}


def _page(response: HTMLResponse) -> HTMLResponse:
    response.headers.update(_PAGE_HEADERS)
    return response


def asset_bytes(name: str) -> bytes:
    """One of `ASSETS` from the installed package; KeyError for any other name."""
    if name not in ASSETS:
        raise KeyError(name)
    return resources.files(ASSET_PACKAGE).joinpath("static", name).read_bytes()


def install(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Replace FastAPI's CDN-backed `/docs`, `/docs/oauth2-redirect` and `/redoc` with self-served ones."""
    replaced = {docs_url, redoc_url, f"{docs_url}/oauth2-redirect"}
    app.router.routes[:] = [r for r in app.router.routes if not (isinstance(r, Route) and r.path in replaced)]
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect_url = f"{docs_url}/oauth2-redirect"

    async def swagger_ui() -> HTMLResponse:
        return _page(get_swagger_ui_html(
            openapi_url=openapi_url, title=f"{app.title} - API docs", oauth2_redirect_url=oauth2_redirect_url,
            swagger_js_url=f"{ASSET_PREFIX}/swagger-ui-bundle.js", swagger_css_url=f"{ASSET_PREFIX}/swagger-ui.css",
            swagger_favicon_url=f"{ASSET_PREFIX}/favicon.png"))

    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc() -> HTMLResponse:
        return _page(get_redoc_html(openapi_url=openapi_url, title=f"{app.title} - API reference",
                                    redoc_js_url=f"{ASSET_PREFIX}/redoc.standalone.js",
                                    redoc_favicon_url=f"{ASSET_PREFIX}/favicon.png", with_google_fonts=False))

    async def asset(name: str) -> Any:
        if name not in ASSETS:
            return Response(f"no docs asset {name[:100]!r}", status_code=404, media_type="text/plain")
        return Response(asset_bytes(name), media_type=ASSETS[name], headers=_ASSET_HEADERS)

    app.add_api_route(docs_url, swagger_ui, methods=["GET"], include_in_schema=False)
    app.add_api_route(oauth2_redirect_url, oauth2_redirect, methods=["GET"], include_in_schema=False)
    app.add_api_route(redoc_url, redoc, methods=["GET"], include_in_schema=False)
    app.add_api_route(f"{ASSET_PREFIX}/{{name}}", asset, methods=["GET"], include_in_schema=False)
