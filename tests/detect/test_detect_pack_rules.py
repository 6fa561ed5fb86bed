"""Built-in rules the labelled data does not reach, on records shaped as CloudTrail writes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aggregator.detect.rules import Rule, load_rules


@pytest.fixture(scope="module")
def pack() -> dict[str, Rule]:
    return {Path(r.path).stem: r for r in load_rules()}


def rec(
    source: str, name: str, params: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "eventSource": source,
        "eventName": name,
        "userIdentity": {"type": "IAMUser", "userName": "ops", "arn": "arn:aws:iam::1:user/ops"},
        "sourceIPAddress": "198.51.100.7",
        "requestParameters": params,
        **extra,
    }


S3 = "s3.amazonaws.com"
EC2 = "ec2.amazonaws.com"
ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"


@pytest.mark.parametrize(
    ("rule", "record", "fires"),
    [
        (
            "aws_s3_acl_public",
            rec(
                S3,
                "PutBucketAcl",
                {
                    "bucketName": "b",
                    "AccessControlPolicy": {
                        "AccessControlList": {
                            "Grant": [
                                {
                                    "Grantee": {"ID": "abc", "xsi:type": "CanonicalUser"},
                                    "Permission": "FULL_CONTROL",
                                },
                                {
                                    "Grantee": {"URI": ALL_USERS, "xsi:type": "Group"},
                                    "Permission": "READ",
                                },
                            ]
                        }
                    },
                },
            ),
            True,
        ),
        (
            "aws_s3_acl_public",
            rec(
                S3,
                "PutBucketAcl",
                {
                    "bucketName": "b",
                    "AccessControlPolicy": {
                        "AccessControlList": {
                            "Grant": {"Grantee": {"ID": "abc"}, "Permission": "FULL_CONTROL"}
                        }
                    },
                },
            ),
            False,
        ),
        ("aws_s3_acl_public", rec(S3, "PutObject", {"x-amz-acl": ["public-read"]}), True),
        ("aws_s3_acl_public", rec(S3, "PutObjectAcl", {"x-amz-acl": ["private"]}), False),
        (
            "aws_s3_acl_public",
            rec(S3, "PutObjectAcl", {"x-amz-grant-read": f'uri="{ALL_USERS}"'}),
            True,
        ),
        (
            "aws_s3_acl_public",
            rec(S3, "PutBucketAcl", {"x-amz-acl": ["public-read"]}, errorCode="AccessDenied"),
            False,
        ),
        (
            "aws_ec2_security_group_open_to_world",
            rec(
                EC2,
                "AuthorizeSecurityGroupIngress",
                {
                    "ipPermissions": {
                        "items": [
                            {
                                "ipProtocol": "tcp",
                                "fromPort": 3389,
                                "ipv6Ranges": {"items": [{"cidrIpv6": "::/0"}]},
                            }
                        ]
                    }
                },
            ),
            True,
        ),
        (
            "aws_ec2_security_group_open_to_world",
            rec(
                EC2,
                "AuthorizeSecurityGroupIngress",
                {
                    "ipPermissions": {
                        "items": [
                            {
                                "ipRanges": {
                                    "items": [{"cidrIp": "10.0.0.0/8"}, {"cidrIp": "192.0.2.10/32"}]
                                }
                            }
                        ]
                    }
                },
            ),
            False,
        ),
        (
            "aws_ec2_security_group_open_to_world",
            rec(EC2, "AuthorizeSecurityGroupEgress", {"cidrIp": "0.0.0.0/0"}),
            False,
        ),
        (
            "aws_guardduty_disabled",
            rec("guardduty.amazonaws.com", "UpdateDetector", {"enable": False}),
            True,
        ),
        (
            "aws_guardduty_disabled",
            rec("guardduty.amazonaws.com", "UpdateDetector", {"enable": True}),
            False,
        ),
        (
            "aws_guardduty_disabled",
            rec("guardduty.amazonaws.com", "DeleteDetector", {"detectorId": "d"}),
            True,
        ),
        ("aws_securityhub_disabled", rec("securityhub.amazonaws.com", "DisableSecurityHub"), True),
        ("aws_securityhub_disabled", rec("securityhub.amazonaws.com", "GetFindings"), False),
        (
            "aws_cis_4_01_unauthorized_api_calls",
            rec(EC2, "RunInstances", errorCode="Client.UnauthorizedOperation"),
            True,
        ),
        (
            "aws_cis_4_01_unauthorized_api_calls",
            rec(
                S3,
                "PutObject",
                errorCode="AccessDenied",
                sourceIPAddress="delivery.logs.amazonaws.com",
            ),
            False,
        ),
        (
            "aws_cis_4_01_unauthorized_api_calls",
            rec(S3, "HeadBucket", errorCode="AccessDenied"),
            False,
        ),
        (
            "aws_cis_4_03_root_account_usage",
            {
                "userIdentity": {"type": "Root", "invokedBy": "support.amazonaws.com"},
                "eventName": "X",
            },
            False,
        ),
        (
            "aws_cis_4_06_console_auth_failures",
            rec("signin.amazonaws.com", "ConsoleLogin", errorMessage="Failed authentication"),
            True,
        ),
        (
            "aws_cis_4_15_organizations_changes",
            rec("organizations.amazonaws.com", "MoveAccount", {"accountId": "1"}),
            True,
        ),
        (
            "aws_cloudtrail_event_selectors_reduced",
            rec(
                "cloudtrail.amazonaws.com",
                "PutEventSelectors",
                {
                    "eventSelectors": [
                        {
                            "includeManagementEvents": True,
                            "readWriteType": "All",
                            "excludeManagementEventSources": ["kms.amazonaws.com"],
                        }
                    ]
                },
            ),
            True,
        ),
        (
            "aws_iam_root_access_key_created",
            {
                "eventSource": "iam.amazonaws.com",
                "eventName": "CreateAccessKey",
                "userIdentity": {"type": "Root"},
                "requestParameters": None,
            },
            True,
        ),
    ],
)
def test_rule_on_record(
    pack: dict[str, Rule], rule: str, record: dict[str, Any], fires: bool
) -> None:
    """Each rule fires on the shape it targets and stays quiet on near misses."""
    assert pack[rule].matches(record) is fires
