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
``intents``            ``central_intents``: central PUTs not committed yet        truth.py
``archive_known``      ``archive_known``, ``archive_coverage``: the read-back     truth.py
``meta``               ``state_meta``: the state's identity and generation        truth.py
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
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
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
from aggregator.state.truth import ArchiveKnown, Intents, StateMeta
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
        self.intents = Intents(self.db)
        self.archive_known = ArchiveKnown(self.db)
        self.meta = StateMeta(self.db)
        self._window_floor: str | None = None

    @property
    def path(self) -> str:
        return self.db.path

    @property
    def conn(self) -> sqlite3.Connection:
        return self.db.conn

    def commit_object(self, o: ObjectOutcome) -> None:
        """Record one handled source object in one transaction: its event keys, its ledger row
        (ending its central intent), its checkpoint, the end of any quarantine or retry of it,
        the source's progress."""
        now = time.time()
        bucket = o.source.bucket
        with self.db.transaction() as c:
            DedupeWindow.insert(c, o.new_keys)
            Ledger.record(c, o, now)
            if o.central is not None:
                Intents.release(c, o.central.key)
                ArchiveKnown.forget(c, o.central.key)
            Checkpoints.record(c, o, now)
            Quarantine.release(c, bucket, o.key)
            RetryQueue.release(c, bucket, o.key)
            Sources.note_object(c, o, now)

    def adopt(self, o: ObjectOutcome) -> None:
        """Put a central object found in the archive on the ledger (a PUT whose commit never
        happened, settled from its intent): its ledger row and event keys, the end of its
        intent. The source object's checkpoint is left as it was (it is handled again and
        finds its events archived)."""
        with self.db.transaction() as c:
            DedupeWindow.insert(c, o.new_keys)
            Ledger.record(c, o, time.time())
            if o.central is not None:
                Intents.release(c, o.central.key)
                ArchiveKnown.forget(c, o.central.key)

    def read_back(
        self,
        ce: CentralObject,
        keys: Sequence[bytes],
        *,
        account: str,
        region: str,
        kind: str,
        day: str,
    ) -> None:
        """One central object read back from the archive: its event keys join the window and
        the object is on record (``archive_known``) unless the ledger has it."""
        with self.db.transaction() as c:
            DedupeWindow.insert(c, keys)
            in_ledger = c.execute("SELECT 1 FROM ledger WHERE central_key = ?", (ce.key,))
            if in_ledger.fetchone() is None:
                ArchiveKnown.remember(c, ce, account=account, region=region, kind=kind, day=day)

    @property
    def window_floor(self) -> str:
        """The oldest hour (YYYY-MM-DDTHH) whose event keys the window still holds ("" while
        nothing was pruned). Read by ingest for every object, so read from the state once and
        then kept: only :meth:`prune_window` moves it (one writer per state)."""
        if self._window_floor is None:
            self._window_floor = self.meta.get("window_floor") or ""
        return self._window_floor

    def reload_floor(self) -> None:
        """Read :attr:`window_floor` from the state again (an import set it)."""
        self._window_floor = None

    def prune_window(self, before_epoch: float, lag_days: int, *, dry_run: bool = False) -> int:
        """Forget event keys of hours before the one containing ``before_epoch`` (the dedupe
        window's retention), and with them the read-back of the days whose objects held them:
        a later copy of such an event is answered from the archive again. ``window_floor``
        (state_meta, and :attr:`window_floor`) is the oldest hour whose keys the window still
        holds."""
        if dry_run:
            return self.window.prune(before_epoch, dry_run=True)
        # The floor and the coverage first, the keys last: a crash in between must never leave
        # a window that forgot keys while still vouching for their hours (they would be
        # archived again, unchecked).
        at = datetime.fromtimestamp(before_epoch, UTC)
        floor = max(at.strftime("%Y-%m-%dT%H"), self.meta.get("window_floor") or "")
        self.meta.set(window_floor=floor, window_pruned_at=time.time())
        self._window_floor = floor
        self.archive_known.prune_coverage((at + timedelta(days=lag_days)).strftime("%Y%m%d"))
        return self.window.prune(before_epoch)

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
