"""The ledger: every central object written, in commit order.

* ``ledger``  one row per central object (key, source object, account, region, events, bytes,
              SHA-256, event-time range, when written); its ``id`` is the position that
              forwarders, detection and the archive's digest chain follow
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from aggregator.state.db import Database
from aggregator.state.records import ObjectOutcome

# the columns a reader of the ledger in id order needs (forwarding, replay; ``sha256`` to check
# the object's bytes before sending its events)
_POSITION = "id, central_key, events, sha256, first_event_time, last_event_time"


class Ledger:
    def __init__(self, db: Database) -> None:
        self.db = db

    @staticmethod
    def record(c: sqlite3.Connection, o: ObjectOutcome, now: float) -> None:
        """The ledger row of one object's central write (inside :meth:`State.commit_object`);
        a rewrite of the same central key updates it in place."""
        ce = o.central
        if ce is None:
            return
        if o.rewrite:
            c.execute("DELETE FROM ledger WHERE central_key = ?", (ce.key,))
        c.execute(
            "INSERT INTO ledger (central_key, source_bucket, source_key, account_id, "
            "region, events, bytes, sha256, first_event_time, last_event_time, "
            "written_at, etag) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT(central_key) DO UPDATE SET events=excluded.events, "
            "bytes=excluded.bytes, sha256=excluded.sha256, etag=excluded.etag, "
            "first_event_time=excluded.first_event_time, "
            "last_event_time=excluded.last_event_time",
            (
                ce.key,
                o.source.bucket,
                o.key,
                o.source.account_id,
                o.source.region,
                ce.events,
                ce.size,
                ce.sha256,
                ce.first_event_time,
                ce.last_event_time,
                now,
                ce.etag,
            ),
        )

    def rows(self, after_id: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        q = "SELECT * FROM ledger WHERE id > ? ORDER BY id LIMIT ?"
        return self.db.dicts(q, (after_id, limit))

    def max_id(self) -> int:
        row = self.db.fetchone("SELECT coalesce(max(id), 0) FROM ledger")
        return int(row[0]) if row else 0

    def from_id(self, ledger_id: int, limit: int = 64) -> list[dict[str, Any]]:
        """Rows with id >= ``ledger_id``, in id order."""
        q = f"SELECT {_POSITION} FROM ledger WHERE id >= ? ORDER BY id LIMIT ?"
        return self.db.dicts(q, (ledger_id, limit))

    def sha256_of(self, central_key: str) -> str | None:
        """The SHA-256 (hex) the ledger recorded for ``central_key``, or None."""
        row = self.db.fetchone("SELECT sha256 FROM ledger WHERE central_key=?", (central_key,))
        return str(row[0]) if row and row[0] else None

    def overlapping(self, since: str, until: str) -> list[dict[str, Any]]:
        """Rows whose event-time range overlaps [since, until) (ISO 8601 UTC), in id order."""
        return self.db.dicts(
            f"SELECT {_POSITION} FROM ledger WHERE coalesce(last_event_time, '9999') >= ? "
            "AND coalesce(first_event_time, '0000') < ? ORDER BY id",
            (since, until),
        )

    def written_between(self, start: float, end: float) -> list[dict[str, Any]]:
        """Rows written in [start, end), in id order (what an archive digest covers)."""
        return self.db.dicts(
            "SELECT id, central_key, sha256, bytes, events, account_id, region, "
            "first_event_time, last_event_time, written_at FROM ledger "
            "WHERE written_at >= ? AND written_at < ? ORDER BY id",
            (start, end),
        )

    def written_after(self, after_id: int, *, before: float) -> list[dict[str, Any]]:
        """Rows with id > ``after_id`` written before ``before``, in id order (the next digest's
        objects)."""
        return self.db.dicts(
            "SELECT id, central_key, sha256, bytes, events, written_at FROM ledger "
            "WHERE id > ? AND written_at < ? ORDER BY id",
            (after_id, before),
        )

    def count_from(self, ledger_id: int, cap: int | None = None) -> int:
        """Rows with id >= ``ledger_id`` (counting stops at ``cap``, so a backpressure check
        stays cheap however far behind its reader is)."""
        if cap is None:
            return self.db.count("ledger", "id >= ?", (ledger_id,))
        q = "SELECT count(*) FROM (SELECT 1 FROM ledger WHERE id >= ? LIMIT ?)"
        row = self.db.fetchone(q, (ledger_id, cap))
        return int(row[0]) if row else 0

    def ids_at_or_above(self, floor: int, central_keys: Sequence[str]) -> set[str]:
        """The subset of ``central_keys`` whose ledger id is >= ``floor`` (not forwarded yet)."""
        found: set[str] = set()
        for i in range(0, len(central_keys), 900):
            part = central_keys[i : i + 900]
            q = (
                "SELECT central_key FROM ledger WHERE id >= ? AND central_key IN "
                f"({','.join('?' * len(part))})"
            )
            found.update(r[0] for r in self.db.fetchall(q, (floor, *part)))
        return found

    def prune(self, before_epoch: float, below_id: int | None, *, dry_run: bool = False) -> int:
        """Delete rows written before ``before_epoch`` whose id is below ``below_id`` (the
        slowest reader's position; None: no reader needs them)."""
        if below_id is None:
            return self.db.delete("ledger", "written_at < ?", (before_epoch,), dry_run=dry_run)
        where = "written_at < ? AND id < ?"
        return self.db.delete("ledger", where, (before_epoch, below_id), dry_run=dry_run)
