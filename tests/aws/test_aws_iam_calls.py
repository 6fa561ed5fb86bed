"""Dynamic IAM check: every AWS call the code makes in end-to-end runs against moto (ingest
cycle, hint mode over two shards, retention with Object Lock, lifecycle retention, doctor) is
recorded with the identity that made it, mapped to its IAM action(s) and resource, and
evaluated against that identity's shipped policy document (hub role or member role)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiobotocore.client
import pytest
from awsfixtures import StsSessions, client, log_key, log_object, make_source, record

from aggregator.archive.retention import Retention
from aggregator.aws.clients import Aws
from aggregator.aws.iam import evaluate, load_policy, requests_for
from aggregator.aws.inventory import Account, Inventory
from aggregator.config import Settings, parse_settings
from aggregator.ingest.cycle import Ingestor
from aggregator.integrity.doctor import Doctor
from aggregator.service.daemon import MeteredState

ROOT = Path(__file__).resolve().parents[2]
MEMBER_ROLE = "OrganizationAccountAccessRole"  # the role awsfixtures.StsSessions assumes
LOG_ARCHIVE = "222222222222"  # owns the organization trail bucket
A1 = "111111111111"
CENTRAL = "central"
TRAIL = "org-trail"
KMS = "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555"
SUBST = {
    "CENTRAL_BUCKET": CENTRAL,
    "MEMBER_ROLE_NAME": MEMBER_ROLE,
    "ARCHIVE_KMS_KEY_ARN": KMS,
    "TRAIL_BUCKET": TRAIL,
    "ALERT_SNS_TOPIC_ARN": "arn:aws:sns:us-east-1:111111111111:ctagg-alerts",
    "DIGEST_KMS_KEY_ARN": "arn:aws:kms:us-east-1:111111111111:key/digest-signing",
    "HINT_QUEUE_PREFIX": "ctagg-hints-",
}


@dataclass
class Call:
    service: str
    operation: str
    params: dict[str, Any]
    access_key: str
    region: str


class Recorder:
    """Wraps aiobotocore's _make_api_call: every call with the access key that signed it, and
    which role each AssumeRole handed out keys for."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.role_of_key: dict[str, str] = {}

    def identity(self, access_key: str) -> str:
        return self.role_of_key.get(access_key, "base")


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()
    original = aiobotocore.client.AioBaseClient._make_api_call

    async def recording(self: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
        creds = self._request_signer._credentials
        frozen = await creds.get_frozen_credentials() if creds is not None else None
        rec.calls.append(
            Call(
                self._service_model.service_name,
                operation_name,
                dict(api_params),
                frozen.access_key if frozen else "",
                self.meta.region_name,
            )
        )
        result = await original(self, operation_name, api_params)
        if operation_name == "AssumeRole":
            rec.role_of_key[result["Credentials"]["AccessKeyId"]] = api_params["RoleArn"]
        return result

    monkeypatch.setattr(aiobotocore.client.AioBaseClient, "_make_api_call", recording)
    return rec


class RecordingSessions(StsSessions):
    """StsSessions assumes roles with sync boto3; record which keys belong to which role."""

    def __init__(self, rec: Recorder) -> None:
        super().__init__()
        self.rec = rec

    async def session_for(self, account_id: str | None) -> Any:
        session = await super().session_for(account_id)
        if account_id is not None:
            creds = await session.get_credentials()
            key = (await creds.get_frozen_credentials()).access_key
            self.rec.role_of_key[key] = f"arn:aws:iam::{account_id}:role/{MEMBER_ROLE}"
        return session


def policies() -> dict[str, Any]:
    return {
        "hub": load_policy(ROOT / "iam" / "hub-role-policy.json", SUBST),
        "member": load_policy(ROOT / "iam" / "member-role-policy.json", SUBST),
    }


def violations(rec: Recorder, docs: dict[str, Any] | None = None) -> list[str]:
    docs = docs or policies()
    out = []
    for call in rec.calls:
        who = rec.identity(call.access_key)
        doc = docs["member"] if who.endswith(f":role/{MEMBER_ROLE}") else docs["hub"]
        for req in requests_for(call.service, call.operation, call.params, call.region):
            verdict = evaluate([doc], req)
            if verdict != "allow":
                name = "member" if doc is docs["member"] else "hub"
                out.append(f"{name} ({who}): {call.service}.{call.operation}: {req} -> {verdict}")
    return out


def settings(tmp_path: Path, **extra: Any) -> Settings:
    doc: dict[str, Any] = {
        "state": {"path": str(tmp_path / "state.db")},
        "aws": {"max_attempts": 1},
        "archive": {"bucket": CENTRAL, "kms_key_id": KMS},
        "collect": {"backfill_days": 30},
    }
    doc.update(extra)
    return parse_settings(doc)


async def forward_everything(tmp_path: Path, state: Any) -> None:
    """Run the service forwarder until a local Splunk HEC has every archived event."""
    from aggregator.service import forwarding as forward
    from tests.fakes.splunk_hec import FakeSplunkHec

    hec = FakeSplunkHec({"t0k3n"})
    await hec.start()
    try:
        cfg = settings(
            tmp_path,
            forward={
                "poll_interval_secs": 0.05,
                "connectors": [
                    {"name": "hec", "type": "splunk_hec", "url": hec.url, "token": "t0k3n"}
                ],
            },
        )
        async with forward.running(cfg, state) as fwd:
            assert fwd is not None
            for _ in range(400):
                if fwd.backlog("hec") == 0 and hec.indexed:
                    break
                await asyncio.sleep(0.05)
        assert len(hec.indexed) == 9
    finally:
        await hec.stop()


@pytest.fixture
def org(moto: str) -> Inventory:
    """Central bucket (Object Lock) in the hub account; the org trail bucket in the log
    archive account, read through its member role."""
    client("s3").create_bucket(Bucket=CENTRAL, ObjectLockEnabledForBucket=True)
    s3 = client("s3", LOG_ARCHIVE)
    s3.create_bucket(Bucket=TRAIL)
    src = make_source(TRAIL, A1, org_id="o-abcdefghij", reader=LOG_ARCHIVE)
    today = datetime.now(UTC)
    for i in range(3):
        ts = today.strftime("%Y%m%dT00") + f"{i}0Z"
        recs = [
            record(f"e{i}-{j}", A1, time=today.strftime("%Y-%m-%dT00:00:00Z")) for j in range(3)
        ]
        s3.put_object(
            Bucket=TRAIL,
            Key=log_key(src.prefix, A1, "us-east-1", ts, f"K{i:015d}"),
            Body=log_object(recs),
        )
    old = (today - timedelta(days=500)).strftime("%Y/%m/%d")
    c = client("s3")
    key = f"AWSLogs/{A1}/CloudTrail/us-east-1/{old}/{A1}_CloudTrail_us-east-1_x_OLD1.json.gz"
    c.put_object(Bucket=CENTRAL, Key=key, Body=b"{}")
    c.put_object(Bucket=CENTRAL, Key=key, Body=b"{}")  # a second version
    c.put_object(
        Bucket=CENTRAL,
        Key=key.replace("OLD1", "OLD2"),
        Body=b"{}",
        ObjectLockMode="GOVERNANCE",
        ObjectLockRetainUntilDate=today + timedelta(days=2),
    )
    return Inventory(
        accounts=[Account(A1), Account(LOG_ARCHIVE)],
        regions={A1: ["us-east-1"]},
        trails=[],
        sources=[src],
        failures=[],
    )


async def test_every_recorded_call_is_allowed(
    tmp_path: Path, org: Inventory, recorder: Recorder
) -> None:
    """Ingest, delete-mode retention (versions, Object Lock), lifecycle retention, doctor and
    forwarding (reading the central archive) make only calls their identity's policy allows."""
    cfg = settings(tmp_path, retention={"archive_days": 400})
    sessions = RecordingSessions(recorder)
    aws = Aws(cfg.aws)
    state = MeteredState(cfg.state.path)
    report = await Ingestor(cfg, state, sessions, aws).run(org)
    assert report.objects == 3
    ret = await Retention(cfg, state, sessions, aws).run()
    assert len(ret.deleted) == 2
    assert len(ret.locked) == 1
    cfg_lc = settings(tmp_path, retention={"archive_days": 400, "archive_mode": "lifecycle"})
    lc = await Retention(cfg_lc, state, sessions, aws).run()
    assert lc.lifecycle_changed
    doc = await Doctor(cfg, sessions, aws).run(org)
    assert doc.ok, json.dumps(doc.as_dict(), indent=1)
    await forward_everything(tmp_path, state)
    state.close()

    ops = {(c.service, c.operation) for c in recorder.calls}
    # the recording saw the real work, with both identities
    assert {
        ("s3", "ListObjectsV2"),
        ("s3", "GetObject"),
        ("s3", "PutObject"),
        ("s3", "ListObjectVersions"),
        ("s3", "HeadObject"),
        ("s3", "DeleteObjects"),
        ("s3", "PutBucketLifecycleConfiguration"),
    } <= ops
    who = {recorder.identity(c.access_key) for c in recorder.calls}
    assert who == {"base", f"arn:aws:iam::{LOG_ARCHIVE}:role/{MEMBER_ROLE}"}
    found = violations(recorder)
    assert found == [], "\n".join(found)


async def test_the_check_catches_a_missing_permission(
    tmp_path: Path, org: Inventory, recorder: Recorder
) -> None:
    """With s3:DeleteObjectVersion removed from the hub policy, the same run is flagged."""
    cfg = settings(tmp_path, retention={"archive_days": 400})
    sessions = RecordingSessions(recorder)
    state = MeteredState(cfg.state.path)
    await Retention(cfg, state, sessions, Aws(cfg.aws)).run()
    state.close()
    real = policies()

    def weakened() -> dict[str, Any]:
        hub = json.loads(json.dumps(real["hub"]))
        for st in hub["Statement"]:
            if isinstance(st["Action"], list) and "s3:DeleteObjectVersion" in st["Action"]:
                st["Action"].remove("s3:DeleteObjectVersion")
        return {"hub": hub, "member": real["member"]}

    found = violations(recorder, weakened())
    assert any("s3:DeleteObjectVersion" in v and "implicit_deny" in v for v in found), found


async def test_app_discovery_ingest_and_doctor_calls_are_allowed(
    tmp_path: Path, moto: str, recorder: Recorder
) -> None:
    """The real App (Organizations discovery through the CredentialBroker with AssumeRole +
    ExternalId into each member role, then an ingest cycle reading the member's own trail
    bucket) and `ctagg doctor` make only calls their identity's policy allows."""
    from aggregator.integrity.doctor import run_live
    from aggregator.service.app import App

    orgs = client("organizations")
    orgs.create_organization(FeatureSet="ALL")
    status = orgs.create_account(Email="a1@example.com", AccountName="workload")
    member = status["CreateAccountStatus"]["AccountId"]
    client("s3").create_bucket(Bucket=CENTRAL)
    s3 = client("s3", member)
    s3.create_bucket(Bucket=TRAIL)
    client("cloudtrail", member).create_trail(
        Name="main", S3BucketName=TRAIL, IsMultiRegionTrail=True
    )
    day = datetime.now(UTC)
    s3.put_object(
        Bucket=TRAIL,
        Key=log_key(
            f"AWSLogs/{member}/CloudTrail/us-east-1/",
            member,
            "us-east-1",
            day.strftime("%Y%m%dT0100Z"),
        ),
        Body=log_object([record("m1", member, time=day.strftime("%Y-%m-%dT01:00:00Z"))]),
    )
    cfg = parse_settings(
        {
            "state": {"path": str(tmp_path / "state.db")},
            "aws": {"max_attempts": 1},
            "credentials": {
                "role_arn_template": "arn:aws:iam::{account_id}:role/" + MEMBER_ROLE,
                "external_id": "0123456789abcdef",
            },
            "discovery": {"regions": {"include": ["us-east-1"]}},
            "archive": {"bucket": CENTRAL},
        }
    )
    app = App(cfg)
    try:
        cycle = await app.run_once()
    finally:
        await app.close()
    assert cycle.objects == 1
    assert cycle.events_archived == 1
    report = await run_live(cfg)
    ops = {(c.service, c.operation) for c in recorder.calls}
    assert {
        ("organizations", "ListAccounts"),
        ("sts", "AssumeRole"),
        ("ec2", "DescribeRegions"),
        ("cloudtrail", "DescribeTrails"),
    } <= ops
    assumed = [c for c in recorder.calls if c.operation == "AssumeRole"]
    assert all(c.params.get("ExternalId") == "0123456789abcdef" for c in assumed)
    assert any(r.account_id == member and r.bucket == TRAIL for r in report.rows)
    found = violations(recorder)
    assert found == [], "\n".join(found)


def writer_settings(tmp_path: Path, hec_url: str, **forward: Any) -> Settings:
    """The central bucket written and read with LOG_ARCHIVE's role; one HEC connector."""
    return settings(
        tmp_path,
        archive={"bucket": CENTRAL, "writer_account_id": LOG_ARCHIVE},
        forward={
            "poll_interval_secs": 0.05,
            "connectors": [{"name": "hec", "type": "splunk_hec", "url": hec_url, "token": "t0k3n"}],
            **forward,
        },
    )


async def test_every_archive_reader_uses_the_writer_identity(
    tmp_path: Path, org: Inventory, recorder: Recorder
) -> None:
    """With archive.writer_account_id set, the central bucket is touched only with that
    account's role: ingest writes it, and the service forwarder, `ctagg replay` (its own
    credential broker) and the detection follower read it with the same role, never with the
    base identity (a bucket whose policy trusts only the writer role works for all of them)."""
    from aggregator.forward.replay import replay_with_settings
    from aggregator.service import forwarding as forward
    from aggregator.service.jobs import DetectionJobs
    from aggregator.service.metrics import Metrics
    from tests.fakes.splunk_hec import FakeSplunkHec

    writer = f"arn:aws:iam::{LOG_ARCHIVE}:role/{MEMBER_ROLE}"
    hec = FakeSplunkHec({"t0k3n"})
    await hec.start()
    try:
        cfg = writer_settings(tmp_path, hec.url)
        sessions = RecordingSessions(recorder)
        aws = Aws(cfg.aws)
        state = MeteredState(cfg.state.path)
        assert (await Ingestor(cfg, state, sessions, aws).run(org)).events_archived == 9
        async with forward.running(cfg, state, sessions=sessions) as fwd:
            assert fwd is not None
            for _ in range(400):
                if fwd.backlog("hec") == 0 and len(hec.indexed) == 9:
                    break
                await asyncio.sleep(0.05)
        assert len(hec.indexed) == 9
        since = datetime.now(UTC) - timedelta(days=1)
        replayed = await replay_with_settings(cfg, "hec", since, since + timedelta(days=2))
        assert replayed.events == 9
        det = DetectionJobs(cfg, state, aws, Metrics(), sessions=sessions)
        async with contextlib.AsyncExitStack() as stack:
            await det.start(stack)
            assert (await det.follower.catch_up())[0] == 3
        state.close()
    finally:
        await hec.stop()

    central = [c for c in recorder.calls if c.params.get("Bucket") == CENTRAL]
    ops = {(c.operation, recorder.identity(c.access_key)) for c in central}
    assert ("PutObject", writer) in ops
    assert ("GetObject", writer) in ops
    reads = [c for c in central if c.operation == "GetObject"]
    assert len(reads) >= 3 * 3  # forwarder, replay and detection each read the 3 objects
    assert {recorder.identity(c.access_key) for c in central} == {writer}
    # replay's own broker assumed the writer role through aiobotocore (ingest's test sessions
    # assume with boto3, so this AssumeRole is replay's)
    assumed = [c for c in recorder.calls if c.operation == "AssumeRole"]
    assert [c.params["RoleArn"] for c in assumed] == [writer]


async def test_forwarding_starts_while_the_writer_role_is_refused(
    tmp_path: Path, org: Inventory, recorder: Recorder
) -> None:
    """The archive's client is made on first use: while the writer role cannot be assumed the
    forwarder still starts, its reads fail and are retried (reported in the lane's status);
    once the role works, every archived event is delivered."""
    from aggregator.service import forwarding as forward
    from tests.fakes.splunk_hec import FakeSplunkHec

    hec = FakeSplunkHec({"t0k3n"})
    await hec.start()
    try:
        cfg = writer_settings(tmp_path, hec.url, backoff_initial_secs=0.05, backoff_max_secs=0.2)
        aws = Aws(cfg.aws)
        state = MeteredState(cfg.state.path)
        await Ingestor(cfg, state, RecordingSessions(recorder), aws).run(org)
        refused = StsSessions(deny=[LOG_ARCHIVE])
        async with forward.running(cfg, state, sessions=refused) as fwd:
            assert fwd is not None
            lane = fwd.lanes["hec"]
            for _ in range(200):
                if refused.calls.count(LOG_ARCHIVE) >= 2:
                    break
                await asyncio.sleep(0.02)
            assert refused.calls.count(LOG_ARCHIVE) >= 2  # retried, not given up
            assert (lane.status.last_error or "").startswith("archive read: PermissionError")
            assert hec.indexed == []
            refused.deny.clear()  # the trust policy is fixed
            for _ in range(400):
                if fwd.backlog("hec") == 0 and len(hec.indexed) == 9:
                    break
                await asyncio.sleep(0.05)
        assert len(hec.indexed) == 9
        state.close()
    finally:
        await hec.stop()


class SlowFetch(Ingestor):
    """Holds every object 2.5 s after its GET: the hint heartbeat (visibility 2 s) fires."""

    async def fetched(self, job: Any, data: bytes) -> None:
        await asyncio.sleep(2.5)


def _s3_event(bucket: str, key: str) -> str:
    obj = {"key": key, "size": 100}
    rec = {"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "awsRegion": "us-east-1"}
    return json.dumps({"Records": [{**rec, "s3": {"bucket": {"name": bucket}, "object": obj}}]})


async def test_hint_mode_queue_calls_are_allowed(
    tmp_path: Path, org: Inventory, recorder: Recorder
) -> None:
    """Hint mode over two shards (one intake queue, `shard_queue_url` per shard): the shard
    that does not own the pair forwards its hint to the owner's queue (SendMessage) and reads
    the intake's visibility timeout (GetQueueAttributes); the owner receives it, extends its
    visibility while the object is in work (ChangeMessageVisibility) and deletes it. Every
    queue call is one the hub policy allows on queues named HINT_QUEUE_PREFIX*, and the same
    calls on queues named otherwise are refused."""
    from aggregator.aws.slots import for_shard, owns

    sqs = client("sqs")
    intake = sqs.create_queue(QueueName="ctagg-hints-intake")["QueueUrl"]
    per_shard = [sqs.create_queue(QueueName=f"ctagg-hints-{i}")["QueueUrl"] for i in (0, 1)]
    template = per_shard[0][: -len("0")] + "{index}"

    def shard_settings(index: int, **notif: Any) -> Settings:
        return settings(
            tmp_path,
            shard={"count": 2, "index": index},
            collect={
                "backfill_days": 30,
                "notifications": {
                    "queue_url": intake,
                    "shard_queue_url": template,
                    "wait_time_secs": 0,
                    **notif,
                },
            },
        )

    first = shard_settings(0)
    owner = 0 if owns(first.shard, A1, "us-east-1") else 1
    cfgs = {
        owner: shard_settings(owner, visibility_timeout_secs=2),
        1 - owner: shard_settings(1 - owner),
    }
    sessions = RecordingSessions(recorder)
    runs = {}
    for index, cfg in cfgs.items():
        state = MeteredState(cfg.state.path)
        cls = SlowFetch if index == owner else Ingestor
        runs[index] = (cls(cfg, state, sessions, Aws(cfg.aws)), for_shard(org, cfg.shard), state)
    try:
        for ing, inv, _ in runs.values():
            await ing.run(inv)  # the first cycles list: the owner archives the 3 objects
        today = datetime.now(UTC)
        (src,) = org.sources
        key = log_key(src.prefix, A1, "us-east-1", today.strftime("%Y%m%dT0050Z"), "HINT")
        body = log_object([record("hinted", A1, time=today.strftime("%Y-%m-%dT00:50:00Z"))])
        client("s3", LOG_ARCHIVE).put_object(Bucket=TRAIL, Key=key, Body=body)
        sqs.send_message(QueueUrl=intake, MessageBody=_s3_event(TRAIL, key))

        ing, inv, _ = runs[1 - owner]
        report = await ing.run(inv)
        assert report.hints_forwarded == 1
        ing, inv, _ = runs[owner]
        report = await ing.run(inv)
        assert report.objects == 1
        assert report.hint_extensions >= 1
        assert report.hint_messages_deleted == 1
    finally:
        for _, _, state in runs.values():
            state.close()

    queue_calls = [c for c in recorder.calls if c.service == "sqs"]
    ops = {c.operation for c in queue_calls}
    assert {
        "ReceiveMessage",
        "DeleteMessage",
        "SendMessage",
        "GetQueueAttributes",
        "ChangeMessageVisibility",
    } <= ops
    found = violations(recorder)
    assert found == [], "\n".join(found)
    # the check covers the queue calls: the same calls on a queue the prefix does not name
    renamed = Recorder()
    for c in queue_calls:
        url = str(c.params["QueueUrl"]).replace("ctagg-hints-", "payroll-")
        renamed.calls.append(Call(c.service, c.operation, {**c.params, "QueueUrl": url}, "", ""))
    refused = violations(renamed)
    assert len(refused) == len(queue_calls), refused
