"""One lane per connector: it reads central objects in ledger order (``ledger.id`` is the
position), normalizes each record to the connector's schema, batches by count / bytes / time,
and hands batches to ``connector.send``.

Per event the connector answers delivered, retry or rejected: retries are sent again after
exponential backoff with jitter (only the events that need it), rejections go to the dead
letters with the reason, and only when every event of a batch is acknowledged one way or the
other does the cursor move, in the same transaction as the dead letters. A crash or restart in
between sends the batch again (OpenSearch overwrites by ``_id``; nothing is lost anywhere).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from aggregator.config import ForwardSettings
from aggregator.forward.documents import NormalizeFn, to_out_event
from aggregator.forward.store import Cursor, DeadLetter, ForwardStore
from aggregator.ingest.dedupe import record_key_text
from aggregator.log import get_logger
from connectors.base import (
    Connector,
    Delivered,
    Fatal,
    Outcome,
    OutEvent,
    Rejected,
    Retry,
)

log = get_logger("aggregator.forward")


class ArchiveReader(Protocol):
    """Reads one central object (``{"Records": [...]}``, gzip) as its records."""

    async def read_records(self, central_key: str) -> list[dict[str, Any]]: ...


@dataclass(slots=True)
class Item:
    event: OutEvent
    central_key: str
    index: int
    event_time: str | None


@dataclass(slots=True)
class Batch:
    items: list[Item]
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

    async def records(self, central_key: str) -> list[dict[str, Any]]:
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

    def item(self, record: Any, central_key: str, index: int) -> Item | DeadLetter:
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
        return Item(ev, central_key, index, et if isinstance(et, str) else None)

    async def fill(
        self,
        start: Cursor,
        items: list[Item],
        dead: list[DeadLetter],
        *,
        max_events: int,
        max_bytes: int,
        nbytes: int = 0,
    ) -> tuple[Cursor, int, bool]:
        """Append items from ``start`` until a limit; (next position, bytes, more_available)."""
        pos = start
        while True:
            rows = self.store.ledger.from_id(pos.ledger_id, limit=16)
            if not rows:
                return pos, nbytes, False
            for row in rows:
                rid, key = int(row["id"]), str(row["central_key"])
                if rid != pos.ledger_id:
                    pos = Cursor(rid, 0)
                records = await self.records(key)
                n = len(records)
                for i in range(pos.offset, n):
                    got = self.item(records[i], key, i)
                    if type(got) is Item:
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

    async def deliver(self, items: Sequence[Item]) -> tuple[int, list[DeadLetter]]:
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
            retry: list[Item] = []
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

    async def prepare(self, start: Cursor) -> Batch | None:
        """The next batch from ``start`` (None when the ledger has nothing more)."""
        s = self.settings
        items: list[Item] = []
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
        return Batch(items, dead, pos, more)

    def _commit(self, batch: Batch, delivered: int, rejected: list[DeadLetter]) -> None:
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
        inflight: deque[tuple[Batch, asyncio.Task[tuple[int, list[DeadLetter]]]]] = deque()
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
            await self.close()

    async def close(self) -> None:
        """Close the connector (opened again on the next delivery)."""
        await self.connector.close()
        self._opened = False
