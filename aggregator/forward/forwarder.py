"""The forwarder: one lane per enabled connector, run side by side.

Lanes are independent tasks: one sink down (retrying with backoff, or stopped by a
:class:`~connectors.base.Fatal` error) never blocks another. Each lane's backlog is the number
of ledger rows behind its cursor; :meth:`Forwarder.backpressure` is true when a lane's backlog
reaches ``forward.max_backlog_objects`` and the ingest job then pauses collection instead of
racing ahead. A *fatal* connector does not hold collection back (its cursor waits, its backlog
is kept: the archive has it all) unless ``block_ingest_when_fatal`` says so.

Every forwarder is built with the config's normalizer (:func:`forwarder_for`): the daemon,
``ctagg replay`` and dead-letter retries send the same documents.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from aggregator.config import ForwardSettings, Settings
from aggregator.forward.documents import (
    AccountLookup,
    NormalizeFn,
    account_of_record,
    normalizer_for,
)
from aggregator.forward.filters import EventFilter
from aggregator.forward.lanes import ArchiveReader, Lane, LaneStatus
from aggregator.forward.store import ForwardStore
from aggregator.log import get_logger
from aggregator.state import State
from connectors import build
from connectors.base import Connector, Fatal

log = get_logger("aggregator.forward")


class Forwarder:
    """All lanes. ``backpressure()`` is the predicate the ingest job polls.

    ``normalize`` is required on purpose: a forwarder without the configured normalizer would
    send events past redaction (build one with :func:`forwarder_for`)."""

    def __init__(
        self,
        settings: ForwardSettings,
        state: State,
        archive: ArchiveReader,
        *,
        bucket: str,
        normalize: NormalizeFn,
        connectors: Sequence[Connector] | None = None,
        accounts: AccountLookup | None = None,
    ) -> None:
        self.settings = settings
        self.store = ForwardStore(state)
        self.archive = archive
        self.normalize = normalize
        if connectors is None:
            connectors = [build(c) for c in settings.connectors if c.enabled]
        account_of = account_of_record(accounts)
        self.lanes = {
            c.name: Lane(
                c,
                settings,
                self.store,
                archive,
                normalize=normalize,
                bucket=bucket,
                event_filter=EventFilter.for_connector(c.settings, account_of),
            )
            for c in connectors
        }
        self._tasks: list[asyncio.Task[None]] = []
        self._paused_by: tuple[str, ...] = ()

    def backlog(self, name: str) -> int:
        return self.store.backlog(name)

    def blocks_when_fatal(self, lane: Lane) -> bool:
        own = lane.connector.settings.block_ingest_when_fatal
        return self.settings.block_ingest_when_fatal if own is None else own

    def holding_back(self) -> list[str]:
        """Connectors whose full backlog holds collection back now."""
        limit = self.settings.max_backlog_objects
        out = []
        for name, lane in self.lanes.items():
            if lane.status.fatal is not None and not self.blocks_when_fatal(lane):
                continue  # a dead sink does not stop the archive growing
            if self.store.backlog(name, cap=limit) >= limit:
                out.append(name)
        return out

    def backpressure(self) -> bool:
        """True when a connector's backlog is full: collection should pause. Logged when it
        starts and ends, with the connectors that hold it."""
        names = tuple(self.holding_back())
        if names != self._paused_by:
            if names:
                log.warning(
                    "forward.backpressure_on",
                    connectors=list(names),
                    limit=self.settings.max_backlog_objects,
                )
            else:
                log.info("forward.backpressure_off", connectors=list(self._paused_by))
            self._paused_by = names
        return bool(names)

    @property
    def paused_by(self) -> tuple[str, ...]:
        """The connectors holding collection back at the last check."""
        return self._paused_by

    def floor(self) -> int:
        """The lowest ledger id some connector still has to deliver."""
        return self.store.floor(list(self.lanes))

    def status(self) -> list[LaneStatus]:
        out = []
        for name, lane in self.lanes.items():
            lane.status.backlog = self.store.backlog(name)
            d, r = self.store.counts(name)
            lane.status.extra = {"delivered": d, "rejected": r}
            out.append(lane.status)
        return out

    def start(self) -> None:
        for lane in self.lanes.values():
            lane.stop.clear()
            self._tasks.append(asyncio.create_task(lane.run(), name=f"forward:{lane.name}"))

    async def stop(self) -> None:
        for lane in self.lanes.values():
            lane.stop.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def drain(self) -> None:
        """Run every lane until its cursor is at the end of the ledger (or Fatal)."""

        async def one(lane: Lane) -> None:
            try:
                await lane.pump()
            except Fatal as exc:
                lane._fatal(exc)
            finally:
                await lane.close()

        await asyncio.gather(*(one(lane) for lane in self.lanes.values()))


def forwarder_for(
    settings: Settings,
    state: State,
    archive: ArchiveReader,
    *,
    accounts: AccountLookup | None = None,
    organization_id: Callable[[], str | None] | None = None,
    connectors: Sequence[Connector] | None = None,
) -> Forwarder:
    """The forwarder of a config, with its normalizer (redaction, enrichment, schema)."""
    return Forwarder(
        settings.forward,
        state,
        archive,
        bucket=settings.archive.bucket,
        normalize=normalizer_for(settings, accounts=accounts, organization_id=organization_id),
        connectors=connectors,
        accounts=accounts,
    )
