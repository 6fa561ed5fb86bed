"""Splunk HEC connector against a local server that speaks the documented HEC contract."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from connectors.base import Delivered, Fatal, OutEvent, Rejected, Retry
from connectors.splunk_hec import SplunkHecConnector, SplunkHecSettings
from tests.fakes.events import out_events
from tests.fakes.splunk_hec import FakeSplunkHec

TOKEN = "11111111-2222-3333-4444-555555555555"


def make(url: str, **kw: Any) -> SplunkHecConnector:
    s = TypeAdapter(SplunkHecSettings).validate_python(
        {"name": "hec", "type": "splunk_hec", "url": url, "token": TOKEN, **kw}
    )
    return SplunkHecConnector(s)


@pytest.fixture
async def hec() -> AsyncIterator[FakeSplunkHec]:
    server = FakeSplunkHec({TOKEN})
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def hec_ack() -> AsyncIterator[FakeSplunkHec]:
    server = FakeSplunkHec({TOKEN}, ack=True)
    await server.start()
    yield server
    await server.stop()


async def test_batch_is_concatenated_json_with_metadata(hec: FakeSplunkHec, testdata: Path) -> None:
    """One gzip request of concatenated events; time = eventTime, sourcetype aws:cloudtrail."""
    events = out_events(testdata, 20)
    async with make(hec.url, index="cloudtrail") as c:
        out = await c.send(events)
        assert await c.health()
    assert all(isinstance(o, Delivered) for o in out)
    assert hec.requests == 1
    assert hec.gzip_requests == 1
    assert len(hec.indexed) == 20
    got = hec.indexed[3]
    ev = events[3]
    assert got["event"] == ev.doc
    assert got["time"] == ev.time
    assert got["sourcetype"] == "aws:cloudtrail"
    assert got["source"] == "ctagg"
    assert got["index"] == "cloudtrail"
    assert got["host"] == ev.account_id


async def test_bad_token_is_fatal(hec: FakeSplunkHec, testdata: Path) -> None:
    """An invalid token stops this connector loudly (403 code 4)."""
    s = TypeAdapter(SplunkHecSettings).validate_python(
        {"name": "hec", "type": "splunk_hec", "url": hec.url, "token": "nope"}
    )
    c = SplunkHecConnector(s)
    with pytest.raises(Fatal, match="code 4"):
        await c.send(out_events(testdata, 2))
    await c.close()
    assert "nope" not in repr(s)


async def test_busy_503_retries_then_delivers(hec: FakeSplunkHec, testdata: Path) -> None:
    """503 code 9 (server busy) retries every event; the next attempt delivers."""
    events = out_events(testdata, 5)
    hec.busy_next = 2
    async with make(hec.url, gzip=False) as c:
        for _ in range(2):
            out = await c.send(events)
            assert all(isinstance(o, Retry) and "code 9" in o.reason for o in out)
        assert all(isinstance(o, Delivered) for o in await c.send(events))
    assert len(hec.indexed) == 5


async def test_invalid_event_is_rejected_others_kept(hec: FakeSplunkHec, testdata: Path) -> None:
    """400 code 6 with invalid-event-number: that event is rejected, earlier ones were
    indexed, later ones go in the next request at once; each event is indexed once."""
    events = out_events(testdata, 6)
    bad_id = events[2].doc["eventID"]
    hec.invalid = lambda e: isinstance(e, dict) and e.get("eventID") == bad_id
    async with make(hec.url) as c:
        out = await c.send(events)
    assert [type(o).__name__ for o in out] == [
        "Delivered", "Delivered", "Rejected", "Delivered", "Delivered", "Delivered",
    ]  # fmt: skip
    assert isinstance(out[2], Rejected)
    assert "code 6" in out[2].reason
    assert hec.requests == 2
    assert [e["event"]["eventID"] for e in hec.indexed] == [
        e.doc["eventID"] for i, e in enumerate(events) if i != 2
    ]


@pytest.mark.parametrize("ack", [False, True], ids=["no-ack", "ack"])
async def test_poison_costs_one_round_trip_each_and_no_duplicates(
    testdata: Path, ack: bool
) -> None:
    """1% poison events in a batch of 300: one request per bad event plus one, every good
    event indexed exactly once (with indexer acks too), the bad ones rejected."""
    server = FakeSplunkHec({TOKEN}, ack=ack)
    await server.start()
    events = out_events(testdata)[:300]
    bad = {events[i].doc["eventID"] for i in (7, 8, 150, 299)}  # two in a row, the last
    server.invalid = lambda e: isinstance(e, dict) and e.get("eventID") in bad
    try:
        async with make(server.url, ack=ack, ack_poll_interval_secs=0.02) as c:
            out = await c.send(events)
    finally:
        await server.stop()
    assert {e.doc["eventID"] for e, o in zip(events, out, strict=True)
            if isinstance(o, Rejected)} == bad  # fmt: skip
    assert all(isinstance(o, Delivered) for e, o in zip(events, out, strict=True)
               if e.doc["eventID"] not in bad)  # fmt: skip
    assert server.requests == len(bad) + 1 - (1 if events[-1].doc["eventID"] in bad else 0)
    ids = [e["event"]["eventID"] for e in server.indexed]
    assert sorted(ids) == sorted(e.doc["eventID"] for e in events if e.doc["eventID"] not in bad)


async def test_unnamed_invalid_event_is_found_by_halving(
    hec: FakeSplunkHec, testdata: Path
) -> None:
    """A 400 code 6 without invalid-event-number (as a proxy in front of Splunk may answer):
    the batch is halved until the bad event is alone, about 2·log2(n) requests, not n; every
    good event is indexed (some twice: Splunk took the ones before the bad event)."""
    events = out_events(testdata)[:64]
    bad_id = events[41].doc["eventID"]
    hec.invalid = lambda e: isinstance(e, dict) and e.get("eventID") == bad_id
    hec.name_invalid = False
    async with make(hec.url) as c:
        out = await c.send(events)
    assert [i for i, o in enumerate(out) if isinstance(o, Rejected)] == [41]
    assert all(isinstance(o, Delivered) for i, o in enumerate(out) if i != 41)
    assert hec.requests <= 2 * 6 + 1
    good = {e.doc["eventID"] for e in events} - {bad_id}
    assert {e["event"]["eventID"] for e in hec.indexed} == good


async def test_ack_mode_delivers_only_after_ack(hec_ack: FakeSplunkHec, testdata: Path) -> None:
    """With indexer acknowledgement a batch is delivered once /ack says so."""
    async with make(hec_ack.url, ack=True, ack_poll_interval_secs=0.05) as c:
        out = await c.send(out_events(testdata, 4))
    assert all(isinstance(o, Delivered) for o in out)
    assert hec_ack.ack_queries >= 1
    assert len(hec_ack.indexed) == 4


async def test_lost_ack_retries_and_every_event_lands_once(
    hec_ack: FakeSplunkHec, testdata: Path
) -> None:
    """A lost ack (indexer died) makes the batch retry; after resending, each event is indexed
    exactly once."""
    events = out_events(testdata, 8)
    hec_ack.lose_next_acks = 1
    async with make(hec_ack.url, ack=True, ack_timeout_secs=0.3, ack_poll_interval_secs=0.05) as c:
        first = await c.send(events)
        assert all(isinstance(o, Retry) and "not confirmed" in o.reason for o in first)
        assert hec_ack.indexed == []
        assert all(isinstance(o, Delivered) for o in await c.send(events))
    ids = [e["event"]["eventID"] for e in hec_ack.indexed]
    assert sorted(ids) == sorted(e.doc["eventID"] for e in events)


async def test_ack_expected_but_token_without_ack_is_fatal(
    hec: FakeSplunkHec, testdata: Path
) -> None:
    """ack: true against a token without acknowledgement is a configuration error."""
    c = make(hec.url, ack=True)
    with pytest.raises(Fatal, match="ackId"):
        await c.send(out_events(testdata, 1))
    await c.close()


async def test_unreachable_retries(testdata: Path) -> None:
    server = FakeSplunkHec({TOKEN})
    url = await server.start()
    await server.stop()
    c = make(url)
    out = await c.send(out_events(testdata, 3))
    assert not await c.health()
    await c.close()
    assert all(isinstance(o, Retry) for o in out)


async def test_normalizer_envelope_keeps_its_fields(hec: FakeSplunkHec, testdata: Path) -> None:
    """A raw-schema envelope (time, source, sourcetype, fields, event) is sent as one HEC
    event: its source and indexed fields kept, index/host from the settings added."""
    ev = out_events(testdata, 1)[0]
    env = {"time": 1.5, "sourcetype": "aws:cloudtrail", "source": "s3://c/k.json.gz",
           "event": ev.doc, "fields": {"aws_account_name": "prod"}}  # fmt: skip
    wrapped = OutEvent(id=ev.id, doc=env, time=ev.time, account_id=ev.account_id,
                       region=ev.region, pointer=ev.pointer)  # fmt: skip
    async with make(hec.url, index="aws") as c:
        assert isinstance((await c.send([wrapped]))[0], Delivered)
    (got,) = hec.indexed
    assert got["event"] == ev.doc
    assert got["source"] == "s3://c/k.json.gz"
    assert got["fields"] == {"aws_account_name": "prod"}
    assert got["time"] == 1.5
    assert got["index"] == "aws"
    assert got["sourcetype"] == "aws:cloudtrail"
