"""Event keys: equal for two deliveries of one event, different for different events."""

from __future__ import annotations

import json
from pathlib import Path

from aggregator.ingest.dedupe import event_epoch, event_key, record_key_text


def test_same_event_from_two_trails_has_one_key() -> None:
    rec = {
        "eventID": "e1",
        "recipientAccountId": "1" * 12,
        "awsRegion": "us-east-1",
        "eventTime": "2024-01-01T00:00:00Z",
        "eventName": "X",
        "eventSource": "s",
    }
    reordered = dict(reversed(list(rec.items())))
    assert event_key(rec) == event_key(reordered)


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


def test_delivery_metadata_does_not_split_one_event() -> None:
    """Format revisions and shipper fields are not part of an event's identity."""
    rec = {
        "eventID": "e1",
        "eventTime": "2024-01-01T00:00:00Z",
        "eventName": "X",
        "eventVersion": "1.08",
        "recipientAccountId": "1" * 12,
    }
    assert event_key(rec) == event_key(
        dict(rec, eventVersion="1.10", eventCategory="Management", **{"@timestamp": "now"})
    )
    assert event_key(rec) != event_key(dict(rec, userIdentity={"type": "Root"}))


def test_panther_cases_sharing_an_event_id_stay_distinct(testdata: Path) -> None:
    """Labelled cases that keep an eventID but change what happened get different keys."""
    by_id: dict[str, set[bytes]] = {}
    contents: dict[str, set[str]] = {}
    for line in (testdata / "panther-analysis/detection_cases.jsonl").read_text().splitlines():
        rec = json.loads(line)["log"]
        if isinstance(rec, dict) and rec.get("eventID"):
            eid = str(rec["eventID"])
            by_id.setdefault(eid, set()).add(event_key(rec))
            stripped = {k: v for k, v in rec.items() if k not in ("eventVersion", "eventCategory")}
            contents.setdefault(eid, set()).add(json.dumps(stripped, sort_keys=True))
    assert any(len(v) > 1 for v in contents.values())
    for eid, variants in contents.items():
        assert len(by_id[eid]) == len(variants)


def test_records_without_event_id_use_content() -> None:
    a = {"eventName": "X", "eventTime": "2024-01-01T00:00:00Z"}
    assert event_key(a) == event_key(dict(a))
    assert event_key(a) != event_key(dict(a, eventName="Y"))
    assert len(record_key_text(a)) == 32


def test_event_epoch() -> None:
    assert event_epoch({"eventTime": "2024-01-01T00:00:00Z"}) == 1704067200
    assert event_epoch({"eventTime": "garbage"}, default=7) == 7
    assert event_epoch({}) == 0


def test_keys_start_with_the_event_hour_and_prune_by_range(tmp_path: Path) -> None:
    """The window is ordered by event time; pruning drops whole hours by key range."""
    from aggregator.ingest.dedupe import event_hour
    from aggregator.state import ObjectOutcome, SourceRef, State
    from aggregator.state.window import hour_floor_key

    assert event_hour("2024-05-01T10:59:59Z") == (2024050110).to_bytes(4, "big")
    assert event_hour("nonsense") == b"\0\0\0\0"
    old = event_key({"eventID": "a", "eventTime": "2024-05-01T09:00:00Z"})
    new = event_key({"eventID": "b", "eventTime": "2024-05-01T10:00:00Z"})
    assert old < new
    state = State(tmp_path / "s.db")
    src = SourceRef("s", "1", "r", "b", "p/")
    state.commit_object(ObjectOutcome(src, "k", "p/", "log", None, 1, new_keys=[old, new]))
    assert state.window.prune(1714557600) == 1  # 2024-05-01T10:00:00Z: the 09h key goes
    assert state.window.known([old, new]) == {new}
    assert hour_floor_key(1714557600) == (2024050110).to_bytes(4, "big")
    state.close()


def test_both_key_paths_agree_on_every_shared_record(testdata: Path) -> None:
    """The ingest path (key_and_bytes, which also serializes) and the read-back path
    (event_key, used for OpenSearch _id and alerts) give the same key for every record."""
    from aggregator.ingest.dedupe import key_and_bytes
    from aggregator.service.demo import load_records

    records = load_records(testdata)
    assert len(records) > 800
    for rec in records:
        before = dict(rec)
        assert event_key(rec) == key_and_bytes(dict(rec))[0]
        assert rec == before  # event_key leaves the record alone


def test_one_files_keys_share_a_prefix_so_they_land_together() -> None:
    """Keys lead with hour, account/region tag and minute: one log file's events (one account
    and region, a few minutes) sort next to each other in the window; other accounts, regions
    and minutes sort apart. The prefix comes from the record, so both trails' copies agree."""
    from aggregator.ingest.dedupe import PREFIX_BYTES, key_prefix

    base = {"recipientAccountId": "1" * 12, "awsRegion": "us-east-1"}
    a = event_key(dict(base, eventID="a", eventTime="2024-05-01T10:07:01Z"))
    b = event_key(dict(base, eventID="b", eventTime="2024-05-01T10:07:59Z"))
    assert a[:PREFIX_BYTES] == b[:PREFIX_BYTES]
    assert a != b
    assert a[:4] == (2024050110).to_bytes(4, "big")
    assert a[6] == 7
    other_region = event_key(
        dict(base, eventID="a", awsRegion="eu-west-1", eventTime="2024-05-01T10:07:01Z")
    )
    other_minute = event_key(dict(base, eventID="a", eventTime="2024-05-01T10:08:01Z"))
    assert a[:6] != other_region[:6]
    assert a[:6] == other_minute[:6]
    assert a[6] != other_minute[6]
    # malformed or hostile times: hour 0, minute 0, no exception
    for bad in ("2024-05-01T10:5\u00b2:00Z", "\u00b2024-05-01T10:00:00Z", 7, None, ""):
        prefix = key_prefix(dict(base, eventTime=bad))
        assert len(prefix) == PREFIX_BYTES
        assert prefix[6] == 0
        if not (isinstance(bad, str) and bad.startswith("2024")):
            assert prefix[:4] == b"\0\0\0\0"
