"""The ingest cycle against moto's S3 over real HTTP: exactly-once archive, late keys,
crash safety, quarantine, per-account isolation, bounded state."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from archivecheck import central_bodies
from awsfixtures import StsSessions, client, log_key, log_object, make_source, record

from aggregator.aws.clients import Aws
from aggregator.aws.inventory import Account, AccountFailure, Inventory, Source
from aggregator.config import Settings, parse_settings
from aggregator.ingest.cycle import Ingestor
from aggregator.state import State

A1, A2, A3 = "111111111111", "222222222222", "333333333333"
ORG = "o-abcdefghij"
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC).timestamp()


def settings(tmp_path: Path, **collect: Any) -> Settings:
    return parse_settings(
        {
            "state": {"path": str(tmp_path / "state.db")},
            "archive": {"bucket": "central"},
            "collect": {"max_concurrency": 4, "relist_days": 2, **collect},
        }
    )


def inventory(*sources: Source, failures: tuple[AccountFailure, ...] = ()) -> Inventory:
    accounts = sorted({s.account_id for s in sources})
    return Inventory(
        accounts=[Account(a) for a in accounts],
        regions={a: ["us-east-1"] for a in accounts},
        trails=[],
        sources=list(sources),
        failures=list(failures),
    )


async def run(cfg: Settings, inv: Inventory, sessions: StsSessions | None = None, **kw: Any) -> Any:
    state = State(cfg.state.path)
    try:
        ing = Ingestor(cfg, state, sessions or StsSessions(), Aws(cfg.aws), clock=lambda: NOW, **kw)
        return await ing.run(inv)
    finally:
        state.close()


def central_objects() -> dict[str, bytes]:
    return central_bodies()


def archived_events() -> list[dict[str, Any]]:
    events = []
    for body in central_objects().values():
        events.extend(json.loads(gzip.decompress(body))["Records"])
    return events


@pytest.fixture
def buckets(moto: str) -> None:
    client("s3").create_bucket(Bucket="central")
    client("s3").create_bucket(Bucket="org-trail")  # organization trail, management account
    client("s3", A1).create_bucket(Bucket="a1-trail")  # account trail inside A1


def put(bucket: str, key: str, body: bytes, account: str | None = None) -> None:
    client("s3", account).put_object(Bucket=bucket, Key=key, Body=body)


async def test_org_trail_and_account_trail_overlap_archive_each_event_once(
    buckets: None, tmp_path: Path
) -> None:
    """The same events delivered by an organization trail and an account trail land once."""
    recs = [record(f"ev-{i}", A1, time=f"2024-05-01T10:{i:02d}:00Z") for i in range(10)]
    org_src = make_source("org-trail", A1, org_id=ORG)
    acct_src = make_source("a1-trail", A1, reader=A1)
    put(
        "org-trail",
        log_key(org_src.prefix, A1, "us-east-1", "20240501T1010Z", "Org1"),
        log_object(recs),
    )
    put(
        "a1-trail",
        log_key(acct_src.prefix, A1, "us-east-1", "20240501T1010Z", "Acc1"),
        log_object([*recs[3:], record("only-account", A1)]),
        A1,
    )

    report = await run(settings(tmp_path), inventory(org_src, acct_src))

    events = archived_events()
    assert sorted(e["eventID"] for e in events) == sorted(
        [f"ev-{i}" for i in range(10)] + ["only-account"]
    )
    assert report.events_in == 18
    assert report.duplicates == 7
    assert report.events_archived == 11


async def test_whole_new_objects_are_archived_as_delivered_partial_ones_re_encoded(
    buckets: None, tmp_path: Path
) -> None:
    """Every record new and clean gzip: the central object is the source object byte for byte.
    Some records already archived: only the new ones are written, re-encoded (sorted keys,
    delivery metadata first). Zero-padded gzip is accepted but always re-encoded."""
    cfg = settings(tmp_path)
    recs = [record(f"v{i}", A1, time=f"2024-05-01T10:{i:02d}:00Z") for i in range(5)]
    org_src = make_source("org-trail", A1, org_id=ORG)
    acct_src = make_source("a1-trail", A1, reader=A1)
    whole = log_object(recs)
    put("org-trail", log_key(org_src.prefix, A1, "us-east-1", "20240501T1005Z", "W"), whole)
    await run(cfg, inventory(org_src))
    assert list(central_objects().values()) == [whole]

    extra = record("v-new", A1, time="2024-05-01T10:06:00Z", eventCategory="Management")
    put(
        "a1-trail",
        log_key(acct_src.prefix, A1, "us-east-1", "20240501T1010Z", "P"),
        log_object([*recs[2:], extra]),
        A1,
    )
    padded = log_object([record("pad", A1, time="2024-05-01T10:07:00Z")]) + b"\0" * 16
    put("org-trail", log_key(org_src.prefix, A1, "us-east-1", "20240501T1010Z", "Z"), padded)
    report = await run(cfg, inventory(org_src, acct_src))

    assert report.duplicates == 3
    bodies = [b for b in central_objects().values() if b != whole]
    assert len(bodies) == 2
    texts = sorted(gzip.decompress(b) for b in bodies)
    assert [json.loads(t)["Records"][0]["eventID"] for t in texts] == ["pad", "v-new"]
    assert padded not in bodies  # re-encoded, padding gone
    partial = json.loads(texts[1])["Records"]
    assert len(partial) == 1
    assert list(partial[0])[:2] == ["eventVersion", "eventCategory"]
    rest = list(partial[0])[2:]
    assert rest == sorted(rest)


async def test_keys_follow_cloudtrail_layout_and_are_deterministic(
    buckets: None, tmp_path: Path
) -> None:
    """Central keys use the standard CloudTrail layout and derive from the source object."""
    src = make_source("org-trail", A2, org_id=ORG)
    key = log_key(src.prefix, A2, "us-east-1", "20240501T0905Z", "X1")
    put("org-trail", key, log_object([record("e1", A2)]))

    await run(settings(tmp_path), inventory(src))

    (ckey,) = central_objects()
    assert ckey.startswith(
        f"AWSLogs/{A2}/CloudTrail/us-east-1/2024/05/01/{A2}_CloudTrail_us-east-1_20240501T0905Z_"
    )
    assert ckey.endswith(".json.gz")
    head = client("s3").head_object(Bucket="central", Key=ckey)
    assert head["ContentType"] == "application/json"


async def test_late_arriving_older_key_is_picked_up(buckets: None, tmp_path: Path) -> None:
    """A key that sorts before already-handled keys (late delivery) is still collected."""
    cfg = settings(tmp_path)
    src = make_source("org-trail", A1, org_id=ORG)
    put(
        "org-trail",
        log_key(src.prefix, A1, "us-east-1", "20240501T1100Z", "B"),
        log_object([record("late-1", A1)]),
    )
    first = await run(cfg, inventory(src))
    assert first.events_archived == 1

    put(
        "org-trail",
        log_key(src.prefix, A1, "us-east-1", "20240501T0800Z", "A"),
        log_object([record("late-0", A1)]),
    )
    second = await run(cfg, inventory(src))

    assert second.objects == 1
    assert sorted(e["eventID"] for e in archived_events()) == ["late-0", "late-1"]


async def test_second_cycle_repeats_nothing(buckets: None, tmp_path: Path) -> None:
    """A restart loses nothing and repeats nothing: the next cycle finds no new object."""
    cfg = settings(tmp_path)
    src = make_source("org-trail", A1, org_id=ORG)
    for h in range(3):
        put(
            "org-trail",
            log_key(src.prefix, A1, "us-east-1", f"20240501T0{h}00Z", f"K{h}"),
            log_object([record(f"e{h}-{i}", A1) for i in range(5)]),
        )
    await run(cfg, inventory(src))
    before = central_objects()

    again = await run(cfg, inventory(src))

    assert again.objects == 0
    assert central_objects() == before


class Crash(BaseException):
    """Stands in for the process dying (not an Exception: nothing may catch it)."""


async def test_crash_between_write_and_commit_rewrites_identical_object(
    buckets: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after the central write but before the commit: the rerun writes the same key with
    byte-identical content and the ledger holds one row."""
    cfg = settings(tmp_path)
    src = make_source("org-trail", A1, org_id=ORG)
    put(
        "org-trail",
        log_key(src.prefix, A1, "us-east-1", "20240501T1000Z", "C"),
        log_object([record(f"c{i}", A1) for i in range(50)]),
    )

    def crash(self: State, outcome: Any) -> None:
        raise Crash

    monkeypatch.setattr(State, "commit_object", crash)
    with pytest.raises(Crash):
        await run(cfg, inventory(src))
    first = central_objects()
    assert len(first) == 1
    monkeypatch.undo()

    await run(cfg, inventory(src))

    assert central_objects() == first
    state = State(cfg.state.path)
    try:
        assert state.count("ledger") == 1
        assert state.count("dedupe") == 50
    finally:
        state.close()


