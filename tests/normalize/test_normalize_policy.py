"""The public-access evaluation of resource policies and S3 ACLs (aggregator.normalize.policy)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from aggregator.normalize.policy import acl_is_public, load_policy, policy_is_public

ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"
AUTH_USERS = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers"


def allow(principal: Any = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Principal": principal, "Action": "s3:GetObject", **extra}


def policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


@pytest.mark.parametrize(
    ("doc", "public"),
    [
        (policy(allow("*")), True),
        (policy(allow({"AWS": "*"})), True),
        (policy(allow({"AWS": ["arn:aws:iam::111122223333:root", "*"]})), True),
        (policy(allow({"CanonicalUser": "*"})), True),
        ({"Statement": allow("*")}, True),  # a single statement, not a list
        (policy({"Effect": "Allow", "NotPrincipal": {"AWS": "arn:aws:iam::1:root"}}), True),
        (policy(allow({"AWS": "arn:aws:iam::111122223333:root"})), False),
        (policy(allow({"Service": "cloudtrail.amazonaws.com"})), False),
        (policy(allow({"Federated": "cognito-identity.amazonaws.com"})), False),
        (policy({"Effect": "Deny", "Principal": "*", "Action": "s3:*"}), False),
        (policy({"Effect": "allow", "Principal": "*"}), True),  # Effect is case-insensitive
        ({"Version": "2012-10-17"}, False),
    ],
)
def test_principal_and_effect(doc: dict[str, Any], public: bool) -> None:
    """Allow to everyone (or NotPrincipal) is public; named accounts, services and Deny are not."""
    assert policy_is_public(doc) is public


@pytest.mark.parametrize(
    ("condition", "public"),
    [
        ({"StringEquals": {"aws:PrincipalOrgID": "o-abc123"}}, False),
        ({"StringEquals": {"aws:SourceAccount": "111122223333"}}, False),
        ({"ArnLike": {"aws:SourceArn": "arn:aws:s3:::my-bucket"}}, False),
        ({"StringEquals": {"aws:SourceVpce": "vpce-1a2b3c4d"}}, False),
        ({"StringEquals": {"aws:SourceVpc": "vpc-1a2b3c4d"}}, False),
        ({"IpAddress": {"aws:SourceIp": ["203.0.113.0/24", "10.0.0.0/8"]}}, False),
        ({"StringEquals": {"AWS:SourceOrgID": "o-abc123"}}, False),  # keys are case-insensitive
        ({"ForAnyValue:StringLike": {"aws:PrincipalOrgPaths": "o-a/r-b/ou-c/*"}}, False),
        ({"StringEquals": {"aws:PrincipalOrgID": "*"}}, True),  # a wildcard narrows nothing
        ({"StringLike": {"aws:SourceArn": ["arn:aws:sns:*:1:t", "*"]}}, True),
        ({"IpAddress": {"aws:SourceIp": "0.0.0.0/0"}}, True),
        ({"IpAddress": {"aws:SourceIp": "::/0"}}, True),
        ({"StringNotEquals": {"aws:PrincipalOrgID": "o-abc123"}}, True),  # everyone else
        ({"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}, True),
        ({"StringEqualsIfExists": {"aws:SourceAccount": "111122223333"}}, True),
        ({"Bool": {"aws:SecureTransport": "true"}}, True),  # not about who
        ({"StringEquals": {"s3:x-amz-acl": "bucket-owner-full-control"}}, True),
        (
            {
                "Bool": {"aws:SecureTransport": "true"},
                "StringEquals": {"aws:SourceAccount": "111122223333"},
            },
            False,  # conditions are ANDed: one restricting key is enough
        ),
    ],
)
def test_conditions(condition: dict[str, Any], public: bool) -> None:
    """A restricting key with specific values narrows the grant; negated, IfExists, wildcard
    and /0 tests, and keys that are not about the caller, do not."""
    assert policy_is_public(policy(allow("*", Condition=condition))) is public


def test_one_open_statement_among_restricted_ones_is_public() -> None:
    """A policy is public when any one statement is."""
    doc = policy(
        allow("*", Condition={"StringEquals": {"aws:PrincipalOrgID": "o-abc123"}}),
        allow({"AWS": "arn:aws:iam::111122223333:root"}),
        allow("*"),
    )
    assert policy_is_public(doc)


@pytest.mark.parametrize(
    ("deny", "public"),
    [
        ({"Effect": "Deny", "Principal": "*", "Action": "*"}, False),
        (
            {
                "Effect": "Deny",
                "Principal": "*",
                "Action": "*",
                "Condition": {"StringNotEquals": {"aws:PrincipalOrgID": "o-abc123"}},
            },
            False,
        ),
        (
            {
                "Effect": "Deny",
                "Principal": "*",
                "Action": "*",
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            },
            True,  # denies plain HTTP only
        ),
        ({"Effect": "Deny", "Principal": "*", "Action": "s3:DeleteObject"}, True),
    ],
)
def test_deny_guard(deny: dict[str, Any], public: bool) -> None:
    """'Deny everyone everything unless from my organization' makes an open Allow non-public;
    a Deny that is narrower than that does not."""
    assert policy_is_public(policy(allow("*"), deny)) is public


def test_policies_as_json_text() -> None:
    """Policies arrive as JSON text too; text that is not a JSON object is no policy."""
    text = json.dumps(policy(allow({"AWS": "*"})))
    assert policy_is_public(text)
    assert load_policy(text) == json.loads(text)
    assert not policy_is_public("invalid-json-policy")
    assert not policy_is_public('{"Statement": [')
    assert not policy_is_public("")
    assert not policy_is_public(None)
    assert load_policy("[1, 2]") is None


@pytest.mark.parametrize(
    ("params", "public"),
    [
        ({"x-amz-acl": ["public-read"]}, True),
        ({"x-amz-acl": "public-read-write"}, True),
        ({"x-amz-acl": ["authenticated-read"]}, True),
        ({"x-amz-acl": ["private"]}, False),
        ({"x-amz-acl": ["bucket-owner-full-control"]}, False),
        ({"x-amz-grant-read": f'uri="{ALL_USERS}"'}, True),
        ({"x-amz-grant-full-control": f'id="abc", uri="{AUTH_USERS}"'}, True),
        ({"x-amz-grant-read": 'id="d25639fbe9c19cd30a4c0f43fbf00e2d3f96400a"'}, False),
        (
            {
                "AccessControlPolicy": {
                    "AccessControlList": {
                        "Grant": [
                            {"Grantee": {"ID": "abc", "xsi:type": "CanonicalUser"}},
                            {
                                "Grantee": {"URI": ALL_USERS, "xsi:type": "Group"},
                                "Permission": "READ",
                            },
                        ]
                    }
                }
            },
            True,
        ),
        (
            {  # one grant (a dict, as CloudTrail writes a single XML element), console shape
                "acl": [""],
                "AccessControlPolicy": {
                    "xmlns": "http://s3.amazonaws.com/doc/2006-03-01/",
                    "AccessControlList": {
                        "Grant": {
                            "Grantee": {
                                "xsi:type": "Group",
                                "xmlns:xsi": "http://www.w3.org/2001/XMLSchema-instance",
                                "URI": AUTH_USERS,
                            },
                            "Permission": "WRITE",
                        }
                    },
                },
            },
            True,
        ),
        (
            {
                "AccessControlPolicy": {
                    "AccessControlList": {
                        "Grant": {"Grantee": {"ID": "abc"}, "Permission": "FULL_CONTROL"}
                    }
                }
            },
            False,
        ),
        (
            {
                "AccessControlPolicy": {
                    "AccessControlList": {
                        "Grant": {
                            "Grantee": {"URI": "http://acs.amazonaws.com/groups/s3/LogDelivery"}
                        }
                    }
                }
            },
            False,
        ),
        ({}, False),
        (None, False),
    ],
)
def test_s3_acl(params: Any, public: bool) -> None:
    """An ACL is public when it grants AllUsers or AuthenticatedUsers, in every request shape."""
    assert acl_is_public(params) is public
