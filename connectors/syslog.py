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

Delivery. Plain syslog has no application acknowledgement, so over TCP/TLS a batch written
to the kernel is not yet known to be read. The connector keeps the *unconfirmed tail*: what
the receiver's TCP has not acknowledged, and the last ``resend_bytes`` it has (they may still
sit unread in its receive buffer). When the connection breaks (the receiver restarts), it
re-opens it and sends that tail again before anything new: after a reset all of it, after an
orderly close by the receiver (which means it read everything acknowledged) only the
unacknowledged rest. At-least-once; what is sent twice is counted (``resent_events``). An
orderly close by ctagg waits for the receiver to close its side after reading everything. One
reconnect backoff applies, the forwarder's: a failed connect is answered at once with Retry.
UDP gives no guarantee at all.

RELP (``transport: relp``, rsyslog's ``imrelp``; optionally over TLS with ``relp_tls``) has
real acknowledgements: every message is a numbered transaction and an event counts as
delivered only when the receiver answered ``200`` for each of its messages; what is
unanswered when a connection breaks is retried.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import socket
import ssl
import termios
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from aggregator.log import get_logger
from connectors.base import (
    DELIVERED,
    Connector,
    ConnectorSettings,
    Delivered,
    Outcome,
    OutEvent,
    Rejected,
    Retry,
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
    transport: Literal["udp", "tcp", "tls", "relp"] = "tls"
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
    resend_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=0,
        description="tcp/tls: the last bytes the receiver's TCP acknowledged are kept (it may "
        "not have read them yet: at least its receive buffer, Linux tcp_rmem max 6 MiB by "
        "default), and sent again with anything unacknowledged after a connection reset; "
        "0 = never (a batch counts as delivered once the kernel took it).",
    )
    close_timeout_secs: float = Field(
        default=5.0,
        gt=0,
        description="tcp/tls/relp: how long an orderly close waits for the receiver to confirm.",
    )
    relp_tls: bool = Field(default=False, description='relp: RELP over TLS (imrelp tls="on").')
    relp_window: int = Field(
        default=128, ge=1, le=65536, description="relp: messages sent before waiting for acks."
    )
    relp_ack_timeout_secs: float = Field(
        default=30.0, gt=0, description="relp: an ack that takes longer breaks the session."
    )

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


@dataclass(slots=True)
class _Written:
    end: int  # byte offset on the connection after this write
    data: bytes
    events: int


def _unacked_bytes(sock: Any) -> int | None:
    """Bytes of a TCP socket not yet acknowledged by the peer (Linux SIOCOUTQ), or None."""
    try:
        buf = array.array("i", [0])
        fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buf, True)
    except (OSError, ValueError, AttributeError):
        return None
    return int(buf[0])


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
        self._watch: asyncio.Task[None] | None = None
        self._broken = False  # the receiver closed or reset the connection
        self._failures = 0
        self._tail: deque[_Written] = deque()  # written, not yet confirmed (tcp/tls)
        self._tail_bytes = 0
        self._total = 0  # bytes written on this connection
        self._acked = 0  # of which the receiver's TCP acknowledged at least this many
        self._pending: deque[_Written] = deque()  # of a broken connection: to send again
        self._clean_eof = False  # the receiver closed in order (FIN), not with a reset
        self._relp: _Relp | None = None
        self.resent_events = 0  # sent again after a broken connection (may be duplicates)
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
        transport = self.cfg.transport
        if transport == "udp":
            return self._udp is not None and not self._udp.is_closing()
        if transport == "relp":
            return self._relp is not None and self._relp.alive
        if self._writer is None or self._writer.is_closing():
            return False
        return not self._broken

    async def _open_stream(
        self, tls: bool, probe: bool
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        cfg = self.cfg
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                cfg.host,
                cfg.port,
                ssl=self._ssl_context() if tls else None,
                server_hostname=(cfg.server_name or cfg.host) if tls else None,
            ),
            cfg.connect_timeout_secs,
        )
        if tls and probe and cfg.tls_probe_secs > 0:
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
        return reader, writer

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
        if cfg.transport == "relp":
            reader, writer = await self._open_stream(cfg.relp_tls, probe=False)
            relp = _Relp(reader, writer, cfg)
            try:
                await relp.open()
            except BaseException:
                await relp.abort()
                raise
            self._relp = relp
            return
        reader, writer = await self._open_stream(cfg.transport == "tls", probe=True)
        self._reader, self._writer = reader, writer
        self._broken = self._clean_eof = False
        self._total = self._acked = 0
        self._watch = asyncio.create_task(self._watch_eof(reader, writer))

    async def _watch_eof(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A syslog receiver never sends: EOF or a reset means it closed the connection. Noting
        it at once (not at the next write) tells what was written just before it."""
        clean = False
        with contextlib.suppress(OSError, ssl.SSLError, asyncio.IncompleteReadError):
            while await reader.read(65536):
                pass
            clean = True  # EOF: the receiver closed in order, after reading what it got
        if self._writer is writer:
            if clean:
                self._measure()  # before anything else is written
            self._clean_eof = clean
            self._broken = True

    async def _ensure(self) -> str | None:
        """Connected (with the unconfirmed tail of a broken connection sent again), or the
        reason why not. No backoff here: the forwarder's backoff paces the next attempt."""
        if self._connected():
            return None
        try:
            await self._connect()
        except ssl.SSLError as exc:
            return self._connect_failed(f"tls: {exc.reason or type(exc).__name__}")
        except (OSError, TimeoutError, RelpError) as exc:
            return self._connect_failed(f"connect: {type(exc).__name__}: {exc}"[:200])
        if self._failures:
            log.info("forward.reconnected", connector=self.name, attempts=self._failures)
        self._failures = 0
        if self._resend:
            return await self._send_resend()
        return None

    def _connect_failed(self, reason: str) -> str:
        self._failures += 1
        log.info(
            "forward.connect_failed",
            connector=self.name,
            error_type=reason,
            attempts=self._failures,
        )
        return reason

    # ------------------------------------------------------------------ the unconfirmed tail

    @property
    def _resend(self) -> deque[_Written]:
        return self._pending

    def _measure(self) -> None:
        """How much of this connection the receiver's TCP acknowledged (a lower bound)."""
        writer = self._writer
        if writer is None:
            return
        sock = writer.get_extra_info("socket")
        unacked = _unacked_bytes(sock) if sock is not None else None
        if unacked is not None:
            # TLS: the unacknowledged bytes are ciphertext, never fewer than the plaintext
            # they carry, so this stays a lower bound of what the receiver's TCP has
            queued = writer.transport.get_write_buffer_size()
            self._acked = max(self._acked, self._total - queued - unacked)

    def _record(self, data: bytes, events: int) -> None:
        """A successful write on the live connection: kept until the receiver surely read it
        (``resend_bytes`` acknowledged after it)."""
        self._total += len(data)
        self._tail.append(_Written(self._total, data, events))
        self._tail_bytes += len(data)
        self._measure()
        tail, floor = self._tail, self._acked - self.cfg.resend_bytes
        while tail and tail[0].end <= floor:
            self._tail_bytes -= len(tail.popleft().data)

    def _lost(self) -> None:
        """The live connection broke: what of its tail must go again. After an orderly close
        by the receiver (FIN: it had read everything its TCP acknowledged; a close with unread
        data is a reset) only the unacknowledged rest; after a reset, all of it."""
        if not self._tail:
            return
        for w in self._tail:
            if not self._clean_eof or w.end > self._acked:
                self._pending.append(w)
        self._tail.clear()
        self._tail_bytes = 0
        self._trim()

    def _trim(self) -> None:
        """Bound what waits for a resend (several breaks in a row): the oldest goes first."""
        limit = 2 * self.cfg.resend_bytes + 16 * 1024 * 1024
        size = sum(len(w.data) for w in self._pending)
        dropped = 0
        while size > limit and self._pending:
            w = self._pending.popleft()
            size -= len(w.data)
            dropped += w.events
        if dropped:
            log.error(
                "forward.syslog_tail_trimmed",
                connector=self.name,
                count=dropped,
                reason="more unconfirmed data than can be kept for a resend; "
                "ctagg replay can send them again",
            )

    async def _send_resend(self) -> str | None:
        """Send the unconfirmed tail of the broken connection on the new one."""
        entries = list(self._pending)
        data = b"".join(w.data for w in entries)
        events = sum(w.events for w in entries)
        assert self._writer is not None
        try:
            self._writer.write(data)
            await asyncio.wait_for(self._writer.drain(), self.cfg.write_timeout_secs)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            await self._drop()
            return f"resend: {type(exc).__name__}"
        if self._broken:
            return "resend: connection closed"
        self._pending.clear()
        self.resent_events += events
        self._record(data, events)
        log.warning(
            "forward.syslog_resent",
            connector=self.name,
            count=events,
            reason="connection broke: the unconfirmed tail is sent again (maybe twice)",
        )
        return None

    async def _drop(self) -> None:
        """Abort the connection (no confirmation); its unconfirmed tail waits for the next."""
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._relp is not None:
            relp, self._relp = self._relp, None
            await relp.abort()
        if self._writer is not None:
            self._lost()
            writer, self._writer, self._reader = self._writer, None, None
            watch, self._watch = self._watch, None
            writer.close()
            with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
                await asyncio.wait_for(writer.wait_closed(), 2)
            if watch is not None:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch

    async def open(self) -> None:
        reason = await self._ensure()
        if reason:
            raise ConnectionError(f"syslog {self.name}: {reason}")

    async def close(self) -> None:
        """An orderly close: the receiver confirms it read everything by closing its side
        (RELP: by answering ``close``). What it did not confirm is logged at ERROR, for a
        ``ctagg replay``."""
        if self._relp is not None:
            relp, self._relp = self._relp, None
            if relp.alive:
                await relp.close(self.cfg.close_timeout_secs)
            else:
                await relp.abort()
        if self.cfg.transport in ("tcp", "tls"):
            if self._pending or (self._broken and self._tail):
                await self._ensure()  # one attempt to send what is owed before leaving
            writer = self._writer
            confirm = writer is not None and not self._broken and bool(self._tail)
            if confirm and writer is not None and await self._orderly_close(writer):
                self._tail.clear()
                self._tail_bytes = 0
        await self._drop()
        if self._pending:
            events = sum(w.events for w in self._pending)
            log.error(
                "forward.syslog_unconfirmed",
                connector=self.name,
                count=events,
                reason="closed before the receiver confirmed these events; "
                "ctagg replay can send them again",
            )
            self._pending.clear()

    async def _orderly_close(self, writer: asyncio.StreamWriter) -> bool:
        timeout = self.cfg.close_timeout_secs
        try:
            if writer.can_write_eof():  # TCP: FIN; the receiver closes once it read it all
                writer.write_eof()
                if self._watch is None:
                    return False
                await asyncio.wait_for(asyncio.shield(self._watch), timeout)
                return True
            # TLS: close_notify, answered once the receiver read every record before it
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), timeout)
            return True
        except (OSError, TimeoutError, ssl.SSLError):
            return False

    # ------------------------------------------------------------------ send

    async def send(self, batch: Sequence[OutEvent]) -> list[Outcome]:
        if not batch:
            return []
        outcomes: list[Outcome] = []
        frames: list[bytes] = []
        per_event: list[list[bytes]] = []
        transport = self.cfg.transport
        for ev in batch:
            try:
                msgs = self.messages(ev)
            except ValueError as exc:
                outcomes.append(Rejected(f"cannot frame: {exc}"))
                per_event.append([])
                continue
            outcomes.append(DELIVERED)
            per_event.append(msgs)
            if transport == "udp":
                frames.extend(msgs)
            elif transport != "relp":
                frames.extend(b"%d %s" % (len(m), m) for m in msgs)
        reason = await self._ensure()
        if reason:
            return all_retry(len(batch), reason)
        if transport == "relp":
            return await self._send_relp(outcomes, per_event)
        if transport == "udp":
            assert self._udp is not None
            try:
                for frame in frames:
                    self._udp.sendto(frame)
            except OSError as exc:
                await self._drop()
                return all_retry(len(batch), f"write: {type(exc).__name__}")
            return outcomes
        writer = self._writer
        assert writer is not None
        data = b"".join(frames)
        try:
            writer.write(data)
            await asyncio.wait_for(writer.drain(), self.cfg.write_timeout_secs)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            await self._drop()
            return all_retry(len(batch), f"write: {type(exc).__name__}")
        if self._broken:  # closed under our feet: this batch goes again, the tail with it
            await self._drop()
            return all_retry(len(batch), "write: receiver closed the connection")
        if self.cfg.resend_bytes > 0:
            self._record(data, sum(1 for m in per_event if m))
        return outcomes

    async def _send_relp(
        self, outcomes: list[Outcome], per_event: list[list[bytes]]
    ) -> list[Outcome]:
        relp = self._relp
        assert relp is not None
        flat = [m for msgs in per_event for m in msgs]
        answers = await relp.send(flat, self.cfg.relp_window, self.cfg.relp_ack_timeout_secs)
        out: list[Outcome] = []
        pos = 0
        for outcome, msgs in zip(outcomes, per_event, strict=True):
            got = answers[pos : pos + len(msgs)]
            pos += len(msgs)
            if not isinstance(outcome, Delivered):
                out.append(outcome)
            elif all(a is None for a in got):
                out.append(DELIVERED)
            else:
                out.append(Retry(next(a for a in got if a is not None)))
        if not relp.alive:
            await self._drop()
        return out


