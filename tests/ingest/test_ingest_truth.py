"""The archive is the truth, the window a cache (issue 13), against moto's S3 over HTTP.

Every test is judged by listing and decoding the central bucket (tests/archivecheck.py),
never by the ledger: a lost, restored or replaced state, a window that forgot, a PUT without
its commit and a spent read-back budget all end with every event archived exactly once.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from archivecheck import archived, assert_exactly_once, central_bodies
from awsfixtures import StsSessions, client, log_key, log_object, make_source, record
from botocore.exceptions import EndpointConnectionError

from aggregator.aws.clients import Aws
from aggregator.aws.inventory import Account, Inventory, Source
from aggregator.config import Settings, parse_settings
from aggregator.ingest.cycle import Ingestor
from aggregator.ingest.resize import MARKER_KEY
from aggregator.state import State

A1 = "111111111111"
ORG = "o-abcdefghij"
NOW = datetime(2024, 5, 3, 12, 0, tzinfo=UTC).timestamp()


def settings(tmp_path: Path, name: str = "state.db", **dedupe: Any) -> Settings:
    return parse_settings(
        {
            "state": {"path": str(tmp_path / name)},
            "archive": {"bucket": "central"},
            "collect": {"max_concurrency": 1, "relist_days": 7},
            "dedupe": dedupe,
        }
    )


def inventory(*sources: Source) -> Inventory:
    return Inventory(
        accounts=[Account(A1)],
        regions={A1: ["us-east-1"]},
        trails=[],
        sources=list(sources),
        failures=[],
    )


async def run(cfg: Settings, *sources: Source, clock: float = NOW) -> Any:
    state = State(cfg.state.path)
    try:
        ing = Ingestor(cfg, state, StsSessions(), Aws(cfg.aws), clock=lambda: clock)
        return await ing.run(inventory(*sources))
    finally:
        state.close()


@pytest.fixture
def buckets(moto: str) -> None:
    client("s3").create_bucket(Bucket="central")
    client("s3").create_bucket(Bucket="org-trail")
    client("s3", A1).create_bucket(Bucket="a1-trail")


ORG_SRC = make_source("org-trail", A1, org_id=ORG)
ACCT_SRC = make_source("a1-trail", A1, reader=A1)


def events(prefix: str, n: int, day: str = "2024-05-01", hour: int = 10) -> list[dict[str, Any]]:
    return [record(f"{prefix}-{i}", A1, time=f"{day}T{hour:02d}:{i:02d}:00Z") for i in range(n)]


def put_org(recs: list[dict[str, Any]], ts: str, rand: str) -> str:
    key = log_key(ORG_SRC.prefix, A1, "us-east-1", ts, rand)
    client("s3").put_object(Bucket="org-trail", Key=key, Body=log_object(recs))
    return key


def put_acct(recs: list[dict[str, Any]], ts: str, rand: str) -> str:
    key = log_key(ACCT_SRC.prefix, A1, "us-east-1", ts, rand)
    client("s3", A1).put_object(Bucket="a1-trail", Key=key, Body=log_object(recs))
    return key


def lose_state(cfg: Settings) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(cfg.state.path + suffix).unlink(missing_ok=True)


def restore_state(cfg: Settings, backup: Path) -> None:
    shutil.copy(backup, cfg.state.path)
    for suffix in ("-wal", "-shm"):
        Path(cfg.state.path + suffix).unlink(missing_ok=True)


def marker() -> dict[str, Any]:
    body = client("s3").get_object(Bucket="central", Key=MARKER_KEY)["Body"].read()
    doc: dict[str, Any] = orjson.loads(body)
    return doc


async def test_a_lost_state_beside_the_archive_duplicates_nothing(
    buckets: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The state file is deleted; the org trail's objects have expired from its bucket; the
    account trail's copies arrive. Every copy is found in the archive, the empty state beside a
    non-empty archive is said, and nothing is archived twice."""
    cfg = settings(tmp_path)
    org = events("o", 20)
    okey = put_org(org, "20240501T1020Z", "Org1")
    await run(cfg, ORG_SRC)
    first = central_bodies()
    assert marker()["generation"] == 1

    lose_state(cfg)
    client("s3").delete_object(Bucket="org-trail", Key=okey)
    late = events("late", 3, hour=11)
    put_acct([*org, *late], "20240501T1125Z", "Acc1")
    report = await run(cfg, ORG_SRC, ACCT_SRC)

    assert report.behind_archive
    assert report.readback_objects == 1
    assert report.duplicates == 20
    assert "state.empty_beside_archive" in capsys.readouterr().err
    assert_exactly_once([*org, *late])
    assert all(central_bodies()[k] == v for k, v in first.items())  # untouched


