"""Retention against moto over real HTTP: it deletes exactly the expired central objects, skips
Object Lock protected ones (reported, not errors), deletes nothing when the listing fails,
installs an equivalent lifecycle rule without clobbering others, and prunes the state safely."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aioboto3
import pytest
from awsfixtures import StsSessions, client

from aggregator.archive.retention import RULE_ID, Retention, key_day
from aggregator.aws.clients import Aws
from aggregator.aws.slots import owns
from aggregator.cli.archive import render_retention
from aggregator.config import Settings, ShardSettings, parse_settings
from aggregator.ingest.dedupe import event_hour
from aggregator.service.metrics import Metrics
from aggregator.state import CentralObject, ObjectOutcome, SourceRef, State

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC).timestamp()
A1 = "111111111111"
BUCKET = "central-archive"


def ckey(day: str, n: int = 0, prefix: str = "") -> str:
    y, m, d = day.split("-")
    ts = f"{y}{m}{d}T1200Z"
    return (
        f"{prefix}AWSLogs/{A1}/CloudTrail/us-east-1/{y}/{m}/{d}/"
        f"{A1}_CloudTrail_us-east-1_{ts}_OBJ{n:013d}.json.gz"
    )


def settings(tmp_path: Path, **retention: Any) -> Settings:
    return parse_settings(
        {
            "state": {"path": str(tmp_path / "state.db")},
            "archive": {"bucket": BUCKET},
            "collect": {"backfill_days": 10, "relist_days": 2},
            "retention": {"archive_days": 30, **retention},
        }
    )


def keys_in_bucket() -> set[str]:
    s3 = client("s3")
    out: set[str] = set()
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=BUCKET):
        out.update(v["Key"] for v in page.get("Versions", ()))
    return out


async def run(
    cfg: Settings, *, dry_run: bool = False, sessions: Any = None, **kw: Any
) -> tuple[Any, State]:
    state = State(cfg.state.path)
    ret = Retention(cfg, state, sessions or StsSessions(), Aws(cfg.aws), clock=lambda: NOW, **kw)
    return await ret.run(dry_run=dry_run), state


def test_key_day_reads_only_the_cloudtrail_layout() -> None:
    """Days come from CloudTrail-layout keys (with or without prefix or org id); others: None."""
    assert key_day(ckey("2024-05-01")) == "2024-05-01"
    assert key_day(ckey("2024-05-01", prefix="archive/")) == "2024-05-01"
    org = f"AWSLogs/o-abcdefghij/{A1}/CloudTrail-Insight/eu-west-1/2024/01/31/x.json.gz"
    assert key_day(org) == "2024-01-31"
    assert key_day("AWSLogs/notes/2024/01/01/readme.txt") is None
    assert key_day(f"AWSLogs/{A1}/CloudTrail/us-east-1/2024/01/01/") is None


@pytest.fixture
def plain_bucket(moto: str) -> dict[str, list[str]]:
    s3 = client("s3")
    s3.create_bucket(Bucket=BUCKET)
    expired = [ckey("2024-04-01", 1), ckey("2024-05-01", 2), ckey("2024-05-01", 3)]
    kept = [ckey("2024-05-02", 4), ckey("2024-05-31", 5)]
    foreign = ["AWSLogs/README.txt", "other/2020/01/01/x.json.gz"]
    for k in expired + kept + foreign:
        s3.put_object(Bucket=BUCKET, Key=k, Body=b"{}")
    return {"expired": expired, "kept": kept, "foreign": foreign}


async def test_deletes_exactly_the_expired_objects(
    tmp_path: Path, plain_bucket: dict[str, list[str]]
) -> None:
    """Objects whose key day is older than archive_days go; newer ones and keys outside the
    CloudTrail layout stay; the deletions are logged in the state and counted."""
    m = Metrics()
    report, state = await run(settings(tmp_path), metrics=m)
    assert report.ok, report.errors
    assert report.cutoff_day == "2024-05-02"
    assert sorted(report.deleted) == sorted(plain_bucket["expired"])
    assert keys_in_bucket() == set(plain_bucket["kept"] + plain_bucket["foreign"])
    assert report.foreign == 1  # only AWSLogs/README.txt is under the root
    logged = {r["key"] for r in state.retention_log.rows("deleted")}
    assert logged == set(plain_bucket["expired"])
    assert m.retention_deleted._value.get() == 3
    state.close()


async def test_dry_run_lists_and_changes_nothing(
    tmp_path: Path, plain_bucket: dict[str, list[str]]
) -> None:
    """--dry-run reports the same expired keys and leaves bucket and state untouched."""
    before = keys_in_bucket()
    report, state = await run(settings(tmp_path), dry_run=True)
    assert sorted(report.deleted) == sorted(plain_bucket["expired"])
    assert keys_in_bucket() == before
    assert state.retention_log.rows() == []
    text = render_retention(report)
    assert "would delete: " + plain_bucket["expired"][0] in text
    state.close()


async def test_objects_a_forwarder_still_needs_are_kept(
    tmp_path: Path, plain_bucket: dict[str, list[str]]
) -> None:
    """An expired central object whose ledger row is at or past the slowest cursor stays."""
    cfg = settings(tmp_path)
    state = State(cfg.state.path)
    src = SourceRef("s", A1, "us-east-1", "trail", "AWSLogs/")
    for i, key in enumerate(plain_bucket["expired"]):
        state.commit_object(
            ObjectOutcome(
                src,
                f"src{i}",
                "p/",
                "log",
                None,
                1,
                central=CentralObject(key, 2, "00", 1, None, None),
            )
        )
    ids = {r["central_key"]: r["id"] for r in state.ledger.rows()}
    floor = ids[plain_bucket["expired"][1]]  # objects 1 and 2 not forwarded yet
    state.close()
    report, state = await run(cfg, ledger_floor=lambda: floor)
    assert report.pending_forward == 2
    assert report.deleted == [plain_bucket["expired"][0]]
    assert set(plain_bucket["expired"][1:]) <= keys_in_bucket()
    state.close()


@pytest.fixture
def locked_bucket(moto: str) -> dict[str, Any]:
    s3 = client("s3")
    s3.create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
    until = datetime.now(UTC) + timedelta(days=5)
    k_comp, k_gov, k_hold, k_free, k_new = (ckey("2024-05-01", i) for i in range(5))
    k_new = ckey("2024-05-20", 9)
    s3.put_object(
        Bucket=BUCKET,
        Key=k_comp,
        Body=b"1",
        ObjectLockMode="COMPLIANCE",
        ObjectLockRetainUntilDate=until,
    )
    s3.put_object(
        Bucket=BUCKET,
        Key=k_gov,
        Body=b"1",
        ObjectLockMode="GOVERNANCE",
        ObjectLockRetainUntilDate=until,
    )
    s3.put_object(Bucket=BUCKET, Key=k_hold, Body=b"1", ObjectLockLegalHoldStatus="ON")
    v1 = s3.put_object(Bucket=BUCKET, Key=k_free, Body=b"1")["VersionId"]
    v2 = s3.put_object(Bucket=BUCKET, Key=k_free, Body=b"2")["VersionId"]
    s3.put_object(Bucket=BUCKET, Key=k_new, Body=b"1")
    return {
        "locked": {k_comp, k_gov, k_hold},
        "free": k_free,
        "free_versions": {v1, v2},
        "new": k_new,
    }


async def test_object_lock_protected_objects_are_skipped_and_reported(
    tmp_path: Path, locked_bucket: dict[str, Any]
) -> None:
    """In a versioned Object Lock bucket every version of an expired, unprotected key is deleted
    (no delete marker left behind); COMPLIANCE, GOVERNANCE and legal-hold objects are reported
    as locked, not as errors, and stay; governance is never bypassed."""
    m = Metrics()
    report, state = await run(settings(tmp_path), metrics=m)
    assert report.errors == []
    assert {x["key"] for x in report.locked} == locked_bucket["locked"]
    reasons = sorted(str(x["reason"]).split(" ")[0] for x in report.locked)
    assert reasons == ["COMPLIANCE", "GOVERNANCE", "legal"]
    s3 = client("s3")
    versions = s3.list_object_versions(Bucket=BUCKET, Prefix=locked_bucket["free"])
    assert versions.get("Versions", []) == []
    assert versions.get("DeleteMarkers", []) == []
    assert keys_in_bucket() == locked_bucket["locked"] | {locked_bucket["new"]}
    assert len(report.deleted) == 2
    assert {r["key"] for r in state.retention_log.rows("locked")} == locked_bucket["locked"]
    assert m.retention_locked._value.get() == 3
    assert "locked (kept)" in render_retention(report)
    state.close()


async def test_a_failed_listing_deletes_nothing(
    tmp_path: Path, plain_bucket: dict[str, list[str]]
) -> None:
    """When a later listing page fails, retention deletes nothing at all (it could not see
    everything it decides from) and reports the failure."""
    calls = {"n": 0}

    def small_pages(params: dict[str, Any], **_: Any) -> None:
        params["MaxKeys"] = 2

    def fail_second_page(**_: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionError("listing interrupted")

    class FlakySessions(StsSessions):
        async def session_for(self, account_id: str | None) -> aioboto3.Session:
            session = await super().session_for(account_id)
            core = session._session
            core.register("before-parameter-build.s3.ListObjectsV2", small_pages)
            core.register("before-call.s3.ListObjectsV2", fail_second_page)
            return session

    before = keys_in_bucket()
    report, state = await run(settings(tmp_path), sessions=FlakySessions())
    assert calls["n"] == 2
    assert report.listing_complete is False
    assert report.deleted == []
    assert keys_in_bucket() == before
    assert "listing incomplete" in render_retention(report)
    state.close()


async def test_lifecycle_mode_installs_one_rule_and_keeps_others(tmp_path: Path, moto: str) -> None:
    """lifecycle mode adds the ctagg rule next to existing rules, is idempotent, and a dry run
    only says it would."""
    s3 = client("s3")
    s3.create_bucket(Bucket=BUCKET)
    other = {
        "ID": "someone-else",
        "Status": "Enabled",
        "Filter": {"Prefix": "tmp/"},
        "Expiration": {"Days": 1},
    }
    s3.put_bucket_lifecycle_configuration(Bucket=BUCKET, LifecycleConfiguration={"Rules": [other]})
    cfg = settings(tmp_path, archive_mode="lifecycle", archive_days=400)
    report, state = await run(cfg, dry_run=True)
    state.close()
    assert report.lifecycle_changed is True
    assert [r["ID"] for r in s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]] == [
        "someone-else"
    ]
    report, state = await run(cfg)
    state.close()
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]}
    assert set(rules) == {"someone-else", RULE_ID}
    assert rules[RULE_ID]["Expiration"] == {"Days": 400}
    assert rules[RULE_ID]["Filter"] == {"Prefix": "AWSLogs/"}
    report, state = await run(cfg)
    state.close()
    assert report.lifecycle_changed is False


def _seed_state(state: State) -> None:
    src = SourceRef("stream-a", A1, "us-east-1", "trail", "AWSLogs/")
    old_day, recent_day = "2023-01-01", "2024-05-30"
    for day in (old_day, recent_day):
        prefix = f"AWSLogs/{A1}/CloudTrail/us-east-1/{day.replace('-', '/')}/"
        state.checkpoints.see_prefix("stream-a", "trail", prefix, day)
        state.commit_object(
            ObjectOutcome(
                src,
                prefix + "k.json.gz",
                prefix,
                "log",
                None,
                1,
                new_keys=[event_hour(day + "T00:00:00Z") + day.encode().ljust(12, b"-")],
            )
        )
    state.checkpoints.close_prefixes("stream-a", "2024-06-01")


async def test_state_pruning_respects_windows_and_backfill(tmp_path: Path, moto: str) -> None:
    """Dedupe keys older than the window and closed prefixes beyond the backfill horizon go;
    with backfill_days unset, closed prefixes are kept (forgetting them would re-read them)."""
    cfg = settings(tmp_path, archive_days=None, closed_prefix_days=30)
    state = State(cfg.state.path)
    _seed_state(state)
    state.close()
    report, state = await run(cfg, dry_run=True)
    assert report.pruned == {"dedupe": 1, "prefixes": 1}
    assert state.count("prefixes") == 2
    state.close()
    report, state = await run(cfg)
    assert report.pruned == {"dedupe": 1, "prefixes": 1}
    assert state.count("dedupe") == 1
    assert state.count("prefixes") == 1
    assert report.skipped["archive"] == "retention.archive_days not set"
    state.close()

    cfg2 = parse_settings(
        {
            "state": {"path": str(tmp_path / "other.db")},
            "archive": {"bucket": BUCKET},
            "retention": {"closed_prefix_days": 30},
        }
    )
    state = State(cfg2.state.path)
    _seed_state(state)
    state.close()
    report, state = await run(cfg2)
    assert "prefixes" not in report.pruned
    assert "backfill_days is null" in report.skipped["prefixes"]
    assert state.count("prefixes") == 2
    state.close()


async def test_registered_pruners_get_their_cutoff(tmp_path: Path, moto: str) -> None:
    """Pruners from other rooms (dead letters) run with retention.dead_letter_days, honour
    dry_run, and a failing pruner is reported without stopping the rest."""
    seen: list[tuple[float, bool]] = []

    async def dead_letters(cutoff: float, dry_run: bool) -> int:
        seen.append((cutoff, dry_run))
        return 4

    async def broken(cutoff: float, dry_run: bool) -> int:
        raise RuntimeError("index api down")

    cfg = settings(tmp_path, archive_days=None, dead_letter_days=7)
    report, state = await run(
        cfg, dry_run=True, pruners={"dead_letters": dead_letters, "sink_indices": broken}
    )
    assert seen == [(NOW - 7 * 86400, True)]
    assert report.pruned["dead_letters"] == 4
    assert report.errors == ["pruner sink_indices: RuntimeError"]
    state.close()


def test_cli_dry_run_lists_what_would_go(
    tmp_path: Path, plain_bucket: dict[str, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """`ctagg retention CONFIG --dry-run` prints every expired key, deletes nothing, exits 0."""
    from aggregator.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"state: {{path: {tmp_path / 's.db'}}}\n"
        f"archive: {{bucket: {BUCKET}}}\n"
        "retention: {archive_days: 3000}\n"
    )
    before = keys_in_bucket()
    # 3000 days before today: nothing in the fixture is that old
    assert main(["retention", str(cfg), "--dry-run"]) == 0
    assert "would delete 0" in capsys.readouterr().out
    cfg.write_text(cfg.read_text().replace("3000", "1"))
    assert main(["retention", str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for key in plain_bucket["expired"] + plain_bucket["kept"]:
        assert f"would delete: {key}" in out
    assert keys_in_bucket() == before


async def test_cli_path_keeps_what_configured_connectors_have_not_delivered(
    tmp_path: Path, plain_bucket: dict[str, list[str]]
) -> None:
    """`ctagg retention` (run_once) with forwarding configured reads the connectors' cursors:
    objects at or past the slowest cursor stay; a connector without a cursor keeps everything."""
    from aggregator.service.retention import run_once

    def cfg(*names: str) -> Settings:
        return parse_settings(
            {
                "state": {"path": str(tmp_path / "state.db")},
                "archive": {"bucket": BUCKET},
                "retention": {"archive_days": 30},
                "forward": {
                    "connectors": [
                        {"name": n, "type": "syslog", "host": "127.0.0.1", "port": 5514}
                        for n in names
                    ]
                },
            }
        )

    state = State(tmp_path / "state.db")
    src = SourceRef("s", A1, "us-east-1", "trail", "AWSLogs/")
    for i, key in enumerate(plain_bucket["expired"]):
        state.commit_object(
            ObjectOutcome(
                src,
                f"src{i}",
                "p/",
                "log",
                None,
                1,
                central=CentralObject(key, 2, "00", 1, None, None),
            )
        )
    ids = [r["id"] for r in state.ledger.rows()]
    state.conn.execute(
        "INSERT INTO forward_cursors (connector, ledger_id, updated_at) VALUES ('fast', ?, 0), "
        "('slow', ?, 0)",
        (ids[-1] + 1, ids[1]),
    )
    state.close()
    # (run_once uses today's date: every fixture object is older than 30 days)
    everything = set(plain_bucket["expired"] + plain_bucket["kept"])
    report = await run_once(cfg("fast", "slow"), dry_run=True)
    assert report.pending_forward == 2  # the slow connector still needs ledger rows 2 and 3
    assert set(report.deleted) == everything - set(plain_bucket["expired"][1:])
    report = await run_once(cfg("fast", "slow", "new"), dry_run=True)
    assert report.pending_forward == 3
    assert set(report.deleted) == everything - set(plain_bucket["expired"])
    report = await run_once(cfg("fast"), dry_run=True)
    assert set(report.deleted) == everything


async def test_cli_path_keeps_what_detection_has_not_scanned_once_it_started(
    tmp_path: Path, plain_bucket: dict[str, list[str]]
) -> None:
    """`ctagg retention` with detect.enabled: before the daemon's detection ever started
    (no cursor) age alone decides; once it started with `oldest` (cursor 0 saved, nothing
    scanned) every ledger object is kept; with `newest` (cursor at the newest id) none is."""
    from aggregator.detect.follow import CURSOR
    from aggregator.detect.store import DetectStore
    from aggregator.service.retention import run_once

    cfg = parse_settings(
        {
            "state": {"path": str(tmp_path / "state.db")},
            "archive": {"bucket": BUCKET},
            "retention": {"archive_days": 30},
        }
    )
    assert cfg.detect.enabled
    state = State(tmp_path / "state.db")
    src = SourceRef("s", A1, "us-east-1", "trail", "AWSLogs/")
    for i, key in enumerate(plain_bucket["expired"]):
        state.commit_object(
            ObjectOutcome(
                src, f"src{i}", "p/", "log", None, 1,
                central=CentralObject(key, 2, "00", 1, None, None),
            )
        )  # fmt: skip
    everything = set(plain_bucket["expired"] + plain_bucket["kept"])
    state.close()
    report = await run_once(cfg, dry_run=True)
    assert set(report.deleted) == everything  # detection never started here

    state = State(tmp_path / "state.db")
    assert DetectStore(state).start_cursor(CURSOR, newest=False) == 0
    state.close()
    report = await run_once(cfg, dry_run=True)
    assert set(report.deleted) == everything - set(plain_bucket["expired"])

    state = State(tmp_path / "state.db")
    state.conn.execute("DELETE FROM detect_meta WHERE name=?", (CURSOR,))
    assert DetectStore(state).start_cursor(CURSOR, newest=True) == len(plain_bucket["expired"])
    state.close()
    report = await run_once(cfg, dry_run=True)
    assert set(report.deleted) == everything


async def test_a_shard_expires_only_the_central_objects_of_its_own_pairs(
    tmp_path: Path, moto: str
) -> None:
    """With shards, each shard's retention deletes only the expired objects of the
    (account, region) pairs it owns (another shard's forwarders may still need the others);
    together the shards delete every expired object."""
    client("s3").create_bucket(Bucket=BUCKET)
    accounts = [f"{n:012d}" for n in range(100000000001, 100000000009)]
    expired = [ckey("2024-04-01", n).replace(A1, a) for n, a in enumerate(accounts)]
    for k in expired:
        client("s3").put_object(Bucket=BUCKET, Key=k, Body=b"{}")
    shards = [ShardSettings(index=i, count=2) for i in range(2)]
    mine = {k for k in expired if owns(shards[0], k.split("/")[1], "us-east-1")}
    assert mine  # both shards own some of the pairs
    assert mine != set(expired)
    base = settings(tmp_path)

    cfg0 = base.model_copy(update={"shard": shards[0]})
    report, state = await run(cfg0)
    state.close()

    assert sorted(report.deleted) == sorted(mine)
    assert keys_in_bucket() == set(expired) - mine
    cfg1 = base.model_copy(
        update={
            "shard": shards[1],
            "state": base.state.model_copy(update={"path": str(tmp_path / "s1.db")}),
        }
    )
    report, state = await run(cfg1)
    state.close()
    assert keys_in_bucket() == set()
