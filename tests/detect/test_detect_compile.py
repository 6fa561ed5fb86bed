"""The Sigma compiler: modifiers, conditions, field paths through lists, and clear refusals."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from aggregator.detect.rules import Rule, RuleLoadError, RuleSet, load_rule_text


def one_rule(detection: str, extra: str = "") -> Rule:
    text = f"""
title: test rule
id: 0b9d7a55-1a50-4f43-8d3c-1a6f2a1c0001
level: medium
logsource:
  product: aws
  service: cloudtrail
detection:
{textwrap.indent(textwrap.dedent(detection).strip(), "  ")}
{extra}"""
    (rule,) = load_rule_text(text, "test.yml")
    return rule


SG_EVENT: dict[str, Any] = {
    "eventName": "AuthorizeSecurityGroupIngress",
    "eventSource": "ec2.amazonaws.com",
    "userIdentity": {"type": "IAMUser", "userName": "alice", "arn": "arn:aws:iam::1:user/alice"},
    "sourceIPAddress": "198.51.100.7",
    "readOnly": False,
    "requestParameters": {
        "groupId": "sg-1",
        "ipPermissions": {
            "items": [
                {"fromPort": 22, "ipRanges": {"items": [{"cidrIp": "10.0.0.0/8"}]}},
                {"fromPort": 443, "ipRanges": {"items": [{"cidrIp": "0.0.0.0/0"}]}},
            ]
        },
    },
}


@pytest.mark.parametrize(
    ("detection", "expected"),
    [
        # plain equality is case-insensitive
        ("sel:\n  eventName: authorizesecuritygroupingress\ncondition: sel", True),
        ("sel:\n  eventName|cased: authorizesecuritygroupingress\ncondition: sel", False),
        ("sel:\n  eventName|contains: SecurityGroup\ncondition: sel", True),
        ("sel:\n  eventName|startswith: Authorize\ncondition: sel", True),
        ("sel:\n  eventName|endswith: Egress\ncondition: sel", False),
        ("sel:\n  eventName: Authorize*Ingress\ncondition: sel", True),
        ("sel:\n  eventName: Authorize?Ingress\ncondition: sel", False),
        ("sel:\n  eventName|re: '^Auth.*Ingress$'\ncondition: sel", True),
        ("sel:\n  eventName|re: '^auth'\ncondition: sel", False),  # re is case-sensitive
        ("sel:\n  eventName|re|i: '^auth'\ncondition: sel", True),
        # lists are OR, |all makes them AND
        (
            "sel:\n  eventName:\n    - CreateVpc\n    - AuthorizeSecurityGroupIngress\n"
            "condition: sel",
            True,
        ),
        ("sel:\n  eventName|contains|all:\n    - Authorize\n    - Egress\ncondition: sel", False),
        ("sel:\n  eventName|contains|all:\n    - Authorize\n    - Ingress\ncondition: sel", True),
        # dotted paths fan out through lists
        (
            "sel:\n  requestParameters.ipPermissions.items.ipRanges.items.cidrIp: 0.0.0.0/0\n"
            "condition: sel",
            True,
        ),
        (
            "sel:\n  requestParameters.ipPermissions.items.fromPort: 443\ncondition: sel",
            True,
        ),
        ("sel:\n  requestParameters.ipPermissions.items.fromPort|gt: 500\ncondition: sel", False),
        ("sel:\n  requestParameters.ipPermissions.items.fromPort|lte: 22\ncondition: sel", True),
        # cidr: addresses and networks inside the range
        ("sel:\n  sourceIPAddress|cidr: 198.51.100.0/24\ncondition: sel", True),
        ("sel:\n  sourceIPAddress|cidr: 203.0.113.0/24\ncondition: sel", False),
        (
            "sel:\n  requestParameters.ipPermissions.items.ipRanges.items.cidrIp|cidr: 10.0.0.0/7\n"
            "condition: sel",
            True,
        ),
        # booleans as CloudTrail writes them
        ("sel:\n  readOnly: false\ncondition: sel", True),
        # exists / null
        ("sel:\n  errorCode|exists: true\ncondition: sel", False),
        ("sel:\n  errorCode|exists: false\ncondition: sel", True),
        ("sel:\n  errorCode: null\ncondition: sel", True),
        ("sel:\n  requestParameters.groupId|exists: true\ncondition: sel", True),
        # fieldref compares two fields of the record
        ("sel:\n  userIdentity.arn|endswith: /alice\ncondition: sel", True),
        ("sel:\n  userIdentity.userName|fieldref: userIdentity.userName\ncondition: sel", True),
        (
            "sel:\n  userIdentity.userName|fieldref: requestParameters.groupId\ncondition: sel",
            False,
        ),
        # conditions
        (
            "a:\n  eventName: CreateVpc\nb:\n  eventSource: ec2.amazonaws.com\ncondition: a or b",
            True,
        ),
        (
            "a:\n  eventName: CreateVpc\nb:\n  eventSource: ec2.amazonaws.com\ncondition: a and b",
            False,
        ),
        (
            "a:\n  eventName: CreateVpc\nb:\n  eventSource: ec2.amazonaws.com\n"
            "condition: not a and b",
            True,
        ),
        (
            "a:\n  eventName: CreateVpc\nb:\n  eventSource: ec2.amazonaws.com\n"
            "c:\n  readOnly: true\ncondition: (a or b) and not c",
            True,
        ),
        (
            "selection_x:\n  eventName: CreateVpc\nselection_y:\n  readOnly: false\n"
            "condition: 1 of selection_*",
            True,
        ),
        (
            "selection_x:\n  eventName: CreateVpc\nselection_y:\n  readOnly: false\n"
            "condition: all of selection_*",
            False,
        ),
        (
            "a:\n  readOnly: false\nb:\n  eventSource: ec2.amazonaws.com\ncondition: all of them",
            True,
        ),
        # a detection that is a list of maps is an OR of them
        (
            "sel:\n  - eventName: CreateVpc\n  - sourceIPAddress: 198.51.100.7\ncondition: sel",
            True,
        ),
        # neq modifier
        ("sel:\n  eventName|neq: CreateVpc\ncondition: sel", True),
    ],
)
def test_rule_semantics(detection: str, expected: bool) -> None:
    """Each Sigma construct evaluates against a nested CloudTrail record as Sigma defines it."""
    rule = one_rule(detection)
    assert rule.matches(SG_EVENT) is expected


@pytest.mark.parametrize(
    ("detection", "construct"),
    [
        ("sel:\n  eventName|base64: x\ncondition: sel", "modifier 'base64'"),
        ("sel:\n  eventName|windash: x\ncondition: sel", "modifier 'windash'"),
        ("sel:\n  - foo\n  - bar\ncondition: sel", "keyword"),
        ("sel:\n  eventName: x\ncondition: sel | count() > 5", "condition"),
        ("sel:\n  eventName: x\ntimeframe: 5m\ncondition: sel", "timeframe"),
    ],
)
def test_unsupported_constructs_name_file_and_construct(detection: str, construct: str) -> None:
    """A rule using something the engine cannot evaluate is refused with file and construct."""
    with pytest.raises(RuleLoadError) as info:
        one_rule(detection)
    text = str(info.value)
    assert "test.yml" in text
    assert construct in text


def test_other_logsource_is_refused() -> None:
    """Only CloudTrail rules are accepted; the error says which logsource was given."""
    text = """
