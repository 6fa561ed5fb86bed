"""Detection's persisted positions (tables made by state migration 10), on top of State.

* ``detect_alerts``  (rule_id, event_key) pairs that already raised an alert, with the alert
  itself (JSON, migration 45: ``ctagg alerts`` lists them)
* ``detect_outbox``  alerts not yet delivered, per sink (at-least-once delivery)
* ``detect_counts``  hourly counts per (account, metric) for rate anomalies
* ``detect_meta``    small named values (the last hour evaluated for anomalies, the ledger
  cursor of the follower)

An alert is remembered and queued for every sink in one transaction, so a crash can neither
lose an alert nor raise it twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson

from aggregator.detect.alerts import Alert
from aggregator.state import State


@dataclass(frozen=True)
class Pending:
    alert: Alert
    attempts: int


@dataclass(frozen=True)
class Stored:
    """A raised alert as remembered (``alert`` is None for ones raised before migration 45,
    which kept only the rule and the event key)."""

    rule_id: str
    event_key: str
    raised_at: float
    alert: Alert | None


class DetectStore:
    def __init__(self, state: State, sinks: Sequence[str] = ()) -> None:
        self.state = state
        self.sinks = tuple(sinks)

    # ------------------------------------------------------------ alerts

    def record(self, alerts: Sequence[Alert]) -> list[Alert]:
        """Alerts not raised before; remembered and queued for every sink atomically."""
        if not alerts:
            return []
        now = time.time()
        out: list[Alert] = []
        with self.state.transaction() as c:
            for a in alerts:
                body = orjson.dumps(a.to_dict()).decode()
                cur = c.execute(
                    "INSERT OR IGNORE INTO detect_alerts (rule_id, event_key, event_epoch, "
                    "created_at, alert) VALUES (?,?,?,?,?)",
                    (a.rule_id, a.event_key, a.event_epoch, now, body),
                )
                if cur.rowcount != 1:
                    continue
                out.append(a)
                if self.sinks:
                    c.executemany(
                        "INSERT OR IGNORE INTO detect_outbox (alert_uid, sink, alert, next_at, "
                        "created_at) VALUES (?,?,?,?,?)",
                        [(a.uid, s, body, 0.0, now) for s in self.sinks],
                    )
        return out

    def stored(
        self, *, since: float | None = None, rule: str | None = None, limit: int | None = None
    ) -> list[Stored]:
        """Remembered alerts, newest first: raised at or after ``since`` (epoch seconds), of
        the rule whose id is ``rule`` or whose title contains it (any case)."""
        q = "SELECT rule_id, event_key, created_at, alert FROM detect_alerts WHERE 1=1"
        args: list[object] = []
        if since is not None:
            q += " AND created_at >= ?"
            args.append(since)
        q += " ORDER BY created_at DESC, rule_id, event_key"
        out: list[Stored] = []
        needle = (rule or "").lower()
        for rule_id, key, at, body in self.state.db.fetchall(q, args):
            alert = Alert.from_dict(orjson.loads(body)) if body else None
            if needle and not (
                rule_id.lower() == needle or (alert is not None and needle in alert.title.lower())
            ):
                continue
            out.append(Stored(rule_id, key, float(at), alert))
            if limit is not None and len(out) >= limit:
                break
        return out

    def prune_alerts(self, before_created: float) -> int:
        with self.state.transaction() as c:
            return c.execute(
                "DELETE FROM detect_alerts WHERE created_at < ?", (before_created,)
            ).rowcount

    # ------------------------------------------------------------ outbox

    def due(self, sink: str, now: float, limit: int = 100) -> list[Pending]:
        with self.state.transaction() as c:
            rows = c.execute(
                "SELECT alert, attempts FROM detect_outbox WHERE sink=? AND next_at <= ? "
                "ORDER BY created_at, alert_uid LIMIT ?",
                (sink, now, limit),
            ).fetchall()
        return [Pending(Alert.from_dict(orjson.loads(r[0])), int(r[1])) for r in rows]

    def delivered(self, sink: str, uids: Iterable[str]) -> None:
        with self.state.transaction() as c:
            c.executemany(
                "DELETE FROM detect_outbox WHERE alert_uid=? AND sink=?", [(u, sink) for u in uids]
            )

    def failed(self, sink: str, uids: Iterable[str], reason: str, next_at: float) -> None:
        with self.state.transaction() as c:
            c.executemany(
                "UPDATE detect_outbox SET attempts=attempts+1, next_at=?, last_error=? "
                "WHERE alert_uid=? AND sink=?",
                [(next_at, reason[:500], u, sink) for u in uids],
            )

    def outbox_size(self) -> int:
        return self.state.count("detect_outbox")

    # ------------------------------------------------------------ hourly counts

    def add_counts(self, rows: Iterable[tuple[str, str, int, int]]) -> None:
        """Add (account_id, metric, hour, n) to the stored counts."""
        with self.state.transaction() as c:
            c.executemany(
                "INSERT INTO detect_counts VALUES (?,?,?,?) ON CONFLICT(account_id, metric, hour) "
                "DO UPDATE SET count = count + excluded.count",
                rows,
            )

    def counts_at(self, hour: int) -> list[tuple[str, str, int]]:
        with self.state.transaction() as c:
            return [
                (r[0], r[1], int(r[2]))
                for r in c.execute(
                    "SELECT account_id, metric, count FROM detect_counts WHERE hour=? "
                    "ORDER BY account_id, metric",
                    (hour,),
                )
            ]

    def series(self, account_id: str, metric: str, first: int, last: int) -> dict[int, int]:
        """Stored counts for hours first..last inclusive (absent hours are not in the dict)."""
        with self.state.transaction() as c:
            return {
                int(r[0]): int(r[1])
                for r in c.execute(
                    "SELECT hour, count FROM detect_counts WHERE account_id=? AND metric=? "
                    "AND hour BETWEEN ? AND ?",
                    (account_id, metric, first, last),
                )
            }

    def first_hour(self, account_id: str) -> int | None:
        with self.state.transaction() as c:
            row = c.execute(
                "SELECT min(hour) FROM detect_counts WHERE account_id=? AND metric='calls'",
                (account_id,),
            ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def prune_counts(self, before_hour: int) -> int:
        with self.state.transaction() as c:
            return c.execute("DELETE FROM detect_counts WHERE hour < ?", (before_hour,)).rowcount

    # ------------------------------------------------------------ meta

    def get_meta(self, name: str) -> str | None:
        with self.state.transaction() as c:
            row = c.execute("SELECT value FROM detect_meta WHERE name=?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def start_cursor(self, name: str, newest: bool) -> int | None:
        """Persist the meta value ``name`` as a ledger position when it is not set yet: 0, or
        with ``newest`` the highest ledger id now (read in the same transaction). Returns the
        position set, or None when the value already existed (it is left as it is)."""
        with self.state.transaction() as c:
            if c.execute("SELECT 1 FROM detect_meta WHERE name=?", (name,)).fetchone():
                return None
            start = 0
            if newest:
                start = int(c.execute("SELECT coalesce(max(id), 0) FROM ledger").fetchone()[0])
            c.execute("INSERT INTO detect_meta VALUES (?,?)", (name, str(start)))
        return start

    def set_meta(self, name: str, value: str) -> None:
        with self.state.transaction() as c:
            c.execute(
                "INSERT INTO detect_meta VALUES (?,?) ON CONFLICT(name) DO UPDATE SET "
                "value=excluded.value",
                (name, value),
            )
