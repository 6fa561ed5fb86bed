"""Derived fields (aggregator.normalize.derive): computed once per record, never written into it."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from aggregator.detect.engine import Detector
from aggregator.detect.rules import RuleSet, load_rules
from aggregator.normalize.derive import derive, with_derived

OPEN = {"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "sqs:SendMessage"}]}


def rec(name: str, params: Any = None, **extra: Any) -> dict[str, Any]:
    return {"eventName": name, "requestParameters": params, **extra}


@pytest.mark.parametrize(
    ("record", "want"),
    [
        (rec("PutBucketPolicy", {"bucketPolicy": OPEN}), {"public": True, "public_via": "policy"}),
        (
            rec("SetQueueAttributes", {"attributes": {"Policy": json.dumps(OPEN)}}),
            {"public": True, "public_via": "policy"},
        ),
        (
            rec(
                "SetTopicAttributes",
                {"attributeName": "Policy", "attributeValue": json.dumps(OPEN)},
            ),
            {"public": True, "public_via": "policy"},
        ),
        (rec("SetTopicAttributes", {"attributeName": "DisplayName", "attributeValue": "x"}), None),
        (
            rec("SetVaultAccessPolicy", {"policy": {"policy": json.dumps(OPEN)}}),
            {"public": True, "public_via": "policy"},
        ),
        (rec("PutKeyPolicy", {"policy": {"Statement": []}}), {"public": False}),
        (rec("PutBucketPolicy", {"bucketPolicy": "invalid-json-policy"}), None),
        (rec("PutBucketPolicy", None), None),
        (
            rec("AddPermission20150331v2", {"principal": "*", "action": "lambda:InvokeFunction"}),
            {"public": True, "public_via": "policy"},
        ),
        (
            rec("AddPermission20150331v2", {"principal": "*", "sourceAccount": "111122223333"}),
            {"public": False},
        ),
        (rec("AddPermission20150331v2", {"principal": "s3.amazonaws.com"}), {"public": False}),
        (
            rec("PutObjectAcl", {"x-amz-acl": ["public-read"]}),
            {"public": True, "public_via": "acl"},
        ),
        (rec("PutObject", {"bucketName": "b", "key": "k"}), {"public": False}),
        (
            rec(
                "ModifySnapshotAttribute",
                {"createVolumePermission": {"add": {"items": [{"group": "all"}]}}},
            ),
            {"public": True, "public_via": "attribute"},
        ),
        (
            rec(
                "ModifySnapshotAttribute",
                {"createVolumePermission": {"remove": {"items": [{"group": "all"}]}}},
            ),
            {"public": False},
        ),
        (
            rec(
                "ModifyDBClusterSnapshotAttribute",
                {"attributeName": "restore", "valuesToAdd": ["all"]},
            ),
            {"public": True, "public_via": "attribute"},
        ),
        (
            rec(
                "ModifyDBSnapshotAttribute",
                {"attributeName": "restore", "valuesToAdd": ["111122223333"]},
            ),
            {"public": False},
        ),
        (
            rec(
                "RestoreDBInstanceFromDBSnapshot",
                {"dBInstanceIdentifier": "d"},
                responseElements={"publiclyAccessible": True},
            ),
            {"public": True, "public_via": "attribute"},
        ),
        (
            rec(
                "AuthorizeSecurityGroupIngress",
                {
                    "ipPermissions": {
                        "items": [
                            {
                                "ipRanges": {
                                    "items": [{"cidrIp": "0.0.0.0/0"}, {"cidrIp": "10.1.2.3/8"}]
                                }
                            },
                            {"ipv6Ranges": {"items": [{"cidrIpv6": "::0/0"}]}},
                        ]
                    }
                },
            ),
            {"ingress_cidrs": ["0.0.0.0/0", "10.0.0.0/8", "::/0"]},
        ),
        (
            rec("AuthorizeSecurityGroupIngress", {"groupId": "sg-1", "cidrIp": "0.0.0.0/0"}),
            {"ingress_cidrs": ["0.0.0.0/0"]},
        ),
        (
            rec(
                "CreateNetworkAclEntry",
                {"cidrBlock": "0.0.0.0/0", "egress": False, "ruleAction": "allow"},
            ),
            {"ingress_cidrs": ["0.0.0.0/0"]},
        ),
        (
            rec(
                "CreateNetworkAclEntry",
                {"cidrBlock": "0.0.0.0/0", "egress": True, "ruleAction": "allow"},
            ),
            None,
        ),
        (
            rec(
                "ReplaceNetworkAclEntry",
                {"ipv6CidrBlock": "::/0", "egress": False, "ruleAction": "deny"},
            ),
            None,
        ),
        (
            rec("AuthorizeDBSecurityGroupIngress", {"cIDRIP": "0.0.0.0/0"}),
            {"ingress_cidrs": ["0.0.0.0/0"]},
        ),
        (rec("GetObject", {"bucketName": "b"}), None),
        ({"eventName": None}, None),
    ],
)
def test_derive(record: dict[str, Any], want: dict[str, Any] | None) -> None:
    """Each kind of event yields its verdict; other events yield nothing."""
    assert derive(record) == want


def test_derived_fields_stay_out_of_the_record() -> None:
    """Rules see ctagg.* through a shallow copy; the record itself (archived as is) is unchanged,
    and records without derived fields are passed through untouched."""
    record = rec("PutBucketPolicy", {"bucketName": "b", "bucketPolicy": OPEN}, eventID="e1")
    before = copy.deepcopy(record)
    view = with_derived(record)
    assert view["ctagg"] == {"public": True, "public_via": "policy"}
    assert record == before
    assert "ctagg" not in record
    plain = rec("GetObject", {"bucketName": "b"})
    assert with_derived(plain) is plain


def test_alerts_carry_the_derived_fields() -> None:
    """An alert shows why it fired (details.ctagg in the line, unmapped.details in OCSF)."""
    det = Detector(RuleSet(load_rules()), clock=lambda: 1_700_000_000.0)
    record = {
        "eventSource": "s3.amazonaws.com",
        "eventName": "PutBucketPolicy",
        "eventID": "e1",
        "eventTime": "2026-01-01T00:00:00Z",
        "recipientAccountId": "111122223333",
        "requestParameters": {"bucketName": "b", "bucketPolicy": OPEN},
    }
    alerts = {a.title: a for a in det.detect(record)}
    alert = alerts["Resource Policy Grants Public Access"]
    assert alert.to_line()["details"] == {"ctagg": {"public": True, "public_via": "policy"}}
    assert alert.to_ocsf()["unmapped"]["details"]["ctagg"]["public_via"] == "policy"
    assert "ctagg" not in record
