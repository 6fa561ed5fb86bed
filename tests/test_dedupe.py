"""Event keys: equal for two deliveries of one event, different for different events."""

from __future__ import annotations

import json
from pathlib import Path

from aggregator.dedupe import event_epoch, event_key, record_key_text


def test_same_event_from_two_trails_has_one_key() -> None:
    rec = {
        "eventID": "e1",
        "recipientAccountId": "1" * 12,
        "awsRegion": "us-east-1",
        "eventTime": "2024-01-01T00:00:00Z",
        "eventName": "X",
        "eventSource": "s",
    }
    assert event_key(rec) == event_key(dict(rec, userAgent="different order irrelevant"))


def test_shared_event_ids_in_public_samples_stay_distinct(testdata: Path) -> None:
    """The CloudTrail user guide reuses EXAMPLE eventIDs for different events: keys differ."""
    by_id: dict[str, list[dict[str, object]]] = {}
    for line in (
        (testdata / "awsdocs/aws-cloudtrail-user-guide/records.jsonl").read_text().splitlines()
    ):
        rec = json.loads(line)["record"] if "record" in json.loads(line) else json.loads(line)
        if isinstance(rec, dict) and rec.get("eventID"):
            by_id.setdefault(str(rec["eventID"]), []).append(rec)
    shared = {k: v for k, v in by_id.items() if len(v) > 1}
    assert shared, "expected the public samples to reuse an eventID"
    for recs in shared.values():
        distinct = {json.dumps(r, sort_keys=True) for r in recs}
        keys = {event_key(r) for r in recs}
        assert len(keys) == len(distinct)


def test_records_without_event_id_use_content() -> None:
    a = {"eventName": "X", "eventTime": "2024-01-01T00:00:00Z"}
    assert event_key(a) == event_key(dict(a))
    assert event_key(a) != event_key(dict(a, eventName="Y"))
    assert len(record_key_text(a)) == 32


def test_event_epoch() -> None:
    assert event_epoch({"eventTime": "2024-01-01T00:00:00Z"}) == 1704067200
    assert event_epoch({"eventTime": "garbage"}, default=7) == 7
    assert event_epoch({}) == 0