async def test_a_state_restored_from_an_older_copy_duplicates_nothing(
    buckets: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The state is restored from a copy taken before the objects that followed: the marker's
    generation is newer than the state's, so its days are read back."""
    cfg = settings(tmp_path)
    early = events("e", 5, hour=9)
    put_org(early, "20240501T0910Z", "Org0")
    await run(cfg, ORG_SRC)
    shutil.copy(cfg.state.path, tmp_path / "backup.db")

    later = events("l", 10)
    okey = put_org(later, "20240501T1015Z", "Org1")
    await run(cfg, ORG_SRC)
    assert marker()["generation"] == 2

    restore_state(cfg, tmp_path / "backup.db")
    client("s3").delete_object(Bucket="org-trail", Key=okey)
    put_acct(later, "20240501T1030Z", "Acc1")
    report = await run(cfg, ORG_SRC, ACCT_SRC)

    assert "state.not_latest_writer" in capsys.readouterr().err
    assert report.duplicates == 10
    assert_exactly_once([*early, *later])
    assert marker()["generation"] == 2  # the restored state's own generation, taken over


async def test_events_older_than_the_window_arriving_again_are_found_in_the_archive(
    buckets: None, tmp_path: Path
) -> None:
    """A bucket that was AccessDenied is fixed after retention pruned the window: its copies
    of events the org trail delivered long ago are answered from the archive."""
    cfg = settings(tmp_path)
    old = events("old", 8, day="2024-04-01")
    put_org(old, "20240401T1010Z", "Org1")
    await run(cfg, ORG_SRC, clock=datetime(2024, 4, 1, 12, tzinfo=UTC).timestamp())

    state = State(cfg.state.path)
    try:
        pruned = state.prune_window(NOW - 7 * 86400, cfg.dedupe.readback_lag_days)
    finally:
        state.close()
    assert pruned == 8  # the window forgot them

    put_acct([*old, record("new", A1, time="2024-04-01T10:30:00Z")], "20240401T1035Z", "Acc1")
    report = await run(cfg, ORG_SRC, ACCT_SRC)

    assert report.readback_days >= 1
    assert report.readback_objects == 1
    assert_exactly_once([*old, record("new", A1, time="2024-04-01T10:30:00Z")])


async def test_a_put_whose_commit_failed_is_settled_from_the_archive(
    buckets: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The central PUT of A reached S3, its commit did not; B (sharing half of A's events) is
    committed in the same cycle. At the cycle's end A's central object keeps only what B does
    not hold, and the next cycle leaves the archive as a crash-free run would."""
    cfg = settings(tmp_path)
    a = events("x", 10)
    b = [*a[5:], *events("y", 4, hour=11)]
    put_org(a, "20240501T1010Z", "AAAA")
    put_org(b, "20240501T1110Z", "BBBB")
    failed: list[str] = []
    real = State.commit_object

    def commit_once(self: State, o: Any) -> None:
        if not failed and o.central is not None:
            failed.append(o.key)
            raise OSError("disk gone for a moment")
        real(self, o)

    monkeypatch.setattr(State, "commit_object", commit_once)
    report = await run(cfg, ORG_SRC)
    monkeypatch.setattr(State, "commit_object", real)

    assert len(failed) == 1
    assert "AAAA" in failed[0]
    assert report.intents_settled == 1
    assert_exactly_once([*a, *b[5:]])
    report = await run(cfg, ORG_SRC)  # A again: finds its events archived
    assert report.events_archived == 0
    assert_exactly_once([*a, *b[5:]])
    state = State(cfg.state.path, read_only=True)
    try:
        assert state.count("central_intents") == 0
        assert state.count("ledger") == 2  # the settled object is on the ledger: forwarded
    finally:
        state.close()


async def test_a_spent_read_back_budget_defers_objects_and_never_skips_them(
    buckets: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With a budget of one central object per cycle, a lost state beside three days of archive
    catches up over several cycles: objects wait, nothing is archived unchecked."""
    cfg = settings(tmp_path, readback_max_objects=1)
    planted: list[dict[str, Any]] = []
    for day in (1, 2, 3):
        recs = events(f"d{day}", 4, day=f"2024-05-0{day}")
        planted += recs
        put_org(recs, f"2024050{day}T1010Z", f"Org{day}")
    await run(cfg, ORG_SRC)
    lose_state(cfg)
    for day in (1, 2, 3):
        put_acct(planted[(day - 1) * 4 : day * 4], f"2024050{day}T1020Z", f"Acc{day}")

    reports = [await run(cfg, ORG_SRC, ACCT_SRC) for _ in range(6)]

    assert reports[0].readback_deferred > 0
    assert "ingest.readback_deferred" in capsys.readouterr().err
    assert all(r.readback_objects <= 1 for r in reports)
    assert reports[-1].readback_deferred == 0
    assert_exactly_once(planted)
    state = State(cfg.state.path, read_only=True)
    try:  # every source object handled in the end
        assert state.count("objects") == 6
    finally:
        state.close()


async def test_two_states_taking_turns_on_one_archive_duplicate_nothing(
    buckets: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second state file (a kubectl exec with another path, a replaced volume) writes the same
    archive between two cycles of the first: each sees the marker name the other."""
    one, two = settings(tmp_path, "one.db"), settings(tmp_path, "two.db")
    a = events("a", 6)
    put_org(a, "20240501T1010Z", "Org1")
    await run(one, ORG_SRC)
    put_acct([*a, record("b", A1)], "20240501T1012Z", "Acc1")
    await run(two, ACCT_SRC)
    first_id = marker()["state_id"]
    c = events("c", 3, hour=11)
    put_acct([*a[:2], *c], "20240501T1112Z", "Acc2")
    await run(one, ORG_SRC, ACCT_SRC)

    assert "state.not_latest_writer" in capsys.readouterr().err
    assert marker()["state_id"] != first_id
    assert_exactly_once([*a, record("b", A1), *c])


async def test_an_object_already_in_the_archive_is_extended_not_overwritten(
    buckets: None, tmp_path: Path
) -> None:
    """If-None-Match: a central key that exists though this state never saw it (a foreign
    writer's) keeps its events; the source's new ones are added with If-Match."""
    cfg = settings(tmp_path)
    recs = events("z", 6)
    put_org(recs, "20240501T1010Z", "Org1")
    await run(cfg, ORG_SRC)
    (central_key,) = central_bodies()
    # the archive's object now holds only part of the source (as another writer left it)
    partial = log_object(recs[:3])
    client("s3").put_object(Bucket="central", Key=central_key, Body=partial)
    state = State(cfg.state.path)
    try:  # forget the object and the source, as a state that never saw them
        with state.transaction() as c:
            for table in (
                "ledger",
                "dedupe",
                "objects",
                "prefixes",
                "stream_walks",
                "backfill_days",
                "sources",
            ):
                c.execute(f"DELETE FROM {table}")
    finally:
        state.close()

    report = await run(cfg, ORG_SRC)

    assert report.events_archived == 6  # new to this state's window
    assert_exactly_once(recs)
    assert sorted(e["eventID"] for e in archived()) == sorted(r["eventID"] for r in recs)


class Unreachable:
    """A central bucket that cannot be reached (every request a connection error)."""

    async def fetch(self, key: str) -> Any:
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")


async def test_the_hold_on_the_archive_is_what_the_latest_claim_wrote(
    buckets: None, tmp_path: Path
) -> None:
    """What /readyz reads: ``held`` is the writer marker this process wrote at its latest
    cycle start (the document in the bucket); a transient fault at the next start keeps it
    (nobody else is known to hold it) and says why in ``claim_error``; the next good start
    takes the next generation and clears the error."""
    cfg = settings(tmp_path)
    state = State(cfg.state.path)
    try:
        ing = Ingestor(cfg, state, StsSessions(), Aws(cfg.aws), clock=lambda: NOW)
        truth = ing.writer.truth
        assert truth.held is None
        await ing.run(inventory(ORG_SRC))
        assert truth.held == marker()
        assert truth.held["generation"] == 1
        assert truth.claim_error is None

        with pytest.raises(EndpointConnectionError):
            await truth.begin(Unreachable())  # type: ignore[arg-type]
        assert truth.held == marker()
        assert truth.claim_error is not None
        assert truth.claim_error.startswith("EndpointConnectionError: Could not connect")

        await ing.run(inventory(ORG_SRC))
        assert truth.held == marker()
        assert truth.held["generation"] == 2
        assert truth.claim_error is None
    finally:
        state.close()
