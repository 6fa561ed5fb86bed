"""The shipped IAM documents (iam/) allow every AWS call the code makes, and nothing in them is
malformed. The policy evaluator in aggregator.iam is itself tested first, so a passing policy
check means something."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import botocore.session
import pytest
import yaml
from botocore import xform_name

from aggregator.aws.iam import (
    Request,
    evaluate,
    glob_match,
    is_allowed,
    load_policy,
    missing_permission,
    requests_for,
)

ROOT = Path(__file__).resolve().parents[2]
IAM = ROOT / "iam"
CODE_DIRS = [ROOT / "aggregator", ROOT / "connectors"]

CENTRAL = "central-archive"
TRAIL = "org-trail-logs"
KMS_ARN = "arn:aws:kms:us-east-1:111111111111:key/0f1e2d3c-aaaa-bbbb-cccc-1234567890ab"
SUBST = {
    "CENTRAL_BUCKET": CENTRAL,
    "MEMBER_ROLE_NAME": "ctagg-member",
    "ARCHIVE_KMS_KEY_ARN": KMS_ARN,
    "TRAIL_BUCKET": TRAIL,
    "ALERT_SNS_TOPIC_ARN": "arn:aws:sns:us-east-1:111111111111:ctagg-alerts",
    "DIGEST_KMS_KEY_ARN": "arn:aws:kms:us-east-1:111111111111:key/digest-signing",
    "HINT_QUEUE_PREFIX": "ctagg-hints",
}


def hub() -> Any:
    return load_policy(IAM / "hub-role-policy.json", SUBST)


def member() -> Any:
    return load_policy(IAM / "member-role-policy.json", SUBST)


# --------------------------------------------------------------------------- the evaluator


def test_evaluator_allow_deny_and_default() -> None:
    """Allow when a statement matches, explicit Deny wins, anything else is implicitly denied."""
    pol = {
        "Statement": [
            {"Effect": "Allow", "Action": "s3:Get*", "Resource": "arn:aws:s3:::b/*"},
            {"Effect": "Deny", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/secret/*"},
        ]
    }
    assert evaluate([pol], Request("s3:GetObject", "arn:aws:s3:::b/x")) == "allow"
    assert evaluate([pol], Request("s3:getobject", "arn:aws:s3:::b/x")) == "allow"  # case
    assert evaluate([pol], Request("s3:GetObject", "arn:aws:s3:::b/secret/k")) == "explicit_deny"
    assert evaluate([pol], Request("s3:PutObject", "arn:aws:s3:::b/x")) == "implicit_deny"
    assert evaluate([pol], Request("s3:GetObject", "arn:aws:s3:::c/x")) == "implicit_deny"


def test_evaluator_not_action_not_resource_and_wildcards() -> None:
    """NotAction / NotResource invert their match; '?' matches one character, '*' any run."""
    pol = {
        "Statement": [
            {"Effect": "Allow", "NotAction": "iam:*", "NotResource": "arn:aws:s3:::private*"},
        ]
    }
    assert is_allowed([pol], Request("s3:GetObject", "arn:aws:s3:::public/k"))
    assert not is_allowed([pol], Request("iam:CreateUser", "*"))
    assert not is_allowed([pol], Request("s3:GetObject", "arn:aws:s3:::private-b/k"))
    assert glob_match("a?c", "abc")
    assert not glob_match("a?c", "abbc")
    assert glob_match(
        "arn:aws:iam::*:role/ctagg-member", "arn:aws:iam::123456789012:role/ctagg-member"
    )
    assert not glob_match("arn:aws:iam::*:role/ctagg-member", "arn:aws:iam::1:role/ctagg-member2")


def test_evaluator_conditions() -> None:
    """Condition keys must be present and match (unless ...IfExists); unknown operators fail
    loudly instead of being ignored."""
    pol = {
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "kms:Decrypt",
                "Resource": "*",
                "Condition": {"StringLike": {"kms:ViaService": "s3.*.amazonaws.com"}},
            }
        ]
    }
    via_s3 = {"kms:ViaService": "s3.eu-west-1.amazonaws.com"}
    assert is_allowed([pol], Request("kms:Decrypt", "k", via_s3))
    assert not is_allowed([pol], Request("kms:Decrypt", "k"))
    assert not is_allowed([pol], Request("kms:Decrypt", "k", {"kms:ViaService": "ec2.x"}))
    pol["Statement"][0]["Condition"] = {"StringEqualsIfExists": {"aws:SourceVpc": "vpc-1"}}
    assert is_allowed([pol], Request("kms:Decrypt", "k"))
    pol["Statement"][0]["Condition"] = {"NumericLessThan": {"x": "1"}}
    with pytest.raises(ValueError, match="NumericLessThan"):
        evaluate([pol], Request("kms:Decrypt", "k", {"x": "0"}))


def test_s3_operations_map_to_their_iam_actions() -> None:
    """S3 API names differ from IAM action names; bucket and object resources are told apart."""

    def one(op: str, **p: Any) -> tuple[str, str]:
        (r,) = requests_for("s3", op, p)
        return r.action, r.resource

    assert one("ListObjectsV2", Bucket="b") == ("s3:ListBucket", "arn:aws:s3:::b")
    assert one("ListObjectVersions", Bucket="b") == ("s3:ListBucketVersions", "arn:aws:s3:::b")
    assert one("HeadObject", Bucket="b", Key="k") == ("s3:GetObject", "arn:aws:s3:::b/k")
    assert one("GetObject", Bucket="b", Key="k", VersionId="v") == (
        "s3:GetObjectVersion",
        "arn:aws:s3:::b/k",
    )
    assert one("DeleteObject", Bucket="b", Key="k", VersionId="v")[0] == "s3:DeleteObjectVersion"
    assert one("PutBucketLifecycleConfiguration", Bucket="b")[0] == "s3:PutLifecycleConfiguration"
    assert one("GetObjectLockConfiguration", Bucket="b")[0] == (
        "s3:GetBucketObjectLockConfiguration"
    )
    put = requests_for("s3", "PutObject", {"Bucket": "b", "Key": "k", "SSEKMSKeyId": KMS_ARN})
    assert [r.action for r in put] == ["s3:PutObject", "kms:GenerateDataKey"]
    assert put[1].context == {"kms:ViaService": "s3.us-east-1.amazonaws.com"}
    assert requests_for("sts", "GetCallerIdentity") == []
    (assume,) = requests_for("sts", "AssumeRole", {"RoleArn": "arn:aws:iam::1:role/r"})
    assert assume.resource == "arn:aws:iam::1:role/r"
    assert missing_permission("cloudtrail", "DescribeTrails") == "cloudtrail:DescribeTrails on *"


# --------------------------------------------------------------------------- the documents


def test_policy_documents_are_valid_json_with_version_and_sids() -> None:
    """Each document is an identity policy with the 2012-10-17 version, unique Sids, only Allow
    statements, and no '*' action."""
    for path in (IAM / "hub-role-policy.json", IAM / "member-role-policy.json"):
        doc = json.loads(path.read_text())
        assert doc["Version"] == "2012-10-17"
        sids = [s["Sid"] for s in doc["Statement"]]
        assert len(sids) == len(set(sids))
        for st in doc["Statement"]:
            assert st["Effect"] == "Allow"
            actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            assert all("*" not in a for a in actions), (path.name, st["Sid"])


def test_hub_and_member_policies_grant_what_each_identity_does() -> None:
    """Hub: Organizations read, assume the member role, write and manage the central bucket with
    its KMS key; member: read the trail bucket, describe CloudTrail and regions. Neither grants
    the other's job."""
    h, m = [hub()], [member()]
    assert is_allowed(h, Request("organizations:ListAccounts", "*"))
    assert is_allowed(h, Request("sts:AssumeRole", "arn:aws:iam::222222222222:role/ctagg-member"))
    assert not is_allowed(h, Request("sts:AssumeRole", "arn:aws:iam::222222222222:role/Admin"))
    for r in requests_for(
        "s3", "PutObject", {"Bucket": CENTRAL, "Key": "AWSLogs/x.json.gz", "SSEKMSKeyId": KMS_ARN}
    ):
        assert is_allowed(h, r), r
    assert not is_allowed(h, Request("s3:PutObject", f"arn:aws:s3:::{TRAIL}/x"))
    assert not is_allowed(h, Request("s3:DeleteBucket", f"arn:aws:s3:::{CENTRAL}"))
    for op, p in [
        ("ListObjectsV2", {"Bucket": TRAIL}),
        ("GetObject", {"Bucket": TRAIL, "Key": "AWSLogs/1/CloudTrail/us-east-1/x.json.gz"}),
    ]:
        for r in requests_for("s3", op, p):
            assert is_allowed(m, r), r
    assert is_allowed(m, Request("cloudtrail:LookupEvents", "*"))
    assert is_allowed(m, Request("ec2:DescribeRegions", "*"))
    assert not is_allowed(m, Request("s3:PutObject", f"arn:aws:s3:::{TRAIL}/x"))
    assert not is_allowed(m, Request("organizations:ListAccounts", "*"))


