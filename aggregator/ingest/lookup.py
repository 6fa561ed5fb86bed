"""CloudTrail ``LookupEvents`` collector: management events for account × region pairs no trail
covers (or named in config), and to fill gaps completeness finds (at most 90 days back, the
API's limit).

* A token bucket per account-region paces requests at ``requests_per_sec`` (LookupEvents
  allows 2 per second per account per region), burst 1: never more than 2 in any 1 s window.
* ``MaxResults`` 50, pages followed with ``NextToken``.
* ``ThrottlingException`` (HTTP 400) is retried with exponential backoff (through the bucket).
* Time is cut into windows on a fixed grid (:meth:`LookupCollector.cells`); the cursor
  (``lookup_cursor``, migration 40) advances only when the caller commits a window, after its
  records were archived; every window starts ``overlap_secs`` before its grid cell, so
  late-indexed events are seen (dedupe drops repeats). Windows depend only on the committed
  cursor, so a crash before the commit reads (and writes) the same window again.
* Each item's ``CloudTrailEvent`` is the CloudTrail record as JSON text: the same record a trail
  delivers, so its dedupe key is the same and the two copies collapse.

The ingest job (``Ingestor._lookup_pair``) feeds each window through the common
dedupe → central write → commit path, then commits the cursor.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from aggregator.aws.errors import error_code, is_throttling
from aggregator.aws.inventory import Inventory
from aggregator.config import LookupSettings
from aggregator.ingest.collect import Decoded
from aggregator.log import get_logger

log = get_logger("aggregator.lookup")

MAX_AGE_SECS = 90 * 86400
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
ClientFor = Callable[[str, str], Awaitable[Any]]


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` stored; ``acquire`` waits for one."""

    def __init__(
        self, rate: float, burst: float = 1.0, *, clock: Clock, sleep: Sleep = asyncio.sleep
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.sleep = sleep
        self.tokens = burst
        self.last = clock()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = self.clock()
                self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
                self.last = now
                if self.tokens >= 1.0:
                    self.tokens -= 1.0
                    return
                await self.sleep((1.0 - self.tokens) / self.rate)


class LookupThrottled(Exception):
    """Still throttled after every retry; the window is not committed and is read next run."""


@dataclass
class LookupWindow:
    account_id: str
    region: str
    start: float  # epoch seconds, inclusive
    end: float  # epoch seconds, exclusive for the cursor
    records: list[dict[str, Any]] = field(default_factory=list)
    pages: int = 0
    unparsable: int = 0

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[dict[str, Any]]:
        for r in self.records:
            yield r


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class LookupCollector:
    def __init__(
        self,
        settings: LookupSettings,
        client_for: ClientFor,
        *,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.client_for = client_for
        self.clock = clock
        self.sleep = sleep
        self.jitter = jitter
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self.requests = 0
        self.throttled = 0

    def bucket(self, account_id: str, region: str) -> TokenBucket:
        key = (account_id, region)
        b = self._buckets.get(key)
        if b is None:
            b = TokenBucket(self.settings.requests_per_sec, 1.0, clock=self.clock, sleep=self.sleep)
            self._buckets[key] = b
        return b

    # ------------------------------------------------------------------ planning

    def cells(self, cursor: float | None, now: float | None = None) -> list[tuple[float, float]]:
        """The (start, end) windows due, oldest first.

        Windows sit on a fixed grid of ``window_secs`` (epoch-aligned): the cell ``[g, g + W)``
        is read as ``[g - overlap_secs, g + W)`` (the overlap re-reads late-indexed events, dedupe
        drops repeats) and committed by moving the cursor to ``g + W``. Only whole cells ending
        before now - ``lag_secs`` are due, the first one is the cell holding the cursor (or
        ``backfill_days`` back on a first run), and none starts more than 90 days back.

        So a window is a function of the committed cursor alone: a run that dies before its
        commit reads the same window again (same ``window_source_key``, same central key), and
        a window once committed is never read again under the same key.
        """
        now = self.clock() if now is None else now
        w = self.settings.window_secs
        overlap = self.settings.overlap_secs
        end = (now - self.settings.lag_secs) // w * w
        oldest = -(-(now - MAX_AGE_SECS + 60 + overlap) // w) * w  # ceil to the grid
        base = now - self.settings.backfill_days * 86400 if cursor is None else cursor
        g = max(base // w * w, oldest)
        out = []
        while g + w <= end:
            out.append((g - overlap, g + w))
            g += w
        return out

    # ------------------------------------------------------------------ reading

    async def windows(
        self, account_id: str, region: str, start: float, end: float
    ) -> AsyncIterator[LookupWindow]:
        """Windows of ``window_secs`` from ``start`` to ``end``, oldest first, each fully read
        before it is yielded. Starts older than 90 days are clipped (the API keeps no more)."""
        floor = self.clock() - MAX_AGE_SECS + 60
        t = max(start, floor)
        while t < end:
            w_end = min(t + self.settings.window_secs, end)
            yield await self.read_window(account_id, region, t, w_end)
            t = w_end

    async def read_window(
        self, account_id: str, region: str, start: float, end: float
    ) -> LookupWindow:
        client = await self.client_for(account_id, region)
        win = LookupWindow(account_id, region, start, end)
        kwargs: dict[str, Any] = {
            "StartTime": _dt(start),
            "EndTime": _dt(end),
            "MaxResults": self.settings.max_results,
        }
        while True:
            resp = await self._call(account_id, region, client, kwargs)
            win.pages += 1
            for item in resp.get("Events") or []:
                text = item.get("CloudTrailEvent")
                try:
                    rec = orjson.loads(text) if isinstance(text, str | bytes) else None
                except orjson.JSONDecodeError:
                    rec = None
                if isinstance(rec, dict):
                    win.records.append(rec)
                else:
                    win.unparsable += 1
            token = resp.get("NextToken")
            if not token:
                break
            kwargs["NextToken"] = token
        log.info(
            "lookup.window_read",
            account_id=account_id,
            region=region,
            start=_dt(start).isoformat(),
            end=_dt(end).isoformat(),
            events=len(win.records),
            pages=win.pages,
            unparsable=win.unparsable,
        )
        return win

    async def _call(
        self, account_id: str, region: str, client: Any, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        bucket = self.bucket(account_id, region)
        attempt = 0
        while True:
            await bucket.acquire()
            self.requests += 1
            try:
                resp: dict[str, Any] = await client.lookup_events(**kwargs)
            except Exception as exc:
                if not is_throttling(exc):
                    raise
                self.throttled += 1
                if attempt >= self.settings.max_throttle_retries:
                    log.warning(
                        "lookup.throttled",
                        account_id=account_id,
                        region=region,
                        error_type=error_code(exc),
                        attempts=attempt + 1,
                    )
                    raise LookupThrottled(f"{account_id}/{region}: {error_code(exc)}") from exc
                delay = min(30.0, 0.5 * 2**attempt) * (0.5 + self.jitter() / 2)
                attempt += 1
                await self.sleep(delay)
                continue
            return resp


def lookup_targets(inventory: Inventory, settings: LookupSettings) -> list[tuple[str, str]]:
    """Account × region pairs to read with LookupEvents, per ``settings.mode``."""
    pairs = {(a, r) for a, regions in inventory.regions.items() for r in regions}
    chosen: set[tuple[str, str]] = set()
    if settings.mode == "always":
        chosen = set(pairs)
    elif settings.mode == "untrailed":
        covered: set[tuple[str, str]] = {(s.account_id, s.region) for s in inventory.sources}
        for t in inventory.trails:
            accounts = {a for a, _ in pairs} if t.is_organization else {t.owner_account_id}
            for a, r in pairs:
                if a in accounts and (t.is_multi_region or r == t.home_region):
                    covered.add((a, r))
        chosen = pairs - covered
    chosen |= {(t.account_id, t.region) for t in settings.targets}
    return sorted(chosen)


async def due_windows(
    collector: LookupCollector, account_id: str, region: str, cursor: float | None
) -> AsyncIterator[LookupWindow]:
    """The windows due for one account-region given its cursor
    (``integrity_state.lookup_cursor``), each read when the caller asks for it. Commit each
    window after archiving its records with
    ``integrity_state.set_lookup_cursor(state, account_id, region, window.end)``."""
    for start, end in collector.cells(cursor):
        yield await collector.read_window(account_id, region, start, end)


def window_source_key(window: LookupWindow) -> str:
    """A stable pseudo source key for a window (central keys derive from source keys):
    ``lookup/<account>/<region>/<start>-<end>``."""
    return (
        f"lookup/{window.account_id}/{window.region}/"
        f"{_dt(window.start):%Y%m%dT%H%M%SZ}-{_dt(window.end):%Y%m%dT%H%M%SZ}"
    )


def decode_window(window: LookupWindow, *, max_record_bytes: int) -> Decoded:
    """The window's records in the shape ``collect.decode_log`` gives ingest (dedupe key,
    serialized record, eventTime per record), so they take the same dedupe/archive path.
    Records come newest first from the API; they are put in event-time order."""
    records = sorted(window.records, key=lambda r: str(r.get("eventTime") or ""))
    out = Decoded()
    out.take(
        [dict(r) if isinstance(r, dict) else r for r in records], max_record_bytes, "record {}"
    )
    return out
