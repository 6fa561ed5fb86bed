"""Every path to a sink goes through the config's normalizer: the daemon's lanes, its
detection connectors and ``ctagg replay`` (a redacted canary never leaves; replayed documents
carry the daemon's enrichment); and the dead letters' life cycle (``ctagg dead-letters``)."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from awsfixtures import log_key, log_object, make_source

from aggregator import cli
from aggregator.aws.inventory import Account, Inventory
from aggregator.service.daemon import Daemon
from tests.fakes.opensearch import FakeOpenSearch
from tests.fakes.splunk_hec import FakeSplunkHec
from tests.service.test_service_daemon import PipelineApp
from tests.service.test_service_jobs import A1, STOP_LOGGING, TODAY, Webhook, stop, wait_for

CANARY = "CANARY-7f3a9c-do-not-leak"
TOKEN = "11111111-2222-3333-4444-555555555555"


def canary_inventory(testdata: Path) -> Inventory:
    """A trail bucket holding the Stratus StopLogging event (a built-in rule alerts on it)
    with the canary in three fields the config redacts: a request parameter, the actor's ARN
    and the source IP."""
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="central")
    s3.create_bucket(Bucket="org-trail")
    src = make_source("org-trail", A1)
    events = json.loads((testdata / STOP_LOGGING).read_text())
    for ev in events:
        ev["requestParameters"] = {**(ev.get("requestParameters") or {}), "canary": CANARY}
        ev["userIdentity"] = {**ev["userIdentity"], "arn": f"arn:aws:iam::{A1}:user/{CANARY}"}
        ev["sourceIPAddress"] = CANARY
        ev["recipientAccountId"] = A1  # the account whose trail delivered it, as in life
    key = log_key(src.prefix, A1, "us-east-1", f"{TODAY}T0105Z", "Canary0000000001")
    s3.put_object(Bucket="org-trail", Key=key, Body=log_object(events))
    account = Account(A1, name="payments-prod", ou_path="Root/Prod", tags={"env": "prod"})
    return Inventory([account], {A1: ["us-east-1"]}, [], [src], [], organization_id="o-abc")


def config(tmp_path: Path, hec: str, os_url: str, hook: str) -> dict[str, Any]:
    return {
        "state": {"path": str(tmp_path / "state.db")},
        "archive": {"bucket": "central"},
        "aws": {"max_attempts": 1},
        "collect": {"max_concurrency": 2},
        "service": {
            "health_host": "127.0.0.1",
            "health_port": 0,
            "ingest_interval_secs": 30,
            "shutdown_timeout_secs": 5,
            "job_intervals_secs": {"detect": 0.2, "detect_deliver": 0.2},
        },
        "forward": {
            "poll_interval_secs": 0.05,
            "batch_max_wait_secs": 0,
            "connectors": [
                {"name": "hec", "type": "splunk_hec", "url": hec, "token": TOKEN},
                {"name": "os", "type": "opensearch", "hosts": [os_url]},
            ],
        },
        "detect": {"webhook_url": hook, "connectors": ["os", "hec"]},
        "integrity": {"validate_digests": False},
        "normalize": {
            "redaction": {
                "rules": [
                    {"path": "requestParameters.canary", "action": "drop"},
                    {"path": "userIdentity.arn", "action": "mask"},
                    {"path": "sourceIPAddress", "action": "mask"},
                ]
            }
        },
    }


async def test_a_redacted_canary_never_leaves_by_any_path(
    moto: str, tmp_path: Path, testdata: Path
) -> None:
    """The daemon forwards the events and delivers the alert they raise (to a webhook and
    through both connectors), then `ctagg replay` sends the window again: the canary the config
    redacts is in the archive, and in nothing any sink received; the replayed HEC events carry
    the daemon's enrichment and equal what the daemon sent."""
    from aggregator.config import parse_settings

    inv = canary_inventory(testdata)
    hec, search, hook = FakeSplunkHec({TOKEN}), FakeOpenSearch(), Webhook()
    await hec.start()
    await search.start()
    await hook.start()
    try:
        doc = config(tmp_path, hec.url, search.url, hook.url)
        app = PipelineApp(parse_settings(doc), inv, discovery_delay=0)
        daemon = Daemon(app)
        run = asyncio.create_task(daemon.run(install_signals=False))

        def alerts(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [d for d in docs if d.get("class_uid") == 2004]

        def os_docs() -> list[dict[str, Any]]:
            return [d for idx in search.indices.values() for d in idx.values()]

        n = len(json.loads((testdata / STOP_LOGGING).read_text()))
        await wait_for(lambda: bool(hook.posts) and bool(alerts(os_docs())), "alert delivered")
        await wait_for(lambda: len(os_docs()) - len(alerts(os_docs())) == n, "events to os")
        await wait_for(lambda: len(hec.indexed) >= n + 1, "events and alert to hec")
        await stop(daemon, run)
        live = [e for e in hec.indexed if "fields" in e]
        assert len(live) == n
        assert all(e["fields"]["aws_account_name"] == "payments-prod" for e in live)

        # replay, as an operator would: the CLI, its own process state, the archive in S3
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump(doc))
        before = len(hec.indexed)
        code = await asyncio.to_thread(
            cli.main,
            ["replay", str(cfg), "--connector", "hec", "--since", "2000-01-01", "--until",
             "2100-01-01"],
        )  # fmt: skip
        assert code == 0
        replayed = hec.indexed[before:]
        assert len(replayed) == n
    finally:
        await hook.stop()
        await search.stop()
        await hec.stop()

    def strip(e: dict[str, Any]) -> dict[str, Any]:
        return {**e, "fields": {k: v for k, v in e["fields"].items() if k != "ctagg_ingest_time"}}

    by_id = {e["event"]["eventID"]: strip(e) for e in live}
    assert [strip(e) for e in replayed] == [by_id[e["event"]["eventID"]] for e in replayed]
    # the canary is in the archive (so this test can fail) ...
    s3 = boto3.client("s3", region_name="us-east-1")
    (obj,) = s3.list_objects_v2(Bucket="central", Prefix="AWSLogs/")["Contents"]
    archived = gzip.decompress(s3.get_object(Bucket="central", Key=obj["Key"])["Body"].read())
    assert CANARY.encode() in archived
    # ... and in nothing that left: events (live and replayed), alerts by every sink
    sent = json.dumps([hec.indexed, search.indices, hook.posts])
    assert CANARY not in sent
    assert "[REDACTED]" in sent  # masked, not dropped: the field is there
    hec_alerts = alerts([e["event"] for e in hec.indexed if isinstance(e["event"], dict)])
    assert hec_alerts
    # alerts are enriched as events are: the account's name from discovery
    assert {a["cloud"]["account"]["name"] for a in [*hec_alerts, *alerts(os_docs())]} == {
        "payments-prod"
    }


