"""``reconcile`` against moto: every kind of finding planted in a real ingested archive is
reported; repair keeps every distinct event (judged by listing and decoding the bucket, never
by the ledger), leaves each event in exactly one object, and a second run finds nothing
repairable."""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from archivecheck import content
from awsfixtures import StsSessions, client, log_key, log_object, make_source, record

from aggregator.archive.codec import decode_records
from aggregator.archive.store import Archive, KeyParts, PreconditionFailed, central_key, opened
from aggregator.aws.clients import Aws
from aggregator.aws.inventory import Account, Inventory
from aggregator.config import Settings, parse_settings
from aggregator.ingest.cycle import Ingestor
from aggregator.ingest.dedupe import event_key
from aggregator.integrity.reconcile import FINDING_KINDS, ReconcileReport, reconcile
from aggregator.state import State

A1 = "111111111111"
USE1, EUW1 = "us-east-1", "eu-west-1"
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC).timestamp()
DAY1, DAY2 = date(2024, 5, 1), date(2024, 5, 2)


def settings(tmp_path: Path) -> Settings:
    return parse_settings(
        {
            "state": {"path": str(tmp_path / "state.db")},
            "archive": {"bucket": "central"},
            "aws": {"max_attempts": 1},
        }
    )


def ckey(region: str, ts: str, source: str) -> str:
    """A central key of the layout, as ingest would derive it from source object ``source``."""
    return central_key("", KeyParts(A1, region, ts, False), "elsewhere", source)


def put(key: str, body: bytes) -> None:
    client("s3").put_object(Bucket="central", Key=key, Body=body)


def body_of(key: str) -> bytes:
    data: bytes = client("s3").get_object(Bucket="central", Key=key)["Body"].read()
    return data


def bucket() -> dict[str, bytes]:
    """Every object of the central bucket, by key."""
    s3 = client("s3")
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="central"):
        for o in page.get("Contents", ()):
            out[o["Key"]] = body_of(o["Key"])
    return out


def events_by_object() -> dict[str, list[dict[str, Any]]]:
    """The decoded records of every central object under AWSLogs/ that decodes."""
    out = {}
    for key, body in bucket().items():
        if not key.startswith("AWSLogs/"):
            continue
        try:
            out[key] = decode_records(body)
        except Exception:  # the planted garbage
            continue
    return out


def copies() -> Counter[bytes]:
    """How many times each distinct event (by content) is in the bucket."""
    return Counter(content(r) for recs in events_by_object().values() for r in recs)


async def ingest(cfg: Settings) -> list[dict[str, Any]]:
    """Four objects in us-east-1 and one in eu-west-1 through the real ingest cycle; returns
    the ledger rows."""
    s3 = client("s3")
    s3.create_bucket(Bucket="central")
    s3.create_bucket(Bucket="trail")
    for region, n in ((USE1, 4), (EUW1, 1)):
        base = f"AWSLogs/{A1}/CloudTrail/{region}/"
        for i in range(n):
            key = log_key(base, A1, region, f"20240501T10{i}5Z", rand=f"R{i}{region}abc")
            recs = [
                record(f"{region}-{i}-{j}", A1, region, time=f"2024-05-01T10:0{i}:0{j}Z")
                for j in range(3)
            ]
            s3.put_object(Bucket="trail", Key=key, Body=log_object(recs))
    inv = Inventory(
        [Account(A1)],
        {A1: [USE1, EUW1]},
        [],
        [make_source("trail", A1, USE1), make_source("trail", A1, EUW1)],
        [],
    )
    state = State(cfg.state.path)
    try:
        rep = await Ingestor(cfg, state, StsSessions(), Aws(cfg.aws), clock=lambda: NOW).run(inv)
        assert rep.central_objects == 5
        return state.ledger.rows()
    finally:
        state.close()


