"""Derived fields: what a request *means*, computed once per record for rules to match on.

Some dangers sit inside a request: a policy granting everyone, an ACL naming AllUsers, a snapshot
shared with ``all``, an ingress rule from ``0.0.0.0/0``. :func:`derive` looks at the few events
that carry such a thing (one dict lookup on ``eventName`` for every other record) and returns:

``public`` (bool)
    The request grants public access: a resource policy (:func:`policy.policy_is_public`), an
    S3 ACL (:func:`policy.acl_is_public`), or a sharing attribute (``group: all`` on an EBS
    snapshot or AMI, ``all`` in an RDS snapshot's ``restore`` attribute, a CodeBuild project made
    ``PUBLIC_READ``, an RDS instance or cluster made, or restored, ``publiclyAccessible``). Present,
    true or false, on every event that was evaluated; absent on others.
``public_via`` (``policy`` | ``acl`` | ``attribute``)
    What made it public; only when ``public`` is true.
``ingress_cidrs`` (list of str)
    The networks an *allow ingress* rule opens (security group ingress, network ACL ingress
    entries with ``ruleAction: allow``, RDS and Redshift security group ingress), normalised
    (``0.0.0.0/0``, ``::/0``). Egress and deny entries are left out.

Rules see them under ``ctagg.`` (``ctagg.public: true``). They are never written into the record:
:func:`with_derived` returns a shallow copy with a ``ctagg`` key, and only alerts (and normalized
output) carry them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from typing import Any

from aggregator.normalize.policy import acl_is_public, load_policy, policy_is_public

DERIVED_KEY = "ctagg"
Derived = dict[str, Any]
Extractor = Callable[[dict[str, Any]], Derived | None]


def _params(record: dict[str, Any]) -> dict[str, Any]:
    p = record.get("requestParameters")
    return p if isinstance(p, dict) else {}


def _items(value: Any, *path: str) -> Iterator[Any]:
    """Every value at ``path`` below ``value``; lists fan out (CloudTrail's ``items`` shapes)."""
    cur = [value]
    for key in path:
        nxt: list[Any] = []
        for c in cur:
            for x in c if isinstance(c, list) else [c]:
                if isinstance(x, dict) and key in x:
                    v = x[key]
                    nxt.extend(v if isinstance(v, list) else [v])
        cur = nxt
    yield from cur


def _verdict(public: bool, via: str) -> Derived:
    return {"public": True, "public_via": via} if public else {"public": False}


# --------------------------------------------------------------------------- resource policies


def _policy_values(params: dict[str, Any], keys: tuple[str, ...]) -> list[Any]:
    out = []
    for key in keys:
        v: Any = params
        for part in key.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        if v is not None and v != "":
            out.append(v)
    return out


def _policy_extractor(*keys: str) -> Extractor:
    def extract(record: dict[str, Any]) -> Derived | None:
        values = _policy_values(_params(record), keys)
        docs = [d for d in (load_policy(v) for v in values) if d is not None]
        if not docs:
            return None
        return _verdict(any(policy_is_public(d) for d in docs), "policy")

    return extract


def _sns_attributes(record: dict[str, Any]) -> Derived | None:
    params = _params(record)
    if str(params.get("attributeName", "")).lower() != "policy":
        return None
    doc = load_policy(params.get("attributeValue"))
    return None if doc is None else _verdict(policy_is_public(doc), "policy")


def _lambda_permission(record: dict[str, Any]) -> Derived | None:
    """AddPermission as the policy statement it adds (source / org conditions included)."""
    params = _params(record)
    principal = params.get("principal")
    if principal is None:
        return None
    cond: dict[str, dict[str, Any]] = {}
    for param, key, op in (
        ("sourceArn", "aws:SourceArn", "ArnLike"),
        ("sourceAccount", "aws:SourceAccount", "StringEquals"),
        ("principalOrgID", "aws:PrincipalOrgID", "StringEquals"),
    ):
        if params.get(param):
            cond.setdefault(op, {})[key] = params[param]
    statement: dict[str, Any] = {"Effect": "Allow", "Principal": principal, "Action": "*"}
    if cond:
        statement["Condition"] = cond
    return _verdict(policy_is_public({"Statement": [statement]}), "policy")


# --------------------------------------------------------------------------- ACLs, attributes


def _s3_acl(record: dict[str, Any]) -> Derived | None:
    params = _params(record)
    if not params:
        return None
    return _verdict(acl_is_public(params), "acl")


def _group_all(*path: str) -> Extractor:
    def extract(record: dict[str, Any]) -> Derived | None:
        params = _params(record)
        if not params:
            return None
        groups = [str(g).lower() for g in _items(params, *path)]
        return _verdict("all" in groups, "attribute")

    return extract


def _rds_snapshot_attribute(record: dict[str, Any]) -> Derived | None:
    params = _params(record)
    if str(params.get("attributeName", "")).lower() != "restore":
        return None
    added = [str(v).lower() for v in _items(params, "valuesToAdd")]
    return _verdict("all" in added, "attribute")


def _codebuild_visibility(record: dict[str, Any]) -> Derived | None:
    visibility = _params(record).get("projectVisibility")
    if visibility is None:
        return None
    return _verdict(str(visibility).upper() == "PUBLIC_READ", "attribute")


def _rds_publicly_accessible(record: dict[str, Any]) -> Derived | None:
    """The request's ``publiclyAccessible``, else the resulting state in the response (a restore
    from a snapshot inherits it without asking)."""
    value = _params(record).get("publiclyAccessible")
    if value is None:
        response = record.get("responseElements")
        value = response.get("publiclyAccessible") if isinstance(response, dict) else None
    if value is None:
        return None
    return _verdict(value is True or str(value).lower() == "true", "attribute")


# --------------------------------------------------------------------------- ingress


def _network(text: Any) -> str | None:
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        return text.strip()


def _ingress(cidrs: Iterator[Any]) -> Derived | None:
    out = sorted({n for n in (_network(c) for c in cidrs) if n is not None})
    return {"ingress_cidrs": out} if out else None


def _sg_ingress(record: dict[str, Any]) -> Derived | None:
    params = _params(record)

    def cidrs() -> Iterator[Any]:
        perms = params.get("ipPermissions")
        yield from _items(perms, "items", "ipRanges", "items", "cidrIp")
        yield from _items(perms, "items", "ipv6Ranges", "items", "cidrIpv6")
        yield from _items(params, "cidrIp")  # the older flat request shape
        yield from _items(params, "cidrIpv6")

    return _ingress(cidrs())


def _nacl_entry(record: dict[str, Any]) -> Derived | None:
    params = _params(record)
    egress = params.get("egress")
    if egress is True or str(egress).lower() == "true":
        return None
    if str(params.get("ruleAction", "")).lower() != "allow":
        return None
    return _ingress(iter([params.get("cidrBlock"), params.get("ipv6CidrBlock")]))


def _cidrip(*keys: str) -> Extractor:
    def extract(record: dict[str, Any]) -> Derived | None:
        params = _params(record)
        return _ingress(iter([params.get(k) for k in keys]))

    return extract


# --------------------------------------------------------------------------- the table

_POLICY_KEYS: dict[str, tuple[str, ...]] = {
    "putbucketpolicy": ("bucketPolicy",),
    "setrepositorypolicy": ("policyText",),
    "putkeypolicy": ("policy",),
    "createkey": ("policy",),
    "setqueueattributes": ("attributes.Policy",),
    "createqueue": ("attributes.Policy",),
    "createtopic": ("attributes.Policy",),
    "createelasticsearchdomain": ("accessPolicies",),
    "updateelasticsearchdomainconfig": ("accessPolicies",),
    "createdomain": ("accessPolicies",),
    "updatedomainconfig": ("accessPolicies",),
    "setvaultaccesspolicy": ("policy.policy", "policy.Policy", "policy"),
    "putresourcepolicy": ("resourcePolicy", "policyInJson", "policyDocument"),
    "createrole": ("assumeRolePolicyDocument",),
    "updateassumerolepolicy": ("policyDocument",),
    "putfilesystempolicy": ("policy",),
    "putbackupvaultaccesspolicy": ("policy",),
}

EXTRACTORS: dict[str, Extractor] = {name: _policy_extractor(*k) for name, k in _POLICY_KEYS.items()}
EXTRACTORS.update(
    {
        "settopicattributes": _sns_attributes,
        "addpermission": _lambda_permission,
        "addpermission20150331": _lambda_permission,
        "addpermission20150331v2": _lambda_permission,
        "putbucketacl": _s3_acl,
        "putobjectacl": _s3_acl,
        "putobject": _s3_acl,
        "copyobject": _s3_acl,
        "createbucket": _s3_acl,
        "createmultipartupload": _s3_acl,
        "modifysnapshotattribute": _group_all("createVolumePermission", "add", "items", "group"),
        "modifyimageattribute": _group_all("launchPermission", "add", "items", "group"),
        "modifydbsnapshotattribute": _rds_snapshot_attribute,
        "modifydbclustersnapshotattribute": _rds_snapshot_attribute,
        "updateprojectvisibility": _codebuild_visibility,
        "modifydbinstance": _rds_publicly_accessible,
        "modifydbcluster": _rds_publicly_accessible,
        "createdbinstance": _rds_publicly_accessible,
        "createdbcluster": _rds_publicly_accessible,
        "restoredbinstancefromdbsnapshot": _rds_publicly_accessible,
        "restoredbclusterfromsnapshot": _rds_publicly_accessible,
        "authorizesecuritygroupingress": _sg_ingress,
        "createnetworkaclentry": _nacl_entry,
        "replacenetworkaclentry": _nacl_entry,
        "authorizedbsecuritygroupingress": _cidrip("cIDRIP", "cidrip"),
        "authorizeclustersecuritygroupingress": _cidrip("cIDRIP", "cidrip"),
    }
)


def derive(record: dict[str, Any]) -> Derived | None:
    """The derived fields of one record, or None when there are none (most records)."""
    name = record.get("eventName")
    if not isinstance(name, str):
        return None
    extract = EXTRACTORS.get(name.lower())
    if extract is None:
        return None
    return extract(record)


def with_derived(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` itself, or a shallow copy with the derived fields under ``ctagg``."""
    extra = derive(record)
    if not extra:
        return record
    return {**record, DERIVED_KEY: extra}
