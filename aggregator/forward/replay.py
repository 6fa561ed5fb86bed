"""``ctagg replay``: re-send the events of a time window from the central archive to one
connector, through its lane (normalization, batching, retries, dead letters), without touching
its cursor."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from aggregator.archive import store as archive
from aggregator.aws.clients import Aws
from aggregator.config import Settings
from aggregator.forward.documents import event_time
from aggregator.forward.forwarder import Forwarder
from aggregator.forward.lanes import Item, Lane
from aggregator.forward.store import DeadLetter, ForwardStore
from aggregator.state import State
from connectors.base import Fatal


@dataclass
class ReplayReport:
    objects: int = 0
    events: int = 0
    delivered: int = 0
    rejected: int = 0


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


Progress = Callable[[int, int | None], None]  # (central objects done, of total)


async def replay(
    fwd: Forwarder,
    name: str,
    since: datetime,
    until: datetime,
    *,
    progress: Progress | None = None,
) -> ReplayReport:
    """Re-send events with since <= eventTime < until from the central archive;
    ``progress(done, total)`` after each central object."""
    lane = fwd.lanes.get(name)
    if lane is None:
        raise KeyError(f"no enabled connector named {name!r}")
    lo, hi = since.timestamp(), until.timestamp()
    store, s = fwd.store, fwd.settings
    report = ReplayReport()
    try:
        rows = list(store.ledger.overlapping(_iso(since), _iso(until)))
        if progress is not None:
            progress(0, len(rows))
        for row in rows:
            key = str(row["central_key"])
            records = await lane.records(key)
            report.objects += 1
            batch: list[Item] = []
            nbytes = 0
            for i, rec in enumerate(records):
                if not isinstance(rec, dict) or not lo <= event_time(rec) < hi:
                    continue
                got = lane.item(rec, key, i)
                report.events += 1
                if isinstance(got, DeadLetter):
                    store.commit(name, None, 0, [got])
                    report.rejected += 1
                    continue
                batch.append(got)
                nbytes += len(got.event.data) + 100
                if len(batch) >= s.batch_max_events or nbytes >= s.batch_max_bytes:
                    await _send(lane, store, batch, report)
                    batch, nbytes = [], 0
            if batch:
                await _send(lane, store, batch, report)
            if progress is not None:
                progress(report.objects, len(rows))
    finally:
        await lane.close()
    return report


async def _send(lane: Lane, store: ForwardStore, batch: list[Item], report: ReplayReport) -> None:
    delivered, dead = await lane.deliver(batch)
    store.commit(lane.name, None, 0, dead)
    report.delivered += delivered
    report.rejected += len(dead)


async def replay_with_settings(
    settings: Settings,
    name: str,
    since: datetime,
    until: datetime,
    *,
    progress: Progress | None = None,
) -> ReplayReport:
    """:func:`replay` for a config: the archive is read with its own identity
    (``archive.archive_session``: the writer account's role when archive.writer_account_id is
    set), as ingest writes it."""
    state = State(settings.state.path)
    try:
        async with archive.opened(settings, Aws(settings.aws)) as central:
            try:  # a one-shot command: a refused archive identity ends it, not retried
                await central.client()
            except Exception as exc:
                raise Fatal(f"cannot open the central archive: {exc}") from exc
            fwd = Forwarder(settings.forward, state, central, bucket=settings.archive.bucket)
            return await replay(fwd, name, since, until, progress=progress)
    finally:
        state.close()
