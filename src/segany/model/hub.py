"""Hugging Face hub access for weights: cache look-ups, one fast reachability check, remembered failures.

`huggingface_hub` retries an unreachable hub for ~25 s per file. segany asks the cache first (no
network), then checks once per process (a 2 s TCP connect to the hub's host) whether the hub can be
reached at all, and remembers a failed download for a while, so an offline machine fails in well under
a second on every later attempt with the command that fetches the file.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

from segany.errors import ModelNotFound

PROBE_TIMEOUT_S = 2.0
# A failure is remembered this long: a server that was started offline notices the network coming back.
REMEMBER_FAILURE_S = 300.0
_TRUE = ("1", "true", "yes", "on")
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")

_lock = threading.Lock()
_probe: tuple[float, str | None] | None = None  # (when, reason the hub is unreachable or None)
_failures: dict[tuple[str, str], tuple[float, str]] = {}  # (repo, file or "*") -> (when, message)


def offline_env() -> bool:
    """True when HF_HUB_OFFLINE asks for no network at all."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def fetch_command(repo_id: str, filename: str | None = None) -> str:
    """The `hf` command (the CLI `huggingface_hub` ships) that puts `repo_id`'s file into the cache."""
    return f"hf download {repo_id}" + (f" {filename}" if filename else "")


def _probe_hub() -> str | None:
    """Why the hub's host cannot be reached (DNS, refused, timeout), or None when a TCP connect works."""
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return None  # through a proxy only huggingface_hub itself can tell
    url = urlparse(hub_endpoint())
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return None
    except OSError as error:
        return f"{host}:{port} unreachable ({error.strerror or type(error).__name__})"


def hub_unreachable() -> str | None:
    """The reason the hub cannot be used now (HF_HUB_OFFLINE or a failed connect), or None; checked once a while."""
    global _probe
    if offline_env():
        return "HF_HUB_OFFLINE is set"
    with _lock:
        now = time.monotonic()
        if _probe is None or (_probe[1] is not None and now - _probe[0] > REMEMBER_FAILURE_S):
            _probe = (now, _probe_hub())
        return _probe[1]


def remembered_failure(repo_id: str, filename: str = "*") -> str | None:
    """The message of a download of this file that failed recently in this process, or None."""
    with _lock:
        entry = _failures.get((repo_id, filename))
        if entry is None or time.monotonic() - entry[0] > REMEMBER_FAILURE_S:
            return None
        return entry[1]


def remember_failure(repo_id: str, filename: str, message: str) -> None:
    with _lock:
        _failures[(repo_id, filename)] = (time.monotonic(), message)


def forget_failures() -> None:
    """Clear what this process remembers (a new probe and new downloads on the next attempt)."""
    global _probe
    with _lock:
        _probe = None
        _failures.clear()


def cached_file(repo_id: str, filename: str) -> Path | None:
    """The file from the Hugging Face cache (no network), or None when it is not there."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def download_file(repo_id: str, filename: str, how: str) -> Path:
    """`filename` of `repo_id` from the cache, else downloaded into it; `ModelNotFound` ending in `how`.

    Offline or with the hub unreachable this fails at once (no retries), and a failed download is
    remembered so the next attempt fails at once too.
    """
    found = cached_file(repo_id, filename)
    if found is not None:
        return found
    reason = hub_unreachable()
    if reason is not None:
        raise ModelNotFound(f"{repo_id}/{filename} is not in the Hugging Face cache and the hub cannot be used "
                            f"({reason}); {how}")
    earlier = remembered_failure(repo_id, filename)
    if earlier is not None:
        raise ModelNotFound(earlier)
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, etag_timeout=5))
    except Exception as exc:  # network errors, missing repo or file: all mean "not available"
        message = f"could not fetch {repo_id}/{filename} ({type(exc).__name__}: {str(exc)[:200]}); {how}"
        remember_failure(repo_id, filename, message)
        raise ModelNotFound(message) from exc
