"""Where output files (mask PNGs, overlays) and uploaded inputs live, behind a small `Storage` interface.

The default `LocalStorage` keeps them in a directory and the server serves them at `/files/{key}`. Keys are
unguessable (`secrets.token_urlsafe`, 192 bits) plus an extension, so a file URL is its own capability.

Adding an object store (S3, GCS...) means writing one class with the `Storage` methods:
- `put` uploads and returns a new random key; keep `name`, `owner` and the checksums as object metadata.
- `open`/`get`/`info` read it back; an unknown or malformed key raises `StoredFileNotFound` (HTTP 404).
- `url_for` may return a presigned URL instead of the server's `/files/...` route.
- `expire` may do nothing (and return `[]`) when a bucket lifecycle rule deletes old objects.
"""
from __future__ import annotations

import hashlib
import json
import mimetypes
import re
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from segany.errors import InvalidInput
from segany.io.files import write_bytes_atomic
from segany.server.jobs.errors import StoredFileNotFound

_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}(\.[a-z0-9]{1,10})?$")
_SUFFIX_RE = re.compile(r"^\.[A-Za-z0-9]{1,10}$")
_TOKEN_BYTES = 24  # 32 URL-safe characters
_STALE_TEMP_S = 3600.0


@dataclass(frozen=True)
class StoredFile:
    """What is known about a stored file; enough for Replicate's file objects (`etag` = md5)."""

    key: str
    size: int
    content_type: str
    created_at: float  # unix seconds
    name: str | None = None  # the uploader's file name, if any
    owner: str | None = None  # API key id of the uploader, for access checks
    sha256: str | None = None
    md5: str | None = None
    private: bool = False  # a client's upload: readable only with its owner's key, never at /files/ without it


@runtime_checkable
class Storage(Protocol):
    """A place for files addressed by opaque, unguessable keys."""

    def put(self, data: bytes, suffix: str = "", content_type: str | None = None, *, name: str | None = None,
            owner: str | None = None, private: bool = False) -> str:
        """Store `data`; returns its new key (which ends with `suffix`, e.g. ".png")."""
        ...

    def open(self, key: str) -> BinaryIO:
        """A binary file object to read from (the caller closes it)."""
        ...

    def get(self, key: str) -> bytes:
        ...

    def info(self, key: str) -> StoredFile:
        ...

    def delete(self, key: str) -> bool:
        """True if something was deleted; unknown keys are not an error."""
        ...

    def url_for(self, key: str, base_url: str | None = None) -> str:
        """Where clients fetch the file; relative (`/files/key`) unless `base_url` is given."""
        ...

    def expire(self, max_age_s: float, *, now: float | None = None) -> list[str]:
        """Delete files older than `max_age_s`; returns their keys."""
        ...


def readable_by(info: StoredFile, api_key_id: str | None, upload: bool = False) -> bool:
    """Whether the key `api_key_id` may read the file: uploads (`private`, or named as one) only by their owner."""
    return not (info.private or upload) or info.owner == api_key_id


def read_owned(storage: Storage, key: str, api_key_id: str | None, upload: bool = False) -> bytes:
    """The file's bytes for `api_key_id`; another key's upload raises `StoredFileNotFound`, as if absent."""
    if not readable_by(storage.info(key), api_key_id, upload):
        raise StoredFileNotFound(f"no stored file {key[:80]!r}")
    return storage.get(key)


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY_RE.match(key):
        # Anything else (separators, '..', odd characters) cannot be one of our keys: report it as absent.
        raise StoredFileNotFound(f"no stored file {str(key)[:80]!r}")
    return key


