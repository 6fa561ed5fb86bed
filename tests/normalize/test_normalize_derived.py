"""Detection's derived fields (ctagg.public, ctagg.ingress_cidrs) in normalized output."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aggregator.normalize import normalize

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def record(name: str, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "eventVersion": "1.08",
        "eventTime": "2026-12-01T00:00:00Z",
        "eventSource": "ec2.amazonaws.com",
        "eventName": name,
        "awsRegion": "us-east-1",
        "eventID": "e1",
        "recipientAccountId": "111122223333",
        "userIdentity": {"type": "IAMUser", "userName": "ops"},
        "requestParameters": params,
    }


SHARE = {"createVolumePermission": {"add": {"items": [{"group": "all"}]}}, "snapshotId": "s"}


def test_ecs_and_ocsf_carry_derived_fields() -> None:
    """ECS puts them under ctagg, OCSF under unmapped.ctagg; the input record is unchanged."""
    rec = record("ModifySnapshotAttribute", SHARE)
    ecs = normalize(rec, "ecs", now=NOW)
    ocsf = normalize(rec, "ocsf", now=NOW)
    assert ecs["ctagg"] == {"public": True, "public_via": "attribute"}
    assert ocsf["unmapped"]["ctagg"] == {"public": True, "public_via": "attribute"}
    assert "ctagg" not in rec


def test_records_without_derived_fields_are_unchanged() -> None:
    """An ordinary call gets no ctagg block from detection."""
    rec = record("DescribeInstances", {"instancesSet": {}})
    assert "ctagg" not in normalize(rec, "ecs", now=NOW)
    assert "ctagg" not in normalize(rec, "ocsf", now=NOW).get("unmapped", {})


def test_a_non_public_verdict_is_not_shown() -> None:
    """public: false (the request was evaluated and grants nothing) stays out of the output."""
    rec = record("ModifySnapshotAttribute", {"snapshotId": "s", "createVolumePermission": {}})
    assert "ctagg" not in normalize(rec, "ecs", now=NOW)
