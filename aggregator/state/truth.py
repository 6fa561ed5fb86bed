"""What this state knows of the archive beyond its own ledger (issue 13: the archive is the
truth, the window a cache of it):

* ``central_intents``   central keys about to be written: committed before the PUT, removed by
                        the object's commit. One left behind is a PUT that may have reached S3
                        with no commit (a crash, a timeout after the store took it); it is
                        settled from the archive before the next objects are handled.
* ``archive_known``     central objects read back from the archive that this state did not
                        write (another state wrote them: a lost, replaced or restored one).
* ``archive_coverage``  (account, region, kind, day) prefixes of the archive read back: every
                        object there has its event keys in the window (or in flight).
* ``state_meta``        this state's identity (``state_id``), its ``generation`` (one per
                        cycle, also written to the archive's writer marker) and
                        ``trusted_since``: the time before which the archive may hold objects
                        this state never saw.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aggregator.state.db import Database
from aggregator.state.records import CentralObject, SourceRef


@dataclass(frozen=True)
class Intent:
    central_key: str
    source: SourceRef
    source_key: str
    started_at: float


@dataclass(frozen=True)
class KnownObject:
    """A central object this state has on record (its ledger or its read-back)."""

    central_key: str
    etag: str | None
    sha256: str
    events: int
    first_event_time: str | None
    in_ledger: bool
    recorded_at: float  # when its event keys went into the window (written or read back)


class Intents:
    def __init__(self, db: Database) -> None:
        self.db = db

    def begin(self, central_key: str, source: SourceRef, source_key: str) -> None:
        """Committed before the central PUT (its own transaction)."""
        with self.db.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO central_intents (central_key, source_id, source_bucket, "
                "source_key, account_id, region, started_at) VALUES (?,?,?,?,?,?,?)",
                (
                    central_key,
                    source.source_id,
                    source.bucket,
                    source_key,
                    source.account_id,
                    source.region,
                    time.time(),
                ),
            )

    @staticmethod
    def release(c: sqlite3.Connection, central_key: str) -> None:
        c.execute("DELETE FROM central_intents WHERE central_key = ?", (central_key,))

    def drop(self, central_key: str) -> None:
        with self.db.transaction() as c:
            Intents.release(c, central_key)

    def pending(self) -> list[Intent]:
        rows = self.db.dicts("SELECT * FROM central_intents ORDER BY started_at")
        return [
            Intent(
                r["central_key"],
                SourceRef(r["source_id"], r["account_id"], r["region"], r["source_bucket"], ""),
                r["source_key"],
                r["started_at"],
            )
            for r in rows
        ]

    def keys(self) -> set[str]:
        return {r[0] for r in self.db.fetchall("SELECT central_key FROM central_intents")}


class ArchiveKnown:
    """The read-back: central objects not written by this state, and the prefixes read."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def lookup(self, central_key: str) -> KnownObject | None:
        """The object of ``central_key`` as this state knows it: its ledger row, else its
        read-back row, else None."""
        row = self.db.fetchone(
            "SELECT etag, sha256, events, first_event_time, written_at FROM ledger "
            "WHERE central_key = ?",
            (central_key,),
        )
        if row is not None:
            return KnownObject(central_key, row[0], row[1], row[2], row[3], True, row[4])
        row = self.db.fetchone(
            "SELECT etag, sha256, events, first_event_time, read_at FROM archive_known "
            "WHERE central_key = ?",
            (central_key,),
        )
        if row is not None:
            return KnownObject(central_key, row[0], row[1], row[2], row[3], False, row[4])
        return None

    def in_prefix(
        self, day_prefix: str, account: str, region: str, kind: str, day: str
    ) -> dict[str, KnownObject]:
        """Every object on record under one day prefix of the archive, by central key."""
        found: dict[str, KnownObject] = {}
        for r in self.db.fetchall(
            "SELECT central_key, etag, sha256, events, first_event_time, written_at FROM ledger "
            "WHERE central_key >= ? AND central_key < ?",
            (day_prefix, day_prefix + "\uffff"),
        ):
            found[r[0]] = KnownObject(r[0], r[1], r[2], r[3], r[4], True, r[5])
        for r in self.db.fetchall(
            "SELECT central_key, etag, sha256, events, first_event_time, read_at "
            "FROM archive_known WHERE account_id = ? AND region = ? AND kind = ? AND day = ?",
            (account, region, kind, day),
        ):
            found.setdefault(r[0], KnownObject(r[0], r[1], r[2], r[3], r[4], False, r[5]))
        return found

    @staticmethod
    def remember(
        c: sqlite3.Connection,
        ce: CentralObject,
        *,
        account: str,
        region: str,
        kind: str,
        day: str,
    ) -> None:
        c.execute(
            "INSERT OR REPLACE INTO archive_known (central_key, account_id, region, kind, day, "
            "etag, sha256, bytes, events, first_event_time, last_event_time, read_at) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                ce.key,
                account,
                region,
                kind,
                day,
                ce.etag,
                ce.sha256,
                ce.size,
                ce.events,
                ce.first_event_time,
                ce.last_event_time,
                time.time(),
            ),
        )

    @staticmethod
    def forget(c: sqlite3.Connection, central_key: str) -> None:
        c.execute("DELETE FROM archive_known WHERE central_key = ?", (central_key,))

    # -------------------------------------------------------------- coverage

    def covered(self, account: str, region: str, kind: str, days: Sequence[str]) -> set[str]:
        """The subset of ``days`` read back for this account, region and kind."""
        if not days:
            return set()
        q = (
            "SELECT day FROM archive_coverage WHERE account_id = ? AND region = ? AND kind = ? "
            f"AND day IN ({','.join('?' * len(days))})"
        )
        return {r[0] for r in self.db.fetchall(q, (account, region, kind, *days))}

    def cover(self, account: str, region: str, kind: str, day: str, objects: int) -> None:
        with self.db.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO archive_coverage VALUES (?,?,?,?,?,?)",
                (account, region, kind, day, objects, time.time()),
            )

    def uncover_all(self) -> int:
        with self.db.transaction() as c:
            return c.execute("DELETE FROM archive_coverage").rowcount

    def prune_coverage(self, through_day: str) -> int:
        """Forget the read-back of days up to ``through_day`` (their event keys left the
        window)."""
        return self.db.delete("archive_coverage", "day <= ?", (through_day,), dry_run=False)

    def prune(self, read_before: float, *, dry_run: bool = False) -> int:
        """Forget read-back objects recorded before ``read_before`` (with the ledger's rows)."""
        return self.db.delete("archive_known", "read_at < ?", (read_before,), dry_run=dry_run)


class StateMeta:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, name: str) -> str | None:
        row = self.db.fetchone("SELECT value FROM state_meta WHERE name = ?", (name,))
        return None if row is None else str(row[0])

    def set(self, **values: Any) -> None:
        with self.db.transaction() as c:
            for name, value in values.items():
                c.execute(
                    "INSERT OR REPLACE INTO state_meta (name, value) VALUES (?, ?)",
                    (name, str(value)),
                )

    def identity(self) -> tuple[str, int]:
        """(state_id, generation); a state without one gets a new random id at generation 0."""
        sid = self.get("state_id")
        if sid is None:
            sid = uuid.uuid4().hex
            self.set(state_id=sid, generation=0)
        return sid, int(self.get("generation") or 0)

    def trusted_since(self) -> float | None:
        v = self.get("trusted_since")
        return None if v is None else float(v)
