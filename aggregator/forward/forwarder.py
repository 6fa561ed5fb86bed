"""The forwarder: one lane per enabled connector, run side by side.

Lanes are independent tasks: one sink down (retrying with backoff, or stopped by a
:class:`~connectors.base.Fatal` error) never blocks another. Each lane's backlog is the number
of ledger rows behind its cursor; :meth:`Forwarder.backpressure` is true when any lane's
backlog reaches ``forward.max_backlog_objects`` and the ingest job then pauses collection
instead of racing ahead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aggregator.config import ForwardSettings
from aggregator.forward.documents import NormalizeFn, default_normalizer
from aggregator.forward.lanes import ArchiveReader, Lane, LaneStatus
from aggregator.forward.store import ForwardStore
from aggregator.log import get_logger
from aggregator.state import State
from connectors import build
from connectors.base import Connector, Fatal

log = get_logger("aggregator.forward")


class Forwarder:
    """All lanes. ``backpressure()`` is the predicate the ingest job polls."""

    def __init__(
        self,
        settings: ForwardSettings,
        state: State,
        archive: ArchiveReader,
        *,
        bucket: str,
        connectors: Sequence[Connector] | None = None,
        normalize: NormalizeFn | None = None,
    ) -> None:
        self.settings = settings
        self.store = ForwardStore(state)
        self.archive = archive
        self.normalize = normalize or default_normalizer(bucket)
        if connectors is None:
            connectors = [build(c) for c in settings.connectors if c.enabled]
        self.lanes = {
            c.name: Lane(c, settings, self.store, archive, normalize=self.normalize, bucket=bucket)
            for c in connectors
        }
        self._tasks: list[asyncio.Task[None]] = []

    def backlog(self, name: str) -> int:
        return self.store.backlog(name)

    def backpressure(self) -> bool:
        """True when any connector's backlog is full: collection should pause."""
        limit = self.settings.max_backlog_objects
        return any(self.store.backlog(n, cap=limit) >= limit for n in self.lanes)

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
                lane.status.fatal = str(exc)[:500]
                log.error("forward.connector_fatal", connector=lane.name, error_type=str(exc))
            finally:
                await lane.close()

        await asyncio.gather(*(one(lane) for lane in self.lanes.values()))
