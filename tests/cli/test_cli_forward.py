"""``ctagg replay`` end to end: central objects in S3 (moto), the ledger in SQLite, a local
OpenSearch; and the forward config section."""

from __future__ import annotations

import asyncio
from hashlib import sha256
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest

from aggregator import cli
from aggregator.archive.codec import encode_records
from aggregator.config import ConfigError, parse_settings
from aggregator.ingest.dedupe import record_key_text
from aggregator.state import CentralObject, ObjectOutcome, SourceRef, State
from tests.fakes._server import InThread
from tests.fakes.events import stratus_records
from tests.fakes.opensearch import FakeOpenSearch


def test_replay_command_resends_from_the_central_archive(
    moto: str, tmp_path: Path, testdata: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Records in [since, until) are read from S3 and land in OpenSearch; exit code 0; the
    progress (objects of total) is logged when stderr is not a terminal."""
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="central")
    db = tmp_path / "state.db"
    state = State(db)
    recs = stratus_records(testdata)
    for i in range(0, len(recs), 100):
        part = recs[i : i + 100]
        key = f"AWSLogs/111111111111/CloudTrail/us-east-1/obj{i}.json.gz"
        body = encode_records([orjson.dumps(r) for r in part], 1)
        s3.put_object(Bucket="central", Key=key, Body=body)
        times = sorted(r["eventTime"] for r in part)
        state.commit_object(
            ObjectOutcome(
                source=SourceRef("s", "111111111111", "us-east-1", "b", "AWSLogs/"),
                key=f"src{i}", day_prefix="AWSLogs/d/", kind="log_file", etag=None, size=1,
                central=CentralObject(key, 1, sha256(body).hexdigest(), len(part), times[0],
                                      times[-1]),
            )
        )  # fmt: skip
    state.close()
    since, until = "2021-01-01", "2100-01-01"
    want = {record_key_text(r) for r in recs if since <= r["eventTime"][:10] < until}
    with InThread(FakeOpenSearch()) as server:
        assert isinstance(server, FakeOpenSearch)
        cfg = tmp_path / "c.yaml"
        cfg.write_text(
            f"state: {{path: {db}}}\narchive: {{bucket: central}}\n"
            "forward:\n  connectors:\n"
            f"    - {{name: os, type: opensearch, hosts: ['{server.url}']}}\n"
        )
        code = cli.main(
            ["replay", str(cfg), "--connector", "os", "--since", since, "--until", until]
        )
        assert code == 0
        assert server.all_ids() == want
        err = capsys.readouterr().err
        done = [orjson.loads(x) for x in err.splitlines() if '"progress.done"' in x]
        n_objects = (len(recs) + 99) // 100
        assert [(d["stage"], d["count"], d["total"]) for d in done] == [
            ("replay to os", n_objects, n_objects)
        ]
        assert cli.main(["replay", str(cfg), "--connector", "nope", "--since", since,
                         "--until", until]) == 2  # fmt: skip


def test_replay_ends_with_a_clear_error_when_the_archive_role_is_refused(
    moto: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ctagg replay` is a one-shot command: when archive.writer_account_id's role cannot be
    assumed it stops at once with exit code 3 (access) and the reason on stderr (the service
    forwarder retries instead), and it never asks for the base identity in its place."""
    from aggregator.aws.credentials import CredentialBroker

    asked: list[str | None] = []

    async def refused(self: CredentialBroker, account_id: str | None) -> Any:
        asked.append(account_id)
        raise PermissionError(f"AccessDenied: cannot assume a role in {account_id}")

    monkeypatch.setattr(CredentialBroker, "session_for", refused)
    State(tmp_path / "state.db").close()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"state: {{path: {tmp_path / 'state.db'}}}\n"
        "archive: {bucket: central, writer_account_id: '222222222222'}\n"
        "forward:\n  connectors:\n"
        "    - {name: os, type: opensearch, hosts: ['http://127.0.0.1:9']}\n"
    )
    code = cli.main(
        ["replay", str(cfg), "--connector", "os", "--since", "2024-01-01", "--until", "2024-01-02"]
    )
    assert code == 3
    err = capsys.readouterr().err
    assert "ctagg replay: replay to os stopped: cannot open the central archive" in err
    assert "AccessDenied" in err
    assert asked == ["222222222222"]


