"""Forwarding's persisted positions: one cursor per connector over the ledger, the dead
letters (events a sink rejected for good, with the reason), each connector's state, and
discovery's view of the accounts for enrichment.

* ``forward_cursors``       per connector: the ledger row and record offset delivered up to,
                            with delivered / rejected / filtered totals, the connector's state
                            (``ok``, ``failing``, ``fatal``) with its reason and since when,
                            and when a sink last acknowledged an event
* ``forward_dead_letters``  per (connector, event): the reason and the event's place in the
                            archive (``central_key`` + ``record_index``); ``resolved_at`` and
                            ``resolution`` (``delivered``, ``filtered``) once a retry or a
                            replay delivered it (a new rejection opens it again)
* ``forward_accounts``      discovery's last view of each account (name, OU path, tags) and
                            the organization id, written by the daemon after each discovery:
                            replay and dead-letter retries enrich as the daemon does

A cursor moves only when every event of a batch is acknowledged one way or the other, in the
same transaction as that batch's dead letters.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from aggregator.aws.inventory import Account
from aggregator.state import State

STATES = ("ok", "failing", "fatal")


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


@dataclass(frozen=True)
class ConnectorRow:
    """What ``ctagg status`` shows of one connector (read from the state, any process)."""

    connector: str
    ledger_id: int
    offset: int
    delivered: int
    rejected: int
    filtered: int
    state: str
    state_reason: str | None
    state_since: float | None
    last_delivered_at: float | None
    updated_at: float
    backlog: int
    oldest_pending_written_at: float | None  # the first undelivered central object, or None
    dead_letters_open: int


class ForwardStore:
    """Cursors, dead letters, connector states and the account snapshot over the state's
    connection (tables of migrations 20 and 21). Reads of the ledger go through the state's
    ledger store."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.ledger = state.ledger

    # ------------------------------------------------------------------ cursors

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

    def delivered_between(self, connector: str, first_id: int, last_id: int) -> dict[int, int]:
        """Ledger rows from ``first_id`` to ``last_id`` that a resize imported as already
        delivered to ``connector`` beyond its cursor: id → records delivered (the first ones,
        or all of the row). Empty but for an imported state (aggregator/state/snapshot.py)."""
        rows = self.state.db.fetchall(
            "SELECT ledger_id, records FROM forward_delivered WHERE connector=? "
            "AND ledger_id BETWEEN ? AND ?",
            (connector, first_id, last_id),
        )
        return {int(i): int(n) for i, n in rows}

    def commit(
        self,
        connector: str,
        cursor: Cursor | None,
        delivered: int,
        dead: Sequence[DeadLetter],
        *,
        filtered: int = 0,
    ) -> None:
        """Dead letters and (optionally) the new cursor, in one transaction. A dead letter of
        an event that was dead-lettered before counts one more attempt and is open again."""
        now = time.time()
        with self.state.transaction() as c:
            if dead:
                c.executemany(
                    "INSERT INTO forward_dead_letters (connector, event_id, central_key, "
                    "record_index, event_time, reason, created_at, last_at) "
                    "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(connector, event_id) DO UPDATE SET "
                    "reason=excluded.reason, attempts=attempts+1, last_at=excluded.last_at, "
                    "resolved_at=NULL, resolution=NULL",
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
                    "delivered=delivered+?, rejected=rejected+?, filtered=filtered+?, "
                    "updated_at=?, last_delivered_at=CASE WHEN ? > 0 THEN ? "
                    "ELSE last_delivered_at END WHERE connector=?",
                    (
                        cursor.ledger_id,
                        cursor.offset,
                        delivered,
                        len(dead),
                        filtered,
                        now,
                        delivered,
                        now,
                        connector,
                    ),
                )
                c.execute(  # imported rows the cursor has passed (none but after a resize)
                    "DELETE FROM forward_delivered WHERE connector=? AND ledger_id < ?",
                    (connector, cursor.ledger_id),
                )

    def set_state(self, connector: str, state: str, reason: str | None, since: float) -> None:
        """The connector's state as its lane sees it (written on a change only)."""
        if state not in STATES:
            raise ValueError(f"unknown connector state {state!r}")
        with self.state.transaction() as c:
            c.execute(
                "UPDATE forward_cursors SET state=?, state_reason=?, state_since=? "
                "WHERE connector=?",
                (state, (reason or "")[:500] or None, since, connector),
            )

    def backlog(self, connector: str, cap: int | None = None) -> int:
        """Ledger rows not completely forwarded by this connector (counting stops at ``cap``,
        so the backpressure check stays cheap however far behind a connector is)."""
        row = self.state.db.fetchone(
            "SELECT ledger_id FROM forward_cursors WHERE connector=?", (connector,)
        )
        return self.ledger.count_from(int(row[0]) if row else 0, cap)

    def counts(self, connector: str) -> tuple[int, int]:
        q = "SELECT delivered, rejected FROM forward_cursors WHERE connector=?"
        row = self.state.db.fetchone(q, (connector,))
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def connectors(self, names: Iterable[str] | None = None) -> list[ConnectorRow]:
        """Every connector with a cursor (or only ``names``), with backlog and lag."""
        db = self.state.db
        rows = db.dicts("SELECT * FROM forward_cursors ORDER BY connector")
        wanted = set(names) if names is not None else None
        out = []
        for r in rows:
            if wanted is not None and r["connector"] not in wanted:
                continue
            pending = db.fetchone(
                "SELECT written_at FROM ledger WHERE id >= ? ORDER BY id LIMIT 1",
                (int(r["ledger_id"]),),
            )
            open_dl = db.fetchone(
                "SELECT count(*) FROM forward_dead_letters WHERE connector=? "
                "AND resolved_at IS NULL",
                (r["connector"],),
            )
            out.append(
                ConnectorRow(
                    connector=str(r["connector"]),
                    ledger_id=int(r["ledger_id"]),
                    offset=int(r["record_offset"]),
                    delivered=int(r["delivered"]),
                    rejected=int(r["rejected"]),
                    filtered=int(r["filtered"]),
                    state=str(r["state"]),
                    state_reason=r["state_reason"],
                    state_since=r["state_since"],
                    last_delivered_at=r["last_delivered_at"],
                    updated_at=float(r["updated_at"]),
                    backlog=self.ledger.count_from(int(r["ledger_id"])),
                    oldest_pending_written_at=float(pending[0]) if pending else None,
                    dead_letters_open=int(open_dl[0]) if open_dl else 0,
                )
            )
        return out

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

    # ------------------------------------------------------------------ dead letters

    def dead_letters(
        self,
        connector: str | None = None,
        *,
        include_resolved: bool = False,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Dead letters (open ones unless ``include_resolved``), oldest first."""
        where, args = [], []
        if connector is not None:
            where.append("connector=?")
            args.append(connector)
        if not include_resolved:
            where.append("resolved_at IS NULL")
        q = "SELECT * FROM forward_dead_letters"
        if where:
            q += " WHERE " + " AND ".join(where)
        q += " ORDER BY id"
        if limit is not None:
            q += f" LIMIT {int(limit)}"
        return self.state.db.dicts(q, tuple(args))

    def open_dead_letters(self, connector: str) -> int:
        row = self.state.db.fetchone(
            "SELECT count(*) FROM forward_dead_letters WHERE connector=? AND resolved_at IS NULL",
            (connector,),
        )
        return int(row[0]) if row else 0

    def resolve(
        self, connector: str, event_ids: Iterable[str], resolution: str = "delivered"
    ) -> int:
        """Mark the open dead letters of these events resolved; returns how many were."""
        ids = list(event_ids)
        now = time.time()
        n = 0
        with self.state.transaction() as c:
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                cur = c.execute(
                    "UPDATE forward_dead_letters SET resolved_at=?, resolution=?, last_at=? "
                    "WHERE connector=? AND resolved_at IS NULL AND event_id IN "
                    f"({','.join('?' * len(part))})",
                    (now, resolution, now, connector, *part),
                )
                n += cur.rowcount
        return n

    def note_retry(self, connector: str, event_id: str, reason: str) -> None:
        """A retry that did not deliver: one more attempt, the newest reason."""
        with self.state.transaction() as c:
            c.execute(
                "UPDATE forward_dead_letters SET attempts=attempts+1, reason=?, last_at=? "
                "WHERE connector=? AND event_id=?",
                (reason[:2000], time.time(), connector, event_id),
            )

    def prune_dead_letters(self, before_epoch: float, *, dry_run: bool = False) -> int:
        """Dead letters created before ``before_epoch`` (or, with ``dry_run``, how many)."""
        db = self.state.db
        if not db.has_table("forward_dead_letters"):
            return 0
        where = "created_at < ?"
        return db.delete("forward_dead_letters", where, (before_epoch,), dry_run=dry_run)

    # ------------------------------------------------------------------ accounts

    def save_accounts(self, accounts: Iterable[Account], organization_id: str | None) -> int:
        """Replace the account snapshot with discovery's latest view."""
        now = time.time()
        rows = [
            (
                a.id,
                a.name,
                a.ou_path,
                orjson.dumps(list(a.ou_ids)).decode(),
                orjson.dumps(dict(a.tags)).decode(),
                organization_id,
                now,
            )
            for a in accounts
        ]
        with self.state.transaction() as c:
            c.execute("DELETE FROM forward_accounts")
            c.executemany("INSERT INTO forward_accounts VALUES (?,?,?,?,?,?,?)", rows)
        return len(rows)

    def accounts(self) -> tuple[dict[str, Account], str | None]:
        """The account snapshot (by id) and the organization id; empty before any discovery."""
        out: dict[str, Account] = {}
        org: str | None = None
        for r in self.state.db.dicts("SELECT * FROM forward_accounts"):
            out[str(r["account_id"])] = Account(
                id=str(r["account_id"]),
                name=str(r["name"]),
                ou_path=str(r["ou_path"]),
                ou_ids=tuple(orjson.loads(r["ou_ids"])),
                tags=dict(orjson.loads(r["tags"])),
            )
            org = r["organization_id"] or org
        return out, org
