"""The daemon's optional jobs: detection over the archive, archive digests, completeness.

Wiring only; the work is in ``aggregator.detect``, ``aggregator.archive.digests`` and
``aggregator.integrity.jobs`` (the completeness job).
Every job here is registered on the daemon's scheduler, so a failing run is logged and counted
there and never stops ingest or forwarding; each runs as its own job (``max_instances=1``).

Jobs and their default intervals (override with ``service.job_intervals_secs.<name>``):

* ``detect``          reads new central objects in ledger order and runs the rules (30 s)
* ``detect_hourly``   rate anomalies over closed hours, forgets old alerts (1 h)
* ``detect_deliver``  sends queued alerts to every alert sink (15 s)
* ``archive_digest``  writes the archive's signed hourly digests (1 h)
* ``completeness``    refreshes expected files from digests, computes, queues missing (1 h)
* ``reconcile``       checks the archive's recent days against the state, report-only (1 d)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aggregator.config import ServiceSettings, Settings
from aggregator.log import get_logger
from aggregator.service.metrics import Metrics
from aggregator.state import State

if TYPE_CHECKING:
    from aggregator.aws.clients import SessionProvider

log = get_logger("aggregator.daemon")

DEFAULT_INTERVALS: dict[str, float] = {
    "detect": 30.0,
    "detect_hourly": 3600.0,
    "detect_deliver": 15.0,
    "archive_digest": 3600.0,
    "completeness": 3600.0,
    "reconcile": 86400.0,
}


SINK_OPEN_TIMEOUT_SECS = 15.0


def job_interval(svc: ServiceSettings, name: str) -> float:
    """``service.job_intervals_secs.<name>``, else the job's default."""
    return float(svc.job_intervals_secs.get(name, DEFAULT_INTERVALS[name]))


# ---------------------------------------------------------------------------- detection


def detect_floor(state: State) -> int:
    """The lowest ledger id detection has not scanned yet (its cursor + 1; 1 before detection
    ever started)."""
    from aggregator.detect.follow import detection_floor

    return int(detection_floor(state) or 1)


