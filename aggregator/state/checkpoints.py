"""Which source objects are handled, per day prefix (not one lexicographic marker: CloudTrail
keys do not arrive in key order).

* ``objects``   source objects handled, with what they gave (kind, events, the central key)
* ``prefixes``  day prefixes seen per stream; a closed prefix is compacted to one summary row
                whose ``keys_z`` keeps the handled names (zlib, ~15 bytes a key), so
                completeness can still ask "was this file handled?" after compaction
* ``stream_walks``   streams whose existing day prefixes were walked (the first backfill)
* ``backfill_days``  per stream, the days that walk found inside the backfill range and whether
                     a listing of each went through every page (``listed_at``); a day still
                     pending is listed again every cycle until one listing completes, so an
                     interrupted backfill (a crash, a failed LIST, a partial page sequence)
                     resumes instead of forgetting the days it had not reached

Quarantined keys count as handled while they are held (``quarantine``): a bad object is not
fetched again until an operator marks it for retry.
"""

from __future__ import annotations

import sqlite3
import time
import zlib

from aggregator.state.db import Database
from aggregator.state.records import ObjectOutcome


class Checkpoints:
    def __init__(self, db: Database) -> None:
        self.db = db

    def prefix_state(self, bucket: str, prefix: str) -> tuple[bool, set[str]]:
        """(closed?, keys already handled) for one day prefix."""
        with self.db.lock:
            conn = self.db.conn
            row = conn.execute(
                "SELECT closed FROM prefixes WHERE bucket=? AND prefix=?", (bucket, prefix)
            ).fetchone()
            if row and row[0]:
                return True, set()
            keys = {
                r[0]
                for r in conn.execute(
                    "SELECT key FROM objects WHERE bucket=? AND prefix=?", (bucket, prefix)
                )
            }
            keys |= {
                r[0]
                for r in conn.execute(
                    "SELECT key FROM quarantine WHERE bucket=? AND key >= ? AND key < ?",
                    (bucket, prefix, prefix + "\uffff"),
                )
            }
            return False, keys

    def is_handled(self, bucket: str, prefix: str, key: str) -> bool:
        """Was this one key handled (or is it held in quarantine)? What :meth:`prefix_state`
        answers for a whole day prefix, for one key (a hint) without reading the day's keys."""
        with self.db.lock:
            conn = self.db.conn
            q = "SELECT 1 FROM objects WHERE bucket=? AND key=?"
            if conn.execute(q, (bucket, key)).fetchone():
                return True
            q = "SELECT 1 FROM quarantine WHERE bucket=? AND key=?"
            if conn.execute(q, (bucket, key)).fetchone():
                return True
            row = conn.execute(
                "SELECT closed, keys_z FROM prefixes WHERE bucket=? AND prefix=?", (bucket, prefix)
            ).fetchone()
        if not (row and row[0] and row[1]):
            return False
        name = key[len(prefix) :] if key.startswith(prefix) else key
        return name in zlib.decompress(row[1]).decode().split("\n")

    def handled_keys(self, bucket: str, prefix: str) -> set[str]:
        """Every key handled under a day prefix, open or closed (closed ones keep a compressed
        list of names, ~15 bytes a key, so completeness checks still work after compaction)."""
        with self.db.lock:
            conn = self.db.conn
            row = conn.execute(
                "SELECT closed, keys_z FROM prefixes WHERE bucket=? AND prefix=?", (bucket, prefix)
            ).fetchone()
            keys = {
                r[0]
                for r in conn.execute(
                    "SELECT key FROM objects WHERE bucket=? AND prefix=?", (bucket, prefix)
                )
            }
        if row and row[0] and row[1]:
            keys.update(prefix + n for n in zlib.decompress(row[1]).decode().split("\n") if n)
        return keys

    def stream_days(self, stream_id: str) -> tuple[bool, dict[str, str]]:
        """(any day prefix seen before?, {day: prefix} of the open ones) for one stream."""
        rows = self.db.fetchall(
            "SELECT day, prefix, closed FROM prefixes WHERE source_id=?", (stream_id,)
        )
        return bool(rows), {day: prefix for day, prefix, closed in rows if not closed}

    def walked(self, stream_id: str) -> bool:
        """Was this stream's tree of day prefixes walked (its backfill range recorded)?"""
        q = "SELECT 1 FROM stream_walks WHERE source_id=?"
        return self.db.fetchone(q, (stream_id,)) is not None

    def record_walk(self, stream_id: str, bucket: str, days: dict[str, str]) -> None:
        """Record a walk: every ``{day: prefix}`` of the backfill range is pending, except days
        already listed completely before (a ``prefixes`` row is written only after a whole
        listing, so a state from before this table keeps what it knows)."""
        now = time.time()
        with self.db.transaction() as c:
            for day, prefix in sorted(days.items()):
                listed = c.execute(
                    "SELECT 1 FROM prefixes WHERE bucket=? AND prefix=?", (bucket, prefix)
                ).fetchone()
                c.execute(
                    "INSERT OR IGNORE INTO backfill_days (source_id, day, bucket, prefix, "
                    "found_at, listed_at) VALUES (?,?,?,?,?,?)",
                    (stream_id, day, bucket, prefix, now, now if listed else None),
                )
            c.execute(
                "INSERT OR REPLACE INTO stream_walks (source_id, walked_at, days) VALUES (?,?,?)",
                (stream_id, now, len(days)),
            )

    def pending_days(self, stream_id: str) -> dict[str, str]:
        """{day: prefix} of the backfill range not listed completely yet."""
        q = "SELECT day, prefix FROM backfill_days WHERE source_id=? AND listed_at IS NULL"
        return {day: prefix for day, prefix in self.db.fetchall(q, (stream_id,))}

    def mark_listed(self, stream_id: str, bucket: str, prefix: str, day: str, found: bool) -> None:
        """One listing of a day prefix went through every page: remember the prefix (when it
        holds anything) and take the day off the backfill's pending list, in one transaction."""
        now = time.time()
        with self.db.transaction() as c:
            if found:
                c.execute(
                    "INSERT OR IGNORE INTO prefixes (bucket, prefix, source_id, day) "
                    "VALUES (?,?,?,?)",
                    (bucket, prefix, stream_id, day),
                )
            c.execute(
                "UPDATE backfill_days SET listed_at=? WHERE source_id=? AND day=? "
                "AND listed_at IS NULL",
                (now, stream_id, day),
            )

    def unlisted_days(self) -> list[dict[str, object]]:
        """Days of a backfill range that no listing went through yet (coverage), oldest
        first: ``source_id`` (the stream), ``day``, ``prefix``, ``found_at``."""
        return self.db.dicts(
            "SELECT source_id, day, bucket, prefix, found_at FROM backfill_days "
            "WHERE listed_at IS NULL ORDER BY day, source_id"
        )

    def closed_days(self, source_id: str) -> set[str]:
        q = "SELECT day FROM prefixes WHERE source_id=? AND closed=1"
        return {r[0] for r in self.db.fetchall(q, (source_id,))}

    def see_prefix(self, source_id: str, bucket: str, prefix: str, day: str) -> None:
        with self.db.lock:
            self.db.conn.execute(
                "INSERT OR IGNORE INTO prefixes (bucket, prefix, source_id, day) VALUES (?,?,?,?)",
                (bucket, prefix, source_id, day),
            )

    def close_prefixes(self, source_id: str, before_day: str) -> int:
        """Compact day prefixes older than ``before_day``: one summary row, no key rows."""
        now = time.time()
        with self.db.transaction() as c:
            rows = c.execute(
                "SELECT bucket, prefix FROM prefixes WHERE source_id=? AND closed=0 AND day<?",
                (source_id, before_day),
            ).fetchall()
            for bucket, prefix in rows:
                n, ev = c.execute(
                    "SELECT count(*), coalesce(sum(events_in),0) FROM objects "
                    "WHERE bucket=? AND prefix=?",
                    (bucket, prefix),
                ).fetchone()
                names = sorted(
                    r[0][len(prefix) :]
                    for r in c.execute(
                        "SELECT key FROM objects WHERE bucket=? AND prefix=?", (bucket, prefix)
                    )
                )
                c.execute(
                    "UPDATE prefixes SET closed=1, objects=objects+?, events=events+?, "
                    "closed_at=?, keys_z=? WHERE bucket=? AND prefix=?",
                    (n, ev, now, zlib.compress("\n".join(names).encode(), 9), bucket, prefix),
                )
                c.execute("DELETE FROM objects WHERE bucket=? AND prefix=?", (bucket, prefix))
            return len(rows)

    def prune_closed(self, before_day: str, *, dry_run: bool = False) -> int:
        """Forget closed day prefixes whose day is before ``before_day`` (YYYY-MM-DD). Only safe
        for days the collector will never list again (older than its backfill horizon)."""
        n = self.db.delete("prefixes", "closed=1 AND day < ?", (before_day,), dry_run=dry_run)
        # the backfill days listed long ago go with them (pending ones stay: they are owed)
        self.db.delete(
            "backfill_days", "listed_at IS NOT NULL AND day < ?", (before_day,), dry_run=dry_run
        )
        return n

    @staticmethod
    def record(c: sqlite3.Connection, o: ObjectOutcome, now: float) -> None:
        """The checkpoint of one handled object (inside :meth:`State.commit_object`)."""
        c.execute(
            "INSERT OR REPLACE INTO objects (bucket, key, prefix, kind, etag, size, "
            "events_in, duplicates, central_key, processed_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                o.source.bucket,
                o.key,
                o.day_prefix,
                o.kind,
                o.etag,
                o.size,
                o.events_in,
                o.duplicates,
                o.central.key if o.central else None,
                now,
            ),
        )
