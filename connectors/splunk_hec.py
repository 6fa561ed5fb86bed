"""Splunk HTTP Event Collector over aiohttp.

* ``POST /services/collector/event`` with a batch of concatenated JSON objects, gzip optional,
  ``Authorization: Splunk <token>``; per event ``time`` (eventTime, epoch seconds),
  ``host``, ``source``, ``sourcetype`` (``aws:cloudtrail``), ``index`` and ``event``.
* Indexer acknowledgement (``ack: true``): requests carry ``X-Splunk-Request-Channel``; the
  response's ``ackId`` is polled at ``/services/collector/ack`` and the batch is delivered
  only when Splunk says it is indexed. An ack that never comes (lost, indexer restarted) makes
  the batch retry after ``ack_timeout_secs``.
* HEC status codes: busy (9), unhealthy (18) and 5xx retry; missing/invalid token (2, 3, 4) and
  configuration errors (7 incorrect index, 14 ack disabled) are :class:`Fatal`; invalid data
  (5, 6, 12, 13) rejects the event Splunk names (``invalid-event-number``): the events before
  it were indexed, the rest go in the next request at once, so a rejected event costs one
  round trip and no duplicates.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import orjson
from isal import igzip
from pydantic import Field, SecretStr

from aggregator.log import get_logger

if TYPE_CHECKING:
    import aiohttp

from connectors.base import (
    DELIVERED,
    Connector,
    ConnectorSettings,
    Fatal,
    Outcome,
    OutEvent,
    Rejected,
    Schema,
    all_retry,
    envelope_event,
)

log = get_logger(__name__)

RETRY_CODES = frozenset({8, 9, 18})  # internal error, server busy, unhealthy
FATAL_CODES = frozenset({1, 2, 3, 4, 7, 10, 11, 14, 16})
INVALID_DATA_CODES = frozenset({5, 6, 12, 13, 15})


class SplunkHecSettings(ConnectorSettings):
    type: Literal["splunk_hec"]
    url: str = Field(description="HEC base URL, e.g. https://splunk.example.com:8088")
    token: SecretStr
    index: str | None = Field(default=None, description="Target index; null = token default.")
    source: str = "ctagg"
    sourcetype: str = "aws:cloudtrail"
    host: str | None = Field(
        default=None, description="Event host field; null = the event's account id."
    )
    gzip: bool = True
    ack: bool = Field(default=False, description="Indexer acknowledgement (token must allow).")
    channel: str | None = Field(default=None, description="Request channel GUID; null = random.")
    ack_timeout_secs: float = Field(default=120.0, gt=0)
    ack_poll_interval_secs: float = Field(default=1.0, gt=0)
    verify_tls: bool = True
    ca_file: str | None = None
    timeout_secs: float = Field(default=30.0, gt=0)
    max_in_flight: int = Field(
        default=4,
        ge=1,
        le=32,
        description="Batches on the wire at once (commits stay in order).",
    )


class SplunkHecConnector(Connector):
    type_name: ClassVar[str] = "splunk_hec"
    default_schema: ClassVar[Schema] = "raw"
    settings_model: ClassVar[type[ConnectorSettings]] = SplunkHecSettings
    uses_event_id: ClassVar[bool] = False  # HEC cannot deduplicate: no id is sent

    @property
    def max_in_flight(self) -> int:
        return self.cfg.max_in_flight

    def __init__(self, settings: ConnectorSettings) -> None:
        assert isinstance(settings, SplunkHecSettings)
        super().__init__(settings)
        self.cfg: SplunkHecSettings = settings
        self.session: aiohttp.ClientSession | None = None
        self.channel = settings.channel or str(uuid.uuid4())
        base = settings.url.rstrip("/")
        self.event_url = f"{base}/services/collector/event"
        self.ack_url = f"{base}/services/collector/ack"
        self.health_url = f"{base}/services/collector/health"
        # static parts of each event envelope, serialized once
        meta: dict[str, Any] = {"source": settings.source, "sourcetype": settings.sourcetype}
        if settings.index:
            meta["index"] = settings.index
        if settings.host:
            meta["host"] = settings.host
        self._meta = meta

    async def open(self) -> None:
        import aiohttp  # here, not at import: config loading must stay fast

        if not self.cfg.token.get_secret_value():
            raise Fatal(f"splunk_hec {self.name}: token is empty")
        if self.session is None:
            ssl_ctx: ssl.SSLContext | bool = True
            if self.cfg.url.startswith("https"):
                ctx = ssl.create_default_context(cafile=self.cfg.ca_file)
                if not self.cfg.verify_tls:
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                ssl_ctx = ctx
            headers = {
                "Authorization": f"Splunk {self.cfg.token.get_secret_value()}",
                "Content-Type": "application/json",
            }
            if self.cfg.ack:
                headers["X-Splunk-Request-Channel"] = self.channel
            self.session = aiohttp.ClientSession(
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_secs),
                connector=aiohttp.TCPConnector(ssl=ssl_ctx, limit=8),
            )

    async def close(self) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            await session.close()

    async def health(self) -> bool:
        """``GET /services/collector/health``: True when HEC accepts data."""
        import aiohttp  # here, not at import: config loading must stay fast

        await self.open()
        assert self.session is not None
        try:
            async with self.session.get(self.health_url) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    def payload(self, batch: Sequence[OutEvent]) -> bytes:
        """Concatenated HEC events. A document that already is an envelope (the ``raw``
        schema of ``aggregator.normalize``: time, source, sourcetype, fields, event) keeps
        its fields; index, host and sourcetype from the settings are applied to every event."""
        dumps = orjson.dumps
        meta = self._meta
        host = self.cfg.host
        parts = []
        for ev in batch:
            doc = ev.doc
            inner = envelope_event(doc) if doc is not None else None
            env: dict[str, Any]
            if doc is None or inner is None:
                env = dict(meta)
                body = ev.json()
            else:
                env = {k: v for k, v in doc.items() if k != "event"}
                env.update(meta)
                if "source" in doc:
                    env["source"] = doc["source"]
                body = ev.body or dumps(inner)
            if ev.time and "time" not in env:
                env["time"] = round(ev.time, 3)
            if host is None and ev.account_id:
                env["host"] = ev.account_id
            # {"source":...,"time":...} + ,"event":<doc>} without re-serializing the doc
            parts.append(dumps(env)[:-1] + b',"event":' + body + b"}")
        return b"".join(parts)

    async def send(self, batch: Sequence[OutEvent]) -> list[Outcome]:
        """One request per rejected event at most: Splunk stops at the first invalid event and
        names it (``invalid-event-number``); the events before it were indexed, it is
        rejected, and the rest go at once in the next request (no backoff, no resend of what
        Splunk took). Without the number, the batch is split in halves until the bad event is
        alone."""
        if not batch:
            return []
        await self.open()
        out: list[Outcome] = []
        rest = list(batch)
        while rest:
            outcomes = await self._send_part(rest)
            out.extend(outcomes)
            rest = rest[len(outcomes) :]
        return out

    async def _send_part(self, batch: Sequence[OutEvent]) -> list[Outcome]:
        """Outcomes for the first events of ``batch`` (all of them, or up to and including
        the invalid one Splunk named)."""
        import aiohttp  # here, not at import: config loading must stay fast

        assert self.session is not None
        body = self.payload(batch)
        headers = {}
        if self.cfg.gzip:
            body = igzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        try:
            async with self.session.post(self.event_url, data=body, headers=headers) as resp:
                status = resp.status
                raw = await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return all_retry(len(batch), f"connection: {type(exc).__name__}")
        try:
            answer = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        code = answer.get("code")
        text = str(answer.get("text", ""))[:300]
        if status == 200 and code in (0, None):
            if not self.cfg.ack:
                return [DELIVERED] * len(batch)
            ack_id = answer.get("ackId")
            if not isinstance(ack_id, int):
                raise Fatal(
                    f"splunk_hec {self.name}: ack is enabled here but the token did not "
                    "return an ackId; enable indexer acknowledgement on the token"
                )
            if await self._wait_ack(ack_id):
                return [DELIVERED] * len(batch)
            return all_retry(len(batch), f"ack {ack_id} not confirmed in time")
        reason = f"HEC {status} code {code}: {text}"
        if status == 400 and code in INVALID_DATA_CODES:
            bad = answer.get("invalid-event-number")
            if isinstance(bad, int) and 0 <= bad < len(batch):
                # Splunk indexed the events before the bad one (it says so; with ack it
                # gives no ackId for them, and sending them again would only duplicate them)
                return [*([DELIVERED] * bad), Rejected(reason)]
            if len(batch) > 1:  # Splunk did not say which: halve until it is alone
                mid = len(batch) // 2
                return [*(await self.send(batch[:mid])), *(await self.send(batch[mid:]))]
            return [Rejected(reason)]
        return self._classify_error(batch, status, code, reason)

    def _classify_error(
        self, batch: Sequence[OutEvent], status: int, code: Any, reason: str
    ) -> list[Outcome]:
        """Token and configuration problems are fatal; busy (9), unhealthy (18), 429, 5xx
        and anything unknown retry."""
        if status in (401, 403) or code in FATAL_CODES:
            raise Fatal(f"splunk_hec {self.name}: {reason}")
        if code in RETRY_CODES or status in (429, 503) or status >= 500:
            return all_retry(len(batch), reason)
        return all_retry(len(batch), f"{reason} (unexpected answer)")

    async def _wait_ack(self, ack_id: int) -> bool:
        import aiohttp  # here, not at import: config loading must stay fast

        assert self.session is not None
        deadline = time.monotonic() + self.cfg.ack_timeout_secs
        body = orjson.dumps({"acks": [ack_id]})
        delay = min(0.05, self.cfg.ack_poll_interval_secs)
        while True:
            try:
                async with self.session.post(
                    self.ack_url, data=body, params={"channel": self.channel}
                ) as resp:
                    raw = await resp.read()
                    if resp.status in (401, 403):
                        raise Fatal(f"splunk_hec {self.name}: ack query refused ({resp.status})")
                    if resp.status == 200:
                        acks = orjson.loads(raw).get("acks", {})
                        if acks.get(str(ack_id)) is True:
                            return True
            except (aiohttp.ClientError, TimeoutError, OSError, orjson.JSONDecodeError):
                pass
            if time.monotonic() + delay > deadline:
                log.warning("forward.ack_timeout", connector=self.name, ack_id=ack_id)
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.cfg.ack_poll_interval_secs)
