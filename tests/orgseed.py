"""Helpers shared by the discovery and credentials tests: build Settings pointed at the moto
server, seed an Organization with OUs, tagged accounts, regions and trails (sync boto3 over
real HTTP), and switch on moto's IAM policy enforcement for one block."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3

from aggregator.config import Settings

MGMT = "123456789012"  # moto's default account: the base identity and the management account


def make_settings(moto: str, **sections: Any) -> Settings:
    doc: dict[str, Any] = {
        "archive": {"bucket": "central-archive"},
        "aws": {"endpoint_url": moto, "max_attempts": 2, "region": "us-east-1"},
    }
    for name, value in sections.items():
        doc[name] = {**doc.get(name, {}), **value}
    return Settings.model_validate(doc)


def client(service: str, account: str | None = None, region: str = "us-east-1", **kw: Any) -> Any:
    """A sync client acting as ``account`` (assumed into it through moto's STS) or as the base."""
    if account is None or account == MGMT:
        return boto3.client(service, region_name=region, **kw)
    creds = boto3.client("sts", region_name="us-east-1").assume_role(
        RoleArn=f"arn:aws:iam::{account}:role/OrganizationAccountAccessRole",
        RoleSessionName="seed",
    )["Credentials"]
    return boto3.client(
        service,
        region_name=region,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        **kw,
    )


@dataclass
class Org:
    org_id: str
    root_id: str
    ous: dict[str, str] = field(default_factory=dict)  # path "Root/Prod" -> ou id
    accounts: dict[str, str] = field(default_factory=dict)  # name -> account id

    def ou(self, path: str) -> str:
        return self.ous[path]


def seed_org(layout: dict[str, list[tuple[str, dict[str, str]]]]) -> Org:
    """``layout``: OU path ("Root/Prod/Payments") -> [(account name, tags)]; OUs made as needed."""
    orgs = client("organizations")
    org_id = orgs.create_organization(FeatureSet="ALL")["Organization"]["Id"]
    root_id = orgs.list_roots()["Roots"][0]["Id"]
    org = Org(org_id=org_id, root_id=root_id, ous={"Root": root_id})
    for path, members in layout.items():
        parent = root_id
        parts = path.split("/")
        for depth in range(2, len(parts) + 1):
            sub = "/".join(parts[:depth])
            if sub not in org.ous:
                org.ous[sub] = orgs.create_organizational_unit(
                    ParentId=parent, Name=parts[depth - 1]
                )["OrganizationalUnit"]["Id"]
            parent = org.ous[sub]
        for name, tags in members:
            acct = orgs.create_account(
                AccountName=name,
                Email=f"{name}@example.com",
                Tags=[{"Key": k, "Value": v} for k, v in tags.items()],
            )["CreateAccountStatus"]["AccountId"]
            if parent != root_id:
                orgs.move_account(
                    AccountId=acct, SourceParentId=root_id, DestinationParentId=parent
                )
            org.accounts[name] = acct
    return org


def make_trail(
    account: str,
    region: str,
    name: str,
    bucket: str,
    *,
    prefix: str | None = None,
    multi_region: bool = False,
    organization: bool = False,
) -> str:
    """A bucket (if missing) and a trail in ``account``/``region``; returns the trail ARN."""
    s3 = client("s3", account, region)
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        if region == "us-east-1":
            s3.create_bucket(Bucket=bucket)
        else:
            s3.create_bucket(
                Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region}
            )
    kw: dict[str, Any] = {
        "Name": name,
        "S3BucketName": bucket,
        "IsMultiRegionTrail": multi_region,
        "IsOrganizationTrail": organization,
    }
    if prefix is not None:
        kw["S3KeyPrefix"] = prefix
    return str(client("cloudtrail", account, region).create_trail(**kw)["TrailARN"])


@contextlib.contextmanager
def iam_enforced() -> Iterator[None]:
    """moto evaluates IAM policies for every request inside the block (the server thread runs
    in this process, so its module state is ours); both switches are restored afterwards."""
    from moto import settings as moto_settings
    from moto.core.responses import ActionAuthenticatorMixin

    saved = (moto_settings.INITIAL_NO_AUTH_ACTION_COUNT, ActionAuthenticatorMixin.request_count)
    moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    ActionAuthenticatorMixin.request_count = 0
    try:
        yield
    finally:
        moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = saved[0]
        ActionAuthenticatorMixin.request_count = saved[1]


def put_role(account: str, role: str, actions: list[str], trusted: str = MGMT) -> str:
    """A role in ``account`` trusting ``trusted`` with an inline policy allowing ``actions``."""
    iam = client("iam", account)
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{trusted}:root"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    with contextlib.suppress(iam.exceptions.EntityAlreadyExistsException):
        iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(trust))
    iam.put_role_policy(
        RoleName=role,
        PolicyName="ctagg",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
            }
        ),
    )
    return f"arn:aws:iam::{account}:role/{role}"


def hub_user(statements: list[dict[str, Any]]) -> tuple[str, str]:
    """An IAM user in the management account with an inline policy; returns its access key."""
    iam = client("iam")
    iam.create_user(UserName="ctagg-hub")
    iam.put_user_policy(
        UserName="ctagg-hub",
        PolicyName="hub",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": statements}),
    )
    key = iam.create_access_key(UserName="ctagg-hub")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]
