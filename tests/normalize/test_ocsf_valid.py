"""Every OCSF event ctagg makes from the shared testdata is valid by the official OCSF 1.1.0
schema (../shared/reference/ocsf-schema-1.1.0, compiled by ocsf-lib; see ocsf_schema.py for
what is checked), with and without enrichment, and so is every oversize projection."""

from __future__ import annotations

import copy
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aggregator.config.normalize import NormalizeSettings
from aggregator.ingest.envelopes import Kind
from aggregator.normalize import EventContext, Normalizer, normalize
from tests.normalize.corpus import corpus_records
from tests.normalize.ocsf_schema import Problem, Validator

NOW = datetime(2026, 1, 1, tzinfo=UTC)
FULL = EventContext(
    account_name="prod",
    ou_path="Root/Prod",
    ou_ids=("ou-root-1", "ou-prod-2"),
    account_tags={"env": "prod", "owner": "sec"},
    organization_id="o-abcdefghij",
    archive_bucket="central",
    archive_key="AWSLogs/o-abcdefghij/111111111111/CloudTrail/eu-west-1/2026/01/01/x.json.gz",
)


@pytest.fixture(scope="module")
def validator() -> Validator:
    return Validator()


def _events(testdata: Path) -> list[tuple[str, dict[str, Any]]]:
    return [(w, r) for w, r, k in corpus_records(testdata) if k is not Kind.DIGEST]


def _report(problems: dict[str, list[Problem]]) -> str:
    counts = Counter(f"{p.path}: {p.what}"[:120] for ps in problems.values() for p in ps)
    return "\n".join(f"{n:5d} {what}" for what, n in counts.most_common(25))


@pytest.mark.parametrize("context", [FULL, None], ids=["enriched", "bare"])
def test_every_event_is_valid_ocsf_1_1_0(
    testdata: Path, validator: Validator, context: EventContext | None
) -> None:
    """100% of the normalized events pass the schema: required attributes, attributes that
    exist where used, enum values and types, at-least-one constraints, profiles."""
    norm = Normalizer()
    events = _events(testdata)
    bad: dict[str, list[Problem]] = {}
    classes: Counter[int] = Counter()
    for where, record in events:
        out = norm.normalize(record, "ocsf", now=NOW, context=context)
        classes[out["class_uid"]] += 1
        problems = validator.validate(out)
        if problems:
            bad[where] = problems
    valid = len(events) - len(bad)
    print(f"OCSF 1.1.0 validity: {valid}/{len(events)} events ({valid / len(events):.1%})")
    assert len(events) > 1100
    assert set(classes) == {3001, 3002, 6003}  # all three classes are exercised
    assert bad == {}, _report(bad)


def test_every_oversize_projection_is_valid(testdata: Path, validator: Validator) -> None:
    """With the smallest size cap many events take the oversize path; the projection keeps
    what OCSF requires (actor, src_endpoint, user, ...) and stays valid."""
    norm = Normalizer(NormalizeSettings(max_event_bytes=4096))
    truncated = 0
    bad: dict[str, list[Problem]] = {}
    for where, record in _events(testdata):
        out = norm.normalize(record, "ocsf", now=NOW, context=FULL)
        if "truncated" not in out.get("unmapped", {}).get("ctagg", {}):
            continue
        truncated += 1
        assert "actor" in out
        assert "src_endpoint" in out
        problems = validator.validate(out)
        if problems:
            bad[where] = problems
    assert truncated >= 20
    assert bad == {}, _report(bad)


def test_last_resort_projection_is_valid(validator: Validator) -> None:
    """An event whose every key is absurd takes the identifiers-only projection, which still
    carries every attribute OCSF requires."""
    long = "x" * 3000
    record: dict[str, Any] = {
        "eventVersion": "1.08",
        "eventTime": "2026-01-01T00:00:00Z",
        "eventSource": "iam.amazonaws.com",
        "eventName": "CreateUser" + long,
        "eventID": "e1",
        "eventType": "AwsApiCall" + long,
        "awsRegion": "eu-west-1",
        "recipientAccountId": "111111111111",
        "sourceIPAddress": "service" + long,
        "userAgent": long,
        "userIdentity": {
            "type": "IAMUser",
            "arn": "arn:aws:iam::111111111111:user/a" + long,
            "userName": long,
            "principalId": long,
        },
        "requestParameters": {"userName": long},
    }
    out = Normalizer(NormalizeSettings(max_event_bytes=4096)).normalize(
        record, "ocsf", now=NOW, context=FULL
    )
    assert out["unmapped"]["ctagg"]["truncated"] is True
    assert "class_name" not in out  # the identifiers-only projection
    assert validator.validate(out) == []


