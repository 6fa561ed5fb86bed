"""A lane says how it is doing: failing connectors warn after a threshold and then at a bounded
rate, fatal ones log at ERROR with what to fix, probe again and resume; a fatal connector does
not hold collection back unless asked to; the state is persisted for `ctagg status`; a central
object modified after ingest is refused whole, and the lane goes on."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from aggregator import log
from aggregator.config import Settings
from aggregator.forward.forwarder import Forwarder
from aggregator.ingest.dedupe import record_key_text
from aggregator.state import State
from tests.archivecheck import central_bodies, decode
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


# ---------------------------------------------------------------- modified central objects

A1 = "111111111111"


@dataclass
class World:
    """Events collected into moto's central bucket by the real ingest cycle."""

    doc: dict[str, Any]  # the config
    settings: Settings
    planted: list[dict[str, Any]]

    def keys(self) -> list[str]:
        return sorted(central_bodies())

    def tamper(self, key: str) -> tuple[str, str, set[str]]:
        """Overwrite one central object with other bytes (one event's field changed,
        re-gzipped); returns (ledger sha256, new sha256, the object's event ids)."""
        s3 = boto3.client("s3", region_name="us-east-1")
        body = s3.get_object(Bucket="central", Key=key)["Body"].read()
        records = decode(body)
        records[0]["sourceIPAddress"] = "203.0.113.66"
        new = gzip.compress(json.dumps({"Records": records}).encode(), mtime=0)
        s3.put_object(Bucket="central", Key=key, Body=new)
        return (
            hashlib.sha256(body).hexdigest(),
            hashlib.sha256(new).hexdigest(),
            {str(r["eventID"]) for r in records},
        )

    def restore(self, key: str, body: bytes) -> None:
        boto3.client("s3", region_name="us-east-1").put_object(Bucket="central", Key=key, Body=body)


async def archived_world(tmp_path: Path, hec_url: str, objects: int = 4, per: int = 3) -> World:
    from awsfixtures import StsSessions, client, log_key, log_object, make_source, record

    from aggregator.aws.clients import Aws
    from aggregator.aws.inventory import Account, Inventory
    from aggregator.config import parse_settings
    from aggregator.ingest.cycle import Ingestor

    client("s3").create_bucket(Bucket="central")
    client("s3").create_bucket(Bucket="org-trail")
    src = make_source("org-trail", A1)
    planted: list[dict[str, Any]] = []
    for o in range(objects):
        recs = [record(f"ev-{o}-{i}", A1, time=f"2024-05-01T1{o}:0{i}:00Z") for i in range(per)]
        planted.extend(recs)
        key = log_key(src.prefix, A1, "us-east-1", f"20240501T1{o}00Z", f"Obj{o:013d}")
        client("s3").put_object(Bucket="org-trail", Key=key, Body=log_object(recs))
    doc: dict[str, Any] = {
        "state": {"path": str(tmp_path / "s.db")},
        "archive": {"bucket": "central"},
        "aws": {"max_attempts": 1},
        "forward": {
            "batch_max_wait_secs": 0,
            "backoff_initial_secs": 0.05,
            "connectors": [{"name": "hec", "type": "splunk_hec", "url": hec_url, "token": TOKEN}],
        },
        "integrity": {"validate_digests": False},
    }
    cfg = parse_settings(doc)
    state = State(cfg.state.path)
    try:
        inv = Inventory([Account(A1)], {A1: ["us-east-1"]}, [], [src], [])
        report = await Ingestor(cfg, state, StsSessions(), Aws(cfg.aws)).run(inv)
        assert report.objects == objects
    finally:
        state.close()
    assert len(central_bodies()) == objects
    return World(doc, cfg, planted)


@asynccontextmanager
async def forwarder(world: World) -> AsyncIterator[Forwarder]:
    """The daemon's forwarder over the central archive in moto."""
    from awsfixtures import StsSessions

    from aggregator.archive import store as archive
    from aggregator.aws.clients import Aws
    from aggregator.forward.forwarder import forwarder_for

    cfg = world.settings
    state = State(cfg.state.path)
    try:
        async with archive.opened(cfg, Aws(cfg.aws), StsSessions()) as central:
            yield forwarder_for(cfg, state, central)
    finally:
        state.close()


