"""The one SQLite connection (WAL, through sqlite-utils) that every store shares, and the
migrations it applies when opened.

One instance per process; safe to call from one thread at a time (a re-entrant lock guards
the connection, so the metrics scrape thread and the event loop take turns).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

from aggregator.state.migrations import MIGRATIONS


class Database:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.conn = conn
        self.utils = sqlite_utils.Database(conn)
        self.lock = threading.RLock()
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        # Checkpoints (WAL → database, with an fsync) every ~40 MB instead of every 4 MB: the
        # dedupe window takes a thousand keys per object, and per-commit checkpoints were the
        # largest part of a commit. A crash still loses nothing committed (WAL).
        conn.execute("PRAGMA wal_autocheckpoint=10000")
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("PRAGMA foreign_keys=ON")
        self.migrate()

    # ------------------------------------------------------------------ lifecycle

    def migrate(self) -> list[int]:
        """Apply pending migrations in order; returns the versions applied."""
        with self.lock:
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            done = {r[0] for r in self.conn.execute("SELECT version FROM schema_migrations")}
            applied = []
            for version, name, fn in sorted(MIGRATIONS, key=lambda m: m[0]):
                if version in done:
                    continue
                with self.transaction() as c:
                    # another process (ctagg status next to ctagg run) may have applied it
                    # since we looked: re-check under the write lock
                    q = "SELECT 1 FROM schema_migrations WHERE version=?"
                    if c.execute(q, (version,)).fetchone():
                        continue
                    fn(self.utils)
                    self.conn.execute(
                        "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                        (version, name, time.time()),
                    )
                applied.append(version)
            return applied

    def schema_version(self) -> int:
        row = self.conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    def healthy(self) -> bool:
        try:
            with self.lock:
                self.conn.execute("SELECT 1").fetchone()
        except sqlite3.Error:
            return False
        return True

    # ------------------------------------------------------------------ access

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``): committed on exit, rolled back on error."""
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def fetchall(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.lock:
            return self.conn.execute(sql, args).fetchall()

    def fetchone(self, sql: str, args: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        with self.lock:
            row: tuple[Any, ...] | None = self.conn.execute(sql, args).fetchone()
            return row

    def dicts(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows as dicts keyed by column name."""
        with self.lock:
            cur = self.conn.execute(sql, args)
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def count(self, table: str, where: str = "1", args: Sequence[Any] = ()) -> int:
        row = self.fetchone(f"SELECT count(*) FROM {table} WHERE {where}", args)
        return int(row[0]) if row else 0

    def delete(self, table: str, where: str, args: Sequence[Any], *, dry_run: bool) -> int:
        """Delete matching rows (or, with ``dry_run``, count them)."""
        if dry_run:
            return self.count(table, where, args)
        with self.transaction() as c:
            return c.execute(f"DELETE FROM {table} WHERE {where}", args).rowcount

    def has_table(self, name: str) -> bool:
        q = "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?"
        return self.fetchone(q, (name,)) is not None
