"""API-key checks in each dialect's convention.

A key is accepted from `Authorization: Bearer <key>` (Livepeer, Hugging Face, Roboflow's newer
clients), `x-api-key: <key>` (Segmind style), `Token: <key>` (X-AnyLabeling), HTTP basic auth with the
key as the password (Label Studio's ML backend settings; CVAT via `user:key@host`), the `api_key` query
parameter (Roboflow) or, on
Roboflow routes, the `api_key` field of the JSON body (what `inference_sdk` sends to a self-hosted
server). With no keys configured every request passes.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qs

from segany.server.http.errors import Unauthorized

# Health probes must work for load balancers that hold no key; the OpenAPI document and its docs page
# describe the API without revealing any data, and the docs page cannot attach a key to its own fetch.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc",
                          "/xanylabeling/health"})

# GET-only public prefixes: the web page's own files hold no data (the page asks the user for a key and sends
# it with its API calls), and output files live under unguessable names, like Replicate's delivery URLs.
PUBLIC_PAGE_PREFIXES = ("/static/", "/files/", "/docs/assets/")

# Routes whose clients send the key inside the JSON body.
BODY_KEY_PREFIXES = ("/sam2/",)


MISSING_KEY = ("an API key is required: send 'Authorization: Bearer <key>' (or 'Authorization: Token <key>', "
               "'x-api-key: <key>', or ?api_key=<key>)")
UNKNOWN_SCHEME = "the Authorization scheme {scheme!r} is not accepted: send 'Authorization: Bearer <key>'"


def key_from_headers(headers: Mapping[str, str]) -> str | None:
    """The key from `Authorization: Bearer|Basic`, `x-api-key` or `Token`; header names lower-case."""
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() in ("bearer", "token") and credentials.strip():  # "Token": Django REST / Label Studio style
        return credentials.strip()
    if scheme.lower() == "basic" and credentials.strip():
        return _basic_auth_key(credentials.strip())
    api_key = headers.get("x-api-key", "").strip() or headers.get("token", "").strip()
    return api_key or None


def _basic_auth_key(credentials: str) -> str | None:
    """The password of `user:password` (the user name is free), or the user when the password is empty."""
    try:
        user, _, password = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return password or user or None


def key_from_query(query_string: str) -> str | None:
    values = parse_qs(query_string).get("api_key")
    return values[0] if values and values[0] else None


# The body is not parsed before the key is known: a nested or huge JSON document from a keyless client would
# cost a full parse (or a RecursionError). A key is a short plain string, found by this pattern instead.
_BODY_KEY = re.compile(rb'"api_key"\s*:\s*"([!#-\[\]-~]{1,256})"')


def key_from_json_body(body: bytes) -> str | None:
    """The `api_key` string of a JSON body, found without parsing it; None when there is none."""
    found = _BODY_KEY.search(body)
    return found.group(1).decode("ascii") if found else None


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


def header_key(headers: Mapping[str, str], query_string: str) -> str | None:
    return key_from_headers(headers) or key_from_query(query_string)


def wants_body_key(path: str, headers: Mapping[str, str], query_string: str, keys: tuple[str, ...],
                   method: str = "POST") -> bool:
    """True when only the body can hold this request's key (a body-key route sent no header or query key)."""
    return (needs_key(path, keys, method) and path.startswith(BODY_KEY_PREFIXES)
            and header_key(headers, query_string) is None)


def check_request(path: str, headers: Mapping[str, str], query_string: str, body: bytes | None,
                  keys: tuple[str, ...], method: str = "POST") -> None:
    """Raise `Unauthorized` unless the request carries a configured key (or the route is public).

    `body` is the start of the body on body-key routes (see `wants_body_key`), else None: the middleware
    calls this before it reads any body."""
    if not needs_key(path, keys, method):
        return
    candidate = header_key(headers, query_string)
    if candidate is None and body and path.startswith(BODY_KEY_PREFIXES):
        candidate = key_from_json_body(body)
    if candidate is None:
        scheme = headers.get("authorization", "").partition(" ")[0]
        if scheme and scheme.lower() not in ("bearer", "token", "basic"):
            raise Unauthorized(UNKNOWN_SCHEME.format(scheme=scheme[:20]))
        raise Unauthorized(MISSING_KEY)
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
