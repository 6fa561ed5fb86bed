"""The integrity passes, as ``ctagg completeness`` / ``validate-digests`` and the daemon's
completeness job run them: refresh the expected files from new CloudTrail digests, compute
completeness, queue the missing files for ingest."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry

from aggregator.aws.clients import Aws, ClientPool, SessionProvider
from aggregator.aws.credentials import CredentialBroker
from aggregator.aws.discovery import discover
from aggregator.aws.inventory import Inventory, Source
from aggregator.aws.slots import for_shard
from aggregator.config import Settings
from aggregator.integrity import completeness as comp
from aggregator.integrity.public_keys import PublicKeyStore, cloudtrail_key_lister
from aggregator.log import get_logger
from aggregator.state import State

log = get_logger("aggregator.daemon")


async def discover_inventory(settings: Settings, aws: Aws, sessions: Any) -> Inventory:
    """Discovery's inventory, as much of it as this shard handles (all of it with one)."""
    inv: Inventory = await discover(settings, sessions, aws)
    return for_shard(inv, settings.shard)


def days_between(since: datetime, until: datetime) -> list[str]:
    """The ``YYYY/MM/DD`` day prefixes from ``since`` to ``until``, both included."""
    out = []
    d = since.date()
    while d <= until.date():
        out.append(f"{d:%Y/%m/%d}")
        d += timedelta(days=1)
    return out


async def public_keys(settings: Settings, sessions: Any, pool: ClientPool) -> PublicKeyStore:
    """CloudTrail's public keys: ``integrity.public_key_dir`` and, when
    ``integrity.list_public_keys``, ListPublicKeys with the base identity."""
    cfg = settings.integrity
    lister = None
    if cfg.list_public_keys:
        base = await sessions.session_for(None)

        async def client_for(region: str) -> Any:
            return await pool.get(base, "cloudtrail", region)

        lister = cloudtrail_key_lister(client_for)
    store = PublicKeyStore(lister)
    if cfg.public_key_dir:
        store.load_dir(cfg.public_key_dir)
    return store


async def refresh_sources(
    settings: Settings,
    since: datetime,
    until: datetime,
    state: State,
    *,
    check_logs: bool,
    sources: Sequence[Source] | None = None,
    aws: Aws | None = None,
    sessions: SessionProvider | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> comp.RefreshReport:
    """Validate new digests of ``sources`` (default: discover them now) for the days around
    [since, until] and record the log files they list. The daemon passes its own inventory's
    sources, AWS factory and credential broker."""
    aws = aws or Aws(settings.aws)
    sessions = sessions or CredentialBroker(settings, aws)
    if sources is None:
        sources = (await discover_inventory(settings, aws, sessions)).sources
    async with ClientPool(aws) as pool:
        keys = await public_keys(settings, sessions, pool)

        async def s3_for(src: Source) -> Any:
            return await pool.get(await sessions.session_for(src.reader_account_id), "s3")

        return await comp.refresh_expected(
            state,
            sources,
            s3_for,
            keys,
            days=days_between(since - timedelta(hours=2), until + timedelta(hours=2)),
            check_logs=check_logs,
            progress=progress,
        )


def completeness_pass(
    settings: Settings,
    state: State,
    since: datetime,
    until: datetime,
    *,
    retry: bool,
    now: float | None = None,
) -> tuple[comp.CompletenessReport, int]:
    """``compute`` over [since, until) and, when ``retry`` and ``integrity.retry_missing``,
    queue the missing files for ingest. Returns (report, newly queued)."""
    report = comp.compute(
        state, since, until, now=now, grace_secs=settings.integrity.completeness_grace_secs
    )
    queued = 0
    if settings.integrity.retry_missing and retry:
        queued = comp.queue_missing(state, report)
    return report, queued


class CompletenessJob:
    """``ctagg completeness`` as a daemon job, without printing: refresh expected files from the
    digests of the current inventory's sources, compute over the last
    ``integrity.completeness_window_hours``, queue the missing files for ingest (when
    ``integrity.retry_missing``) and serve the gauges on the daemon's registry."""

    def __init__(
        self,
        settings: Settings,
        app: Any,
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.app = app
        self.clock = clock
        self.collector = comp.CompletenessCollector(state=app.state)
        registry.register(self.collector)  # once: each run only swaps the report
        self.last_queued = 0

    async def run(self) -> comp.CompletenessReport | None:
        inventory = getattr(self.app, "inventory", None)
        if inventory is None:
            log.info("completeness.waiting_for_discovery")
            return None
        now = self.clock()
        until = datetime.fromtimestamp(now, UTC)
        since = until - timedelta(hours=self.settings.integrity.completeness_window_hours)
        state = self.app.state
        refreshed = await refresh_sources(
            self.settings,
            since,
            until,
            state,
            check_logs=False,
            sources=inventory.sources,
            aws=self.app.aws,
            sessions=self.app.broker,
        )
        report, queued = await asyncio.to_thread(
            completeness_pass, self.settings, state, since, until, retry=True, now=now
        )
        self.collector.report = report
        self.last_queued = queued
        log.info(
            "completeness.job_done",
            digests=refreshed.digests_checked,
            errors=len(refreshed.errors),
            expected=report.expected,
            missing=len(report.missing),
            count=queued,
        )
        return report
