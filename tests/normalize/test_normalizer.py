"""Normalizer behaviour across schemas: raw envelope, OCSF details, enrichment toggles and the
oversize policy (never dropped; a size-capped projection plus a pointer to the archive)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from aggregator.aws.inventory import Account
from aggregator.config.normalize import NormalizeSettings
from aggregator.normalize import SCHEMAS, EventContext, Normalizer, normalize, serialized_size

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
CTX = EventContext(
    account_name="prod",
    ou_path="Root/Prod",
    ou_ids=("r-1", "ou-1"),
    account_tags={"env": "prod"},
    organization_id="o-abcdefghij",
    archive_bucket="central",
    archive_key="AWSLogs/1/CloudTrail/eu-west-1/2024/01/01/f.json.gz",
)


def _record(**over: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "eventVersion": "1.08",
        "eventTime": "2024-01-01T00:00:01Z",
        "eventSource": "ec2.amazonaws.com",
        "eventName": "RunInstances",
        "awsRegion": "eu-west-1",
        "sourceIPAddress": "198.51.100.1, 10.1.2.3",
        "eventID": "ev-1",
        "recipientAccountId": "111111111111",
        "userIdentity": {"type": "IAMUser", "accountId": "222222222222", "userName": "a"},
    }
    rec.update(over)
    return rec


def test_raw_is_the_record_unchanged_with_sink_metadata() -> None:
    rec = _record()
    out = normalize(rec, "raw", now=NOW, context=CTX)
    assert out["event"] == rec
    assert out["sourcetype"] == "aws:cloudtrail"
    assert out["time"] == 1704067201.0
    assert out["source"] == f"s3://central/{CTX.archive_key}"
    assert out["fields"]["ctagg_ingest_time"] == "2026-01-01T12:00:00.000Z"
    assert out["fields"]["aws_account_name"] == "prod"
    assert out["fields"]["aws_account_tags"] == ["env=prod"]


def test_ocsf_accounts_and_multi_ip_source() -> None:
    out = normalize(_record(), "ocsf", now=NOW, context=CTX)
    # cloud.account.labels is OCSF 1.2: account tags sit under unmapped.ctagg in 1.1.0
    assert out["cloud"]["account"] == {"uid": "111111111111", "name": "prod"}
    assert out["unmapped"]["ctagg"]["account_tags"] == {"env": "prod"}
    assert out["actor"]["user"]["account"] == {"uid": "222222222222"}
    assert out["cloud"]["org"] == {"uid": "o-abcdefghij", "ou_name": "Root/Prod", "ou_uid": "ou-1"}
    assert out["src_endpoint"] == {"ip": "198.51.100.1", "intermediate_ips": ["10.1.2.3"]}
    assert out["metadata"]["processed_time"] == 1767268800000
    assert out["unmapped"]["ctagg"]["archive"]["bucket"] == "central"


def test_ocsf_console_login_failure_without_error_code() -> None:
    rec = _record(
        eventSource="signin.amazonaws.com",
        eventName="ConsoleLogin",
        responseElements={"ConsoleLogin": "Failure"},
        additionalEventData={"MFAUsed": "No", "LoginTo": "https://console.aws.amazon.com/"},
    )
    out = normalize(rec, "ocsf", now=NOW)
    assert (out["class_uid"], out["activity_id"], out["status_id"]) == (3002, 1, 2)
    assert out["is_mfa"] is False
    assert out["dst_endpoint"] == {"svc_name": "https://console.aws.amazon.com/"}


@pytest.mark.parametrize(
    ("source", "name", "class_uid", "activity_id"),
    [
        ("iam.amazonaws.com", "CreateUser", 3001, 1),
        ("iam.amazonaws.com", "DeleteUser", 3001, 6),
        ("iam.amazonaws.com", "AttachRolePolicy", 3001, 7),
        ("iam.amazonaws.com", "DetachRolePolicy", 3001, 8),
        ("iam.amazonaws.com", "EnableMFADevice", 3001, 10),
        ("iam.amazonaws.com", "UpdateAssumeRolePolicy", 3001, 99),
        ("iam.amazonaws.com", "ListUsers", 6003, 2),
        ("sts.amazonaws.com", "AssumeRoleWithSAML", 3002, 1),
        ("sts.amazonaws.com", "GetCallerIdentity", 6003, 2),
        ("signin.amazonaws.com", "CheckMfa", 3002, 99),
        ("s3.amazonaws.com", "PutBucketPolicy", 6003, 3),
        ("ec2.amazonaws.com", "TerminateInstances", 6003, 4),
        ("cloudtrail.amazonaws.com", "StopLogging", 6003, 3),
        ("x.amazonaws.com", "Frobnicate", 6003, 99),
    ],
)
def test_ocsf_classes(source: str, name: str, class_uid: int, activity_id: int) -> None:
    out = normalize(_record(eventSource=source, eventName=name), "ocsf", now=NOW)
    assert (out["class_uid"], out["activity_id"]) == (class_uid, activity_id)
    assert out["type_uid"] == class_uid * 100 + activity_id


def test_enrichment_toggles() -> None:
    settings = NormalizeSettings.model_validate(
        {"enrichment": {"account_tags": False, "organization_id": False}}
    )
    out = Normalizer(settings).normalize(_record(), "ecs", now=NOW, context=CTX)
    assert out["cloud"]["account"]["name"] == "prod"
    assert "organization" not in out
    assert "account" not in out["aws"]
    off = NormalizeSettings.model_validate({"enrichment": {"enabled": False}})
    out = Normalizer(off).normalize(_record(), "ecs", now=NOW, context=CTX)
    assert "name" not in out["cloud"]["account"]
    assert out["ctagg"]["archive"]["bucket"] == "central"  # the pointer is not enrichment


def test_context_from_discovery_account() -> None:
    acct = Account(id="111111111111", name="prod", ou_path="Root/Prod", ou_ids=("r-1", "ou-1"),
                   tags={"env": "prod"})  # fmt: skip
    ctx = EventContext.from_account(acct, organization_id="o-abcdefghij", archive_bucket="b")
    out = normalize(_record(), "ecs", now=NOW, context=ctx)
    assert out["cloud"]["account"]["name"] == "prod"
    assert out["aws"]["organization"]["ou_ids"] == ["r-1", "ou-1"]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_oversized_event_is_projected_with_a_pointer_never_dropped(schema: str) -> None:
    """Above max_event_bytes: a size-capped projection plus (bucket, key, eventID)."""
    big = {"items": [{"instanceId": f"i-{n:08d}", "blob": "x" * 2000} for n in range(400)]}
    rec = _record(responseElements=big, requestParameters={"userData": "y" * 50_000})
    settings = NormalizeSettings.model_validate({"max_event_bytes": 16384})
    norm = Normalizer(settings)
    out = norm.normalize(rec, schema, now=NOW, context=CTX)  # type: ignore[arg-type]
    assert serialized_size(out) <= 16384
    text = orjson.dumps(out)
    assert b"ev-1" in text
    if schema == "ecs":
        assert out["ctagg"]["truncated"] is True
        assert out["ctagg"]["archive"] == {
            "bucket": "central",
            "key": CTX.archive_key,
            "event_id": "ev-1",
        }
        assert out["event"]["action"] == "RunInstances"
        assert out["ctagg"]["original_bytes"] > 16384
    elif schema == "ocsf":
        assert out["unmapped"]["ctagg"]["archive"]["event_id"] == "ev-1"
        assert out["api"]["operation"] == "RunInstances"
    else:
        assert out["fields"]["ctagg_truncated"] == "true"
        assert out["fields"]["ctagg_archive_key"] == CTX.archive_key
        assert out["fields"]["ctagg_archive_event_id"] == "ev-1"
        assert out["event"]["eventName"] == "RunInstances"
        assert "responseElements" not in out["event"]


def test_small_events_are_not_projected() -> None:
    out = Normalizer().normalize(_record(), "ecs", now=NOW, context=CTX)
    assert "truncated" not in out["ctagg"]


def test_unknown_schema_and_non_object() -> None:
    with pytest.raises(ValueError, match="unknown schema"):
        normalize(_record(), "cef", now=NOW)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        normalize([], "ecs", now=NOW)  # type: ignore[arg-type]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_projection_of_absurd_records_still_fits(schema: str) -> None:
    """Huge keys everywhere: the last-resort projection still fits the cap."""
    rec = _record(**{("k" * 3000) + str(i): {("x" * 3000): "v"} for i in range(20)})
    rec["eventID"] = "e" * 5000
    settings = NormalizeSettings.model_validate({"max_event_bytes": 4096})
    out = Normalizer(settings).normalize(rec, schema, now=NOW)  # type: ignore[arg-type]
    assert serialized_size(out) <= 4096
    assert b"eeeeeeee" in orjson.dumps(out)


def _deep(depth: int, leaf: Any) -> Any:
    value = leaf
    for i in range(depth):
        value = {"a": value} if i % 2 else [value]
    return value


@pytest.mark.parametrize("depth", [10, 300, 1000])
@pytest.mark.parametrize("schema", SCHEMAS)
def test_deeply_nested_values_never_raise(schema: str, depth: int) -> None:
    """Nesting as deep as a JSON parser accepts (orjson: 1024) still gives an event, within the
    cap, from both APIs; redaction rules reaching into lists of lists do not recurse forever."""
    rec = _record(
        requestParameters={"deep": _deep(depth, "x")},
        userIdentity={"type": "IAMUser", "sessionContext": _deep(depth, "y")},
        resources=_deep(depth, {"accountId": "1"}),
    )
    data = orjson.dumps(rec) if depth < 250 else None
    if data is not None:
        assert orjson.loads(data) == rec
    settings = NormalizeSettings.model_validate(
        {"redaction": {"rules": [{"path": "resources.accountId", "action": "mask"}]}}
    )
    norm = Normalizer(settings)
    doc = norm.normalize(rec, schema, now=NOW, context=CTX)  # type: ignore[arg-type]
    assert serialized_size(doc) <= norm.max_event_bytes
    out = norm.encode(rec, schema, now=NOW, context=CTX)  # type: ignore[arg-type]
    assert len(out) <= norm.max_event_bytes
    assert b"ev-1" in out
