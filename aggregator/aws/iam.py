"""IAM: which permission an AWS API call needs, and whether a policy document grants it.

Used by ``ctagg doctor`` (to name the missing permission of a failed call) and by the tests that
prove the shipped policy documents (``iam/*.json``) allow every call the code makes.

The evaluator covers what identity policies of this project use: ``Effect`` Allow/Deny,
``Action``/``NotAction``, ``Resource``/``NotResource`` with ``*``/``?`` wildcards, and the
``String*``/``Arn*``/``Bool`` condition operators (with ``...IfExists``). An explicit Deny wins;
otherwise anything not allowed is denied. No network I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

# botocore service name -> IAM service prefix (where they differ).
_PREFIX = {"s3control": "s3", "resourcegroupstaggingapi": "tag"}

# S3 operations whose IAM action is not named like the operation.
_S3_ACTIONS = {
    "ListObjectsV2": "ListBucket",
    "ListObjects": "ListBucket",
    "HeadBucket": "ListBucket",
    "ListObjectVersions": "ListBucketVersions",
    "HeadObject": "GetObject",
    "CreateMultipartUpload": "PutObject",
    "UploadPart": "PutObject",
    "CompleteMultipartUpload": "PutObject",
    "ListParts": "ListMultipartUploadParts",
    "ListMultipartUploads": "ListBucketMultipartUploads",
    "DeleteObjects": "DeleteObject",
    "GetBucketLifecycleConfiguration": "GetLifecycleConfiguration",
    "PutBucketLifecycleConfiguration": "PutLifecycleConfiguration",
    "DeleteBucketLifecycle": "PutLifecycleConfiguration",
    "GetObjectLockConfiguration": "GetBucketObjectLockConfiguration",
    "PutObjectLockConfiguration": "PutBucketObjectLockConfiguration",
    "GetBucketNotificationConfiguration": "GetBucketNotification",
    "PutBucketNotificationConfiguration": "PutBucketNotification",
    "GetBucketEncryption": "GetEncryptionConfiguration",
    "GetPublicAccessBlock": "GetBucketPublicAccessBlock",
    "PutPublicAccessBlock": "PutBucketPublicAccessBlock",
    "PutBucketEncryption": "PutEncryptionConfiguration",
}
# S3 operations on a bucket (resource arn:aws:s3:::bucket); the rest act on objects.
_S3_BUCKET_OPS = {
    "ListObjectsV2",
    "ListObjects",
    "ListObjectVersions",
    "HeadBucket",
    "ListMultipartUploads",
    "GetBucketLocation",
    "GetBucketVersioning",
    "PutBucketVersioning",
    "GetBucketLifecycleConfiguration",
    "PutBucketLifecycleConfiguration",
    "DeleteBucketLifecycle",
    "GetObjectLockConfiguration",
    "PutObjectLockConfiguration",
    "GetBucketNotificationConfiguration",
    "PutBucketNotificationConfiguration",
    "GetBucketEncryption",
    "PutBucketEncryption",
    "GetBucketPolicy",
    "PutBucketPolicy",
    "CreateBucket",
    "DeleteBucket",
    "GetBucketTagging",
    "PutBucketTagging",
    "GetBucketAcl",
    "GetBucketLogging",
    "GetBucketPolicyStatus",
    "GetPublicAccessBlock",
    "PutPublicAccessBlock",
}
# Calls every principal may make without any permission.
UNAUTHENTICATED_OK = frozenset({("sts", "GetCallerIdentity")})


@dataclass(frozen=True)
class Request:
    """One permission check: an IAM action on a resource, with condition context."""

    action: str  # "s3:GetObject"
    resource: str  # "arn:aws:s3:::bucket/key" or "*"
    context: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.action} on {self.resource}"


def _s3_key_arn(bucket: str, key: str) -> str:
    return f"arn:aws:s3:::{bucket}/{key}"


def requests_for(
    service: str, operation: str, params: Mapping[str, Any] | None = None, region: str = ""
) -> list[Request]:
    """The permission checks an API call needs (empty for calls that need none).

    ``operation`` is the API name (``ListObjectsV2``); ``params`` the call's parameters (used
    for resources and for derived needs: a versioned GET needs ``GetObjectVersion``, an
    SSE-KMS PUT needs ``kms:GenerateDataKey`` on the key through S3).
    """
    p = dict(params or {})
    if (service, operation) in UNAUTHENTICATED_OK:
        return []
    prefix = _PREFIX.get(service, service)
    if service != "s3":
        resource = "*"
        if (service, operation) in {("sts", "AssumeRole"), ("sts", "AssumeRoleWithWebIdentity")}:
            resource = str(p.get("RoleArn", "*"))
        if service == "sqs" and p.get("QueueUrl"):
            resource = _sqs_arn(str(p["QueueUrl"]), region)
        return [Request(f"{prefix}:{operation}", resource)]

    bucket = str(p.get("Bucket", "*"))
    name = _S3_ACTIONS.get(operation, operation)
    versioned = bool(p.get("VersionId"))
    if versioned and name in {"GetObject", "DeleteObject"}:
        name += "Version"  # GetObjectVersion / DeleteObjectVersion
    if operation in _S3_BUCKET_OPS:
        return [Request(f"s3:{name}", f"arn:aws:s3:::{bucket}")]
    if operation == "DeleteObjects":
        objs = (p.get("Delete") or {}).get("Objects") or []
        out = []
        for o in objs:
            action = "s3:DeleteObjectVersion" if o.get("VersionId") else "s3:DeleteObject"
            out.append(Request(action, _s3_key_arn(bucket, str(o.get("Key", "")))))
        return out or [Request("s3:DeleteObject", _s3_key_arn(bucket, "*"))]
    key = str(p.get("Key", "*"))
    out = [Request(f"s3:{name}", _s3_key_arn(bucket, key))]
    if operation == "CopyObject":
        src = p.get("CopySource")
        if isinstance(src, Mapping):
            out.append(Request("s3:GetObject", _s3_key_arn(str(src["Bucket"]), str(src["Key"]))))
        elif isinstance(src, str):
            out.append(Request("s3:GetObject", "arn:aws:s3:::" + src.lstrip("/").split("?")[0]))
    if operation in {"PutObject", "CreateMultipartUpload", "CopyObject"} and p.get("SSEKMSKeyId"):
        out.append(
            Request(
                "kms:GenerateDataKey",
                _kms_arn(str(p["SSEKMSKeyId"])),
                {"kms:ViaService": f"s3.{region or 'us-east-1'}.amazonaws.com"},
            )
        )
    if operation == "PutObject" and (p.get("ObjectLockMode") or p.get("ObjectLockRetainUntilDate")):
        out.append(Request("s3:PutObjectRetention", _s3_key_arn(bucket, key)))
    if operation == "PutObject" and p.get("ObjectLockLegalHoldStatus"):
        out.append(Request("s3:PutObjectLegalHold", _s3_key_arn(bucket, key)))
    return out


def _sqs_arn(url: str, region: str) -> str:
    """``https://sqs.<region>.amazonaws.com/<account>/<name>`` → the queue's ARN."""
    m = re.match(r"^https?://(?:sqs[.-]([a-z0-9-]+)\.[^/]+|[^/]+)/(\d{12})/([^/?]+)", url)
    if m is None:
        return "*"
    return f"arn:aws:sqs:{m[1] or region or 'us-east-1'}:{m[2]}:{m[3]}"