def test_forward_config_errors_are_named_with_their_path() -> None:
    """Unknown types, missing fields and secrets are reported with their paths."""
    doc = {
        "archive": {"bucket": "central"},
        "forward": {
            "connectors": [
                {"name": "a", "type": "opensearch", "hosts": ["https://h"], "bogus": 1},
                {"name": "b", "type": "splunk_hec", "url": "https://h"},
                {"name": "c", "type": "carrier_pigeon"},
                {"name": "d", "type": "syslog", "host": "h", "port": 6514,
                 "transport": "tls", "schema": "ocsf"},
            ]
        },
    }  # fmt: skip
    with pytest.raises(ConfigError) as err:
        parse_settings(doc, env={})
    text = "\n".join(err.value.problems)
    assert "forward.connectors[0].opensearch.bogus: unknown key" in text
    assert "forward.connectors[1].splunk_hec.token" in text
    assert "forward.connectors[2]" in text
    ok = parse_settings(
        {"archive": {"bucket": "central"},
         "forward": {"connectors": [{"name": "s", "type": "splunk_hec", "url": "https://h",
                                     "token": "${HEC_TOKEN}"}]}},
        env={"HEC_TOKEN": "t0ken"},
    )  # fmt: skip
    hec = ok.forward.connectors[0]
    assert hec.type == "splunk_hec"
    assert hec.token.get_secret_value() == "t0ken"
    assert "t0ken" not in repr(ok)


async def test_service_forwarder_reads_the_real_archive(
    moto: str, tmp_path: Path, testdata: Path
) -> None:
    """service.forwarding.running (what `ctagg run` uses): central objects from S3 reach
    OpenSearch, the backlog drains, and backpressure reflects it; no connectors -> no forwarder."""

    from aggregator.service import forwarding as forward
    from tests.fakes.opensearch import FakeOpenSearch as Fake

    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="central")
    state = State(tmp_path / "state.db")
    recs = stratus_records(testdata)
    for i in range(0, len(recs), 100):
        part = recs[i : i + 100]
        key = f"AWSLogs/111111111111/CloudTrail/us-east-1/svc{i}.json.gz"
        body = encode_records([orjson.dumps(r) for r in part], 1)
        s3.put_object(Bucket="central", Key=key, Body=body)
        times = sorted(r["eventTime"] for r in part)
        state.commit_object(
            ObjectOutcome(
                source=SourceRef("s", "111111111111", "us-east-1", "b", "AWSLogs/"),
                key=f"src{i}", day_prefix="AWSLogs/d/", kind="log_file", etag=None, size=1,
                central=CentralObject(key, 1, sha256(body).hexdigest(), len(part), times[0],
                                      times[-1]),
            )
        )  # fmt: skip
    server = Fake()
    await server.start()
    try:
        doc = {
            "state": {"path": str(tmp_path / "state.db")},
            "archive": {"bucket": "central"},
            "forward": {
                "max_backlog_objects": 2,
                "poll_interval_secs": 0.05,
                "batch_max_wait_secs": 0,
                "connectors": [{"name": "os", "type": "opensearch", "hosts": [server.url]}],
            },
        }
        settings = parse_settings(doc, env={})
        async with forward.running(settings, state) as fwd:
            assert fwd is not None
            for _ in range(400):
                if fwd.backlog("os") == 0:
                    break
                await asyncio.sleep(0.05)
            assert fwd.backlog("os") == 0
            assert not fwd.backpressure()
        assert server.all_ids() == {record_key_text(r) for r in recs}
        empty = parse_settings({"archive": {"bucket": "central"}}, env={})
        async with forward.running(empty, state) as none:
            assert none is None
    finally:
        await server.stop()
        state.close()


def central_archive(state: State, testdata: Path, per: int = 100) -> list[tuple[str, list[Any]]]:
    """The shared records as central objects in S3 (moto) and ledger rows."""
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="central")
    recs = stratus_records(testdata)
    out = []
    for i in range(0, len(recs), per):
        part = recs[i : i + per]
        key = f"AWSLogs/111111111111/CloudTrail/us-east-1/dl{i}.json.gz"
        body = encode_records([orjson.dumps(r) for r in part], 1)
        s3.put_object(Bucket="central", Key=key, Body=body)
        times = sorted(r["eventTime"] for r in part)
        state.commit_object(
            ObjectOutcome(
                source=SourceRef("s", "111111111111", "us-east-1", "b", "AWSLogs/"),
                key=f"src{i}", day_prefix="AWSLogs/d/", kind="log_file", etag=None, size=1,
                central=CentralObject(key, 1, sha256(body).hexdigest(), len(part), times[0],
                                      times[-1]),
            )
        )  # fmt: skip
        out.append((key, part))
    return out


