"""Trail audit against trails and buckets seeded in moto: each misconfiguration is flagged with
its CIS control; output as JSON, CSV, table and metrics."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from awsfixtures import StsSessions, client
from botocore.stub import Stubber
from prometheus_client import CollectorRegistry

from aggregator.aws.clients import Aws, ClientPool
from aggregator.aws.inventory import Account, Inventory, Trail
from aggregator.cli.integrity import audit_csv, audit_json, print_audit_table
from aggregator.config import AuditSettings, AwsSettings
from aggregator.integrity.audit import (
    AuditReport,
    Finding,
    audit_metrics,
    pool_client_for,
    run_audit,
)
from aggregator.normalize.policy import policy_is_public

GOOD, BAD, PUB = "111111111111", "222222222222", "333333333333"
R1, R2 = "us-east-1", "eu-west-1"


def make_bucket(account: str, name: str, *, lock: bool = False) -> Any:
    s3 = client("s3", account)
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=lock)
    return s3


def make_trail(account: str, name: str, bucket: str, **kw: Any) -> Trail:
    ct = client("cloudtrail", account)
    resp = ct.create_trail(Name=name, S3BucketName=bucket, **kw)
    return Trail(
        arn=resp["TrailARN"],
        name=name,
        owner_account_id=account,
        home_region=R1,
        bucket=bucket,
        key_prefix="",
        is_organization=bool(kw.get("IsOrganizationTrail")),
        is_multi_region=bool(kw.get("IsMultiRegionTrail")),
    )


@pytest.fixture
def seeded(moto: str) -> Inventory:
    # GOOD: everything right
    s3 = make_bucket(GOOD, "good-trail", lock=True)
    s3.put_public_access_block(
        Bucket="good-trail",
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    s3.put_bucket_versioning(Bucket="good-trail", VersioningConfiguration={"Status": "Enabled"})
    s3.create_bucket(Bucket="good-access-logs")
    s3.put_bucket_acl(Bucket="good-access-logs", ACL="log-delivery-write")
    s3.put_bucket_logging(
        Bucket="good-trail",
        BucketLoggingStatus={
            "LoggingEnabled": {"TargetBucket": "good-access-logs", "TargetPrefix": "x/"}
        },
    )
    good = make_trail(
        GOOD,
        "good",
        "good-trail",
        IsMultiRegionTrail=True,
        EnableLogFileValidation=True,
        KmsKeyId=f"arn:aws:kms:us-east-1:{GOOD}:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        CloudWatchLogsLogGroupArn=f"arn:aws:logs:us-east-1:{GOOD}:log-group:ct:*",
        CloudWatchLogsRoleArn=f"arn:aws:iam::{GOOD}:role/ct-cw",
    )
    ct = client("cloudtrail", GOOD)
    ct.start_logging(Name=good.arn)
    ct.put_event_selectors(
        TrailName=good.arn,
        EventSelectors=[
            {
                "ReadWriteType": "All",
                "IncludeManagementEvents": True,
                "DataResources": [{"Type": "AWS::S3::Object", "Values": ["arn:aws:s3"]}],
            }
        ],
    )
    ct.put_insight_selectors(
        TrailName=good.arn, InsightSelectors=[{"InsightType": "ApiCallRateInsight"}]
    )
    # BAD: single-region, not logging, no validation, no KMS, write-only mgmt, public ACL
    s3b = make_bucket(BAD, "bad-trail")
    s3b.put_bucket_acl(Bucket="bad-trail", ACL="public-read")
    bad = make_trail(BAD, "bad", "bad-trail")
    client("cloudtrail", BAD).put_event_selectors(
        TrailName=bad.arn,
        EventSelectors=[{"ReadWriteType": "WriteOnly", "IncludeManagementEvents": True}],
    )
    # PUB: multi-region and logging, but the bucket policy lets anyone read
    s3p = make_bucket(PUB, "pub-trail")
    s3p.put_bucket_policy(
        Bucket="pub-trail",
        Policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": "*",
                        "Action": "s3:GetObject",
                        "Resource": "arn:aws:s3:::pub-trail/*",
                    }
                ],
            }
        ),
    )
    pub = make_trail(PUB, "pub", "pub-trail", IsMultiRegionTrail=True, EnableLogFileValidation=True)
    client("cloudtrail", PUB).start_logging(Name=pub.arn)
    return Inventory(
        accounts=[Account(GOOD), Account(BAD), Account(PUB)],
        regions={GOOD: [R1, R2], BAD: [R1, R2], PUB: [R1]},
        trails=[good, bad, pub],
        sources=[],
        failures=[],
    )


@pytest.fixture
async def pool() -> AsyncIterator[ClientPool]:
    async with ClientPool(Aws(AwsSettings())) as p:
        yield p


def find(report: AuditReport, account: str, region: str, check: str) -> Finding:
    (f,) = [
        f for f in report.findings if (f.account_id, f.region, f.check) == (account, region, check)
    ]
    return f


ALL = AuditSettings(require_data_events=True, require_insights=True)


async def test_each_misconfiguration_is_flagged(seeded: Inventory, pool: ClientPool) -> None:
    report = await run_audit(seeded, pool_client_for(StsSessions(), pool), ALL)
    # the good trail passes every check in both regions
    for region in (R1, R2):
        bad_good = [
            f
            for f in report.findings
            if f.account_id == GOOD and f.region == region and f.status != "pass"
        ]
        assert bad_good == []
    expect_fail = {
        (BAD, R2, "trail_covered"): "3.1",
        (BAD, R1, "multi_region_trail"): "3.1",
        (BAD, R1, "logging_on"): "3.1",
        (BAD, R1, "management_events"): "3.1",
        (BAD, R1, "log_file_validation"): "3.2",
        (BAD, R1, "bucket_not_public"): "3.3",
        (BAD, R1, "cloudwatch_logs"): "3.4",
        (BAD, R1, "bucket_access_logging"): "3.6",
        (BAD, R1, "kms_encryption"): "3.7",
        (BAD, R1, "data_events_write"): "3.10",
        (BAD, R1, "data_events_read"): "3.11",
        (BAD, R1, "insights"): "",
        (BAD, R1, "bucket_versioning"): "",
        (BAD, R1, "bucket_object_lock"): "",
        (PUB, R1, "bucket_not_public"): "3.3",
    }
    for (acct, region, check), cis in expect_fail.items():
        f = find(report, acct, region, check)
        assert (f.status, f.cis) == ("fail", cis), f
    assert "AllUsers" in find(report, BAD, R1, "bucket_not_public").detail
    assert "policy" in find(report, PUB, R1, "bucket_not_public").detail
    assert find(report, BAD, R1, "management_events").detail == "bad: read=False write=True"
    assert find(report, PUB, R1, "log_file_validation").status == "pass"
    assert find(report, PUB, R1, "logging_on").status == "pass"
    failed = {(f.account_id, f.region, f.check) for f in report.failed()}
    assert failed >= set(expect_fail)


async def test_delivery_errors_from_trail_status(seeded: Inventory, pool: ClientPool) -> None:
    """moto never reports delivery errors: Stubber answers get_trail_status for one trail."""
    sessions = StsSessions()
    real = pool_client_for(sessions, pool)
    good = seeded.trails[0]
    stubbed = await real(GOOD, "cloudtrail", R1)
    stub_client_cm = (await sessions.session_for(GOOD)).client("cloudtrail", region_name=R1)
    async with stub_client_cm as stub_client:
        stub = Stubber(stub_client)
        stub.add_response(
            "get_trail_status",
            {"IsLogging": True, "LatestDeliveryError": "AccessDenied"},
            {"Name": good.arn},
        )

        class Mixed:
            def __getattr__(self, name: str) -> Any:
                return getattr(stub_client if name == "get_trail_status" else stubbed, name)

        async def client_for(account: str | None, service: str, region: str) -> Any:
            if account == GOOD and service == "cloudtrail":
                return Mixed()
            return await real(account, service, region)

        with stub:
            report = await run_audit(seeded, client_for, AuditSettings())
    f = find(report, GOOD, R1, "no_delivery_errors")
    assert f.status == "fail"
    assert "LatestDeliveryError: AccessDenied" in f.detail
    assert find(report, GOOD, R2, "no_delivery_errors").status == "fail"  # multi-region


async def test_unreadable_trail_is_unknown_not_pass(seeded: Inventory, pool: ClientPool) -> None:
    ghost = Trail(
        arn=f"arn:aws:cloudtrail:us-east-1:{PUB}:trail/ghost",
        name="ghost",
        owner_account_id=PUB,
        home_region=R1,
        bucket="no-such-bucket",
        key_prefix="",
        is_organization=False,
        is_multi_region=True,
    )
    inv = Inventory(
        accounts=[Account(PUB)], regions={PUB: [R1]}, trails=[ghost], sources=[], failures=[]
    )
    report = await run_audit(inv, pool_client_for(StsSessions(), pool), AuditSettings())
    assert find(report, PUB, R1, "log_file_validation").status == "unknown"
    assert find(report, PUB, R1, "bucket_not_public").status == "unknown"
    assert report.trails[0].error


async def test_outputs_and_metrics(seeded: Inventory, pool: ClientPool, tmp_path: Path) -> None:
    report = await run_audit(seeded, pool_client_for(StsSessions(), pool), AuditSettings())
    doc = json.loads(audit_json(report))
    assert doc["benchmark"] == "CIS AWS Foundations Benchmark v1.4.0"
    assert doc["counts"]["fail"] == len(report.failed()) > 0
    rows = list(csv.DictReader(io.StringIO(audit_csv(report.findings))))
    assert len(rows) == len(report.findings)
    assert {"account_id", "region", "check", "status", "cis", "description"} <= set(rows[0])
    buf = io.StringIO()
    print_audit_table(report, buf)
    text = buf.getvalue()
    assert "log_file_validation" in text
    assert "failed" in text
    reg = CollectorRegistry()
    audit_metrics(report, reg)
    v = reg.get_sample_value(
        "ctagg_audit_finding",
        {"account_id": BAD, "region": R1, "check": "log_file_validation", "cis": "3.2"},
    )
    assert v == 1.0
    v = reg.get_sample_value(
        "ctagg_audit_finding",
        {"account_id": GOOD, "region": R1, "check": "log_file_validation", "cis": "3.2"},
    )
    assert v == 0.0


def test_policy_is_public() -> None:
    """The audit reads bucket policies as detection does (aggregator/normalize/policy.py): a
    Condition narrows a grant to everyone only when it names who may come in."""
    allow = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}
    assert policy_is_public({"Statement": [dict(allow, Principal="*")]})
    assert policy_is_public({"Statement": dict(allow, Principal={"AWS": ["*"]})})
    narrowed = {"StringEquals": {"aws:SourceAccount": "111111111111"}}
    assert not policy_is_public({"Statement": [dict(allow, Principal="*", Condition=narrowed)]})
    unrelated = {"StringEquals": {"s3:prefix": "public/"}}
    assert policy_is_public({"Statement": [dict(allow, Principal="*", Condition=unrelated)]})
    assert not policy_is_public({"Statement": [dict(allow, Principal={"Service": "cloudtrail"})]})


@pytest.mark.parametrize("width", [80, 100, 120])
async def test_audit_table_fits_the_terminal(
    width: int, seeded: Inventory, pool: ClientPool
) -> None:
    """At each width no line is wider than the terminal and account, region, check and status
    are always shown; piped, every column is there."""
    from rich.console import Console

    report = await run_audit(seeded, pool_client_for(StsSessions(), pool), AuditSettings())
    console = Console(width=width, record=True, force_terminal=True, color_system=None)
    print_audit_table(report, None, console=console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width
    header = next(line for line in text.splitlines() if "┃" in line)
    for col in ("account", "region", "check", "status"):
        assert f" {col} " in header
    buf = io.StringIO()
    print_audit_table(report, buf)
    piped_header = next(line for line in buf.getvalue().splitlines() if "┃" in line)
    assert " trails " in piped_header
    assert " detail " in piped_header
