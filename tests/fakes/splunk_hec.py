"""A local Splunk HTTP Event Collector written to the documented contract.

* ``POST /services/collector/event`` (and ``/services/collector``): a body of concatenated
  JSON event objects (optionally ``Content-Encoding: gzip``); ``Authorization: Splunk <token>``.
  Answers ``{"text":"Success","code":0}`` (plus ``ackId`` when the token has indexer
  acknowledgement). Errors, as Splunk documents them: 401 code 2 (token required), 401 code 3
  (invalid authorization), 403 code 4 (invalid token), 400 code 5 (no data), 400 code 6
  (invalid data format, with ``invalid-event-number``), 400 code 12/13 (event field required
  / blank, with ``invalid-event-number``), 503 code 9 (server is busy), 400 code 10/11 (data
  channel missing / invalid), 400 code 14 (ACK is disabled). As Splunk does, events before an
  invalid one in the same request are accepted.
* ``POST /services/collector/ack?channel=<guid>`` with ``{"acks":[ids]}`` ->
  ``{"acks":{"id":bool}}``.
* ``GET /services/collector/health`` -> 200 code 17 / 503 code 18.

Faults to inject: ``busy_next`` (503 code 9 for the next N requests), ``lose_next_acks``
(the next N ackIds are never confirmed and their events are dropped, as when an indexer dies
before indexing), ``invalid`` (a predicate over an event's ``event`` field -> code 6),
``name_invalid = False`` (errors without ``invalid-event-number``).
"""

from __future__ import annotations

import gzip
import json
import re
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.fakes._server import LocalServer

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_WS = re.compile(rb"[ \t\r\n]*")


def _reply(status: int, text: str, code: int, **extra: Any) -> web.Response:
    return web.json_response({"text": text, "code": code, **extra}, status=status)


class FakeSplunkHec(LocalServer):
    def __init__(self, tokens: set[str], *, ack: bool = False) -> None:
        super().__init__()
        self.tokens = tokens
        self.ack = ack
        self.healthy = True
        self.indexed: list[dict[str, Any]] = []
        self.pending: dict[tuple[str, int], list[dict[str, Any]]] = {}
        self.confirmed: set[tuple[str, int]] = set()
        self.next_ack: dict[str, int] = {}
        self.busy_next = 0
        self.lose_next_acks = 0
        self.lost: set[tuple[str, int]] = set()
        self.invalid: Callable[[Any], bool] | None = None
        self.name_invalid = True  # False: errors without invalid-event-number (a proxy)
        self.requests = 0
        self.ack_delay_secs = 0.0  # indexing takes this long before an ack turns true
        self.confirm_at: dict[tuple[str, int], float] = {}
        self.max_unconfirmed = 0
        self.gzip_requests = 0
        self.ack_queries = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/services/collector/event", self._event)
        app.router.add_post("/services/collector", self._event)
        app.router.add_post("/services/collector/ack", self._ack)
        app.router.add_get("/services/collector/health", self._health)
        return app

    def _auth(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization")
        if not header:
            return _reply(401, "Token is required", 2)
        scheme, _, token = header.partition(" ")
        if scheme != "Splunk" or not token:
            return _reply(401, "Invalid authorization", 3)
        if token not in self.tokens:
            return _reply(403, "Invalid token", 4)
        return None

    def _channel(self, request: web.Request) -> tuple[str | None, web.Response | None]:
        channel = request.headers.get("X-Splunk-Request-Channel") or request.query.get("channel")
        if not channel:
            return None, _reply(400, "Data channel is missing", 10)
        if not _GUID.match(channel):
            return None, _reply(400, "Invalid data channel", 11)
        return channel, None

    async def _event(self, request: web.Request) -> web.Response:
        self.requests += 1
        denied = self._auth(request)
        if denied:
            return denied
        if self.busy_next > 0:
            self.busy_next -= 1
            return _reply(503, "Server is busy", 9)
        channel = None
        if self.ack:
            channel, bad = self._channel(request)
            if bad:
                return bad
        raw = await request.read()
        if request.headers.get("Content-Encoding", "").lower() == "gzip":
            self.gzip_requests += 1
        if raw[:2] == b"\x1f\x8b":  # aiohttp's server usually inflated it already
            raw = gzip.decompress(raw)
        decoder = json.JSONDecoder()
        text = raw.decode("utf-8")
        pos = _WS.match(raw).end()  # type: ignore[union-attr]
        events: list[dict[str, Any]] = []
        error: web.Response | None = None
        n = 0
        while pos < len(text):
            try:
                obj, end = decoder.raw_decode(text, pos)
            except ValueError:
                error = _reply(400, "Invalid data format", 6, **{"invalid-event-number": n})
                break
            if not isinstance(obj, dict) or "event" not in obj:
                error = _reply(400, "Event field is required", 12, **{"invalid-event-number": n})
                break
            if obj["event"] in ("", None, {}):
                error = _reply(
                    400, "Event field cannot be blank", 13, **{"invalid-event-number": n}
                )
                break
            if self.invalid is not None and self.invalid(obj["event"]):
                error = _reply(400, "Invalid data format", 6, **{"invalid-event-number": n})
                break
            events.append(obj)
            n += 1
            pos = end
            while pos < len(text) and text[pos] in " \t\r\n":
                pos += 1
        if not events and error is None:
            return _reply(400, "No data", 5)
        if error is not None and not self.name_invalid:
            error = _reply(400, "Invalid data format", 6)
        # Splunk accepts the events before an invalid one.
        if not self.ack:
            self.indexed.extend(events)
            return error or _reply(200, "Success", 0)
        if error is not None:
            self.indexed.extend(events)
            return error
        assert channel is not None
        ack_id = self.next_ack.get(channel, 0)
        self.next_ack[channel] = ack_id + 1
        key = (channel, ack_id)
        if self.lose_next_acks > 0:
            self.lose_next_acks -= 1
            self.lost.add(key)  # the indexer died: events gone, ack never true
        else:
            self.indexed.extend(events)
            if self.ack_delay_secs:
                now = time.monotonic()
                self.confirm_at[key] = now + self.ack_delay_secs
                waiting = sum(1 for t in self.confirm_at.values() if t > now)
                self.max_unconfirmed = max(self.max_unconfirmed, waiting)
            else:
                self.confirmed.add(key)
        return _reply(200, "Success", 0, ackId=ack_id)

    async def _ack(self, request: web.Request) -> web.Response:
        self.ack_queries += 1
        denied = self._auth(request)
        if denied:
            return denied
        if not self.ack:
            return _reply(400, "ACK is disabled", 14)
        channel, bad = self._channel(request)
        if bad:
            return bad
        try:
            ids = json.loads(await request.read())["acks"]
        except (ValueError, KeyError, TypeError):
            return _reply(400, "Invalid data format", 6)
        now = time.monotonic()
        for k, t in list(self.confirm_at.items()):
            if t <= now:
                self.confirmed.add(k)
                del self.confirm_at[k]
        return web.json_response({"acks": {str(i): (channel, i) in self.confirmed for i in ids}})

    async def _health(self, request: web.Request) -> web.Response:
        if self.healthy:
            return _reply(200, "HEC is healthy", 17)
        return _reply(503, "HEC is unhealthy, queues are full", 18)
