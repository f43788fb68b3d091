"""Bytes of uploads each API key keeps stored (`POST /v1/files`), bounded by `max_upload_mb_per_key`.

One row per stored upload in the job database (table `uploads`); a key's usage is the sum of its uploads
not yet deleted or expired (older than `job_ttl_s`, when the storage deletes them too). Charging is one
conditional INSERT, so concurrent uploads of one key (threads or processes sharing the file) never
overrun it. With auth off every client shares one allowance (owner "").
"""
from __future__ import annotations

import time

from segany.server.jobs.database import Database
from segany.server.jobs.errors import UploadQuotaExceeded

_UPLOAD_MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE uploads (key TEXT PRIMARY KEY, owner TEXT NOT NULL, size INTEGER NOT NULL,"
        " created_at REAL NOT NULL)",
        "CREATE INDEX uploads_owner ON uploads (owner, created_at)",
    ],
]


class UploadQuota:
    """Stored upload bytes per API key id (None: auth off) and the allowance each key has."""

    def __init__(self, db: Database, max_bytes_per_key: int, ttl_s: float) -> None:
        self.db = db
        self.max_bytes = max_bytes_per_key
        self.ttl_s = ttl_s
        self.db.migrate("uploads", _UPLOAD_MIGRATIONS)

    def used(self, api_key_id: str | None, *, now: float | None = None) -> int:
        """Bytes of the key's uploads that are still stored."""
        now = time.time() if now is None else now
        row = self.db.connection().execute(
            "SELECT COALESCE(SUM(size), 0) FROM uploads WHERE owner = ? AND created_at > ?",
            (api_key_id or "", now - self.ttl_s)).fetchone()
        return int(row[0])

    def charge(self, api_key_id: str | None, key: str, size: int, *, now: float | None = None) -> None:
        """Record the upload `key` of `size` bytes; `UploadQuotaExceeded` (nothing recorded) past the allowance."""
        now = time.time() if now is None else now
        owner, since = api_key_id or "", now - self.ttl_s
        conn = self.db.connection()
        conn.execute("DELETE FROM uploads WHERE created_at <= ?", (since,))  # expired with their files
        cursor = conn.execute(
            "INSERT INTO uploads SELECT ?, ?, ?, ? WHERE (SELECT COALESCE(SUM(size), 0) FROM uploads"
            " WHERE owner = ? AND created_at > ?) + ? <= ?",
            (key, owner, size, now, owner, since, size, self.max_bytes))
        if cursor.rowcount == 0:
            self._refuse(self.used(api_key_id, now=now), size)

    def check(self, api_key_id: str | None, size: int) -> None:
        """`UploadQuotaExceeded` if an upload of `size` bytes would not fit now (before it is stored)."""
        used = self.used(api_key_id)
        if used + size > self.max_bytes:
            self._refuse(used, size)

    def _refuse(self, used: int, size: int) -> None:
        raise UploadQuotaExceeded(
            f"content: this API key keeps {used / 2**20:.1f} MiB of uploads and this one is {size / 2**20:.1f} "
            f"MiB, more than its limit of {self.max_bytes / 2**20:g} MiB (max_upload_mb_per_key); delete "
            "uploads (DELETE /v1/files/{id}) or wait until they expire")

    def forget(self, key: str) -> None:
        """The upload `key` was deleted: its bytes no longer count."""
        self.db.connection().execute("DELETE FROM uploads WHERE key = ?", (key,))
