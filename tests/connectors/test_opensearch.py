"""OpenSearch connector against a local server that speaks the documented _bulk contract."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from connectors.base import Delivered, Fatal, OutEvent, Rejected, Retry
from connectors.opensearch import OpenSearchConnector, OpenSearchSettings, index_glob
from tests.fakes.events import out_event, out_events
from tests.fakes.opensearch import FakeOpenSearch


def make(url: str, **kw: Any) -> OpenSearchConnector:
    s = TypeAdapter(OpenSearchSettings).validate_python(
        {"name": "os", "type": "opensearch", "hosts": [url], **kw}
    )
    return OpenSearchConnector(s)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenSearch]:
    server = FakeOpenSearch()
    await server.start()
    yield server
    await server.stop()


async def test_open_installs_template_and_retention_policy_idempotently(
    fake: FakeOpenSearch,
) -> None:
    """open() installs the index template and ISM policy; a second open changes nothing."""
    c = make(fake.url, retention_days=30)
    await c.open()
    await c.close()
    tpl = fake.templates["ctagg-cloudtrail"]
    assert tpl["index_patterns"] == ["cloudtrail-*"]
    props = tpl["template"]["mappings"]["properties"]
    assert props["@timestamp"]["type"] == "date"
    ct = props["aws"]["properties"]["cloudtrail"]["properties"]
    assert ct["flattened"]["type"] == "flat_object"
    assert ct["request_parameters"]["type"] == "keyword"  # JSON text: keyword + .text
    assert ct["request_parameters"]["fields"]["text"]["type"] == "text"
    policy = fake.policies["ctagg-cloudtrail-retention"]
    assert policy["_version"] == 1
    states = policy["policy"]["states"]
    assert states[0]["transitions"][0]["conditions"]["min_index_age"] == "30d"
    assert policy["policy"]["ism_template"][0]["index_patterns"] == ["cloudtrail-*"]
    async with make(fake.url, retention_days=30):
        pass
    assert fake.policies["ctagg-cloudtrail-retention"]["_version"] == 1
    c2 = make(fake.url, retention_days=7)
    await c2.open()
    await c2.close()
    changed = fake.policies["ctagg-cloudtrail-retention"]
    assert changed["_version"] == 2
    assert changed["policy"]["states"][0]["transitions"][0]["conditions"]["min_index_age"] == "7d"


def test_index_glob() -> None:
    assert index_glob("cloudtrail-%Y.%m.%d") == "cloudtrail-*"
    assert index_glob("ct") == "ct"


async def test_bulk_gzip_per_day_index_and_resend_overwrites(
    fake: FakeOpenSearch, testdata: Path
) -> None:
    """Events land in per-day indices with _id = dedupe key; a resend does not duplicate."""
    events = out_events(testdata, 50)
    async with make(fake.url) as c:
        first = await c.send(events)
        again = await c.send(events)
    assert all(isinstance(o, Delivered) for o in first + again)
    assert fake.gzip_requests == 2
    unique = {e.id for e in events}
    assert fake.doc_count("cloudtrail-*") == len(unique)
    assert fake.all_ids() == unique
    ev = events[0]
    day = time.strftime("cloudtrail-%Y.%m.%d", time.gmtime(ev.time))
    assert fake.indices[day][ev.id] == ev.doc


async def test_partial_bulk_failure_is_classified_per_item(
    fake: FakeOpenSearch, testdata: Path
) -> None:
    """429 items retry, mapping 400 items are rejected with the item error, the rest land."""
    events = out_events(testdata, 10)
    fake.throttle_ids.update({events[1].id: 1, events[4].id: 1})
    fake.reject_ids[events[7].id] = (400, "mapper_parsing_exception", "failed to parse [x]")
    fake.reject_ids[events[8].id] = (503, "unavailable_shards_exception", "primary not active")
    async with make(fake.url) as c:
        out = await c.send(events)
        assert isinstance(out[1], Retry)
        assert "es_rejected_execution_exception" in out[1].reason
        assert isinstance(out[4], Retry)
        assert isinstance(out[7], Rejected)
        assert "400 mapper_parsing_exception: failed to parse [x]" in out[7].reason
        assert isinstance(out[8], Retry)
        assert [i for i, o in enumerate(out) if isinstance(o, Delivered)] == [0, 2, 3, 5, 6, 9]
        del fake.reject_ids[events[8].id]
        retry = [events[i] for i in (1, 4, 8)]
        assert all(isinstance(o, Delivered) for o in await c.send(retry))
    assert fake.doc_count() == 9


async def test_whole_request_429_and_5xx_retry(fake: FakeOpenSearch, testdata: Path) -> None:
    """A rejected or failing request retries every event; nothing is rejected."""
    events = out_events(testdata, 5)
    fake.fail_next = [429, 503, 500]
    async with make(fake.url) as c:
        for status in ("429", "503", "500"):
            out = await c.send(events)
            assert all(isinstance(o, Retry) and status in o.reason for o in out)
        assert all(isinstance(o, Delivered) for o in await c.send(events))


async def test_429_storm_converges_without_loss_or_duplicates(
    fake: FakeOpenSearch, testdata: Path
) -> None:
    """With 60% of items throttled, resending the retries converges to one doc per event."""
    events = out_events(testdata)
    fake.throttle_ratio = 0.6
    pending = list(events)
    rounds = 0
    async with make(fake.url) as c:
        while pending and rounds < 50:
            out = await c.send(pending)
            assert not any(isinstance(o, Rejected) for o in out)
            pending = [e for e, o in zip(pending, out, strict=True) if isinstance(o, Retry)]
            rounds += 1
    assert not pending
    assert rounds > 2
    assert fake.doc_count() == len({e.id for e in events})


async def test_bad_credentials_are_fatal_and_good_ones_work(testdata: Path) -> None:
    """401 is Fatal (operator action); basic auth and API key are sent as documented."""
    server = FakeOpenSearch(basic=("ctagg", "s3cret"), api_key="aWQ6a2V5")
    await server.start()
    try:
        bad = make(server.url, auth="basic", username="ctagg", password="wrong")
        with pytest.raises(Fatal):
            await bad.open()
        await bad.close()
        events = out_events(testdata, 3)
        for kw in (
            {"auth": "basic", "username": "ctagg", "password": "s3cret"},
            {"auth": "api_key", "api_key": "aWQ6a2V5"},
        ):
            async with make(server.url, **kw) as c:
                assert all(isinstance(o, Delivered) for o in await c.send(events))
        assert server.last_headers["Authorization"] == "ApiKey aWQ6a2V5"
        nokey = make(server.url, install_template=False)
        await nokey.open()
        with pytest.raises(Fatal):
            await nokey.send(events)
        await nokey.close()
    finally:
        await server.stop()


async def test_sigv4_signs_requests(fake: FakeOpenSearch, testdata: Path) -> None:
    """auth sigv4 signs each request (AWS4-HMAC-SHA256 over the gzipped body)."""
    async with make(fake.url, auth="sigv4", aws_region="eu-west-1") as c:
        assert all(isinstance(o, Delivered) for o in await c.send(out_events(testdata, 2)))
    auth = fake.last_headers["Authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=testing/")
    assert "/eu-west-1/es/aws4_request" in auth
    assert fake.last_headers["Content-Encoding"] == "gzip"


async def test_data_stream_uses_create_and_conflict_means_delivered(
    fake: FakeOpenSearch, testdata: Path
) -> None:
    """Data stream mode: op create; a resend's 409 counts as delivered, no duplicate."""
    events = out_events(testdata, 5)
    async with make(fake.url, data_stream="ctagg-cloudtrail-ds") as c:
        assert all(isinstance(o, Delivered) for o in await c.send(events))
        assert all(isinstance(o, Delivered) for o in await c.send(events))
    assert fake.doc_count("ctagg-cloudtrail-ds") == 5
    doc = fake.indices["ctagg-cloudtrail-ds"][events[0].id]
    assert doc["@timestamp"].endswith("Z")


