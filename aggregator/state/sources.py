"""Per source progress, for ``ctagg status``, the freshness gauges and ``/readyz``.

* ``sources``  one row per (account, region, source prefix): the last log object handled, the
               newest eventTime archived, counts (log and Insights objects, events; digests
               apart), and the last error (NULL once it lists cleanly)
"""

from __future__ import annotations

import sqlite3
import time

from aggregator.state.db import Database
from aggregator.state.records import ObjectOutcome, SourceRef, StatusRow


class Sources:
    def __init__(self, db: Database) -> None:
        self.db = db

    @staticmethod
    def touch(c: sqlite3.Connection, src: SourceRef, now: float) -> None:
        c.execute(
            "INSERT INTO sources (source_id, account_id, region, bucket, prefix, trail_arn, "
            "last_cycle_at) VALUES (?,?,?,?,?,?,?) ON CONFLICT(source_id) DO UPDATE SET "
            "last_cycle_at=excluded.last_cycle_at, trail_arn=excluded.trail_arn",
            (src.source_id, src.account_id, src.region, src.bucket, src.prefix, src.trail_arn, now),
        )

    @classmethod
    def note_error(cls, c: sqlite3.Connection, src: SourceRef, error: str, now: float) -> None:
        cls.touch(c, src, now)
        c.execute(
            "UPDATE sources SET errors=errors+1, last_error=? WHERE source_id=?",
            (error[:500], src.source_id),
        )

    @classmethod
    def note_object(cls, c: sqlite3.Connection, o: ObjectOutcome, now: float) -> None:
        cls.touch(c, o.source, now)
        if o.kind == "digest":  # counted apart: "last object" and freshness are log objects
            c.execute(
                "UPDATE sources SET digests=digests+1 WHERE source_id=?", (o.source.source_id,)
            )
            return
        if o.kind not in ("log", "insight"):
            return  # other files under a trail prefix are recorded, not counted
        c.execute(
            "UPDATE sources SET last_key=?, last_object_at=?, objects=objects+1, "
            "events=events+?, newest_event_time=max(coalesce(newest_event_time,''), ?) "
            "WHERE source_id=?",
            (
                o.key,
                now,
                o.central.events if o.central else 0,
                o.newest_event_time or "",
                o.source.source_id,
            ),
        )

    def error(self, src: SourceRef, error: str) -> None:
        with self.db.transaction() as c:
            self.note_error(c, src, error, time.time())

    def ok(self, src: SourceRef) -> None:
        with self.db.transaction() as c:
            self.touch(c, src, time.time())
            c.execute("UPDATE sources SET last_error=NULL WHERE source_id=?", (src.source_id,))

    def status(self) -> list[StatusRow]:
        rows = self.db.fetchall(
            "SELECT source_id, account_id, region, bucket, prefix, last_key, last_object_at, "
            "newest_event_time, objects, events, errors, last_error, digests, trail_arn "
            "FROM sources "
            "ORDER BY account_id, region, source_id"
        )
        return [StatusRow(*r) for r in rows]

    def freshness(self) -> list[tuple[str, str, str | None, float | None, int]]:
        """Per (account, region): newest eventTime, newest archive time, failing sources."""
        rows = self.db.fetchall(
            "SELECT account_id, region, max(nullif(newest_event_time, '')), "
            "max(last_object_at), sum(CASE WHEN last_error IS NULL THEN 0 ELSE 1 END) "
            "FROM sources GROUP BY account_id, region ORDER BY account_id, region"
        )
        return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]
