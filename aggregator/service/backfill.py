"""``ctagg backfill``: collect a window of history, resumably and at a bounded rate.

A thin layer over the ordinary ingest cycle; nothing in ``aggregator/ingest/`` knows about it:

1. **Open the window's day prefixes.** For every source stream (log, Insights, digest prefix),
   the day prefixes that exist in the bucket within [since, until) and are not closed yet are
   recorded as seen and open (``state.checkpoints.see_prefix``) — exactly what the lister does
   when it first meets a stream. A stream never listed before also gets the days its first
   sight would have taken (``collect.backfill_days``), so opening the window never hides them.
2. **Run one ingest cycle**, which lists every open day prefix (the window's included) and
   handles the keys not handled yet, with its usual per-key checkpoints. Recent days are
   collected too, as in any cycle.
3. **Pace it**: the ingest gate's ``pace`` hook (awaited before each object is queued) waits
   on a token bucket fed by the events the state commits (``--rate EVENTS_PER_S``).

Resumable by construction: checkpoints are per key and committed after each central write; an
interrupted run leaves the window's days open, so running the same command again (or the
daemon's next cycle, unpaced) handles what is left and nothing twice. Days are closed
(compacted) at the end of a cycle that listed their stream completely, as always.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from typing import Any

from aggregator.aws.inventory import Inventory, Source
from aggregator.config import Settings
from aggregator.ingest.collect import day_of, stream_prefixes, walk_day_prefixes
from aggregator.log import get_logger
from aggregator.state import ObjectOutcome, State

log = get_logger("aggregator.backfill")

Progress = Callable[[int, int | None], None]  # (objects handled, objects queued so far)
Sleep = Callable[[float], Awaitable[None]]


class EventRate:
    """A token bucket over events: ``spend(n)`` as events are archived, ``wait()`` before the
    next object while the bucket is in debt. Holds one second of events (the burst)."""

    def __init__(
        self,
        per_sec: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if per_sec <= 0:
            raise ValueError("rate must be > 0 events per second")
        self.per_sec = per_sec
        self.capacity = per_sec
        self.tokens = per_sec
        self.clock = clock
        self.sleep = sleep
        self._at = clock()
        self.waited_secs = 0.0

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._at) * self.per_sec)
        self._at = now

    def spend(self, events: int) -> None:
        self._refill()
        self.tokens -= events

    async def wait(self) -> None:
        self._refill()
        while self.tokens < 0:
            secs = -self.tokens / self.per_sec
            self.waited_secs += secs
            await self.sleep(secs)
            self._refill()


class CountingState(State):
    """The state, telling ``on_commit`` about every committed source object (its events) so
    the rate and the progress follow what was really archived."""

    on_commit: Callable[[ObjectOutcome], None] | None = None

    def commit_object(self, o: ObjectOutcome) -> None:
        super().commit_object(o)
        if self.on_commit is not None:
            self.on_commit(o)


@dataclass
class BackfillReport:
    since: str
    until: str | None
    streams: int = 0  # source streams looked at
    days_opened: int = 0  # day prefixes of the window (or first sight) opened now
    days_closed_before: int = 0  # window days already done in an earlier run
    objects: int = 0
    events_in: int = 0
    events_archived: int = 0
    duplicates: int = 0
    quarantined: int = 0
    errors: int = 0
    failed_accounts: int = 0
    stopped: bool = False
    waited_secs: float = 0.0  # time the rate limit held collection back
    duration_secs: float = 0.0
    problems: list[str] = field(default_factory=list)  # streams whose days could not be listed

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _first_sight_oldest(settings: Settings, today: date) -> str:
    """The oldest day the lister takes when it first meets a stream ("" = all history)."""
    n = settings.collect.backfill_days
    return (today - timedelta(days=n - 1)).isoformat() if n else ""


async def open_window(
    settings: Settings,
    state: State,
    inventory: Inventory,
    s3_for: Callable[[Source], Awaitable[Any]],
    *,
    since: date,
    until: date | None,
    report: BackfillReport,
    today: date,
) -> None:
    """Step 1 of the module: record the window's existing, unclosed day prefixes as open."""
    lo, hi = since.isoformat(), until.isoformat() if until else None
    oldest = _first_sight_oldest(settings, today)
    sem = asyncio.Semaphore(settings.discovery.max_concurrency)
    checkpoints = state.checkpoints

    async def one(src: Source) -> None:
        async with sem:
            try:
                s3 = await s3_for(src)
            except Exception as exc:  # the cycle records and reports the account's failure
                report.problems.append(f"{src.source_id}: {type(exc).__name__}")
                return
            for stream in stream_prefixes(src.prefix):
                stream_id = f"{src.bucket}/{stream}"
                report.streams += 1
                try:
                    walked = await walk_day_prefixes(s3, src.bucket, stream)
                except Exception as exc:
                    report.problems.append(f"s3://{src.bucket}/{stream}: {exc}"[:300])
                    continue
                seen, open_days = checkpoints.stream_days(stream_id)
                closed = checkpoints.closed_days(stream_id)
                for prefix in walked:
                    day = day_of(prefix)
                    if day is None or day in open_days:
                        continue
                    in_window = day >= lo and (hi is None or day < hi)
                    first_sight = not seen and day >= oldest
                    if day in closed:
                        report.days_closed_before += 1 if in_window else 0
                        continue
                    if in_window or first_sight:
                        checkpoints.see_prefix(stream_id, src.bucket, prefix, day)
                        report.days_opened += 1

    await asyncio.gather(*(one(s) for s in inventory.sources))


