"""Detection's persisted positions (tables made by state migration 10), on top of State.

* ``detect_alerts``  (rule_id, event_key) pairs that already raised an alert
* ``detect_counts``  hourly counts per (account, metric) for rate anomalies
* ``detect_meta``    small named values (the last hour evaluated for anomalies)
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from aggregator.state import State


class DetectStore:
    def __init__(self, state: State) -> None:
        self.state = state

    # ------------------------------------------------------------ alert dedupe

    def first_time(self, rule_id: str, event_key: str, event_epoch: int) -> bool:
        with self.state.transaction() as c:
            cur = c.execute(
                "INSERT OR IGNORE INTO detect_alerts VALUES (?,?,?,?)",
                (rule_id, event_key, event_epoch, time.time()),
            )
            return cur.rowcount == 1

    def prune_alerts(self, before_created: float) -> int:
        with self.state.transaction() as c:
            return c.execute(
                "DELETE FROM detect_alerts WHERE created_at < ?", (before_created,)
            ).rowcount

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

    def set_meta(self, name: str, value: str) -> None:
        with self.state.transaction() as c:
            c.execute(
                "INSERT INTO detect_meta VALUES (?,?) ON CONFLICT(name) DO UPDATE SET "
                "value=excluded.value",
                (name, value),
            )
