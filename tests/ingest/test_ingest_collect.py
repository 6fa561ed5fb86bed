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
from fakes.faultproxy import Fault, FaultProxy, any_request, is_get_object, method_is

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


# ---------------------------------------------------------------- bad input stays small (issue 13)

REAL = [
    "trailscraper/111111111111_CloudTrail_eu-central-1_20171211T1505Z_A6kvhMoVeCsc7v8U.json",
    "awsdocs/aws-cloudtrail-user-guide/log_file_examples/cloudtrail-log-file-examples_block2.json",
    "awsdocs/aws-cloudtrail-user-guide/log_file_examples/cloudtrail-log-file-examples_block4.json",
    "awsdocs/aws-kms-developer-guide/log_file_examples/ct-ec2two_block0.json",
]
GOOD_DOC = b'{"Records":[{"eventID":"g1","eventTime":"2024-05-01T00:00:00Z","eventName":"X"}]}'
GOOD = gzip.compress(GOOD_DOC)
BOMB_BYTES = 1 << 30


def real_objects() -> list[bytes]:
    from conftest import TESTDATA

    return [gzip.compress((TESTDATA / p).read_bytes()) for p in REAL]


def bomb(size: int = BOMB_BYTES) -> bytes:
    """gzip of ``size`` zero bytes, built streaming (1 MiB at a time: ~1 MB out, 1 GiB in)."""
    from isal import isal_zlib

    c = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    out = [c.compress(zeros) for _ in range(size >> 20)]
    out.append(c.flush())
    return b"".join(out)


