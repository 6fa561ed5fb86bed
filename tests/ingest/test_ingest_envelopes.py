"""Every input shape yields its records; digests are recognised and never events."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from aggregator.archive.codec import maybe_gunzip
from aggregator.ingest.envelopes import Kind, Parsed, Problem, iter_items, iter_records


def kinds(data: bytes) -> list[str]:
    return [i.kind.value if isinstance(i, Parsed) else "problem" for i in iter_items(data)]


def test_shapes() -> None:
    rec = {
        "eventVersion": "1.08",
        "eventName": "X",
        "eventTime": "2024-01-01T00:00:00Z",
        "eventID": "1",
    }
    eb = {"detail-type": "AWS API Call via CloudTrail", "detail": rec, "source": "aws.ec2"}
    assert kinds(json.dumps(rec).encode()) == ["record"]
    assert kinds(json.dumps({"Records": [rec, rec]}).encode()) == ["log_file", "log_file"]
    assert kinds(gzip.compress(json.dumps({"Records": [rec]}).encode())) == ["log_file"]
    assert kinds(json.dumps(eb).encode()) == ["eventbridge"]
    assert kinds(b"\n".join(json.dumps(x).encode() for x in (rec, eb))) == ["record", "eventbridge"]
    assert kinds(json.dumps([rec, eb]).encode()) == ["record", "eventbridge"]
    insight = dict(rec, eventType="AwsCloudTrailInsight")
    assert kinds(json.dumps(insight).encode()) == ["insight"]


def test_bad_parts_are_problems_and_good_parts_survive() -> None:
    rec = {"eventName": "X", "eventTime": "t", "eventID": "1"}
    data = json.dumps(rec).encode() + b"\n{not json\n" + json.dumps({"hello": 1}).encode()
    items = list(iter_items(data, "f.json"))
    assert isinstance(items[0], Parsed)
    assert isinstance(items[1], Problem)
    assert items[1].where == "f.json:2"
    assert isinstance(items[2], Problem)
    (bad_gzip,) = iter_items(b"\x1f\x8bnot gzip", "g.gz")
    assert isinstance(bad_gzip, Problem)
    assert bad_gzip.reason.startswith("bad gzip")


def test_digest_examples_are_recognised_not_events(testdata: Path) -> None:
    lines = (
        (testdata / "awsdocs/aws-cloudtrail-user-guide/digest_examples.jsonl")
        .read_text()
        .splitlines()
    )
    for line in lines:
        doc = json.loads(line)
        body = doc["json"]
        data = json.dumps(body).encode()
        assert kinds(data) == ["digest"]
        assert list(iter_records(data)) == []


def test_multi_member_gzip() -> None:
    data = gzip.compress(b'{"a":') + gzip.compress(b"1}")
    assert maybe_gunzip(data) == b'{"a":1}'


def test_every_shared_record_file_parses(testdata: Path) -> None:
    """No shared test file produces an exception; most produce records."""
    total = 0
    for path in sorted(testdata.rglob("*")):
        if (
            path.suffix in (".json", ".gz", ".ndjson")
            and path.is_file()
            and "ocsf" not in path.name
        ):
            for item in iter_items(path.read_bytes(), str(path)):
                total += isinstance(item, Parsed) and item.kind is not Kind.DIGEST
    assert total > 300


def test_gunzip_checked_tells_clean_gzip_from_padded() -> None:
    from aggregator.archive.codec import gunzip_checked

    one = gzip.compress(b'{"a":1}')
    assert gunzip_checked(one) == (b'{"a":1}', True)
    assert gunzip_checked(one + gzip.compress(b"2")) == (b'{"a":1}2', True)
    assert gunzip_checked(one + b"\0" * 8) == (b'{"a":1}', False)
    assert gunzip_checked(b'{"a":1}') == (b'{"a":1}', False)  # not gzip: nothing to pass on


def test_concatenated_documents_each_with_its_starting_line() -> None:
    """Documents one after another are each classified, named by the line they start on;
    a broken one among NDJSON lines is still reported per line."""
    from aggregator.ingest.envelopes import Parsed, Problem, iter_records

    rec = {"eventVersion": "1.08", "eventTime": "2024-05-01T10:00:00Z", "eventName": "X",
           "eventSource": "s3.amazonaws.com", "eventID": "1"}  # fmt: skip
    data = (json.dumps(rec, indent=2) + "\n" + json.dumps({"Records": [rec]}, indent=1)).encode()
    items = list(iter_records(data, "in"))
    assert [type(i) for i in items] == [Parsed, Parsed]
    assert items[0].where == "in:1"
    assert items[1].where.startswith(f"in:{json.dumps(rec, indent=2).count(chr(10)) + 2}")

    mixed = (json.dumps(rec) + "\n{oops\n" + json.dumps(rec)).encode()
    got = list(iter_records(mixed, "m"))
    assert [type(i) for i in got] == [Parsed, Problem, Parsed]
    assert got[1].where == "m:2"
