"""Does a resource policy or an S3 ACL grant access to the public? Pure functions, no I/O.

The reasoning follows IAM Access Analyzer's notion of "public": a grant is public when anyone
(any principal of any account, or anonymous) could be allowed by it.

A policy statement grants public access when

* its ``Effect`` is ``Allow``;
* its ``Principal`` is ``*``, ``{"AWS": "*"}`` (or a list holding ``*``), or it uses
  ``NotPrincipal`` (allow everyone *except* the named ones);
* and none of its ``Condition`` entries restricts who can use it. A condition restricts when its
  key names the caller's or the source's identity or network (:data:`RESTRICTING_KEYS`:
  ``aws:SourceArn``, ``aws:SourceAccount``, ``aws:SourceOrgID``, ``aws:PrincipalOrgID``,
  ``aws:PrincipalAccount``, ``aws:PrincipalArn``, ``aws:SourceVpc``, ``aws:SourceVpce``,
  ``aws:SourceIp``, ...), its operator is a positive test (``StringEquals``, ``StringLike``,
  ``ArnLike``, ``IpAddress``, ... with or without ``ForAnyValue:``/``ForAllValues:``; not a
  ``...Not...`` operator, which allows everyone else, and not ``...IfExists``, which passes when the
  key is absent) and none of its values is a pure wildcard (``*``) or, for IP keys, a ``/0``
  range. Conditions of one statement are ANDed, so one restricting condition is enough.

A ``Deny`` statement for everyone (``Principal: "*"``) on every action (``*``) whose conditions are
all negated restricting tests (the "deny unless from my organization / VPC / IPs" guard) makes the
whole policy non-public; an unconditional one does too.

Policies arrive as JSON text or as already-parsed objects; text that is not a JSON object is not
a policy (nothing is public).

An S3 ACL is public when it grants to the ``AllUsers`` or ``AuthenticatedUsers`` group (any AWS
account), in any of the shapes CloudTrail records: the XML ``AccessControlPolicy`` (API and
console), a canned ``x-amz-acl`` (``public-read``, ``public-read-write``, ``authenticated-read``)
or an ``x-amz-grant-*`` header naming the group's URI.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import orjson

# Condition keys that narrow who (or from where) a grant applies to. Lower case.
RESTRICTING_KEYS = frozenset(
    {
        "aws:sourcearn",
        "aws:sourceaccount",
        "aws:sourceowner",
        "aws:sourceorgid",
        "aws:sourceorgpaths",
        "aws:principalorgid",
        "aws:principalorgpaths",
        "aws:principalaccount",
        "aws:principalarn",
        "aws:resourceorgid",
        "aws:userid",
        "aws:username",
        "aws:sourcevpc",
        "aws:sourcevpce",
        "aws:sourceip",
        "aws:vpcsourceip",
        "kms:calleraccount",
        "lambda:functionarn",
        "s3:dataaccesspointaccount",
        "s3:dataaccesspointarn",
        "sns:endpoint",
        "cognito-identity.amazonaws.com:aud",
    }
)
IP_KEYS = frozenset({"aws:sourceip", "aws:vpcsourceip"})

ALL_USERS = "acs.amazonaws.com/groups/global/allusers"
AUTHENTICATED_USERS = "acs.amazonaws.com/groups/global/authenticatedusers"
PUBLIC_CANNED_ACLS = frozenset({"public-read", "public-read-write", "authenticated-read"})
GRANT_HEADERS = (
    "x-amz-grant-read",
    "x-amz-grant-write",
    "x-amz-grant-read-acp",
    "x-amz-grant-write-acp",
    "x-amz-grant-full-control",
)


def load_policy(value: Any) -> dict[str, Any] | None:
    """A policy document from JSON text or an object; None when it is not one."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
        return doc if isinstance(doc, dict) else None
    return None


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _statements(policy: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for st in _as_list(policy.get("Statement")):
        if isinstance(st, dict):
            yield st


def principal_is_public(principal: Any) -> bool:
    """``*``, or a principal map whose ``AWS`` (or ``CanonicalUser``) entry holds ``*``."""
    if isinstance(principal, str):
        return principal.strip() == "*"
    if isinstance(principal, dict):
        for kind, who in principal.items():
            if kind in ("AWS", "CanonicalUser") and any(
                isinstance(w, str) and w.strip() == "*" for w in _as_list(who)
            ):
                return True
    return False


def _wildcard_only(value: Any) -> bool:
    text = str(value).strip() if value is not None else ""
    return not text.replace("*", "").replace("?", "")


def _world_network(value: Any) -> bool:
    try:
        return ipaddress.ip_network(str(value).strip(), strict=False).prefixlen == 0
    except ValueError:
        return False


def _split_operator(operator: str) -> tuple[str, bool]:
    """(base operator in lower case without set prefix / IfExists, if_exists)."""
    op = operator.strip()
    if ":" in op:  # ForAnyValue: / ForAllValues:
        op = op.split(":", 1)[1]
    if_exists = op.lower().endswith("ifexists")
    if if_exists:
        op = op[: -len("IfExists")]
    return op.lower(), if_exists


def _negated(op: str) -> bool:
    return "not" in op  # StringNotEquals, StringNotLike, ArnNotLike, NotIpAddress, ...


def _restricts(key: str, values: Any) -> bool:
    """Values of a restricting key that name something specific (no ``*``, no ``/0``)."""
    k = key.strip().lower()
    if k not in RESTRICTING_KEYS:
        return False
    vals = _as_list(values)
    if not vals:
        return False
    if any(_wildcard_only(v) for v in vals):
        return False
    return not (k in IP_KEYS and any(_world_network(v) for v in vals))


def _conditions(statement: dict[str, Any]) -> Iterator[tuple[str, bool, str, Any]]:
    """(base operator, if_exists, key, values) of every condition of a statement."""
    cond = statement.get("Condition")
    if not isinstance(cond, dict):
        return
    for operator, entries in cond.items():
        if not isinstance(operator, str) or not isinstance(entries, dict):
            continue
        op, if_exists = _split_operator(operator)
        for key, values in entries.items():
            if isinstance(key, str):
                yield op, if_exists, key, values


def statement_restricted(statement: dict[str, Any]) -> bool:
    """True when one of the statement's conditions narrows who can use it."""
    for op, if_exists, key, values in _conditions(statement):
        if op == "null" or if_exists or _negated(op):
            continue
        if _restricts(key, values):
            return True
    return False


def _all_actions(statement: dict[str, Any]) -> bool:
    return any(isinstance(a, str) and a.strip() == "*" for a in _as_list(statement.get("Action")))


def _public_guard(statement: dict[str, Any]) -> bool:
    """A Deny for everyone on everything, unconditional or only "unless <restricting key>"."""
    if str(statement.get("Effect", "")).lower() != "deny":
        return False
    if not principal_is_public(statement.get("Principal")) or not _all_actions(statement):
        return False
    conds = list(_conditions(statement))
    return all(_negated(op) and not if_exists and _restricts(k, v) for op, if_exists, k, v in conds)


def statement_is_public(statement: dict[str, Any]) -> bool:
    if str(statement.get("Effect", "")).strip().lower() != "allow":
        return False
    if "NotPrincipal" in statement:
        anyone = True
    else:
        anyone = principal_is_public(statement.get("Principal"))
    return anyone and not statement_restricted(statement)


def policy_is_public(policy: Any) -> bool:
    """True when the policy (text or object) lets anyone in (see the module docstring)."""
    doc = load_policy(policy)
    if doc is None:
        return False
    statements = list(_statements(doc))
    if any(_public_guard(st) for st in statements):
        return False
    return any(statement_is_public(st) for st in statements)


def _grants(acp: Any) -> Iterator[dict[str, Any]]:
    if not isinstance(acp, dict):
        return
    acl = acp.get("AccessControlList")
    if not isinstance(acl, dict):
        return
    for grant in _as_list(acl.get("Grant")):
        if isinstance(grant, dict):
            yield grant


def _public_uri(text: Any) -> bool:
    t = str(text).lower()
    return ALL_USERS in t or AUTHENTICATED_USERS in t


def acl_is_public(params: Any) -> bool:
    """True when S3 request parameters grant to AllUsers or AuthenticatedUsers."""
    if not isinstance(params, dict):
        return False
    for canned in _as_list(params.get("x-amz-acl")):
        if isinstance(canned, str) and canned.strip().lower() in PUBLIC_CANNED_ACLS:
            return True
    for header in GRANT_HEADERS:
        if any(_public_uri(v) for v in _as_list(params.get(header))):
            return True
    for grant in _grants(params.get("AccessControlPolicy")):
        grantee = grant.get("Grantee")
        if isinstance(grantee, dict) and _public_uri(grantee.get("URI", "")):
            return True
    return False
