"""CloudTrail record → Elastic Common Schema (8.x) document, for OpenSearch / Elasticsearch.

Pure: no I/O, ``now`` is passed in. Every value under ``aws.cloudtrail`` has one type whatever
the event: polymorphic objects (``requestParameters``, ``responseElements``, ...) are kept as
JSON text plus a size-capped ``flattened`` copy (dotted keys → strings), so one index mapping
fits every event.
"""

from __future__ import annotations

from typing import Any

from aggregator.normalize._actions import ecs_category
from aggregator.normalize._util import (
    Flattener,
    arn_tail,
    as_str,
    is_hostname,
    json_text,
    parse_time,
    split_source,
    stable,
)
from aggregator.normalize.context import EventContext

ECS_VERSION = "8.11.0"

# Polymorphic objects: CloudTrail key → name under aws.cloudtrail (JSON text) and
# aws.cloudtrail.flattened (dotted keys → strings).
POLYMORPHIC = {
    "requestParameters": "request_parameters",
    "responseElements": "response_elements",
    "additionalEventData": "additional_eventdata",
    "serviceEventDetails": "service_event_details",
    "insightDetails": "insight_details",
    "edgeDeviceDetails": "edge_device_details",
    "addendum": "addendum",
}
# Scalars kept as strings under aws.cloudtrail.
SCALARS = {
    "eventVersion": "event_version",
    "eventType": "event_type",
    "eventCategory": "event_category",
    "requestID": "request_id",
    "sharedEventID": "shared_event_id",
    "apiVersion": "api_version",
    "recipientAccountId": "recipient_account_id",
    "vpcEndpointId": "vpc_endpoint_id",
    "vpcEndpointAccountId": "vpc_endpoint_account_id",
    "errorCode": "error_code",
    "errorMessage": "error_message",
    "sessionCredentialFromConsole": "session_credential_from_console",
}
BOOLEANS = {"readOnly": "read_only", "managementEvent": "management_event"}
# Mapped elsewhere (ECS fields or typed objects).
OTHER_KNOWN = frozenset(
    {
        "eventTime",
        "eventID",
        "userAgent",
        "userIdentity",
        "resources",
        "tlsDetails",
        "eventSource",
        "eventName",
        "sourceIPAddress",
        "awsRegion",
    }
)
_STRING_OR_UNMAPPED = frozenset({"eventSource", "eventName", "sourceIPAddress"})

_SCALAR_ITEMS = tuple(SCALARS.items())
_POLY_ITEMS = tuple(POLYMORPHIC.items())
_BOOL_ITEMS = tuple(BOOLEANS.items())
KNOWN = frozenset(POLYMORPHIC) | frozenset(SCALARS) | frozenset(BOOLEANS) | OTHER_KNOWN

_REGION_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_TRUE = frozenset({True, "true", "True", "TRUE"})
_FALSE = frozenset({False, "false", "False", "FALSE"})


_region_cache: dict[str, bool] = {}


def _region_ok(region: str) -> bool:
    """Region-shaped (``eu-west-1``); placeholders such as ``<region-code>`` are not."""
    hit = _region_cache.get(region)
    if hit is None:
        hit = bool(region) and _REGION_CHARS.issuperset(region)
        if len(_region_cache) > 4096:
            _region_cache.clear()
        _region_cache[region] = hit
    return hit


def _bool(value: Any) -> bool | None:
    if value is True or value is False:
        return value
    if isinstance(value, str):
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
    return None


def _user(ui: dict[str, Any], utype: Any) -> dict[str, Any]:
    user: dict[str, Any] = {}
    name = ui.get("userName")
    sc = ui.get("sessionContext")
    issuer = sc.get("sessionIssuer") if isinstance(sc, dict) else None
    if not (isinstance(name, str) and name):
        name = None
        if utype in ("AssumedRole", "FederatedUser"):
            name = arn_tail(ui.get("arn"))
        elif utype == "Root":
            name = "root"
        elif utype == "AWSService":
            inv = ui.get("invokedBy")
            name = inv if isinstance(inv, str) and inv else None
    if name is not None:
        user["name"] = name
    pid = ui.get("principalId")
    if isinstance(pid, str) and pid:
        user["id"] = pid
    else:
        obo = ui.get("onBehalfOf")
        if isinstance(obo, dict) and isinstance(obo.get("userId"), str):
            user["id"] = obo["userId"]
    if isinstance(issuer, dict):
        role = issuer.get("arn")
        if isinstance(role, str) and role:
            user["roles"] = [role]
    return user