async def test_template_keeps_polymorphic_fields_type_stable(
    fake: FakeOpenSearch, testdata: Path
) -> None:
    """requestParameters shaped differently per call: accepted with the template, and the
    same documents clash without it (so the check is real)."""
    base = out_events(testdata, 1)[0].doc
    a = {**base, "eventID": "a", "requestParameters": {"filter": "x"}}
    b = {**base, "eventID": "b", "requestParameters": {"filter": {"name": "y"}}}
    evs = [out_event(a), out_event(b)]
    async with make(fake.url) as c:
        assert all(isinstance(o, Delivered) for o in await c.send(evs))
    other = FakeOpenSearch()
    await other.start()
    try:
        async with make(other.url, install_template=False) as c:
            out = await c.send(evs)
        assert isinstance(out[0], Delivered)
        assert isinstance(out[1], Rejected)
        assert "mapper_parsing_exception" in out[1].reason
    finally:
        await other.stop()


async def test_sink_down_retries(testdata: Path) -> None:
    """Connection refused: every event retries; nothing raised."""
    server = FakeOpenSearch()
    url = await server.start()
    await server.stop()
    c = make(url, install_template=False)
    out = await c.send(out_events(testdata, 3))
    await c.close()
    assert all(isinstance(o, Retry) and "connection" in o.reason for o in out)


def test_settings_need_their_auth_fields() -> None:
    with pytest.raises(ValueError, match="basic"):
        TypeAdapter(OpenSearchSettings).validate_python(
            {"name": "x", "type": "opensearch", "hosts": ["http://h"], "auth": "basic"}
        )
    with pytest.raises(ValueError, match="index"):
        TypeAdapter(OpenSearchSettings).validate_python(
            {"name": "x", "type": "opensearch", "hosts": ["http://h"], "index": "Bad/%Y"}
        )


async def test_envelope_documents_index_the_record(fake: FakeOpenSearch, testdata: Path) -> None:
    """A raw-schema envelope is unwrapped: OpenSearch stores the CloudTrail record."""
    ev = out_events(testdata, 1)[0]
    env = {"time": 1.0, "sourcetype": "aws:cloudtrail", "source": "ctagg", "event": ev.doc,
           "fields": {}}  # fmt: skip
    wrapped = OutEvent(id=ev.id, doc=env, time=ev.time, account_id=ev.account_id,
                       region=ev.region, pointer=ev.pointer)  # fmt: skip
    async with make(fake.url) as c:
        assert isinstance((await c.send([wrapped]))[0], Delivered)
    (docs,) = fake.indices.values()
    assert docs[ev.id] == ev.doc
