"""Judge "exactly once" from outside: list the central bucket and decode every object.

Never the ledger or the state: the archive is what Athena, a trail-bucket reader or a
restore sees. Events are counted by eventID (planted events have unique ones) and by content
(the record minus delivery metadata, sorted keys), so a copy re-encoded in another key order
still counts as the same event.
"""

from __future__ import annotations

import gzip
from collections import Counter
from typing import Any

import boto3
import orjson

from aggregator.ingest.dedupe import DELIVERY_METADATA


def central_bodies(bucket: str = "central", prefix: str = "AWSLogs/") -> dict[str, bytes]:
    """Every object under ``prefix`` of ``bucket`` (current versions), by key."""
    s3 = boto3.client("s3", region_name="us-east-1")
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", ()):
            out[obj["Key"]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def decode(body: bytes) -> list[dict[str, Any]]:
    data = gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body
    records: list[dict[str, Any]] = orjson.loads(data)["Records"]
    return records


def content(record: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {k: v for k, v in record.items() if k not in DELIVERY_METADATA}, option=orjson.OPT_SORT_KEYS
    )


def archived(bucket: str = "central") -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for body in central_bodies(bucket).values():
        events.extend(decode(body))
    return events


def assert_exactly_once(planted: list[dict[str, Any]], bucket: str = "central") -> None:
    """Every planted event is in the central bucket exactly once, and nothing else is."""
    events = archived(bucket)
    by_id = Counter(str(e.get("eventID")) for e in events)
    dup = {k: n for k, n in by_id.items() if n > 1}
    assert not dup, f"archived more than once: {sorted(dup.items())[:10]}"
    want = Counter(str(e["eventID"]) for e in planted)
    missing = sorted(set(want) - set(by_id))
    extra = sorted(set(by_id) - set(want))
    assert not missing, f"{len(missing)} planted event(s) missing: {missing[:10]}"
    assert not extra, f"{len(extra)} unexpected event(s): {extra[:10]}"
    by_content = Counter(content(e) for e in events)
    assert max(by_content.values(), default=1) == 1
    assert set(by_content) == {content(e) for e in planted}