async def run(
    cfg: Settings,
    *,
    repair: bool = False,
    since: date = DAY1,
    until: date = DAY2,
    wrap: Callable[[Archive], Archive] | None = None,
) -> ReconcileReport:
    state = State(cfg.state.path)
    try:
        async with opened(cfg, Aws(cfg.aws), StsSessions()) as archive:
            return await reconcile(
                wrap(archive) if wrap else archive,
                state,
                since=since,
                until=until,
                repair=repair,
                compress_level=cfg.archive.compress_level,
            )
    finally:
        state.close()


def ledger_object(rows: list[dict[str, Any]], region: str, i: int) -> str:
    keys = sorted(r["central_key"] for r in rows if r["region"] == region)
    return keys[i]


def reencode(records: list[dict[str, Any]]) -> bytes:
    return log_object(records)


@pytest.fixture
async def world(moto: str, tmp_path: Path) -> tuple[Settings, dict[str, str]]:
    """A real archive with every kind of finding planted (``names``: what is where)."""
    cfg = settings(tmp_path)
    rows = await ingest(cfg)
    L = [ledger_object(rows, USE1, i) for i in range(4)]
    E = ledger_object(rows, EUW1, 0)
    rec = {k: decode_records(body_of(k)) for k in [*L, E]}
    names = {"L0": L[0], "L1": L[1], "L2": L[2], "L3": L[3], "E": E}
    # an orphan with events of its own (a crash after the PUT, before the commit)
    names["orphan"] = ckey(USE1, "20240501T1100Z", "orphan")
    put(
        names["orphan"],
        reencode([record("orphan-1", A1, time="2024-05-01T11:00:00Z"), record("orphan-2", A1)]),
    )
    # a copy of a ledger object under another key of the layout (all its events are elsewhere)
    names["copy"] = ckey(EUW1, "20240501T1000Z", "copy")
    put(names["copy"], body_of(E))
    # a ledger object deleted, one modified (not through ctagg)
    client("s3").delete_object(Bucket="central", Key=L[1])
    changed = [dict(r) for r in rec[L[2]]]
    changed[0]["sourceIPAddress"] = "203.0.113.66"
    put(L[2], reencode(changed))
    # an event of L3 also in L0, whose ledger row matches its new bytes (two states wrote)
    both = [*rec[L[0]], rec[L[3]][1]]
    put(L[0], reencode(both))
    state = State(cfg.state.path)
    sha = hashlib.sha256(body_of(L[0])).hexdigest()
    state.conn.execute("UPDATE ledger SET sha256=?, events=4 WHERE central_key=?", (sha, L[0]))
    # an unknown object with an event of L3, one of its own twice, and one of its own once
    names["mixed"] = ckey(USE1, "20240501T1030Z", "mixed")
    mine = record("mixed-own", A1, time="2024-05-01T10:30:00Z")
    put(names["mixed"], reencode([rec[L[3]][0], mine, mine, record("mixed-2", A1)]))
    # an object that does not decode; keys outside the layout; ours outside AWSLogs/
    names["garbage"] = ckey(USE1, "20240501T1200Z", "garbage")
    put(names["garbage"], b"\x1f\x8bnot really gzip")
    names["stray_day"] = f"AWSLogs/{A1}/CloudTrail/{USE1}/2024/05/01/notes.txt"
    names["stray_top"] = "AWSLogs/readme.txt"
    names["stray_dir"] = "AWSLogs/o-junk/whatever.json.gz"
    for k in ("stray_day", "stray_top", "stray_dir"):
        put(names[k], b"{}")
    put("_ctagg/doctor-probe", b"probe")
    # a write in flight (an intent): never a finding, never touched
    names["intent"] = ckey(USE1, "20240501T1300Z", "intent")
    put(names["intent"], reencode([record("intent-1", A1, time="2024-05-01T13:00:00Z")]))
    state.conn.execute(
        "INSERT INTO central_intents VALUES (?,?,?,?,?,?,?)",
        (names["intent"], "trail/x", "trail", "x", A1, USE1, time.time()),
    )
    # outside the range: not looked at
    names["old"] = ckey(USE1, "20240420T1000Z", "old")
    put(names["old"], reencode([record("old-1", A1, time="2024-04-20T10:00:00Z")]))
    state.close()
    return cfg, names


