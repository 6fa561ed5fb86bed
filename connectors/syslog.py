"""syslog: RFC 5424 messages over UDP (RFC 5426), TCP with octet counting (RFC 6587) or TLS
(RFC 5425).

Message: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID [SD] BOM MSG`` where TIMESTAMP is the
event time, MSGID the CloudTrail eventName (or a fixed value), the structured data element
carries the event id, account, region and the archive pointer (values escaped as RFC 5424
section 6.3.3 says: ``"``, ``\\`` and ``]``), and MSG is the normalized event as UTF-8 JSON
after a BOM.

Size policy: every message fits ``max_message_bytes`` before it leaves, so a receiver never
cuts a frame (a cut octet-counted frame turns the rest of the stream into garbage). Oversize
events are either truncated (SD ``truncated="<original bytes>"``, MSG ends with a marker; the
archive pointer says where the whole event is) or split into parts (SD ``part``/``parts``,
same ``id``; the parts concatenate to the original MSG).

Delivery: syslog has no application-level acknowledgement. For TCP/TLS an event counts as
delivered once the kernel took the bytes; a connection found closed (EOF from the receiver)
is re-opened with exponential backoff and the batch is retried, so events may arrive twice
after a receiver restart, never zero times because of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
import time
from collections.abc import Sequence
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from aggregator.log import get_logger
from connectors.base import (
    DELIVERED,
    Connector,
    ConnectorSettings,
    Outcome,
    OutEvent,
    Rejected,
    Schema,
    all_retry,
)

log = get_logger(__name__)

BOM = b"\xef\xbb\xbf"
TRUNC_MARKER = b"...[truncated]"
UDP_MAX = 65507


class SyslogSettings(ConnectorSettings):
    type: Literal["syslog"]
    host: str
    port: int = Field(ge=1, le=65535)
    transport: Literal["udp", "tcp", "tls"] = "tls"
    # TLS (RFC 5425)
    ca_file: str | None = Field(default=None, description="CA bundle; null = system store.")
    client_cert_file: str | None = Field(default=None, description="For mutual TLS.")
    client_key_file: str | None = None
    server_name: str | None = Field(
        default=None, description="Name checked against the certificate; null = host."
    )
    verify_hostname: bool = True
    tls_probe_secs: float = Field(
        default=0.25,
        ge=0,
        description="After a TLS handshake, wait this long for a rejection (TLS 1.3 reports a "
        "refused client certificate only then); 0 = do not wait.",
    )
    # message
    app_name: str = Field(default="ctagg", min_length=1, max_length=48)
    msgid: str | None = Field(
        default=None, max_length=32, description="Fixed MSGID; null = the eventName."
    )
    hostname: str | None = Field(default=None, description="HOSTNAME field; null = this host.")
    facility: int = Field(default=13, ge=0, le=23, description="13 = log audit.")
    severity: int = Field(default=6, ge=0, le=7)
    sd_id: str = Field(default="ctagg@32473", pattern=r"^[!#-<>-\\^-~]{1,32}$")
    max_message_bytes: int = Field(
        default=8192,
        ge=480,
        description="Largest message sent (set to the receiver's limit; rsyslog's default "
        "maxMessageSize is 8k).",
    )
    oversize: Literal["truncate", "split"] = "split"
    # connection
    connect_timeout_secs: float = Field(default=10.0, gt=0)
    write_timeout_secs: float = Field(default=30.0, gt=0)
    reconnect_initial_secs: float = Field(default=0.5, gt=0)
    reconnect_max_secs: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _udp_size(self) -> SyslogSettings:
        if self.transport == "udp" and self.max_message_bytes > UDP_MAX:
            raise ValueError(f"max_message_bytes must be <= {UDP_MAX} for udp")
        if self.client_key_file and not self.client_cert_file:
            raise ValueError("client_key_file needs client_cert_file")
        return self


def _printable(value: str, limit: int) -> str:
    """RFC 5424 header fields: PRINTUSASCII (33..126), length-limited, '-' when empty."""
    out = "".join(c if 33 <= ord(c) <= 126 else "_" for c in value[:limit])
    return out or "-"


def sd_escape(value: str) -> str:
    """PARAM-VALUE escaping (RFC 5424 6.3.3): backslash before '"', '\\' and ']'."""
    if '"' in value or "\\" in value or "]" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")
    return value


def utf8_cut(data: bytes, limit: int) -> int:
    """The largest n <= limit such that data[:n] does not end inside a UTF-8 sequence."""
    if limit >= len(data):
        return len(data)
    n = max(limit, 0)
    while n > 0 and (data[n] & 0xC0) == 0x80:
        n -= 1
    return n


_ts_cache: dict[int, str] = {}


def rfc3339(t: float) -> str:
    sec = int(t)
    base = _ts_cache.get(sec)
    if base is None:
        if len(_ts_cache) > 4096:
            _ts_cache.clear()
        base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _ts_cache[sec] = base
    return f"{base}.{int((t - sec) * 1000):03d}Z"


class SyslogConnector(Connector):
    type_name: ClassVar[str] = "syslog"
    default_schema: ClassVar[Schema] = "ocsf"
    settings_model: ClassVar[type[ConnectorSettings]] = SyslogSettings

    def __init__(self, settings: ConnectorSettings) -> None:
        assert isinstance(settings, SyslogSettings)
        super().__init__(settings)
        self.cfg: SyslogSettings = settings
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._failures = 0
        self._next_connect_at = 0.0
        self._pri = f"<{settings.facility * 8 + settings.severity}>1 "
        host = settings.hostname or socket.gethostname()
        self._host_app = f" {_printable(host, 255)} {_printable(settings.app_name, 48)} - "
        self._fixed_msgid = _printable(settings.msgid, 32) if settings.msgid else None
        self._msgids: dict[str, str] = {}

    # ------------------------------------------------------------------ framing

    def _header(self, ev: OutEvent, extra_sd: str = "") -> bytes:
        msgid = self._fixed_msgid or self._msgids.get(ev.event_name)
        if msgid is None:
            if len(self._msgids) > 4096:
                self._msgids.clear()
            msgid = self._msgids[ev.event_name] = _printable(ev.event_name, 32)
        t = ev.time or time.time()
        sd = (
            f'[{self.cfg.sd_id} id="{sd_escape(ev.id)}" account="{sd_escape(ev.account_id)}" '
            f'region="{sd_escape(ev.region)}" src="{sd_escape(ev.pointer)}"{extra_sd}]'
        )
        return f"{self._pri}{rfc3339(t)}{self._host_app}{msgid} {sd} ".encode()

    def messages(self, ev: OutEvent) -> list[bytes]:
        """The RFC 5424 message(s) for one event, each at most ``max_message_bytes``."""
        limit = self.cfg.max_message_bytes
        msg = ev.record_json()
        head = self._header(ev)
        if len(head) + len(BOM) + len(msg) <= limit:
            return [head + BOM + msg]
        if self.cfg.oversize == "truncate":
            head = self._header(ev, f' truncated="{len(msg)}"')
            room = limit - len(head) - len(BOM) - len(TRUNC_MARKER)
            if room <= 0:
                raise ValueError("header alone exceeds max_message_bytes")
            return [head + BOM + msg[: utf8_cut(msg, room)] + TRUNC_MARKER]
        # split: parts concatenate to the original MSG
        parts = 2
        while True:
            digits = len(str(parts))
            probe = self._header(ev, f' part="{"9" * digits}" parts="{parts}"')
            room = limit - len(probe) - len(BOM)
            if room < 16:
                raise ValueError("header alone exceeds max_message_bytes")
            chunks: list[bytes] = []
            pos = 0
            while pos < len(msg):
                n = utf8_cut(msg[pos:], room)
                if n == 0:
                    n = min(room, len(msg) - pos)
                chunks.append(msg[pos : pos + n])
                pos += n
            if len(chunks) <= parts and len(str(len(chunks))) == digits:
                total = len(chunks)
                return [
                    self._header(ev, f' part="{i}" parts="{total}"') + BOM + chunk
                    for i, chunk in enumerate(chunks, 1)
                ]
            parts = len(chunks)

    # ------------------------------------------------------------------ connection

    def _ssl_context(self) -> ssl.SSLContext:
        cfg = self.cfg
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = cfg.verify_hostname
        if cfg.client_cert_file:
            ctx.load_cert_chain(cfg.client_cert_file, cfg.client_key_file)
        return ctx

    def _connected(self) -> bool:
        if self.cfg.transport == "udp":
            return self._udp is not None and not self._udp.is_closing()
        if self._writer is None or self._writer.is_closing():
            return False
        return not (self._reader is not None and self._reader.at_eof())

    async def _connect(self) -> None:
        cfg = self.cfg
        await self._drop()
        if cfg.transport == "udp":
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, remote_addr=(cfg.host, cfg.port)
            )
            self._udp = transport
            return
        tls = cfg.transport == "tls"
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                cfg.host,
                cfg.port,
                ssl=self._ssl_context() if tls else None,
                server_hostname=(cfg.server_name or cfg.host) if tls else None,
            ),
            cfg.connect_timeout_secs,
        )
        if tls and cfg.tls_probe_secs > 0:
            # With TLS 1.3 a server that refuses our client certificate says so only after
            # the client finished its handshake: wait briefly for that alert (or EOF) so a
            # refused connection is not mistaken for a working one. A syslog receiver never
            # sends data, so silence means accepted.
            try:
                data = await asyncio.wait_for(reader.read(1), cfg.tls_probe_secs)
            except TimeoutError:
                data = None
            except (ssl.SSLError, OSError):
                writer.close()
                raise
            if data is not None:
                writer.close()
                raise ConnectionResetError("receiver closed the TLS session after handshake")
        self._reader, self._writer = reader, writer

    async def _ensure(self) -> str | None:
        """Connected, or the reason why not (respecting the reconnect backoff)."""
        if self._connected():
            return None
        now = time.monotonic()
        if now < self._next_connect_at:
            return "reconnect backoff"
        try:
            await self._connect()
        except ssl.SSLError as exc:
            return self._connect_failed(f"tls: {exc.reason or type(exc).__name__}")
        except (OSError, TimeoutError) as exc:
            return self._connect_failed(f"connect: {type(exc).__name__}")
        if self._failures:
            log.info("forward.reconnected", connector=self.name, attempts=self._failures)
        self._failures = 0
        return None

    def _connect_failed(self, reason: str) -> str:
        self._failures += 1
        cap = min(
            self.cfg.reconnect_max_secs,
            self.cfg.reconnect_initial_secs * 2 ** min(self._failures - 1, 20),
        )
        self._next_connect_at = time.monotonic() + cap / 2 + random.uniform(0, cap / 2)  # noqa: S311
        log.warning(
            "forward.connect_failed",
            connector=self.name,
            error_type=reason,
            attempts=self._failures,
        )
        return reason

    async def _drop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._writer is not None:
            writer, self._writer, self._reader = self._writer, None, None
            writer.close()
            with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
                await asyncio.wait_for(writer.wait_closed(), 2)

    async def open(self) -> None:
        reason = await self._ensure()
        if reason:
            raise ConnectionError(f"syslog {self.name}: {reason}")

    async def close(self) -> None:
        await self._drop()

    # ------------------------------------------------------------------ send

    async def send(self, batch: Sequence[OutEvent]) -> list[Outcome]:
        if not batch:
            return []
        outcomes: list[Outcome] = []
        frames: list[bytes] = []
        udp = self.cfg.transport == "udp"
        for ev in batch:
            try:
                msgs = self.messages(ev)
            except ValueError as exc:
                outcomes.append(Rejected(f"cannot frame: {exc}"))
                continue
            outcomes.append(DELIVERED)
            if udp:
                frames.extend(msgs)
            else:
                frames.extend(b"%d %s" % (len(m), m) for m in msgs)
        reason = await self._ensure()
        if reason:
            return all_retry(len(batch), reason)
        try:
            if udp:
                assert self._udp is not None
                for frame in frames:
                    self._udp.sendto(frame)
            else:
                assert self._writer is not None
                self._writer.write(b"".join(frames))
                await asyncio.wait_for(self._writer.drain(), self.cfg.write_timeout_secs)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            await self._drop()
            self._connect_failed(f"write: {type(exc).__name__}")
            return all_retry(len(batch), f"write: {type(exc).__name__}")
        return outcomes
