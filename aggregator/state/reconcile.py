"""What ``ctagg reconcile`` reads and repairs in the state (aggregator/integrity/reconcile.py
does the work): the rows that say which central objects this state knows, by key range.

* ``ledger``           central objects this state wrote (``id`` is the forwarders' position)
* ``archive_known``    central objects read back from the archive (not written by this state)
* ``central_intents``  central keys whose PUT may be in flight (or crashed before its commit)

A key range ``[lo, hi)`` is one account, kind and region over a run of days: the layout's
``YYYY/MM/DD`` sorts by date, so one range query on the unique ``central_key`` index covers it.
Repairs change one object's row in place (a rewrite), delete it (an object removed), or adopt an
object the archive holds into ``archive_known`` with its event keys in the dedupe window, each
in one transaction.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aggregator.state.db import Database
from aggregator.state.window import DedupeWindow

LEDGER = "ledger"
KNOWN = "archive_known"
_TABLES = (LEDGER, KNOWN)


@dataclass(frozen=True)
class KnownRow:
    """A central object the state counts as known: from the ledger (``ledger_id`` set) or from
    ``archive_known``."""

    table: str  # ledger | archive_known
    central_key: str
    sha256: str
    bytes: int
    events: int
    etag: str | None
    ledger_id: int | None


@dataclass(frozen=True)
class Adopted:
    """An object of the archive this state did not write, to be counted as known."""

    central_key: str
    account_id: str
    region: str
    kind: str
    day: str
    etag: str | None
    sha256: str
    bytes: int
    events: int
    first_event_time: str | None
    last_event_time: str | None


class ReconcileRows:
    def __init__(self, db: Database) -> None:
        self.db = db
        # a read-only state of an older schema (before migration 60) has neither table yet
        self._truth = db.has_table("archive_known") and db.has_table("central_intents")

    # ------------------------------------------------------------------ reading

    def intents(self, lo: str, hi: str) -> set[str]:
        """Central keys in ``[lo, hi)`` whose write may be in flight."""
        if not self._truth:
            return set()
        q = "SELECT central_key FROM central_intents WHERE central_key >= ? AND central_key < ?"
        return {r[0] for r in self.db.fetchall(q, (lo, hi))}

    def known(self, lo: str, hi: str) -> dict[str, KnownRow]:
        """Ledger and ``archive_known`` rows with a key in ``[lo, hi)``, by key (a key in both
        is the ledger's)."""
        out: dict[str, KnownRow] = {}
        if self._truth:
            q = (
                "SELECT central_key, sha256, bytes, events, etag FROM archive_known "
                "WHERE central_key >= ? AND central_key < ?"
            )
            for key, sha, size, events, etag in self.db.fetchall(q, (lo, hi)):
                out[key] = KnownRow(KNOWN, key, sha, int(size), int(events), etag, None)
        etag_col = "etag" if self._truth else "NULL"
        q = (
            f"SELECT central_key, sha256, bytes, events, {etag_col}, id FROM ledger "
            "WHERE central_key >= ? AND central_key < ?"
        )
        for key, sha, size, events, etag, lid in self.db.fetchall(q, (lo, hi)):
            out[key] = KnownRow(LEDGER, key, sha, int(size), int(events), etag, int(lid))
        return out

    def row(self, central_key: str) -> KnownRow | None:
        """One key's row now (a second look before a finding is reported)."""
        got = self.known(central_key, central_key + "\0")
        return got.get(central_key)

    def in_flight(self, central_key: str) -> bool:
        return bool(self.intents(central_key, central_key + "\0"))

    def account_regions(self) -> set[tuple[str, str]]:
        """Every (account, region) the ledger and ``archive_known`` have rows of (a day the
        archive lost entirely is still looked for)."""
        q = "SELECT DISTINCT account_id, region FROM ledger"
        if self._truth:
            q += " UNION SELECT DISTINCT account_id, region FROM archive_known"
        return {(a, r) for a, r in self.db.fetchall(q)}

    # ------------------------------------------------------------------ repairing

    def rewritten(
        self,
        row: KnownRow,
        *,
        sha256: str,
        size: int,
        events: int,
        etag: str | None,
        first_event_time: str | None,
        last_event_time: str | None,
    ) -> None:
        """The object of ``row`` was rewritten with fewer events: its row follows, in place
        (a ledger row keeps its id, so forwarders' positions stay valid)."""
        assert row.table in _TABLES
        with self.db.transaction() as c:
            c.execute(
                f"UPDATE {row.table} SET sha256=?, bytes=?, events=?, etag=?, "
                "first_event_time=?, last_event_time=? WHERE central_key=?",
                (sha256, size, events, etag, first_event_time, last_event_time, row.central_key),
            )

    def removed(self, row: KnownRow) -> None:
        """The object of ``row`` was deleted (every event it held is in another object)."""
        assert row.table in _TABLES
        with self.db.transaction() as c:
            c.execute(f"DELETE FROM {row.table} WHERE central_key=?", (row.central_key,))

    def adopt(self, obj: Adopted, event_keys: Sequence[bytes], now: float | None = None) -> None:
        """Count an object of the archive as known (``archive_known``) and its events as
        archived (the dedupe window), in one transaction."""
        at = time.time() if now is None else now
        with self.db.transaction() as c:
            c.execute(
                "INSERT INTO archive_known (central_key, account_id, region, kind, day, etag, "
                "sha256, bytes, events, first_event_time, last_event_time, read_at) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(central_key) DO UPDATE SET "
                "etag=excluded.etag, sha256=excluded.sha256, bytes=excluded.bytes, "
                "events=excluded.events, first_event_time=excluded.first_event_time, "
                "last_event_time=excluded.last_event_time, read_at=excluded.read_at",
                _adopted_values(obj, at),
            )
            DedupeWindow.insert(c, event_keys)


def _adopted_values(o: Adopted, at: float) -> tuple[Any, ...]:
    return (
        o.central_key,
        o.account_id,
        o.region,
        o.kind,
        o.day,
        o.etag,
        o.sha256,
        o.bytes,
        o.events,
        o.first_event_time,
        o.last_event_time,
        at,
    )
