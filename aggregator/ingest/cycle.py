"""The ingest job: one cycle over every source of an inventory, and its failure policy.

Per source stream a lister (:mod:`aggregator.ingest.listing`) queues the keys not handled yet;
a bounded pool of workers handles one object at a time:

    fetch → decode → dedupe claim → encode → central write → commit

Decoding and encoding run inline on the event loop (the work holds the GIL; a thread only adds
switches). When every record of a clean gzip object is new, "encode" is nothing: the central
object is the source object, byte for byte. The archive step is
:mod:`aggregator.ingest.writer`; LookupEvents windows and gap fill take the same path
(:mod:`aggregator.ingest.windows`).

Failure policy: a bad object is quarantined and the rest goes on; a transient error leaves the
object unhandled (it is tried again next cycle, and its day prefix is not closed); an account
whose role cannot be assumed is recorded once and skipped; nothing stops the other sources.
Only the state itself failing (:class:`~aggregator.state.StorageError`: disk full, read-only)
stops the cycle: no object is taken after it, and the cycle raises it (nothing is committed by
half: the failed transaction rolled back).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aggregator.archive import store as central
from aggregator.aws.clients import Aws, ClientPool, SessionProvider
from aggregator.aws.errors import error_code, error_message, is_not_found, is_transient
from aggregator.aws.inventory import Inventory, Source
from aggregator.aws.slots import owns
from aggregator.config import Settings
from aggregator.ingest.collect import BadObject, ObjectKind, decode_log, fetch
from aggregator.ingest.hints import HintIntake
from aggregator.ingest.listing import Lister
from aggregator.ingest.lookup import ClientFor, Sleep, lookup_targets
from aggregator.ingest.resize import Published
from aggregator.ingest.truth import Fenced, ReadbackDeferred
from aggregator.ingest.windows import LookupWindows
from aggregator.ingest.work import Cycle, CycleReport, Gate, Job, session_or_skip
from aggregator.ingest.writer import CentralWriter
from aggregator.log import get_logger
from aggregator.state import ObjectOutcome, State, StorageError

log = get_logger("aggregator.ingest")

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
        self.gate = Gate(should_pause)
        self.writer = CentralWriter(settings, state, clock)
        self.lister = Lister(settings, state, self.gate, clock)
        # hint mode (collect.notifications): None is listing alone, exactly as before
        self.hints: HintIntake | None = None
        if settings.collect.notifications is not None:
            self.hints = HintIntake(settings, state, clock)
        self.windows = LookupWindows(
            settings,
            state,
            sessions,
            aws,
            self.writer,
            gate=self.gate,
            clock=clock,
            sleep=sleep,
            cloudtrail_client=cloudtrail_client,
        )

    @property
    def stop(self) -> asyncio.Event:
        """Set it to stop taking new objects; in-flight ones finish or are abandoned."""
        return self.gate.stop

    @property
    def should_pause(self) -> Callable[[], bool] | None:
        """The backpressure predicate (the forwarder's): collection waits while it is true."""
        return self.gate.should_pause

    @should_pause.setter
    def should_pause(self, fn: Callable[[], bool] | None) -> None:
        self.gate.should_pause = fn

    # ------------------------------------------------------------------ cycle

    @contextlib.asynccontextmanager
    async def _central(self) -> AsyncIterator[tuple[ClientPool, central.Archive]]:
        """A client pool and the central archive through it, as the archive's writer role."""
        async with ClientPool(self.aws) as pool:
            writer_session = await central.archive_session(self.settings, self.sessions)
            yield pool, central.Archive(self.settings.archive, await pool.get(writer_session, "s3"))

    async def check_installation(self) -> None:
        """Raise ``InstallationMismatch`` when the config's shard and slot counts do not fit the
        ones recorded in the central bucket (recording them when none are, resizing when this
        is the process's first check): what every cycle checks first, for a daemon to refuse
        to start, or to take over its pairs before it serves."""
        async with self._central() as (_, archive):
            await self.writer.truth.check_installation(archive)

    async def publish_snapshot(self, *, force: bool = False) -> Published | None:
        """Upload this state's snapshot (between cycles) when ``shard.snapshots`` is on and
        its interval passed (``force``: whenever it is on: at shutdown, after ``ctagg once``).
        What was uploaded, or None when none was due."""
        resizer = self.writer.truth.resizer
        if not (self.settings.shard.snapshots_on and (force or resizer.snapshot_due())):
            return None
        async with self._central() as (_, archive):
            return await resizer.publish(archive)

    async def release(self) -> Published | None:
        """What a process does when it stops writing (a daemon's shutdown, the end of ``ctagg
        once``): its last snapshot when ``shard.snapshots`` is on, then its writer marker says
        it stopped, so a resize need not wait for it (also after a failed snapshot, which is
        raised after: the new shards see it stale and read the archive back)."""
        truth = self.writer.truth
        if not self.settings.shard.snapshots_on and truth.held is None:
            return None  # nothing to upload, no marker of this process's to mark
        async with self._central() as (_, archive):
            try:
                if self.settings.shard.snapshots_on:
                    return await truth.resizer.publish(archive)
                return None
            finally:
                await truth.mark_stopped(archive)

    async def run(self, inventory: Inventory) -> CycleReport:
        started = time.perf_counter()
        report = CycleReport(
            accounts=len(inventory.accounts),
            regions=len({r for rs in inventory.regions.values() for r in rs}),
            sources=len(inventory.sources),
        )
        cycle = Cycle(report, self._record_failures(inventory))
        cfg = self.settings.collect
        hints = self.hints
        relist = hints is None or hints.relist_due()
        if hints is not None:
            report.relisted = relist
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=cfg.max_concurrency * 4)

        async def enqueue(job: Job) -> None:
            await submit(job)

        async def submit(job: Job) -> bool:
            if cycle.broken is not None:  # the state failed: stop listing
                raise cycle.broken
            await self.gate.wait_unpaused()
            if self.stop.is_set():
                return False
            await queue.put(job)
            return True

        async with self._central() as (pool, archive):
            try:
                truth = await self.writer.begin(archive)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                # the marker, the layout record or last cycle's intents met a fault that
                # outlasted the retries: nothing was written, and the next cycle starts over
                report.errors += 1
                log.warning(
                    "ingest.cycle_start_failed",
                    error_type=error_code(exc),
                    reason=error_message(exc),
                )
                return self._done(report, started)
            fence = self.writer.truth.fence
            archive.guard = fence.check  # no central write once the marker may be lost
            renewer = asyncio.create_task(self._renew(archive, fence.secs / 3))
            try:
                workers = [
                    asyncio.create_task(self._worker(queue, pool, archive, cycle))
                    for _ in range(cfg.max_concurrency)
                ]
                listers = asyncio.Semaphore(self.settings.discovery.max_concurrency)
                readers = asyncio.Semaphore(self.settings.discovery.max_concurrency)

                async def list_one(src: Source) -> None:
                    async with listers:
                        if src.reader_account_id in cycle.failed:
                            return
                        session = await session_or_skip(
                            self.sessions, self.state, src.reader_account_id, cycle.failed
                        )
                        if session is not None:
                            s3 = await pool.get(session, "s3")
                            whole = relist or hints is None or hints.must_list(src)
                            await self.lister.list_source(src, s3, cycle, enqueue, streams=whole)

                async def lookup_one(account_id: str, region: str) -> None:
                    async with readers:
                        await self.windows.read_pair(account_id, region, archive, cycle)

                requests = self.windows.collector.requests
                try:
                    async with self.windows.clients():
                        await asyncio.gather(
                            *(list_one(s) for s in inventory.sources),
                            *(
                                lookup_one(a, r)
                                for a, r in lookup_targets(
                                    inventory, self.settings.integrity.lookup
                                )
                                if owns(self.settings.shard, a, r)  # explicit targets too
                            ),
                        )
                        await queue.join()  # every queued object handled: the gaps are known now
                        if cycle.broken is not None:
                            raise cycle.broken
                        if hints is not None and not self.stop.is_set():
                            # after the listing: what it queued is committed, so the hints of it
                            # are known handled and deleted without a second fetch
                            await hints.drain(
                                pool, self.sessions, inventory, cycle, submit, stop=self.stop
                            )
                            await queue.join()
                            if cycle.broken is not None:
                                raise cycle.broken
                        await self.windows.fill_gaps(archive, cycle)
                finally:
                    report.lookup_requests = self.windows.collector.requests - requests
                    for _ in workers:
                        await queue.put(_DONE)
                    await asyncio.gather(*workers)
                if not self.stop.is_set():
                    await self._settle(archive)
                report.readback_days = truth.readback_days
                report.readback_objects = truth.readback_objects
                report.readback_deferred = truth.deferred
                report.intents_settled = truth.settled
                report.behind_archive = truth.behind_archive
                if truth.deferred:
                    log.warning(
                        "ingest.readback_deferred",
                        objects=truth.deferred,
                        budget=self.settings.dedupe.readback_max_objects,
                        reason="objects need more of the archive read back than this cycle's "
                        "budget (dedupe.readback_max_objects); they are handled in the next cycles",
                    )
                if not self.stop.is_set():
                    self.lister.close_old_prefixes(cycle)
                    if hints is not None and relist:
                        hints.relisted()
            finally:
                renewer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewer
        report.failed_accounts = len({f.account_id for f in inventory.failures} | cycle.failed)
        return self._done(report, started)

    async def _renew(self, archive: central.Archive, every: float) -> None:
        """Renew the writer marker every ``every`` seconds while the cycle runs (the fence)."""
        while True:
            await asyncio.sleep(every)
            await self.writer.truth.renew(archive)

    def _done(self, report: CycleReport, started: float) -> CycleReport:
        report.stopped = self.stop.is_set()
        report.duration_secs = round(time.perf_counter() - started, 3)
        log.info(
            "ingest.cycle_done", **{k: v for k, v in report.as_dict().items() if k != "by_kind"}
        )
        return report

    async def _settle(self, archive: central.Archive) -> None:
        """PUTs that failed for us but may have reached S3: settled now, not next cycle (a
        failure here is retried at the next cycle's start, which must settle first)."""
        try:
            await self.writer.truth.settle(archive)
        except StorageError:
            raise
        except Exception as exc:
            log.warning(
                "ingest.settle_failed",
                error_type=error_code(exc),
                reason=error_message(exc),
            )

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

    # ------------------------------------------------------------------ objects

    async def _worker(
        self,
        queue: asyncio.Queue[Any],
        pool: ClientPool,
        archive: central.Archive,
        cycle: Cycle,
    ) -> None:
        while True:
            job = await queue.get()
            outcome = "abandoned"
            try:
                if job is _DONE:
                    return
                if self.stop.is_set():
                    continue  # abandoned: not committed, picked up again next run
                # backpressure is checked per object, by the worker about to archive it, so a
                # full backlog is overshot by at most one object per worker (not the queue)
                await self.gate.wait_unpaused()
                if self.stop.is_set() or cycle.broken is not None:
                    continue
                try:
                    outcome = await self._handle(job, pool, archive, cycle)
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:
                    # The state failed (StorageError), or something no object should raise:
                    # the cycle stops and raises it, instead of a dead worker leaving the
                    # listers waiting on a full queue forever.
                    if cycle.broken is None:
                        cycle.broken = exc
            finally:
                if job is not _DONE and job.done is not None:
                    job.done(outcome)  # a hint's message is deleted or left by it
                queue.task_done()

    async def _handle(
        self, job: Job, pool: ClientPool, archive: central.Archive, cycle: Cycle
    ) -> str:
        """Handle one object; its outcome: "done", "recorded" (digest, other), "quarantined",
        "gap" (filled from LookupEvents), "missing" (a hinted key not in the bucket),
        "deferred" (read-back budget) or "failed" (transient: tried again)."""
        src, report = job.source, cycle.report
        report.by_kind[job.kind] = report.by_kind.get(job.kind, 0) + 1
        if job.kind in (ObjectKind.DIGEST, ObjectKind.OTHER):
            # Recorded (completeness reads digests from the source bucket), never archived.
            self.state.commit_object(
                ObjectOutcome(src, job.key, job.day_prefix, job.kind, job.etag, job.size)
            )
            return "recorded"
        cfg = self.settings.collect
        started = time.perf_counter()
        try:
            if job.size > cfg.max_object_bytes:
                raise BadObject(f"too large: {job.size} bytes compressed")
            session = await self.sessions.session_for(src.reader_account_id)
            s3 = await pool.get(session, "s3")
            data = await fetch(s3, src.bucket, job.key)
            await self.fetched(job, data)
            # Inline, not in a thread: the work holds the GIL (orjson), so a thread only adds
            # switches (measured: 10% more CPU per event); one object blocks the loop ~15 ms.
            decoded = decode_log(
                data, max_object_bytes=cfg.max_object_bytes, max_record_bytes=cfg.max_record_bytes
            )
            await self.writer.write(job, decoded, archive, report, started, source=data)
            return "done"
        except ReadbackDeferred:
            cycle.errored.add(job.stream_id)  # not handled: its day prefix stays open
            return "deferred"
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
            return "quarantined"
        except (StorageError, Fenced):
            raise  # the cycle stops (the state failed; the marker may be lost)
        except Exception as exc:
            if is_not_found(exc) and self.state.retry.contains(src.bucket, job.key):
                cycle.gaps.append((src, job.key))  # filled from LookupEvents after the queue
                log.warning(
                    "ingest.source_file_missing",
                    account_id=src.account_id,
                    region=src.region,
                    bucket=src.bucket,
                    key=job.key,
                )
                return "gap"
            if is_not_found(exc) and job.done is not None:
                # a hint, never the truth: the object is not (or no longer) in the bucket
                log.warning(
                    "hint.object_missing",
                    account_id=src.account_id,
                    region=src.region,
                    bucket=src.bucket,
                    key=job.key,
                )
                return "missing"
            report.errors += 1
            cycle.errored.add(job.stream_id)
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
            return "failed"

    async def fetched(self, job: Job, data: bytes) -> None:
        """Called with each object's bytes before they are decoded; nothing by default (tests
        slow an object down or fail it here)."""