async def test_corrupt_objects_are_quarantined_and_the_rest_goes_on(
    buckets: None, tmp_path: Path
) -> None:
    """Corrupt gzip, invalid JSON, no Records, a huge record: each quarantined with its reason,
    skipped next cycle, retried after retry-quarantined; good objects archived."""
    cfg = settings(tmp_path, max_record_bytes=4096)
    src = make_source("org-trail", A1, org_id=ORG)
    p = src.prefix
    bad = {
        log_key(p, A1, "us-east-1", "20240501T0100Z", "Gz"): b"\x1f\x8b\x08\x00garbage",
        log_key(p, A1, "us-east-1", "20240501T0200Z", "Js"): gzip.compress(b'{"Records": [ nope'),
        log_key(p, A1, "us-east-1", "20240501T0300Z", "Nr"): gzip.compress(b'{"Events": []}'),
        log_key(p, A1, "us-east-1", "20240501T0400Z", "Hg"): log_object(
            [record("huge", A1, requestParameters={"blob": "x" * 10_000})]
        ),
    }
    for k, body in bad.items():
        put("org-trail", k, body)
    put(
        "org-trail",
        log_key(p, A1, "us-east-1", "20240501T0500Z", "Ok"),
        log_object([record("good", A1)]),
    )

    report = await run(cfg, inventory(src))

    assert report.quarantined == 4
    assert [e["eventID"] for e in archived_events()] == ["good"]
    state = State(cfg.state.path)
    try:
        reasons = {q.key: q.reason for q in state.quarantine.rows()}
        assert set(reasons) == set(bad)
        assert "corrupt gzip" in reasons[next(k for k in bad if k.endswith("Gz.json.gz"))]
        assert "invalid JSON" in reasons[next(k for k in bad if k.endswith("Js.json.gz"))]
        assert "Records" in reasons[next(k for k in bad if k.endswith("Nr.json.gz"))]
        assert "max_record_bytes" in reasons[next(k for k in bad if k.endswith("Hg.json.gz"))]
    finally:
        state.close()

    skipped = await run(cfg, inventory(src))
    assert skipped.objects == 0
    assert skipped.quarantined == 0

    fixed_key = next(k for k in bad if k.endswith("Js.json.gz"))
    put("org-trail", fixed_key, log_object([record("fixed", A1)]))
    state = State(cfg.state.path)
    assert state.quarantine.retry() == 4
    state.close()
    retried = await run(cfg, inventory(src))

    assert retried.objects == 1
    assert retried.quarantined == 3
    assert sorted(e["eventID"] for e in archived_events()) == ["fixed", "good"]


