"""Listing: per source stream (the log, Insights and digest prefixes of one account × region),
walk the day prefixes that can still change and queue every key not handled yet.

CloudTrail keys do not arrive in key order, so each day prefix is listed whole and compared
with its per-key checkpoints; recent days are listed again for late files, and days older than
the re-list window are closed (compacted) once a cycle listed their stream completely and
handled every object of it.

A stream's first backfill is resumable: the walk of its day prefixes is recorded with every
day of the backfill range as pending (``state.checkpoints.record_walk``), and a day leaves that
list only once one listing of it went through every page. A crash, a LIST that failed all its
retries, or a page sequence cut short leaves the day pending, and the next cycle lists it again
(before this, a stream whose oldest day was recorded was never walked again: the days after it
that the interrupted backfill had not reached were never read).

A stream whose listing fails is the source's error (``ctagg status``, ``ctagg_sources_failing``,
the cycle's ``errors``); the source's other streams are still listed.
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
from aggregator.state import State, StorageError

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
    for d in recent_days(today, relist_days) if relist_days else ():
        days.setdefault(d.isoformat(), day_prefix(stream, d))
    if walked is not None:
        oldest = (today - timedelta(days=backfill_days - 1)).isoformat() if backfill_days else ""
        for p in walked:
            day = day_of(p)
            if day and day >= oldest:
                days.setdefault(day, p)
    return days


class StreamListingFailed(Exception):
    """Some day prefixes of a stream could not be listed (each was logged)."""


class Lister:
    def __init__(
        self, settings: Settings, state: State, gate: Gate, clock: Callable[[], float]
    ) -> None:
        self.settings = settings
        self.state = state
        self.gate = gate
        self.clock = clock

    async def list_source(
        self, src: Source, s3: Any, cycle: Cycle, enqueue: Enqueue, *, streams: bool = True
    ) -> None:
        """Queue the keys to fetch by name (retries), then every new key of each stream. A
        stream whose listing fails is recorded and the source's other streams go on.
        ``streams=False`` (a hints-only cycle): the retries alone, no LIST."""
        failed: list[str] = []
        try:
            for key in self.state.retry_keys(src.source_id):
                cycle.retrying.add((src.bucket, key))
                prefix = key.rsplit("/", 1)[0] + "/"
                stream_id = f"{src.bucket}/{prefix[:-11]}"
                await enqueue(Job(src, stream_id, key, prefix, classify(key), 0, None))
        except StorageError:
            raise
        except Exception as exc:
            failed.append(self._failed(src, src.prefix, exc))
        if not streams:
            if failed:
                cycle.report.errors += len(failed)
                self.state.sources.error(src, "; ".join(failed))
            return
        for stream in stream_prefixes(src.prefix):
            if self.gate.stop.is_set():
                return
            try:
                await self._list_stream(src, s3, stream, cycle, enqueue)
            except StorageError:
                raise  # the state itself failed: the cycle stops (cycle.py)
            except Exception as exc:
                failed.append(self._failed(src, stream, exc))
        if failed:
            cycle.report.errors += len(failed)
            self.state.sources.error(src, "; ".join(failed))
        else:
            self.state.sources.ok(src)

    def _failed(self, src: Source, prefix: str, exc: Exception) -> str:
        if isinstance(exc, StreamListingFailed):
            return str(exc)  # its days were logged one by one
        self._log_failed(src, prefix, exc)
        return f"listing s3://{src.bucket}/{prefix}: {error_message(exc)}"

    @staticmethod
    def _log_failed(src: Source, prefix: str, exc: Exception) -> None:
        log.warning(
            "ingest.list_failed",
            account_id=src.account_id,
            region=src.region,
            bucket=src.bucket,
            key=prefix,
            error_type=error_code(exc),
            reason=error_message(exc),
        )

    async def _list_stream(
        self, src: Source, s3: Any, stream: str, cycle: Cycle, enqueue: Enqueue
    ) -> None:
        cfg = self.settings.collect
        stream_id = f"{src.bucket}/{stream}"
        checkpoints = self.state.checkpoints
        _, open_days = checkpoints.stream_days(stream_id)
        closed = checkpoints.closed_days(stream_id)
        today = utc_today(self.clock)
        if not checkpoints.walked(stream_id):
            walked = await walk_day_prefixes(s3, src.bucket, stream)
            in_range = days_to_list(
                {}, stream, walked, today=today, relist_days=0, backfill_days=cfg.backfill_days
            )
            checkpoints.record_walk(stream_id, src.bucket, in_range)
        days = days_to_list(
            {**checkpoints.pending_days(stream_id), **open_days},
            stream,
            None,
            today=today,
            relist_days=cfg.relist_days,
            backfill_days=cfg.backfill_days,
        )
        failed: list[Exception] = []
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
            try:
                async for obj in list_objects(s3, src.bucket, prefix):
                    found = True
                    if obj.key not in handled and (src.bucket, obj.key) not in cycle.retrying:
                        kind = classify(obj.key)
                        job = Job(src, stream_id, obj.key, prefix, kind, obj.size, obj.etag)
                        await enqueue(job)
                    if self.gate.stop.is_set():
                        return
            except StorageError:
                raise
            except Exception as exc:  # this day stays pending; the stream's other days go on
                failed.append(exc)
                self._log_failed(src, prefix, exc)
                continue
            # every page was read: the day is listed (a failed page raised above, so the day
            # stays pending and is listed again next cycle)
            checkpoints.mark_listed(stream_id, src.bucket, prefix, day, found)
        if failed:
            raise StreamListingFailed(
                f"{len(failed)} day prefix(es) of s3://{src.bucket}/{stream} not listed: "
                f"{error_message(failed[0])}"
            )
        cycle.listed.add(stream_id)

    def close_old_prefixes(self, cycle: Cycle) -> None:
        """Day prefixes older than the re-list window can no longer change: compact them, but
        only for streams listed completely whose objects were all handled this cycle."""
        today = utc_today(self.clock)
        before = (today - timedelta(days=self.settings.collect.relist_days - 1)).isoformat()
        for stream_id in sorted(cycle.listed - cycle.errored):
            self.state.checkpoints.close_prefixes(stream_id, before)