BAD_INPUTS: dict[str, tuple[bytes, str]] = {
    "corrupt gzip": (GOOD[:12] + bytes(b ^ 0xFF for b in GOOD[12:24]) + GOOD[24:], "corrupt gzip"),
    "truncated gzip": (GOOD[:-6], "corrupt gzip: truncated"),
    "two whole documents in two gzip members": (GOOD + GOOD, "invalid JSON"),
    "non-JSON": (gzip.compress(b"<html>503</html>"), "invalid JSON"),
    "JSON without Records": (gzip.compress(b'{"Events":[]}'), "'Records' list"),
    "JSON not an object": (gzip.compress(b"[1, 2]"), "the document is a list"),
    "Records not a list": (gzip.compress(b'{"Records":{"eventID":"x"}}'), "'Records' is a dict"),
    "records not objects": (gzip.compress(b'{"Records":[{"eventID":"a"},7]}'), "not an object"),
    "10k-level nesting": (
        gzip.compress(b'{"Records":[{"eventID":"d","x":' + b"[" * 10_000 + b"]" * 10_000 + b"}]}"),
        "invalid JSON: depth limit",
    ),
    "invalid UTF-8": (gzip.compress(b'{"Records":[{"eventID":"\xff\xfe"}]}'), "not valid UTF-8"),
    "zero bytes": (b"", "empty object"),
    "gzip of nothing": (gzip.compress(b""), "invalid JSON"),
    "NUL bytes": (b"\x00" * 64, "invalid JSON"),
    "trailing garbage after gzip": (GOOD + b"garbage", "trailing garbage"),
    "trailing garbage after JSON": (gzip.compress(GOOD_DOC + b" xx"), "invalid JSON"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_each_kind_of_bad_input_is_a_bad_object_with_its_reason(name: str) -> None:
    """Every shape of bad input raises BadObject (the quarantine path), never anything else."""
    data, reason = BAD_INPUTS[name]

    with pytest.raises(BadObject, match=reason):
        decode_log(data, **LIMITS)


def test_a_document_split_over_gzip_members_is_read_whole() -> None:
    """Concatenated gzip whose members hold parts of one document is valid gzip (all members
    are read), and it is not passed on verbatim (the bytes differ from one clean member)."""
    half = len(GOOD_DOC) // 2
    data = gzip.compress(GOOD_DOC[:half]) + gzip.compress(GOOD_DOC[half:])

    got = decode_log(data, **LIMITS)

    assert len(got.keys) == 1
    assert b'"g1"' in got.record_bytes(0)


def test_a_gzip_bomb_is_refused_by_the_size_bound_while_decompressing() -> None:
    data = bomb(64 << 20)
    assert len(data) < 1 << 20

    with pytest.raises(BadObject, match="too large: decompressed size exceeds"):
        decode_log(data, max_object_bytes=8 << 20, max_record_bytes=1 << 20)


RSS_SLACK_BYTES = 96 << 20  # interpreter, orjson, the compressed bomb, allocator slack

_BOMB_CHILD = """
import sys
sys.path.insert(0, sys.argv[2])
from test_ingest_collect import bomb
from aggregator.config import parse_settings
from aggregator.ingest.collect import BadObject, decode_log
cfg = parse_settings({"archive": {"bucket": "central"}}).collect
data = bomb(int(sys.argv[1]))
try:
    decode_log(data, max_object_bytes=cfg.max_object_bytes, max_record_bytes=cfg.max_record_bytes)
    print("decoded")
except BadObject as exc:
    print(exc)
# VmHWM, not ru_maxrss: Linux carries a parent's peak RSS over fork and exec into ru_maxrss
hwm = next(x for x in open("/proc/self/status") if x.startswith("VmHWM:")).split()[1]
print(cfg.max_object_bytes, int(hwm) * 1024)
"""


def test_a_1_gib_gzip_bomb_stays_within_the_memory_bound() -> None:
    """The stated bound (docs/operations.md): peak RSS while refusing a gzip bomb is at most
    ``collect.max_object_bytes`` (default 512 MiB) plus 96 MiB, never the bomb's 1 GiB. Measured
    in a child process (its VmHWM) with the default settings."""
    import subprocess
    import sys

    here = str(Path(__file__).parent)
    tests = str(Path(__file__).parent.parent)
    out = subprocess.run(
        [sys.executable, "-c", _BOMB_CHILD, str(BOMB_BYTES), here],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**__import__("os").environ, "PYTHONPATH": tests},
    ).stdout.splitlines()

    assert "too large: decompressed size exceeds" in out[0]
    cap, peak = (int(x) for x in out[1].split())
    assert cap == 512 << 20
    assert peak <= cap + RSS_SLACK_BYTES, f"peak RSS {peak >> 20} MiB"
    assert peak < BOMB_BYTES


def mutate(data: bytes, rng: Any) -> bytes:
    """1-8 random byte edits: flip, overwrite, insert, delete, or cut the tail."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(5)
        i = rng.randrange(len(buf)) if buf else 0
        if op == 0 and buf:
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[i] = rng.randrange(256)
        elif op == 2:
            buf.insert(i, rng.randrange(256))
        elif op == 3 and buf:
            del buf[i]
        elif buf:
            del buf[i:]
    return bytes(buf)


def test_a_thousand_byte_mutated_real_objects_decode_or_are_bad_objects() -> None:
    """1,200 seeded mutations of real CloudTrail log files (gzip and plain JSON): each either
    decodes into keyed records or raises BadObject; nothing else escapes, nothing hangs."""
    import random
    import time

    rng = random.Random(13)
    sources = real_objects()
    sources += [gzip.decompress(s) for s in sources]  # mutate the JSON too, not only gzip
    decoded = bad = 0
    reasons: set[str] = set()
    started = time.monotonic()
    for n in range(1200):
        data = mutate(sources[n % len(sources)], rng)
        try:
            got = decode_log(data, **LIMITS)
        except BadObject as exc:
            reasons.add(str(exc).split(":")[0])
            bad += 1
        else:
            assert len(got.keys) == len(got.contents) == len(got.times) == len(got.heads)
            decoded += 1
    elapsed = time.monotonic() - started

    assert decoded + bad == 1200
    assert "" not in reasons  # every bad object says why
    assert bad > 600, (decoded, bad)  # most mutations of gzip break its CRC or its JSON
    assert decoded > 0, (decoded, bad)  # some edits keep valid JSON (inside a string, say)
    assert elapsed < 20


def test_bad_input_end_to_end_is_quarantined_and_good_records_archived_once(
    trail: Source, tmp_path: Path
) -> None:
    """Through moto: every bad shape, 40 mutated real objects that do not decode and a 1 GiB
    bomb (with a 64 MiB object bound) are quarantined with their reason; the good objects beside
    them are archived exactly once; a second cycle repeats nothing."""
    import random

    s3 = client("s3")
    rng = random.Random(1313)
    bad: dict[str, str] = {}
    n = 0

    def plant(body: bytes) -> str:
        nonlocal n
        n += 1
        key = log_key(
            trail.prefix, A1, "us-east-1", f"20240501T{n // 60:02d}{n % 60:02d}Z", f"B{n}"
        )
        s3.put_object(Bucket="org-trail", Key=key, Body=body)
        return key

    for data, reason in BAD_INPUTS.values():
        bad[plant(data)] = reason.split(":")[0]
    sources = real_objects()
    mutants = 0
    while mutants < 40:
        data = mutate(sources[mutants % len(sources)], rng)
        try:
            decode_log(data, **LIMITS)
        except BadObject as exc:
            bad[plant(data)] = str(exc).split(":")[0]
            mutants += 1
    bad[plant(bomb())] = "too large"
    good = []
    for i in range(3):
        recs = [record(f"ok{i}-{j}", A1, time=f"2024-05-01T1{i}:0{j}:00Z") for j in range(5)]
        s3.put_object(
            Bucket="org-trail",
            Key=log_key(trail.prefix, A1, "us-east-1", f"20240501T1{i}05Z", f"G{i}"),
            Body=log_object(recs),
        )
        good.extend(recs)
    cfg = settings(tmp_path)
    cfg = cfg.model_copy(
        update={"collect": cfg.collect.model_copy(update={"max_object_bytes": 64 << 20})}
    )

    report = cycle(cfg, trail)
    again = cycle(cfg, trail)

    assert (report.quarantined, report.errors, report.objects) == (len(bad), 0, 3)
    assert (again.quarantined, again.errors, again.objects) == (0, 0, 0)
    assert_exactly_once(good)
    state = State(cfg.state.path, read_only=True)
    try:
        reasons = {q.key: q.reason for q in state.quarantine.rows()}
    finally:
        state.close()
    assert set(reasons) == set(bad)
    wrong = {k: (reasons[k], want) for k, want in bad.items() if want not in reasons[k]}
    assert not wrong, wrong


# ------------------------------------------------------- faults as S3 gives them (issue 13)

FAULTS: dict[str, list[Fault]] = {
    "500 before the store, source GET": [
        Fault("error_before", is_get_object("/org-trail/"), rate=0.5, times=8)
    ],
    "500 before the store, central PUT": [
        Fault("error_before", method_is("PUT", "/central/"), rate=0.5, times=8)
    ],
    "500 after the central PUT was stored": [
        Fault("error_after", method_is("PUT", "/central/"), rate=0.5, times=8)
    ],
    "503 SlowDown": [Fault("slowdown", any_request("/"), rate=0.3, times=8)],
    # the writer marker's PUT outlasts the retries: the cycle fails before anything is
    # written and the next one starts over
    "503 SlowDown on the writer marker": [
        Fault("slowdown", method_is("PUT", "/central/_ctagg/writer"), rate=1.0, times=3)
    ],
    "reset mid-body": [Fault("reset", is_get_object("/org-trail/"), rate=0.5, times=20)],
    "truncated body, true Content-Length": [
        Fault("truncate", is_get_object("/org-trail/"), rate=0.5, times=20)
    ],
    "multi-second delays": [Fault("delay", any_request("/"), times=2, delay_secs=2.0)],
}


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_every_s3_fault_converges_to_each_event_archived_once(
    trail: Source, tmp_path: Path, name: str
) -> None:
    """Through the fault proxy in front of moto (``aws.max_attempts`` 2, so faults also outlast
    botocore's retries and fail objects for a cycle): within a few cycles every planted event is
    in the central bucket once, nothing lost, nothing duplicated (a PUT that was stored but
    answered 500 is rewritten to the same key), no good object quarantined."""
    planted = []
    for i in range(8):
        recs = [record(f"f{i}-{j}", A1, time=f"2024-05-01T0{i}:{j:02d}:00Z") for j in range(20)]
        client("s3").put_object(
            Bucket="org-trail",
            Key=log_key(trail.prefix, A1, "us-east-1", f"20240501T0{i}05Z", f"F{i}"),
            Body=log_object(recs),
        )
        planted.extend(recs)
    # an overlapping account-trail copy of some events: the dedupe path under faults too
    client("s3").put_object(
        Bucket="org-trail",
        Key=log_key(trail.prefix, A1, "us-east-1", "20240501T0905Z", "Dup"),
        Body=log_object(planted[5:25]),
    )
    faults = [Fault(**{**f.__dict__, "seen": 0, "fired": 0}) for f in FAULTS[name]]

    with FaultProxy(trail_endpoint(), faults, seed=13) as proxy:
        cfg = settings(tmp_path, proxy.url)
        reports = [cycle(cfg, trail)]
        while reports[-1].errors and len(reports) < 8:
            reports.append(cycle(cfg, trail))
        fired = sum(proxy.injected.values())

    assert fired > 0, "the fault never fired: the test proves nothing"
    assert reports[-1].errors == 0, [r.errors for r in reports]
    assert sum(r.quarantined for r in reports) == 0
    assert sum(r.objects for r in reports) == 9
    assert_exactly_once(planted)
    state = State(cfg.state.path, read_only=True)
    try:
        assert state.quarantine.rows() == []
    finally:
        state.close()
