"""LookupEvents wired into the ingest cycle: windows read through botocore's Stubber on aioboto3
cloudtrail clients (moto has no lookup_events) go through the same dedupe → central write →
commit path as trail objects, into moto's central bucket over real HTTP."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aioboto3
import pytest
from archivecheck import central_bodies
from awsfixtures import StsSessions, client, log_key, log_object, make_source, record
from botocore.stub import Stubber

from aggregator.aws.clients import Aws
from aggregator.aws.inventory import Account, Inventory, Source
from aggregator.config import Settings, parse_settings
from aggregator.ingest.cycle import Ingestor
from aggregator.ingest.work import CycleReport
from aggregator.state import State
from aggregator.state.integrity import LookupCursors
from tests.ingest.test_ingest_lookup import item

A1, A2, A3 = "111111111111", "222222222222", "333333333333"
R = "us-east-1"
ORG = "o-abcdefghij"
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC).timestamp()
# window_secs 1800, overlap 300, lag 0, cursor at 11:00: two windows are due
W1 = (NOW - 3600 - 300, NOW - 1800)  # 10:55 - 11:30
W2 = (NOW - 1800 - 300, NOW)  # 11:25 - 12:00


class FakeClock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    async def sleep(self, d: float) -> None:
        self.t += d


def page(recs: list[dict[str, Any]], token: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"Events": [item(r) for r in recs]}
    if token:
        out["NextToken"] = token
    return out


def params(window: tuple[float, float], token: str | None = None) -> dict[str, Any]:
    p: dict[str, Any] = {
        "StartTime": datetime.fromtimestamp(window[0], UTC),
        "EndTime": datetime.fromtimestamp(window[1], UTC),
        "MaxResults": 50,
    }
    if token:
        p["NextToken"] = token
    return p


class Stubs:
    """One stubbed aioboto3 cloudtrail client per account-region; records the fake time of
    every request and the pairs asked for."""

    def __init__(self, stack: AsyncExitStack, clock: FakeClock) -> None:
        self.stack, self.clock = stack, clock
        self.stubs: dict[tuple[str, str], Stubber] = {}
        self.clients: dict[tuple[str, str], Any] = {}
        self.calls: list[tuple[tuple[str, str], float]] = []
        self.on_call: Callable[[int], None] | None = None

    async def add(self, account: str, region: str = R) -> Stubber:
        c = await self.stack.enter_async_context(
            aioboto3.Session().client(
                "cloudtrail", region_name=region, endpoint_url="http://127.0.0.1:9"
            )
        )
        stub = Stubber(c)
        stub.activate()
        self.stubs[(account, region)] = stub
        self.clients[(account, region)] = c
        return stub

    async def factory(self, account: str, region: str) -> Any:
        return _Recorder(self, (account, region), self.clients[(account, region)])

    def done(self) -> None:
        for stub in self.stubs.values():
            stub.assert_no_pending_responses()


class _Recorder:
    def __init__(self, stubs: Stubs, pair: tuple[str, str], c: Any) -> None:
        self.stubs, self.pair, self.c = stubs, pair, c

    async def lookup_events(self, **kw: Any) -> Any:
        self.stubs.calls.append((self.pair, self.stubs.clock()))
        if self.stubs.on_call is not None:
            self.stubs.on_call(len(self.stubs.calls))
        return await self.c.lookup_events(**kw)


@pytest.fixture
async def stubs() -> AsyncIterator[Stubs]:
    async with AsyncExitStack() as stack:
        yield Stubs(stack, FakeClock())


@pytest.fixture
def central(moto: str) -> None:
    client("s3").create_bucket(Bucket="central")
    client("s3").create_bucket(Bucket="org-trail")


def settings(tmp_path: Path, **lookup: Any) -> Settings:
    return parse_settings(
        {
            "state": {"path": str(tmp_path / "state.db")},
            "archive": {"bucket": "central"},
            "collect": {"max_concurrency": 4, "relist_days": 2},
            "integrity": {
                "lookup": {"window_secs": 1800, "overlap_secs": 300, "lag_secs": 0, **lookup}
            },
        }
    )


def inventory(accounts: list[str], sources: list[Source] | None = None) -> Inventory:
    return Inventory(
        accounts=[Account(a) for a in accounts],
        regions={a: [R] for a in accounts},
        trails=[],
        sources=sources or [],
        failures=[],
    )


def ingestor(cfg: Settings, state: State, stubs: Stubs) -> Ingestor:
    return Ingestor(
        cfg,
        state,
        StsSessions(),
        Aws(cfg.aws),
        clock=stubs.clock,
        sleep=stubs.clock.sleep,
        cloudtrail_client=stubs.factory,
    )


async def run(cfg: Settings, inv: Inventory, stubs: Stubs) -> CycleReport:
    state = State(cfg.state.path)
    try:
        return await ingestor(cfg, state, stubs).run(inv)
    finally:
        state.close()


def cursor(cfg: Settings, account: str = A1) -> float | None:
    state = State(cfg.state.path)
    try:
        return state.lookup.get(account, R)
    finally:
        state.close()


def start_at(cfg: Settings, at: float, *accounts: str) -> None:
    state = State(cfg.state.path)
    for a in accounts or (A1,):
        state.lookup.advance(a, R, at)
    state.close()


def central_objects() -> dict[str, bytes]:
    return central_bodies()


def archived_ids() -> list[str]:
    ids = []
    for body in central_objects().values():
        ids.extend(r["eventID"] for r in json.loads(gzip.decompress(body))["Records"])
    return sorted(ids)


def ev(i: int, account: str = A1, minute: int = 0) -> dict[str, Any]:
    t = datetime.fromtimestamp(NOW - 3600 + minute * 60, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return record(f"lk-{account}-{i}", account, time=t, name="ListUsers")


def ledger_rows(cfg: Settings) -> list[dict[str, Any]]:
    state = State(cfg.state.path)
    try:
        return state.ledger.rows()
    finally:
        state.close()


async def test_windows_are_archived_once_with_pagination_and_throttling(
    central: None, tmp_path: Path, stubs: Stubs
) -> None:
    """An untrailed pair: two windows, the first paged and throttled once, the second
    repeating an event of the overlap. Every event lands once, keys in the standard layout."""
    cfg = settings(tmp_path)
    start_at(cfg, NOW - 3600)
    stub = await stubs.add(A1)
    stub.add_response("lookup_events", page([ev(0), ev(1), ev(2)], "t1"), params(W1))
    stub.add_client_error(
        "lookup_events",
        service_error_code="ThrottlingException",
        service_message="Rate exceeded",
        http_status_code=400,
    )
    stub.add_response("lookup_events", page([ev(3, minute=28), ev(4, minute=29)]), params(W1, "t1"))
    stub.add_response(
        "lookup_events", page([ev(4, minute=29), ev(5, minute=40), ev(6, minute=59)]), params(W2)
    )

    report = await run(cfg, inventory([A1]), stubs)
    stubs.done()

    assert archived_ids() == sorted(f"lk-{A1}-{i}" for i in range(7))
    assert report.lookup_windows == 2
    assert report.lookup_requests == 4  # 3 pages + the throttled one
    assert (report.events_in, report.duplicates, report.events_archived) == (8, 1, 7)
    assert (report.central_objects, report.errors) == (2, 0)
    keys = sorted(central_objects())
    assert keys[0].startswith(
        f"AWSLogs/{A1}/CloudTrail/{R}/2024/05/01/{A1}_CloudTrail_{R}_20240501T1055Z_"
    )
    assert keys[1].startswith(
        f"AWSLogs/{A1}/CloudTrail/{R}/2024/05/01/{A1}_CloudTrail_{R}_20240501T1125Z_"
    )
    rows = ledger_rows(cfg)
    assert [r["source_key"] for r in rows] == [
        f"lookup/{A1}/{R}/20240501T105500Z-20240501T113000Z",
        f"lookup/{A1}/{R}/20240501T112500Z-20240501T120000Z",
    ]
    assert {r["source_bucket"] for r in rows} == {"LookupEvents"}
    assert cursor(cfg) == NOW

    # nothing new is due: the next cycle makes no request (no stubbed response is left)
    again = await run(cfg, inventory([A1]), stubs)
    assert (again.lookup_requests, again.objects, again.errors) == (0, 0, 0)


async def test_event_from_lookup_and_from_a_trail_object_is_archived_once(
    central: None, tmp_path: Path, stubs: Stubs
) -> None:
    """mode 'always': the pair also has a trail source. The same records delivered by the
    trail (this cycle, concurrently, and a later cycle) and by LookupEvents land once."""
    cfg = settings(tmp_path, mode="always")
    start_at(cfg, NOW - 1800)
    src = make_source("org-trail", A1, org_id=ORG)
    client("s3").put_object(
        Bucket="org-trail",
        Key=log_key(src.prefix, A1, R, "20240501T1135Z", "T1"),
        Body=log_object([ev(1, minute=31), ev(2, minute=32)]),
    )
    stub = await stubs.add(A1)
    stub.add_response("lookup_events", page([ev(3, minute=45), ev(2, minute=32)]), params(W2))

    first = await run(cfg, inventory([A1], [src]), stubs)
    stubs.done()

    assert archived_ids() == [f"lk-{A1}-{i}" for i in (1, 2, 3)]
    assert (first.events_in, first.duplicates, first.events_archived) == (4, 1, 3)
    assert first.lookup_windows == 1

    # the trail delivers event 3 late, with a new one: only the new one is archived
    client("s3").put_object(
        Bucket="org-trail",
        Key=log_key(src.prefix, A1, R, "20240501T1150Z", "T2"),
        Body=log_object([ev(3, minute=45), ev(4, minute=50)]),
    )
    second = await run(cfg, inventory([A1], [src]), stubs)
    assert (second.duplicates, second.events_archived, second.lookup_requests) == (1, 1, 0)
    assert archived_ids() == [f"lk-{A1}-{i}" for i in (1, 2, 3, 4)]


class Crash(BaseException):
    """Stands in for the process dying (not an Exception: nothing may catch it)."""


async def run_dying_before_commit(
    cfg: Settings, stubs: Stubs, monkeypatch: pytest.MonkeyPatch
) -> dict[str, bytes]:
    """A cycle over A1 that dies after its central write, before the commit; the central
    objects it left."""

    def crash(self: State, outcome: Any) -> None:
        raise Crash

    monkeypatch.setattr(State, "commit_object", crash)
    with pytest.raises(Crash):
        await run(cfg, inventory([A1]), stubs)
    monkeypatch.undo()
    return central_objects()


async def test_cursor_moves_only_after_the_commit(
    central: None, tmp_path: Path, stubs: Stubs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after the central write, before the commit: the cursor has not moved, the rerun
    reads the same window and rewrites the same key with the same bytes, one ledger row. Killed
    after the commit but before the cursor: the window is read again and dedupe drops it."""
    cfg = settings(tmp_path)
    start_at(cfg, NOW - 3600)
    first = [ev(i, minute=i) for i in range(5)]
    stub = await stubs.add(A1)
    stub.add_response("lookup_events", page(first), params(W1))

    written = await run_dying_before_commit(cfg, stubs, monkeypatch)
    assert len(written) == 1
    assert cursor(cfg) == NOW - 3600
    assert ledger_rows(cfg) == []

    # rerun: the same window again, then the next one; the commit of W2 "dies" before the cursor
    stub.add_response("lookup_events", page(first), params(W1))
    stub.add_response("lookup_events", page([ev(40, minute=40)]), params(W2))
    real_advance = LookupCursors.advance

    def advance(self: LookupCursors, account: str, region: str, until: float) -> None:
        if until == W2[1]:
            raise Crash
        real_advance(self, account, region, until)

    monkeypatch.setattr(LookupCursors, "advance", advance)
    with pytest.raises(Crash):
        await run(cfg, inventory([A1]), stubs)
    monkeypatch.undo()
    after = central_objects()
    assert len(after) == 2
    (k1,) = written
    assert after[k1] == written[k1]  # same key, byte-identical
    assert cursor(cfg) == W1[1]
    assert len(ledger_rows(cfg)) == 2

    # W2 is read again; its event was committed, so nothing new is written
    stub.add_response("lookup_events", page([ev(40, minute=40)]), params(W2))
    third = await run(cfg, inventory([A1]), stubs)
    stubs.done()
    assert (third.lookup_windows, third.duplicates, third.events_archived) == (1, 1, 0)
    assert central_objects() == after
    assert archived_ids() == sorted([f"lk-{A1}-{i}" for i in range(5)] + [f"lk-{A1}-40"])
    assert cursor(cfg) == NOW
    assert len(ledger_rows(cfg)) == 2


