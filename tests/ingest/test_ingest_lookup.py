"""LookupEvents collector through botocore's Stubber on an aioboto3 client (moto has no
lookup_events): pagination, throttling, pacing per account-region with a fake clock, cursor."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aioboto3
import pytest
from botocore.stub import ANY, Stubber

from aggregator.aws.inventory import Account, Inventory, Source, Trail
from aggregator.config import LookupSettings
from aggregator.ingest.dedupe import event_key
from aggregator.ingest.lookup import (
    LookupCollector,
    LookupThrottled,
    LookupWindow,
    TokenBucket,
    decode_window,
    due_windows,
    lookup_targets,
    window_source_key,
)
from aggregator.state import State

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC).timestamp()


class FakeClock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    async def sleep(self, d: float) -> None:
        self.sleeps.append(d)
        self.t += d


class Recorder:
    """Records the fake time of every request, then hands it to the stubbed client."""

    def __init__(self, client: Any, clock: FakeClock, name: str, log: list[tuple[str, float]]):
        self.client, self.clock, self.name, self.log = client, clock, name, log

    async def lookup_events(self, **kw: Any) -> Any:
        self.log.append((self.name, self.clock()))
        return await self.client.lookup_events(**kw)


def item(rec: dict[str, Any]) -> dict[str, Any]:
    return {
        "EventId": rec["eventID"],
        "EventName": rec["eventName"],
        "EventTime": datetime.fromisoformat(rec["eventTime"].replace("Z", "+00:00")),
        "CloudTrailEvent": json.dumps(rec),
    }


def rec(i: int, account: str = "111111111111") -> dict[str, Any]:
    return {
        "eventVersion": "1.08",
        "eventTime": f"2024-05-01T10:{i % 60:02d}:00Z",
        "eventSource": "iam.amazonaws.com",
        "eventName": "ListUsers",
        "awsRegion": "us-east-1",
        "eventID": f"e-{account}-{i}",
        "recipientAccountId": account,
    }


@pytest.fixture
async def ct() -> AsyncIterator[Any]:
    async with aioboto3.Session().client(
        "cloudtrail", region_name="us-east-1", endpoint_url="http://127.0.0.1:9"
    ) as c:
        yield c


def max_in_any_second(times: list[float]) -> int:
    times = sorted(times)
    return max((sum(1 for u in times if t <= u < t + 1.0) for t in times), default=0)


async def test_token_bucket_paces_at_rate() -> None:
    clock = FakeClock()
    b = TokenBucket(2.0, 1.0, clock=clock, sleep=clock.sleep)
    times = []
    for _ in range(10):
        await b.acquire()
        times.append(clock())
    assert max_in_any_second(times) == 2
    assert times[-1] - times[0] == pytest.approx(4.5)


async def test_pagination_and_records(ct: Any, testdata: Path) -> None:
    sample = [
        json.loads(line)
        for line in (testdata / "awsdocs/aws-cloudtrail-user-guide/records.jsonl")
        .read_text()
        .splitlines()[:3]
    ]
    records = [r["record"] for r in sample]
    assert len(records) == 3
    clock = FakeClock()
    settings = LookupSettings(window_secs=3600)
    stub = Stubber(ct)
    start, end = NOW - 3600, NOW
    stub.add_response(
        "lookup_events",
        {"Events": [item(r) for r in records[:1]], "NextToken": "t1"},
        {
            "StartTime": datetime.fromtimestamp(start, UTC),
            "EndTime": datetime.fromtimestamp(end, UTC),
            "MaxResults": 50,
        },
    )
    bad = {"EventId": "x", "CloudTrailEvent": "{not json"}
    stub.add_response(
        "lookup_events",
        {"Events": [*(item(r) for r in records[1:]), bad]},
        {"StartTime": ANY, "EndTime": ANY, "MaxResults": 50, "NextToken": "t1"},
    )

    async def client_for(account: str, region: str) -> Any:
        return ct

    col = LookupCollector(settings, client_for, clock=clock, sleep=clock.sleep)
    with stub:
        wins = [w async for w in col.windows("111111111111", "us-east-1", start, end)]
        stub.assert_no_pending_responses()
    assert len(wins) == 1
    assert wins[0].pages == 2
    assert wins[0].unparsable == 1
    got = [r async for r in wins[0]]
    assert got == records
    # same record, same dedupe key as the copy a trail delivers: they collapse
    assert [event_key(r) for r in got] == [event_key(r) for r in records]


async def test_throttling_is_retried_with_backoff(ct: Any) -> None:
    clock = FakeClock()
    stub = Stubber(ct)
    for _ in range(2):
        stub.add_client_error(
            "lookup_events",
            service_error_code="ThrottlingException",
            service_message="Rate exceeded",
            http_status_code=400,
        )
    stub.add_response("lookup_events", {"Events": [item(rec(1))]})

    async def client_for(account: str, region: str) -> Any:
        return ct

    col = LookupCollector(
        LookupSettings(), client_for, clock=clock, sleep=clock.sleep, jitter=lambda: 1.0
    )
    with stub:
        win = await col.read_window("111111111111", "us-east-1", NOW - 600, NOW)
    assert [r["eventID"] for r in win.records] == ["e-111111111111-1"]
    assert col.throttled == 2
    assert col.requests == 3
    assert [s for s in clock.sleeps if s >= 0.5][:2] == [0.5, 1.0]


async def test_throttling_gives_up_after_max_retries(ct: Any) -> None:
    clock = FakeClock()
    stub = Stubber(ct)
    for _ in range(3):
        stub.add_client_error(
            "lookup_events", service_error_code="ThrottlingException", http_status_code=400
        )

    async def client_for(account: str, region: str) -> Any:
        return ct

    col = LookupCollector(
        LookupSettings(max_throttle_retries=2), client_for, clock=clock, sleep=clock.sleep
    )
    with stub, pytest.raises(LookupThrottled):
        await col.read_window("111111111111", "us-east-1", NOW - 600, NOW)


async def test_pacing_never_exceeds_two_per_second_per_account_region() -> None:
    """Two account-regions read concurrently, 3 pages per window: each stays at <= 2 TPS."""
    clock = FakeClock()
    calls: list[tuple[str, float]] = []
    session = aioboto3.Session()
    async with (
        session.client(
            "cloudtrail", region_name="us-east-1", endpoint_url="http://127.0.0.1:9"
        ) as c1,
        session.client(
            "cloudtrail", region_name="us-east-1", endpoint_url="http://127.0.0.1:9"
        ) as c2,
    ):
        stubs = {"111111111111": Stubber(c1), "222222222222": Stubber(c2)}
        clients = {"111111111111": c1, "222222222222": c2}
        for stub in stubs.values():
            for _ in range(2):  # 2 windows x 3 pages
                stub.add_response("lookup_events", {"Events": [item(rec(1))], "NextToken": "a"})
                stub.add_response("lookup_events", {"Events": [item(rec(2))], "NextToken": "b"})
                stub.add_response("lookup_events", {"Events": [item(rec(3))]})

        async def client_for(account: str, region: str) -> Any:
            return Recorder(clients[account], clock, f"{account}/{region}", calls)

        col = LookupCollector(
            LookupSettings(window_secs=300), client_for, clock=clock, sleep=clock.sleep
        )

        async def drain(account: str) -> int:
            n = 0
            async for w in col.windows(account, "us-east-1", NOW - 600, NOW):
                n += w.pages
                assert len(w.records) == 3
            return n

        for stub in stubs.values():
            stub.activate()
        pages = await asyncio.gather(drain("111111111111"), drain("222222222222"))
        for stub in stubs.values():
            stub.assert_no_pending_responses()
            stub.deactivate()
    assert pages == [6, 6]
    per: dict[str, list[float]] = {}
    for name, t in calls:
        per.setdefault(name, []).append(t)
    assert set(per) == {"111111111111/us-east-1", "222222222222/us-east-1"}
    for times in per.values():
        assert len(times) == 6
        assert max_in_any_second(times) <= 2
    # the two account-regions are paced independently, not one shared bucket
    assert max_in_any_second([t for _, t in calls]) > 2


async def test_cells_grid_overlap_lag_and_90_day_floor(tmp_path: Path) -> None:
    clock = FakeClock()
    s = LookupSettings(window_secs=900, overlap_secs=300, lag_secs=600, backfill_days=1)

    async def no_client(account: str, region: str) -> Any:
        raise AssertionError("not called")

    col = LookupCollector(s, no_client, clock=clock, sleep=clock.sleep)
    # first run: a day back, whole 15-minute cells up to now - lag (11:50 -> 11:45)
    first = col.cells(None)
    assert len(first) == 95
    assert first[0] == (NOW - 86400 - 300, NOW - 86400 + 900)
    assert first[-1] == (NOW - 1800 - 300, NOW - 900)
    # from a cursor: each cell read from 300 s before it; none ends after now - lag
    assert col.cells(NOW - 3600) == [
        (NOW - 3600 - 300, NOW - 2700),
        (NOW - 2700 - 300, NOW - 1800),
        (NOW - 1800 - 300, NOW - 900),
    ]
    assert col.cells(NOW - 900) == []
    # a cursor off the grid starts at the cell that holds it
    assert col.cells(NOW - 3000)[0] == (NOW - 3600 - 300, NOW - 2700)
    # deterministic: later (same cursor) the same windows come first, more may follow
    clock.t += 1000
    assert col.cells(NOW - 3600)[:3] == [
        (NOW - 3600 - 300, NOW - 2700),
        (NOW - 2700 - 300, NOW - 1800),
        (NOW - 1800 - 300, NOW - 900),
    ]
    clock.t = NOW
    old = col.cells(NOW - 200 * 86400)
    assert old[0][0] >= NOW - 90 * 86400
    assert old[0][0] < NOW - 90 * 86400 + 900
    state = State(tmp_path / "s.db")
    assert state.lookup.get("111111111111", "us-east-1") is None
    state.lookup.advance("111111111111", "us-east-1", NOW - 100)
    state.lookup.advance("111111111111", "us-east-1", NOW - 5000)  # never moves back
    assert state.lookup.get("111111111111", "us-east-1") == NOW - 100
    state.close()


async def test_due_windows_resume_from_cursor(ct: Any) -> None:
    clock = FakeClock()
    stub = Stubber(ct)
    for start, end in ((NOW - 3 * 3600 - 300, NOW - 2 * 3600), (NOW - 2 * 3600 - 300, NOW - 3600)):
        stub.add_response(
            "lookup_events",
            {"Events": []},
            {
                "StartTime": datetime.fromtimestamp(start, UTC),
                "EndTime": datetime.fromtimestamp(end, UTC),
                "MaxResults": 50,
            },
        )

    async def client_for(account: str, region: str) -> Any:
        return ct

    col = LookupCollector(
        LookupSettings(window_secs=3600, overlap_secs=300, lag_secs=600),
        client_for,
        clock=clock,
        sleep=clock.sleep,
    )
    with stub:
        wins = [w async for w in due_windows(col, "111111111111", "us-east-1", NOW - 3 * 3600)]
        stub.assert_no_pending_responses()
    # 11:00-12:00 is not due yet (it ends after now - lag)
    assert [(w.start, w.end) for w in wins] == [
        (NOW - 3 * 3600 - 300, NOW - 2 * 3600),
        (NOW - 2 * 3600 - 300, NOW - 3600),
    ]


def test_targets_untrailed_always_and_configured() -> None:
    a1, a2 = "111111111111", "222222222222"
    inv = Inventory(
        accounts=[Account(a1), Account(a2)],
        regions={a1: ["us-east-1", "eu-west-1"], a2: ["us-east-1", "eu-west-1"]},
        trails=[
            Trail(
                arn=f"arn:aws:cloudtrail:us-east-1:{a1}:trail/t",
                name="t",
                owner_account_id=a1,
                home_region="us-east-1",
                bucket="b",
                key_prefix="",
                is_organization=False,
                is_multi_region=True,
            ),
            Trail(
                arn=f"arn:aws:cloudtrail:eu-west-1:{a2}:trail/single",
                name="single",
                owner_account_id=a2,
                home_region="eu-west-1",
                bucket="b",
                key_prefix="",
                is_organization=False,
                is_multi_region=False,
            ),
        ],
        sources=[Source("b/x", a1, "us-east-1", "b", "AWSLogs/111111111111/CloudTrail/us-east-1/")],
        failures=[],
    )
    assert lookup_targets(inv, LookupSettings()) == [(a2, "us-east-1")]
    assert len(lookup_targets(inv, LookupSettings(mode="always"))) == 4
    off = LookupSettings(mode="off", targets=[{"account_id": a1, "region": "eu-west-1"}])  # type: ignore[list-item]
    assert lookup_targets(inv, off) == [(a1, "eu-west-1")]


def test_decode_window_matches_log_file_decoding(testdata: Path) -> None:
    """A window decodes to the same keys and bytes as the same records in a trail log file."""
    import gzip

    from aggregator.ingest.collect import BadObject, decode_log

    recs = [rec(3), rec(1), rec(2)]  # newest first, as LookupEvents returns them
    win = LookupWindow("111111111111", "us-east-1", NOW - 900, NOW, records=recs)
    got = decode_window(win, max_record_bytes=1 << 20)
    ordered = sorted(recs, key=lambda r: r["eventTime"])
    from_file = decode_log(
        gzip.compress(json.dumps({"Records": ordered}).encode()),
        max_object_bytes=1 << 24,
        max_record_bytes=1 << 20,
    )
    assert got.keys == from_file.keys
    assert got.contents == from_file.contents
    assert list(got.heads) == list(from_file.heads)
    assert not got.verbatim  # no source object: always re-encoded
    assert from_file.verbatim
    assert got.times == [r["eventTime"] for r in ordered]
    assert window_source_key(win) == (
        "lookup/111111111111/us-east-1/20240501T114500Z-20240501T120000Z"
    )
    with pytest.raises(BadObject):
        decode_window(win, max_record_bytes=10)