async def test_one_denied_account_does_not_stop_the_others(buckets: None, tmp_path: Path) -> None:
    """A role that cannot be assumed in one account is recorded once; other accounts archive."""
    cfg = settings(tmp_path)
    client("s3", A3).create_bucket(Bucket="a3-trail")
    ok = make_source("org-trail", A2, org_id=ORG)
    denied = make_source("a3-trail", A3, reader=A3)
    put(
        "org-trail",
        log_key(ok.prefix, A2, "us-east-1", "20240501T1000Z", "OK"),
        log_object([record("a2", A2)]),
    )
    put(
        "a3-trail",
        log_key(denied.prefix, A3, "us-east-1", "20240501T1000Z", "NO"),
        log_object([record("a3", A3)]),
        A3,
    )
    sessions = StsSessions(deny=[A3])

    report = await run(cfg, inventory(ok, denied), sessions)
    await run(cfg, inventory(ok, denied), sessions)

    assert report.failed_accounts == 1
    assert [e["eventID"] for e in archived_events()] == ["a2"]
    state = State(cfg.state.path)
    try:
        (failure,) = state.failures.rows()
        assert failure["account_id"] == A3
        assert failure["count"] == 2
        assert "AccessDenied" in failure["reason"]
    finally:
        state.close()


async def test_inventory_failures_are_recorded(buckets: None, tmp_path: Path) -> None:
    """Failures found by discovery are counted per account and stage."""
    cfg = settings(tmp_path)
    inv = inventory(failures=(AccountFailure(A3, "assume_role", "AccessDenied: nope"),))
    report = await run(cfg, inv)
    assert report.failed_accounts == 1