def test_hub_policy_grants_the_hint_queue_calls_and_only_on_its_queues() -> None:
    """Hint mode (collect.notifications): every SQS call ingest/hints.py makes, on the queues
    named with the policy's prefix (the intake queue and the per-shard ones), nothing else."""
    h = [hub()]
    mine = "https://sqs.eu-west-1.amazonaws.com/111111111111/ctagg-hints-1"
    for op in (
        "ReceiveMessage",
        "DeleteMessage",
        "ChangeMessageVisibility",
        "GetQueueAttributes",
        "SendMessage",
    ):
        (req,) = requests_for("sqs", op, {"QueueUrl": mine})
        assert req.resource == "arn:aws:sqs:eu-west-1:111111111111:ctagg-hints-1"
        assert is_allowed(h, req), req
        (other,) = requests_for("sqs", op, {"QueueUrl": mine.replace("ctagg-hints-1", "payroll")})
        assert not is_allowed(h, other), other
    (purge,) = requests_for("sqs", "PurgeQueue", {"QueueUrl": mine})
    assert not is_allowed(h, purge)


def _cfn_template() -> dict[str, Any]:
    doc = yaml.safe_load((IAM / "member-role-stackset.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def test_stackset_template_passes_cfn_lint() -> None:
    """cfn-lint (installed with moto) finds nothing in the StackSet template."""
    exe = Path(sys.executable).parent / "cfn-lint"
    proc = subprocess.run(
        [str(exe), str(IAM / "member-role-stackset.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_stackset_role_trusts_the_hub_with_external_id_and_matches_the_policy() -> None:
    """The member role trusts only the hub role ARN with the ExternalId condition, and its inline
    policy is the same as iam/member-role-policy.json (bucket name from a parameter)."""
    role = _cfn_template()["Resources"]["MemberRole"]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"AWS": {"Ref": "HubRoleArn"}}
    assert trust["Action"] == "sts:AssumeRole"
    assert trust["Condition"] == {"StringEquals": {"sts:ExternalId": {"Ref": "ExternalId"}}}
    assert _cfn_template()["Parameters"]["ExternalId"]["NoEcho"] is True
    (inline,) = role["Policies"]
    cfn_statements = inline["PolicyDocument"]["Statement"]
    for st in cfn_statements:
        res = st["Resource"]
        if isinstance(res, dict):
            st["Resource"] = (
                res["Fn::Sub"]
                .replace("${AWS::Partition}", "aws")
                .replace("${TrailBucketPattern}", "TRAIL_BUCKET")
            )
    shipped = json.loads((IAM / "member-role-policy.json").read_text())["Statement"]
    assert cfn_statements == shipped


# --------------------------------------------------------------------------- the code's calls


@cache
def _operations(service: str) -> dict[str, str]:
    """snake_case method name -> API operation name, for one botocore service."""
    model = botocore.session.get_session().get_service_model(service)
    return {xform_name(op): op for op in model.operation_names}


@cache
def _services() -> frozenset[str]:
    return frozenset(botocore.session.get_session().get_available_services())


def scan_aws_calls(files: list[Path], root: Path = ROOT) -> set[tuple[str, str, str]]:
    """(service, operation, 'file:line') for every client call the code makes.

    Services are the botocore service names given as string arguments anywhere in the scanned
    code (``aws.client(session, "s3")``, ``pool.get(session, "cloudtrail", region)``); a call
    is ``.<op>(...)`` or ``get_paginator("<op>")`` whose name is an operation of one of them.
    """
    trees = [(f, ast.parse(f.read_text(), str(f))) for f in files]
    used: set[str] = set()
    for _, tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                for arg in [*node.args, *(k.value for k in node.keywords)]:
                    if isinstance(arg, ast.Constant) and arg.value in _services():
                        used.add(str(arg.value))
    found: set[tuple[str, str, str]] = set()
    for f, tree in trees:
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name = node.func.attr
            if name == "get_paginator" and node.args and isinstance(node.args[0], ast.Constant):
                name = str(node.args[0].value)
            where = f"{f.relative_to(root)}:{node.lineno}"
            for svc in used:
                op = _operations(svc).get(name)
                if op:
                    found.add((svc, op, where))
    return found


# Code that never talks to real AWS, with the reason.
NOT_AWS = {
    "aggregator/service/demo.py": "builds the embedded moto Organization of `ctagg demo`",
}


def _code_files() -> list[Path]:
    return sorted(
        p for d in CODE_DIRS for p in d.rglob("*.py") if str(p.relative_to(ROOT)) not in NOT_AWS
    )


def test_scanner_finds_calls(tmp_path: Path) -> None:
    """The static scanner sees direct calls and paginators, and only for services in use."""
    src = tmp_path / "x.py"
    src.write_text(
        "async def f(pool, s):\n"
        "    s3 = await pool.get(s, 's3')\n"
        "    await s3.get_object(Bucket='b', Key='k')\n"
        "    s3.get_paginator('list_objects_v2')\n"
        "    ct = await pool.get(s, 'cloudtrail', 'eu-west-1')\n"
        "    await ct.describe_trails()\n"
        "    other.describe_instances()\n"
    )
    calls = {(s, o) for s, o, _ in scan_aws_calls([src], root=tmp_path)}
    assert calls == {
        ("s3", "GetObject"),
        ("s3", "ListObjectsV2"),
        ("cloudtrail", "DescribeTrails"),
    }


def _action_granted_somewhere(action: str) -> bool:
    for pol in (hub(), member()):
        for st in pol["Statement"]:
            acts = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            if any(glob_match(a, action, ignore_case=True) for a in acts):
                return True
    return False


def _static_findings() -> Iterator[tuple[str, str, str, list[str]]]:
    """(name, where, services, actions): one per call site; a method name that is an operation
    of several services in use (list_tags_for_resource) lists every candidate action."""
    sites: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for svc, op, where in sorted(scan_aws_calls(_code_files())):
        sites.setdefault((where, op), []).append((svc, op))
    for (where, op), cands in sorted(sites.items()):
        actions = [
            r.action for svc, o in cands for r in requests_for(svc, o, {"Bucket": "b", "Key": "k"})
        ]
        if any(not requests_for(svc, o) for svc, o in cands):
            continue  # a call that needs no permission (sts:GetCallerIdentity)
        yield op, where, ",".join(s for s, _ in cands), actions


def test_every_call_in_the_code_is_granted_by_a_shipped_policy() -> None:
    """Static check: every AWS operation called anywhere in aggregator/ and connectors/ maps to
    an IAM action that the hub or the member policy grants."""
    findings = list(_static_findings())
    seen = {(svc, op) for op, _, svcs, _ in findings for svc in svcs.split(",")}
    # the scan must see the pipeline's core calls, or it proves nothing
    assert {("s3", "PutObject"), ("s3", "GetObject"), ("s3", "ListObjectsV2")} <= seen
    missing = [
        f"{where}: {op} ({svcs}) needs one of {actions}"
        for op, where, svcs, actions in findings
        if actions and not any(_action_granted_somewhere(a) for a in actions)
    ]
    assert not missing, "\n".join(missing)
