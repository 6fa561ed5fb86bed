"""Forwarder: cursors over the ledger, retries, dead letters, backpressure, replay, restarts."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from aggregator.config import ForwardSettings
from aggregator.forward.documents import default_normalizer
from aggregator.forward.forwarder import Forwarder
from aggregator.forward.replay import replay
from aggregator.forward.store import Cursor
from aggregator.ingest.dedupe import record_key_text
from aggregator.state import CentralObject, ObjectOutcome, SourceRef, State
from tests.fakes.events import stratus_records
from tests.fakes.opensearch import FakeOpenSearch
from tests.fakes.splunk_hec import FakeSplunkHec

TOKEN = "11111111-2222-3333-4444-555555555555"


class MemoryArchive:
    """The ArchiveReader protocol over a dict (central key -> records)."""

    def __init__(self) -> None:
        self.objects: dict[str, list[dict[str, Any]]] = {}
        self.reads = 0

    async def read_records(
        self, central_key: str, sha256: str | None = None
    ) -> list[dict[str, Any]]:
        self.reads += 1
        return json.loads(json.dumps(self.objects[central_key]))


def add_object(
    state: State, archive: MemoryArchive, key: str, records: list[dict[str, Any]]
) -> None:
    archive.objects[key] = records
    times = sorted(r["eventTime"] for r in records)
    src = SourceRef("s1", "111111111111", "us-east-1", "trail-bucket", "AWSLogs/")
    state.commit_object(
        ObjectOutcome(
            source=src, key=f"src/{key}", day_prefix="AWSLogs/d/", kind="log_file", etag=None,
            size=1, events_in=len(records),
            central=CentralObject(key, 1, "0" * 64, len(records), times[0], times[-1]),
        )
    )  # fmt: skip


def load_ledger(
    state: State, archive: MemoryArchive, testdata: Path, per_object: int = 50
) -> set[str]:
    recs = stratus_records(testdata)
    for i in range(0, len(recs), per_object):
        add_object(state, archive, f"AWSLogs/obj{i:04d}.json.gz", recs[i : i + per_object])
    return {record_key_text(r) for r in recs}


def fwd_of(*args: Any, **kw: Any) -> Forwarder:
    """A Forwarder with the default normalizer (a forwarder always has one)."""
    kw.setdefault("normalize", default_normalizer())
    return Forwarder(*args, **kw)


def settings(*connectors: dict[str, Any], **kw: Any) -> ForwardSettings:
    base = {"backoff_initial_secs": 0.01, "backoff_max_secs": 0.05, "batch_max_wait_secs": 0,
            "poll_interval_secs": 0.02, "batch_max_events": 100}  # fmt: skip
    return ForwardSettings.model_validate({"connectors": list(connectors), **base, **kw})


def os_conn(url: str, name: str = "os", **kw: Any) -> dict[str, Any]:
    return {"name": name, "type": "opensearch", "hosts": [url], **kw}


def hec_conn(url: str, name: str = "hec", **kw: Any) -> dict[str, Any]:
    return {"name": name, "type": "splunk_hec", "url": url, "token": TOKEN, **kw}


@pytest.fixture
def state(tmp_path: Path) -> State:
    return State(tmp_path / "state.db")


@pytest.fixture
async def fake_os() -> AsyncIterator[FakeOpenSearch]:
    server = FakeOpenSearch()
    await server.start()
    yield server
    await server.stop()


async def until(pred: Callable[[], bool], secs: float = 20.0) -> bool:
    for _ in range(int(secs / 0.02)):
        if pred():
            return True
        await asyncio.sleep(0.02)
    return pred()


async def test_drain_delivers_everything_in_batches_and_moves_the_cursor(
    state: State, fake_os: FakeOpenSearch, testdata: Path
) -> None:
    """Every archived event reaches OpenSearch once; batches follow batch_max_events."""
    archive = MemoryArchive()
    unique = load_ledger(state, archive, testdata)
    fwd = fwd_of(settings(os_conn(fake_os.url)), state, archive, bucket="central")
    assert fwd.backlog("os") == 7
    await fwd.drain()
    assert fake_os.all_ids() == unique
    assert fake_os.doc_count() == len(unique)
    assert fake_os.bulk_requests == -(-len(unique) // 100)
    assert fwd.backlog("os") == 0
    assert archive.reads == 7
    st = {s.name: s for s in fwd.status()}["os"]
    assert st.extra == {"delivered": len(unique), "rejected": 0}
    doc = next(iter(next(iter(fake_os.indices.values())).values()))
    assert doc["cloud"]["provider"] == "aws"  # ECS, the OpenSearch default schema


async def test_sink_down_then_back_every_event_once(state: State, testdata: Path) -> None:
    """OpenSearch unreachable for a while, then back with a 429 storm: doc count equals the
    number of unique events, nothing dead-lettered; backlog and backpressure follow."""
    server = FakeOpenSearch()
    url = await server.start()
    await server.stop()
    archive = MemoryArchive()
    unique = load_ledger(state, archive, testdata)
    fwd = fwd_of(settings(os_conn(url), max_backlog_objects=5), state, archive, bucket="central")
    fwd.start()
    try:
        await asyncio.sleep(0.5)
        assert fwd.backlog("os") == 7
        assert fwd.backpressure()
        server.throttle_ratio = 0.3
        await server.start()
        assert await until(lambda: fwd.backlog("os") == 0)
        assert not fwd.backpressure()
    finally:
        await fwd.stop()
        await server.stop()
    assert server.doc_count() == len(unique)
    assert server.all_ids() == unique
    assert fwd.store.dead_letters("os") == []
    assert fwd.lanes["os"].status.retries > 0


async def test_one_sink_down_never_blocks_another(state: State, testdata: Path) -> None:
    """HEC gets everything while OpenSearch is down; OpenSearch catches up later."""
    hec = FakeSplunkHec({TOKEN})
    await hec.start()
    down = FakeOpenSearch()
    os_url = await down.start()
    await down.stop()
    archive = MemoryArchive()
    unique = load_ledger(state, archive, testdata)
    fwd = fwd_of(settings(os_conn(os_url), hec_conn(hec.url)), state, archive, bucket="central")
    fwd.start()
    try:
        assert await until(lambda: fwd.backlog("hec") == 0)
        # (compared by eventID: the normalizer may redact fields of the raw record)
        sent = sorted(r["eventID"] for rs in archive.objects.values() for r in rs)
        assert sorted(e["event"]["eventID"] for e in hec.indexed) == sent
        assert fwd.backlog("os") == 7
        await down.start()
        assert await until(lambda: fwd.backlog("os") == 0)
    finally:
        await fwd.stop()
        await hec.stop()
        await down.stop()
    assert down.all_ids() == unique
    assert len(hec.indexed) == len(unique)


async def test_crash_between_send_and_commit_loses_nothing(
    tmp_path: Path, testdata: Path, fake_os: FakeOpenSearch
) -> None:
    """A crash after the sink acknowledged a batch but before the cursor was committed:
    the restarted forwarder sends that batch again; OpenSearch keeps one doc per event."""
    db = tmp_path / "s.db"
    state = State(db)
    archive = MemoryArchive()
    unique = load_ledger(state, archive, testdata)
    conn = os_conn(fake_os.url, max_in_flight=1)  # exact resend count below
    fwd = fwd_of(settings(conn), state, archive, bucket="c")
    real_commit = fwd.store.commit
    calls = {"n": 0}

    def crashing_commit(*a: Any, **kw: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("power cut")
        real_commit(*a, **kw)

    fwd.store.commit = crashing_commit  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="power cut"):
        await fwd.drain()
    state.close()
    sent_before = fake_os.items_seen
    assert 100 < sent_before < len(unique)
    state2 = State(db)
    fwd2 = fwd_of(settings(conn), state2, archive, bucket="c")
    assert fwd2.store.cursor("os").ledger_id == 3  # first batch (objects 1-2) committed
    await fwd2.drain()
    assert fake_os.doc_count() == len(unique)
    assert fake_os.all_ids() == unique
    assert fake_os.items_seen == len(unique) + 100  # exactly the uncommitted batch again
    assert fwd2.backlog("os") == 0


async def test_stop_while_retrying_keeps_the_batch(
    tmp_path: Path, testdata: Path, fake_os: FakeOpenSearch
) -> None:
    """Stopped mid-batch (sink failing): the cursor does not move; a new run delivers it."""
    state = State(tmp_path / "s.db")
    archive = MemoryArchive()
    unique = load_ledger(state, archive, testdata)
    fake_os.fail_next = [503] * 10_000
    fwd = fwd_of(settings(os_conn(fake_os.url)), state, archive, bucket="c")
    fwd.start()
    await asyncio.sleep(0.3)
    await fwd.stop()
    assert fwd.store.cursor("os").ledger_id == 0
    fake_os.fail_next = []
    fwd2 = fwd_of(settings(os_conn(fake_os.url)), state, archive, bucket="c")
    await fwd2.drain()
    assert fake_os.all_ids() == unique


async def test_rejections_go_to_dead_letters_and_the_cursor_moves(
    state: State, fake_os: FakeOpenSearch, testdata: Path
) -> None:
    """A 400 item is dead-lettered with its reason and pointer; the rest is delivered."""
    archive = MemoryArchive()
    unique = load_ledger(state, archive, testdata)
    bad = record_key_text(archive.objects["AWSLogs/obj0050.json.gz"][3])
    fake_os.reject_ids[bad] = (400, "mapper_parsing_exception", "failed to parse field [x]")
    fwd = fwd_of(settings(os_conn(fake_os.url)), state, archive, bucket="c")
    await fwd.drain()
    (dl,) = fwd.store.dead_letters("os")
    assert dl["event_id"] == bad
    assert dl["central_key"] == "AWSLogs/obj0050.json.gz"
    assert dl["record_index"] == 3
    assert "mapper_parsing_exception" in dl["reason"]
    assert fake_os.all_ids() == unique - {bad}
    assert fwd.backlog("os") == 0
    assert fwd.store.counts("os") == (len(unique) - 1, 1)


async def test_fatal_stops_only_that_connector(
    state: State, fake_os: FakeOpenSearch, testdata: Path
) -> None:
    """A bad HEC token stops the HEC lane loudly; OpenSearch still gets everything."""
    hec = FakeSplunkHec({"another-token"})
    await hec.start()
    archive = MemoryArchive()
    unique = load_ledger(state, archive, testdata)
    fwd = fwd_of(settings(os_conn(fake_os.url), hec_conn(hec.url)), state, archive, bucket="c")
    fwd.start()
    try:
        assert await until(lambda: fwd.backlog("os") == 0)
        assert await until(lambda: fwd.lanes["hec"].status.fatal is not None)
    finally:
        await fwd.stop()
        await hec.stop()
    assert "code 4" in (fwd.lanes["hec"].status.fatal or "")
    assert fwd.backlog("hec") == 7
    assert fake_os.all_ids() == unique


async def test_replay_resends_a_time_window(
    state: State, fake_os: FakeOpenSearch, testdata: Path
) -> None:
    """replay re-sends exactly the events whose eventTime is in [since, until)."""
    archive = MemoryArchive()
    load_ledger(state, archive, testdata)
    fwd = fwd_of(settings(os_conn(fake_os.url)), state, archive, bucket="c")
    await fwd.drain()
    cursor = fwd.store.cursor("os")
    fake_os.indices.clear()
    recs = [r for rs in archive.objects.values() for r in rs]
    times = sorted({r["eventTime"] for r in recs})
    since = datetime.fromisoformat(times[len(times) // 3].replace("Z", "+00:00"))
    until_ = datetime.fromisoformat(times[2 * len(times) // 3].replace("Z", "+00:00"))
    want = {
        record_key_text(r)
        for r in recs
        if since <= datetime.fromisoformat(r["eventTime"].replace("Z", "+00:00")) < until_
    }
    report = await replay(fwd, "os", since, until_)
    assert report.events == len(want) == report.delivered
    assert fake_os.all_ids() == want
    assert fwd.store.cursor("os") == cursor


async def test_start_from_newest_skips_history(
    state: State, fake_os: FakeOpenSearch, testdata: Path
) -> None:
    archive = MemoryArchive()
    load_ledger(state, archive, testdata)
    fwd = fwd_of(settings(os_conn(fake_os.url, start_from="newest")), state, archive, bucket="c")
    await fwd.drain()
    assert fake_os.doc_count() == 0
    new = [{**r, "eventID": f"new-{i}"} for i, r in enumerate(stratus_records(testdata)[:5])]
    add_object(state, archive, "AWSLogs/new.json.gz", new)
    await fwd.drain()
    assert fake_os.doc_count() == 5


async def test_bad_records_are_dead_lettered_not_dropped(
    state: State, fake_os: FakeOpenSearch, testdata: Path
) -> None:
    """A record the normalizer cannot handle is dead-lettered with the reason."""
    archive = MemoryArchive()
    recs = stratus_records(testdata)[:10]
    add_object(state, archive, "AWSLogs/a.json.gz", recs)

    def picky(record: dict[str, Any], schema: Any, central_key: str) -> dict[str, Any]:
        if record.get("eventID") == recs[4]["eventID"]:
            raise ValueError("cannot map")
        return default_normalizer()(record, schema, central_key)

    fwd = fwd_of(settings(os_conn(fake_os.url)), state, archive, bucket="c", normalize=picky)
    await fwd.drain()
    (dl,) = fwd.store.dead_letters("os")
    assert "normalize: ValueError: cannot map" in dl["reason"]
    assert fake_os.doc_count() == 9


def test_config_rejects_duplicate_names() -> None:
    with pytest.raises(ValueError, match="unique"):
        settings(os_conn("http://a"), os_conn("http://b"))


async def test_batch_ending_on_an_object_boundary_leaves_no_backlog(
    state: State, fake_os: FakeOpenSearch, testdata: Path
) -> None:
    """A batch that ends exactly at the end of an object moves the cursor past it."""
    archive = MemoryArchive()
    load_ledger(state, archive, testdata)
    fwd = fwd_of(settings(os_conn(fake_os.url), batch_max_events=50), state, archive, bucket="c")
    assert await fwd.lanes["os"].step()
    assert fwd.store.cursor("os") == Cursor(2, 0)
    assert fwd.backlog("os") == 6
    await fwd.drain()
    assert fwd.backlog("os") == 0


async def test_running_lane_survives_an_unexpected_error(
    state: State, fake_os: FakeOpenSearch, testdata: Path
) -> None:
    """A failing commit (say, a locked state DB) is logged and retried; nothing is lost."""
    archive = MemoryArchive()
    unique = load_ledger(state, archive, testdata)
    fwd = fwd_of(settings(os_conn(fake_os.url)), state, archive, bucket="c")
    real_commit = fwd.store.commit
    calls = {"n": 0}

    def flaky_commit(*a: Any, **kw: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("database is locked")
        real_commit(*a, **kw)

    fwd.store.commit = flaky_commit  # type: ignore[method-assign]
    fwd.start()
    try:
        assert await until(lambda: fwd.backlog("os") == 0)
    finally:
        await fwd.stop()
    assert fwd.lanes["os"].status.last_error == "lane: RuntimeError"
    assert fake_os.all_ids() == unique


def test_backlog_count_is_capped_for_backpressure(state: State, testdata: Path) -> None:
    archive = MemoryArchive()
    load_ledger(state, archive, testdata)
    fwd = fwd_of(settings(os_conn("http://127.0.0.1:9")), state, archive, bucket="c")
    fwd.store.cursor("os")
    assert fwd.store.backlog("os") == 7
    assert fwd.store.backlog("os", cap=3) == 3
    assert fwd.backpressure() is False
    fwd2 = fwd_of(
        settings(os_conn("http://127.0.0.1:9"), max_backlog_objects=7), state, archive, bucket="c"
    )
    assert fwd2.backpressure() is True


async def test_normalizer_may_return_serialized_documents(
    state: State, fake_os: FakeOpenSearch, testdata: Path
) -> None:
    """A normalizer answering bytes (the real one's encode()) is sent without re-encoding."""
    archive = MemoryArchive()
    recs = stratus_records(testdata)[:20]
    add_object(state, archive, "AWSLogs/a.json.gz", recs)

    def encoded(record: dict[str, Any], schema: Any, central_key: str) -> bytes:
        return json.dumps({"@timestamp": record["eventTime"], "k": central_key}).encode()

    fwd = fwd_of(settings(os_conn(fake_os.url)), state, archive, bucket="c", normalize=encoded)
    await fwd.drain()
    (docs,) = fake_os.indices.values()
    assert len(docs) == 20
    assert all(d["k"] == "AWSLogs/a.json.gz" for d in docs.values())


async def test_several_batches_in_flight_commit_in_order(state: State, testdata: Path) -> None:
    """HEC with slow indexer acks: batches overlap on the wire, yet the cursor only ever
    moves forward batch by batch, and every event is indexed once."""
    hec = FakeSplunkHec({TOKEN}, ack=True)
    hec.ack_delay_secs = 0.2
    await hec.start()
    archive = MemoryArchive()
    load_ledger(state, archive, testdata)
    conn = hec_conn(hec.url, ack=True, ack_poll_interval_secs=0.05, max_in_flight=4)
    fwd = fwd_of(settings(conn, batch_max_events=40), state, archive, bucket="c")
    positions: list[tuple[int, int]] = []
    real_commit = fwd.store.commit

    def recording_commit(name: str, cursor: Any, *a: Any, **kw: Any) -> None:
        positions.append((cursor.ledger_id, cursor.offset))
        real_commit(name, cursor, *a, **kw)

    fwd.store.commit = recording_commit  # type: ignore[method-assign]
    try:
        await fwd.drain()
    finally:
        await hec.stop()
    assert hec.max_unconfirmed >= 2
    assert positions == sorted(positions)
    assert len(positions) == len(set(positions)) == 8  # 310 events / 40
    sent = sorted(r["eventID"] for rs in archive.objects.values() for r in rs)
    assert sorted(e["event"]["eventID"] for e in hec.indexed) == sent
    assert fwd.backlog("hec") == 0


async def test_later_batch_acknowledged_first_still_commits_in_order(
    state: State, fake_os: FakeOpenSearch, testdata: Path
) -> None:
    """The first batch is throttled (429) while the second lands: the cursor waits for the
    first, then moves past both."""
    archive = MemoryArchive()
    unique = load_ledger(state, archive, testdata)
    first = [record_key_text(r) for r in archive.objects["AWSLogs/obj0000.json.gz"]]
    fake_os.throttle_ids.update(dict.fromkeys(first, 3))
    fwd = fwd_of(
        settings(os_conn(fake_os.url, max_in_flight=2), batch_max_events=50),
        state, archive, bucket="c",
    )  # fmt: skip
    lane = fwd.lanes["os"]
    order: list[int] = []
    real_deliver = lane.deliver

    async def recording_deliver(items: Any) -> Any:
        out = await real_deliver(items)
        order.append(items[0].index + 1000 * int(items[0].central_key[-12:-8]))
        return out

    lane.deliver = recording_deliver  # type: ignore[method-assign]
    await fwd.drain()
    assert order[0] != 0  # the second batch was acknowledged before the first
    assert fwd.store.cursor("os") == Cursor(8, 0)
    assert fake_os.all_ids() == unique


async def test_backpressure_holds_its_limit_within_one_object_per_worker(
    moto: str, tmp_path: Path
) -> None:
    """A sink that is down and max_backlog_objects 5, with 4 ingest workers and 30 new source
    objects: collection pauses with at most 5 + 4 - 1 objects behind the cursor (the listing
    queue does not add to it); once the predicate clears, the cycle archives the rest."""
    from awsfixtures import StsSessions, client, log_key, log_object, make_source, record

    from aggregator.aws.clients import Aws
    from aggregator.aws.inventory import Account, Inventory
    from aggregator.config import parse_settings
    from aggregator.ingest.cycle import Ingestor

    a1 = "111111111111"
    client("s3").create_bucket(Bucket="central")
    client("s3").create_bucket(Bucket="org-trail")
    src = make_source("org-trail", a1)
    for i in range(30):
        key = log_key(src.prefix, a1, "us-east-1", f"20240501T{i // 60:02d}{i % 60:02d}Z", f"K{i}")
        client("s3").put_object(Bucket="org-trail", Key=key, Body=log_object([record(f"e{i}", a1)]))
    cfg = parse_settings(
        {"state": {"path": str(tmp_path / "s.db")}, "archive": {"bucket": "central"},
         "collect": {"max_concurrency": 4},
         "forward": {"max_backlog_objects": 5,
                     "connectors": [os_conn("http://127.0.0.1:9")]}}
    )  # fmt: skip
    state = State(cfg.state.path)
    fwd = fwd_of(cfg.forward, state, MemoryArchive(), bucket="central")
    fwd.store.cursor("os")
    ing = Ingestor(cfg, state, StsSessions(), Aws(cfg.aws), should_pause=fwd.backpressure)
    inv = Inventory([Account(a1)], {a1: ["us-east-1"]}, [], [src], [])
    cycle = asyncio.create_task(ing.run(inv))
    seen, deadline = -1, time.monotonic() + 60
    # until collection wrote and then stopped growing the backlog (a loaded machine may take
    # a while to start the cycle)
    while (seen != state.ledger.max_id() or seen == 0) and time.monotonic() < deadline:
        seen = state.ledger.max_id()
        await asyncio.sleep(0.6)
    assert 5 <= fwd.backlog("os") <= 5 + 4 - 1
    assert not cycle.done()
    ing.should_pause = lambda: False  # the sink caught up
    report = await asyncio.wait_for(cycle, 30)
    assert report.objects == 30
    assert fwd.backlog("os") == 30
    state.close()