# ----------------------------------------------------------------- the defects, one by one


def _rec(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "eventVersion": "1.08",
        "eventTime": "2026-01-01T00:00:00Z",
        "eventSource": "ec2.amazonaws.com",
        "eventName": "DescribeInstances",
        "eventID": "e1",
        "eventType": "AwsApiCall",
        "awsRegion": "eu-west-1",
        "recipientAccountId": "111111111111",
        "sourceIPAddress": "198.51.100.1",
        "userIdentity": {
            "type": "IAMUser",
            "arn": "arn:aws:iam::111111111111:user/alice",
            "accountId": "111111111111",
            "userName": "alice",
        },
    }
    base.update(kw)
    return base


def test_account_tags_are_not_written_as_1_2_labels(validator: Validator) -> None:
    """Enrichment's account tags go to unmapped (cloud.account.labels is OCSF 1.2 only)."""
    out = normalize(_rec(), "ocsf", now=NOW, context=FULL)
    assert "labels" not in out["cloud"]["account"]
    assert out["unmapped"]["ctagg"]["account_tags"] == {"env": "prod", "owner": "sec"}
    assert validator.validate(out) == []


@pytest.mark.parametrize(
    ("source", "endpoint"),
    [
        ("AWS Internal", {"svc_name": "AWS Internal"}),
        (
            "cloudformation.amazonaws.com",
            {"svc_name": "cloudformation.amazonaws.com", "domain": "cloudformation.amazonaws.com"},
        ),
        ("225.01.00.16", {"name": "225.01.00.16"}),
        ("198.51.100.1, 10.0.0.1", {"ip": "198.51.100.1", "intermediate_ips": ["10.0.0.1"]}),
    ],
)
def test_source_that_is_not_an_ip_keeps_src_endpoint(
    validator: Validator, source: str, endpoint: dict[str, Any]
) -> None:
    """'AWS Internal' and service names fill src_endpoint.svc_name (the at-least-one
    constraint holds); an invalid IP is named as given."""
    out = normalize(_rec(sourceIPAddress=source), "ocsf", now=NOW)
    assert out["src_endpoint"] == endpoint
    assert validator.validate(out) == []


def test_aws_service_actor_is_named_by_invoked_by(validator: Validator) -> None:
    """An AWSService identity ({type, invokedBy}) becomes a named actor.user."""
    ui = {"type": "AWSService", "invokedBy": "config.amazonaws.com"}
    out = normalize(_rec(userIdentity=ui, sourceIPAddress=None), "ocsf", now=NOW)
    assert out["actor"]["user"] == {"type": "AWSService", "name": "config.amazonaws.com"}
    assert out["actor"]["invoked_by"] == "config.amazonaws.com"
    assert out["src_endpoint"] == {"svc_name": "config.amazonaws.com"}
    assert validator.validate(out) == []


def test_authentication_has_no_resources_and_names_its_service(validator: Validator) -> None:
    """3002 has no resources attribute in 1.1.0: they stay in unmapped; service carries the
    eventSource (Authentication needs service or dst_endpoint)."""
    res = [{"ARN": "arn:aws:iam::111111111111:role/r", "type": "AWS::IAM::Role"}]
    rec = _rec(
        eventSource="sts.amazonaws.com",
        eventName="AssumeRole",
        resources=res,
        requestParameters={"roleArn": "arn:aws:iam::111111111111:role/r", "roleSessionName": "s"},
    )
    out = normalize(rec, "ocsf", now=NOW)
    assert out["class_uid"] == 3002
    assert "resources" not in out
    assert out["unmapped"]["resources"] == res
    assert out["service"] == {"name": "sts.amazonaws.com"}
    assert "host" in out["metadata"]["profiles"]  # actor is a host-profile attribute of 3002
    assert validator.validate(out) == []