async def test_report_finds_every_kind_and_changes_nothing(
    world: tuple[Settings, dict[str, str]],
) -> None:
    """Without --repair: each planted finding is reported with its key, in-flight writes and
    days outside the range are not judged, and neither the bucket nor the state change."""
    cfg, n = world
    before = bucket()
    state = State(cfg.state.path)
    ledger_before = state.ledger.rows()
    state.close()

    rep = await run(cfg)

    assert rep.counts == {
        "unknown_objects": 4,  # orphan, copy, mixed, garbage
        "missing_objects": 1,
        "sha_mismatch": 1,
        # E's 3 events (copy), L3's event in L0, L3's event in mixed, mixed-own twice
        "duplicate_events": 6,
        "outside_layout": 3,
        "unreadable": 1,
    }
    ex = rep.examples
    assert {e["key"] for e in ex["unknown_objects"]} == {
        n["orphan"],
        n["copy"],
        n["mixed"],
        n["garbage"],
    }
    assert [e["key"] for e in ex["missing_objects"]] == [n["L1"]]
    assert [e["key"] for e in ex["sha_mismatch"]] == [n["L2"]]
    assert {e["key"] for e in ex["outside_layout"]} == {
        n["stray_day"],
        n["stray_top"],
        n["stray_dir"],
    }
    assert [e["key"] for e in ex["unreadable"]] == [n["garbage"]]
    dup_objects = {frozenset(e["objects"]) for e in ex["duplicate_events"]}
    assert frozenset({n["E"], n["copy"]}) in dup_objects
    assert frozenset({n["L0"], n["L3"]}) in dup_objects
    assert frozenset({n["mixed"], n["L3"]}) in dup_objects
    assert frozenset({n["mixed"]}) in dup_objects  # twice inside one object
    assert rep.in_flight == 1
    assert rep.found
    assert rep.as_dict()["repaired"] is None
    assert bucket() == before
    state = State(cfg.state.path)
    assert state.ledger.rows() == ledger_before
    state.close()


async def test_a_narrower_range_sees_only_its_days(
    world: tuple[Settings, dict[str, str]],
) -> None:
    """The object of 2024-04-20 is judged only by a range that includes its day."""
    cfg, n = world
    rep = await run(cfg, since=date(2024, 4, 20), until=date(2024, 4, 20))
    assert [e["key"] for e in rep.examples["unknown_objects"]] == [n["old"]]
    # undated strays (outside any YYYY/MM/DD) are findings in every range
    assert {e["key"] for e in rep.examples["outside_layout"]} == {n["stray_top"], n["stray_dir"]}
    assert rep.counts["missing_objects"] == rep.counts["duplicate_events"] == 0


