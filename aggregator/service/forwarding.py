"""The daemon's forwarder: its lanes start with the service and stop with it; and what
``/readyz`` says about the connectors."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from aggregator.archive import store as archive
from aggregator.aws.clients import Aws, SessionProvider
from aggregator.config import Settings
from aggregator.forward.documents import AccountLookup
from aggregator.forward.forwarder import Forwarder, forwarder_for
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
        fwd = forwarder_for(
            settings, state, central, accounts=accounts, organization_id=organization_id
        )
        tune_gc()  # many young dicts per event while a batch is alive (ARCHITECTURE.md)
        fwd.start()
        log.info("forward.started", count=len(fwd.lanes))
        try:
            yield fwd
        finally:
            await fwd.stop()
            log.info("forward.stopped", count=len(fwd.lanes))


class ConnectorsReady:
    """The ``connectors`` readiness check: names every fatal or failing connector with its
    reason (and the connectors holding collection back). ``forward.not_ready_when`` decides
    what makes the service not ready: a fatal connector (default), a failing one too, or
    nothing."""

    name = "connectors"

    def __init__(self, forwarder: Forwarder, not_ready_when: str) -> None:
        self.forwarder = forwarder
        self.not_ready_when = not_ready_when

    def status(self, now: float) -> tuple[bool, str]:
        parts: list[str] = []
        ok = True
        for name, lane in self.forwarder.lanes.items():
            st = lane.status
            if st.state == "fatal":
                parts.append(f"{name} fatal: {st.fatal}")
                ok &= self.not_ready_when == "never"
            elif st.state == "failing":
                secs = round(now - st.failing_since) if st.failing_since else 0
                parts.append(f"{name} failing for {secs}s: {st.last_error}")
                ok &= self.not_ready_when != "failing"
        paused = self.forwarder.paused_by
        if paused:
            parts.append(f"collection paused: backlog full for {', '.join(paused)}")
        if not parts:
            return True, f"{len(self.forwarder.lanes)} connector(s) ok"
        return ok, "; ".join(parts)[:1000]
