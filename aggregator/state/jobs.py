"""What the service's jobs did.

* ``job_runs``       per scheduler job: runs, failures, last start / finish / success, last error
* ``retention_log``  what retention removed from the archive or had to keep (Object Lock), so
                     a missing central object is known to be intentional
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from aggregator.state.db import Database


class Jobs:
    def __init__(self, db: Database) -> None:
        self.db = db

    def started(self, job: str, at: float) -> None:
        with self.db.transaction() as c:
            c.execute(
                "INSERT INTO job_runs (job, last_started_at) VALUES (?, ?) "
                "ON CONFLICT(job) DO UPDATE SET last_started_at=excluded.last_started_at",
                (job, at),
            )

    def finished(self, job: str, at: float, error: str | None = None) -> None:
        with self.db.transaction() as c:
            c.execute("INSERT INTO job_runs (job) VALUES (?) ON CONFLICT(job) DO NOTHING", (job,))
            if error is None:
                c.execute(
                    "UPDATE job_runs SET runs=runs+1, last_finished_at=?, last_ok_at=?, "
                    "last_error=NULL WHERE job=?",
                    (at, at, job),
                )
            else:
                c.execute(
                    "UPDATE job_runs SET runs=runs+1, failures=failures+1, last_finished_at=?, "
                    "last_error=? WHERE job=?",
                    (at, error[:500], job),
                )

    def runs(self) -> dict[str, dict[str, Any]]:
        return {r["job"]: r for r in self.db.dicts("SELECT * FROM job_runs ORDER BY job")}


class RetentionLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, rows: Sequence[tuple[str, str, str | None, str, str | None]]) -> None:
        """Record (bucket, key, version_id, action, reason) rows; action 'deleted' | 'locked'."""
        now = time.time()
        with self.db.transaction() as c:
            c.executemany(
                "INSERT INTO retention_log (bucket, key, version_id, action, reason, at) "
                "VALUES (?,?,?,?,?,?)",
                [(*r, now) for r in rows],
            )

    def rows(self, action: str | None = None) -> list[dict[str, Any]]:
        if action:
            return self.db.dicts(
                "SELECT * FROM retention_log WHERE action=? ORDER BY id", (action,)
            )
        return self.db.dicts("SELECT * FROM retention_log ORDER BY id")