async def test_repair_keeps_every_event_once_and_reports_the_rest(
    world: tuple[Settings, dict[str, str]],
) -> None:
    """--repair: the distinct events of the bucket are the same before and after; after it every
    event is in exactly one (decodable) object; redundant copies went from the non-keepers (the
    lowest ledger id keeps), the unknown objects with events of their own were adopted with
    their keys in the window; missing, modified, unreadable and stray stay reported."""
    cfg, n = world
    before = copies()
    assert max(before.values()) > 1

    rep = await run(cfg, repair=True)

    after = copies()
    assert set(after) == set(before)
    assert set(after.values()) == {1}, [k for k, v in after.items() if v > 1]
    objs = events_by_object()

    def ids(key: str) -> list[str]:
        return [r["eventID"] for r in objs[key]]

    assert n["copy"] not in objs  # every event of it elsewhere: deleted
    assert ids(n["E"]) == ["eu-west-1-0-0", "eu-west-1-0-1", "eu-west-1-0-2"]
    # L3's events 0 and 2 stay in L3 (a ledger object keeps against an unknown one); its event
    # 1, also in L0, stays in whichever has the lower ledger id
    state = State(cfg.state.path)
    row = {r["central_key"]: r for r in state.ledger.rows()}
    l0_keeps = row[n["L0"]]["id"] < row[n["L3"]]["id"]
    l0 = ["us-east-1-0-0", "us-east-1-0-1", "us-east-1-0-2"]
    assert ids(n["L0"]) == ([*l0, "us-east-1-3-1"] if l0_keeps else l0)
    l3 = ["us-east-1-3-0", "us-east-1-3-1", "us-east-1-3-2"]
    assert ids(n["L3"]) == ([l3[0], l3[2]] if l0_keeps else l3)
    assert ids(n["mixed"]) == ["mixed-own", "mixed-2"]  # the copy and the second own one went
    assert ids(n["orphan"]) == ["orphan-1", "orphan-2"]  # untouched, adopted
    assert ids(n["intent"]) == ["intent-1"]
    assert n["garbage"] in bucket()
    assert n["old"] in objs
    assert rep.repaired == {
        "rewritten": 2,
        "deleted": 1,
        "adopted": 2,
        "events_removed": 6,
        "rows_updated": 1,
        "rows_deleted": 0,
    }
    assert rep.skipped == []
    # the rewritten ledger row follows its object in place; adopted objects are known, with
    # their events in the window
    rewritten = n["L3"] if l0_keeps else n["L0"]
    r = row[rewritten]
    assert r["sha256"] == hashlib.sha256(body_of(rewritten)).hexdigest()
    assert r["events"] == len(objs[rewritten])
    assert r["etag"] == client("s3").head_object(Bucket="central", Key=rewritten)["ETag"]
    known = {k: v for k, v in state.conn.execute("SELECT central_key, sha256 FROM archive_known")}
    assert known == {
        n["orphan"]: hashlib.sha256(body_of(n["orphan"])).hexdigest(),
        n["mixed"]: hashlib.sha256(body_of(n["mixed"])).hexdigest(),
    }
    adopted_keys = [event_key(r) for k in ("orphan", "mixed") for r in objs[n[k]]]
    assert state.window.known(adopted_keys) == set(adopted_keys)
    state.close()

    again = await run(cfg, repair=True)

    assert again.counts == {
        "unknown_objects": 1,  # the unreadable one: never judged redundant
        "missing_objects": 1,
        "sha_mismatch": 1,
        "duplicate_events": 0,
        "outside_layout": 3,
        "unreadable": 1,
    }
    assert again.repaired["rewritten"] == again.repaired["deleted"] == 0
    assert copies() == after


async def test_repair_of_repairable_findings_leaves_nothing_to_find(
    moto: str, tmp_path: Path
) -> None:
    """Orphans, copies and duplicates only: after one repair a second reconcile finds nothing,
    and the bucket holds every distinct event exactly once."""
    cfg = settings(tmp_path)
    rows = await ingest(cfg)
    e = ledger_object(rows, EUW1, 0)
    l0 = ledger_object(rows, USE1, 0)
    put(ckey(EUW1, "20240501T1000Z", "copy"), body_of(e))
    put(ckey(USE1, "20240502T0000Z", "copy-next-day"), body_of(l0))  # a day later: same group
    own = record("own", A1, time="2024-05-01T23:59:00Z")
    put(ckey(USE1, "20240501T2355Z", "orphan"), reencode([own, own]))
    before = copies()

    first = await run(cfg, repair=True)
    second = await run(cfg)

    assert first.found
    assert first.counts["unknown_objects"] == 3
    assert first.counts["duplicate_events"] == 3 + 3 + 1
    assert not second.found, second.as_dict()
    after = copies()
    assert set(after) == set(before)
    assert set(after.values()) == {1}


class _Interfering:
    """An Archive whose object ``key`` is changed by someone else just before ctagg writes or
    deletes it (so its If-Match fails)."""

    def __init__(self, inner: Archive, key: str) -> None:
        self._inner = inner
        self.settings = inner.settings
        self.key = key

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def write(self, key: str, body: bytes, **kw: Any) -> Any:
        self._meddle(key)
        return await self._inner.write(key, body, **kw)

    async def delete(self, key: str, **kw: Any) -> None:
        self._meddle(key)
        await self._inner.delete(key, **kw)

    def _meddle(self, key: str) -> None:
        if key == self.key:
            data = body_of(key)
            recs = decode_records(data)
            put(key, reencode([*recs, record("meddled", A1, time="2024-05-01T10:59:00Z")]))


