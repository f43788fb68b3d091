"""API-key checks in each dialect's convention.

A key is accepted from `Authorization: Bearer <key>` (Livepeer, Hugging Face, Roboflow's newer
clients), `x-api-key: <key>` (Segmind style), the `api_key` query parameter (Roboflow) or, on
Roboflow routes, the `api_key` field of the JSON body (what `inference_sdk` sends to a self-hosted
server). With no keys configured every request passes.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qs

from segany.server.http.errors import Unauthorized

# Health probes must work for load balancers that hold no key; the OpenAPI document and its docs page
# describe the API without revealing any data, and the docs page cannot attach a key to its own fetch.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})

# GET-only public prefixes: the web page's own files hold no data (the page asks the user for a key and sends
# it with its API calls), and output files live under unguessable names, like Replicate's delivery URLs.
PUBLIC_PAGE_PREFIXES = ("/static/", "/files/")

# Routes whose clients send the key inside the JSON body.
BODY_KEY_PREFIXES = ("/sam2/",)


def key_from_headers(headers: Mapping[str, str]) -> str | None:
    """The key from `Authorization: Bearer` or `x-api-key`; header names lower-case."""
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    api_key = headers.get("x-api-key", "").strip()
    return api_key or None


def key_from_query(query_string: str) -> str | None:
    values = parse_qs(query_string).get("api_key")
    return values[0] if values and values[0] else None


def key_from_json_body(body: bytes) -> str | None:
    """`api_key` of a JSON object body, or None when the body is not such an object."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    key = document.get("api_key") if isinstance(document, dict) else None
    return key if isinstance(key, str) and key else None


def is_valid_key(candidate: str | None, keys: Iterable[str]) -> bool:
    """Constant-time comparison against every configured key."""
    if not candidate:
        return False
    found = False
    for key in keys:
        found |= hmac.compare_digest(candidate.encode(), key.encode())
    return found


def needs_key(path: str, keys: tuple[str, ...], method: str = "POST") -> bool:
    if not keys or path in PUBLIC_PATHS:
        return False
    # GET / is the page; POST / is the Hugging Face endpoint and keeps needing a key.
    return not (method in ("GET", "HEAD") and (path == "/" or path.startswith(PUBLIC_PAGE_PREFIXES)))


def check_request(path: str, headers: Mapping[str, str], query_string: str, body: bytes | None,
                  keys: tuple[str, ...], method: str = "POST") -> None:
    """Raise `Unauthorized` unless the request carries a configured key (or the route is public)."""
    if not needs_key(path, keys, method):
        return
    candidate = key_from_headers(headers) or key_from_query(query_string)
    if candidate is None and body and path.startswith(BODY_KEY_PREFIXES):
        candidate = key_from_json_body(body)
    if candidate is None:
        raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>'")
    if not is_valid_key(candidate, keys):
        raise Unauthorized("the API key is not valid")


def key_id(key: str) -> str:
    """The opaque id jobs, files and quotas are kept under for an API key (never the key itself)."""
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:24]


def api_key_id(api_keys: tuple[str, ...], headers: Mapping[str, str], query_string: str) -> str | None:
    """`key_id` of the request's API key; None when auth is off (every caller then sees every job)."""
    if not api_keys:
        return None
    key = key_from_headers(headers) or key_from_query(query_string)
    return None if key is None else key_id(key)
