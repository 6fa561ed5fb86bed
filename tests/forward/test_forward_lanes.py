"""A lane says how it is doing: failing connectors warn after a threshold and then at a bounded
rate, fatal ones log at ERROR with what to fix, probe again and resume; a fatal connector does
not hold collection back unless asked to; the state is persisted for `ctagg status`."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aggregator import log
from aggregator.ingest.dedupe import record_key_text
from aggregator.state import State
from tests.fakes.opensearch import FakeOpenSearch
from tests.fakes.splunk_hec import FakeSplunkHec
from tests.forward.test_forward_forwarder import (
    TOKEN,
    MemoryArchive,
    fwd_of,
    hec_conn,
    load_ledger,
    os_conn,
    settings,
    until,
)


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    captured = io.StringIO()
    log.configure("INFO", json=True, stream=captured)
    yield captured
    log.configure("INFO")


def lines(captured: io.StringIO, event: str) -> list[dict[str, Any]]:
    out = []
    for line in captured.getvalue().splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            doc = json.loads(line)
            if doc.get("event") == event:
                out.append(doc)
    return out


async def test_failing_connector_warns_after_the_threshold_then_at_a_bounded_rate(
    tmp_path: Path, testdata: Path, logs: io.StringIO
) -> None:
    """OpenSearch refuses connections: nothing at WARNING before warn_after_secs, then one
    WARNING with the reason and one per warn_interval_secs; the state is `failing` (persisted)
    until the sink is back, then `ok` again with a recovery line."""
    server = FakeOpenSearch()
    url = await server.start()
    await server.stop()
    state = State(tmp_path / "s.db")
    archive = MemoryArchive()
    load_ledger(state, archive, testdata)
    fwd = fwd_of(
        settings(os_conn(url), warn_after_secs=0.3, warn_interval_secs=0.4),
        state, archive, bucket="c",
    )  # fmt: skip
    lane = fwd.lanes["os"]
    fwd.start()
    try:
        await asyncio.sleep(0.2)
        assert lines(logs, "forward.connector_failing") == []
        assert lane.status.failing_since is not None
        assert lane.status.state == "ok"
        assert await until(lambda: lane.status.state == "failing", 5)
        assert not lane.status.up
        await asyncio.sleep(1.0)
        warned = lines(logs, "forward.connector_failing")
        assert 2 <= len(warned) <= 4, warned  # ~1.3 s of failing: first + one per 0.4 s
        assert all(w["level"] == "warning" for w in warned)
        assert all("connection" in w["reason"].lower() for w in warned), warned
        (row,) = fwd.store.connectors()
        assert row.state == "failing"
        assert row.state_reason
        assert row.backlog == 7
        await server.start()
        assert await until(lambda: fwd.backlog("os") == 0)
        assert await until(lambda: lane.status.state == "ok")
    finally:
        await fwd.stop()
        await server.stop()
    assert lane.status.up
    assert len(lines(logs, "forward.connector_recovered")) == 1
    (row,) = fwd.store.connectors()
    assert row.state == "ok"
    assert row.last_delivered_at is not None


async def test_fatal_connector_does_not_hold_back_ingest_unless_asked(
    tmp_path: Path, testdata: Path, logs: io.StringIO
) -> None:
    """A wrong HEC token: ERROR with the reason and what to fix; its backlog is full but
    collection goes on (its cursor waits); `block_ingest_when_fatal` (forward-level, or the
    connector's own, which wins) keeps the old behaviour."""
    hec = FakeSplunkHec({"another-token"})
    await hec.start()
    state = State(tmp_path / "s.db")
    archive = MemoryArchive()
    load_ledger(state, archive, testdata)
    try:
        fwd = fwd_of(settings(hec_conn(hec.url), max_backlog_objects=3), state, archive, bucket="c")
        assert fwd.backpressure()  # before it is known to be dead, a full backlog holds
        fwd.start()
        try:
            assert await until(lambda: fwd.lanes["hec"].status.fatal is not None)
            assert not fwd.backpressure()
            assert fwd.holding_back() == []
        finally:
            await fwd.stop()
        (fatal,) = lines(logs, "forward.connector_fatal")
        assert fatal["level"] == "error"
        assert "code 4" in fatal["error_type"]
        assert "token" in fatal["hint"]
        (row,) = fwd.store.connectors()
        assert (row.state, row.backlog, row.ledger_id) == ("fatal", 7, 0)
        assert "Invalid token" in (row.state_reason or "")
        for forward_level, own, blocks in ((True, None, True), (True, False, False),
                                           (False, True, True)):  # fmt: skip
            conn = hec_conn(hec.url, block_ingest_when_fatal=own)
            other = fwd_of(
                settings(conn, max_backlog_objects=3, block_ingest_when_fatal=forward_level),
                state, archive, bucket="c",
            )  # fmt: skip
            other.lanes["hec"].status.fatal = "HEC 403 code 4: Invalid token"
            assert other.backpressure() is blocks
    finally:
        await hec.stop()


async def test_fatal_connector_probes_again_and_resumes_when_fixed(
    tmp_path: Path, testdata: Path, logs: io.StringIO
) -> None:
    """The token is enabled on the Splunk side while ctagg runs: the lane, probing every
    fatal_retry_secs (ERROR each time it is still refused), resumes and delivers everything."""
    hec = FakeSplunkHec({"another-token"})
    await hec.start()
    state = State(tmp_path / "s.db")
    archive = MemoryArchive()
    load_ledger(state, archive, testdata)
    fwd = fwd_of(settings(hec_conn(hec.url), fatal_retry_secs=0.2), state, archive, bucket="c")
    lane = fwd.lanes["hec"]
    fwd.start()
    try:
        assert await until(lambda: len(lines(logs, "forward.connector_fatal")) >= 2)
        hec.tokens.add(TOKEN)
        assert await until(lambda: fwd.backlog("hec") == 0)
    finally:
        await fwd.stop()
        await hec.stop()
    assert lane.status.fatal is None
    assert lane.status.up
    assert len(lines(logs, "forward.connector_resumed")) == 1
    (row,) = fwd.store.connectors()
    assert row.state == "ok"
    assert len(hec.indexed) == sum(len(v) for v in archive.objects.values())


async def test_hec_poison_costs_no_backoff_and_no_duplicates(
    tmp_path: Path, testdata: Path
) -> None:
    """1% poison events with indexer acks: each bad one is dead-lettered, the others are
    indexed exactly once, and the lane never waits a backoff (5 s here) on their account."""
    import time

    hec = FakeSplunkHec({TOKEN}, ack=True)
    await hec.start()
    state = State(tmp_path / "s.db")
    archive = MemoryArchive()
    load_ledger(state, archive, testdata)
    recs = [r for rs in archive.objects.values() for r in rs]
    bad = {r["eventID"] for r in recs[::100]}
    hec.invalid = lambda e: isinstance(e, dict) and e.get("eventID") in bad
    conn = hec_conn(hec.url, ack=True, ack_poll_interval_secs=0.02)
    fwd = fwd_of(settings(conn, backoff_initial_secs=5.0, backoff_max_secs=5.0), state, archive,
                 bucket="c")  # fmt: skip
    started = time.monotonic()
    try:
        await fwd.drain()
    finally:
        await hec.stop()
    assert time.monotonic() - started < 4.0
    assert {d["event_id"] for d in fwd.store.dead_letters("hec")} == {
        record_key_text(r) for r in recs if r["eventID"] in bad
    }
    ids = [e["event"]["eventID"] for e in hec.indexed]
    assert sorted(ids) == sorted(r["eventID"] for r in recs if r["eventID"] not in bad)
    assert fwd.backlog("hec") == 0