title: windows
id: 0b9d7a55-1a50-4f43-8d3c-1a6f2a1c0002
level: low
logsource:
  product: windows
  category: process_creation
detection:
  sel:
    Image: x
  condition: sel
"""
    with pytest.raises(RuleLoadError, match=r"w\.yml.*logsource must be product: aws"):
        load_rule_text(text, "w.yml")


def test_missing_id_and_bad_yaml_are_errors() -> None:
    """A rule without an id, or a file that is not YAML, is a clear error naming the file."""
    no_id = "title: t\nlevel: low\nlogsource: {product: aws, service: cloudtrail}\n"
    no_id += "detection: {sel: {eventName: x}, condition: sel}\n"
    with pytest.raises(RuleLoadError, match=r"a\.yml.*id"):
        load_rule_text(no_id, "a.yml")
    with pytest.raises(RuleLoadError, match=r"b\.yml"):
        load_rule_text("title: [unclosed", "b.yml")


def test_index_pins_event_names_and_sources() -> None:
    """Rules pinned to eventName or eventSource only meet records that can match them."""
    by_name = one_rule("sel:\n  eventName:\n    - CreateVpc\n    - DeleteVpc\ncondition: sel")
    by_source = one_rule(
        "sel:\n  eventSource: kms.amazonaws.com\nf:\n  errorCode|exists: true\n"
        "condition: sel and not f"
    )
    free = one_rule("sel:\n  errorCode|exists: true\ncondition: sel")
    either = one_rule(
        "a:\n  eventName: CreateVpc\nb:\n  userIdentity.type: Root\ncondition: a or b"
    )
    assert by_name.event_names == frozenset({"createvpc", "deletevpc"})
    assert by_source.event_names is None
    assert by_source.event_sources == frozenset({"kms.amazonaws.com"})
    assert free.event_names is None
    assert free.event_sources is None
    assert either.event_names is None  # an OR with an unpinned branch cannot be indexed

    rs = RuleSet([by_name, by_source, free])
    assert rs.candidates({"eventName": "DeleteVpc", "eventSource": "ec2.amazonaws.com"}) == [
        by_name,
        free,
    ]
    assert rs.candidates({"eventName": "Decrypt", "eventSource": "kms.amazonaws.com"}) == [
        by_source,
        free,
    ]
    assert rs.candidates({"eventName": "GetObject", "eventSource": "s3.amazonaws.com"}) == [free]


def test_missing_fields_and_odd_types_do_not_crash() -> None:
    """Records missing fields or holding unexpected types simply do not match."""
    rule = one_rule(
        "sel:\n  requestParameters.ipPermissions.items.ipRanges.items.cidrIp|cidr: 0.0.0.0/0\n"
        "condition: sel"
    )
    for rec in (
        {},
        {"requestParameters": None},
        {"requestParameters": "text"},
        {"requestParameters": {"ipPermissions": [1, "x", None]}},
        {
            "requestParameters": {
                "ipPermissions": {"items": [{"ipRanges": {"items": [{"cidrIp": "nope"}]}}]}
            }
        },
    ):
        assert rule.matches(rec) is False
