"""The same contract, run against every connector and its receiver (fakes for OpenSearch and
Splunk HEC, a real rsyslogd for syslog): outcomes per event in order, an empty batch, a sink
that goes away (retry, never raise), and comes back (delivered), idempotent close."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import TypeAdapter

import connectors
from connectors.base import Connector, Delivered, Retry
from tests.fakes.events import out_events
from tests.fakes.opensearch import FakeOpenSearch
from tests.fakes.rsyslog import Rsyslog, rsyslog_fixture  # noqa: F401  (fixture)
from tests.fakes.splunk_hec import FakeSplunkHec

TOKEN = "11111111-2222-3333-4444-555555555555"


@dataclass
class Sink:
    connector: Connector
    received: Callable[[], set[str]]
    down: Callable[[], Awaitable[None]]
    up: Callable[[], Awaitable[None]]
    default_schema: str


def _build(doc: dict[str, object]) -> Connector:
    s = TypeAdapter(connectors.AnyConnectorSettings).validate_python(doc)
    return connectors.build(s)


@pytest.fixture(params=["opensearch", "splunk_hec", "syslog"])
async def sink(request: pytest.FixtureRequest) -> AsyncIterator[Sink]:
    kind = request.param
    if kind == "opensearch":
        os_ = FakeOpenSearch()
        await os_.start()
        c = _build({"name": "c", "type": "opensearch", "hosts": [os_.url]})

        def os_received() -> set[str]:
            return {d["eventID"] for docs in os_.indices.values() for d in docs.values()}

        yield Sink(c, os_received, os_.stop, lambda: _start(os_), "ecs")
        await os_.stop()
    elif kind == "splunk_hec":
        hec = FakeSplunkHec({TOKEN}, ack=True)
        await hec.start()
        c = _build({"name": "c", "type": "splunk_hec", "url": hec.url, "token": TOKEN,
                    "ack": True, "ack_poll_interval_secs": 0.05})  # fmt: skip
        yield Sink(
            c, lambda: {e["event"]["eventID"] for e in hec.indexed}, hec.stop,
            lambda: _start(hec), "raw",
        )  # fmt: skip
        await hec.stop()
    else:
        rs: Rsyslog = request.getfixturevalue("rsyslog")
        c = _build({"name": "c", "type": "syslog", "host": "127.0.0.1", "port": rs.tcp,
                    "transport": "tcp"})  # fmt: skip
        import re

        def received() -> set[str]:
            return {
                m2.group(1)
                for m in rs.messages()
                if (m2 := re.search(r'eventID\\?":\\?"([^"\\]+)', m["msg"]))
            }

        async def down() -> None:
            rs.stop()
            await asyncio.sleep(0.2)

        async def up() -> None:
            rs.start()

        yield Sink(c, received, down, up, "ocsf")
        if rs.proc is None:
            rs.start()
    await c.close()


async def _start(server: FakeOpenSearch | FakeSplunkHec) -> None:
    await server.start()


async def _eventually(sink: Sink, want: set[str]) -> set[str]:
    for _ in range(100):
        got = sink.received() & want
        if got == want:
            return got
        await asyncio.sleep(0.05)
    return sink.received() & want


async def test_delivers_each_event_with_one_outcome_each(sink: Sink, testdata: Path) -> None:
    events = out_events(testdata, 30)
    await sink.connector.open()
    out = await sink.connector.send(events)
    assert len(out) == len(events)
    assert all(isinstance(o, Delivered) for o in out)
    want = {e.doc["eventID"] for e in events}
    assert await _eventually(sink, want) == want
    assert await sink.connector.send([]) == []


async def test_default_schema_and_override(sink: Sink) -> None:
    assert sink.connector.schema == sink.default_schema
    settings = sink.connector.settings.model_copy(update={"schema_": "raw"})
    assert type(sink.connector)(settings).schema == "raw"


async def test_sink_down_means_retry_then_delivered_when_back(sink: Sink, testdata: Path) -> None:
    events = out_events(testdata)[100:110]
    await sink.connector.open()
    await sink.down()
    out = await sink.connector.send(events)
    assert len(out) == len(events)
    assert all(isinstance(o, Retry) for o in out)
    await sink.up()
    for _ in range(60):
        out = await sink.connector.send(events)
        if all(isinstance(o, Delivered) for o in out):
            break
        await asyncio.sleep(0.05)
    assert all(isinstance(o, Delivered) for o in out)
    want = {e.doc["eventID"] for e in events}
    assert await _eventually(sink, want) == want


async def test_close_is_idempotent(sink: Sink) -> None:
    await sink.connector.close()
    await sink.connector.open()
    await sink.connector.close()
    await sink.connector.close()