async def test_an_object_changed_meanwhile_is_skipped_and_its_events_stay_elsewhere(
    moto: str, tmp_path: Path
) -> None:
    """A keeper whose own rewrite fails its precondition (it changed meanwhile) is skipped with
    a message, and no other object drops an event it was to keep: the copy stays."""
    cfg = settings(tmp_path)
    rows = await ingest(cfg)
    keeper = min(rows, key=lambda r: r["id"])["central_key"]
    recs = decode_records(body_of(keeper))
    # the keeper needs a repair of its own (an event twice), so it can fail
    put(keeper, reencode([*recs, recs[0]]))
    state = State(cfg.state.path)
    sha = hashlib.sha256(body_of(keeper)).hexdigest()
    state.conn.execute("UPDATE ledger SET sha256=? WHERE central_key=?", (sha, keeper))
    state.close()
    parts = keeper.rsplit("/", 1)[-1].split("_")
    other = ckey(parts[2], parts[3], "holder")
    put(other, reencode([recs[1], record("holder-own", A1)]))

    rep = await run(cfg, repair=True, wrap=lambda a: _Interfering(a, keeper))

    assert len(rep.skipped) == 1
    assert keeper in rep.skipped[0]
    assert "changed since it was read" in rep.skipped[0]
    assert [r["eventID"] for r in decode_records(body_of(other))] == [
        recs[1]["eventID"],
        "holder-own",
    ]  # recs[1]'s keeper failed: this copy stays
    assert decode_records(body_of(keeper))[-1]["eventID"] == "meddled"  # not overwritten


async def test_unconditional_precondition_failure_is_a_skip_not_an_error(
    moto: str, tmp_path: Path
) -> None:
    """A PreconditionFailed from the store itself is reported as a skipped object."""
    cfg = settings(tmp_path)
    await ingest(cfg)
    copy = ckey(USE1, "20240501T1000Z", "copy")
    clean = await run(cfg)
    assert not clean.found
    state = State(cfg.state.path)
    l0 = ledger_object(state.ledger.rows(), USE1, 0)  # the copy's group: us-east-1
    state.close()
    put(copy, body_of(l0))

    class Refusing(_Interfering):
        async def delete(self, key: str, **kw: Any) -> None:
            raise PreconditionFailed(key, "ETag x")

    rep = await run(cfg, repair=True, wrap=lambda a: Refusing(a, ""))

    assert rep.repaired["deleted"] == 0
    assert rep.skipped
    assert copy in rep.skipped[0]
    assert copy in bucket()


async def test_json_summary_is_bounded(moto: str, tmp_path: Path) -> None:
    """Counts are whole; examples are at most EXAMPLES per kind."""
    from aggregator.integrity.reconcile import EXAMPLES

    cfg = settings(tmp_path)
    await ingest(cfg)
    for i in range(EXAMPLES + 5):
        put(f"AWSLogs/{A1}/CloudTrail/{USE1}/2024/05/01/stray-{i:03d}", b"x")

    rep = await run(cfg)

    doc = orjson.loads(orjson.dumps(rep.as_dict()))
    assert doc["counts"]["outside_layout"] == EXAMPLES + 5
    assert len(doc["examples"]["outside_layout"]) == EXAMPLES
    assert set(doc["counts"]) == set(FINDING_KINDS)


async def test_a_failure_deep_in_the_run_is_raised_as_itself(moto: str, tmp_path: Path) -> None:
    """A read that fails inside the concurrent walk surfaces as that error (the CLI maps it to
    its one line and exit code), not as an exception group."""
    cfg = settings(tmp_path)
    await ingest(cfg)

    class Denied(Exception):
        pass

    class Failing(_Interfering):
        async def fetch(self, key: str) -> Any:
            raise Denied(key)

    with pytest.raises(Denied):
        await run(cfg, wrap=lambda a: Failing(a, ""))