def to_ecs(
    record: dict[str, Any],
    *,
    now_iso: str,
    context: EventContext | None,
    flattener: Flattener,
) -> dict[str, Any]:
    """Map one CloudTrail record to an ECS document."""
    get = record.get
    source_name = get("eventSource")
    event_name = get("eventName")
    event_type = get("eventType")
    is_insight = event_type == "AwsCloudTrailInsight"
    ct: dict[str, Any] = {}
    event: dict[str, Any] = {
        "kind": "alert" if is_insight else "event",
        "module": "aws",
        "dataset": "aws.cloudtrail",
        "created": now_iso,
    }
    doc: dict[str, Any] = {"ecs": {"version": ECS_VERSION}, "event": event}

    t = parse_time(get("eventTime"))
    if t is not None:
        doc["@timestamp"] = t[1]
    else:
        doc["@timestamp"] = now_iso
        doc["tags"] = ["ctagg_invalid_event_time"]
        if get("eventTime") is not None:
            ct["invalid_event_time"] = as_str(get("eventTime"))

    eid = get("eventID")
    if eid is not None:
        event["id"] = as_str(eid)

    insight = get("insightDetails") if is_insight else None
    if isinstance(insight, dict):
        src = insight.get("eventSource")
        act = insight.get("insightType")
        event["provider"] = src if isinstance(src, str) else "cloudtrail.amazonaws.com"
        if isinstance(act, str):
            event["action"] = act
        event["category"] = ["configuration"]
        event["type"] = ["info"]
    elif isinstance(source_name, str) and isinstance(event_name, str):
        event["provider"] = source_name
        event["action"] = event_name
        cats, types = ecs_category(source_name, event_name)
        event["category"] = list(cats)
        event["type"] = list(types)
    else:
        if isinstance(source_name, str):
            event["provider"] = source_name
        if isinstance(event_name, str):
            event["action"] = event_name

    # Outcome: an errorCode is a failure; ConsoleLogin reports its own result.
    error_code = get("errorCode")
    response = get("responseElements")
    msg = get("errorMessage")
    if error_code or msg:
        err: dict[str, Any] = {}
        if error_code:
            err["code"] = as_str(error_code)
        if msg:
            err["message"] = as_str(msg)
        doc["error"] = err
    if error_code:
        event["outcome"] = "failure"
    elif isinstance(response, dict) and isinstance(response.get("ConsoleLogin"), str):
        result = response["ConsoleLogin"]
        event["outcome"] = (
            "success" if result == "Success" else "failure" if result == "Failure" else "unknown"
        )
    elif is_insight:
        event["outcome"] = "unknown"
    else:
        event["outcome"] = "success"

    # cloud.*: the account that logged the event (recipientAccountId). The actor's own
    # account stays in aws.cloudtrail.user_identity.account_id — never merged.
    cloud: dict[str, Any] = {"provider": "aws"}
    region = get("awsRegion")
    if type(region) is str and _region_ok(region):
        cloud["region"] = region
    recipient = get("recipientAccountId")
    if recipient is not None:
        cloud["account"] = {"id": as_str(recipient)}
    if isinstance(source_name, str) and source_name:
        cloud["service"] = {"name": source_name.split(".", 1)[0]}
    doc["cloud"] = cloud

    ips, raw_src = split_source(get("sourceIPAddress"))
    if raw_src is not None:
        source: dict[str, Any] = {"address": raw_src}
        if ips:
            source["ip"] = ips[0]
        elif is_hostname(raw_src):
            source["domain"] = raw_src
        doc["source"] = source

    ua = get("userAgent")
    if ua is not None:
        doc["user_agent"] = {"original": as_str(ua)}

    related_users: list[str] = []
    ui = get("userIdentity")
    if isinstance(ui, dict):
        user = _user(ui, ui.get("type"))
        if isinstance(source_name, str) and source_name == "iam.amazonaws.com":
            rp = get("requestParameters")
            if isinstance(rp, dict):
                target = rp.get("userName")
                if isinstance(target, str) and target:
                    user["target"] = {"name": target}
                    related_users.append(target)
        if user:
            doc["user"] = user
            if "name" in user:
                related_users.insert(0, user["name"])
        ct["user_identity"] = stable(ui)
    if related_users or ips:
        related: dict[str, Any] = {}
        if related_users:
            related["user"] = list(dict.fromkeys(related_users))
        if ips:
            related["ip"] = ips
        doc["related"] = related

    # aws.cloudtrail.*: the full record, type-stable.
    flattened: dict[str, Any] = {}
    truncated = False
    unmapped: dict[str, Any] | None = None
    for key, name in _SCALAR_ITEMS:
        value = get(key)
        if value is not None:
            ct[name] = value if type(value) is str else as_str(value)
    for key, name in _POLY_ITEMS:
        value = get(key)
        if value is not None and value != {}:
            ct[name] = json_text(value)
            flat, cut = flattener.flatten(value)
            if flat:
                flattened[name] = flat
            if cut:
                truncated = True
    for key, name in _BOOL_ITEMS:
        value = get(key)
        if value is True or value is False:
            ct[name] = value
        elif value is not None:
            b = _bool(value)
            if b is not None:
                ct[name] = b
            else:
                unmapped = unmapped or {}
                unmapped[key] = value
    value = get("resources")
    if value is not None:
        if type(value) is list:
            ct["resources"] = [stable(r) for r in value if type(r) is dict]
        else:
            unmapped = unmapped or {}
            unmapped["resources"] = value
    value = get("tlsDetails")
    if value is not None:
        ct["tls_details"] = stable(value)
    if region is not None and "region" not in cloud:
        ct["aws_region"] = as_str(region)
    for key in _STRING_OR_UNMAPPED:
        value = get(key)
        if value is not None and type(value) is not str:
            unmapped = unmapped or {}
            unmapped[key] = value
    if ui is not None and type(ui) is not dict:
        unmapped = unmapped or {}
        unmapped["userIdentity"] = ui
    for key in [k for k in record if k not in KNOWN]:
        unmapped = unmapped or {}
        unmapped[key] = record[key]
    if unmapped:
        ct["unmapped"] = json_text(unmapped)
        flat, cut = flattener.flatten(unmapped)
        if flat:
            flattened["unmapped"] = flat
        truncated |= cut
    if flattened:
        ct["flattened"] = flattened
    if truncated:
        ct["flattened_truncated"] = True

    if event_name == "ConsoleLogin":
        aed = get("additionalEventData")
        if isinstance(aed, dict):
            cl: dict[str, Any] = {}
            mobile = aed.get("MobileVersion")
            if isinstance(mobile, str):
                cl["mobile_version"] = mobile.lower() == "yes"
            login_to = aed.get("LoginTo")
            if isinstance(login_to, str):
                cl["login_to"] = login_to
            mfa = aed.get("MFAUsed")
            if isinstance(mfa, str):
                cl["mfa_used"] = mfa.lower() == "yes"
            if cl:
                ct["console_login"] = {"additional_eventdata": cl}

    doc["aws"] = {"cloudtrail": ct}

    if context is not None:
        _enrich(doc, cloud, context)
    return doc


def _enrich(doc: dict[str, Any], cloud: dict[str, Any], ctx: EventContext) -> None:
    if ctx.account_name:
        cloud.setdefault("account", {})["name"] = ctx.account_name
    if ctx.organization_id:
        doc["organization"] = {"id": ctx.organization_id}
    aws = doc["aws"]
    if ctx.ou_path or ctx.ou_ids:
        org: dict[str, Any] = {}
        if ctx.ou_path:
            org["ou_path"] = ctx.ou_path
        if ctx.ou_ids:
            org["ou_ids"] = list(ctx.ou_ids)
        aws["organization"] = org
    if ctx.account_tags:
        aws["account"] = {"tags": {str(k): str(v) for k, v in ctx.account_tags.items()}}
    if ctx.archive_bucket is not None or ctx.archive_key is not None:
        doc["ctagg"] = {"archive": {"bucket": ctx.archive_bucket, "key": ctx.archive_key}}