# ---------------------------------------------------------------------------- RELP


class RelpError(Exception):
    """The RELP session failed (refused open, server close, bad frame, ack timeout)."""


RELP_OFFERS = b"relp_version=0\nrelp_software=ctagg\ncommands=syslog"
_TXNR_MAX = 999_999_999


def parse_relp_frame(buf: bytes | bytearray) -> tuple[tuple[int, str, bytes] | None, int]:
    """One RELP frame (``TXNR SP COMMAND SP DATALEN [SP DATA] LF``) from the start of
    ``buf``: ((txnr, command, data), bytes used), or (None, 0) when it is not complete yet."""
    sp1 = buf.find(b" ")
    if sp1 < 0:
        return None, 0
    sp2 = buf.find(b" ", sp1 + 1)
    if sp2 < 0:
        return None, 0
    i = sp2 + 1
    while i < len(buf) and 48 <= buf[i] <= 57:
        i += 1
    if i >= len(buf):
        return None, 0
    if i == sp2 + 1:
        raise RelpError("malformed frame: no DATALEN")
    txnr, command, datalen = (
        int(buf[:sp1]),
        buf[sp1 + 1 : sp2].decode("ascii"),
        int(buf[sp2 + 1 : i]),
    )
    if datalen == 0:
        if buf[i : i + 1] != b"\n":
            raise RelpError("malformed frame: no trailer")
        return (txnr, command, b""), i + 1
    end = i + 1 + datalen
    if len(buf) < end + 1:
        return None, 0
    if buf[i : i + 1] != b" " or buf[end : end + 1] != b"\n":
        raise RelpError("malformed frame")
    return (txnr, command, bytes(buf[i + 1 : end])), end + 1


