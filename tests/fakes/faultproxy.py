"""A fault-injecting HTTP proxy in front of moto's server: S3's faults as clients meet them.

Point ``aws.endpoint_url`` (or ``AWS_ENDPOINT_URL``) at :attr:`FaultProxy.url`. Every request
is forwarded to moto unless a :class:`Fault` whose ``match`` accepts it fires first:

* ``error_before``  500 InternalError; the request never reached the store
* ``error_after``   the request reached the store (a PUT is stored), then 500 InternalError
* ``slowdown``      503 SlowDown (throttling); nothing reached the store
* ``reset``         the store answered; the status line, headers and part of the body are sent,
                    then the connection is reset (RST)
* ``truncate``      the store answered; headers with the true Content-Length and part of the
                    body are sent, then the connection is closed (FIN)
* ``delay``         ``delay_secs`` before forwarding (then a normal answer)

A fault fires for matching requests with probability ``rate`` (seeded), at most ``times``
times, after skipping the first ``skip`` matches. :attr:`FaultProxy.injected` counts what fired,
:attr:`FaultProxy.requests` records every request (method, path with query).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

Match = Callable[[str, str], bool]  # (method, path with query, URL-decoded) -> bool

_ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
    "<Message>{message}</Message><RequestId>fault-proxy</RequestId></Error>"
)


def method_is(method: str, contains: str = "") -> Match:
    """Requests of one HTTP method whose path (with query) contains ``contains``."""
    return lambda m, p: m == method and contains in p


def any_request(contains: str = "") -> Match:
    return lambda m, p: contains in p


def is_list(contains: str = "") -> Match:
    """ListObjects(V2) requests (GET on a bucket with a query), whose path contains ``contains``
    (``2024/05/01/``: matched against the URL-decoded path)."""
    return lambda m, p: m == "GET" and ("list-type=2" in p or "prefix=" in p) and contains in p


def is_get_object(contains: str = "") -> Match:
    return lambda m, p: m == "GET" and "?" not in p and p.count("/") > 1 and contains in p


@dataclass
class Fault:
    kind: str
    match: Match
    rate: float = 1.0
    times: int | None = None
    skip: int = 0
    delay_secs: float = 0.0
    keep_bytes: float = 0.5  # reset / truncate: the share of the body sent first
    target: str | None = None  # JSON APIs: a substring of X-Amz-Target ("ListAccounts")
    seen: int = 0
    fired: int = 0


@dataclass
class FaultProxy:
    upstream: str
    faults: list[Fault] = field(default_factory=list)
    seed: int = 0
    injected: Counter[str] = field(default_factory=Counter)
    requests: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        up = urlsplit(self.upstream)
        self._up_host, self._up_port = up.hostname or "127.0.0.1", up.port or 80
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    # ------------------------------------------------------------------ one request

    def _pick(self, method: str, raw_path: str, target: str = "") -> Fault | None:
        path = unquote(raw_path)
        with self._lock:
            self.requests.append((method, path))
            for f in self.faults:
                if not f.match(method, path) or (f.target and f.target not in target):
                    continue
                f.seen += 1
                if f.seen <= f.skip or (f.times is not None and f.fired >= f.times):
                    continue
                if self._rng.random() >= f.rate:
                    continue
                f.fired += 1
                self.injected[f.kind] += 1
                return f
        return None

    def _read_body(self, h: BaseHTTPRequestHandler) -> bytes:
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += h.rfile.read(size)
                h.rfile.readline()
        n = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(n) if n else b""

    def _forward(
        self, method: str, path: str, h: BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self._up_host, self._up_port, timeout=60)
        try:
            headers = {
                k: v
                for k, v in h.headers.items()
                if k.lower() not in ("transfer-encoding", "content-length", "connection")
            }
            headers["Content-Length"] = str(len(body))
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.getheaders(), data
        finally:
            conn.close()

    def _send_error(self, h: BaseHTTPRequestHandler, status: int, code: str, msg: str) -> None:
        if h.headers.get("X-Amz-Target"):  # a JSON protocol (Organizations, CloudTrail)
            body = json.dumps({"__type": code, "message": msg}).encode()
            ctype = "application/x-amz-json-1.1"
        else:
            body = _ERROR.format(code=code, message=msg).encode()
            ctype = "application/xml"
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        method, path = h.command, h.path
        body = self._read_body(h)
        fault = self._pick(method, path, h.headers.get("X-Amz-Target", ""))
        kind = fault.kind if fault else None
        if fault is not None and kind == "delay":
            time.sleep(fault.delay_secs)
        if kind == "error_before":
            self._send_error(h, 500, "InternalError", "injected before the store")
            return
        if kind == "slowdown":
            self._send_error(h, 503, "SlowDown", "Please reduce your request rate.")
            return
        status, headers, data = self._forward(method, path, h, body)
        if kind == "error_after":
            self._send_error(h, 500, "InternalError", "injected after the store")
            return
        h.send_response_only(status)
        length_sent = False
        for k, v in headers:
            if k.lower() in ("transfer-encoding", "connection", "date", "server"):
                continue
            if k.lower() == "content-length":
                length_sent = True
            h.send_header(k, v)
        if not length_sent:
            h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if method == "HEAD":
            return
        if fault is not None and kind in ("reset", "truncate") and len(data) > 1:
            cut = max(1, min(len(data) - 1, int(len(data) * fault.keep_bytes)))
            h.wfile.write(data[:cut])
            h.wfile.flush()
            sock = h.connection
            if kind == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.close_connection = True
            if kind == "truncate":
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            return
        h.wfile.write(data)
