"""The daemon's forwarder: its lanes start with the service and stop with it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from aggregator.archive import store as archive
from aggregator.aws.clients import Aws, SessionProvider
from aggregator.config import Settings
from aggregator.forward.documents import AccountLookup, default_normalizer
from aggregator.forward.forwarder import Forwarder
from aggregator.log import get_logger
from aggregator.service.runtime import tune_gc
from aggregator.state import State

log = get_logger("aggregator.forward")


@contextlib.asynccontextmanager
async def running(
    settings: Settings,
    state: State,
    *,
    accounts: AccountLookup | None = None,
    organization_id: Callable[[], str | None] | None = None,
    sessions: SessionProvider | None = None,
) -> AsyncIterator[Forwarder | None]:
    """The forwarder of a long-running service: reads the central archive with the archive's
    identity (``archive.archive_session``, from ``sessions``: the app's credential broker),
    starts one lane per enabled connector, stops them on exit. Yields None when no connector is
    configured. The ingest job should poll ``forwarder.backpressure``. ``accounts`` gives the
    normalizer discovery's account names, OU paths and tags."""
    if not any(c.enabled for c in settings.forward.connectors):
        yield None
        return
    async with archive.opened(settings, Aws(settings.aws), sessions) as central:
        fwd = Forwarder(
            settings.forward,
            state,
            central,
            bucket=settings.archive.bucket,
            normalize=default_normalizer(
                settings.archive.bucket,
                settings.normalize,
                accounts=accounts,
                organization_id=organization_id,
            ),
        )
        tune_gc()  # many young dicts per event while a batch is alive (ARCHITECTURE.md)
        fwd.start()
        log.info("forward.started", count=len(fwd.lanes))
        try:
            yield fwd
        finally:
            await fwd.stop()
            log.info("forward.stopped", count=len(fwd.lanes))
