"""What could not be read, and which accounts fail.

* ``quarantine``  source objects that could not be read, with the reason; ``held`` until an
                  operator marks them ``retry`` (``ctagg retry-quarantined``), cleared when a
                  later attempt succeeds
* ``failures``    per (account, stage) problems (assume-role denied, ...): logged once per
                  reason, counted every time
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from aggregator.state.db import Database
from aggregator.state.records import QuarantineRow, SourceRef
from aggregator.state.sources import Sources


class Quarantine:
    def __init__(self, db: Database) -> None:
        self.db = db

    def hold(self, src: SourceRef, key: str, reason: str) -> None:
        """Quarantine one object; the source's status shows it as its last error."""
        now = time.time()
        with self.db.transaction() as c:
            c.execute(
                "INSERT INTO quarantine (bucket, key, source_id, account_id, region, reason, "
                "status, attempts, first_at, last_at) VALUES (?,?,?,?,?,?,'held',1,?,?) "
                "ON CONFLICT(bucket, key) DO UPDATE SET reason=excluded.reason, status='held', "
                "attempts=attempts+1, last_at=excluded.last_at",
                (src.bucket, key, src.source_id, src.account_id, src.region, reason, now, now),
            )
            Sources.note_error(c, src, f"quarantined {key}: {reason}", now)

    @staticmethod
    def release(c: sqlite3.Connection, bucket: str, key: str) -> None:
        """The object was handled after all (inside :meth:`State.commit_object`)."""
        c.execute("DELETE FROM quarantine WHERE bucket=? AND key=?", (bucket, key))

    def rows(self, status: str | None = None) -> list[QuarantineRow]:
        q = "SELECT * FROM quarantine"
        args: tuple[Any, ...] = ()
        if status:
            q += " WHERE status=?"
            args = (status,)
        return [QuarantineRow(*r) for r in self.db.fetchall(q + " ORDER BY bucket, key", args)]

    def retry(self, bucket: str | None = None) -> int:
        """Mark held objects for another attempt in the next cycle."""
        with self.db.transaction() as c:
            if bucket:
                cur = c.execute(
                    "UPDATE quarantine SET status='retry' WHERE status='held' AND bucket=?",
                    (bucket,),
                )
            else:
                cur = c.execute("UPDATE quarantine SET status='retry' WHERE status='held'")
            return cur.rowcount

    def marked_for_retry(self, source_id: str) -> list[str]:
        q = "SELECT key FROM quarantine WHERE source_id=? AND status='retry' ORDER BY key"
        return [r[0] for r in self.db.fetchall(q, (source_id,))]

    def counts(self) -> dict[str, int]:
        q = "SELECT status, count(*) FROM quarantine GROUP BY 1"
        return {r[0]: int(r[1]) for r in self.db.fetchall(q)}


class Failures:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, account_id: str, stage: str, reason: str) -> bool:
        """Count a per-account failure. True when it is new (first, or a different reason)."""
        now = time.time()
        with self.db.transaction() as c:
            row = c.execute(
                "SELECT reason FROM failures WHERE account_id=? AND stage=?", (account_id, stage)
            ).fetchone()
            if row is None:
                c.execute(
                    "INSERT INTO failures VALUES (?,?,?,1,?,?)",
                    (account_id, stage, reason[:500], now, now),
                )
                return True
            c.execute(
                "UPDATE failures SET count=count+1, last_at=?, reason=? "
                "WHERE account_id=? AND stage=?",
                (now, reason[:500], account_id, stage),
            )
            return bool(row[0] != reason[:500])

    def clear(self, account_id: str, stage: str) -> None:
        with self.db.lock:
            self.db.conn.execute(
                "DELETE FROM failures WHERE account_id=? AND stage=?", (account_id, stage)
            )

    def rows(self) -> list[dict[str, Any]]:
        return self.db.dicts("SELECT * FROM failures ORDER BY account_id, stage")
