"""The integrity room's persisted positions (tables of migration 40 in aggregator/state.py).

* ``lookup_cursor``   per (account, region): LookupEvents read up to this epoch
* ``retry_queue``     source objects completeness found missing; ingest fetches them by key
* ``digest_expected`` every log file a signature-valid CloudTrail digest listed, by hour
* ``digest_results``  the last validation outcome per digest (validated once, not every cycle)
* ``archive_digests`` the central archive's own hourly digests (the chain head is the last)

Kept in its own module so state.py only gains the migration; every function takes the State.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aggregator.state import State

# ---------------------------------------------------------------------------- lookup cursor


def lookup_cursor(state: State, account_id: str, region: str) -> float | None:
    with state._lock:
        row = state.conn.execute(
            "SELECT done_until FROM lookup_cursor WHERE account_id=? AND region=?",
            (account_id, region),
        ).fetchone()
    return float(row[0]) if row else None


def set_lookup_cursor(state: State, account_id: str, region: str, done_until: float) -> None:
    """Advance (never move back) the cursor of one account-region."""
    with state.transaction() as c:
        c.execute(
            "INSERT INTO lookup_cursor VALUES (?,?,?,?) ON CONFLICT(account_id, region) DO "
            "UPDATE SET done_until=max(done_until, excluded.done_until), "
            "updated_at=excluded.updated_at",
            (account_id, region, done_until, time.time()),
        )


# ---------------------------------------------------------------------------- retry queue


@dataclass(frozen=True)
class RetryItem:
    bucket: str
    key: str
    source_id: str
    reason: str
    attempts: int
    queued_at: float


def queue_retry(state: State, items: Iterable[tuple[str, str, str, str]]) -> int:
    """Queue (bucket, key, source_id, reason) rows; returns how many were new."""
    now = time.time()
    with state.transaction() as c:
        before = c.total_changes
        c.executemany(
            "INSERT INTO retry_queue (bucket, key, source_id, reason, queued_at, last_at) "
            "VALUES (?,?,?,?,?,?) ON CONFLICT(bucket, key) DO NOTHING",
            [(b, k, s, r, now, now) for b, k, s, r in items],
        )
        return c.total_changes - before


def retry_items(state: State, source_id: str | None = None) -> list[RetryItem]:
    q = "SELECT bucket, key, source_id, reason, attempts, queued_at FROM retry_queue"
    args: tuple[Any, ...] = ()
    if source_id is not None:
        q += " WHERE source_id=?"
        args = (source_id,)
    with state._lock:
        rows = state.conn.execute(q + " ORDER BY bucket, key", args).fetchall()
    return [RetryItem(*r) for r in rows]


def retry_attempted(state: State, bucket: str, key: str) -> None:
    with state.transaction() as c:
        c.execute(
            "UPDATE retry_queue SET attempts=attempts+1, last_at=? WHERE bucket=? AND key=?",
            (time.time(), bucket, key),
        )


def retry_done(state: State, bucket: str, key: str) -> None:
    with state.transaction() as c:
        c.execute("DELETE FROM retry_queue WHERE bucket=? AND key=?", (bucket, key))


# ---------------------------------------------------------------------------- digests


def record_expected(
    state: State, rows: Iterable[tuple[str, str, str, str, str, str, str, str]]
) -> None:
    """(bucket, key, source_id, account_id, region, hour, hash, digest_key) rows."""
    with state.transaction() as c:
        c.executemany("INSERT OR REPLACE INTO digest_expected VALUES (?,?,?,?,?,?,?,?)", list(rows))


def record_digest_results(
    state: State, rows: Iterable[tuple[str, str, str, str, str, str | None, str, str]]
) -> None:
    """(bucket, key, source_id, account_id, region, end_time, status, detail) rows."""
    now = time.time()
    with state.transaction() as c:
        c.executemany(
            "INSERT OR REPLACE INTO digest_results VALUES (?,?,?,?,?,?,?,?,?)",
            [(*r, now) for r in rows],
        )


def valid_digest_keys(state: State, source_id: str) -> set[str]:
    with state._lock:
        return {
            r[0]
            for r in state.conn.execute(
                "SELECT key FROM digest_results WHERE source_id=? AND status='valid'",
                (source_id,),
            )
        }


def digest_results(state: State) -> list[dict[str, Any]]:
    with state._lock:
        cur = state.conn.execute("SELECT * FROM digest_results ORDER BY bucket, key")
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def expected_between(state: State, since_hour: str, until_hour: str) -> list[dict[str, Any]]:
    """digest_expected rows with since_hour <= hour < until_hour (hours: YYYY-MM-DDTHH)."""
    with state._lock:
        cur = state.conn.execute(
            "SELECT * FROM digest_expected WHERE hour >= ? AND hour < ? "
            "ORDER BY account_id, region, hour, key",
            (since_hour, until_hour),
        )
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


# ---------------------------------------------------------------------------- archive digests


def archive_digest_head(state: State) -> dict[str, Any] | None:
    with state._lock:
        cur = state.conn.execute("SELECT * FROM archive_digests ORDER BY hour DESC LIMIT 1")
        row = cur.fetchone()
        if row is None:
            return None
        return dict(zip([d[0] for d in cur.description], row, strict=True))


def record_archive_digest(
    state: State,
    *,
    hour: str,
    key: str,
    sha256: str,
    signature: str,
    objects: int,
    first_ledger_id: int | None,
    last_ledger_id: int | None,
) -> None:
    with state.transaction() as c:
        c.execute(
            "INSERT OR REPLACE INTO archive_digests VALUES (?,?,?,?,?,?,?,?)",
            (hour, key, sha256, signature, objects, first_ledger_id, last_ledger_id, time.time()),
        )


def ledger_between(state: State, start: float, end: float) -> list[dict[str, Any]]:
    """Ledger rows written in [start, end), in id order."""
    with state._lock:
        cur = state.conn.execute(
            "SELECT id, central_key, sha256, bytes, events, account_id, region, "
            "first_event_time, last_event_time, written_at FROM ledger "
            "WHERE written_at >= ? AND written_at < ? ORDER BY id",
            (start, end),
        )
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