def max_in_any_second(times: list[float]) -> int:
    times = sorted(times)
    return max((sum(1 for u in times if t <= u < t + 1.0) for t in times), default=0)


async def test_pacing_never_exceeds_two_per_second_per_account_region(
    central: None, tmp_path: Path, stubs: Stubs
) -> None:
    """Two account-regions in one cycle, 2 windows x 3 pages each plus a throttled request:
    measured on the fake clock, each pair stays at <= 2 requests in any second."""
    cfg = settings(tmp_path)
    start_at(cfg, NOW - 3600, A1, A2)
    for account in (A1, A2):
        stub = await stubs.add(account)
        for w, base in ((W1, 0), (W2, 40)):
            stub.add_response("lookup_events", page([ev(base, account)], "a"), params(w))
            if account == A1 and base == 0:
                stub.add_client_error(
                    "lookup_events", service_error_code="ThrottlingException", http_status_code=400
                )
            stub.add_response("lookup_events", page([ev(base + 1, account)], "b"))
            stub.add_response("lookup_events", page([ev(base + 2, account)]))

    report = await run(cfg, inventory([A1, A2]), stubs)
    stubs.done()

    assert report.errors == 0
    assert report.lookup_windows == 4
    assert report.events_archived == 12
    per: dict[tuple[str, str], list[float]] = {}
    for pair, t in stubs.calls:
        per.setdefault(pair, []).append(t)
    assert {p: len(t) for p, t in per.items()} == {(A1, R): 7, (A2, R): 6}
    for times in per.values():
        assert max_in_any_second(times) <= 2
    # paced per account-region, not through one shared bucket
    assert max_in_any_second([t for _, t in stubs.calls]) > 2


