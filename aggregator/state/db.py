"""The one SQLite connection (WAL, through sqlite-utils) that every store shares, and the
migrations it applies when opened.

One instance per process; safe to call from one thread at a time (a re-entrant lock guards
the connection, so the metrics scrape thread and the event loop take turns).

Storage failures never hang and always say where: a full disk, a read-only file or directory,
an I/O error, a corrupt or unopenable file raise :class:`StorageError` (a
``sqlite3.OperationalError`` naming the state's path and SQLite's reason) from every statement,
and a transaction whose COMMIT failed is rolled back, so nothing is committed by half and the
connection is never left inside a dead transaction. ``read_only`` opens the file with
``mode=ro`` (no migrations, no writes): what ``ctagg status`` and the other readers use beside
a running daemon.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlite_utils

from aggregator.state.migrations import MIGRATIONS

# SQLite result codes (primary names) that mean "this state file cannot be used right now"
_STORAGE_CODES = (
    "SQLITE_FULL",
    "SQLITE_READONLY",
    "SQLITE_IOERR",
    "SQLITE_CANTOPEN",
    "SQLITE_CORRUPT",
    "SQLITE_NOTADB",
    "SQLITE_PERM",
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_NOMEM",
)


class StorageError(sqlite3.OperationalError):
    """The state file cannot be used: full disk, read-only, I/O error, corrupt, unopenable.
    The message names the path and SQLite's reason."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"state {path}: {reason}")
        self.path = path
        self.reason = reason


def _is_storage(exc: sqlite3.Error) -> bool:
    name = str(getattr(exc, "sqlite_errorname", "") or "")
    if name:
        return name.startswith(_STORAGE_CODES)
    text = str(exc).lower()  # errors raised before a result code exists (connect)
    return any(
        t in text
        for t in ("disk is full", "readonly", "read-only", "unable to open", "disk i/o", "locked")
    )


def _storage(path: str, exc: sqlite3.Error) -> sqlite3.Error:
    return StorageError(path, str(exc)) if _is_storage(exc) else exc


class _GuardedConnection(sqlite3.Connection):
    """A connection whose statements raise :class:`StorageError` (with the file's path) for
    storage failures; everything else is sqlite3's own."""

    ctagg_path = ""

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        try:
            return super().execute(sql, parameters)
        except StorageError:
            raise
        except sqlite3.Error as exc:
            raise _storage(self.ctagg_path, exc) from exc

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        try:
            return super().executemany(sql, parameters)
        except sqlite3.Error as exc:
            raise _storage(self.ctagg_path, exc) from exc

    def executescript(self, sql_script: str, /) -> sqlite3.Cursor:
        try:
            return super().executescript(sql_script)
        except sqlite3.Error as exc:
            raise _storage(self.ctagg_path, exc) from exc


class Database:
    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = str(path)
        self.read_only = read_only
        try:
            conn = self._connect()
        except StorageError:
            raise
        except OSError as exc:
            raise StorageError(self.path, f"cannot open: {exc.strerror or exc}") from exc
        except sqlite3.Error as exc:
            raise StorageError(self.path, f"cannot open: {exc}") from exc
        self.conn = conn
        self.utils = sqlite_utils.Database(conn)
        self.lock = threading.RLock()
        try:
            conn.execute("PRAGMA busy_timeout=10000")
            if not read_only:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                # Checkpoints (WAL → database, with an fsync) every ~40 MB instead of every
                # 4 MB: the dedupe window takes a thousand keys per object, and per-commit
                # checkpoints were the largest part of a commit. A crash still loses nothing
                # committed (WAL).
                conn.execute("PRAGMA wal_autocheckpoint=10000")
            conn.execute("PRAGMA cache_size=-65536")
            conn.execute("PRAGMA foreign_keys=ON")
            if read_only:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            else:
                self.migrate()
        except BaseException:
            conn.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        if self.path == ":memory:":
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=False,
                factory=_GuardedConnection,
            )
        elif self.read_only:
            if not Path(self.path).is_file():
                raise StorageError(self.path, "no state file here (nothing collected yet?)")
            conn = sqlite3.connect(
                f"file:{quote(str(Path(self.path).resolve()))}?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
                factory=_GuardedConnection,
            )
        else:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=False,
                factory=_GuardedConnection,
            )
        assert isinstance(conn, _GuardedConnection)
        conn.ctagg_path = self.path
        return conn

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
        """A write transaction (``BEGIN IMMEDIATE``): committed on exit, rolled back on error,
        also when the COMMIT itself fails (a full disk): never left open by half."""
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    with suppress(sqlite3.Error):
                        self.conn.execute("ROLLBACK")
                raise

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
