"""The reconcile store: rows by central-key range from the ledger, archive_known and
central_intents; repairs in place (a ledger row keeps its id), deletions, adoption with the
event keys in the dedupe window."""

from __future__ import annotations

from pathlib import Path

from aggregator.state import State
from aggregator.state.reconcile import KNOWN, LEDGER, Adopted, ReconcileRows

DAY = "AWSLogs/111111111111/CloudTrail/us-east-1/2024/05/01/"
NEXT = "AWSLogs/111111111111/CloudTrail/us-east-1/2024/05/02/"


def ledger_row(state: State, key: str, region: str = "us-east-1") -> None:
    state.conn.execute(
        "INSERT INTO ledger (central_key, source_bucket, source_key, account_id, region, events, "
        "bytes, sha256, written_at, etag) VALUES (?, 'b', 'k', '111111111111', ?, 3, "
        "30, 'aa', 0, '\"e1\"')",
        (key, region),
    )


def adopted(key: str) -> Adopted:
    return Adopted(
        key,
        "111111111111",
        "eu-west-1",
        "CloudTrail",
        "20240501",
        '"e"',
        "bb",
        9,
        2,
        "2024-05-01T00:00:00Z",
        "2024-05-01T00:01:00Z",
    )


def test_rows_by_range_and_repairs(tmp_path: Path) -> None:
    state = State(tmp_path / "s.db")
    rows = ReconcileRows(state.db)
    ledger_row(state, DAY + "a.json.gz")
    ledger_row(state, NEXT + "b.json.gz")
    ledger_row(state, "AWSLogs/111111111111/CloudTrail/us-east-2/2024/05/01/c.json.gz", "us-east-2")
    rows.adopt(adopted(DAY + "k.json.gz"), [b"\x01" * 16, b"\x02" * 16])
    state.conn.execute(
        "INSERT INTO central_intents VALUES (?, 's', 'b', 'k', '111111111111', 'us-east-1', 0)",
        (DAY + "i.json.gz",),
    )

    one_day = rows.known(DAY, DAY[:-1] + "0")
    two_days = rows.known(DAY, NEXT[:-1] + "0")

    assert sorted(one_day) == [DAY + "a.json.gz", DAY + "k.json.gz"]
    assert sorted(two_days) == [DAY + "a.json.gz", DAY + "k.json.gz", NEXT + "b.json.gz"]
    a = one_day[DAY + "a.json.gz"]
    assert (a.table, a.etag, a.events) == (LEDGER, '"e1"', 3)
    assert a.ledger_id is not None
    assert one_day[DAY + "k.json.gz"].table == KNOWN
    assert rows.intents(DAY, DAY[:-1] + "0") == {DAY + "i.json.gz"}
    assert rows.in_flight(DAY + "i.json.gz")
    assert not rows.in_flight(DAY + "a.json.gz")
    assert rows.account_regions() == {
        ("111111111111", "us-east-1"),
        ("111111111111", "us-east-2"),
        ("111111111111", "eu-west-1"),
    }
    assert state.window.known([b"\x01" * 16, b"\x03" * 16]) == {b"\x01" * 16}

    rows.rewritten(
        a, sha256="cc", size=20, events=2, etag='"e2"', first_event_time="t1", last_event_time="t2"
    )
    after = rows.row(DAY + "a.json.gz")
    assert after is not None
    assert (after.sha256, after.bytes, after.events, after.etag) == ("cc", 20, 2, '"e2"')
    assert after.ledger_id == a.ledger_id  # in place: forwarders' positions stay valid
    rows.removed(after)
    rows.removed(one_day[DAY + "k.json.gz"])
    assert rows.known(DAY, DAY[:-1] + "0") == {}
    state.close()


def test_a_state_before_migration_60_reads_as_empty(tmp_path: Path) -> None:
    """Read-only beside an older schema: no archive_known or intents, ledger rows without ETag."""
    state = State(tmp_path / "s.db")
    ledger_row(state, DAY + "a.json.gz")
    state.conn.executescript(
        "DROP TABLE archive_known; DROP TABLE central_intents; ALTER TABLE ledger DROP COLUMN etag"
    )
    state.close()
    ro = State(tmp_path / "s.db", read_only=True)
    rows = ReconcileRows(ro.db)
    try:
        got = rows.known(DAY, DAY[:-1] + "0")
        assert list(got) == [DAY + "a.json.gz"]
        assert got[DAY + "a.json.gz"].etag is None
        assert rows.intents(DAY, DAY[:-1] + "0") == set()
        assert rows.account_regions() == {("111111111111", "us-east-1")}
    finally:
        ro.close()