async def test_mode_off_reads_nothing(central: None, tmp_path: Path, stubs: Stubs) -> None:
    cfg = settings(tmp_path, mode="off")

    async def never(account: str, region: str) -> Any:
        raise AssertionError("LookupEvents called with mode off")

    state = State(cfg.state.path)
    try:
        ing = Ingestor(
            cfg, state, StsSessions(), Aws(cfg.aws), clock=stubs.clock, cloudtrail_client=never
        )
        report = await ing.run(inventory([A1, A2]))
    finally:
        state.close()
    assert (report.lookup_requests, report.lookup_windows, report.errors) == (0, 0, 0)
    assert cursor(cfg) is None
    assert central_objects() == {}


async def test_empty_windows_advance_the_cursor(
    central: None, tmp_path: Path, stubs: Stubs
) -> None:
    cfg = settings(tmp_path)
    start_at(cfg, NOW - 3600)
    stub = await stubs.add(A1)
    stub.add_response("lookup_events", {"Events": []}, params(W1))
    stub.add_response("lookup_events", {"Events": []}, params(W2))

    report = await run(cfg, inventory([A1]), stubs)
    stubs.done()

    assert (report.lookup_windows, report.events_in, report.central_objects) == (2, 0, 0)
    assert cursor(cfg) == NOW
    assert central_objects() == {}


