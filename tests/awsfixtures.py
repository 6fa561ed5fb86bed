"""Helpers for tests that build trail buckets in moto (used with the ``moto`` fixture)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from typing import Any

import aioboto3
import boto3

from aggregator.aws.inventory import Source

REGION = "us-east-1"


def client(service: str, account_id: str | None = None, region: str = REGION) -> Any:
    """A boto3 client as the base identity (moto's 123456789012) or inside ``account_id``."""
    if account_id is None:
        return boto3.client(service, region_name=region)
    creds = boto3.client("sts", region_name=region).assume_role(
        RoleArn=f"arn:aws:iam::{account_id}:role/OrganizationAccountAccessRole",
        RoleSessionName="tests",
    )["Credentials"]
    return boto3.client(
        service,
        region_name=region,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )


class StsSessions:
    """A minimal session provider: base identity for None, assume_role into any account."""

    def __init__(self, deny: Iterable[str] = ()) -> None:
        self.deny = set(deny)
        self.calls: list[str | None] = []
        self._cache: dict[str | None, aioboto3.Session] = {}

    async def session_for(self, account_id: str | None) -> aioboto3.Session:
        self.calls.append(account_id)
        if account_id in self.deny:
            raise PermissionError(f"AccessDenied: not authorized to assume a role in {account_id}")
        if account_id not in self._cache:
            if account_id is None:
                self._cache[None] = aioboto3.Session(region_name=REGION)
            else:
                creds = boto3.client("sts", region_name=REGION).assume_role(
                    RoleArn=f"arn:aws:iam::{account_id}:role/OrganizationAccountAccessRole",
                    RoleSessionName="tests",
                )["Credentials"]
                self._cache[account_id] = aioboto3.Session(
                    aws_access_key_id=creds["AccessKeyId"],
                    aws_secret_access_key=creds["SecretAccessKey"],
                    aws_session_token=creds["SessionToken"],
                    region_name=REGION,
                )
        return self._cache[account_id]


def log_object(records: list[dict[str, Any]]) -> bytes:
    return gzip.compress(json.dumps({"Records": records}).encode())


def log_key(base: str, account: str, region: str, ts: str, rand: str = "AbCdEf0123456789") -> str:
    """``base`` is the stream prefix up to CloudTrail/<region>/; ts is YYYYMMDDTHHMMZ."""
    return f"{base}{ts[0:4]}/{ts[4:6]}/{ts[6:8]}/{account}_CloudTrail_{region}_{ts}_{rand}.json.gz"


def make_source(
    bucket: str,
    account: str,
    region: str = REGION,
    *,
    org_id: str | None = None,
    reader: str | None = None,
    trail_arn: str | None = None,
) -> Source:
    org = f"{org_id}/" if org_id else ""
    prefix = f"AWSLogs/{org}{account}/CloudTrail/{region}/"
    return Source(
        source_id=f"{bucket}/{prefix}",
        account_id=account,
        region=region,
        bucket=bucket,
        prefix=prefix,
        trail_arn=trail_arn,
        reader_account_id=reader,
    )


def record(
    event_id: str,
    account: str,
    region: str = REGION,
    time: str = "2024-05-01T10:00:00Z",
    name: str = "DescribeInstances",
    **extra: Any,
) -> dict[str, Any]:
    rec = {
        "eventVersion": "1.08",
        "userIdentity": {"type": "IAMUser", "accountId": account, "userName": "alice"},
        "eventTime": time,
        "eventSource": "ec2.amazonaws.com",
        "eventName": name,
        "awsRegion": region,
        "sourceIPAddress": "198.51.100.7",
        "userAgent": "aws-cli/2",
        "requestParameters": None,
        "responseElements": None,
        "eventID": event_id,
        "eventType": "AwsApiCall",
        "recipientAccountId": account,
    }
    rec.update(extra)
    return rec
