"""The dedupe window: the keys of events already archived (``aggregator/ingest/dedupe.py``
makes them).

* ``dedupe``  one row per event key, ``WITHOUT ROWID``: the table is the B-tree of keys

Keys begin with the event's hour as 4 big-endian bytes of the integer YYYYMMDDHH, so the
window is ordered by time and pruned by one key range, with no second index.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime

from aggregator.state.db import Database

# Bound parameters per statement for event-key lookups and inserts: 999 is the lowest limit any
# SQLite build has had (SQLITE_MAX_VARIABLE_NUMBER before 3.32).
_KEYS_PER_STATEMENT = 999


@functools.lru_cache(maxsize=64)
def _known_keys_sql(n: int) -> str:
    return f"SELECT key FROM dedupe WHERE key IN ({','.join('?' * n)})"


@functools.lru_cache(maxsize=64)
def _insert_keys_sql(n: int) -> str:
    return "INSERT OR IGNORE INTO dedupe (key) VALUES " + ",".join(("(?)",) * n)


def hour_floor_key(epoch: float) -> bytes:
    """The smallest key of the hour containing ``epoch`` (for pruning: keys below are older)."""
    return int(datetime.fromtimestamp(epoch, UTC).strftime("%Y%m%d%H")).to_bytes(4, "big")


class DedupeWindow:
    def __init__(self, db: Database) -> None:
        self.db = db

    def known(self, keys: Sequence[bytes]) -> set[bytes]:
        """The subset of ``keys`` already archived (inside the window)."""
        found: set[bytes] = set()
        with self.db.lock:
            conn = self.db.conn
            for i in range(0, len(keys), _KEYS_PER_STATEMENT):
                part = keys[i : i + _KEYS_PER_STATEMENT]
                found.update(r[0] for r in conn.execute(_known_keys_sql(len(part)), part))
        return found

    @staticmethod
    def insert(c: sqlite3.Connection, keys: Sequence[bytes]) -> None:
        """Insert in key order, many rows per statement: an object's keys share a prefix
        (dedupe.key_prefix), so sorted they fill adjacent B-tree pages one after the other
        (measured: 1.1 → 0.5 µs per key against executemany in arrival order)."""
        ordered = sorted(keys)
        for i in range(0, len(ordered), _KEYS_PER_STATEMENT):
            part = ordered[i : i + _KEYS_PER_STATEMENT]
            c.execute(_insert_keys_sql(len(part)), part)

    def prune(self, before_epoch: float, *, dry_run: bool = False) -> int:
        """Forget event keys of hours before the one containing ``before_epoch`` (or, with
        ``dry_run``, count them)."""
        return self.db.delete("dedupe", "key < ?", (hour_floor_key(before_epoch),), dry_run=dry_run)
