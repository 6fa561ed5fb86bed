"""CloudTrail record → OCSF 1.1.0 event: API Activity (6003), Authentication (3002) for sign-in
and AssumeRole-family events, Account Change (3001) for IAM user/role/policy changes.

Field choices follow Amazon Security Lake's CloudTrail mapping (checked against its samples in
golden tests). Pure: no I/O, ``now`` is passed in.
"""

from __future__ import annotations

from typing import Any

from aggregator.normalize._actions import (
    ACCOUNT_CHANGE,
    ACTIVITY_NAMES,
    API_ACTIVITY,
    AUTHENTICATION,
    CLASS_NAMES,
    ocsf_class,
)
from aggregator.normalize._util import is_hostname, parse_time, split_source
from aggregator.normalize.context import EventContext

OCSF_VERSION = "1.1.0"
PROFILES = ("cloud", "datetime")
# In 1.1.0 ``actor`` is an attribute of Authentication and Account Change only through the
# ``host`` profile (API Activity has it natively).
PROFILES_HOST = ("cloud", "datetime", "host")
UNKNOWN = "Unknown"  # a value OCSF requires that the record does not give
INSIGHTS_SERVICE = "cloudtrail.amazonaws.com"

# Top-level CloudTrail keys fully represented by mapped OCSF attributes.
CONSUMED = frozenset(
    {
        "eventVersion",
        "eventSource",
        "eventName",
        "eventID",
        "eventType",
        "eventCategory",
        "requestID",
        "errorCode",
        "errorMessage",
        "apiVersion",
        "userAgent",
        "recipientAccountId",
        "resources",
        "userIdentity",
        "eventTime",
        "awsRegion",
        "sourceIPAddress",
    }
)
# userIdentity keys mapped into actor.*; the rest goes to unmapped.userIdentity.
_UI_MAPPED = frozenset(
    {
        "type",
        "principalId",
        "arn",
        "accountId",
        "accessKeyId",
        "userName",
        "invokedBy",
        "identityProvider",
    }
)

_names: dict[tuple[int, int], tuple[str, int, str, str, str]] = {}


def _class_names(class_uid: int, activity_id: int) -> tuple[str, int, str, str, str]:
    hit = _names.get((class_uid, activity_id))
    if hit is None:
        class_name, category_uid, category_name = CLASS_NAMES[class_uid]
        activity_name = ACTIVITY_NAMES[class_uid].get(activity_id, "Other")
        hit = (
            class_name,
            category_uid,
            category_name,
            activity_name,
            f"{class_name}: {activity_name}",
        )
        _names[(class_uid, activity_id)] = hit
    return hit


