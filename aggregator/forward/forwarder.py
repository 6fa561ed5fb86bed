"""Forwarding: per connector its own cursor over the ledger of central objects.

For each connector a *lane* reads central objects in ledger order (``ledger.id`` is the
position), normalizes each record to the connector's schema, batches by count / bytes / time,
and hands batches to ``connector.send``. Per event the connector answers delivered, retry or
rejected: retries are sent again after exponential backoff with jitter (only the events that
need it), rejections go to the dead-letter table with the reason, and only when every event of
a batch is acknowledged one way or the other does the cursor move, in the same transaction
as the dead letters. A crash or restart in between sends the batch again (OpenSearch
overwrites by ``_id``; nothing is lost anywhere).

Lanes are independent tasks: one sink down (retrying with backoff, or stopped by a
:class:`~connectors.base.Fatal` error) never blocks another. Each lane's backlog is the number
of ledger rows behind its cursor; :meth:`Forwarder.backpressure` is true when any lane's
backlog reaches ``forward.max_backlog_objects`` and the ingest job then pauses collection
instead of racing ahead.

``ctagg replay --connector NAME --since T --until T`` re-sends events from the central archive
(:meth:`Forwarder.replay`), without touching the cursor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from aggregator.config import ForwardSettings, Settings
from aggregator.config.normalize import NormalizeSettings
from aggregator.ingest.dedupe import record_key_text
from aggregator.log import get_logger
from aggregator.normalize import EventContext, Normalizer
from aggregator.service.runtime import tune_gc
from aggregator.state import State
from connectors import build

if TYPE_CHECKING:
    from aggregator.aws.clients import SessionProvider
    from aggregator.aws.discovery import Account
from connectors.base import (
    Connector,
    Delivered,
    Fatal,
    Outcome,
    OutEvent,
    Rejected,
    Retry,
    Schema,
)

log = get_logger(__name__)


class ArchiveReader(Protocol):
    """Reads one central object (``{"Records": [...]}``, gzip) as its records."""

    async def read_records(self, central_key: str) -> list[dict[str, Any]]: ...


# (record, schema, central key) -> the document, or the document already serialized (bytes)
NormalizeFn = Callable[[dict[str, Any], Schema, str], dict[str, Any] | bytes]


# ---------------------------------------------------------------------- normalization


AccountLookup = Callable[[str], "Account | None"]
_CENTRAL_ACCOUNT = re.compile(r"AWSLogs/(\d{12})/")


def default_normalizer(
    bucket: str = "",
    settings: NormalizeSettings | None = None,
    *,
    accounts: AccountLookup | None = None,
    organization_id: Callable[[], str | None] | None = None,
) -> NormalizeFn:
    """The forwarding side of ``aggregator.normalize``: redaction and enrichment from config.

    ``ecs`` and ``ocsf`` come back as bytes from ``Normalizer.encode`` (it serializes to apply
    its size policy; serializing again would cost as much as mapping), and ``raw`` as the
    envelope dict (sinks unwrap it). ``now`` (a datetime, reused for a second so its text forms
    are cached) and the ``EventContext`` are kept per second / per central object. The context
    names the archived object and, through ``accounts`` (discovery's view, looked up by the
    account in the central key), the account's name, OU path and tags.
    """
    normalizer = Normalizer(settings)
    encode, as_dict = normalizer.encode, normalizer.normalize
    memo: dict[str, Any] = {"sec": -1, "now": None, "key": None, "ctx": None}

    def context(central_key: str) -> EventContext:
        m = _CENTRAL_ACCOUNT.search(central_key)
        account = accounts(m.group(1)) if (accounts is not None and m) else None
        return EventContext.from_account(
            account,
            organization_id=organization_id() if organization_id else None,
            archive_bucket=bucket or None,
            archive_key=central_key,
        )

    def adapter(record: dict[str, Any], schema: Schema, central_key: str) -> dict[str, Any] | bytes:
        sec = int(time.time())
        if sec != memo["sec"]:
            memo["sec"], memo["now"] = sec, datetime.fromtimestamp(sec, UTC)
        if central_key != memo["key"]:
            memo["key"], memo["ctx"] = central_key, context(central_key)
        fn = as_dict if schema == "raw" else encode
        out: dict[str, Any] | bytes = fn(record, schema, now=memo["now"], context=memo["ctx"])
        return out

    return adapter


def to_out_event(
    record: dict[str, Any],
    doc: dict[str, Any] | None,
    bucket: str,
    central_key: str,
    index: int,
    *,
    data: bytes = b"",
) -> OutEvent:
    return OutEvent(
        data=data,
        id=record_key_text(record),
        doc=doc,
        time=_event_time(record),
        account_id=str(record.get("recipientAccountId") or ""),
        region=str(record.get("awsRegion") or ""),
        pointer=f"s3://{bucket}/{central_key}#{index}",
        event_name=str(record.get("eventName") or ""),
    )


_TIMES: dict[str, float] = {}


def _event_time(record: dict[str, Any]) -> float:
    """eventTime as epoch seconds (0.0 when missing or malformed); memoized, since the
    events of one object share few distinct seconds."""
    value = record.get("eventTime")
    if not isinstance(value, str):
        return 0.0
    t = _TIMES.get(value)
    if t is None:
        try:
            t = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            t = 0.0
        if len(_TIMES) > 65536:
            _TIMES.clear()
        _TIMES[value] = t
    return t


# ---------------------------------------------------------------------- persisted positions


@dataclass(frozen=True)
class Cursor:
    """Records of ledger rows with id < ``ledger_id`` are done, and the first ``offset``
    records of row ``ledger_id``."""

    ledger_id: int
    offset: int


@dataclass(frozen=True)
class DeadLetter:
    event_id: str
    central_key: str
    record_index: int
    event_time: str | None
    reason: str


class ForwardStore:
    """Cursors and dead letters in the state database (tables of migration 20)."""

    def __init__(self, state: State) -> None:
        self.state = state

    def cursor(self, connector: str, start_from: str = "oldest") -> Cursor:
        with self.state.transaction() as c:
            row = c.execute(
                "SELECT ledger_id, record_offset FROM forward_cursors WHERE connector=?",
                (connector,),
            ).fetchone()
            if row is not None:
                return Cursor(int(row[0]), int(row[1]))
            start = 0
            if start_from == "newest":
                start = int(c.execute("SELECT coalesce(max(id), 0) FROM ledger").fetchone()[0]) + 1
            c.execute(
                "INSERT INTO forward_cursors (connector, ledger_id, record_offset, updated_at) "
                "VALUES (?,?,0,?)",
                (connector, start, time.time()),
            )
            return Cursor(start, 0)

    def commit(
        self,
        connector: str,
        cursor: Cursor | None,
        delivered: int,
        dead: Sequence[DeadLetter],
    ) -> None:
        """Dead letters and (optionally) the new cursor, in one transaction."""
        now = time.time()
        with self.state.transaction() as c:
            if dead:
                c.executemany(
                    "INSERT INTO forward_dead_letters (connector, event_id, central_key, "
                    "record_index, event_time, reason, created_at, last_at) "
                    "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(connector, event_id) DO UPDATE SET "
                    "reason=excluded.reason, attempts=attempts+1, last_at=excluded.last_at",
                    [
                        (
                            connector,
                            d.event_id,
                            d.central_key,
                            d.record_index,
                            d.event_time,
                            d.reason[:2000],
                            now,
                            now,
                        )
                        for d in dead
                    ],
                )
            if cursor is not None:
                c.execute(
                    "UPDATE forward_cursors SET ledger_id=?, record_offset=?, "
                    "delivered=delivered+?, rejected=rejected+?, updated_at=? WHERE connector=?",
                    (cursor.ledger_id, cursor.offset, delivered, len(dead), now, connector),
                )

    def backlog(self, connector: str, cap: int | None = None) -> int:
        """Ledger rows not completely forwarded by this connector (counting stops at ``cap``,
        so the backpressure check stays cheap however far behind a connector is)."""
        with self.state.transaction() as c:
            row = c.execute(
                "SELECT ledger_id FROM forward_cursors WHERE connector=?", (connector,)
            ).fetchone()
            after = int(row[0]) if row else 0
            if cap is None:
                row = c.execute("SELECT count(*) FROM ledger WHERE id >= ?", (after,)).fetchone()
            else:
                row = c.execute(
                    "SELECT count(*) FROM (SELECT 1 FROM ledger WHERE id >= ? LIMIT ?)",
                    (after, cap),
                ).fetchone()
            return int(row[0])

    def ledger_from(self, ledger_id: int, limit: int = 64) -> list[dict[str, Any]]:
        with self.state.transaction() as c:
            cur = c.execute(
                "SELECT id, central_key, events, first_event_time, last_event_time FROM ledger "
                "WHERE id >= ? ORDER BY id LIMIT ?",
                (ledger_id, limit),
            )
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def ledger_between(self, since: str, until: str) -> list[dict[str, Any]]:
        """Ledger rows whose event-time range overlaps [since, until)."""
        with self.state.transaction() as c:
            cur = c.execute(
                "SELECT id, central_key, events, first_event_time, last_event_time FROM ledger "
                "WHERE coalesce(last_event_time, '9999') >= ? "
                "AND coalesce(first_event_time, '0000') < ? ORDER BY id",
                (since, until),
            )
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def dead_letters(self, connector: str) -> list[dict[str, Any]]:
        with self.state.transaction() as c:
            cur = c.execute(
                "SELECT * FROM forward_dead_letters WHERE connector=? ORDER BY id", (connector,)
            )
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def counts(self, connector: str) -> tuple[int, int]:
        with self.state.transaction() as c:
            row = c.execute(
                "SELECT delivered, rejected FROM forward_cursors WHERE connector=?", (connector,)
            ).fetchone()
            return (int(row[0]), int(row[1])) if row else (0, 0)


# ---------------------------------------------------------------------- one lane per connector


@dataclass(slots=True)
class _Item:
    event: OutEvent
    central_key: str
    index: int
    event_time: str | None


@dataclass(slots=True)
class _Batch:
    items: list[_Item]
    dead: list[DeadLetter]
    end: Cursor  # the cursor once every item of the batch is acknowledged
    more: bool  # more rows were available right away (worth preparing the next batch)


@dataclass
class LaneStatus:
    name: str
    backlog: int = 0
    fatal: str | None = None
    retries: int = 0
    last_error: str | None = None
    running: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class _Stopped(Exception):
    """The lane was asked to stop while a batch was still unacknowledged."""


class Lane:
    def __init__(
        self,
        connector: Connector,
        settings: ForwardSettings,
        store: ForwardStore,
        archive: ArchiveReader,
        *,
        normalize: NormalizeFn,
        bucket: str,
        rng: random.Random | None = None,
    ) -> None:
        self.connector = connector
        self.name = connector.name
        self.settings = settings
        self.store = store
        self.archive = archive
        self.normalize = normalize
        self.bucket = bucket
        self.status = LaneStatus(connector.name)
        self.stop = asyncio.Event()
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not crypto
        self._cache: tuple[str, list[dict[str, Any]]] | None = None
        self._opened = False
        self._open_lock = asyncio.Lock()

    # -------------------------------------------------------------- reading

    async def _records(self, central_key: str) -> list[dict[str, Any]]:
        if self._cache is not None and self._cache[0] == central_key:
            return self._cache[1]
        attempt = 0
        while True:
            try:
                records = await self.archive.read_records(central_key)
                break
            except Exception as exc:
                attempt += 1
                self.status.last_error = f"archive read: {type(exc).__name__}"
                log.error(
                    "forward.archive_read_failed",
                    connector=self.name,
                    key=central_key,
                    error_type=type(exc).__name__,
                    attempts=attempt,
                )
                await self._sleep(self._backoff(attempt))
        self._cache = (central_key, records)
        return records

    def _item(self, record: Any, central_key: str, index: int) -> _Item | DeadLetter:
        if not isinstance(record, dict):
            return DeadLetter("", central_key, index, None, "not a JSON object")
        try:
            out = self.normalize(record, self.connector.schema, central_key)
        except Exception as exc:
            return DeadLetter(
                record_key_text(record),
                central_key,
                index,
                record.get("eventTime") if isinstance(record.get("eventTime"), str) else None,
                f"normalize: {type(exc).__name__}: {exc}"[:500],
            )
        doc: dict[str, Any] | None
        if type(out) is bytes:
            doc, data = None, out
        else:
            assert isinstance(out, dict)
            doc = out
            try:
                data = orjson.dumps(doc)
            except TypeError as exc:
                return DeadLetter(
                    record_key_text(record), central_key, index, None, f"serialize: {exc}"[:500]
                )
        ev = to_out_event(record, doc, self.bucket, central_key, index, data=data)
        et = record.get("eventTime")
        return _Item(ev, central_key, index, et if isinstance(et, str) else None)

    async def fill(
        self,
        start: Cursor,
        items: list[_Item],
        dead: list[DeadLetter],
        *,
        max_events: int,
        max_bytes: int,
        nbytes: int = 0,
    ) -> tuple[Cursor, int, bool]:
        """Append items from ``start`` until a limit; (next position, bytes, more_available)."""
        pos = start
        while True:
            rows = self.store.ledger_from(pos.ledger_id, limit=16)
            if not rows:
                return pos, nbytes, False
            for row in rows:
                rid, key = int(row["id"]), str(row["central_key"])
                if rid != pos.ledger_id:
                    pos = Cursor(rid, 0)
                records = await self._records(key)
                n = len(records)
                for i in range(pos.offset, n):
                    got = self._item(records[i], key, i)
                    if type(got) is _Item:
                        items.append(got)
                        nbytes += len(got.event.data) + 100
                    else:
                        assert isinstance(got, DeadLetter)
                        dead.append(got)
                    if len(items) >= max_events or nbytes >= max_bytes:
                        if i + 1 >= n:  # row finished: point past it
                            self._cache = None
                            return Cursor(rid + 1, 0), nbytes, True
                        return Cursor(rid, i + 1), nbytes, True
                pos = Cursor(rid + 1, 0)
                self._cache = None

    # -------------------------------------------------------------- delivering

    def _backoff(self, attempt: int) -> float:
        cap = min(
            self.settings.backoff_max_secs,
            self.settings.backoff_initial_secs * 2 ** min(attempt - 1, 30),
        )
        return float(cap / 2 + self._rng.uniform(0, cap / 2))

    async def _sleep(self, secs: float) -> None:
        try:
            await asyncio.wait_for(self.stop.wait(), secs)
        except TimeoutError:
            return
        raise _Stopped

    async def _ensure_open(self) -> None:
        async with self._open_lock:
            await self._open_with_retries()

    async def _open_with_retries(self) -> None:
        attempt = 0
        while not self._opened:
            try:
                await self.connector.open()
                self._opened = True
            except Fatal:
                raise
            except Exception as exc:
                attempt += 1
                self.status.last_error = f"open: {type(exc).__name__}"
                log.warning(
                    "forward.open_failed",
                    connector=self.name,
                    error_type=type(exc).__name__,
                    attempts=attempt,
                )
                await self._sleep(self._backoff(attempt))

    async def deliver(self, items: Sequence[_Item]) -> tuple[int, list[DeadLetter]]:
        """Send until every item is delivered or rejected; (delivered, dead letters)."""
        await self._ensure_open()
        pending = list(items)
        delivered = 0
        dead: list[DeadLetter] = []
        attempt = 0
        while pending:
            batch = [it.event for it in pending]
            started = time.perf_counter()
            try:
                outs: list[Outcome] = await self.connector.send(batch)
            except Fatal:
                raise
            except Exception as exc:  # a connector bug must not lose events: retry
                log.error(
                    "forward.send_crashed", connector=self.name, error_type=type(exc).__name__
                )
                outs = [Retry(f"send raised {type(exc).__name__}")] * len(batch)
            if len(outs) != len(batch):
                log.error("forward.bad_outcomes", connector=self.name, count=len(outs))
                outs = [Retry("connector returned a wrong number of outcomes")] * len(batch)
            retry: list[_Item] = []
            reasons: set[str] = set()
            for it, out in zip(pending, outs, strict=True):
                if isinstance(out, Delivered):
                    delivered += 1
                elif isinstance(out, Rejected):
                    dead.append(
                        DeadLetter(it.event.id, it.central_key, it.index, it.event_time, out.reason)
                    )
                else:
                    retry.append(it)
                    reasons.add(out.reason)
            log.info(
                "forward.batch_sent",
                connector=self.name,
                events=len(batch),
                delivered=len(batch) - len(retry) - sum(isinstance(o, Rejected) for o in outs),
                rejected=sum(isinstance(o, Rejected) for o in outs),
                retries=len(retry),
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
            )
            if retry:
                attempt += 1
                self.status.retries += len(retry)
                self.status.last_error = sorted(reasons)[0][:300]
                await self._sleep(self._backoff(attempt))
            pending = retry
        return delivered, dead

    # -------------------------------------------------------------- the loop

    async def prepare(self, start: Cursor) -> _Batch | None:
        """The next batch from ``start`` (None when the ledger has nothing more)."""
        s = self.settings
        items: list[_Item] = []
        dead: list[DeadLetter] = []
        pos, nbytes, more = await self.fill(
            start, items, dead, max_events=s.batch_max_events, max_bytes=s.batch_max_bytes
        )
        if not items and not dead:
            return None
        # time-based batching: wait a little for more rows to fill a small batch
        deadline = time.monotonic() + s.batch_max_wait_secs
        while not more and len(items) < s.batch_max_events and time.monotonic() < deadline:
            await self._sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            pos, nbytes, more = await self.fill(
                pos,
                items,
                dead,
                max_events=s.batch_max_events,
                max_bytes=s.batch_max_bytes,
                nbytes=nbytes,
            )
        return _Batch(items, dead, pos, more)

    def _commit(self, batch: _Batch, delivered: int, rejected: list[DeadLetter]) -> None:
        self.store.commit(self.name, batch.end, delivered, [*batch.dead, *rejected])
        if rejected or batch.dead:
            log.warning(
                "forward.dead_lettered",
                connector=self.name,
                count=len(rejected) + len(batch.dead),
                reason=(rejected or batch.dead)[0].reason[:200],
            )

    async def step(self) -> bool:
        """Forward one batch from the cursor; False when there was nothing to do."""
        batch = await self.prepare(self.store.cursor(self.name, self.connector.settings.start_from))
        if batch is None:
            return False
        delivered, rejected = await self.deliver(batch.items) if batch.items else (0, [])
        self._commit(batch, delivered, rejected)
        return True

    async def pump(self) -> bool:
        """Forward batches until the ledger is exhausted; False when there was nothing.

        Pipelined: while batches are on the wire (up to the connector's ``max_in_flight``),
        the next one is read and normalized. Batches are acknowledged in any order but
        committed strictly in ledger order, so the cursor never passes an unacknowledged event.
        """
        ready = await self.prepare(self.store.cursor(self.name, self.connector.settings.start_from))
        if ready is None:
            return False
        limit = max(1, self.connector.max_in_flight)
        inflight: deque[tuple[_Batch, asyncio.Task[tuple[int, list[DeadLetter]]]]] = deque()
        next_start = ready.end
        try:
            while ready is not None or inflight:
                while ready is not None and len(inflight) < limit:
                    inflight.append((ready, asyncio.create_task(self.deliver(ready.items))))
                    await asyncio.sleep(0)  # let the send start before the CPU-bound prepare
                    more = ready.more
                    ready = await self.prepare(next_start) if more else None
                    if ready is not None:
                        next_start = ready.end
                batch, sending = inflight.popleft()
                delivered, rejected = await sending
                self._commit(batch, delivered, rejected)
                if ready is None and not inflight:
                    ready = await self.prepare(next_start)
                    if ready is not None:
                        next_start = ready.end
        except BaseException:
            for _, task in inflight:
                task.cancel()
            await asyncio.gather(*(t for _, t in inflight), return_exceptions=True)
            raise
        return True

    async def run(self) -> None:
        self.status.running = True
        crashes = 0
        try:
            while not self.stop.is_set():
                try:
                    worked = await self.pump()
                except _Stopped:
                    break
                except (Fatal, asyncio.CancelledError):
                    raise
                except Exception as exc:  # a bug or a state DB problem: log, back off, go on
                    crashes += 1
                    self.status.last_error = f"lane: {type(exc).__name__}"
                    log.error(
                        "forward.lane_crashed",
                        connector=self.name,
                        error_type=type(exc).__name__,
                        attempts=crashes,
                        exc_info=True,
                    )
                    self._cache = None
                    try:
                        await self._sleep(self._backoff(crashes))
                    except _Stopped:
                        break
                    continue
                crashes = 0
                if not worked:
                    try:
                        await self._sleep(self.settings.poll_interval_secs)
                    except _Stopped:
                        break
        except Fatal as exc:
            self.status.fatal = str(exc)[:500]
            log.error("forward.connector_fatal", connector=self.name, error_type=str(exc)[:300])
        finally:
            self.status.running = False
            await self.connector.close()
            self._opened = False


# ---------------------------------------------------------------------- the forwarder


@dataclass
class ReplayReport:
    objects: int = 0
    events: int = 0
    delivered: int = 0
    rejected: int = 0


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

    def status(self) -> list[LaneStatus]:
        out = []
        for name, lane in self.lanes.items():
            lane.status.backlog = self.store.backlog(name)
            d, r = self.store.counts(name)
            lane.status.extra = {"delivered": d, "rejected": r}
            out.append(lane.status)
        return out

    def start(self) -> None:
        tune_gc()
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
                await lane.connector.close()
                lane._opened = False

        await asyncio.gather(*(one(lane) for lane in self.lanes.values()))

    async def replay(self, name: str, since: datetime, until: datetime) -> ReplayReport:
        """Re-send events with since <= eventTime < until from the central archive."""
        lane = self.lanes.get(name)
        if lane is None:
            raise KeyError(f"no enabled connector named {name!r}")
        lo, hi = since.timestamp(), until.timestamp()
        rows = self.store.ledger_between(_iso(since), _iso(until))
        report = ReplayReport()
        s = self.settings
        try:
            for row in rows:
                key = str(row["central_key"])
                records = await lane._records(key)
                report.objects += 1
                batch: list[_Item] = []
                nbytes = 0
                for i, rec in enumerate(records):
                    if not isinstance(rec, dict) or not lo <= _event_time(rec) < hi:
                        continue
                    got = lane._item(rec, key, i)
                    report.events += 1
                    if isinstance(got, DeadLetter):
                        self.store.commit(name, None, 0, [got])
                        report.rejected += 1
                        continue
                    batch.append(got)
                    nbytes += len(got.event.data) + 100
                    if len(batch) >= s.batch_max_events or nbytes >= s.batch_max_bytes:
                        await self._replay_batch(lane, batch, report)
                        batch, nbytes = [], 0
                if batch:
                    await self._replay_batch(lane, batch, report)
        finally:
            await lane.connector.close()
            lane._opened = False
        return report

    async def _replay_batch(self, lane: Lane, batch: list[_Item], report: ReplayReport) -> None:
        delivered, dead = await lane.deliver(batch)
        self.store.commit(lane.name, None, 0, dead)
        report.delivered += delivered
        report.rejected += len(dead)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------- CLI: ctagg replay


def parse_when(text: str) -> datetime:
    """ISO date or date-time; naive values are UTC."""
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def add_replay_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help="YAML config file")
    p.add_argument("--connector", required=True, help="forward.connectors[].name")
    p.add_argument("--since", required=True, type=parse_when, help="ISO date/time (UTC)")
    p.add_argument("--until", required=True, type=parse_when, help="ISO date/time, exclusive")


async def replay_with_settings(
    settings: Settings, name: str, since: datetime, until: datetime
) -> ReplayReport:
    # The archive is read with its own identity (archive.archive_session: the writer
    # account's role when archive.writer_account_id is set), as ingest writes it.
    from aggregator.archive import store as archive
    from aggregator.aws.clients import Aws

    state = State(settings.state.path)
    try:
        async with archive.opened(settings, Aws(settings.aws)) as central:
            try:  # a one-shot command: a refused archive identity ends it, not retried
                await central.client()
            except Exception as exc:
                raise Fatal(f"cannot open the central archive: {exc}") from exc
            fwd = Forwarder(settings.forward, state, central, bucket=settings.archive.bucket)
            return await fwd.replay(name, since, until)
    finally:
        state.close()


def run_replay(args: argparse.Namespace) -> int:
    from aggregator.cli import load_or_exit

    settings = load_or_exit(args.config)
    names = [c.name for c in settings.forward.connectors if c.enabled]
    if args.connector not in names:
        print(f"no enabled connector named {args.connector!r}; have {names}")
        return 2
    if args.until <= args.since:
        print("--until must be after --since")
        return 2
    try:
        report = asyncio.run(replay_with_settings(settings, args.connector, args.since, args.until))
    except Fatal as exc:
        print(f"replay stopped: {exc}")
        return 1
    print(
        f"replayed {report.events} events from {report.objects} central objects to "
        f"{args.connector}: {report.delivered} delivered, {report.rejected} dead-lettered"
    )
    return 0 if report.rejected == 0 else 1


# ---------------------------------------------------------------------- service wiring


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
    from aggregator.archive import store as archive
    from aggregator.aws.clients import Aws

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
        fwd.start()
        log.info("forward.started", count=len(fwd.lanes))
        try:
            yield fwd
        finally:
            await fwd.stop()
            log.info("forward.stopped", count=len(fwd.lanes))