async def backfill(
    settings: Settings,
    since: date,
    until: date | None = None,
    *,
    rate: float | None = None,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.time,
    on_app: Callable[[Any], None] | None = None,
) -> BackfillReport:
    """Collect [since, until) (see the module). ``on_app`` receives the App once built (the
    command uses it to stop on SIGINT: ``app.request_stop()``)."""
    from aggregator.aws.clients import ClientPool
    from aggregator.service.app import App

    started = time.perf_counter()
    report = BackfillReport(since.isoformat(), until.isoformat() if until else None)
    state = CountingState(settings.state.path)
    app = App(settings, state=state, clock=clock)
    if on_app is not None:
        on_app(app)
    limiter = EventRate(rate) if rate else None
    queued = handled = 0

    def committed(o: ObjectOutcome) -> None:
        nonlocal handled
        handled += 1
        if limiter is not None:
            limiter.spend(o.events_in)
        if progress is not None:
            progress(handled, max(queued, handled))

    async def pace() -> None:
        nonlocal queued
        queued += 1
        if limiter is not None:
            await limiter.wait()

    state.on_commit = committed
    app.ingestor.gate.pace = pace
    try:
        await app.check_archive()  # a missing central bucket ends it before anything is read
        inventory = await app.refresh_discovery()
        async with ClientPool(app.aws) as pool:

            async def s3_for(src: Source) -> Any:
                return await pool.get(await app.broker.session_for(src.reader_account_id), "s3")

            today = time.gmtime(clock())
            await open_window(
                settings,
                state,
                inventory,
                s3_for,
                since=since,
                until=until,
                report=report,
                today=date(today.tm_year, today.tm_mon, today.tm_mday),
            )
        log.info(
            "backfill.window_opened",
            stage="backfill",
            count=report.days_opened,
            streams=report.streams,
            days_done_before=report.days_closed_before,
        )
        cycle = await app.run_once()
    finally:
        await app.close()
    for name in (
        "objects",
        "events_in",
        "events_archived",
        "duplicates",
        "quarantined",
        "errors",
        "failed_accounts",
        "stopped",
    ):
        setattr(report, name, getattr(cycle, name))
    report.waited_secs = round(limiter.waited_secs, 3) if limiter else 0.0
    report.duration_secs = round(time.perf_counter() - started, 3)
    log.info("backfill.done", **{k: v for k, v in report.as_dict().items() if k != "problems"})
    return report