async def test_old_day_prefixes_are_compacted_but_remembered(buckets: None, tmp_path: Path) -> None:
    """Day prefixes older than the re-list window are closed: no key rows, names kept compact,
    and never listed again."""
    cfg = settings(tmp_path)
    src = make_source("org-trail", A1, org_id=ORG)
    old_keys = [
        log_key(src.prefix, A1, "us-east-1", f"202404{d:02d}T1000Z", f"D{d}") for d in (10, 11, 12)
    ]
    for i, k in enumerate(old_keys):
        put("org-trail", k, log_object([record(f"old{i}", A1, time=f"2024-04-1{i}T10:00:00Z")]))
    new_key = log_key(src.prefix, A1, "us-east-1", "20240501T1000Z", "N")
    put("org-trail", new_key, log_object([record("new", A1)]))

    await run(cfg, inventory(src))

    state = State(cfg.state.path)
    try:
        assert state.count("objects") == 1  # only today's prefix keeps key rows
        closed = state.conn.execute("SELECT count(*) FROM prefixes WHERE closed=1").fetchone()[0]
        assert closed == 3
        for k in old_keys:
            assert k in state.checkpoints.handled_keys("org-trail", k.rsplit("/", 1)[0] + "/")
    finally:
        state.close()
    # A file dropped into a closed prefix is not listed again (completeness catches those).
    put(
        "org-trail",
        log_key(src.prefix, A1, "us-east-1", "20240410T2300Z", "Z"),
        log_object([record("x", A1)]),
    )
    again = await run(cfg, inventory(src))
    assert again.objects == 0


async def test_backfill_days_limits_first_sight(buckets: None, tmp_path: Path) -> None:
    """On first sight only day prefixes inside backfill_days are read."""
    cfg = settings(tmp_path, backfill_days=5)
    src = make_source("org-trail", A1, org_id=ORG)
    put(
        "org-trail",
        log_key(src.prefix, A1, "us-east-1", "20240101T1000Z", "Old"),
        log_object([record("jan", A1)]),
    )
    put(
        "org-trail",
        log_key(src.prefix, A1, "us-east-1", "20240428T1000Z", "Rec"),
        log_object([record("apr", A1)]),
    )

    await run(cfg, inventory(src))

    assert [e["eventID"] for e in archived_events()] == ["apr"]


async def test_digest_and_other_objects_are_classified_not_archived(
    buckets: None, tmp_path: Path
) -> None:
    """Digest files are recorded as seen, never archived as events; Insights are archived in
    the CloudTrail-Insight layout."""
    cfg = settings(tmp_path)
    src = make_source("org-trail", A1, org_id=ORG)
    base = f"AWSLogs/{ORG}/{A1}"
    digest_key = (
        f"{base}/CloudTrail-Digest/us-east-1/2024/05/01/"
        f"{A1}_CloudTrail-Digest_us-east-1_trail_us-east-1_20240501T1000Z.json.gz"
    )
    put("org-trail", digest_key, gzip.compress(b'{"digestStartTime": "x", "logFiles": []}'))
    insight_key = (
        f"{base}/CloudTrail-Insight/us-east-1/2024/05/01/"
        f"{A1}_CloudTrail-Insight_us-east-1_20240501T1000Z_In.json.gz"
    )
    put(
        "org-trail",
        insight_key,
        log_object([record("ins-1", A1, eventType="AwsCloudTrailInsight")]),
    )

    report = await run(cfg, inventory(src))

    assert report.by_kind == {"digest": 1, "insight": 1}
    (ckey,) = central_objects()
    assert f"AWSLogs/{A1}/CloudTrail-Insight/us-east-1/2024/05/01/" in ckey


async def test_sse_kms_is_requested_when_configured(buckets: None, tmp_path: Path) -> None:
    """archive.kms_key_id writes central objects with SSE-KMS and that key."""
    key_arn = client("kms").create_key()["KeyMetadata"]["Arn"]
    cfg = parse_settings(
        {
            "state": {"path": str(tmp_path / "s.db")},
            "archive": {"bucket": "central", "kms_key_id": key_arn},
        }
    )
    src = make_source("org-trail", A1, org_id=ORG)
    put(
        "org-trail",
        log_key(src.prefix, A1, "us-east-1", "20240501T1000Z", "K"),
        log_object([record("k", A1)]),
    )

    await run(cfg, inventory(src))

    (ckey,) = central_objects()
    head = client("s3").head_object(Bucket="central", Key=ckey)
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"] == key_arn
