"""Listing: per source stream (the log, Insights and digest prefixes of one account × region),
walk the day prefixes that can still change and queue every key not handled yet.

CloudTrail keys do not arrive in key order, so each day prefix is listed whole and compared
with its per-key checkpoints; recent days are listed again for late files, and days older than
the re-list window are closed (compacted) once a cycle listed their stream completely and
handled every object of it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from typing import Any

from aggregator.aws.errors import error_code, error_message
from aggregator.aws.inventory import Source
from aggregator.config import Settings
from aggregator.ingest.collect import (
    classify,
    day_of,
    day_prefix,
    list_objects,
    recent_days,
    stream_prefixes,
    walk_day_prefixes,
)
from aggregator.ingest.work import Cycle, Gate, Job, utc_today
from aggregator.log import get_logger
from aggregator.state import State

log = get_logger("aggregator.ingest")

Enqueue = Callable[[Job], Awaitable[None]]


def days_to_list(
    open_days: dict[str, str],
    stream: str,
    walked: list[str] | None,
    *,
    today: date,
    relist_days: int,
    backfill_days: int | None,
) -> dict[str, str]:
    """{day: prefix} to list: the open day prefixes, the re-list window, and on first sight
    every existing day (``walked``; limited by ``backfill_days``, 0 = all)."""
    days = dict(open_days)
    for d in recent_days(today, relist_days):
        days.setdefault(d.isoformat(), day_prefix(stream, d))
    if walked is not None:
        oldest = (today - timedelta(days=backfill_days - 1)).isoformat() if backfill_days else ""
        for p in walked:
            day = day_of(p)
            if day and day >= oldest:
                days.setdefault(day, p)
    return days


class Lister:
    def __init__(
        self, settings: Settings, state: State, gate: Gate, clock: Callable[[], float]
    ) -> None:
        self.settings = settings
        self.state = state
        self.gate = gate
        self.clock = clock

    async def list_source(self, src: Source, s3: Any, cycle: Cycle, enqueue: Enqueue) -> None:
        """Queue the keys to fetch by name (retries), then every new key of each stream."""
        try:
            for key in self.state.retry_keys(src.source_id):
                cycle.retrying.add((src.bucket, key))
                prefix = key.rsplit("/", 1)[0] + "/"
                stream_id = f"{src.bucket}/{prefix[:-11]}"
                await enqueue(Job(src, stream_id, key, prefix, classify(key), 0, None))
            for stream in stream_prefixes(src.prefix):
                if self.gate.stop.is_set():
                    return
                await self._list_stream(src, s3, stream, cycle, enqueue)
            self.state.sources.ok(src)
        except Exception as exc:
            cycle.report.errors += 1
            self.state.sources.error(src, error_message(exc))
            log.warning(
                "ingest.list_failed",
                account_id=src.account_id,
                region=src.region,
                bucket=src.bucket,
                key=src.prefix,
                error_type=error_code(exc),
                reason=error_message(exc),
            )

    async def _list_stream(
        self, src: Source, s3: Any, stream: str, cycle: Cycle, enqueue: Enqueue
    ) -> None:
        cfg = self.settings.collect
        stream_id = f"{src.bucket}/{stream}"
        checkpoints = self.state.checkpoints
        seen, open_days = checkpoints.stream_days(stream_id)
        closed = checkpoints.closed_days(stream_id)
        walked = None if seen else await walk_day_prefixes(s3, src.bucket, stream)
        days = days_to_list(
            open_days,
            stream,
            walked,
            today=utc_today(self.clock),
            relist_days=cfg.relist_days,
            backfill_days=cfg.backfill_days,
        )
        for day in sorted(days):
            if day in closed:
                continue
            if self.gate.stop.is_set():
                return
            prefix = days[day]
            is_closed, handled = checkpoints.prefix_state(src.bucket, prefix)
            if is_closed:
                continue
            found = False
            async for obj in list_objects(s3, src.bucket, prefix):
                found = True
                if obj.key not in handled and (src.bucket, obj.key) not in cycle.retrying:
                    kind = classify(obj.key)
                    await enqueue(Job(src, stream_id, obj.key, prefix, kind, obj.size, obj.etag))
                if self.gate.stop.is_set():
                    return
            if found:
                checkpoints.see_prefix(stream_id, src.bucket, prefix, day)
        cycle.listed.add(stream_id)

    def close_old_prefixes(self, cycle: Cycle) -> None:
        """Day prefixes older than the re-list window can no longer change: compact them, but
        only for streams listed completely whose objects were all handled this cycle."""
        today = utc_today(self.clock)
        before = (today - timedelta(days=self.settings.collect.relist_days - 1)).isoformat()
        for stream_id in sorted(cycle.listed - cycle.errored):
            self.state.checkpoints.close_prefixes(stream_id, before)