class DetectionJobs:
    """Detection for the daemon: a ledger follower (its own cursor) over the central archive,
    hourly anomaly judgement and alert delivery. :meth:`start` builds the sinks (SNS / webhook
    from ``detect``, plus one connector instance per ``detect.connectors`` name) and opens
    them; :meth:`close` closes them."""

    def __init__(
        self,
        settings: Settings,
        state: State,
        aws: Any,
        metrics: Metrics,
        *,
        stopping: asyncio.Event | None = None,
        clock: Callable[[], float] = time.time,
        batch: int = 32,
        sessions: SessionProvider | None = None,
        accounts: Callable[[str], Any] | None = None,
    ) -> None:
        """``sessions``: the app's credential broker, for the archive's identity
        (``archive.archive_session``); a broker of its own when None. ``accounts``:
        discovery's accounts by id, to name them in alerts sent through connectors."""
        self.settings = settings
        self.state = state
        self.aws = aws
        self.sessions = sessions
        self.accounts = accounts
        self.metrics = metrics
        self.stopping = stopping or asyncio.Event()
        self.clock = clock
        self.batch = batch
        self.service: Any = None
        self.follower: Any = None
        self._unopened: list[Any] = []

    def _sinks(self) -> list[Any]:
        import connectors
        from aggregator.detect.follow import ConnectorAlertSink
        from aggregator.detect.service import sinks_from_settings

        cfg = self.settings.detect
        sinks: list[Any] = list(sinks_from_settings(cfg, self.aws))
        by_name = {c.name: c for c in self.settings.forward.connectors}

        def account_name(account_id: str) -> str | None:
            account = self.accounts(account_id) if self.accounts is not None else None
            en = self.settings.normalize.enrichment
            return getattr(account, "name", None) if en.enabled and en.account_name else None

        for name in cfg.connectors:  # a separate instance: alerts never share a lane's client
            sinks.append(ConnectorAlertSink(connectors.build(by_name[name]), account_name))
        return sinks

    async def start(self, stack: contextlib.AsyncExitStack) -> None:
        from aggregator.archive import store as archive
        from aggregator.detect.follow import DetectionFollower
        from aggregator.detect.service import DetectionService
        from aggregator.normalize import redactor_for

        sinks = self._sinks()
        # the same redaction as forwarded events: alerts leave ctagg too
        redact = redactor_for(self.settings.normalize).apply
        # compiling the rule pack is CPU work: keep the loop (health, other jobs) free
        self.service = await asyncio.to_thread(
            functools.partial(
                DetectionService,
                self.settings.detect,
                self.state,
                sinks,
                self.clock,
                redact=redact,
            )
        )
        stack.push_async_callback(self.close)
        for sink in sinks:
            await self._open(sink)
        central = await stack.enter_async_context(
            archive.opened(self.settings, self.aws, self.sessions)
        )
        self.follower = DetectionFollower(
            self.service,
            self.state,
            central,
            self.settings.archive.bucket,
            offload=True,
        )
        self.follower.initialise(self.settings.detect.start_from)  # only when no cursor yet
        self.metrics.detection(backlog=self.follower.backlog())
        log.info("detect.started", sinks=sorted(self.service.sinks))

    async def _open(self, sink: Any) -> bool:
        """Open a sink; one that fails stays queued for the next delivery run (its alerts wait
        in the outbox meanwhile)."""
        try:  # bounded: a slow sink never holds the daemon's start
            await asyncio.wait_for(sink.open(), SINK_OPEN_TIMEOUT_SECS)
        except Exception as exc:
            log.error("detect.sink_open_failed", connector=sink.name, error_type=type(exc).__name__)
            if sink not in self._unopened:
                self._unopened.append(sink)
            return False
        if sink in self._unopened:
            self._unopened.remove(sink)
        return True

    async def follow(self) -> tuple[int, int]:
        """Scan the central objects written since the cursor; returns (objects, alerts)."""
        objects = alerts = 0
        try:
            while not self.stopping.is_set():
                done, raised = await self.follower.step(self.batch)
                objects, alerts = objects + done, alerts + raised
                self.metrics.detection(rule_alerts=raised)
                if done < self.batch:
                    break
        finally:
            self.metrics.detection(backlog=await asyncio.to_thread(self.follower.backlog))
        if objects:
            log.info("detect.scanned", objects=objects, count=alerts)
        return objects, alerts

    async def hourly(self) -> int:
        raised = await asyncio.to_thread(self.service.hourly, self.clock())
        self.metrics.detection(anomaly_alerts=len(raised))
        return len(raised)

    async def deliver(self) -> int:
        for sink in list(self._unopened):
            await self._open(sink)
        sent = 0
        while not self.stopping.is_set():
            n = int(await self.service.deliver(self.clock()))
            sent += n
            self.metrics.detection(delivered=n)
            if n == 0:
                break
        self.metrics.detection(outbox=self.service.store.outbox_size())
        return sent

    async def close(self) -> None:
        if self.service is None:
            return
        for sink in self.service.sinks.values():
            try:
                await sink.close()
            except Exception as exc:
                log.error(
                    "detect.sink_close_failed", connector=sink.name, error_type=type(exc).__name__
                )


# ---------------------------------------------------------------------------- integrity


async def archive_digest_job(
    settings: Settings,
    state: State,
    aws: Any,
    sessions: Any,
    clock: Callable[[], float] = time.time,
) -> Any:
    """Write the archive digests due now (as ``ctagg archive-digest``)."""
    from aggregator.archive.digests import write_archive_digests

    rep = await write_archive_digests(settings, state, aws=aws, sessions=sessions, clock=clock)
    log.info("archive_digest.job_done", count=len(rep.digests), objects=rep.objects)
    return rep


async def reconcile_job(
    settings: Settings,
    state: State,
    aws: Any,
    sessions: Any,
    metrics: Metrics,
    *,
    clock: Callable[[], float] = time.time,
) -> Any:
    """``ctagg reconcile`` over the last ``integrity.reconcile.days`` days, report-only (the
    daemon is the state's writer; nothing is repaired behind the operator's back); its counts
    go to ``/metrics``."""
    from datetime import UTC, datetime

    from aggregator.archive.store import opened
    from aggregator.integrity.reconcile import recent_days, reconcile

    cfg = settings.integrity.reconcile
    since, until = recent_days(cfg.days, datetime.fromtimestamp(clock(), UTC).date())
    async with opened(settings, aws, sessions) as archive:
        rep = await reconcile(archive, state, since=since, until=until, concurrency=cfg.concurrency)
    metrics.reconcile_done(rep.counts, clock())
    if rep.found:
        log.warning(
            "reconcile.found",
            count=sum(rep.counts.values()),
            **{k: v for k, v in rep.counts.items() if v},
        )
    return rep
