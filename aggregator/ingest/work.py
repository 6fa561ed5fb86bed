"""What an ingest cycle works on and carries: one :class:`Job` per source object, the
:class:`Cycle` bookkeeping (reset at each start), the :class:`CycleReport`, the :class:`Gate`
that stops or pauses it, and the one way to get an account's session (a failure is recorded
once and the account skipped)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from aggregator.archive import store as central
from aggregator.aws.clients import Session, SessionProvider
from aggregator.aws.errors import error_code, error_message
from aggregator.aws.inventory import Source
from aggregator.ingest.collect import ObjectKind
from aggregator.log import get_logger
from aggregator.state import State

log = get_logger("aggregator.ingest")

# LookupEvents windows are recorded as objects of this pseudo bucket (upper case: no S3 bucket
# can have this name), under ``lookup/<account>/<region>/``.
LOOKUP_BUCKET = "LookupEvents"


@dataclass
class CycleReport:
    accounts: int = 0
    regions: int = 0
    sources: int = 0
    objects: int = 0
    events_in: int = 0
    duplicates: int = 0
    events_archived: int = 0
    quarantined: int = 0
    errors: int = 0
    failed_accounts: int = 0
    central_objects: int = 0
    duration_secs: float = 0.0
    stopped: bool = False
    lookup_windows: int = 0
    lookup_requests: int = 0
    gaps_filled: int = 0
    # the archive as the truth (aggregator/ingest/truth.py)
    readback_days: int = 0  # day prefixes read back
    readback_objects: int = 0  # central objects read back (GETs)
    readback_deferred: int = 0  # objects that wait for the next cycle's read-back budget
    intents_settled: int = 0  # central PUTs without a commit, settled from the archive
    behind_archive: bool = False  # an empty state beside a non-empty archive
    # hint mode (aggregator/ingest/hints.py); all 0 / None without collect.notifications
    relisted: bool | None = None  # this cycle ran the full listing (None: hint mode is off)
    hint_messages: int = 0  # SQS messages received
    hint_messages_deleted: int = 0
    hint_messages_left: int = 0  # not deleted: delivered again (and in the end to the DLQ)
    hint_extensions: int = 0  # visibility timeouts extended (ChangeMessageVisibility)
    hints: int = 0  # object keys the messages named
    hints_queued: int = 0  # keys handed to the workers
    hints_handled_before: int = 0  # keys the checkpoints already had
    hints_ignored: int = 0  # test events, other event types, non-CloudTrail keys, unknown sources
    hints_unparseable: int = 0  # messages that are no notification at all
    hints_forwarded: int = 0  # keys of another shard's pairs sent to its queue
    hints_foreign_dropped: int = 0  # keys of another shard's pairs deleted here
    by_kind: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Job:
    """One source object to handle."""

    source: Source
    stream_id: str
    key: str
    day_prefix: str
    kind: ObjectKind
    size: int
    etag: str | None
    # Central key parts when the key is not a CloudTrail object name (LookupEvents windows).
    parts: central.KeyParts | None = None
    # A hinted job (aggregator/ingest/hints.py): told its outcome ("done", "failed", ...).
    done: Callable[[str], None] | None = field(default=None, compare=False)


@dataclass
class Cycle:
    """What one cycle learns as it goes."""

    report: CycleReport
    failed: set[str]  # accounts whose role could not be assumed (their reads are skipped)
    listed: set[str] = field(default_factory=set)  # streams listed completely
    errored: set[str] = field(default_factory=set)  # streams with an object that failed
    # keys fetched by name this cycle (retries): a listing must not queue them twice
    retrying: set[tuple[str, str]] = field(default_factory=set)
    # files completeness expected that the source bucket no longer has (NoSuchKey)
    gaps: list[tuple[Source, str]] = field(default_factory=list)
    # the state failed (disk full, read-only): the cycle stops and raises it
    broken: BaseException | None = None


class Gate:
    """Stop, pause and pace, checked before each object is queued.

    * ``stop`` is set on shutdown.
    * ``should_pause`` is the forwarder's backpressure predicate (a sink's backlog is full).
      A pause is said: ``ingest.paused`` (WARNING, with ``pause_reason()``) when it starts and
      every ``repeat_secs`` while it lasts, ``ingest.resumed`` when it ends; ``on_change(paused,
      reason)`` lets the daemon show it in ``/readyz`` and ``/metrics``.
    * ``pace``, when set, is awaited before each object is queued (``ctagg backfill``'s rate
      limit).
    """

    def __init__(
        self, should_pause: Callable[[], bool] | None = None, *, repeat_secs: float = 300.0
    ) -> None:
        self.stop = asyncio.Event()
        self.should_pause = should_pause
        self.pause_reason: Callable[[], str] | None = None
        self.on_change: Callable[[bool, str], None] | None = None
        self.pace: Callable[[], Awaitable[None]] | None = None
        self.repeat_secs = repeat_secs
        self.paused_since: float | None = None  # time.time() when the current pause began
        self.pauses = 0  # pauses begun since start
        self._waiting = 0
        self._said = 0.0  # time.monotonic() of the last ingest.paused line

    def _must_pause(self) -> bool:
        return self.should_pause is not None and self.should_pause() and not self.stop.is_set()

    def _reason(self) -> str:
        try:
            return self.pause_reason() if self.pause_reason else "a sink's backlog is full"
        except Exception as exc:  # a reason must never break collection
            return f"a sink's backlog is full ({type(exc).__name__} while asking which)"

    async def wait_unpaused(self) -> None:
        if self._must_pause():
            self._waiting += 1
            if self.paused_since is None:
                self._begin()
            try:
                # Polls a predicate owned by the forwarder (another room); no event to wait on.
                while self._must_pause():
                    await asyncio.sleep(1.0)
                    if time.monotonic() - self._said >= self.repeat_secs and self.paused_since:
                        self._said = time.monotonic()
                        log.warning(
                            "ingest.paused",
                            stage="ingest",
                            reason=self._reason(),
                            duration_secs=round(time.time() - self.paused_since),
                        )
            finally:
                self._waiting -= 1
                if self._waiting == 0 and self.paused_since is not None:
                    self._end()
        if self.pace is not None and not self.stop.is_set():
            await self.pace()

    def _begin(self) -> None:
        self.paused_since = time.time()
        self._said = time.monotonic()
        self.pauses += 1
        reason = self._reason()
        log.warning("ingest.paused", stage="ingest", reason=reason, duration_secs=0)
        if self.on_change is not None:
            self.on_change(True, reason)

    def _end(self) -> None:
        assert self.paused_since is not None
        duration = round(time.time() - self.paused_since, 1)
        self.paused_since = None
        log.info("ingest.resumed", stage="ingest", duration_secs=duration)
        if self.on_change is not None:
            self.on_change(False, "")


async def session_or_skip(
    sessions: SessionProvider, state: State, account_id: str | None, failed: set[str]
) -> Session | None:
    """The account's session, or None after recording (and logging once) why not."""
    try:
        return await sessions.session_for(account_id)
    except Exception as exc:
        account = account_id or "base"
        failed.add(account)
        if state.failures.record(account, "assume_role", error_message(exc)):
            log.warning(
                "credentials.assume_failed",
                account_id=account,
                error_type=getattr(exc, "code", None) or error_code(exc),
                reason=error_message(exc),
            )
        return None


def utc_today(clock: Callable[[], float]) -> date:
    return datetime.fromtimestamp(clock(), UTC).date()