def test_dead_letters_list_retry_and_resolve(
    moto: str, tmp_path: Path, testdata: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ctagg dead-letters` lists the open ones (text and JSON); `--retry` sends them again
    from the archive: one the sink still refuses stays open (one more attempt, exit 1), the
    others are resolved; after the fix the next retry resolves the rest (exit 0), and a replay
    that delivers a dead-lettered event resolves it too."""
    from aggregator.forward.store import DeadLetter, ForwardStore

    db = tmp_path / "state.db"
    state = State(db)
    objects = central_archive(state, testdata)
    (k0, p0), (k1, p1) = objects[0], objects[1]
    picks = [(k0, 3, p0[3]), (k0, 7, p0[7]), (k1, 5, p1[5])]
    store = ForwardStore(state)
    store.cursor("os")
    store.commit("os", None, 0, [
        DeadLetter(record_key_text(r), k, i, r["eventTime"], "400 mapper_parsing_exception")
        for k, i, r in picks
    ])  # fmt: skip
    state.close()
    ids = [record_key_text(r) for _, _, r in picks]
    with InThread(FakeOpenSearch()) as server:
        assert isinstance(server, FakeOpenSearch)
        cfg = tmp_path / "c.yaml"
        cfg.write_text(
            f"state: {{path: {db}}}\narchive: {{bucket: central}}\n"
            "forward:\n  backoff_initial_secs: 0.01\n  backoff_max_secs: 0.02\n  connectors:\n"
            f"    - {{name: os, type: opensearch, hosts: ['{server.url}']}}\n"
        )
        assert cli.main(["dead-letters", str(cfg), "--json"]) == 0
        listed = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [d["event_id"] for d in listed] == ids
        assert listed[0]["archive"] == f"s3://central/{k0}#3"
        assert cli.main(["dead-letters", str(cfg)]) == 0
        assert "3 dead letter(s), 3 open" in capsys.readouterr().out

        server.reject_ids[ids[1]] = (400, "mapper_parsing_exception", "still bad")
        assert cli.main(["dead-letters", str(cfg), "--retry"]) == 4  # partial: one still open
        out = capsys.readouterr().out
        assert "os: 3 retried, 2 resolved, 1 still open" in out
        assert server.all_ids() == {ids[0], ids[2]}
        state = State(db)
        (left,) = ForwardStore(state).dead_letters("os")
        assert (left["event_id"], left["attempts"]) == (ids[1], 2)
        assert "still bad" in left["reason"]
        state.close()

        server.reject_ids.clear()
        assert cli.main(["dead-letters", str(cfg), "--retry", "--connector", "os"]) == 0
        assert "1 resolved, 0 still open" in capsys.readouterr().out
        assert cli.main(["dead-letters", str(cfg)]) == 0
        assert "no open dead letters" in capsys.readouterr().out
        assert cli.main(["dead-letters", str(cfg), "--all", "--json"]) == 0
        rows = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert {r["resolution"] for r in rows} == {"delivered"}

        state = State(db)
        ForwardStore(state).commit("os", None, 0, [DeadLetter(ids[0], k0, 3, None, "again")])
        state.close()
        code = cli.main(["replay", str(cfg), "--connector", "os", "--since", "2000-01-01",
                         "--until", "2100-01-01"])  # fmt: skip
        assert code == 0
        assert "1 dead letter(s) resolved" in capsys.readouterr().out
        assert cli.main(["dead-letters", str(cfg), "--connector", "nope"]) == 2


def test_status_shows_each_connector(
    moto: str, tmp_path: Path, testdata: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ctagg status` ends with the connectors: cursor, backlog, lag, last delivery, state
    (with the reason of a fatal one), open dead letters; JSON lines under "forward"."""
    import time

    from aggregator.forward.store import Cursor, ForwardStore

    db = tmp_path / "state.db"
    state = State(db)
    central_archive(state, testdata)
    store = ForwardStore(state)
    store.cursor("os")
    store.commit("os", Cursor(2, 0), 100, [])
    store.cursor("hec")
    store.set_state("hec", "fatal", "splunk_hec hec: HEC 403 code 4: Invalid token", time.time())
    state.close()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"state: {{path: {db}}}\narchive: {{bucket: central}}\n"
        "forward:\n  connectors:\n"
        "    - {name: os, type: opensearch, hosts: ['http://127.0.0.1:9']}\n"
        "    - {name: hec, type: splunk_hec, url: 'http://127.0.0.1:9', token: t}\n"
        "    - {name: new, type: syslog, host: 127.0.0.1, port: 9, transport: tcp}\n"
    )
    assert cli.main(["status", str(cfg), "--json"]) == 0
    lines = [orjson.loads(x) for x in capsys.readouterr().out.splitlines()]
    fwd = {d["forward"]["connector"]: d["forward"] for d in lines if "forward" in d}
    assert fwd["os"]["cursor"] == {"ledger_id": 2, "offset": 0}
    assert fwd["os"]["backlog"] == 3
    assert fwd["os"]["state"] == "ok"
    assert fwd["os"]["last_delivered_secs"] is not None
    assert fwd["os"]["lag_secs"] >= 0
    assert fwd["hec"]["state"] == "fatal"
    assert fwd["hec"]["backlog"] == 4
    assert "Invalid token" in fwd["hec"]["reason"]
    assert fwd["new"] == {"connector": "new", "type": "syslog", "enabled": True,
                          "state": "no cursor yet", "backlog": 4}  # fmt: skip
    assert cli.main(["status", str(cfg)]) == 0
    text = capsys.readouterr().out
    assert "forwarding: per connector" in text
    assert "fatal" in text
    assert "Invalid token" in text