async def test_a_failing_pair_stops_neither_the_others_nor_the_trail_sources(
    central: None, tmp_path: Path, stubs: Stubs
) -> None:
    cfg = settings(tmp_path)
    start_at(cfg, NOW - 1800, A1, A2)
    src = make_source("org-trail", A3, org_id=ORG)
    client("s3").put_object(
        Bucket="org-trail",
        Key=log_key(src.prefix, A3, R, "20240501T1100Z", "T3"),
        Body=log_object([record("from-trail", A3)]),
    )
    bad = await stubs.add(A1)
    bad.add_client_error(
        "lookup_events", service_error_code="AccessDeniedException", http_status_code=400
    )
    good = await stubs.add(A2)
    good.add_response("lookup_events", page([ev(7, A2, minute=40)]), params(W2))

    report = await run(cfg, inventory([A1, A2, A3], [src]), stubs)
    stubs.done()

    assert report.errors == 1
    assert archived_ids() == ["from-trail", f"lk-{A2}-7"]
    assert cursor(cfg, A1) == NOW - 1800
    assert cursor(cfg, A2) == NOW
    state = State(cfg.state.path)
    try:
        rows = {r.source_id: r for r in state.sources.status()}
    finally:
        state.close()
    assert "AccessDeniedException" in (rows[f"LookupEvents/lookup/{A1}/{R}/"].last_error or "")
    assert rows[f"LookupEvents/lookup/{A2}/{R}/"].last_error is None


