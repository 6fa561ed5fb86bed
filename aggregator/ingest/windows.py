"""LookupEvents in the ingest cycle: for the account × region pairs that
``lookup.lookup_targets`` selects, CloudTrail ``LookupEvents`` windows
(``lookup.LookupCollector.cells``) take the same path as source objects. Each window is a
pseudo source object (bucket ``LookupEvents``, key ``lookup.window_source_key``) that goes
through dedupe → central write → commit, and only then is the pair's cursor moved past it.

Gap fill: files the digests say exist but the trail bucket no longer has get their hour read
back from LookupEvents (management events only, 90 days of history); what it returns goes
through dedupe, so events already archived are not repeated.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from aggregator.archive import store as central
from aggregator.aws.clients import Aws, SessionProvider
from aggregator.aws.errors import error_code, error_message
from aggregator.aws.inventory import Source
from aggregator.config import Settings
from aggregator.ingest.collect import BadObject, ObjectKind
from aggregator.ingest.dedupe import key_and_bytes
from aggregator.ingest.lookup import (
    ClientFor,
    LookupCollector,
    LookupWindow,
    Sleep,
    decode_window,
    window_source_key,
)
from aggregator.ingest.truth import Fenced, ReadbackDeferred
from aggregator.ingest.work import (
    LOOKUP_BUCKET,
    Cycle,
    CycleReport,
    Gate,
    Job,
    session_or_skip,
)
from aggregator.ingest.writer import CentralWriter
from aggregator.log import get_logger
from aggregator.state import ObjectOutcome, State, StorageError

log = get_logger("aggregator.ingest")

LOOKUP_MAX_AGE_SECS = 90 * 86400  # LookupEvents keeps 90 days


def _fits(record: Any, limit: int) -> bool:
    """A record that can be keyed and serialized within ``limit`` bytes."""
    if not isinstance(record, dict):
        return False
    try:
        return len(key_and_bytes(dict(record))[1]) <= limit
    except MemoryError:
        raise
    except Exception:  # nested deeper than orjson serializes, and the like
        return False


def lookup_source(account_id: str, region: str) -> Source:
    """The pseudo source of one account-region's LookupEvents windows."""
    prefix = f"lookup/{account_id}/{region}/"
    return Source(f"{LOOKUP_BUCKET}/{prefix}", account_id, region, LOOKUP_BUCKET, prefix)