class _Relp:
    """One RELP client session: ``open``, numbered ``syslog`` transactions answered by
    ``rsp`` (``200 OK`` = the receiver took the message), ``close``. A ``serverclose`` or a
    broken connection fails every transaction still waiting."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cfg: SyslogSettings
    ) -> None:
        self.reader, self.writer, self.cfg = reader, writer, cfg
        self.next_txnr = 1
        self.waiting: dict[int, asyncio.Future[bytes]] = {}
        self.alive = True
        self.reason = ""
        self._task = asyncio.create_task(self._read_loop())

    def _txnr(self) -> int:
        n = self.next_txnr
        self.next_txnr = 1 if n >= _TXNR_MAX else n + 1
        return n

    def _fail(self, reason: str) -> None:
        if self.alive:
            self.alive, self.reason = False, reason
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(RelpError(reason))
        self.waiting.clear()

    async def _read_loop(self) -> None:
        buf = bytearray()
        try:
            while True:
                chunk = await self.reader.read(65536)
                if not chunk:
                    self._fail("connection closed by the receiver")
                    return
                buf += chunk
                while True:
                    frame, used = parse_relp_frame(buf)
                    if frame is None:
                        break
                    del buf[:used]
                    txnr, command, data = frame
                    if command == "rsp":
                        fut = self.waiting.pop(txnr, None)
                        if fut is not None and not fut.done():
                            fut.set_result(data)
                    elif command == "serverclose":
                        self._fail("the receiver closed the session (serverclose)")
                        return
        except (OSError, ssl.SSLError, RelpError, ValueError) as exc:
            self._fail(f"{type(exc).__name__}: {exc}"[:200])

    def _frame(self, command: bytes, data: bytes) -> tuple[int, bytes]:
        txnr = self._txnr()
        if data:
            return txnr, b"%d %s %d %s\n" % (txnr, command, len(data), data)
        return txnr, b"%d %s 0\n" % (txnr, command)

    async def _request(self, command: bytes, data: bytes, wait_secs: float) -> bytes:
        txnr, frame = self._frame(command, data)
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiting[txnr] = fut
        try:
            self.writer.write(frame)
            await self.writer.drain()
            return await asyncio.wait_for(fut, wait_secs)
        finally:
            self.waiting.pop(txnr, None)
            if fut.done() and not fut.cancelled():
                fut.exception()  # retrieved: the caller got it (or the answer) here

    async def open(self) -> None:
        answer = await self._request(b"open", RELP_OFFERS, self.cfg.connect_timeout_secs)
        if not answer.startswith(b"200"):
            raise RelpError(f"open refused: {answer[:100].decode(errors='replace')}")
        if b"commands=" in answer and b"syslog" not in answer.split(b"commands=", 1)[1]:
            raise RelpError("the receiver does not offer the syslog command")

    async def send(self, messages: list[bytes], window: int, ack_secs: float) -> list[str | None]:
        """One answer per message: None when acknowledged, else the reason."""
        futures: list[asyncio.Future[bytes] | None] = []
        loop = asyncio.get_running_loop()
        pending: deque[asyncio.Future[bytes]] = deque()
        try:
            for msg in messages:
                if not self.alive:
                    futures.append(None)
                    continue
                while len(pending) >= window:
                    oldest = pending.popleft()
                    with contextlib.suppress(RelpError):
                        await asyncio.wait_for(asyncio.shield(oldest), ack_secs)
                if not self.alive:
                    futures.append(None)
                    continue
                txnr, frame = self._frame(b"syslog", msg)
                fut: asyncio.Future[bytes] = loop.create_future()
                self.waiting[txnr] = fut
                futures.append(fut)
                pending.append(fut)
                self.writer.write(frame)
                if self.writer.transport.get_write_buffer_size() > 256 * 1024:
                    await asyncio.wait_for(self.writer.drain(), self.cfg.write_timeout_secs)
            await asyncio.wait_for(self.writer.drain(), self.cfg.write_timeout_secs)
            for fut in pending:
                with contextlib.suppress(RelpError):
                    await asyncio.wait_for(asyncio.shield(fut), ack_secs)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self._fail(f"{type(exc).__name__}: {exc}"[:200])
        out: list[str | None] = []
        for f in futures:
            if f is None or not f.done() or f.cancelled():
                out.append(f"relp: not acknowledged ({self.reason or 'session ended'})")
            elif f.exception() is not None:
                out.append(f"relp: {f.exception()}")
            else:
                answer = f.result()
                out.append(
                    None
                    if answer.startswith(b"200")
                    else f"relp: {answer[:200].decode(errors='replace')}"
                )
        return out

    async def close(self, wait_secs: float) -> None:
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError, RelpError):
            await self._request(b"close", b"", wait_secs)
        await self.abort()

    async def abort(self) -> None:
        self._fail("session closed")
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        self.writer.close()
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
            await asyncio.wait_for(self.writer.wait_closed(), 2)