async def test_stop_stops_new_windows(central: None, tmp_path: Path, stubs: Stubs) -> None:
    """A SIGTERM stop after the first window: the window being read is not committed and no
    new one starts; the next run reads it again."""
    cfg = settings(tmp_path)
    start_at(cfg, NOW - 3600)
    stub = await stubs.add(A1)
    stub.add_response("lookup_events", page([ev(1, minute=5)]), params(W1))
    stub.add_response("lookup_events", page([ev(2, minute=40)]), params(W2))
    state = State(cfg.state.path)
    try:
        ing = ingestor(cfg, state, stubs)
        stubs.on_call = lambda n: ing.stop.set() if n == 2 else None
        report = await ing.run(inventory([A1]))
    finally:
        state.close()
    stubs.done()
    assert report.stopped
    assert report.lookup_windows == 1
    assert archived_ids() == [f"lk-{A1}-1"]
    assert cursor(cfg) == W1[1]


class CountingSessions(StsSessions):
    """StsSessions whose sessions count the HTTP sends of LookupEvents."""

    def __init__(self) -> None:
        super().__init__()
        self.sends: list[str] = []

    async def session_for(self, account_id: str | None) -> aioboto3.Session:
        fresh = account_id not in self._cache
        session = await super().session_for(account_id)
        if fresh:

            def count(**kw: Any) -> None:
                self.sends.append(str(account_id))

            session.events.register("before-send.cloudtrail.LookupEvents", count)
        return session


async def test_default_client_is_the_accounts_and_does_not_retry_behind_the_bucket(
    central: None, tmp_path: Path
) -> None:
    """Without a test factory the pair is read with its account's session, a cloudtrail client
    in its region (moto answers 500: it has no lookup_events). botocore does not retry on its
    own (that would bypass the 2 TPS bucket): one HTTP send. The failure stays with the pair."""
    cfg = settings(tmp_path)
    start_at(cfg, NOW - 1800)
    src = make_source("org-trail", A3, org_id=ORG)
    client("s3").put_object(
        Bucket="org-trail",
        Key=log_key(src.prefix, A3, R, "20240501T1100Z", "T3"),
        Body=log_object([record("from-trail", A3)]),
    )
    sessions = CountingSessions()
    state = State(cfg.state.path)
    try:
        ing = Ingestor(cfg, state, sessions, Aws(cfg.aws), clock=lambda: NOW)
        report = await ing.run(inventory([A1, A3], [src]))
    finally:
        state.close()
    assert A1 in sessions.calls
    assert sessions.sends == [A1]
    assert (report.lookup_requests, report.errors) == (1, 1)
    assert archived_ids() == ["from-trail"]
    assert cursor(cfg) == NOW - 1800


async def test_old_lookup_days_are_compacted_like_trail_days(
    central: None, tmp_path: Path, stubs: Stubs
) -> None:
    """Windows are recorded under per-day prefixes of their pair; days older than the re-list
    window are closed after a clean pass, so state stays bounded."""
    cfg = settings(tmp_path, window_secs=86400)
    start_at(cfg, NOW - 3 * 86400)
    stub = await stubs.add(A1)
    for _ in range(3):  # starts 04-27 23:55, 04-28 23:55, 04-29 23:55
        stub.add_response("lookup_events", page([]))

    report = await run(cfg, inventory([A1]), stubs)
    stubs.done()

    assert report.lookup_windows == 3
    state = State(cfg.state.path)
    try:
        source_id = f"LookupEvents/lookup/{A1}/{R}/"
        assert state.checkpoints.closed_days(source_id) == {
            "2024-04-27",
            "2024-04-28",
            "2024-04-29",
        }
        assert state.conn.execute(
            "SELECT count(*) FROM objects WHERE bucket='LookupEvents'"
        ).fetchone() == (0,)
        names = state.checkpoints.handled_keys("LookupEvents", f"lookup/{A1}/{R}/20240428")
    finally:
        state.close()
    # the compacted day still names its window
    assert names == {f"lookup/{A1}/{R}/20240428T235500Z-20240430T000000Z"}