def received(hec: FakeSplunkHec) -> list[str]:
    return [str(e["event"]["eventID"]) for e in hec.indexed]


def modified_metric(fwd: Forwarder) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    from aggregator.service.metrics import Metrics

    m = Metrics()
    m.forward.forwarder = fwd
    for fam in text_string_to_metric_families(m.exposition().decode()):
        for s in fam.samples:
            if s.name == "ctagg_forward_objects_modified_total":
                assert s.labels == {"connector": "hec"}
                return float(s.value)
    raise AssertionError("no ctagg_forward_objects_modified_total series")


async def test_an_unmodified_archive_forwards_everything(
    moto: str, tmp_path: Path, logs: io.StringIO
) -> None:
    """Every central object's bytes match the ledger's SHA-256: all events arrive once, no
    refusal, no dead letter, the counter is 0."""
    hec = FakeSplunkHec({TOKEN})
    await hec.start()
    try:
        world = await archived_world(tmp_path, hec.url)
        async with forwarder(world) as fwd:
            await fwd.drain()
            assert fwd.backlog("hec") == 0
            assert fwd.store.dead_letters("hec") == []
            assert modified_metric(fwd) == 0
    finally:
        await hec.stop()
    assert sorted(received(hec)) == sorted(r["eventID"] for r in world.planted)
    assert lines(logs, "forward.object_modified") == []


async def test_a_modified_central_object_is_refused_and_the_lane_moves_on(
    moto: str, tmp_path: Path, logs: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    """A central object overwritten after ingest: none of its events reaches the sink, every
    other event does; an ERROR names connector, key and both SHA-256s; a dead letter for the
    object with the reason (listed by `ctagg dead-letters`); the counter says 1; the cursor is
    past the end (the lane is not wedged). `dead-letters --retry` keeps it open while the
    object stays modified, and delivers its events once the original bytes are back."""
    from aggregator import cli
    from aggregator.forward.replay import retry_dead_letters

    hec = FakeSplunkHec({TOKEN})
    await hec.start()
    try:
        world = await archived_world(tmp_path, hec.url)
        key = world.keys()[1]
        original = central_bodies()[key]
        expected, actual, ids = world.tamper(key)
        assert expected != actual
        async with forwarder(world) as fwd:
            fwd.start()
            try:
                assert await until(lambda: fwd.backlog("hec") == 0, 20)
            finally:
                await fwd.stop()
            assert modified_metric(fwd) == 1
            (dl,) = fwd.store.dead_letters("hec")
        assert dl["central_key"] == key
        assert dl["reason"] == f"central object modified: sha256 {actual} != ledger {expected}"
        got = received(hec)
        assert not set(got) & ids
        assert sorted(got) == sorted(r["eventID"] for r in world.planted if r["eventID"] not in ids)
        assert "203.0.113.66" not in json.dumps(hec.indexed)
        (err,) = lines(logs, "forward.object_modified")
        assert err["level"] == "error"
        assert (err["connector"], err["key"]) == ("hec", key)
        assert (err["expected_sha256"], err["actual_sha256"]) == (expected, actual)

        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump(world.doc))
        assert await asyncio.to_thread(cli.main, ["dead-letters", str(cfg)]) == 0
        out = capsys.readouterr().out
        assert f"s3://central/{key} " in out
        assert "central object modified: sha256" in out

        async with forwarder(world) as fwd:  # still modified: stays open, nothing sent
            report = await retry_dead_letters(fwd, "hec")
            assert (report.resolved, len(report.still_dead)) == (0, 1)
            assert report.still_dead[0]["attempts"] == 2
        assert not set(received(hec)) & ids
        world.restore(key, original)
        async with forwarder(world) as fwd:  # restored: its events go, the letter resolves
            report = await retry_dead_letters(fwd, "hec")
            assert (report.resolved, report.still_dead) == (1, [])
        assert sorted(received(hec)) == sorted(r["eventID"] for r in world.planted)
    finally:
        await hec.stop()