async def test_without_a_snapshot_replay_discovers_once_or_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a state the daemon never enriched, replay runs a discovery of its own and keeps its
    account snapshot for the next command; when discovery fails it sends unenriched events."""
    import aggregator.aws.discovery as discovery
    from aggregator.config import parse_settings
    from aggregator.forward.replay import account_view
    from aggregator.forward.store import ForwardStore
    from aggregator.state import State

    settings = parse_settings(config(tmp_path, "http://h", "http://o", "http://w"))
    state = State(settings.state.path)
    store = ForwardStore(state)
    calls: list[str] = []

    async def failing(*_: Any) -> Inventory:
        calls.append("failed")
        raise PermissionError("AccessDenied: organizations:ListAccounts")

    monkeypatch.setattr(discovery, "discover", failing)
    lookup, org = await account_view(settings, store, None, None)  # type: ignore[arg-type]
    assert lookup is None
    assert org() is None

    async def found(*_: Any) -> Inventory:
        calls.append("found")
        return Inventory([Account(A1, name="found")], {}, [], [], [], organization_id="o-x")

    monkeypatch.setattr(discovery, "discover", found)
    for _ in range(2):
        lookup, org = await account_view(settings, store, None, None)  # type: ignore[arg-type]
        assert lookup is not None
        assert lookup(A1) == Account(A1, name="found")
        assert org() == "o-x"
    assert calls == ["failed", "found"]  # the second answer came from the saved snapshot
    state.close()


async def test_replay_refuses_a_modified_object_and_sends_the_rest(
    moto: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """`ctagg replay` over a window whose second central object was overwritten after ingest:
    that object is named on stderr in one line with both SHA-256s, none of its events is sent,
    every other event of the window is, and the command exits 4 (partial)."""
    from tests.forward.test_forward_lanes import archived_world, received

    hec = FakeSplunkHec({TOKEN})
    await hec.start()
    try:
        world = await archived_world(tmp_path, hec.url)
        key = world.keys()[1]
        expected, actual, ids = world.tamper(key)
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump(world.doc))
        capfd.readouterr()
        code = await asyncio.to_thread(
            cli.main,
            ["replay", str(cfg), "--connector", "hec", "--since", "2024-05-01", "--until",
             "2024-05-02"],
        )  # fmt: skip
        out, err = capfd.readouterr()
    finally:
        await hec.stop()
    assert code == 4
    got = received(hec)
    assert not set(got) & ids
    assert sorted(got) == sorted(r["eventID"] for r in world.planted if r["eventID"] not in ids)
    named = [line for line in err.splitlines() if key in line and line.startswith("ctagg:")]
    assert named == [
        f"ctagg: refused s3://central/{key}: central object modified (sha256 {actual} != "
        f"ledger {expected}); none of its events was sent"
    ]
    assert f"{len(world.planted) - len(ids)} delivered" in out
    assert "1 modified object(s) refused" in out