async def test_a_first_run_that_dies_reads_the_same_window_later(
    central: None, tmp_path: Path, stubs: Stubs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No cursor yet: the start is pinned before reading, so a rerun days later still begins
    with the window that was written but not committed (same key, no second copy)."""
    cfg = settings(tmp_path, window_secs=86400, backfill_days=1)
    first = (NOW - 12 * 3600 - 86400 - 300, NOW - 12 * 3600)  # 04-29 23:55 - 05-01 00:00
    stub = await stubs.add(A1)
    stub.add_response("lookup_events", page([ev(1), ev(2)]), params(first))

    written = await run_dying_before_commit(cfg, stubs, monkeypatch)
    assert len(written) == 1

    stubs.clock.t += 2 * 86400
    stub.add_response("lookup_events", page([ev(1), ev(2)]), params(first))
    stub.add_response("lookup_events", page([]))
    stub.add_response("lookup_events", page([]))
    report = await run(cfg, inventory([A1]), stubs)
    stubs.done()
    assert report.lookup_windows == 3
    assert central_objects() == written
    assert archived_ids() == [f"lk-{A1}-1", f"lk-{A1}-2"]


async def test_file_gone_from_the_bucket_is_filled_from_lookup_events(
    central: None, tmp_path: Path, stubs: Stubs
) -> None:
    """Completeness queued a file the digests list; the bucket no longer has it. The next
    cycle reads that hour from LookupEvents: new events are archived, one already archived from
    another file is not repeated, and the key counts as handled (the queue empties)."""

    cfg = settings(tmp_path)
    src = make_source("org-trail", A1, org_id=ORG)
    kept = ev(1, minute=10)
    client("s3").put_object(
        Bucket="org-trail",
        Key=log_key(src.prefix, A1, R, "20240501T1015Z", "Kept"),
        Body=log_object([kept]),
    )
    gone = log_key(src.prefix, A1, R, "20240501T1100Z", "Gone")
    state = State(cfg.state.path)
    state.retry.queue([("org-trail", gone, src.source_id, "listed by digest, not ingested")])
    state.close()
    lost = [ev(2, minute=40), ev(3, minute=50)]
    end = datetime(2024, 5, 1, 11, 0, tzinfo=UTC).timestamp()
    stub = await stubs.add(A1)
    stub.add_response("lookup_events", page([kept, *lost]), params((end - 3600, end + 300)))

    report = await run(cfg, inventory([A1], [src]), stubs)

    stubs.done()
    assert report.gaps_filled == 1
    assert report.errors == 0
    assert archived_ids() == sorted(r["eventID"] for r in [kept, *lost])
    state = State(cfg.state.path)
    try:
        assert state.retry.items() == []
        assert gone in state.checkpoints.handled_keys("org-trail", gone.rsplit("/", 1)[0] + "/")
    finally:
        state.close()


async def test_gap_fill_off_leaves_the_file_queued(
    central: None, tmp_path: Path, stubs: Stubs
) -> None:
    """With gap_fill off nothing is read and the key stays queued (completeness keeps saying
    it is missing)."""

    cfg = settings(tmp_path, gap_fill=False)
    src = make_source("org-trail", A1, org_id=ORG)
    gone = log_key(src.prefix, A1, R, "20240501T1100Z", "Gone")
    state = State(cfg.state.path)
    state.retry.queue([("org-trail", gone, src.source_id, "missing")])
    state.close()

    report = await run(cfg, inventory([A1], [src]), stubs)

    assert report.gaps_filled == 0
    assert stubs.calls == []
    state = State(cfg.state.path)
    try:
        assert [i.key for i in state.retry.items()] == [gone]
    finally:
        state.close()