def _put(d: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        d[key] = value


def _actor(ui: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(actor, leftover userIdentity keys for unmapped)."""
    user: dict[str, Any] = {}
    get = ui.get
    utype = get("type")
    _put(user, "type", utype)
    if utype != "AssumedRole":  # Security Lake leaves the name of an assumed role empty
        _put(user, "name", get("userName"))
    _put(user, "uid", get("arn"))
    _put(user, "uid_alt", get("principalId"))
    acct = get("accountId")
    if acct is not None:
        user["account"] = {"uid": acct}
    invoked_by = get("invokedBy")
    if "name" not in user and "uid" not in user and "account" not in user:
        # OCSF needs a name, uid or account: an AWS service is named by invokedBy; an
        # assumed role with nothing else by its userName (never invented beyond that).
        name = get("userName") or (invoked_by if utype == "AWSService" else None)
        user["name"] = name if isinstance(name, str) and name else UNKNOWN
    _put(user, "credential_uid", get("accessKeyId"))
    actor: dict[str, Any] = {"user": user}
    _put(actor, "invoked_by", invoked_by)
    idp = get("identityProvider")
    if idp is not None:
        actor["idp"] = {"name": idp}
    sc = get("sessionContext")
    if isinstance(sc, dict):
        session: dict[str, Any] = {}
        attrs = sc.get("attributes")
        if isinstance(attrs, dict):
            created = parse_time(attrs.get("creationDate"))
            if created is not None:
                session["created_time"] = created[0]
                session["created_time_dt"] = created[1]
            mfa = attrs.get("mfaAuthenticated")
            if mfa is not None:
                session["is_mfa"] = mfa is True or mfa == "true"
        issuer = sc.get("sessionIssuer")
        if isinstance(issuer, dict):
            _put(session, "issuer", issuer.get("arn"))
        if session:
            actor["session"] = session
    leftover = None
    if not _UI_MAPPED.issuperset(ui):
        leftover = {k: v for k, v in ui.items() if k not in _UI_MAPPED}
    return actor, leftover


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _actor_user(actor: dict[str, Any] | None) -> dict[str, Any]:
    """The acting user as the subject of an Authentication or Account Change."""
    au = (actor or {}).get("user", {})
    user = {k: au[k] for k in ("uid", "uid_alt", "name", "type") if k in au}
    if "account" in au:
        user["account"] = au["account"]
    if not ("uid" in user or "name" in user or "account" in user):
        user["name"] = UNKNOWN
    return user


def _authentication(
    out: dict[str, Any], record: dict[str, Any], name: Any, actor: dict[str, Any] | None
) -> None:
    rp = _dict(record.get("requestParameters"))
    re_ = _dict(record.get("responseElements"))
    source = record.get("eventSource")
    if isinstance(source, str):  # what the user authenticates to (at least service or dst)
        out["service"] = {"name": source}
    if isinstance(name, str) and name.startswith("AssumeRole"):
        user: dict[str, Any] = {}
        _put(user, "uid", rp.get("roleArn"))
        _put(user, "name", rp.get("roleSessionName"))
        out["user"] = user if user else _actor_user(actor)
        session: dict[str, Any] = {}
        aru = _dict(re_.get("assumedRoleUser"))
        _put(session, "uid", aru.get("arn"))
        _put(session, "uid_alt", aru.get("assumedRoleId"))
        _put(session, "credential_uid", _dict(re_.get("credentials")).get("accessKeyId"))
        _put(session, "issuer", re_.get("issuer") or re_.get("provider"))
        if session:
            out["session"] = session
        if name == "AssumeRoleWithSAML":
            out["auth_protocol_id"] = 5
            out["auth_protocol"] = "SAML"
        elif name == "AssumeRoleWithWebIdentity":
            out["auth_protocol_id"] = 4
            out["auth_protocol"] = "OpenID"
        return
    # Sign-in and session-token events: the authenticating user is the actor.
    out["user"] = _actor_user(actor)
    creds = _dict(re_.get("credentials"))
    if creds:
        session = {}
        _put(session, "credential_uid", creds.get("accessKeyId"))
        fu = _dict(re_.get("federatedUser"))
        _put(session, "uid", fu.get("arn"))
        if session:
            out["session"] = session
    aed = _dict(record.get("additionalEventData"))
    mfa = aed.get("MFAUsed")
    if isinstance(mfa, str):
        out["is_mfa"] = mfa.lower() == "yes"
    login_to = aed.get("LoginTo")
    if login_to is not None:
        out["dst_endpoint"] = {"svc_name": login_to}
    if "service" not in out and "dst_endpoint" not in out:
        out["service"] = {"name": UNKNOWN}


def _account_change(
    out: dict[str, Any], record: dict[str, Any], actor: dict[str, Any] | None
) -> None:
    rp = _dict(record.get("requestParameters"))
    re_ = _dict(record.get("responseElements"))
    user: dict[str, Any] = {}
    _put(user, "name", rp.get("userName") or rp.get("roleName") or rp.get("groupName"))
    created = _dict(re_.get("user")) or _dict(re_.get("role"))
    _put(user, "uid", created.get("arn"))
    _put(user, "uid_alt", created.get("userId") or created.get("roleId"))
    # No subject in the request (requestParameters null): the actor changed itself.
    out["user"] = user if ("name" in user or "uid" in user) else _actor_user(actor)
    policy: dict[str, Any] = {}
    _put(policy, "uid", rp.get("policyArn"))
    _put(policy, "name", rp.get("policyName"))
    if policy:
        out["policy"] = policy


def to_ocsf(
    record: dict[str, Any],
    *,
    now_ms: int,
    context: EventContext | None,
) -> dict[str, Any]:
    """Map one CloudTrail record to an OCSF 1.1.0 event."""
    get = record.get
    source = get("eventSource")
    name = get("eventName")
    insight = get("insightDetails") if get("eventType") == "AwsCloudTrailInsight" else None
    if isinstance(insight, dict):
        source = insight.get("eventSource")
        name = insight.get("eventName")
        class_uid, activity_id = API_ACTIVITY, 99
    elif isinstance(source, str) and isinstance(name, str):
        ro = get("readOnly")
        class_uid, activity_id = ocsf_class(source, name, ro is True or ro == "true")
    else:
        class_uid, activity_id = API_ACTIVITY, 0
    class_name, category_uid, category_name, activity_name, type_name = _class_names(
        class_uid, activity_id
    )

    product: dict[str, Any] = {"name": "CloudTrail", "vendor_name": "AWS"}
    _put(product, "version", get("eventVersion"))
    feature = get("eventCategory")
    if feature is not None:
        product["feature"] = {"name": feature}
    metadata: dict[str, Any] = {
        "version": OCSF_VERSION,
        "product": product,
        "profiles": list(PROFILES if class_uid == API_ACTIVITY else PROFILES_HOST),
        "processed_time": now_ms,
    }
    _put(metadata, "uid", get("eventID"))
    _put(metadata, "event_code", get("eventType"))

    out: dict[str, Any] = {
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": category_uid,
        "category_name": category_name,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity_id,
        "type_name": type_name,
        "severity_id": 1,
        "severity": "Informational",
        "metadata": metadata,
    }
    unmapped: dict[str, Any] = {}

    t = parse_time(get("eventTime"))
    if t is not None:
        out["time"] = t[0]
        out["time_dt"] = t[1]
    else:
        out["time"] = now_ms
        if get("eventTime") is not None:
            unmapped["eventTime"] = get("eventTime")

    cloud: dict[str, Any] = {"provider": "AWS"}
    region = get("awsRegion")
    if isinstance(region, str):
        cloud["region"] = region
    elif region is not None:
        unmapped["awsRegion"] = region
    recipient = get("recipientAccountId")
    if recipient is not None:
        cloud["account"] = {"uid": recipient}
    out["cloud"] = cloud

    api: dict[str, Any] = {"operation": name if isinstance(name, str) and name else UNKNOWN}
    if source is not None:
        api["service"] = {"name": source}
    request_id = get("requestID")
    if request_id is not None:
        api["request"] = {"uid": request_id}
    error = get("errorCode")
    if error:
        response: dict[str, Any] = {"error": error}
        _put(response, "message", get("errorMessage"))
        api["response"] = response
    _put(api, "version", get("apiVersion"))
    out["api"] = api

    # Status: an errorCode is a failure; ConsoleLogin reports its own result.
    re_ = get("responseElements")
    login_result = re_.get("ConsoleLogin") if isinstance(re_, dict) else None
    if error or login_result == "Failure":
        out["status_id"], out["status"] = 2, "Failure"
        _put(out, "status_code", error)
        _put(out, "status_detail", get("errorMessage"))
    elif isinstance(insight, dict):
        out["status_id"], out["status"] = 0, "Unknown"
    else:
        out["status_id"], out["status"] = 1, "Success"

    ui = get("userIdentity")
    actor: dict[str, Any] | None = None
    if isinstance(ui, dict):
        actor, leftover = _actor(ui)
        out["actor"] = actor
        if leftover:
            unmapped["userIdentity"] = leftover
    elif ui is not None:
        unmapped["userIdentity"] = ui
    if actor is None:  # OCSF requires an actor; an Insights event is CloudTrail's own
        if isinstance(insight, dict):
            actor = {"invoked_by": INSIGHTS_SERVICE}
        else:
            actor = {"user": {"name": UNKNOWN}}
        out["actor"] = actor

    ua = get("userAgent")
    if ua is not None:
        out["http_request"] = {"user_agent": ua}

    ips, raw_src = split_source(get("sourceIPAddress"))
    src: dict[str, Any]
    if raw_src is not None:
        if ips:
            src = {"ip": ips[0]}
            if len(ips) > 1:
                src["intermediate_ips"] = ips[1:]
            elif raw_src != ips[0]:
                unmapped["sourceIPAddress"] = raw_src
        elif is_hostname(raw_src):  # an AWS service acting (cloudformation.amazonaws.com)
            src = {"svc_name": raw_src, "domain": raw_src}
        elif raw_src == "AWS Internal":
            src = {"svc_name": raw_src}
        else:  # not an IP (225.01.00.16, placeholders): named as given, kept verbatim
            src = {"name": raw_src}
            unmapped["sourceIPAddress"] = raw_src
    else:
        if get("sourceIPAddress") is not None:
            unmapped["sourceIPAddress"] = get("sourceIPAddress")
        by = actor.get("invoked_by")  # an AWS service, or CloudTrail for Insights
        src = {"svc_name": by} if isinstance(by, str) and by else {"name": UNKNOWN}
    out["src_endpoint"] = src

    resources = get("resources")
    if class_uid == AUTHENTICATION:  # Authentication has no resources in 1.1.0
        if resources is not None:
            unmapped["resources"] = resources
    elif isinstance(resources, list):
        res, rest = _resources(resources)
        if res:
            out["resources"] = res
        if rest:
            unmapped["resources"] = rest
    elif resources is not None:
        unmapped["resources"] = resources

    if class_uid == AUTHENTICATION:
        _authentication(out, record, name, actor)
    elif class_uid == ACCOUNT_CHANGE:
        _account_change(out, record, actor)

    for key, value in record.items():
        if key not in CONSUMED and value is not None:
            unmapped[key] = value

    if context is not None:
        _enrich(cloud, unmapped, context)
    if unmapped:
        out["unmapped"] = unmapped
    return out


def _resources(resources: list[Any]) -> tuple[list[dict[str, Any]], list[Any]]:
    """(OCSF resources, entries without an ARN or ARN prefix, which stay in ``unmapped``)."""
    res: list[dict[str, Any]] = []
    rest: list[Any] = []
    for r in resources:
        if not isinstance(r, dict):
            rest.append(r)
            continue
        arn = r.get("ARN") or r.get("arn")
        prefix = r.get("ARNPrefix")
        if not (isinstance(arn, str) and arn) and not (isinstance(prefix, str) and prefix):
            rest.append(r)
            continue
        item: dict[str, Any] = {"uid": arn} if isinstance(arn, str) and arn else {"name": prefix}
        _put(item, "type", r.get("type"))
        acct = r.get("accountId")
        if acct is not None:
            item["owner"] = {"account": {"uid": acct}}
        res.append(item)
    return res, rest


def _enrich(cloud: dict[str, Any], unmapped: dict[str, Any], ctx: EventContext) -> None:
    if ctx.account_name:
        cloud.setdefault("account", {})["name"] = ctx.account_name
    if ctx.organization_id or ctx.ou_path or ctx.ou_ids:
        org: dict[str, Any] = {}
        if ctx.organization_id:
            org["uid"] = ctx.organization_id
        if ctx.ou_path:
            org["ou_name"] = ctx.ou_path
        if ctx.ou_ids:
            org["ou_uid"] = ctx.ou_ids[-1]
        cloud["org"] = org
    ours: dict[str, Any] = {}
    if ctx.account_tags:  # cloud.account.labels is OCSF 1.2; 1.1.0 has no place for tags
        ours["account_tags"] = {str(k): str(v) for k, v in ctx.account_tags.items()}
    if ctx.archive_bucket is not None or ctx.archive_key is not None:
        ours["archive"] = {"bucket": ctx.archive_bucket, "key": ctx.archive_key}
    if ours:
        unmapped["ctagg"] = ours
