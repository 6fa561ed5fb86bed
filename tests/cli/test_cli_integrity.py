"""The integrity commands end to end through ``ctagg`` (main), against moto."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from awsfixtures import client

from aggregator.aws.inventory import Account, Inventory
from aggregator.cli import main
from aggregator.config import load_settings
from aggregator.integrity import jobs as integrity_jobs
from aggregator.state import State
from tests.archive.test_archive_digests import ingest, write_keypair

A1 = "111111111111"


def config(tmp_path: Path, **integrity: Any) -> Path:
    p = tmp_path / "ctagg.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "state": {"path": str(tmp_path / "state.db")},
                "archive": {"bucket": "central"},
                "integrity": integrity,
            }
        )
    )
    return p


async def test_archive_digest_and_verify_archive_commands(
    moto: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    priv, _ = write_keypair(tmp_path)
    cfg_path = config(tmp_path, archive_digest={"enabled": True, "signing_key_path": str(priv)})
    settings = load_settings(cfg_path)
    client("s3").create_bucket(Bucket="central")
    state = State(settings.state.path)
    await ingest(settings, state, n_objects=2)
    state.conn.execute("UPDATE ledger SET written_at = written_at - 7200")  # an hour that ended
    central_key = state.ledger.rows()[0]["central_key"]
    state.close()
    capsys.readouterr()

    assert await_main(["archive-digest", str(cfg_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["objects"] == 2
    assert await_main(["verify-archive", str(cfg_path)]) == 0
    assert capsys.readouterr().out.startswith("OK: 1 digest(s), 2/2 object(s) verified")

    client("s3").put_object(Bucket="central", Key=central_key, Body=b"tampered")
    assert await_main(["verify-archive", str(cfg_path), "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert rep["modified"] == [central_key]
    assert rep["ok"] is False


def await_main(argv: list[str]) -> int:
    """main() runs its own event loop; run it in a thread from inside this async test."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(main, ["--log-level", "WARNING", *argv]).result()


