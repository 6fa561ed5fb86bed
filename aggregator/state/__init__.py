"""All persisted positions. The central S3 archive holds the data; this room holds only where
we are, in one SQLite file (WAL) shared by small stores, one per concern:

=====================  =========================================================  ==============
store                  tables                                                     module
=====================  =========================================================  ==============
``checkpoints``        ``objects``, ``prefixes``: handled source objects per day  checkpoints.py
``window``             ``dedupe``: keys of the events already archived            window.py
``ledger``             ``ledger``: central objects written, in commit order       ledger.py
``quarantine``         ``quarantine``: objects that could not be read             quarantine.py
``failures``           ``failures``: per account problems, logged once            quarantine.py
``sources``            ``sources``: per source progress (status, freshness)       sources.py
``jobs``               ``job_runs``: the scheduler's bookkeeping                  jobs.py
``retention_log``      ``retention_log``: what retention removed or kept          jobs.py
``lookup``, ``retry``  ``lookup_cursor``, ``retry_queue``                         integrity.py
``digests``            ``digest_expected``, ``digest_results``                    integrity.py
``archive_digests``    ``archive_digests``: the archive's own digest chain        integrity.py
=====================  =========================================================  ==============

Forwarding (``aggregator/forward/store.py``) and detection (``aggregator/detect/store.py``)
keep their own stores over the same connection. The schema's history is
``aggregator/state/migrations.py``.

Everything a cycle learns about one source object is committed in one transaction
(:meth:`State.commit_object`) *after* its central object was written; a crash in between
repeats the same work and writes the same central key again.

One writer per state (:mod:`aggregator.state.lock`): ``State(path, writer="ctagg once")``
takes the state's exclusive lock first and raises :class:`StateLocked` naming the holder;
``State(path, read_only=True)`` opens the file read-only for commands that only look. A state
that cannot be used (full disk, read-only, unopenable) raises :class:`StorageError` with its
path and the reason.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import AbstractContextManager
from pathlib import Path

from aggregator.state.checkpoints import Checkpoints
from aggregator.state.db import Database, StorageError
from aggregator.state.integrity import ArchiveDigestLog, DigestLog, LookupCursors, RetryQueue
from aggregator.state.jobs import Jobs, RetentionLog
from aggregator.state.ledger import Ledger
from aggregator.state.lock import StateLocked, WriterLock, holder_of
from aggregator.state.migrations import MIGRATIONS
from aggregator.state.quarantine import Failures, Quarantine
from aggregator.state.records import (
    CentralObject,
    ObjectOutcome,
    QuarantineRow,
    SourceRef,
    StatusRow,
)
from aggregator.state.sources import Sources
from aggregator.state.window import DedupeWindow

__all__ = [
    "MIGRATIONS",
    "CentralObject",
    "ObjectOutcome",
    "QuarantineRow",
    "SourceRef",
    "State",
    "StateLocked",
    "StatusRow",
    "StorageError",
    "holder_of",
]


class State:
    """The state file: one connection, one attribute per store. One instance per process."""

    def __init__(
        self, path: str | Path, *, read_only: bool = False, writer: str | None = None
    ) -> None:
        """``writer``: take the state's writer lock first, for this command (``ctagg once``);
        ``read_only``: open without writing anything (no migrations, no lock)."""
        self.writer_lock: WriterLock | None = None
        if writer is not None and str(path) != ":memory:":
            self.writer_lock = WriterLock(str(path), writer).acquire()
        try:
            self.db = Database(path, read_only=read_only)
        except BaseException:
            if self.writer_lock is not None:
                self.writer_lock.release()
            raise
        self.checkpoints = Checkpoints(self.db)
        self.window = DedupeWindow(self.db)
        self.ledger = Ledger(self.db)
        self.quarantine = Quarantine(self.db)
        self.failures = Failures(self.db)
        self.sources = Sources(self.db)
        self.jobs = Jobs(self.db)
        self.retention_log = RetentionLog(self.db)
        self.lookup = LookupCursors(self.db)
        self.retry = RetryQueue(self.db)
        self.digests = DigestLog(self.db)
        self.archive_digests = ArchiveDigestLog(self.db)

    @property
    def path(self) -> str:
        return self.db.path

    @property
    def conn(self) -> sqlite3.Connection:
        return self.db.conn

    def commit_object(self, o: ObjectOutcome) -> None:
        """Record one handled source object in one transaction: its event keys, its ledger row,
        its checkpoint, the end of any quarantine or retry of it, the source's progress."""
        now = time.time()
        bucket = o.source.bucket
        with self.db.transaction() as c:
            DedupeWindow.insert(c, o.new_keys)
            Ledger.record(c, o, now)
            Checkpoints.record(c, o, now)
            Quarantine.release(c, bucket, o.key)
            RetryQueue.release(c, bucket, o.key)
            Sources.note_object(c, o, now)

    def retry_keys(self, source_id: str) -> list[str]:
        """Keys to fetch by name in the next cycle: quarantined objects marked for retry and
        files completeness found missing, which may sit in closed prefixes no longer listed."""
        keys = set(self.quarantine.marked_for_retry(source_id))
        return sorted(keys.union(self.retry.keys(source_id)))

    # ------------------------------------------------------------------ the shared connection

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return self.db.transaction()

    def count(self, table: str) -> int:
        return self.db.count(table)

    def migrate(self) -> list[int]:
        return self.db.migrate()

    def schema_version(self) -> int:
        return self.db.schema_version()

    def healthy(self) -> bool:
        return self.db.healthy()

    def close(self) -> None:
        try:
            self.db.close()
        finally:
            if self.writer_lock is not None:
                self.writer_lock.release()
