"""``ctagg run``: the application's jobs on the scheduler, with health, metrics and signals.

Wiring only. The app (``aggregator.app.App``) does discovery and ingest cycles; the scheduler
times them; health and metrics report on them; retention is its own job. Counters per account
× region are fed by :class:`MeteredState`, which counts exactly what the state commits (an
object is counted once its checkpoint is written, never on an attempt).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aggregator.archive.retention import Retention
from aggregator.aws.slots import owned_slots
from aggregator.config import Settings
from aggregator.forward.store import ForwardStore
from aggregator.integrity.jobs import CompletenessJob
from aggregator.log import get_logger
from aggregator.service.forwarding import ConnectorsReady
from aggregator.service.forwarding import running as forwarding
from aggregator.service.health import Condition, Health, HealthServer, Probe, Recency, build_app
from aggregator.service.jobs import (
    DetectionJobs,
    archive_digest_job,
    detect_floor,
    job_interval,
    reconcile_job,
)
from aggregator.service.metrics import Metrics
from aggregator.service.scheduler import Scheduler, describe_error, wait_or_stop
from aggregator.state import ObjectOutcome, SourceRef, State, StorageError
from aggregator.state.db import Database
from aggregator.state.quarantine import Failures, Quarantine

log = get_logger("aggregator.daemon")


class MeteredState(State):
    """The state, counting committed objects, quarantines and assume-role failures into
    :class:`Metrics` (set :attr:`metrics` after construction): counters move exactly when the
    state commits, never on an attempt."""

    metrics: Metrics | None = None

    def __init__(self, path: str, *, writer: str | None = None) -> None:
        super().__init__(path, writer=writer)
        self.quarantine = _MeteredQuarantine(self.db, self)
        self.failures = _MeteredFailures(self.db, self)

    def commit_object(self, o: ObjectOutcome) -> None:
        super().commit_object(o)
        if self.metrics is not None and o.kind in ("log", "insight"):
            self.metrics.object_archived(
                o.source.account_id,
                o.source.region,
                events=o.events_in - o.duplicates,
                duplicates=o.duplicates,
            )


class _MeteredQuarantine(Quarantine):
    def __init__(self, db: Database, owner: MeteredState) -> None:
        super().__init__(db)
        self.owner = owner

    def hold(self, src: SourceRef, key: str, reason: str) -> None:
        super().hold(src, key, reason)
        if self.owner.metrics is not None:
            self.owner.metrics.object_quarantined(src.account_id, src.region)


class _MeteredFailures(Failures):
    def __init__(self, db: Database, owner: MeteredState) -> None:
        super().__init__(db)
        self.owner = owner

    def record(self, account_id: str, stage: str, reason: str) -> bool:
        new = super().record(account_id, stage, reason)
        if self.owner.metrics is not None and stage == "assume_role":
            self.owner.metrics.assume_role_failed(account_id)
        return new


class AppLike(Protocol):
    """What the daemon drives (``aggregator.app.App``)."""

    settings: Settings
    state: State
    aws: Any
    broker: Any
    ingestor: Any
    inventory: Any

    async def refresh_discovery(self) -> Any: ...

    async def run_once(self) -> Any: ...

    def request_stop(self) -> None: ...

    async def close(self) -> None: ...


class SlotsHeld:
    """``shard_holds_slots`` in /readyz (a sharded installation): ok once this shard holds its
    slots: the layout recorded in the central bucket fits its config and it wrote its writer
    marker at a cycle start. Until then another pod may still be this shard's writer, or the
    config describes another installation, and a rollout that waits for readiness must not
    move on to the next pod."""

    name = "shard_holds_slots"

    def __init__(self, settings: Settings, truth: Any) -> None:
        self.shard = settings.shard
        self.truth = truth  # the ingest's ArchiveTruth: held, claim_error, resizer.layout
        self.slots = len(owned_slots(settings.shard))

    def status(self, now: float) -> tuple[bool, str]:
        shard, held, error = self.shard, self.truth.held, self.truth.claim_error
        why = f"; latest claim failed: {error}" if error else ""
        if held is None:
            return False, f"{shard.label} has not claimed its writer marker yet{why}"
        layout = self.truth.resizer.layout
        epoch = f", layout epoch {layout.epoch}" if layout is not None else ""
        return True, (
            f"{shard.label} holds {self.slots} of {shard.slots} slots (writer generation "
            f"{held.get('generation')} at {held.get('written_at')}{epoch}){why}"
        )


class Daemon:
    """Builds the scheduler, health conditions and metrics around one app."""

    def __init__(
        self,
        app: AppLike,
        *,
        metrics: Metrics | None = None,
        health_port: int | None = None,
        extra_jobs: dict[str, Callable[[], Awaitable[Any]]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.settings = app.settings
        svc = self.settings.service
        self.metrics = metrics or Metrics()
        if isinstance(app.state, MeteredState):
            app.state.metrics = self.metrics
        shard, truth = self.settings.shard, app.ingestor.writer.truth
        self.metrics.set_shard(
            shard.ordinal, shard.count, len(owned_slots(shard)), lambda: truth.held is not None
        )
        self.metrics.refresh_from_state(app.state)  # freshness gauges read it at each scrape
        self.health = Health()
        self.health.add_ready(
            Probe("state_open", app.state.healthy, "state database does not answer")
        )
        self.discovery_done = Condition("discovery_done", reason="no discovery yet")
        self._discovered_event = asyncio.Event()
        self._cycled_event = asyncio.Event()  # the first ingest cycle finished
        self.health.add_ready(self.discovery_done)
        max_age = svc.ready_max_cycle_age_secs or 3 * svc.ingest_interval_secs
        self.ingest_recent = Recency("ingest_recent", max_age, never_reason="no cycle yet")
        self.health.add_ready(self.ingest_recent)
        # a state that cannot be written (disk full, read-only) fails readiness at once: no
        # cycle can commit until it is fixed, however recent the last good one was
        self.state_writable = Condition("state_writable", ok=True, reason="ok")
        self.health.add_ready(self.state_writable)
        # collection paused by backpressure (a sink's backlog is full): said in /readyz too
        self.ingest_flowing = Condition("ingest_not_paused", ok=True, reason="not paused")
        self.health.add_ready(self.ingest_flowing)
        if shard.count > 1:  # one shard holds every slot: ingest_recent says it all
            self.health.add_ready(SlotsHeld(self.settings, truth))
        self.scheduler = Scheduler(
            svc, metrics=self.metrics, health=self.health, recorder=app.state.jobs
        )
        self.scheduler.register(
            "discovery", self._discovery, on_success=self._discovered, retry=True
        )
        # the first cycle waits for the first discovery (run at start) instead of racing it
        self.scheduler.register("ingest", self._ingest, start_delay_secs=0.5, retry=True)
        self.scheduler.register("retention", self._retention, run_at_start=False)
        for name, fn in (extra_jobs or {}).items():
            self.scheduler.register(name, fn)
        self.clock = clock
        self.completeness: CompletenessJob | None = None
        self._register_integrity()
        self.detection: DetectionJobs | None = None
        self._detect_stack = contextlib.AsyncExitStack()
        self.forwarder: Any = None
        self._accounts: dict[str, Any] = {}  # discovery's accounts by id, for enrichment
        self.server = HealthServer(
            build_app(self.health, self.metrics),
            svc.health_host,
            svc.health_port if health_port is None else health_port,
        )

    # ------------------------------------------------------------------ jobs

    async def _discovery(self) -> Any:
        try:
            return await self.app.refresh_discovery()
        except Exception as exc:
            if not self.discovery_done.ok:  # say why /readyz stays red
                self.discovery_done.set(False, f"last attempt failed: {describe_error(exc)}")
            raise

    def _discovered(self, inventory: Any) -> None:
        failures = Tally(f.stage for f in getattr(inventory, "failures", []))
        self.metrics.set_inventory(len(inventory.accounts), len(inventory.sources), dict(failures))
        # the inventory is this shard's part already: the regions of the pairs it owns
        self.metrics.set_shard_pairs(
            sum(len(rs) for rs in getattr(inventory, "regions", {}).values())
        )
        self.discovery_done.set(
            True, f"{len(inventory.accounts)} accounts, {len(inventory.sources)} sources"
        )
        self._discovered_event.set()
        self._accounts.clear()  # in place: the lanes hold its lookup
        self._accounts.update({a.id: a for a in inventory.accounts})
        if any(c.enabled for c in self.settings.forward.connectors):
            # replay and dead-letter retries enrich from this snapshot, as the lanes do
            try:
                ForwardStore(self.app.state).save_accounts(
                    inventory.accounts, getattr(inventory, "organization_id", None)
                )
            except Exception as exc:
                log.warning("forward.accounts_not_saved", error_type=type(exc).__name__)

    async def _ingest(self) -> Any:
        if not self.discovery_done.ok:
            # one discovery at a time: wait for the discovery job instead of racing it
            await wait_or_stop(self._discovered_event, self.settings.service.ingest_interval_secs)
            if not self.discovery_done.ok:
                log.info("daemon.ingest_waiting_for_discovery")
                return None
        if self.scheduler.stopping.is_set():
            return None
        try:
            report = await self.app.run_once()
        except Exception as exc:  # /readyz says why there is no recent cycle
            self.ingest_recent.failed(describe_error(exc))
            if isinstance(exc, StorageError):
                self.state_writable.set(False, f"ingest cannot commit: {exc}")
            raise
        self.metrics.cycle_truth(report)
        self.metrics.cycle_hints(report)
        if not self.state_writable.ok:
            self.state_writable.set(True, "ok")
        if not getattr(report, "stopped", False):
            self.ingest_recent.mark(time.time())
            self._cycled_event.set()
            await self._snapshot()  # between cycles: what a resize starts the new shards from
        return report

    async def _snapshot(self, *, release: bool = False) -> None:
        """This shard's state snapshot when it is due (``release``: at shutdown, then the
        writer marker says it stopped). A failed upload is logged and tried again later; it
        never fails the cycle."""
        ingestor = self.app.ingestor
        try:
            published = await (ingestor.release() if release else ingestor.publish_snapshot())
        except Exception as exc:
            log.error("snapshot.failed", error=describe_error(exc))
            self.metrics.snapshot(None, time.time())
            return
        if published is not None:
            self.metrics.snapshot(published.bytes, time.time())

    def _register_integrity(self) -> None:
        integrity, svc = self.settings.integrity, self.settings.service
        if integrity.archive_digest.enabled:
            app = self.app

            async def archive_digest() -> Any:
                return await archive_digest_job(
                    self.settings, app.state, app.aws, app.broker, self.clock
                )

            self.scheduler.register(
                "archive_digest",
                archive_digest,
                interval_secs=job_interval(svc, "archive_digest"),
                start_delay_secs=1.0,
            )
        if integrity.validate_digests:
            self.completeness = CompletenessJob(
                self.settings, self.app, self.metrics.registry, self.clock
            )
            self.scheduler.register(
                "completeness",
                self._completeness,
                interval_secs=job_interval(svc, "completeness"),
                start_delay_secs=1.0,
            )

        if integrity.reconcile.enabled:
            self.scheduler.register(
                "reconcile",
                self._reconcile,
                interval_secs=job_interval(svc, "reconcile"),
                start_delay_secs=1.0,
            )

    async def _reconcile(self) -> Any:
        # after the first cycle: the ledger then says what the archive should hold (a crash
        # before its commit left intents the cycle settles first)
        while not self._cycled_event.is_set():
            if self.scheduler.stopping.is_set():
                return None
            await wait_or_stop(self._cycled_event, 1.0)
        if self.scheduler.stopping.is_set():
            return None
        app = self.app
        return await reconcile_job(
            self.settings, app.state, app.aws, app.broker, self.metrics, clock=self.clock
        )

    async def _completeness(self) -> Any:
        wait = self.settings.service.ingest_interval_secs
        if not self.discovery_done.ok:  # the job reads the inventory's sources
            await wait_or_stop(self._discovered_event, wait)
        if not self._cycled_event.is_set():
            # before the first cycle every listed file would count as missing and be queued
            # for a retry the cycle is about to make anyway
            await wait_or_stop(self._cycled_event, wait)
        if self.scheduler.stopping.is_set() or self.completeness is None:
            return None
        return await self.completeness.run()

    async def _start_detection(self, stack: contextlib.AsyncExitStack) -> None:
        svc = self.settings.service
        det = DetectionJobs(
            self.settings,
            self.app.state,
            self.app.aws,
            self.metrics,
            stopping=self.scheduler.stopping,
            clock=self.clock,
            sessions=self.app.broker,
            accounts=self._accounts.get,
        )
        await det.start(stack)
        self.detection = det
        for name, fn in (
            ("detect", det.follow),
            ("detect_hourly", det.hourly),
            ("detect_deliver", det.deliver),
        ):
            self.scheduler.register(name, fn, interval_secs=job_interval(svc, name))

    def ledger_floor(self) -> int | None:
        """The lowest ledger id a forwarding connector or detection still needs; None when
        neither runs (retention then decides from age alone)."""
        floors = []
        if self.forwarder is not None:
            floors.append(self.forwarder.floor())
        if self.settings.detect.enabled:  # also while detection failed to start
            floors.append(detect_floor(self.app.state))
        return min(floors) if floors else None

    async def _retention(self) -> Any:
        state = self.app.state

        async def dead_letters(cutoff: float, dry_run: bool) -> int:
            return ForwardStore(state).prune_dead_letters(cutoff, dry_run=dry_run)

        job = Retention(
            self.settings,
            state,
            self.app.broker,
            self.app.aws,
            metrics=self.metrics,
            # central objects and ledger rows a connector has not delivered yet, or detection
            # has not scanned yet, are kept
            ledger_floor=(
                self.ledger_floor
                if self.forwarder is not None or self.settings.detect.enabled
                else None
            ),
            pruners={"dead_letters": dead_letters},
        )
        return await job.run()

    def _pause_reason(self) -> str:
        """Which connectors hold collection back, and why."""
        fwd, limit = self.forwarder, self.settings.forward.max_backlog_objects
        full = []
        if fwd is not None:
            for name in fwd.paused_by or tuple(fwd.holding_back()):
                fatal = fwd.lanes[name].status.fatal
                n = fwd.store.backlog(name, cap=limit)
                full.append(f"{name} {n}/{limit}" + (f" (fatal: {fatal})" if fatal else ""))
        return (
            f"forward backlog full: {', '.join(full) or 'a connector'} objects behind; "
            "collection waits until the sink catches up (forward.max_backlog_objects)"
        )

    def _pause_changed(self, paused: bool, reason: str) -> None:
        self.metrics.ingest_pause(paused)
        if paused:
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self.ingest_flowing.set(False, f"paused since {since}: {reason}")
        else:
            self.ingest_flowing.set(True, "not paused")

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, install_signals: bool = True) -> int:
        svc = self.settings.service
        async with contextlib.AsyncExitStack() as stack:
            app = self.app
            fwd = await stack.enter_async_context(
                forwarding(
                    self.settings,
                    app.state,
                    # discovery's account names, OU paths and tags enrich forwarded events
                    accounts=self._accounts.get,
                    organization_id=lambda: getattr(app.inventory, "organization_id", None),
                    sessions=app.broker,
                )
            )
            forward_stack = stack.pop_all()  # closed by hand: before the state, bounded
        self.forwarder = fwd
        if self.settings.detect.enabled:
            # its own stack: closed after the scheduler drained (no detection run in flight)
            try:
                await self._start_detection(self._detect_stack)
            except Exception as start_err:  # ingest and forwarding run on; retention holds
                log.error("daemon.detect_start_failed", error_type=type(start_err).__name__)
        if fwd is not None:  # collection pauses while a sink's backlog is full
            self.app.ingestor.should_pause = fwd.backpressure
            self.metrics.forward.forwarder = fwd  # live: read from the lanes at each scrape
            self.health.add_ready(ConnectorsReady(fwd, self.settings.forward.not_ready_when))
            gate = self.app.ingestor.gate
            gate.pause_reason = self._pause_reason
            gate.on_change = self._pause_changed
        port = await self.server.start()
        log.info("daemon.started", port=port, count=len(fwd.lanes) if fwd else 0)
        self.scheduler.on_shutdown(self.server.stop)
        stopping: list[asyncio.Task[None]] = []

        def on_stop() -> None:
            self.app.request_stop()  # no new source objects
            # lanes stop alongside the ingest drain (their cursors only move on acks)
            stopping.append(asyncio.get_running_loop().create_task(forward_stack.aclose()))

        stop_watch = _on_event(self.scheduler.stopping, on_stop)
        t0 = time.monotonic()
        try:
            return await self.scheduler.run(install_signals=install_signals)
        finally:
            stop_watch.cancel()
            if not stopping:
                stopping.append(asyncio.get_running_loop().create_task(forward_stack.aclose()))
            left = max(1.0, svc.shutdown_timeout_secs - (time.monotonic() - t0))
            done, pending = await asyncio.wait(stopping, timeout=left)
            for t in pending:
                t.cancel()
                log.warning("daemon.forward_stop_abandoned")
            for t in done:
                exc = t.exception()
                if exc is not None:
                    log.error("daemon.forward_stop_failed", error_type=type(exc).__name__)
            try:
                await asyncio.wait_for(self._detect_stack.aclose(), timeout=left)
            except Exception as err:
                log.error("daemon.detect_stop_failed", error_type=type(err).__name__)
            try:  # after the last cycle and delivery: the snapshot, the marker says stopped
                await asyncio.wait_for(self._snapshot(release=True), timeout=left)
            except TimeoutError:
                log.error("snapshot.failed", error="shutdown timeout")
            await self.app.close()
            log.info("daemon.stopped")


def _on_event(event: Any, fn: Callable[[], None]) -> Any:
    """Call ``fn`` once ``event`` is set (the app stops taking objects at the same moment)."""

    async def watch() -> None:
        await event.wait()
        fn()

    return asyncio.get_running_loop().create_task(watch())


async def serve(settings: Settings) -> int:
    """``ctagg run``: the app with counted state, on the scheduler, until SIGTERM/SIGINT."""
    from aggregator.service.app import App

    app = App(settings, state=MeteredState(settings.state.path, writer="ctagg run"))
    if settings.shard.count > 1:  # a changed shard or slot count refuses to start
        try:
            await app.ingestor.check_installation()
        except BaseException:
            await app.close()
            raise
    return await Daemon(app).run()
