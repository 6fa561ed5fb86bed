"""Per source progress: log objects and digests are counted apart, and the last object is a
log object (digests arrive last in an hour and used to hide it)."""

from __future__ import annotations

from pathlib import Path

from aggregator.state import CentralObject, ObjectOutcome, SourceRef, State

SRC = SourceRef(
    "b/AWSLogs/111111111111/CloudTrail/us-east-1/",
    "111111111111",
    "us-east-1",
    "b",
    "AWSLogs/111111111111/CloudTrail/us-east-1/",
)
DAY = "AWSLogs/111111111111/CloudTrail/us-east-1/2024/05/01/"
DIGEST_DAY = "AWSLogs/111111111111/CloudTrail-Digest/us-east-1/2024/05/01/"


def log(i: int) -> ObjectOutcome:
    central = CentralObject(f"c/{i}", 10, "00", 3, "2024-05-01T10:00:00Z", "2024-05-01T10:00:0Z")
    return ObjectOutcome(
        SRC,
        f"{DAY}111111111111_CloudTrail_us-east-1_20240501T100{i}Z_x.json.gz",
        DAY,
        "log",
        None,
        10,
        events_in=3,
        central=central,
        newest_event_time=f"2024-05-01T10:0{i}:00Z",
    )


def digest(i: int) -> ObjectOutcome:
    key = (
        f"{DIGEST_DAY}111111111111_CloudTrail-Digest_us-east-1_t_us-east-1_20240501T1{i}00Z.json.gz"
    )
    return ObjectOutcome(SRC, key, DIGEST_DAY, "digest", None, 5)


def test_digests_are_counted_apart_and_last_object_is_a_log(tmp_path: Path) -> None:
    state = State(tmp_path / "s.db")
    try:
        state.commit_object(log(1))
        state.commit_object(log(2))
        state.commit_object(digest(1))
        state.commit_object(ObjectOutcome(SRC, f"{DAY}README", DAY, "other", None, 1))

        (row,) = state.sources.status()
    finally:
        state.close()
    assert (row.objects, row.digests, row.events) == (2, 1, 6)
    assert row.last_key == log(2).key
    assert row.newest_event_time == "2024-05-01T10:02:00Z"
