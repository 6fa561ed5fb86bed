"""ECS mapping: hand-checked golden outputs for real testdata records, and the odd values real
data carries (broken IPs, several IPs, placeholder regions, every event version and identity
type)."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from aggregator.normalize import EventContext, Normalizer, normalize
from tests.normalize.corpus import TESTDATA, corpus_records

NOW = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
GOLDEN = Path(__file__).parent / "golden" / "ecs"
CASES: dict[str, str] = json.loads((GOLDEN / "cases.json").read_text())


def _by_where() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for where, record, _ in corpus_records(TESTDATA):
        out.setdefault(where.replace(f"{TESTDATA}/", ""), record)
    return out


RECORDS = _by_where()


def _base(**over: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "eventVersion": "1.08",
        "eventTime": "2024-05-06T07:08:09Z",
        "eventSource": "ec2.amazonaws.com",
        "eventName": "DescribeInstances",
        "awsRegion": "eu-west-1",
        "sourceIPAddress": "198.51.100.7",
        "userAgent": "aws-cli/2",
        "eventID": "11111111-2222-3333-4444-555555555555",
        "eventType": "AwsApiCall",
        "recipientAccountId": "111111111111",
        "userIdentity": {
            "type": "IAMUser",
            "principalId": "AIDAEXAMPLE",
            "arn": "arn:aws:iam::222222222222:user/alice",
            "accountId": "222222222222",
            "userName": "alice",
        },
    }
    rec.update(over)
    return rec


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    """The ECS document equals the hand-checked expected output committed for the record."""
    record = RECORDS[CASES[name]]
    expected = json.loads((GOLDEN / f"{name}.json").read_text())
    assert normalize(record, "ecs", now=NOW) == expected


def test_golden_cases_cover_the_issue_list() -> None:
    expected = {
        "console_login_success_mfa": ("ConsoleLogin", "success"),
        "console_login_failure": ("ConsoleLogin", "failure"),
        "console_login_no_mfa_invalid_ip": ("ConsoleLogin", "success"),
        "root_console_login": ("ConsoleLogin", "success"),
        "assume_role_by_service": ("AssumeRole", "success"),
        "iam_create_user": ("CreateUser", "success"),
        "s3_get_object": ("GetObject", "success"),
        "insight": ("ApiCallRateInsight", "unknown"),
        "eventbridge_create_bucket": ("CreateBucket", "success"),
    }
    for name, (action, outcome) in expected.items():
        doc = json.loads((GOLDEN / f"{name}.json").read_text())
        assert doc["event"]["action"] == action
        assert doc["event"]["outcome"] == outcome


def test_console_login_facts() -> None:
    """No-MFA, root and failed console logins carry the facts detections need."""
    no_mfa = normalize(RECORDS[CASES["console_login_no_mfa_invalid_ip"]], "ecs", now=NOW)
    assert no_mfa["aws"]["cloudtrail"]["console_login"]["additional_eventdata"]["mfa_used"] is False
    root = normalize(RECORDS[CASES["root_console_login"]], "ecs", now=NOW)
    assert root["aws"]["cloudtrail"]["user_identity"]["type"] == "Root"
    assert root["user"]["name"] == "root"
    failed = normalize(RECORDS[CASES["console_login_failure"]], "ecs", now=NOW)
    assert failed["event"]["outcome"] == "failure"
    assert failed["error"]["message"] == "No username found in supplied account"


@pytest.mark.parametrize(
    ("value", "ip", "domain", "related"),
    [
        ("198.51.100.7", "198.51.100.7", None, ["198.51.100.7"]),
        ("2001:db8::1", "2001:db8::1", None, ["2001:db8::1"]),
        ("225.01.00.16", None, None, None),  # leading zeros: not a valid address
        ("253.252.51.07", None, None, None),
        ("AWS Internal", None, None, None),
        ("cloudformation.amazonaws.com", None, "cloudformation.amazonaws.com", None),
        ("10.0.0.1, 192.0.2.3", "10.0.0.1", None, ["10.0.0.1", "192.0.2.3"]),
        ("10.0.0.1 192.0.2.3", "10.0.0.1", None, ["10.0.0.1", "192.0.2.3"]),
        ("<Attacker source IP>", None, None, None),
        ("", None, None, None),
    ],
)
def test_source_ip_only_for_valid_ips(
    value: str, ip: str | None, domain: str | None, related: list[str] | None
) -> None:
    """source.ip holds a valid IP only; anything else stays in source.address."""
    doc = normalize(_base(sourceIPAddress=value), "ecs", now=NOW)
    source = doc.get("source", {})
    assert source.get("ip") == ip
    assert source.get("domain") == domain
    assert doc.get("related", {}).get("ip") == related
    if value:
        assert source["address"] == value
    else:
        assert "source" not in doc


def test_region_placeholder_is_not_a_region() -> None:
    doc = normalize(_base(awsRegion="<region-code>"), "ecs", now=NOW)
    assert "region" not in doc["cloud"]
    assert doc["aws"]["cloudtrail"]["aws_region"] == "<region-code>"
    assert normalize(_base(), "ecs", now=NOW)["cloud"]["region"] == "eu-west-1"


def test_recipient_and_actor_accounts_are_both_kept() -> None:
    """cloud.account.id is the logging account; the actor's account is never merged into it."""
    doc = normalize(_base(), "ecs", now=NOW)
    assert doc["cloud"]["account"]["id"] == "111111111111"
    assert doc["aws"]["cloudtrail"]["user_identity"]["account_id"] == "222222222222"
    assert doc["aws"]["cloudtrail"]["recipient_account_id"] == "111111111111"
    no_recipient = _base()
    del no_recipient["recipientAccountId"]
    assert "account" not in normalize(no_recipient, "ecs", now=NOW)["cloud"]


