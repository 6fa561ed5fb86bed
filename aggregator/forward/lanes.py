"""One lane per connector: it reads central objects in ledger order (``ledger.id`` is the
position), drops what the connector's ``include`` / ``exclude`` conditions filter out,
normalizes each record to the connector's schema, batches by count / bytes / time, and hands
batches to ``connector.send``.

Per event the connector answers delivered, retry or rejected: retries are sent again after
exponential backoff with jitter (only the events that need it), rejections go to the dead
letters with the reason, and only when every event of a batch is acknowledged one way or the
other does the cursor move, in the same transaction as the dead letters. A crash or restart in
between sends the batch again (OpenSearch overwrites by ``_id``; nothing is lost anywhere).

Before its events are read, a central object's bytes are checked against the SHA-256 the ledger
recorded when it was written: a modified object is refused whole (ERROR
``forward.object_modified``, one dead letter for the object, counted), none of its events is
sent, and the lane goes on with the next object. A read that fails is retried with backoff.

The lane also says how it is doing (:class:`LaneStatus`): a connector that has not delivered
for ``forward.warn_after_secs`` while it had something to deliver is *failing* (WARNING with
the reason, repeated every ``forward.warn_interval_secs``), one stopped by
:class:`~connectors.base.Fatal` is *fatal* (ERROR with what to fix; the lane probes the sink
again every ``forward.fatal_retry_secs`` and resumes when it answers). The state is persisted
on each change, for ``ctagg status`` in another process.
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

from aggregator.archive.store import ObjectModified
from aggregator.config import ForwardSettings
from aggregator.forward.documents import NormalizeFn, to_out_event
from aggregator.forward.filters import EventFilter
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
    envelope_event,
)

log = get_logger("aggregator.forward")

FATAL_HINT = (
    "fix the connector's settings (token, credentials, index) or the sink; the lane tries "
    "again every forward.fatal_retry_secs and resumes by itself, or restart after a config change"
)


class ArchiveReader(Protocol):
    """Reads one central object (``{"Records": [...]}``, gzip) as its records; with
    ``sha256`` (the ledger's) it raises :class:`~aggregator.archive.store.ObjectModified`
    when the object's bytes hash to something else."""

    async def read_records(
        self, central_key: str, sha256: str | None = None
    ) -> list[dict[str, Any]]: ...


# the dead letter of a whole central object (refused before any of its events was read)
OBJECT_INDEX = -1


def object_event_id(central_key: str) -> str:
    """The dead-letter id of a whole central object."""
    return f"object:{central_key}"


@dataclass(slots=True)
class Item:
    event: OutEvent
    central_key: str
    index: int
    event_time: str | None
    record: dict[str, Any] | None = None  # kept when the event carries no id

    @property
    def event_id(self) -> str:
        """The event's dedupe key text (computed now when the connector did not need it)."""
        if self.event.id or self.record is None:
            return self.event.id
        return record_key_text(self.record)


@dataclass(slots=True)
class Batch:
    items: list[Item]
    dead: list[DeadLetter]
    end: Cursor  # the cursor once every item of the batch is acknowledged
    more: bool  # more rows were available right away (worth preparing the next batch)
    filtered: int = 0  # events the connector's conditions dropped (handled, not sent)


@dataclass
class LaneStatus:
    """How a lane is doing, in memory (the metrics and ``/readyz`` read it live). The totals
    count since the process started; the persisted ones are in ``forward_cursors``."""

    name: str
    backlog: int = 0
    fatal: str | None = None
    retries: int = 0
    last_error: str | None = None
    running: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    delivered: int = 0
    rejected: int = 0
    filtered: int = 0
    modified_objects: int = 0  # central objects refused: their bytes are not the ledger's
    failing_since: float | None = None  # wall time of the first failure since a delivery
    warned: bool = False  # the failure lasted past warn_after_secs (and was logged)
    last_delivered_at: float | None = None  # wall time a sink last acknowledged an event
    started_at: float = field(default_factory=time.time)

    @property
    def state(self) -> str:
        """``fatal``, ``failing`` (no delivery for longer than forward.warn_after_secs) or
        ``ok``."""
        if self.fatal is not None:
            return "fatal"
        return "failing" if self.warned else "ok"

    @property
    def up(self) -> bool:
        return self.state == "ok"

    def reason(self) -> str | None:
        return self.fatal if self.fatal is not None else self.last_error


class _Stopped(Exception):
    """The lane was asked to stop while a batch was still unacknowledged."""


class GaveUp(Exception):
    """A bounded delivery (a one-shot command) ran out of attempts; the reason is the last
    transient failure."""


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
        event_filter: EventFilter | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.connector = connector
        self.name = connector.name
        self.settings = settings
        self.store = store
        self.archive = archive
        self.normalize = normalize
        self.bucket = bucket
        self.filter = event_filter or EventFilter.for_connector(connector.settings)
        self.status = LaneStatus(connector.name)
        self.stop = asyncio.Event()
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not crypto
        self._cache: tuple[str, list[dict[str, Any]]] | None = None
        self._opened = False
        self._open_lock = asyncio.Lock()
        self._warned_at = 0.0
        self.persist_state = True  # one-shot commands (replay) leave the daemon's state alone

    # -------------------------------------------------------------- health

    def _failed(self, reason: str) -> None:
        """A delivery (or the open, or the archive read it needs) failed for now."""
        st = self.status
        now = time.time()
        st.last_error = reason[:300]
        if st.failing_since is None:
            st.failing_since = now
        s = self.settings
        down = now - st.failing_since
        if down < s.warn_after_secs:
            return
        if not st.warned or now - self._warned_at >= s.warn_interval_secs:
            first = not st.warned
            st.warned = True
            self._warned_at = now
            log.warning(
                "forward.connector_failing",
                connector=self.name,
                reason=st.last_error,
                failing_secs=round(down),
                last_delivered_secs=(
                    round(now - st.last_delivered_at) if st.last_delivered_at else None
                ),
            )
            if first:
                self._persist("failing", st.last_error, st.failing_since)

    def _answered(self, delivered: int) -> None:
        """The sink answered for some events (delivered, or rejected for good): it works."""
        st = self.status
        now = time.time()
        if delivered:
            st.last_delivered_at = now
        if st.fatal is not None:
            self._unfatal()
        elif st.failing_since is not None:
            self._recovered(now)

    def _idle(self) -> None:
        """Nothing to deliver: not failing (a fatal connector stays fatal until it answers)."""
        if self.status.fatal is None and self.status.failing_since is not None:
            self._recovered(time.time())

    def _recovered(self, now: float) -> None:
        st = self.status
        if st.warned and st.failing_since is not None:
            log.warning(
                "forward.connector_recovered",
                connector=self.name,
                failing_secs=round(now - st.failing_since),
            )
            self._persist("ok", None, now)
        st.failing_since, st.warned = None, False

    def _fatal(self, exc: Fatal) -> None:
        st = self.status
        first = st.fatal is None
        st.fatal = str(exc)[:500]
        log.error(
            "forward.connector_fatal",
            connector=self.name,
            error_type=st.fatal[:300],
            hint=FATAL_HINT,
            retry_secs=self.settings.fatal_retry_secs,
        )
        if first:
            self._persist("fatal", st.fatal, time.time())

    def _unfatal(self) -> None:
        st = self.status
        if st.fatal is not None:
            log.warning("forward.connector_resumed", connector=self.name)
            st.fatal = None
            st.failing_since, st.warned = None, False
            self._persist("ok", None, time.time())

    def _persist(self, state: str, reason: str | None, since: float) -> None:
        if not self.persist_state:
            return
        try:
            self.store.cursor(self.name, self.connector.settings.start_from)
            self.store.set_state(self.name, state, reason, since)
        except Exception as exc:  # the state is for operators; never stop a lane for it
            log.warning("forward.state_write_failed", connector=self.name, error_type=str(exc))

    # -------------------------------------------------------------- reading

    async def records(self, central_key: str, sha256: str | None = None) -> list[dict[str, Any]]:
        """The object's records, read again with backoff until the read works; with ``sha256``
        :class:`ObjectModified` (not retried: it will not heal) when the bytes differ."""
        if self._cache is not None and self._cache[0] == central_key:
            return self._cache[1]
        attempt = 0
        while True:
            try:
                records = await self.archive.read_records(central_key, sha256)
                break
            except ObjectModified:
                raise
            except Exception as exc:
                attempt += 1
                self._failed(f"archive read: {type(exc).__name__}: {exc}"[:300])
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

    def refuse(self, exc: ObjectModified) -> DeadLetter:
        """A modified central object: said at ERROR, counted, and its dead letter."""
        self.status.modified_objects += 1
        log.error(
            "forward.object_modified",
            connector=self.name,
            key=exc.key,
            expected_sha256=exc.expected,
            actual_sha256=exc.actual,
            hint="the object was overwritten after ingest; none of its events is sent. "
            "Restore it (a versioned bucket keeps the original) and run "
            "`ctagg dead-letters --retry`",
        )
        return DeadLetter(object_event_id(exc.key), exc.key, OBJECT_INDEX, None, str(exc))

    def item(self, record: Any, central_key: str, index: int) -> Item | DeadLetter | None:
        """The event for ``record``, its dead letter, or None when the connector's
        conditions filter it out."""
        if not isinstance(record, dict):
            return DeadLetter("", central_key, index, None, "not a JSON object")
        if not self.filter.accept(record):
            return None
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
        data = body = b""
        if type(out) is bytes:
            doc, data = None, out
        else:
            assert isinstance(out, dict)
            doc = out
            inner = envelope_event(doc)
            try:  # an envelope's sinks send the record inside it: serialize only that
                if inner is not None:
                    body = orjson.dumps(inner)
                else:
                    data = orjson.dumps(doc)
            except TypeError as exc:
                return DeadLetter(
                    record_key_text(record), central_key, index, None, f"serialize: {exc}"[:500]
                )
        with_id = self.connector.uses_event_id
        ev = to_out_event(
            record, doc, self.bucket, central_key, index, data=data, body=body, with_id=with_id
        )
        et = record.get("eventTime")
        return Item(
            ev, central_key, index, et if type(et) is str else None, None if with_id else record
        )

    async def fill(
        self,
        start: Cursor,
        batch: Batch,
        *,
        max_events: int,
        max_bytes: int,
        nbytes: int = 0,
    ) -> tuple[int, bool]:
        """Append items from ``start`` to ``batch`` until a limit (events, bytes, or records
        read: a filter may drop most of them); moves ``batch.end``. Returns (bytes,
        more_available)."""
        items, dead = batch.items, batch.dead
        pos = start
        scanned = 0
        max_scan = max(max_events * 8, 4096)
        while True:
            rows = self.store.ledger.from_id(pos.ledger_id, limit=16)
            if not rows:
                batch.end = pos
                return nbytes, False
            # rows a resize imported as delivered already, past the cursor (else empty)
            sent = self.store.delivered_between(self.name, int(rows[0]["id"]), int(rows[-1]["id"]))
            for row in rows:
                rid, key = int(row["id"]), str(row["central_key"])
                if rid != pos.ledger_id:
                    pos = Cursor(rid, 0)
                done = sent.get(rid, 0)
                if done >= max(int(row["events"]), 1):
                    pos = Cursor(rid + 1, 0)  # delivered whole by the shard that wrote it
                    continue
                if done > pos.offset:
                    pos = Cursor(rid, done)
                try:
                    records = await self.records(key, row.get("sha256"))
                except ObjectModified as exc:
                    dead.append(self.refuse(exc))
                    pos = Cursor(rid + 1, 0)
                    self._cache = None
                    continue
                n = len(records)
                for i in range(pos.offset, n):
                    got = self.item(records[i], key, i)
                    scanned += 1
                    if type(got) is Item:
                        items.append(got)
                        nbytes += len(got.event.body or got.event.data) + 100
                    elif got is None:
                        batch.filtered += 1
                    else:
                        assert isinstance(got, DeadLetter)
                        dead.append(got)
                    if len(items) >= max_events or nbytes >= max_bytes or scanned >= max_scan:
                        if i + 1 >= n:  # row finished: point past it
                            self._cache = None
                            batch.end = Cursor(rid + 1, 0)
                        else:
                            batch.end = Cursor(rid, i + 1)
                        return nbytes, True
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

    async def _ensure_open(self, max_attempts: int | None = None) -> None:
        async with self._open_lock:
            await self._open_with_retries(max_attempts)

    async def _open_with_retries(self, max_attempts: int | None = None) -> None:
        attempt = 0
        while not self._opened:
            try:
                await self.connector.open()
                self._opened = True
            except Fatal:
                raise
            except Exception as exc:
                attempt += 1
                reason = f"open: {type(exc).__name__}: {exc}"[:300]
                self._failed(reason)
                log.info(
                    "forward.open_failed",
                    connector=self.name,
                    error_type=type(exc).__name__,
                    attempts=attempt,
                )
                if max_attempts is not None and attempt >= max_attempts:
                    raise GaveUp(reason) from None
                await self._sleep(self._backoff(attempt))

    async def deliver(
        self, items: Sequence[Item], *, max_attempts: int | None = None
    ) -> tuple[int, list[DeadLetter]]:
        """Send until every item is delivered or rejected; (delivered, dead letters).
        ``max_attempts`` bounds the rounds (one-shot commands): :class:`GaveUp` after that."""
        await self._ensure_open(max_attempts)
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
            ok = rejected = 0
            for it, out in zip(pending, outs, strict=True):
                if isinstance(out, Delivered):
                    ok += 1
                elif isinstance(out, Rejected):
                    rejected += 1
                    dead.append(
                        DeadLetter(it.event_id, it.central_key, it.index, it.event_time, out.reason)
                    )
                else:
                    retry.append(it)
                    reasons.add(out.reason)
            delivered += ok
            log.info(
                "forward.batch_sent",
                connector=self.name,
                events=len(batch),
                delivered=ok,
                rejected=rejected,
                retries=len(retry),
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
            )
            if ok or rejected:  # the sink answered for some events: it works
                self._answered(ok)
            if retry:
                attempt += 1
                self.status.retries += len(retry)
                reason = sorted(reasons)[0][:300]
                if ok or rejected:
                    self.status.last_error = reason
                else:
                    self._failed(reason)
                if max_attempts is not None and attempt >= max_attempts:
                    raise GaveUp(reason)
                await self._sleep(self._backoff(attempt))
            pending = retry
        return delivered, dead

    # -------------------------------------------------------------- the loop

    async def prepare(self, start: Cursor) -> Batch | None:
        """The next batch from ``start`` (None when the ledger has nothing more)."""
        s = self.settings
        batch = Batch([], [], start, False)
        nbytes, more = await self.fill(
            start, batch, max_events=s.batch_max_events, max_bytes=s.batch_max_bytes
        )
        if batch.end == start:
            return None
        # time-based batching: wait a little for more rows to fill a small batch
        deadline = time.monotonic() + s.batch_max_wait_secs
        while not more and len(batch.items) < s.batch_max_events and time.monotonic() < deadline:
            await self._sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            nbytes, more = await self.fill(
                batch.end,
                batch,
                max_events=s.batch_max_events,
                max_bytes=s.batch_max_bytes,
                nbytes=nbytes,
            )
        batch.more = more
        return batch

    def _commit(self, batch: Batch, delivered: int, rejected: list[DeadLetter]) -> None:
        dead = [*batch.dead, *rejected]
        self.store.commit(self.name, batch.end, delivered, dead, filtered=batch.filtered)
        st = self.status
        st.delivered += delivered
        st.rejected += len(dead)
        st.filtered += batch.filtered
        if dead:
            log.warning(
                "forward.dead_lettered",
                connector=self.name,
                count=len(dead),
                reason=dead[0].reason[:200],
            )

    async def step(self) -> bool:
        """Forward one batch from the cursor; False when there was nothing to do."""
        batch = await self.prepare(self.store.cursor(self.name, self.connector.settings.start_from))
        if batch is None:
            return False
        delivered, rejected = await self.deliver(batch.items) if batch.items else (0, [])
        self._commit(batch, delivered, rejected)
        return True

    async def _send(self, batch: Batch) -> tuple[int, list[DeadLetter]]:
        if not batch.items:
            return 0, []
        return await self.deliver(batch.items)

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
                    inflight.append((ready, asyncio.create_task(self._send(ready))))
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
                except Fatal as exc:
                    self._fatal(exc)
                    await self.close()
                    try:  # probe again later: a fixed sink resumes without a restart
                        await self._sleep(self.settings.fatal_retry_secs)
                    except _Stopped:
                        break
                    continue
                except asyncio.CancelledError:
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
                    self._idle()
                    try:
                        await self._sleep(self.settings.poll_interval_secs)
                    except _Stopped:
                        break
        finally:
            self.status.running = False
            await self.close()

    async def close(self) -> None:
        """Close the connector (opened again on the next delivery)."""
        await self.connector.close()
        self._opened = False
