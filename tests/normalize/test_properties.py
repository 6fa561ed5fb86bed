"""Property tests: any JSON object shaped like a CloudTrail record normalizes to all three
schemas without an exception, and the output is orjson-serializable."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator.config.normalize import NormalizeSettings
from aggregator.normalize import SCHEMAS, EventContext, Normalizer, serialized_size

NOW = datetime(2026, 1, 1, tzinfo=UTC)
# JSON numbers as a JSON parser produces them (orjson: 64-bit integers, finite floats).
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)

KEYS = [
    "eventVersion", "eventTime", "eventSource", "eventName", "awsRegion", "sourceIPAddress",
    "userAgent", "requestParameters", "responseElements", "additionalEventData", "requestID",
    "eventID", "eventType", "apiVersion", "readOnly", "managementEvent", "recipientAccountId",
    "sharedEventID", "vpcEndpointId", "eventCategory", "errorCode", "errorMessage",
    "serviceEventDetails", "insightDetails", "tlsDetails", "resources", "userIdentity",
    "sessionCredentialFromConsole", "edgeDeviceDetails", "addendum",
]  # fmt: skip
typical = {
    "eventTime": st.sampled_from(["2024-01-01T00:00:00Z", "2024-13-99", "", "<time>"])
    | st.datetimes().map(lambda d: d.isoformat()),
    "eventSource": st.sampled_from(
        ["iam.amazonaws.com", "sts.amazonaws.com", "signin.amazonaws.com", "s3.amazonaws.com"]
    ),
    "eventName": st.sampled_from(
        ["ConsoleLogin", "AssumeRole", "CreateUser", "GetObject", "AttachRolePolicy", "X", ""]
    ),
    "sourceIPAddress": st.sampled_from(
        ["1.2.3.4", "225.01.00.16", "AWS Internal", "a.amazonaws.com", "1.2.3.4, ::1", "", "."]
    ),
    "awsRegion": st.sampled_from(["us-east-1", "<region-code>", "", "eu-west-2r"]),
    "eventType": st.sampled_from(["AwsApiCall", "AwsConsoleSignIn", "AwsCloudTrailInsight"]),
    "userIdentity": st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(
                ["IAMUser", "AssumedRole", "Root", "AWSService", "FederatedUser", "Unknown"]
            )
            | json_values,
            "arn": st.text(max_size=30) | json_values,
            "userName": json_values,
            "principalId": json_values,
            "accountId": json_values,
            "invokedBy": json_values,
            "sessionContext": st.fixed_dictionaries(
                {},
                optional={
                    "attributes": st.dictionaries(st.text(max_size=16), json_values),
                    "sessionIssuer": st.dictionaries(st.text(max_size=10), json_values),
                },
            )
            | json_values,
        },
    ),
    "responseElements": st.fixed_dictionaries(
        {},
        optional={
            "ConsoleLogin": json_values,
            "credentials": st.dictionaries(st.text(max_size=14), json_values),
            "assumedRoleUser": json_values,
        },
    )
    | json_values,
    "additionalEventData": st.fixed_dictionaries(
        {}, optional={"MFAUsed": json_values, "LoginTo": json_values}
    )
    | json_values,
    "insightDetails": st.dictionaries(st.text(max_size=12), json_values) | json_values,
    "resources": st.lists(st.dictionaries(st.text(max_size=8), json_values), max_size=3)
    | json_values,
}


def _value(key: str) -> st.SearchStrategy[Any]:
    return typical[key] | json_values if key in typical else json_values


records = st.fixed_dictionaries({}, optional={k: _value(k) for k in KEYS}).flatmap(
    lambda base: st.dictionaries(st.text(max_size=10), json_values, max_size=3).map(
        lambda extra: {**extra, **base}
    )
)

CONTEXTS = [
    None,
    EventContext(
        account_name="n", ou_path="Root/A", ou_ids=("r", "ou"), account_tags={"k": "v"},
        organization_id="o-abcdefghij", archive_bucket="b", archive_key="k",
    ),
]  # fmt: skip
NORMALIZERS = [
    Normalizer(),
    Normalizer(
        NormalizeSettings.model_validate(
            {
                "max_event_bytes": 4096,
                "flatten_max_bytes": 1024,
                "flatten_max_fields": 16,
                "redaction": {
                    "rules": [
                        {"path": "userIdentity.*", "action": "hmac"},
                        {"path": "resources.ARN", "action": "drop"},
                    ],
                    "hmac_key": "0123456789abcdef",
                },
            }
        )
    ),
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=records, ctx=st.sampled_from(CONTEXTS), which=st.sampled_from([0, 1]))
def test_any_record_shaped_object_normalizes(
    record: dict[str, Any], ctx: EventContext | None, which: int
) -> None:
    norm = NORMALIZERS[which]
    before = repr(record)
    for schema in SCHEMAS:
        out = norm.normalize(record, schema, now=NOW, context=ctx)  # type: ignore[arg-type]
        assert isinstance(out, dict)
        orjson.dumps(out)  # serializable
        if which == 1:
            assert serialized_size(out) <= 4096
    assert repr(record) == before  # never mutated


@settings(max_examples=200, deadline=None)
@given(record=st.dictionaries(st.text(max_size=20), json_values, max_size=8))
def test_any_json_object_normalizes(record: dict[str, Any]) -> None:
    for schema in SCHEMAS:
        orjson.dumps(NORMALIZERS[0].normalize(record, schema, now=NOW))  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=records, which=st.sampled_from([0, 1]))
def test_encode_is_normalize_serialized_and_capped(record: dict[str, Any], which: int) -> None:
    """encode() gives the bytes of normalize() (one serialization), within the size cap."""
    norm = NORMALIZERS[which]
    for schema in SCHEMAS:
        data = norm.encode(record, schema, now=NOW)  # type: ignore[arg-type]
        doc = norm.normalize(record, schema, now=NOW)  # type: ignore[arg-type]
        assert orjson.loads(data) == orjson.loads(orjson.dumps(doc))
        assert len(data) <= norm.max_event_bytes
