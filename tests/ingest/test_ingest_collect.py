"""Reading source objects: anything the decode and key path cannot handle is a bad object
(quarantined with a reason, issue 19), and a GET whose body breaks off is read again within
the cycle."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path
from typing import Any

import pytest
from archivecheck import assert_exactly_once
from awsfixtures import StsSessions, client, log_key, log_object, make_source, record
from fakes.faultproxy import Fault, FaultProxy, is_get_object

from aggregator.aws.clients import Aws
from aggregator.aws.inventory import Account, Inventory, Source
from aggregator.config import Settings, parse_settings
from aggregator.ingest.collect import BadObject, decode_log
from aggregator.ingest.cycle import Ingestor
from aggregator.ingest.work import CycleReport
from aggregator.state import State

A1 = "111111111111"
NOW = 1714564800.0  # 2024-05-01T12:00:00Z
LIMITS = {"max_object_bytes": 1 << 29, "max_record_bytes": 1 << 20}


def nested(levels: int) -> bytes:
    """One record whose requestParameters nests ``levels`` lists deep."""
    inner = b"[" * levels + b"]" * levels
    return b'{"Records":[{"eventID":"deep","requestParameters":' + inner + b"}]}"


@pytest.mark.parametrize(
    ("levels", "reason"),
    [(254, "cannot be keyed"), (300, "cannot be keyed"), (1100, "invalid JSON")],
)
def test_deeply_nested_record_is_a_bad_object(levels: int, reason: str) -> None:
    """orjson parses 1024 levels but serializes 254: a record in between used to raise
    TypeError (not a bad object) and failed its object every cycle."""
    with pytest.raises(BadObject, match=reason):
        decode_log(gzip.compress(nested(levels)), **LIMITS)


def test_nesting_orjson_can_serialize_is_kept() -> None:
    got = decode_log(gzip.compress(nested(250)), **LIMITS)
    assert len(got.keys) == 1


def settings(tmp_path: Path, endpoint: str | None = None) -> Settings:
    aws: dict[str, Any] = {"max_attempts": 2}
    if endpoint:
        aws["endpoint_url"] = endpoint
    return parse_settings(
        {
            "state": {"path": str(tmp_path / "state.db")},
            "archive": {"bucket": "central"},
            "collect": {"max_concurrency": 4},
            "aws": aws,
        }
    )


def cycle(cfg: Settings, src: Source) -> CycleReport:
    async def go() -> CycleReport:
        state = State(cfg.state.path)
        try:
            inv = Inventory([Account(A1)], {A1: ["us-east-1"]}, [], [src], [])
            ing = Ingestor(cfg, state, StsSessions(), Aws(cfg.aws), clock=lambda: NOW)
            return await ing.run(inv)
        finally:
            state.close()

    return asyncio.run(go())


@pytest.fixture
def trail(moto: str) -> Source:
    client("s3").create_bucket(Bucket="central")
    client("s3").create_bucket(Bucket="org-trail")
    return make_source("org-trail", A1, org_id="o-abcdefghij")


def test_poison_objects_are_quarantined_and_the_cycle_goes_on(
    trail: Source, tmp_path: Path
) -> None:
    """254-, 300- and 1,100-level nesting: each object quarantined with its reason, the good
    object archived, the cycle clean (exit 0), the stream's old days compacted."""
    s3 = client("s3")
    bad = {}
    for i, levels in enumerate((254, 300, 1100)):
        key = log_key(trail.prefix, A1, "us-east-1", f"2024042{i}T1000Z", f"N{levels}")
        s3.put_object(Bucket="org-trail", Key=key, Body=gzip.compress(nested(levels)))
        bad[key] = levels
    good = [record("good-1", A1, time="2024-04-20T10:00:00Z")]
    s3.put_object(
        Bucket="org-trail",
        Key=log_key(trail.prefix, A1, "us-east-1", "20240420T1005Z", "Good"),
        Body=log_object(good),
    )
    cfg = settings(tmp_path)

    report = cycle(cfg, trail)
    again = cycle(cfg, trail)

    assert (report.quarantined, report.errors, again.errors, again.objects) == (3, 0, 0, 0)
    assert_exactly_once(good)
    state = State(cfg.state.path, read_only=True)
    try:
        reasons = {q.key: q.reason for q in state.quarantine.rows()}
        closed = state.db.count("prefixes", "closed=1")
    finally:
        state.close()
    assert set(reasons) == set(bad)
    assert all(("cannot be keyed" in r) or ("invalid JSON" in r) for r in reasons.values())
    assert closed == 3  # the days of the poison objects were compacted


@pytest.mark.parametrize("kind", ["truncate", "reset"])
def test_a_get_whose_body_breaks_off_is_read_again_within_the_cycle(
    trail: Source, tmp_path: Path, kind: str
) -> None:
    """Every GET of a source object is cut short once (a truncated body with its true
    Content-Length, or a reset mid-body): one cycle still archives everything, no error, no
    good object quarantined."""
    planted = []
    for i in range(5):
        recs = [record(f"e{i}-{j}", A1, time=f"2024-05-01T0{i}:0{j}:00Z") for j in range(50)]
        client("s3").put_object(
            Bucket="org-trail",
            Key=log_key(trail.prefix, A1, "us-east-1", f"20240501T0{i}05Z", f"K{i}"),
            Body=log_object(recs),
        )
        planted.extend(recs)
    get = is_get_object("/org-trail/")
    with FaultProxy(trail_endpoint(), [Fault(kind, get)]) as proxy:
        # every first GET of each object breaks off: the fault fires on every other request
        proxy.faults[0].match = first_of_each(get)
        report = cycle(settings(tmp_path, proxy.url), trail)
        assert proxy.injected[kind] == 5

    assert (report.errors, report.quarantined, report.objects) == (0, 0, 5)
    assert_exactly_once(planted)


def trail_endpoint() -> str:
    import os

    return os.environ["AWS_ENDPOINT_URL"]


def first_of_each(match: Any) -> Any:
    seen: set[str] = set()

    def once(method: str, path: str) -> bool:
        if not match(method, path) or path in seen:
            return False
        seen.add(path)
        return True

    return once