def _kms_arn(key_id: str) -> str:
    """Key ids and aliases as given in config; ARNs pass through."""
    return key_id if key_id.startswith("arn:") else f"kms:{key_id}"


# --------------------------------------------------------------------------- evaluation


@cache
def _pattern(glob: str, ignore_case: bool) -> re.Pattern[str]:
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob)
    return re.compile(f"^{rx}$", re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def glob_match(glob: str, value: str, *, ignore_case: bool = False) -> bool:
    return bool(_pattern(glob, ignore_case).match(value))


def _as_list(v: Any) -> list[Any]:
    if v is None:
        return []
    return list(v) if isinstance(v, list | tuple) else [v]


def _cond_ok(op: str, key: str, wanted: Any, context: Mapping[str, str]) -> bool:
    if_exists = op.endswith("IfExists")
    base = op.removesuffix("IfExists")
    values = [str(x) for x in _as_list(wanted)]
    lower = {k.lower(): v for k, v in context.items()}
    if key.lower() not in lower:
        if base == "Null":
            return values == ["true"]
        return if_exists or base.startswith(("StringNot", "ArnNot"))
    got = lower[key.lower()]
    if base == "Null":
        return values == ["false"]
    if base in {"StringEquals", "ArnEquals"}:
        return got in values
    if base == "StringEqualsIgnoreCase":
        return got.lower() in {x.lower() for x in values}
    if base in {"StringNotEquals", "ArnNotEquals"}:
        return got not in values
    if base in {"StringLike", "ArnLike"}:
        return any(glob_match(x, got) for x in values)
    if base in {"StringNotLike", "ArnNotLike"}:
        return not any(glob_match(x, got) for x in values)
    if base == "Bool":
        return got.lower() in {x.lower() for x in values}
    raise ValueError(f"condition operator {op} not supported by this evaluator")


def _statement_matches(st: Mapping[str, Any], req: Request) -> bool:
    if "Action" in st:
        if not any(glob_match(a, req.action, ignore_case=True) for a in _as_list(st["Action"])):
            return False
    elif "NotAction" in st:
        if any(glob_match(a, req.action, ignore_case=True) for a in _as_list(st["NotAction"])):
            return False
    else:
        return False
    if "Resource" in st:
        if not any(glob_match(r, req.resource) for r in _as_list(st["Resource"])):
            return False
    elif "NotResource" in st:
        if any(glob_match(r, req.resource) for r in _as_list(st["NotResource"])):
            return False
    else:
        return False
    for op, pairs in (st.get("Condition") or {}).items():
        for key, wanted in pairs.items():
            if not _cond_ok(op, key, wanted, req.context):
                return False
    return True


def statements(policy: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [s for s in _as_list(policy.get("Statement")) if isinstance(s, Mapping)]


def evaluate(policies: Iterable[Mapping[str, Any]], req: Request) -> str:
    """``"allow"``, ``"explicit_deny"`` or ``"implicit_deny"`` for one request."""
    allowed = False
    for policy in policies:
        for st in statements(policy):
            if not _statement_matches(st, req):
                continue
            if st.get("Effect") == "Deny":
                return "explicit_deny"
            if st.get("Effect") == "Allow":
                allowed = True
    return "allow" if allowed else "implicit_deny"


def is_allowed(policies: Sequence[Mapping[str, Any]], req: Request) -> bool:
    return evaluate(policies, req) == "allow"


def load_policy(path: str | Path, substitutions: Mapping[str, str] | None = None) -> Any:
    """Read a policy document, replacing placeholder tokens (``CENTRAL_BUCKET`` ...)."""
    text = Path(path).read_text(encoding="utf-8")
    for token, value in (substitutions or {}).items():
        text = text.replace(token, value)
    return json.loads(text)


def missing_permission(
    service: str, operation: str, params: Mapping[str, Any] | None = None, region: str = ""
) -> str:
    """A short 'what to grant' string for a denied call (``s3:GetObject on arn:...``)."""
    reqs = requests_for(service, operation, params, region)
    return "; ".join(str(r) for r in reqs) or f"{service}:{operation}"
