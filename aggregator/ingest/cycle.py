"""The ingest job: one cycle over every source of an inventory, and its failure policy.

Per source stream (log, Insights and digest prefixes of one account × region) a lister walks
the day prefixes that can still change and queues keys not handled yet; a bounded pool of
workers handles one object at a time:

    fetch → decode → dedupe claim → encode → central write → commit

Decoding and encoding run inline on the event loop (the work holds the GIL; a thread only adds
switches). When every record of a clean gzip object is new, "encode" is nothing: the central
object is the source object, byte for byte.

The commit (event keys, ledger row, checkpoint) happens in one SQLite transaction after the
central write. A crash in between repeats the object and rewrites the same central key.

Failure policy: a bad object is quarantined and the rest goes on; a transient error leaves the
object unhandled (it is tried again next cycle, and its day prefix is not closed); an account
whose role cannot be assumed is recorded once and skipped; nothing stops the other sources.

Alongside, for the account × region pairs ``lookup.lookup_targets`` selects, CloudTrail
``LookupEvents`` windows (``lookup.LookupCollector.cells``) take the same path: each window is a
pseudo source object (bucket ``LookupEvents``, key ``lookup.window_source_key``) that goes
through dedupe → central write → commit, and only then is the pair's cursor moved past it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aioboto3
from aiobotocore.config import AioConfig

from aggregator.archive import store as central
from aggregator.aws.clients import (
    Aws,
    ClientPool,
    SessionProvider,
    error_code,
    error_message,
    is_not_found,
)
from aggregator.aws.discovery import Inventory, Source
from aggregator.config import Settings
from aggregator.ingest.collect import (
    BadObject,
    Decoded,
    ObjectKind,
    classify,
    day_of,
    day_prefix,
    decode_log,
    fetch,
    list_objects,
    recent_days,
    stream_prefixes,
    walk_day_prefixes,
)
from aggregator.ingest.dedupe import key_and_bytes
from aggregator.ingest.lookup import (
    ClientFor,
    LookupCollector,
    LookupWindow,
    Sleep,
    decode_window,
    lookup_targets,
    window_source_key,
)
from aggregator.log import get_logger
from aggregator.state import CentralObject, ObjectOutcome, State

log = get_logger("aggregator.ingest")


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
    by_kind: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Job:
    source: Source
    stream_id: str
    key: str
    day_prefix: str
    kind: ObjectKind
    size: int
    etag: str | None
    # Central key parts when the key is not a CloudTrail object name (LookupEvents windows).
    parts: central.KeyParts | None = None


# LookupEvents windows are recorded as objects of this pseudo bucket (upper case: no S3 bucket
# can have this name), under ``lookup/<account>/<region>/``.
LOOKUP_BUCKET = "LookupEvents"
LOOKUP_MAX_AGE_SECS = 90 * 86400  # LookupEvents keeps 90 days
_LOOKUP_CONFIG = AioConfig(retries={"mode": "standard", "total_max_attempts": 1})

_DONE = object()


class Ingestor:
    """Runs ingest cycles. One instance per process; cycles must not overlap."""

    def __init__(
        self,
        settings: Settings,
        state: State,
        sessions: SessionProvider,
        aws: Aws,
        *,
        clock: Callable[[], float] = time.time,
        should_pause: Callable[[], bool] | None = None,
        sleep: Sleep = asyncio.sleep,
        cloudtrail_client: ClientFor | None = None,
    ) -> None:
        """``cloudtrail_client(account_id, region)`` replaces the LookupEvents client (tests:
        moto has no lookup_events); by default it is a client of the account's session in that
        region, opened once per cycle. ``sleep`` paces LookupEvents (a fake clock in tests)."""
        self.settings = settings
        self.state = state
        self.sessions = sessions
        self.aws = aws
        self.clock = clock
        self.should_pause = should_pause
        self.stop = asyncio.Event()
        # Event keys claimed by objects in flight: two copies of one event in two objects
        # handled at the same time must not both be archived.
        self._claimed: set[bytes] = set()
        self._listed_streams: set[str] = set()
        self._errored_streams: set[str] = set()
        # Keys fetched by name this cycle (retries); a listing must not queue them twice.
        self._retrying: set[tuple[str, str]] = set()
        # Files completeness expected that the source bucket no longer has (NoSuchKey).
        self._gaps: list[tuple[Source, str]] = []
        self._cloudtrail_client = cloudtrail_client
        # LookupEvents clients of the running cycle, per (account, region); closed at its end.
        self._lookup_stack: AsyncExitStack | None = None
        self._lookup_clients: dict[tuple[str, str], Any] = {}
        # One collector for the process: its token buckets pace across cycles too.
        self.lookup = LookupCollector(
            settings.integrity.lookup, self._lookup_client, clock=clock, sleep=sleep
        )

    # ------------------------------------------------------------------ cycle

    async def run(self, inventory: Inventory) -> CycleReport:
        started = time.perf_counter()
        report = CycleReport(
            accounts=len(inventory.accounts),
            regions=len({r for rs in inventory.regions.values() for r in rs}),
            sources=len(inventory.sources),
        )
        failed = self._record_failures(inventory)
        self._listed_streams.clear()
        self._errored_streams.clear()
        self._retrying.clear()
        self._gaps.clear()
        cfg = self.settings.collect
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=cfg.max_concurrency * 4)
        async with ClientPool(self.aws) as pool:
            writer_session = await central.archive_session(self.settings, self.sessions)
            archive = central.Archive(self.settings.archive, await pool.get(writer_session, "s3"))
            workers = [
                asyncio.create_task(self._worker(queue, pool, archive, report))
                for _ in range(cfg.max_concurrency)
            ]
            listers = asyncio.Semaphore(self.settings.discovery.max_concurrency)
            readers = asyncio.Semaphore(self.settings.discovery.max_concurrency)

            async def list_one(src: Source) -> None:
                async with listers:
                    await self._list_source(src, pool, queue, report, failed)

            async def lookup_one(account_id: str, region: str) -> None:
                async with readers:
                    await self._lookup_pair(account_id, region, archive, report, failed)

            self._lookup_stack = AsyncExitStack()
            requests = self.lookup.requests
            try:
                await asyncio.gather(
                    *(list_one(s) for s in inventory.sources),
                    *(
                        lookup_one(a, r)
                        for a, r in lookup_targets(inventory, self.settings.integrity.lookup)
                    ),
                )
                await queue.join()  # every queued object handled: the gaps are known now
                await self._fill_gaps(archive, report, failed)
            finally:
                stack, self._lookup_stack = self._lookup_stack, None
                self._lookup_clients.clear()
                await stack.aclose()
                report.lookup_requests = self.lookup.requests - requests
                for _ in workers:
                    await queue.put(_DONE)
                await asyncio.gather(*workers)
            if not self.stop.is_set():
                self._close_old_prefixes()
        report.failed_accounts = len({f.account_id for f in inventory.failures} | failed)
        report.stopped = self.stop.is_set()
        report.duration_secs = round(time.perf_counter() - started, 3)
        log.info(
            "ingest.cycle_done", **{k: v for k, v in report.as_dict().items() if k != "by_kind"}
        )
        return report

    def _record_failures(self, inventory: Inventory) -> set[str]:
        """Record discovery's failures (logged once per account and stage). Only an account
        whose role cannot be assumed stops the reads done with its credentials; a region that
        failed describe_trails (an SCP, say) must not stop the organization trail."""
        blocked: set[str] = set()
        for f in inventory.failures:
            if f.stage == "assume_role":
                blocked.add(f.account_id)
            stage = f"{f.stage}:{f.region}" if f.region else f.stage
            if self.state.failures.record(f.account_id, stage, f.reason):
                log.warning(
                    "discovery.account_failed",
                    account_id=f.account_id,
                    region=f.region,
                    stage=f.stage,
                    error_type=f.code or f.reason.split(":", 1)[0],
                    reason=f.reason,
                )
        return blocked

    # ------------------------------------------------------------------ listing

    async def _list_source(
        self,
        src: Source,
        pool: ClientPool,
        queue: asyncio.Queue[Any],
        report: CycleReport,
        failed: set[str],
    ) -> None:
        if src.reader_account_id in failed:
            return
        session = await self._session(src.reader_account_id, failed)
        if session is None:
            return
        s3 = await pool.get(session, "s3")
        try:
            for key in self.state.retry_keys(src.source_id):
                self._retrying.add((src.bucket, key))
                prefix = key.rsplit("/", 1)[0] + "/"
                stream_id = f"{src.bucket}/{prefix[:-11]}"
                await self._enqueue(
                    queue, _Job(src, stream_id, key, prefix, classify(key), 0, None)
                )
            for stream in stream_prefixes(src.prefix):
                if self.stop.is_set():
                    return
                await self._list_stream(src, s3, stream, queue)
            self.state.sources.ok(src)
        except Exception as exc:
            report.errors += 1
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

    async def _session(self, account_id: str | None, failed: set[str]) -> aioboto3.Session | None:
        """The account's session, or None after recording (and logging once) why not."""
        try:
            return await self.sessions.session_for(account_id)
        except Exception as exc:
            account = account_id or "base"
            failed.add(account)
            if self.state.failures.record(account, "assume_role", error_message(exc)):
                log.warning(
                    "credentials.assume_failed",
                    account_id=account,
                    error_type=getattr(exc, "code", None) or error_code(exc),
                    reason=error_message(exc),
                )
            return None

    def _days_to_list(
        self, open_days: dict[str, str], stream: str, walked: list[str] | None
    ) -> dict[str, str]:
        """Open day prefixes, the re-list window, and on first sight every existing day
        (limited by backfill_days)."""
        cfg = self.settings.collect
        today = utc_today(self.clock)
        days = dict(open_days)
        for d in recent_days(today, cfg.relist_days):
            days.setdefault(d.isoformat(), day_prefix(stream, d))
        if walked is not None:
            oldest = (
                (today - timedelta(days=cfg.backfill_days - 1)).isoformat()
                if cfg.backfill_days
                else ""
            )
            for p in walked:
                day = day_of(p)
                if day and day >= oldest:
                    days.setdefault(day, p)
        return days

    async def _list_stream(
        self, src: Source, s3: Any, stream: str, queue: asyncio.Queue[Any]
    ) -> None:
        stream_id = f"{src.bucket}/{stream}"
        seen, open_days = self.state.checkpoints.stream_days(stream_id)
        closed = self.state.checkpoints.closed_days(stream_id)
        walked = None if seen else await walk_day_prefixes(s3, src.bucket, stream)
        days = self._days_to_list(open_days, stream, walked)
        for day in sorted(days):
            if day in closed:
                continue
            if self.stop.is_set():
                return
            prefix = days[day]
            is_closed, handled = self.state.checkpoints.prefix_state(src.bucket, prefix)
            if is_closed:
                continue
            found = False
            async for obj in list_objects(s3, src.bucket, prefix):
                found = True
                if obj.key not in handled and (src.bucket, obj.key) not in self._retrying:
                    await self._enqueue(
                        queue,
                        _Job(
                            src, stream_id, obj.key, prefix, classify(obj.key), obj.size, obj.etag
                        ),
                    )
                if self.stop.is_set():
                    return
            if found:
                self.state.checkpoints.see_prefix(stream_id, src.bucket, prefix, day)
        self._listed_streams.add(stream_id)

    def _close_old_prefixes(self) -> None:
        """Day prefixes older than the re-list window can no longer change: compact them, but
        only for streams listed completely whose objects were all handled this cycle."""
        today = utc_today(self.clock)
        before = (today - timedelta(days=self.settings.collect.relist_days - 1)).isoformat()
        for stream_id in sorted(self._listed_streams - self._errored_streams):
            self.state.checkpoints.close_prefixes(stream_id, before)

    async def _enqueue(self, queue: asyncio.Queue[Any], job: _Job) -> None:
        await self._wait_unpaused()
        if not self.stop.is_set():
            await queue.put(job)

    # ------------------------------------------------------------------ LookupEvents

    async def _lookup_client(self, account_id: str, region: str) -> Any:
        if self._cloudtrail_client is not None:
            return await self._cloudtrail_client(account_id, region)
        if self._lookup_stack is None:
            raise RuntimeError("LookupEvents outside an ingest cycle")
        client = self._lookup_clients.get((account_id, region))
        if client is None:
            # botocore must not retry throttling on its own: its retries would bypass the
            # token bucket (2 requests/s); LookupCollector retries through the bucket.
            session = await self.sessions.session_for(account_id)
            kwargs = self.aws.client_kwargs(region)
            kwargs["config"] = kwargs["config"].merge(_LOOKUP_CONFIG)
            client = await self._lookup_stack.enter_async_context(
                session.client("cloudtrail", **kwargs)
            )
            self._lookup_clients[(account_id, region)] = client
        return client

    async def _lookup_pair(
        self,
        account_id: str,
        region: str,
        archive: central.Archive,
        report: CycleReport,
        failed: set[str],
    ) -> None:
        """Read the due windows of one account-region, oldest first; archive each, then move
        the cursor. An error stops this pair only (the window is read again next cycle)."""
        if account_id in failed:
            return
        prefix = f"lookup/{account_id}/{region}/"
        src = Source(f"{LOOKUP_BUCKET}/{prefix}", account_id, region, LOOKUP_BUCKET, prefix)
        if self._cloudtrail_client is None and await self._session(account_id, failed) is None:
            return
        try:
            cursor = self.state.lookup.get(account_id, region)
            cells = self.lookup.cells(cursor)
            if cursor is None and cells:
                # Pin a first run's start (it moves with the clock): a rerun after a crash
                # then reads the same windows, not ones shifted by the time that passed.
                start_cell = cells[0][0] + self.settings.integrity.lookup.overlap_secs
                self.state.lookup.advance(account_id, region, start_cell)
            for start, end in cells:
                await self._wait_unpaused()
                if self.stop.is_set():
                    return  # not committed: this window is read again next run
                started = time.perf_counter()
                window = await self.lookup.read_window(account_id, region, start, end)
                if self.stop.is_set():
                    return
                await self._archive_window(src, window, archive, report, started)
                self.state.lookup.advance(account_id, region, window.end)
                report.lookup_windows += 1
            self.state.sources.ok(src)
            self._listed_streams.add(src.source_id)
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

    async def _fill_gaps(
        self, archive: central.Archive, report: CycleReport, failed: set[str]
    ) -> None:
        """Files the digests say exist but the trail bucket no longer has: read their hour
        (the hour before the file's timestamp, plus five minutes) from LookupEvents and mark
        the key handled. LookupEvents has management events only and 90 days of history;
        what it returns goes through dedupe, so events already archived are not repeated."""
        cfg = self.settings.integrity.lookup
        gaps, self._gaps = self._gaps, []
        if cfg.mode == "off" or not cfg.gap_fill:
            return
        for src, key in gaps:
            parts = central.parse_source_name(key)
            if self.stop.is_set() or parts is None or src.account_id in failed:
                continue
            end = datetime.strptime(parts.ts, "%Y%m%dT%H%MZ").replace(tzinfo=UTC).timestamp()
            start = end - 3600
            if self.clock() - start > LOOKUP_MAX_AGE_SECS:
                continue
            if (
                self._cloudtrail_client is None
                and await self._session(src.account_id, failed) is None
            ):
                continue
            prefix = f"lookup/{src.account_id}/{src.region}/"
            lsrc = Source(
                f"{LOOKUP_BUCKET}/{prefix}", src.account_id, src.region, LOOKUP_BUCKET, prefix
            )
            started = time.perf_counter()
            try:
                window = await self.lookup.read_window(src.account_id, src.region, start, end + 300)
                await self._archive_window(lsrc, window, archive, report, started)
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
        job = _Job(src, src.source_id, key, day_prefix, ObjectKind.LOG, 0, None, parts)
        limit = self.settings.collect.max_record_bytes
        dropped = ""
        try:
            decoded = decode_window(window, max_record_bytes=limit)
        except BadObject:
            # One oversized record must not hold the pair's cursor forever: the others are
            # archived, the window is recorded as quarantined with the reason.
            fits = [r for r in window.records if len(key_and_bytes(dict(r))[1]) <= limit]
            dropped = f"{len(window.records) - len(fits)} record(s) > max_record_bytes"
            window.records = fits
            decoded = decode_window(window, max_record_bytes=limit)
        await self._archive(job, decoded, archive, report, started)
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
        self.state.checkpoints.see_prefix(
            src.source_id, LOOKUP_BUCKET, day_prefix, f"{start:%Y-%m-%d}"
        )

    async def _wait_unpaused(self) -> None:
        # Polls a predicate owned by the forwarder (another room); no event to wait on.
        while self.should_pause is not None and self.should_pause() and not self.stop.is_set():  # noqa: ASYNC110
            await asyncio.sleep(1.0)  # backpressure: a sink's backlog is full

    # ------------------------------------------------------------------ objects

    async def _worker(
        self,
        queue: asyncio.Queue[Any],
        pool: ClientPool,
        archive: central.Archive,
        report: CycleReport,
    ) -> None:
        while True:
            job = await queue.get()
            try:
                if job is _DONE:
                    return
                if self.stop.is_set():
                    continue  # abandoned: not committed, picked up again next run
                await self._handle(job, pool, archive, report)
            finally:
                queue.task_done()

    async def _handle(
        self, job: _Job, pool: ClientPool, archive: central.Archive, report: CycleReport
    ) -> None:
        src = job.source
        report.by_kind[job.kind] = report.by_kind.get(job.kind, 0) + 1
        if job.kind in (ObjectKind.DIGEST, ObjectKind.OTHER):
            # Recorded (completeness reads digests from the source bucket), never archived.
            self.state.commit_object(
                ObjectOutcome(src, job.key, job.day_prefix, job.kind, job.etag, job.size)
            )
            return
        cfg = self.settings.collect
        started = time.perf_counter()
        try:
            if job.size > cfg.max_object_bytes:
                raise BadObject(f"too large: {job.size} bytes compressed")
            session = await self.sessions.session_for(src.reader_account_id)
            s3 = await pool.get(session, "s3")
            data = await fetch(s3, src.bucket, job.key)
            # Inline, not in a thread: the work holds the GIL (orjson), so a thread only adds
            # switches (measured: 10% more CPU per event); one object blocks the loop ~15 ms.
            decoded = decode_log(
                data, max_object_bytes=cfg.max_object_bytes, max_record_bytes=cfg.max_record_bytes
            )
            await self._archive(job, decoded, archive, report, started, source=data)
        except BadObject as exc:
            report.quarantined += 1
            self.state.quarantine.hold(src, job.key, str(exc))
            log.warning(
                "ingest.object_quarantined",
                account_id=src.account_id,
                region=src.region,
                bucket=src.bucket,
                key=job.key,
                reason=str(exc),
            )
        except Exception as exc:
            if is_not_found(exc) and self.state.retry.contains(src.bucket, job.key):
                self._gaps.append((src, job.key))  # filled from LookupEvents after the queue
                log.warning(
                    "ingest.source_file_missing",
                    account_id=src.account_id,
                    region=src.region,
                    bucket=src.bucket,
                    key=job.key,
                )
                return
            report.errors += 1
            self._errored_streams.add(job.stream_id)
            self.state.sources.error(src, f"{job.key}: {error_message(exc)}")
            log.warning(
                "ingest.object_failed",
                account_id=src.account_id,
                region=src.region,
                bucket=src.bucket,
                key=job.key,
                error_type=error_code(exc),
                reason=error_message(exc),
            )

    async def _archive(
        self,
        job: _Job,
        decoded: Decoded,
        archive: central.Archive,
        report: CycleReport,
        started: float,
        *,
        source: bytes | None = None,
    ) -> None:
        """Dedupe, write the central object, commit. ``source``: the object's bytes as fetched,
        archived as they are when every record is new and they are clean gzip."""
        src = job.source
        known = self.state.window.known(decoded.keys)
        # Claim synchronously (no await between check and claim) so concurrent objects holding
        # the same event cannot both keep it.
        keep: list[int] = []
        mine: list[bytes] = []
        seen_here: set[bytes] = set()
        for i, k in enumerate(decoded.keys):
            if k in known or k in self._claimed or k in seen_here:
                continue
            seen_here.add(k)
            keep.append(i)
        self._claimed.update(seen_here)
        mine.extend(seen_here)
        try:
            ce: CentralObject | None = None
            if keep:
                times = [decoded.times[i] for i in keep if decoded.times[i]]
                kp = (
                    job.parts
                    or central.parse_source_name(job.key)
                    or central.KeyParts(
                        src.account_id,
                        src.region,
                        central.ts_from_event_time(min(times) if times else None)
                        or "19700101T0000Z",
                        job.kind == ObjectKind.INSIGHT,
                    )
                )
                key = central.central_key(self.settings.archive.prefix, kp, src.bucket, job.key)
                if source is not None and decoded.verbatim and len(keep) == len(decoded.keys):
                    body = source
                else:
                    body = central.encode_records(
                        [decoded.record_bytes(i) for i in keep],
                        self.settings.archive.compress_level,
                    )
                sha = await archive.put(key, body)
                ce = CentralObject(
                    key,
                    len(body),
                    sha,
                    len(keep),
                    min(times, default=None),
                    max(times, default=None),
                )
            outcome = ObjectOutcome(
                source=src,
                key=job.key,
                day_prefix=job.day_prefix,
                kind=job.kind,
                etag=job.etag,
                size=job.size,
                events_in=len(decoded.keys),
                duplicates=len(decoded.keys) - len(keep),
                new_keys=[decoded.keys[i] for i in keep],
                central=ce,
                newest_event_time=max(decoded.times, default=None) or None,
            )
            self.state.commit_object(outcome)
        finally:
            self._claimed.difference_update(mine)
        report.objects += 1
        report.events_in += len(decoded.keys)
        report.duplicates += len(decoded.keys) - len(keep)
        report.events_archived += len(keep)
        report.central_objects += 1 if keep else 0
        log.debug(
            "ingest.object_done",
            account_id=src.account_id,
            region=src.region,
            bucket=src.bucket,
            key=job.key,
            events=len(decoded.keys),
            duplicates=len(decoded.keys) - len(keep),
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )


def utc_today(clock: Callable[[], float] = time.time) -> date:
    return datetime.fromtimestamp(clock(), UTC).date()