# Printable ASCII without CR/LF: a content type is echoed into response headers, which must stay one line
# of latin-1 text.
_CONTENT_TYPE_RE = re.compile(r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(?:\s*;[ -~]*)?$")


def check_content_type(content_type: str, field: str = "content_type") -> str:
    """`content_type` if it is a well-formed `type/subtype[; params]` header value, else InvalidInput."""
    if len(content_type) > 100 or not _CONTENT_TYPE_RE.match(content_type):
        raise InvalidInput(f"{field}: {content_type[:40]!r} is not a media type like 'image/png' (printable "
                           "ASCII, one line, at most 100 characters)", field)
    return content_type


def _normal_suffix(suffix: str, content_type: str | None) -> str:
    if not suffix and content_type:
        suffix = mimetypes.guess_extension(content_type.split(";")[0].strip()) or ""
    if suffix and not _SUFFIX_RE.match(suffix):
        raise InvalidInput(f"suffix must be '.' and 1-10 letters or digits, not {suffix[:20]!r}", field="suffix")
    return suffix.lower()


class LocalStorage:
    """Files under `root`, sharded by the first two key characters, served at `url_prefix`.

    Each file has a hidden sidecar (`.{key}.json`) with its metadata; hidden names can never match a key,
    so neither sidecars nor temporary files are reachable through `open`.
    """

    def __init__(self, root: str | Path, url_prefix: str = "/files") -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url_prefix = url_prefix.rstrip("/")

    def path_for(self, key: str) -> Path:
        """The file's path (for serving it with a file response); raises `StoredFileNotFound` if absent."""
        path = self._path(key)
        if not path.is_file():
            raise StoredFileNotFound(f"no stored file {key!r}")
        return path

    def _path(self, key: str) -> Path:
        path = (self.root / _check_key(key)[:2] / key).resolve()
        if path.parent.parent != self.root:  # belt and braces: the key pattern already excludes traversal
            raise StoredFileNotFound(f"no stored file {key[:80]!r}")
        return path

    def _sidecar(self, path: Path) -> Path:
        return path.with_name(f".{path.name}.json")

    def put(self, data: bytes, suffix: str = "", content_type: str | None = None, *, name: str | None = None,
            owner: str | None = None, private: bool = False) -> str:
        if content_type is not None:
            check_content_type(content_type)
        suffix = _normal_suffix(suffix, content_type)
        key = secrets.token_urlsafe(_TOKEN_BYTES) + suffix
        path = self._path(key)
        path.parent.mkdir(exist_ok=True)
        content_type = content_type or mimetypes.guess_type(f"x{suffix}")[0] or "application/octet-stream"
        record = StoredFile(key=key, size=len(data), content_type=content_type, created_at=time.time(), name=name,
                            owner=owner, private=private, sha256=hashlib.sha256(data).hexdigest(),
                            md5=hashlib.md5(data, usedforsecurity=False).hexdigest())
        write_bytes_atomic(path, bytes(data))
        write_bytes_atomic(self._sidecar(path), json.dumps(asdict(record)).encode())
        return key

    def open(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise StoredFileNotFound(f"no stored file {key!r}") from None

    def get(self, key: str) -> bytes:
        with self.open(key) as handle:
            return handle.read()

    def info(self, key: str) -> StoredFile:
        path = self.path_for(key)
        try:
            return StoredFile(**json.loads(self._sidecar(path).read_text()))
        except (OSError, ValueError, TypeError):  # sidecar lost in a crash: what the file system still knows
            stat = path.stat()
            content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            return StoredFile(key=key, size=stat.st_size, content_type=content_type, created_at=stat.st_mtime)

    def delete(self, key: str) -> bool:
        try:
            path = self._path(key)
        except StoredFileNotFound:
            return False
        self._sidecar(path).unlink(missing_ok=True)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def url_for(self, key: str, base_url: str | None = None) -> str:
        relative = f"{self.url_prefix}/{_check_key(key)}"
        return relative if base_url is None else base_url.rstrip("/") + relative

    def expire(self, max_age_s: float, *, now: float | None = None) -> list[str]:
        """Delete files (by modification time) older than `max_age_s`, plus stale temporaries and orphaned
        sidecars left by crashes; returns the deleted keys."""
        now = time.time() if now is None else now
        deleted: list[str] = []
        for shard in self.root.iterdir():
            if not shard.is_dir() or shard.name.startswith("."):
                continue
            for path in shard.iterdir():
                try:
                    age_s = now - path.stat().st_mtime
                except FileNotFoundError:  # deleted concurrently
                    continue
                if _KEY_RE.match(path.name):
                    if age_s > max_age_s and self.delete(path.name):
                        deleted.append(path.name)
                elif path.name.startswith(".tmp-") and age_s > max(max_age_s, _STALE_TEMP_S):
                    path.unlink(missing_ok=True)
                elif path.name.endswith(".json") and age_s > max_age_s:
                    if not path.with_name(path.name[1:-5]).exists():  # sidecar of a file gone
                        path.unlink(missing_ok=True)
        return deleted