class LookupWindows:
    def __init__(
        self,
        settings: Settings,
        state: State,
        sessions: SessionProvider,
        aws: Aws,
        writer: CentralWriter,
        *,
        gate: Gate,
        clock: Callable[[], float],
        sleep: Sleep,
        cloudtrail_client: ClientFor | None,
    ) -> None:
        self.settings = settings
        self.state = state
        self.sessions = sessions
        self.aws = aws
        self.writer = writer
        self.gate = gate
        self.clock = clock
        self._cloudtrail_client = cloudtrail_client
        # LookupEvents clients of the running cycle, per (account, region); closed at its end.
        self._stack: AsyncExitStack | None = None
        self._clients: dict[tuple[str, str], Any] = {}
        # One collector for the process: its token buckets pace across cycles too.
        self.collector = LookupCollector(
            settings.integrity.lookup, self._client, clock=clock, sleep=sleep
        )

    @asynccontextmanager
    async def clients(self) -> AsyncIterator[None]:
        """The cycle's LookupEvents clients: opened on first use, closed when it ends."""
        self._stack = AsyncExitStack()
        try:
            yield
        finally:
            stack, self._stack = self._stack, None
            self._clients.clear()
            await stack.aclose()

    async def _client(self, account_id: str, region: str) -> Any:
        if self._cloudtrail_client is not None:
            return await self._cloudtrail_client(account_id, region)
        if self._stack is None:
            raise RuntimeError("LookupEvents outside an ingest cycle")
        client = self._clients.get((account_id, region))
        if client is None:
            # botocore must not retry throttling on its own: its retries would bypass the
            # token bucket (2 requests/s); LookupCollector retries through the bucket.
            session = await self.sessions.session_for(account_id)
            kwargs = self.aws.client_kwargs(region, attempts=1)
            client = await self._stack.enter_async_context(session.client("cloudtrail", **kwargs))
            self._clients[(account_id, region)] = client
        return client

    async def _session_ok(self, account_id: str, cycle: Cycle) -> bool:
        if self._cloudtrail_client is not None:
            return True
        got = await session_or_skip(self.sessions, self.state, account_id, cycle.failed)
        return got is not None

    async def read_pair(
        self, account_id: str, region: str, archive: central.Archive, cycle: Cycle
    ) -> None:
        """Read the due windows of one account-region, oldest first; archive each, then move
        the cursor. An error stops this pair only (the window is read again next cycle)."""
        if account_id in cycle.failed:
            return
        src = lookup_source(account_id, region)
        if not await self._session_ok(account_id, cycle):
            return
        report, stop = cycle.report, self.gate.stop
        try:
            cursor = self.state.lookup.get(account_id, region)
            cells = self.collector.cells(cursor)
            if cursor is None and cells:
                # Pin a first run's start (it moves with the clock): a rerun after a crash
                # then reads the same windows, not ones shifted by the time that passed.
                start_cell = cells[0][0] + self.settings.integrity.lookup.overlap_secs
                self.state.lookup.advance(account_id, region, start_cell)
            for start, end in cells:
                await self.gate.wait_unpaused()
                if stop.is_set():
                    return  # not committed: this window is read again next run
                started = time.perf_counter()
                window = await self.collector.read_window(account_id, region, start, end)
                if stop.is_set():
                    return
                await self._archive_window(src, window, archive, report, started)
                self.state.lookup.advance(account_id, region, window.end)
                report.lookup_windows += 1
            self.state.sources.ok(src)
            cycle.listed.add(src.source_id)
        except ReadbackDeferred:
            return  # the cursor waits: this window is read again next cycle
        except (StorageError, Fenced):
            raise  # the state itself failed: the cycle stops (cycle.py)
        except Exception as exc:
            report.errors += 1
            self.state.sources.error(src, error_message(exc))
            log.warning(
                "ingest.lookup_failed",
                account_id=account_id,
                region=region,
                error_type=error_code(exc),
                reason=error_message(exc),
            )

    async def fill_gaps(self, archive: central.Archive, cycle: Cycle) -> None:
        """Files the digests say exist but the trail bucket no longer has: read their hour
        (the hour before the file's timestamp, plus five minutes) from LookupEvents and mark
        the key handled."""
        cfg = self.settings.integrity.lookup
        gaps, cycle.gaps = cycle.gaps, []
        if cfg.mode == "off" or not cfg.gap_fill:
            return
        report = cycle.report
        for src, key in gaps:
            parts = central.parse_source_name(key)
            if self.gate.stop.is_set() or parts is None or src.account_id in cycle.failed:
                continue
            end = datetime.strptime(parts.ts, "%Y%m%dT%H%MZ").replace(tzinfo=UTC).timestamp()
            start = end - 3600
            if self.clock() - start > LOOKUP_MAX_AGE_SECS:
                continue
            if not await self._session_ok(src.account_id, cycle):
                continue
            lsrc = lookup_source(src.account_id, src.region)
            started = time.perf_counter()
            try:
                window = await self.collector.read_window(
                    src.account_id, src.region, start, end + 300
                )
                await self._archive_window(lsrc, window, archive, report, started)
            except ReadbackDeferred:
                continue  # the file stays missing: filled in a later cycle
            except (StorageError, Fenced):
                raise
            except Exception as exc:
                report.errors += 1
                log.warning(
                    "ingest.gap_fill_failed",
                    account_id=src.account_id,
                    region=src.region,
                    key=key,
                    error_type=error_code(exc),
                    reason=error_message(exc),
                )
                continue
            self.state.commit_object(
                ObjectOutcome(src, key, key.rsplit("/", 1)[0] + "/", "filled", None, 0)
            )
            report.gaps_filled += 1
            log.info(
                "ingest.gap_filled",
                account_id=src.account_id,
                region=src.region,
                bucket=src.bucket,
                key=key,
                events=len(window.records),
            )

    async def _archive_window(
        self,
        src: Source,
        window: LookupWindow,
        archive: central.Archive,
        report: CycleReport,
        started: float,
    ) -> None:
        key = window_source_key(window)
        start = datetime.fromtimestamp(window.start, UTC)
        day_prefix = f"{src.prefix}{start:%Y%m%d}"  # window keys start with it: compactable
        parts = central.KeyParts(src.account_id, src.region, f"{start:%Y%m%dT%H%MZ}", False)
        job = Job(src, src.source_id, key, day_prefix, ObjectKind.LOG, 0, None, parts)
        limit = self.settings.collect.max_record_bytes
        dropped = ""
        try:
            decoded = decode_window(window, max_record_bytes=limit)
        except BadObject:
            # One oversized record must not hold the pair's cursor forever: the others are
            # archived, the window is recorded as quarantined with the reason.
            fits = [r for r in window.records if _fits(r, limit)]
            dropped = (
                f"{len(window.records) - len(fits)} record(s) over max_record_bytes, "
                "not objects, or that cannot be keyed"
            )
            window.records = fits
            decoded = decode_window(window, max_record_bytes=limit)
        await self.writer.write(job, decoded, archive, report, started)
        if dropped:  # after the commit, which clears a quarantine row of the same key
            report.quarantined += 1
            self.state.quarantine.hold(src, key, dropped)
            log.warning(
                "ingest.lookup_records_dropped",
                account_id=src.account_id,
                region=src.region,
                key=key,
                reason=dropped,
            )
        day = f"{start:%Y-%m-%d}"
        self.state.checkpoints.see_prefix(src.source_id, LOOKUP_BUCKET, day_prefix, day)
