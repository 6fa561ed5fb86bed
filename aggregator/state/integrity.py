"""The integrity room's positions (tables of migration 40).

* ``lookup_cursor``   per (account, region): LookupEvents read up to this epoch
* ``retry_queue``     source objects completeness found missing; ingest fetches them by key
* ``digest_expected`` every log file a signature-valid CloudTrail digest listed, by hour
* ``digest_results``  the last validation outcome per digest (validated once, not every cycle)
* ``archive_digests`` the central archive's own hourly digests (the chain head is the last)
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aggregator.state.db import Database


class LookupCursors:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, account_id: str, region: str) -> float | None:
        q = "SELECT done_until FROM lookup_cursor WHERE account_id=? AND region=?"
        row = self.db.fetchone(q, (account_id, region))
        return float(row[0]) if row else None

    def advance(self, account_id: str, region: str, done_until: float) -> None:
        """Advance (never move back) the cursor of one account-region."""
        with self.db.transaction() as c:
            c.execute(
                "INSERT INTO lookup_cursor VALUES (?,?,?,?) ON CONFLICT(account_id, region) DO "
                "UPDATE SET done_until=max(done_until, excluded.done_until), "
                "updated_at=excluded.updated_at",
                (account_id, region, done_until, time.time()),
            )


@dataclass(frozen=True)
class RetryItem:
    bucket: str
    key: str
    source_id: str
    reason: str
    attempts: int
    queued_at: float


class RetryQueue:
    def __init__(self, db: Database) -> None:
        self.db = db

    def queue(self, items: Iterable[tuple[str, str, str, str]]) -> int:
        """Queue (bucket, key, source_id, reason) rows; returns how many were new."""
        now = time.time()
        with self.db.transaction() as c:
            before = c.total_changes
            c.executemany(
                "INSERT INTO retry_queue (bucket, key, source_id, reason, queued_at, last_at) "
                "VALUES (?,?,?,?,?,?) ON CONFLICT(bucket, key) DO NOTHING",
                [(b, k, s, r, now, now) for b, k, s, r in items],
            )
            return c.total_changes - before

    def items(self, source_id: str | None = None) -> list[RetryItem]:
        q = "SELECT bucket, key, source_id, reason, attempts, queued_at FROM retry_queue"
        args: tuple[Any, ...] = ()
        if source_id is not None:
            q += " WHERE source_id=?"
            args = (source_id,)
        return [RetryItem(*r) for r in self.db.fetchall(q + " ORDER BY bucket, key", args)]

    def keys(self, source_id: str) -> list[str]:
        q = "SELECT key FROM retry_queue WHERE source_id=? ORDER BY key"
        return [r[0] for r in self.db.fetchall(q, (source_id,))]

    def contains(self, bucket: str, key: str) -> bool:
        """Is this key queued (a file digests say must exist)?"""
        q = "SELECT 1 FROM retry_queue WHERE bucket=? AND key=?"
        return self.db.fetchone(q, (bucket, key)) is not None

    def attempted(self, bucket: str, key: str) -> None:
        with self.db.transaction() as c:
            c.execute(
                "UPDATE retry_queue SET attempts=attempts+1, last_at=? WHERE bucket=? AND key=?",
                (time.time(), bucket, key),
            )

    def done(self, bucket: str, key: str) -> None:
        with self.db.transaction() as c:
            self.release(c, bucket, key)

    @staticmethod
    def release(c: sqlite3.Connection, bucket: str, key: str) -> None:
        c.execute("DELETE FROM retry_queue WHERE bucket=? AND key=?", (bucket, key))


class DigestLog:
    """What CloudTrail's digests say must exist, and how each digest validated."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def record_expected(
        self, rows: Iterable[tuple[str, str, str, str, str, str, str, str]]
    ) -> None:
        """(bucket, key, source_id, account_id, region, hour, hash, digest_key) rows."""
        with self.db.transaction() as c:
            c.executemany(
                "INSERT OR REPLACE INTO digest_expected VALUES (?,?,?,?,?,?,?,?)", list(rows)
            )

    def record_results(
        self, rows: Iterable[tuple[str, str, str, str, str, str | None, str, str]]
    ) -> None:
        """(bucket, key, source_id, account_id, region, end_time, status, detail) rows."""
        now = time.time()
        with self.db.transaction() as c:
            c.executemany(
                "INSERT OR REPLACE INTO digest_results VALUES (?,?,?,?,?,?,?,?,?)",
                [(*r, now) for r in rows],
            )

    def valid_keys(self, source_id: str) -> set[str]:
        q = "SELECT key FROM digest_results WHERE source_id=? AND status='valid'"
        return {r[0] for r in self.db.fetchall(q, (source_id,))}

    def results(self) -> list[dict[str, Any]]:
        return self.db.dicts("SELECT * FROM digest_results ORDER BY bucket, key")

    def sources_of(self, keys: Sequence[str]) -> dict[str, tuple[str, str]]:
        """{key: (bucket, source_id)} of the expected files among ``keys``."""
        out: dict[str, tuple[str, str]] = {}
        for i in range(0, len(keys), 900):
            part = keys[i : i + 900]
            q = (
                "SELECT key, bucket, source_id FROM digest_expected WHERE key IN "
                f"({','.join('?' * len(part))})"
            )
            out.update({r[0]: (r[1], r[2]) for r in self.db.fetchall(q, part)})
        return out

    def expected_between(self, since_hour: str, until_hour: str) -> list[dict[str, Any]]:
        """digest_expected rows with since_hour <= hour < until_hour (hours: YYYY-MM-DDTHH)."""
        return self.db.dicts(
            "SELECT * FROM digest_expected WHERE hour >= ? AND hour < ? "
            "ORDER BY account_id, region, hour, key",
            (since_hour, until_hour),
        )


class ArchiveDigestLog:
    """The central archive's own digest chain, as written."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def head(self) -> dict[str, Any] | None:
        rows = self.db.dicts("SELECT * FROM archive_digests ORDER BY hour DESC LIMIT 1")
        return rows[0] if rows else None

    def record(
        self,
        *,
        hour: str,
        key: str,
        sha256: str,
        signature: str,
        objects: int,
        first_ledger_id: int | None,
        last_ledger_id: int | None,
    ) -> None:
        with self.db.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO archive_digests VALUES (?,?,?,?,?,?,?,?)",
                (
                    hour,
                    key,
                    sha256,
                    signature,
                    objects,
                    first_ledger_id,
                    last_ledger_id,
                    time.time(),
                ),
            )
