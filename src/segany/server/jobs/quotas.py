"""Per-API-key request credits, stored in the job database (table `quotas`).

Quotas are optional: a key without a row is unlimited (`get` and `consume` return None, and the server
sends no `x-remaining-credits` header). A key with a row spends one credit (or `amount`) per request;
when it cannot pay, `consume` raises `QuotaExceeded`, which the Segmind dialect answers with 406
"Not enough credits". Every change is one conditional UPDATE, so concurrent requests (threads or
processes sharing the file) never overspend.
"""
from __future__ import annotations

import time
from pathlib import Path

from segany.errors import InvalidInput
from segany.server.jobs.database import Database, returning_one
from segany.server.jobs.errors import QuotaExceeded

_QUOTA_MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE quotas (api_key_id TEXT PRIMARY KEY, remaining INTEGER NOT NULL CHECK (remaining >= 0),"
        " updated_at REAL NOT NULL)",
    ],
]


def _check_count(value: int, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInput(f"{name} must be an integer >= {minimum}, not {value!r}", field=name)
    return value


class Quotas:
    """Credits per API key id (an opaque id from the auth layer, never the key itself)."""

    def __init__(self, db: Database | str | Path) -> None:
        self.db = db if isinstance(db, Database) else Database(db)
        self.db.migrate("quotas", _QUOTA_MIGRATIONS)

    def set(self, api_key_id: str, credits: int) -> None:
        """Give the key exactly `credits` (0 blocks it)."""
        _check_count(credits, "credits", 0)
        self.db.connection().execute(
            "INSERT INTO quotas VALUES (?, ?, ?) ON CONFLICT (api_key_id) DO UPDATE"
            " SET remaining = excluded.remaining, updated_at = excluded.updated_at",
            (api_key_id, credits, time.time()))

    def add(self, api_key_id: str, credits: int) -> int:
        """Top up (creating the row at `credits` if the key had none); returns the new balance."""
        _check_count(credits, "credits", 0)
        return returning_one(
            self.db.connection(), "INSERT INTO quotas VALUES (?, ?, ?) ON CONFLICT (api_key_id) DO UPDATE"
            " SET remaining = remaining + excluded.remaining, updated_at = excluded.updated_at RETURNING remaining",
            (api_key_id, credits, time.time()))[0]

    def get(self, api_key_id: str) -> int | None:
        """Remaining credits, or None when the key has no quota (unlimited)."""
        row = self.db.connection().execute("SELECT remaining FROM quotas WHERE api_key_id = ?",
                                           (api_key_id,)).fetchone()
        return None if row is None else row[0]

    def consume(self, api_key_id: str, amount: int = 1) -> int | None:
        """Spend `amount` credits atomically; returns what is left (None: unlimited key).

        Raises `QuotaExceeded` (nothing spent) when the key has fewer than `amount` left.
        """
        _check_count(amount, "amount", 1)
        conn = self.db.connection()
        row = returning_one(
            conn, "UPDATE quotas SET remaining = remaining - ?, updated_at = ? WHERE api_key_id = ? AND remaining >= ?"
            " RETURNING remaining", (amount, time.time(), api_key_id, amount))
        if row is not None:
            return row[0]
        remaining = self.get(api_key_id)
        if remaining is None:
            return None
        raise QuotaExceeded(remaining=remaining)

    def refund(self, api_key_id: str, amount: int = 1) -> int | None:
        """Give back credits for a request that failed on the server's side; None for an unlimited key."""
        _check_count(amount, "amount", 1)
        row = returning_one(
            self.db.connection(), "UPDATE quotas SET remaining = remaining + ?, updated_at = ? WHERE api_key_id = ?"
            " RETURNING remaining",
            (amount, time.time(), api_key_id))
        return None if row is None else row[0]

    def remove(self, api_key_id: str) -> bool:
        """Drop the key's quota (it becomes unlimited); True if it had one."""
        cursor = self.db.connection().execute("DELETE FROM quotas WHERE api_key_id = ?", (api_key_id,))
        return cursor.rowcount > 0

    def all(self) -> dict[str, int]:
        """Every key with a quota and its remaining credits."""
        rows = self.db.connection().execute("SELECT api_key_id, remaining FROM quotas ORDER BY api_key_id")
        return {row[0]: row[1] for row in rows}
