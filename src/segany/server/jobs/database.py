"""The SQLite file under the data directory that jobs and quotas share.

WAL mode (readers never block the writer), one connection per thread, and per-component schema
versions in `schema_migrations`, so each store (`jobs`, `quotas`) migrates its own tables and a file
written by a newer segany is refused instead of misread.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def returning_one(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
    """Run a write with RETURNING to completion, so its implicit transaction ends here, and give its row."""
    rows = conn.execute(sql, params).fetchall()
    return rows[0] if rows else None


class Database:
    """An SQLite file in WAL mode with one connection per thread, shared by the job store and the quotas."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._connections: dict[int, sqlite3.Connection] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.connection().execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " component TEXT NOT NULL, version INTEGER NOT NULL, applied_at REAL NOT NULL,"
            " PRIMARY KEY (component, version))"
        )

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (autocommit; use `transaction()` to group statements)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and not self._closed:
            return conn
        with self._lock:
            if self._closed:
                raise RuntimeError(f"database {self.path} is closed")
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: an acknowledged job must survive power loss too, not only a process crash.
            conn.execute("PRAGMA synchronous=FULL")
            alive = {thread.ident for thread in threading.enumerate()}
            for ident in [i for i in self._connections if i not in alive]:  # threads that ended
                self._connections.pop(ident).close()
            stale = self._connections.pop(threading.get_ident(), None)  # an ended thread whose id was reused
            if stale is not None:
                stale.close()
            self._connections[threading.get_ident()] = conn
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front so read-then-write steps are atomic."""
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def migrate(self, component: str, steps: Sequence[Sequence[str]]) -> int:
        """Apply the not yet applied `steps` (each a list of SQL statements) of `component`; returns its version."""
        with self.transaction() as conn:
            current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations WHERE component = ?",
                                   (component,)).fetchone()[0]
            if current > len(steps):
                raise RuntimeError(f"{self.path}: {component} schema version {current} is newer than this "
                                   f"segany knows ({len(steps)}); upgrade segany or use another --data-dir")
            for version in range(current + 1, len(steps) + 1):
                for statement in steps[version - 1]:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (component, version, time.time()))
        return len(steps)

    def close(self) -> None:
        """Close every thread's connection; later use raises."""
        with self._lock:
            self._closed = True
            for conn in self._connections.values():
                conn.close()
            self._connections.clear()