def test_completeness_offline_reports_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg_path = config(tmp_path)
    state = State(tmp_path / "state.db")
    day = f"AWSLogs/{A1}/CloudTrail/us-east-1/2024/05/01/"
    key = f"{day}{A1}_CloudTrail_us-east-1_20240501T1005Z_x.json.gz"
    state.digests.record_expected(
        [("b", key, "b/src", A1, "us-east-1", "2024-05-01T10", "00", "d")]
    )
    state.close()
    argv = [
        "completeness",
        str(cfg_path),
        "--offline",
        "--since",
        "2024-05-01",
        "--until",
        "2024-05-02",
    ]
    assert main([*argv, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["hours"][0]["missing"] == [key]
    assert main([*argv, "--csv"]) == 1
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[0]["missing_count"] == "1"
    assert main([*argv, "--since", "2024-05-03"]) == 2  # since after until


def test_audit_command_outputs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = Inventory([Account(A1)], {A1: ["us-east-1"]}, [], [], [])

    async def fake_inventory(*_: Any) -> Inventory:
        return inv

    monkeypatch.setattr(integrity_jobs, "discover_inventory", fake_inventory)
    cfg_path = config(tmp_path)
    assert main(["audit", str(cfg_path), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert {(f["check"], f["status"], f["cis"]) for f in doc["findings"]} == {
        ("trail_covered", "fail", "3.1"),
        ("multi_region_trail", "fail", "3.1"),
    }
    assert main(["audit", str(cfg_path), "--metrics"]) == 1
    assert 'ctagg_audit_finding{account_id="111111111111"' in capsys.readouterr().out
    assert main(["audit", str(cfg_path)]) == 1
    assert "trail_covered" in capsys.readouterr().out


async def test_validate_digests_and_completeness_commands(
    moto: str,
    tmp_path: Path,
    testdata: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Digests read from the trail bucket (keys from a local key directory), logs checked."""
    import gzip

    import aioboto3
    from cryptography.hazmat.primitives import serialization
    from trailgen import ACCOUNT, REGION, new_key, write_trail

    from aggregator.aws.inventory import Source

    key = new_key()
    keydir = tmp_path / "keys"
    keydir.mkdir()
    (keydir / "ct.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    async with aioboto3.Session().client("s3", region_name="us-east-1") as s3:
        trail = await write_trail(s3, testdata, key=key, hours=2)
    prefix = f"AWSLogs/{ACCOUNT}/CloudTrail/{REGION}/"
    src = Source(f"{trail.bucket}/{prefix}", ACCOUNT, REGION, trail.bucket, prefix)
    inv = Inventory([Account(ACCOUNT)], {ACCOUNT: [REGION]}, [], [src], [])

    async def fake_inventory(*_: Any) -> Inventory:
        return inv

    monkeypatch.setattr(integrity_jobs, "discover_inventory", fake_inventory)
    cfg_path = config(tmp_path, public_key_dir=str(keydir), list_public_keys=False)
    window = ["--since", "2024-05-01T00:00", "--until", "2024-05-02T00:00"]
    assert await_main(["validate-digests", str(cfg_path), *window, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["statuses"] == {"valid": 2}

    victim = trail.digest_hours[0][0]
    client("s3").put_object(Bucket=trail.bucket, Key=victim, Body=gzip.compress(b'{"Records":[]}'))
    assert await_main(["validate-digests", str(cfg_path), *window]) == 1
    out = capsys.readouterr().out
    assert "log_file_modified" in out

    # nothing was ingested: every listed file is missing, and queued for retry
    assert await_main(["completeness", str(cfg_path), *window, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["expected"] == 4
    assert doc["missing"] == 4


async def test_verify_archive_reports_retention_deletions_as_expired(
    moto: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Objects `ctagg retention` deleted (retention_log) are `expired`, not failures; an object
    removed behind retention's back is still `missing`. ``ctagg retention`` also keeps what the
    daemon's detection has not scanned yet."""
    priv, _ = write_keypair(tmp_path)
    cfg_path = tmp_path / "ctagg.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "state": {"path": str(tmp_path / "state.db")},
                "archive": {"bucket": "central"},
                "retention": {"archive_days": 30},
                "integrity": {"archive_digest": {"enabled": True, "signing_key_path": str(priv)}},
            }
        )
    )
    settings = load_settings(cfg_path)
    client("s3").create_bucket(Bucket="central")
    state = State(settings.state.path)
    await ingest(settings, state, n_objects=3)  # events of 2024-05-01: past 30 days
    state.conn.execute("UPDATE ledger SET written_at = written_at - 7200")
    first, second, third = (r["central_key"] for r in state.ledger.rows())
    # the daemon's detection has scanned the first two objects only
    from aggregator.detect.follow import CURSOR
    from aggregator.detect.store import DetectStore

    DetectStore(state).set_meta(CURSOR, str(state.ledger.rows()[1]["id"]))
    state.close()
    assert await_main(["archive-digest", str(cfg_path)]) == 0
    client("s3").delete_object(Bucket="central", Key=first)  # not by retention
    capsys.readouterr()

    assert await_main(["retention", str(cfg_path), "--json"]) == 0
    ret = json.loads(capsys.readouterr().out)
    assert ret["pending_forward"] == 1  # the third: detection has not read it
    left = [o["Key"] for o in client("s3").list_objects_v2(Bucket="central")["Contents"]]
    assert third in left
    assert second not in left
    assert await_main(["verify-archive", str(cfg_path), "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert rep["expired"] == [second]
    assert rep["missing"] == [first]
    assert rep["objects_ok"] == 1  # the third, kept

    # with only retention's deletions, verification passes and says what expired
    state = State(settings.state.path)
    state.retention_log.record([("central", first, None, "deleted", "test: deleted by retention")])
    state.close()
    assert await_main(["verify-archive", str(cfg_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: 1 digest(s), 1/3 object(s) verified")
    assert "2 expired by retention" in out
    assert "missing" not in out


def test_validate_digests_is_readable_and_a_trail_without_digests_is_said_once(
    moto: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trail without log file validation has log files and no digest: validate-digests
    names the source once (not each file as 'in no digest'), prints words, not a dict, and a
    progress line per run goes to stderr."""
    from opworld import put_logs, write_config

    cfg = write_config(tmp_path, moto)
    put_logs(25)

    code = main(["validate-digests", str(cfg), "--since", "2024-05-01", "--until", "2024-05-02"])

    out, err = capsys.readouterr()
    assert code == 0
    assert "{" not in out
    assert "log files in no digest" not in out
    assert "digests: none found in the window (from 1 sources)" in out
    assert "sources with log files but no digest file: 1" in out
    assert "s3://trail-bucket/AWSLogs/111111111111/CloudTrail/us-east-1/" in out
    assert "CIS 3.2" in out
    done = [json.loads(x) for x in err.splitlines() if '"progress.done"' in x]
    assert done
    assert done[0]["stage"] == "validate-digests"
    assert (done[0]["count"], done[0]["total"]) == (1, 1)
    assert (
        main(
            [
                "validate-digests",
                str(cfg),
                "--since",
                "2024-05-01",
                "--until",
                "2024-05-02",
                "--json",
            ]
        )
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["not_in_any_digest"] == []
    assert doc["sources_without_digests"] == [
        "s3://trail-bucket/AWSLogs/111111111111/CloudTrail/us-east-1/"
    ]


async def test_reconcile_exit_codes_json_and_repair(
    moto: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """reconcile: 0 on a clean archive, 1 with findings (--json: counts and examples), 1 after a
    repair too (it found something), then 0; 2 for a range that ends before it starts; read-only
    beside the state's writer, while --repair needs the writer lock (7)."""
    from aggregator.archive.store import KeyParts, central_key
    from aggregator.state.lock import WriterLock

    cfg_path = config(tmp_path)
    settings = load_settings(cfg_path)
    client("s3").create_bucket(Bucket="central")
    state = State(settings.state.path)
    await ingest(settings, state, n_objects=2)
    original = state.ledger.rows()[0]["central_key"]
    state.close()
    day = ["--since", "2024-05-01", "--until", "2024-05-01"]
    capsys.readouterr()

    assert await_main(["reconcile", str(cfg_path), *day, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["found"] is False
    assert doc["objects"] == 2

    s3 = client("s3")
    copy = central_key("", KeyParts(A1, "us-east-1", "20240501T1005Z", False), "b", "copy")
    body = s3.get_object(Bucket="central", Key=original)["Body"].read()
    s3.put_object(Bucket="central", Key=copy, Body=body)
    lock = WriterLock(settings.state.path, "ctagg run").acquire()
    try:
        assert await_main(["reconcile", str(cfg_path), *day, "--json"]) == 1  # beside a writer
        doc = json.loads(capsys.readouterr().out)
        assert await_main(["reconcile", str(cfg_path), *day, "--repair"]) == 7
        assert "ctagg run" in capsys.readouterr().err
    finally:
        lock.release()
    assert doc["counts"]["unknown_objects"] == 1
    assert doc["counts"]["duplicate_events"] == 3
    assert doc["examples"]["unknown_objects"] == [{"key": copy, "bytes": len(body)}]
    assert doc["repaired"] is None

    assert await_main(["reconcile", str(cfg_path), *day, "--repair", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["repaired"]["deleted"] == 1
    assert await_main(["reconcile", str(cfg_path), *day]) == 0
    assert "OK: nothing found" in capsys.readouterr().out

    assert (
        await_main(["reconcile", str(cfg_path), "--since", "2024-05-02", "--until", "2024-05-01"])
        == 2
    )
    assert "--since 2024-05-02 is after --until 2024-05-01" in capsys.readouterr().err


async def test_reconcile_of_an_unreachable_bucket_is_an_access_error(
    moto: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A central bucket that does not exist: one line, exit 3."""
    cfg_path = config(tmp_path)
    State(load_settings(cfg_path).state.path).close()
    capsys.readouterr()

    assert await_main(["reconcile", str(cfg_path)]) == 3
    err = capsys.readouterr().err
    assert "central" in err
    assert "Traceback" not in err
