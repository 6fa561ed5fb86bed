"""Forwarded events carry discovery's enrichment and honour the normalize config."""

from __future__ import annotations

import orjson

from aggregator.aws.inventory import Account
from aggregator.config import parse_settings
from aggregator.forward.documents import default_normalizer

CENTRAL = "AWSLogs/111111111111/CloudTrail/us-east-1/2024/05/01/x.json.gz"
RECORD = {
    "eventVersion": "1.08",
    "eventTime": "2024-05-01T10:00:00Z",
    "eventSource": "sts.amazonaws.com",
    "eventName": "GetSessionToken",
    "awsRegion": "us-east-1",
    "eventID": "e-1",
    "recipientAccountId": "111111111111",
    "userIdentity": {"type": "IAMUser", "accountId": "111111111111", "userName": "alice"},
    "responseElements": {"credentials": {"sessionToken": "TOPSECRET", "accessKeyId": "ASIA1"}},
}


def test_account_name_ou_and_tags_come_from_discovery() -> None:
    accounts = {
        "111111111111": Account(
            "111111111111", "payments", ou_path="Root/Prod", tags={"env": "prod"}
        )
    }
    norm = default_normalizer("central", accounts=accounts.get, organization_id=lambda: "o-abc")
    doc = orjson.loads(norm(dict(RECORD), "ecs", CENTRAL))
    assert doc["cloud"]["account"]["id"] == "111111111111"
    assert doc["cloud"]["account"]["name"] == "payments"
    text = orjson.dumps(doc).decode()
    assert "Root/Prod" in text
    assert "o-abc" in text
    assert "TOPSECRET" not in text  # default redaction applies before any sink


def test_configured_redaction_is_used() -> None:
    settings = parse_settings(
        {
            "archive": {"bucket": "central"},
            "normalize": {
                "redaction": {"rules": [{"path": "userIdentity.userName", "action": "drop"}]}
            },
        },
        {},
    )
    norm = default_normalizer("central", settings.normalize)
    text = norm(dict(RECORD), "ocsf", CENTRAL)
    assert isinstance(text, bytes)
    assert b"alice" not in text