@pytest.mark.parametrize("version", [f"1.{n:02d}" for n in range(1, 12)] + ["1.0"])
def test_event_versions(version: str) -> None:
    doc = normalize(_base(eventVersion=version), "ecs", now=NOW)
    assert doc["aws"]["cloudtrail"]["event_version"] == version


def test_every_event_version_in_testdata() -> None:
    seen: dict[Any, int] = defaultdict(int)
    for record in RECORDS.values():
        doc = normalize(record, "ecs", now=NOW)
        version = record.get("eventVersion")
        seen[version] += 1
        if isinstance(version, str):
            assert doc["aws"]["cloudtrail"]["event_version"] == version
    assert {"1.0", "1.02", "1.05", "1.08", "1.09", "1.10", "1.11"} <= set(seen)


def test_every_identity_type_in_testdata() -> None:
    """Each userIdentity.type found in the testdata maps to user.* and user_identity.type."""
    types: dict[Any, int] = defaultdict(int)
    for record in RECORDS.values():
        ui = record.get("userIdentity")
        if not isinstance(ui, dict):
            continue
        doc = normalize(record, "ecs", now=NOW)
        types[ui.get("type")] += 1
        if ui.get("type") is not None:
            assert doc["aws"]["cloudtrail"]["user_identity"]["type"] == ui["type"]
        if ui.get("userName"):
            assert doc["user"]["name"] == ui["userName"]
        if ui.get("principalId"):
            assert doc["user"]["id"] == ui["principalId"]
    assert {
        "IAMUser",
        "AssumedRole",
        "Root",
        "AWSService",
        "AWSAccount",
        "SAMLUser",
        "WebIdentityUser",
        "FederatedUser",
        "Unknown",
    } <= set(types)


def test_polymorphic_fields_are_json_text_plus_flattened() -> None:
    rp = {"filter": [{"name": "x", "values": ["a", "b"]}], "maxResults": 5, "dryRun": False}
    doc = normalize(_base(requestParameters=rp), "ecs", now=NOW)
    ct = doc["aws"]["cloudtrail"]
    assert orjson.loads(ct["request_parameters"]) == rp
    assert ct["flattened"]["request_parameters"] == {
        "filter.name": "x",
        "filter.values": ["a", "b"],
        "maxResults": "5",
        "dryRun": "false",
    }
    assert "flattened_truncated" not in ct


def test_flattened_copy_is_size_capped() -> None:
    rp = {f"k{i}": "v" * 100 for i in range(1000)}
    norm = Normalizer()
    doc = norm.normalize(_base(requestParameters=rp), "ecs", now=NOW)
    ct = doc["aws"]["cloudtrail"]
    flat = ct["flattened"]["request_parameters"]
    assert ct["flattened_truncated"] is True
    assert sum(len(k) + len(v) for k, v in flat.items()) <= norm.settings.flatten_max_bytes
    assert orjson.loads(ct["request_parameters"]) == rp  # the JSON text stays complete


def test_types_are_stable_across_the_whole_testdata() -> None:
    """Every field path under aws.cloudtrail has one JSON type over all testdata records, so a
    single index mapping accepts every event."""
    types: dict[str, set[str]] = defaultdict(set)

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            if path.startswith("aws.cloudtrail.flattened.") and path.count(".") == 3:
                for k, v in value.items():  # flat_object leaves: strings or lists of strings
                    vals = v if isinstance(v, list) else [v]
                    assert all(isinstance(x, str) for x in vals), (path, k, v)
                return
            for k, v in value.items():
                walk(v, f"{path}.{k}" if path else k)
        elif isinstance(value, list):
            for v in value:
                walk(v, path)
        else:
            types[path].add(type(value).__name__)

    for record in RECORDS.values():
        walk(normalize(record, "ecs", now=NOW), "")
    unstable = {p: t for p, t in types.items() if len(t) > 1}
    assert unstable == {}
    assert types["aws.cloudtrail.request_parameters"] == {"str"}