def test_account_change_without_request_parameters_names_the_actor(
    validator: Validator,
) -> None:
    """requestParameters null (ChangePassword by the user itself): user is the actor, not {}."""
    rec = _rec(eventSource="iam.amazonaws.com", eventName="ChangePassword", requestParameters=None)
    out = normalize(rec, "ocsf", now=NOW)
    assert out["class_uid"] == 3001
    assert out["user"]["uid"] == "arn:aws:iam::111111111111:user/alice"
    assert out["user"]["name"] == "alice"
    assert validator.validate(out) == []


def test_resources_without_an_arn_stay_unmapped(validator: Validator) -> None:
    """resources[] entries: ARN (or arn) → uid, ARNPrefix → name; entries with neither are
    kept in unmapped rather than emitted without an identifier."""
    res = [
        {"ARN": "arn:aws:s3:::b", "type": "AWS::S3::Bucket", "accountId": "111111111111"},
        {"arn": "arn:aws:s3:::b/k", "type": "AWS::S3::Object"},
        {"ARNPrefix": "arn:aws:s3:::b/", "type": "AWS::S3::Object"},
        {"type": "AWS::S3::Object", "accountId": "111111111111"},
    ]
    out = normalize(_rec(resources=res), "ocsf", now=NOW)
    assert out["resources"] == [
        {"uid": "arn:aws:s3:::b", "type": "AWS::S3::Bucket",
         "owner": {"account": {"uid": "111111111111"}}},
        {"uid": "arn:aws:s3:::b/k", "type": "AWS::S3::Object"},
        {"name": "arn:aws:s3:::b/", "type": "AWS::S3::Object"},
    ]  # fmt: skip
    assert out["unmapped"]["resources"] == [res[3]]
    assert validator.validate(out) == []


def test_insights_event_has_cloudtrail_as_actor_and_source(
    testdata: Path, validator: Validator
) -> None:
    """An Insights event has no userIdentity or sourceIPAddress: CloudTrail Insights is the
    actor (invoked_by) and the source service, as OCSF requires both."""
    insights = [r for _, r, k in corpus_records(testdata) if k is Kind.INSIGHT]
    assert insights
    for record in insights:
        out = normalize(record, "ocsf", now=NOW)
        assert out["actor"] == {"invoked_by": "cloudtrail.amazonaws.com"}
        assert out["src_endpoint"] == {"svc_name": "cloudtrail.amazonaws.com"}
        assert validator.validate(out) == []


# ----------------------------------------------------------------- the validator itself


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda d: d["cloud"]["account"].__setitem__("labels", ["a:b"]), "not an attribute"),
        (lambda d: d.pop("src_endpoint"), "required by api_activity"),
        (lambda d: d.__setitem__("src_endpoint", {"domain": "x.example"}), "at least one"),
        (lambda d: d.__setitem__("severity_id", 42), "not in the enum"),
        (lambda d: d.__setitem__("time", "yesterday"), "is not a timestamp_t"),
        (lambda d: d.__setitem__("time_dt", "2026-01-01 00:00"), "does not match datetime_t"),
        (lambda d: d["src_endpoint"].__setitem__("ip", "225.01.00.16"), "does not match ip_t"),
        (lambda d: d.__setitem__("resources", {"uid": "x"}), "must be an array"),
        (lambda d: d.__setitem__("activity_name", "Delete"), "is not 'Read'"),
        (lambda d: d.__setitem__("type_uid", 600301), "type_uid"),
        (lambda d: d["metadata"].__setitem__("profiles", ["datetime"]), "profile 'cloud'"),
        (lambda d: d["api"].__setitem__("request", {}), "required by request"),
    ],
)
def test_validator_catches_planted_defects(validator: Validator, change: Any, needle: str) -> None:
    """The check can fail: each planted defect is reported."""
    out = copy.deepcopy(normalize(_rec(), "ocsf", now=NOW, context=FULL))
    assert validator.validate(out) == []
    change(out)
    problems = validator.validate(out)
    assert any(needle in str(p) for p in problems), problems


def test_a_class_or_object_own_constraints_win_over_its_parent(validator: Validator) -> None:
    """network_endpoint's own at-least-one (ip, hostname, svc_name, ...) replaces _entity's
    (name, uid), and file's empty constraints remove them."""
    objects = validator.schema["objects"]
    assert "svc_name" in objects["network_endpoint"]["constraints"]["at_least_one"]
    assert objects["file"]["constraints"] == {}
    assert validator.schema["classes"]["authentication"]["constraints"] == {
        "at_least_one": ["service", "dst_endpoint"]
    }
