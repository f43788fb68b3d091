"""Task images named by Label Studio paths (`/data/upload/...`, `/data/local-files/?d=...`), fetched from it.

The Label Studio address and token come from the server settings (`label_studio_url`,
`label_studio_api_key`) or else from what Label Studio sent to `/setup` for the project. A personal access
token (a JWT refresh token) is exchanged at `/api/token/refresh` for a short-lived access token; a legacy
token is sent as `Authorization: Token <key>`. Other absolute URLs go through the server's public URL
fetch (off unless `--allow-url-fetch`).
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from segany.errors import InvalidImage, InvalidInput
from segany.io.images import decode_base64_image
from segany.server.engine.engine import Engine
from segany.server.http.errors import FetchFailed
from segany.server.http.image_source import fetch_image, is_url

_ACCESS_TTL_S = 240.0  # Label Studio access tokens live 5 minutes; refresh a little earlier


@dataclass(frozen=True)
class LabelStudioSite:
    url: str
    token: str | None


class LabelStudioSites:
    """Per-project Label Studio address and token from `/setup`, overridden by the server settings."""

    def __init__(self, url: str | None, token: str | None) -> None:
        self._url, self._token = url, token
        self._projects: dict[str, LabelStudioSite] = {}
        self._access: dict[tuple[str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def remember(self, project: str | None, hostname: str | None, token: str | None) -> None:
        if project and hostname:
            with self._lock:
                self._projects[project] = LabelStudioSite(hostname, token or None)

    def site_for(self, project: str | None) -> LabelStudioSite | None:
        with self._lock:
            known = self._projects.get(project or "")
        url = self._url or (known.url if known else None)
        if not url:
            return None
        return LabelStudioSite(url, self._token or (known.token if known else None))

    def auth_header(self, site: LabelStudioSite, client: httpx.Client) -> dict[str, str]:
        token = site.token
        if not token:
            return {}
        if token.count(".") != 2:  # a legacy token
            return {"Authorization": f"Token {token}"}
        key = (site.url, token)
        with self._lock:
            cached = self._access.get(key)
        if cached and cached[1] > time.monotonic():
            return {"Authorization": f"Bearer {cached[0]}"}
        answer = client.post(urljoin(site.url.rstrip("/") + "/", "api/token/refresh"), json={"refresh": token})
        try:
            access = str(answer.json()["access"]) if answer.status_code == 200 else None
        except (ValueError, KeyError, TypeError):
            access = None
        if access is None:
            raise FetchFailed(f"Label Studio refused the access token (HTTP {answer.status_code} from "
                              "/api/token/refresh); check label_studio_api_key", "label_studio_api_key")
        with self._lock:
            self._access[key] = (access, time.monotonic() + _ACCESS_TTL_S)
        return {"Authorization": f"Bearer {access}"}


def _same_site(url: str, site: LabelStudioSite) -> bool:
    a, b = urlsplit(url), urlsplit(site.url)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


def _download(sites: LabelStudioSites, site: LabelStudioSite, url: str, max_bytes: int, timeout_s: float,
              field: str) -> bytes:
    with httpx.Client(timeout=timeout_s, follow_redirects=True) as client:
        try:
            headers = sites.auth_header(site, client)
            with client.stream("GET", url, headers=headers) as answer:
                if answer.status_code != 200:
                    raise FetchFailed(f"{field}: Label Studio answered HTTP {answer.status_code} for {url}"
                                      + (" (check the API key)" if answer.status_code in (401, 403) else ""), field)
                chunks, size = [], 0
                for chunk in answer.iter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise FetchFailed(f"{field}: the image is larger than {max_bytes} bytes", field)
                    chunks.append(chunk)
        except httpx.HTTPError as error:
            raise FetchFailed(f"{field}: cannot reach Label Studio at {site.url} ({error})", field) from None
    return b"".join(chunks)


async def task_image_bytes(engine: Engine, sites: LabelStudioSites, project: str | None, reference: object,
                           field: str) -> bytes:
    """The encoded image a task's data field names: a data URI, a Label Studio path or an URL."""
    if not isinstance(reference, str) or not reference:
        raise InvalidImage(f"{field}: the task names no image", field)
    if reference.startswith("data:"):
        return decode_base64_image(reference, field=field)
    site = sites.site_for(project)
    if is_url(reference) and (site is None or not _same_site(reference, site)):
        return await fetch_image(engine, reference, field)
    if site is None:
        raise InvalidInput(f"{field}: {reference[:200]!r} is a Label Studio path, and segany does not know where "
                           "Label Studio is: start segany with --label-studio-url (and --label-studio-api-key)",
                           "label_studio_url")
    url = reference if is_url(reference) else urljoin(site.url.rstrip("/") + "/", reference.lstrip("/"))
    settings = engine.settings
    return await asyncio.to_thread(_download, sites, site, url, settings.fetch_max_bytes, settings.fetch_timeout_s,
                                   field)
