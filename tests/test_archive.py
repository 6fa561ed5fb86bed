"""Central key layout and deterministic bytes."""

from __future__ import annotations

import gzip

import orjson
import pytest

from aggregator.archive import (
    KeyParts,
    central_key,
    decode_records,
    encode_records,
    object_id,
    parse_source_name,
)
from aggregator.collect import BadObject, ObjectKind, classify, decode_log, stream_prefixes


def test_parse_real_source_name() -> None:
    """The trailscraper sample's real object name parses into account, region and time."""
    parts = parse_source_name(
        "AWSLogs/111111111111/CloudTrail/eu-central-1/2017/12/11/"
        "111111111111_CloudTrail_eu-central-1_20171211T1505Z_A6kvhMoVeCsc7v8U.json.gz"
    )
    assert parts == KeyParts("111111111111", "eu-central-1", "20171211T1505Z", False)
    assert parse_source_name("AWSLogs/x/ConfigWritabilityCheckFile") is None


def test_central_key_is_standard_layout_and_depends_only_on_source() -> None:
    parts = KeyParts("111111111111", "us-east-1", "20240501T0905Z", False)
    k1 = central_key(
        "", parts, "org-bucket", "AWSLogs/o-1/111111111111/CloudTrail/us-east-1/x.json.gz"
    )
    k2 = central_key(
        "", parts, "org-bucket", "AWSLogs/o-1/111111111111/CloudTrail/us-east-1/x.json.gz"
    )
    k3 = central_key(
        "", parts, "acct-bucket", "AWSLogs/o-1/111111111111/CloudTrail/us-east-1/x.json.gz"
    )
    assert k1 == k2 != k3
    assert k1.startswith(
        "AWSLogs/111111111111/CloudTrail/us-east-1/2024/05/01/111111111111_CloudTrail_us-east-1_20240501T0905Z_"
    )
    assert parse_source_name(k1) == parts
    assert len(object_id("b", "k")) == 16


def test_encoding_is_deterministic_and_round_trips() -> None:
    recs = [{"eventID": str(i), "n": i} for i in range(100)]
    parts = [orjson.dumps(r) for r in recs]
    a = encode_records(parts, 1)
    assert a == encode_records(parts, 1)
    assert gzip.decompress(a).startswith(b'{"Records":[')
    assert decode_records(a) == recs


def test_classify_and_streams() -> None:
    base = "AWSLogs/o-abc/111111111111/CloudTrail/us-east-1/"
    assert stream_prefixes(base) == [
        base,
        "AWSLogs/o-abc/111111111111/CloudTrail-Insight/us-east-1/",
        "AWSLogs/o-abc/111111111111/CloudTrail-Digest/us-east-1/",
    ]
    assert (
        classify(base + "2024/01/01/111111111111_CloudTrail_us-east-1_20240101T0000Z_a.json.gz")
        is ObjectKind.LOG
    )
    assert (
        classify("AWSLogs/1/CloudTrail-Digest/us-east-1/2024/01/01/1_CloudTrail-Digest_x.json.gz")
        is ObjectKind.DIGEST
    )
    assert (
        classify("AWSLogs/1/CloudTrail-Insight/us-east-1/2024/01/01/1_CloudTrail-Insight_x.json.gz")
        is ObjectKind.INSIGHT
    )
    assert classify(base + "ConfigWritabilityCheckFile") is ObjectKind.OTHER


def test_decode_log_rejects_gzip_bomb() -> None:
    bomb = gzip.compress(b'{"Records":[' + b" " * 5_000_000 + b"]}")
    with pytest.raises(BadObject, match="too large"):
        decode_log(bomb, max_object_bytes=1_000_000, max_record_bytes=1024)


def test_decode_real_trailscraper_object(testdata) -> None:  # type: ignore[no-untyped-def]
    """A real CloudTrail object (gzip, as delivered) decodes with one key per record."""
    path = next((testdata / "trailscraper").glob("*.json.gz"))
    decoded = decode_log(path.read_bytes(), max_object_bytes=1 << 20, max_record_bytes=1 << 20)
    assert len(decoded.keys) == 2
    assert len(set(decoded.keys)) == 2