def test_invalid_event_time_falls_back_to_now_and_is_tagged() -> None:
    doc = normalize(_base(eventTime="yesterday"), "ecs", now=NOW)
    assert doc["@timestamp"] == "2026-01-02T03:04:05.678Z"
    assert doc["tags"] == ["ctagg_invalid_event_time"]
    assert doc["aws"]["cloudtrail"]["invalid_event_time"] == "yesterday"


def test_timestamps() -> None:
    doc = normalize(_base(eventTime="2024-05-06T07:08:09Z"), "ecs", now=NOW)
    assert doc["@timestamp"] == "2024-05-06T07:08:09Z"
    assert doc["event"]["created"] == "2026-01-02T03:04:05.678Z"


def test_error_code_is_failure() -> None:
    doc = normalize(_base(errorCode="AccessDenied", errorMessage="no"), "ecs", now=NOW)
    assert doc["event"]["outcome"] == "failure"
    assert doc["error"] == {"code": "AccessDenied", "message": "no"}


@pytest.mark.parametrize(
    ("source", "name", "category", "type_"),
    [
        ("iam.amazonaws.com", "CreateUser", ["iam"], ["user", "creation"]),
        ("iam.amazonaws.com", "AddUserToGroup", ["iam"], ["group", "change"]),
        ("iam.amazonaws.com", "AttachRolePolicy", ["iam"], ["admin", "change"]),
        ("iam.amazonaws.com", "ListUsers", ["iam"], ["user", "info"]),
        ("s3.amazonaws.com", "GetObject", ["file"], ["access"]),
        ("s3.amazonaws.com", "PutObject", ["file"], ["creation"]),
        ("s3.amazonaws.com", "DeleteObject", ["file"], ["deletion"]),
        ("s3.amazonaws.com", "PutBucketPolicy", ["configuration"], ["change"]),
        ("ec2.amazonaws.com", "RunInstances", ["host"], ["start"]),
        ("ec2.amazonaws.com", "TerminateInstances", ["host"], ["end"]),
        ("sts.amazonaws.com", "AssumeRole", ["authentication"], ["info"]),
        ("sts.amazonaws.com", "GetCallerIdentity", ["iam"], ["info"]),
        ("kms.amazonaws.com", "Decrypt", ["configuration"], ["access"]),
        ("kms.amazonaws.com", "ScheduleKeyDeletion", ["configuration"], ["deletion"]),
        ("signin.amazonaws.com", "ConsoleLogin", ["authentication"], ["info"]),
        ("signin.amazonaws.com", "ConsoleLogout", ["authentication", "session"], ["end"]),
        ("s3.amazonaws.com", "DeleteBucket", ["file"], ["deletion"]),
    ],
)
def test_event_category_and_type(
    source: str, name: str, category: list[str], type_: list[str]
) -> None:
    doc = normalize(_base(eventSource=source, eventName=name), "ecs", now=NOW)
    assert doc["event"]["category"] == category
    assert doc["event"]["type"] == type_


def test_enrichment_and_archive_pointer() -> None:
    ctx = EventContext(
        account_name="prod-payments",
        ou_path="Root/Prod",
        ou_ids=("r-ab12", "ou-ab12-11111111"),
        account_tags={"env": "prod"},
        organization_id="o-abcdefghij",
        archive_bucket="central",
        archive_key="AWSLogs/111111111111/CloudTrail/eu-west-1/x.json.gz",
    )
    doc = normalize(_base(), "ecs", now=NOW, context=ctx)
    assert doc["cloud"]["account"] == {"id": "111111111111", "name": "prod-payments"}
    assert doc["organization"] == {"id": "o-abcdefghij"}
    assert doc["aws"]["organization"] == {
        "ou_path": "Root/Prod",
        "ou_ids": ["r-ab12", "ou-ab12-11111111"],
    }
    assert doc["aws"]["account"] == {"tags": {"env": "prod"}}
    assert doc["ctagg"]["archive"]["bucket"] == "central"


def test_input_is_not_mutated() -> None:
    rec = _base(
        responseElements={"credentials": {"sessionToken": "IQoJ-secret", "accessKeyId": "ASIA"}}
    )
    before = orjson.dumps(rec)
    for schema in ("ecs", "ocsf", "raw"):
        normalize(rec, schema, now=NOW)  # type: ignore[arg-type]
    assert orjson.dumps(rec) == before
