"""Forwarding's persisted positions: one cursor per connector over the ledger, and the dead
letters (events a sink rejected for good, with the reason).

* ``forward_cursors``       per connector: the ledger row and record offset delivered up to,
                            with delivered / rejected totals
* ``forward_dead_letters``  per (connector, event): the reason and the event's place in the
                            archive (``central_key`` + ``record_index``)

A cursor moves only when every event of a batch is acknowledged one way or the other, in the
same transaction as that batch's dead letters.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aggregator.state import State


@dataclass(frozen=True)
class Cursor:
    """Records of ledger rows with id < ``ledger_id`` are done, and the first ``offset``
    records of row ``ledger_id``."""

    ledger_id: int
    offset: int


@dataclass(frozen=True)
class DeadLetter:
    event_id: str
    central_key: str
    record_index: int
    event_time: str | None
    reason: str


class ForwardStore:
    """Cursors and dead letters over the state's connection (tables of migration 20). Reads of
    the ledger go through the state's ledger store."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.ledger = state.ledger

    def cursor(self, connector: str, start_from: str = "oldest") -> Cursor:
        with self.state.transaction() as c:
            row = c.execute(
                "SELECT ledger_id, record_offset FROM forward_cursors WHERE connector=?",
                (connector,),
            ).fetchone()
            if row is not None:
                return Cursor(int(row[0]), int(row[1]))
            start = 0
            if start_from == "newest":
                start = int(c.execute("SELECT coalesce(max(id), 0) FROM ledger").fetchone()[0]) + 1
            c.execute(
                "INSERT INTO forward_cursors (connector, ledger_id, record_offset, updated_at) "
                "VALUES (?,?,0,?)",
                (connector, start, time.time()),
            )
            return Cursor(start, 0)

    def commit(
        self,
        connector: str,
        cursor: Cursor | None,
        delivered: int,
        dead: Sequence[DeadLetter],
    ) -> None:
        """Dead letters and (optionally) the new cursor, in one transaction."""
        now = time.time()
        with self.state.transaction() as c:
            if dead:
                c.executemany(
                    "INSERT INTO forward_dead_letters (connector, event_id, central_key, "
                    "record_index, event_time, reason, created_at, last_at) "
                    "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(connector, event_id) DO UPDATE SET "
                    "reason=excluded.reason, attempts=attempts+1, last_at=excluded.last_at",
                    [
                        (
                            connector,
                            d.event_id,
                            d.central_key,
                            d.record_index,
                            d.event_time,
                            d.reason[:2000],
                            now,
                            now,
                        )
                        for d in dead
                    ],
                )
            if cursor is not None:
                c.execute(
                    "UPDATE forward_cursors SET ledger_id=?, record_offset=?, "
                    "delivered=delivered+?, rejected=rejected+?, updated_at=? WHERE connector=?",
                    (cursor.ledger_id, cursor.offset, delivered, len(dead), now, connector),
                )

    def backlog(self, connector: str, cap: int | None = None) -> int:
        """Ledger rows not completely forwarded by this connector (counting stops at ``cap``,
        so the backpressure check stays cheap however far behind a connector is)."""
        row = self.state.db.fetchone(
            "SELECT ledger_id FROM forward_cursors WHERE connector=?", (connector,)
        )
        return self.ledger.count_from(int(row[0]) if row else 0, cap)

    def dead_letters(self, connector: str) -> list[dict[str, Any]]:
        q = "SELECT * FROM forward_dead_letters WHERE connector=? ORDER BY id"
        return self.state.db.dicts(q, (connector,))

    def counts(self, connector: str) -> tuple[int, int]:
        q = "SELECT delivered, rejected FROM forward_cursors WHERE connector=?"
        row = self.state.db.fetchone(q, (connector,))
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def floor(self, connectors: Sequence[str]) -> int:
        """The lowest ledger id one of ``connectors`` has not delivered completely (read only:
        a connector without a cursor yet counts from 0, it may still need everything)."""
        if not connectors:
            raise ValueError("no connectors")
        db = self.state.db
        if not db.has_table("forward_cursors"):
            return 0
        q = (
            "SELECT connector, ledger_id FROM forward_cursors WHERE connector IN "
            f"({','.join('?' * len(connectors))})"
        )
        found = {r[0]: r[1] for r in db.fetchall(q, tuple(connectors))}
        return min(int(found.get(name, 0)) for name in connectors)

    def prune_dead_letters(self, before_epoch: float, *, dry_run: bool = False) -> int:
        """Dead letters created before ``before_epoch`` (or, with ``dry_run``, how many)."""
        db = self.state.db
        if not db.has_table("forward_dead_letters"):
            return 0
        where = "created_at < ?"
        return db.delete("forward_dead_letters", where, (before_epoch,), dry_run=dry_run)
