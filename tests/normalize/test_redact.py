"""Redaction by field path: applied before any schema mapping, never mutating the input."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from aggregator.config import ConfigError, parse_settings
from aggregator.config.normalize import NormalizeSettings
from aggregator.normalize import Normalizer, Redactor
from tests.normalize.corpus import TESTDATA, corpus_records

NOW = datetime(2026, 1, 1, tzinfo=UTC)
KEY = "k" * 32


def _record() -> dict[str, Any]:
    return {
        "eventVersion": "1.08",
        "eventTime": "2024-01-01T00:00:00Z",
        "eventSource": "sts.amazonaws.com",
        "eventName": "AssumeRole",
        "eventID": "e-1",
        "requestParameters": {"roleArn": "arn:aws:iam::1:role/x", "roleSessionName": "bob"},
        "responseElements": {
            "credentials": {
                "accessKeyId": "ASIAEXAMPLE",
                "sessionToken": "IQoJb3JpZ2luX2VjEXAMPLE",
                "secretAccessKey": "wJalrXUtnFEMI/K7MDENG",
                "expiration": "Jan 1, 2024",
            },
        },
        "resources": [{"ARN": "arn:1", "accountId": "1"}, {"ARN": "arn:2", "accountId": "2"}],
    }


def test_defaults_mask_session_credentials_in_every_schema() -> None:
    """Session tokens and secret keys never reach any sink with the default settings."""
    norm = Normalizer()
    for schema in ("ecs", "ocsf", "raw"):
        text = orjson.dumps(norm.normalize(_record(), schema, now=NOW))  # type: ignore[arg-type]
        assert b"IQoJb3JpZ2luX2VjEXAMPLE" not in text
        assert b"wJalrXUtnFEMI" not in text
        assert b"ASIAEXAMPLE" in text  # access key ids are not secret: kept for investigations
        assert b"[REDACTED]" in text


def test_defaults_remove_every_session_token_in_testdata() -> None:
    norm = Normalizer()
    found = 0
    for _, record, _ in corpus_records(TESTDATA):
        creds = (record.get("responseElements") or {}) if isinstance(record, dict) else {}
        token = (
            creds.get("credentials", {}).get("sessionToken") if isinstance(creds, dict) else None
        )
        if not isinstance(token, str) or len(token) < 16:  # skip placeholders like "1111"
            continue
        found += 1
        for schema in ("ecs", "ocsf", "raw"):
            out = orjson.dumps(norm.normalize(record, schema, now=NOW))  # type: ignore[arg-type]
            assert token.encode() not in out
    assert found >= 10


def test_drop_mask_hmac() -> None:
    red = Redactor(
        [
            ("responseElements.credentials.sessionToken", "drop"),
            ("requestParameters.roleSessionName", "hmac"),
            ("resources.accountId", "mask"),
        ],
        hmac_key=KEY.encode(),
        mask="***",
    )
    rec = _record()
    before = orjson.dumps(rec)
    out = red.apply(rec)
    assert orjson.dumps(rec) == before  # input untouched
    assert "sessionToken" not in out["responseElements"]["credentials"]
    assert out["responseElements"]["credentials"]["accessKeyId"] == "ASIAEXAMPLE"
    digest = hmac.new(KEY.encode(), b"bob", hashlib.sha256).hexdigest()
    assert out["requestParameters"]["roleSessionName"] == f"hmac-sha256:{digest}"
    assert [r["accountId"] for r in out["resources"]] == ["***", "***"]
    assert [r["ARN"] for r in out["resources"]] == ["arn:1", "arn:2"]
    # Unchanged branches are shared, not copied.
    assert out["eventID"] is rec["eventID"]


def test_wildcard_and_no_match_returns_same_object() -> None:
    red = Redactor([("requestParameters.*", "mask")])
    rec = _record()
    out = red.apply(rec)
    assert out["requestParameters"] == {"roleArn": "[REDACTED]", "roleSessionName": "[REDACTED]"}
    untouched = {"eventName": "X", "requestParameters": None}
    assert red.apply(untouched) is untouched


def test_hmac_is_keyed_and_stable() -> None:
    a = Redactor([("x", "hmac")], hmac_key=b"a" * 16).apply({"x": "v"})
    b = Redactor([("x", "hmac")], hmac_key=b"b" * 16).apply({"x": "v"})
    assert a["x"] != b["x"]
    assert a == Redactor([("x", "hmac")], hmac_key=b"a" * 16).apply({"x": "v"})
    nested = Redactor([("x", "hmac")], hmac_key=b"a" * 16).apply({"x": {"b": 1, "a": 2}})
    assert nested["x"].startswith("hmac-sha256:")


def test_bad_rules_are_rejected() -> None:
    with pytest.raises(ValueError, match="needs a key"):
        Redactor([("a", "hmac")])
    with pytest.raises(ValueError, match="unknown action"):
        Redactor([("a", "shred")])
    with pytest.raises(ValueError, match="empty path"):
        Redactor([("a..b", "mask")])


def test_redaction_happens_before_mapping() -> None:
    """A rule on a CloudTrail path also removes the value from derived ECS/OCSF fields."""
    settings = NormalizeSettings.model_validate(
        {"redaction": {"rules": [{"path": "userIdentity.userName", "action": "mask"}]}}
    )
    rec = _record()
    rec["userIdentity"] = {"type": "IAMUser", "userName": "alice", "principalId": "AID"}
    norm = Normalizer(settings)
    ecs = norm.normalize(rec, "ecs", now=NOW)
    ocsf = norm.normalize(rec, "ocsf", now=NOW)
    assert ecs["user"]["name"] == "[REDACTED]"
    assert ocsf["actor"]["user"]["name"] == "[REDACTED]"
    assert b"alice" not in orjson.dumps(ecs) + orjson.dumps(ocsf)


def test_config_hmac_key_from_env_and_errors_named_with_path() -> None:
    doc = {
        "archive": {"bucket": "central-bucket"},
        "normalize": {
            "redaction": {
                "rules": [{"path": "sourceIPAddress", "action": "hmac"}],
                "hmac_key": "${CTAGG_HMAC_KEY}",
            }
        },
    }
    settings = parse_settings(doc, env={"CTAGG_HMAC_KEY": KEY})
    key = settings.normalize.redaction.hmac_key
    assert key is not None
    assert key.get_secret_value() == KEY
    assert KEY not in repr(settings)
    with pytest.raises(ConfigError) as exc:
        parse_settings(doc, env={})
    assert any("normalize.redaction.hmac_key" in p for p in exc.value.problems)
    doc["normalize"]["redaction"].pop("hmac_key")  # type: ignore[attr-defined]
    with pytest.raises(ConfigError) as exc:
        parse_settings(doc, env={})
    assert any(
        p.startswith("normalize.redaction.hmac_key") and "required" in p for p in exc.value.problems
    )
    bad = {
        "archive": {"bucket": "central-bucket"},
        "normalize": {"redaction": {"rules": [{"path": "a..b"}]}},
    }
    with pytest.raises(ConfigError) as exc:
        parse_settings(bad, env={})
    assert any(p.startswith("normalize.redaction.rules[0].path") for p in exc.value.problems)
