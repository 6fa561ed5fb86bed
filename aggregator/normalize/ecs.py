"""CloudTrail record → Elastic Common Schema (8.x) document, for OpenSearch / Elasticsearch.

Pure: no I/O, ``now`` is passed in. Every value under ``aws.cloudtrail`` has one type whatever
the event: polymorphic objects (``requestParameters``, ``responseElements``, ...) are kept as
JSON text plus a size-capped ``flattened`` copy (dotted keys → strings), so one index mapping
fits every event.
"""

from __future__ import annotations

from typing import Any

import orjson

from aggregator.normalize._actions import ecs_category
from aggregator.normalize._util import (
    Flattener,
    _ip_cache,
    _time_cache,
    arn_tail,
    as_str,
    is_hostname,
    json_text,
    parse_time,
    split_source,
    stable,
    stable_dict,
)
from aggregator.normalize.context import EventContext
from aggregator.normalize.geoip import GeoIP
from aggregator.normalize.useragent import user_agent as parse_user_agent

ECS_VERSION = "8.11.0"

# Every ECS field ctagg may emit (outside its own aws.* and ctagg.* namespaces). A test checks
# that the normalized test data sets nothing else and that each is an ECS 8.11 field; the
# OpenSearch index template is generated from these names and ecs_flat.yml.
ECS_FIELDS: tuple[str, ...] = (
    "@timestamp", "tags", "ecs.version",
    "event.action", "event.category", "event.created", "event.dataset", "event.id",
    "event.kind", "event.module", "event.outcome", "event.provider", "event.type",
    "error.code", "error.message",
    "cloud.account.id", "cloud.account.name", "cloud.provider", "cloud.region",
    "cloud.service.name", "organization.id",
    "source.address", "source.domain", "source.ip",
    "source.geo.city_name", "source.geo.continent_name", "source.geo.country_iso_code",
    "source.geo.country_name", "source.geo.location", "source.geo.postal_code",
    "source.geo.region_iso_code", "source.geo.region_name", "source.geo.timezone",
    "source.as.number", "source.as.organization.name",
    "related.ip", "related.user",
    "user.id", "user.name", "user.roles", "user.target.id", "user.target.name",
    "user.changes.name", "group.id", "group.name",
    "user_agent.original", "user_agent.name", "user_agent.version", "user_agent.device.name",
    "user_agent.os.name", "user_agent.os.version", "user_agent.os.full",
    "tls.version", "tls.version_protocol", "tls.cipher", "tls.client.server_name",
)  # fmt: skip

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

# One lookup per top-level key in the hot loop: key → (kind, aws.cloudtrail name).
_SCALAR, _POLY, _BOOL, _OTHER, _CHECK_STR, _SPECIAL = range(6)
_SPECIAL_KEYS = frozenset({"resources", "tlsDetails", "awsRegion", "userIdentity"})
_KEYS: dict[str, tuple[int, str]] = {
    **{k: (_SCALAR, v) for k, v in SCALARS.items()},
    **{k: (_POLY, v) for k, v in POLYMORPHIC.items()},
    **{k: (_BOOL, v) for k, v in BOOLEANS.items()},
    **{k: (_OTHER, k) for k in OTHER_KNOWN},
    **{k: (_CHECK_STR, k) for k in _STRING_OR_UNMAPPED},
    **{k: (_SPECIAL, k) for k in _SPECIAL_KEYS},
}

# Per record shape (its keys in order): the aws.cloudtrail steps, with the keys mapped
# elsewhere left out; None when the shape has a key outside the tables (the general loop keeps
# such keys, in record order, under ``unmapped``).
_RESOURCES, _TLS, _REGION = 6, 7, 8
_STEP_KIND = {"resources": _RESOURCES, "tlsDetails": _TLS, "awsRegion": _REGION}
_PLAN_MAX = 2048
_plans: dict[tuple[Any, ...], tuple[tuple[str, int, str], ...] | None] = {}


def _plan(shape: tuple[Any, ...]) -> tuple[tuple[str, int, str], ...] | None:
    steps: list[tuple[str, int, str]] = []
    for key in shape:
        spec = _KEYS.get(key) if type(key) is str else None
        if spec is None:
            return None
        kind, name = spec
        if kind == _SPECIAL:
            if key == "userIdentity":
                continue
            kind = _STEP_KIND[key]
        elif kind in (_OTHER, _CHECK_STR):
            continue
        steps.append((key, kind, name))
    return tuple(steps)


_REGION_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_TRUE = frozenset({True, "true", "True", "TRUE"})
_FALSE = frozenset({False, "false", "False", "FALSE"})


_region_cache: dict[str, bool] = {}
_services: dict[str, str] = {}  # eventSource → cloud.service.name
_MISS: Any = object()
_dumps = orjson.dumps
_NON_STR_KEYS = orjson.OPT_NON_STR_KEYS


def _region_ok(region: str) -> bool:
    """Region-shaped (``eu-west-1``); placeholders such as ``<region-code>`` are not."""
    hit = _region_cache.get(region)
    if hit is None:
        hit = bool(region) and _REGION_CHARS.issuperset(region)
        if len(_region_cache) > 4096:
            _region_cache.clear()
        _region_cache[region] = hit
    return hit


def _flat_strings(d: dict[Any, Any]) -> bool:
    """Every value a string and no key with a dot: the object is its own flattened copy."""
    for k, v in d.items():  # noqa: SIM110 (a loop is faster than all() over a generator)
        if type(v) is not str or type(k) is not str or "." in k:
            return False
    return True


def _bool(value: Any) -> bool | None:
    if value is True or value is False:
        return value
    if isinstance(value, str):
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
    return None


_identity_cache: dict[bytes, tuple[dict[str, Any], dict[str, Any]]] = {}


def _identity_uncached(ui: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(``stable(userIdentity)``, the ECS ``user`` fields it gives).

    ``sessionContext.attributes.*`` sit directly under ``session_context`` (``mfa_authenticated``,
    ``creation_date``), the names Elastic's CloudTrail detection rules query."""
    stable_ui = stable_dict(ui)
    sc = stable_ui.get("session_context")
    if type(sc) is dict and type(sc.get("attributes")) is dict:
        sc = {k: v for k, v in sc.items() if k != "attributes"} | sc["attributes"]
        created = sc.get("creation_date")
        t = parse_time(created) if type(created) is str else None
        if t is not None:
            sc["creation_date"] = t[1]
        stable_ui["session_context"] = sc
    return stable_ui, _user(ui, ui.get("type"))


def _identity(ui: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`_identity_uncached`, memoized on the identity's exact JSON: the same principal
    and session recur across many events. The results are shared between outputs (read-only;
    the caller copies the ``user`` dict before adding to it)."""
    try:
        key = orjson.dumps(ui)
    except TypeError:  # not JSON-encodable as is (integers beyond 64 bits)
        return _identity_uncached(ui)
    hit = _identity_cache.get(key)
    if hit is None:
        hit = _identity_uncached(ui)
        if len(_identity_cache) >= 4096:
            _identity_cache.clear()
        _identity_cache[key] = hit
    return hit


def _user(ui: dict[str, Any], utype: Any) -> dict[str, Any]:
    """ECS ``user``: ``user.name`` by Elastic's precedence (``userName``, then the session
    issuer's ``userName``, then the ARN's last part); a root identity without them is
    ``root`` and an AWS service its ``invokedBy``."""
    user: dict[str, Any] = {}
    name = ui.get("userName")
    sc = ui.get("sessionContext")
    issuer = sc.get("sessionIssuer") if isinstance(sc, dict) else None
    if not (isinstance(name, str) and name):
        name = issuer.get("userName") if isinstance(issuer, dict) else None
    if not (isinstance(name, str) and name):
        name = arn_tail(ui.get("arn"))
        if name is None and utype == "Root":
            name = "root"
        elif name is None and utype == "AWSService":
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


def _poly(
    name: str,
    value: Any,
    text: str,
    ct: dict[str, Any],
    *,
    flattened: dict[str, Any],
    flattener: Flattener,
) -> bool:
    """A polymorphic field as JSON text plus its flattened copy (type-stable in OpenSearch);
    True when the copy was cut by the caps."""
    ct[name] = text
    if len(text) <= flattener.small and type(value) is dict and _flat_strings(value):
        flattened[name] = value  # already dotted keys → strings, within the caps
        return False
    flat, cut = flattener.flatten(value)
    if flat:
        flattened[name] = flat
    return cut


def to_ecs(
    record: dict[str, Any],
    *,
    now_iso: str,
    context: EventContext | None,
    flattener: Flattener,
    geoip: GeoIP | None = None,
    user_agents: bool = True,
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

    et = get("eventTime")
    t = _time_cache.get(et, _MISS) if type(et) is str else _MISS
    if t is _MISS:
        t = parse_time(et)
    if t is not None:
        doc["@timestamp"] = t[1]
    else:
        doc["@timestamp"] = now_iso
        doc["tags"] = ["ctagg_invalid_event_time"]
        if get("eventTime") is not None:
            ct["invalid_event_time"] = as_str(get("eventTime"))

    eid = get("eventID")
    if eid is not None:
        event["id"] = eid if type(eid) is str else as_str(eid)

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
    if type(region) is str and (_region_cache.get(region) or _region_ok(region)):
        cloud["region"] = region
    recipient = get("recipientAccountId")
    if recipient is not None:
        cloud["account"] = {"id": recipient if type(recipient) is str else as_str(recipient)}
    if isinstance(source_name, str) and source_name:
        service = _services.get(source_name)
        if service is None:
            service = source_name.split(".", 1)[0]
            if len(_services) >= 4096:
                _services.clear()
            _services[source_name] = service
        cloud["service"] = {"name": service}
    doc["cloud"] = cloud

    src_ip = get("sourceIPAddress")
    ips: list[str]
    raw_src: str | None
    if type(src_ip) is str and _ip_cache.get(src_ip):  # the common case: one valid IP
        ips, raw_src = [src_ip], src_ip
    else:
        ips, raw_src = split_source(src_ip)
    if raw_src is not None:
        source: dict[str, Any] = {"address": raw_src}
        if ips:
            source["ip"] = ips[0]
            if geoip is not None:
                geo, asn = geoip.lookup(ips[0])
                if geo is not None:
                    source["geo"] = geo
                if asn is not None:
                    source["as"] = asn
        elif is_hostname(raw_src):
            source["domain"] = raw_src
        doc["source"] = source

    ua = get("userAgent")
    if ua is not None:
        ua_text = ua if type(ua) is str else as_str(ua)
        doc["user_agent"] = parse_user_agent(ua_text) if user_agents else {"original": ua_text}

    tls = get("tlsDetails")
    if type(tls) is dict:
        tls_out = _tls(tls)
        if tls_out:
            doc["tls"] = tls_out

    related_users: list[str] = []
    ui = get("userIdentity")
    if isinstance(ui, dict):
        stable_ui, user = _identity(ui)
        if isinstance(source_name, str) and source_name == "iam.amazonaws.com":
            user = _iam_subjects(record, user, doc, related_users)
        if user:
            doc["user"] = user
            if "name" in user:
                related_users.insert(0, user["name"])
        ct["user_identity"] = stable_ui
    if related_users or ips:
        related: dict[str, Any] = {}
        if len(related_users) == 1:
            related["user"] = related_users
        elif related_users:
            related["user"] = list(dict.fromkeys(related_users))
        if ips:
            related["ip"] = ips
        doc["related"] = related

    # aws.cloudtrail.*: the full record, type-stable.
    flattened: dict[str, Any] = {}
    truncated = False
    unmapped: dict[str, Any] | None = None
    shape = tuple(record)
    try:
        steps = _plans[shape]
    except KeyError:
        steps = _plan(shape)
        if len(_plans) >= _PLAN_MAX:
            _plans.clear()
        _plans[shape] = steps
    if (
        steps is not None
        and (source_name is None or type(source_name) is str)
        and (event_name is None or type(event_name) is str)
        and (src_ip is None or type(src_ip) is str)
        and (ui is None or type(ui) is dict)
    ):
        # Every key is known and the keys mapped elsewhere hold their expected types: only
        # the aws.cloudtrail steps of this shape, in record order (same result as the loop).
        for key, kind, name in steps:
            value = record[key]
            if value is None:
                continue
            if kind == _SCALAR:
                ct[name] = value if type(value) is str else as_str(value)
            elif kind == _POLY:
                if value != {}:
                    try:
                        text = _dumps(value, default=str, option=_NON_STR_KEYS).decode()
                    except TypeError:
                        text = json_text(value)
                    if _poly(name, value, text, ct, flattened=flattened, flattener=flattener):
                        truncated = True
            elif kind == _BOOL:
                b = value if (value is True or value is False) else _bool(value)
                if b is not None:
                    ct[name] = b
                else:
                    if unmapped is None:
                        unmapped = {}
                    unmapped[key] = value
            elif kind == _REGION:
                if "region" not in cloud:
                    ct["aws_region"] = as_str(value)
            elif kind == _TLS:
                ct["tls_details"] = stable_dict(value) if type(value) is dict else stable(value)
            elif type(value) is list:  # resources
                ct["resources"] = [stable_dict(r) for r in value if type(r) is dict]
            else:
                if unmapped is None:
                    unmapped = {}
                unmapped[key] = value
        items: Any = ()
    else:
        items = record.items()
    for key, value in items:
        spec = _KEYS.get(key)
        if spec is None:
            if unmapped is None:
                unmapped = {}
            unmapped[key] = value
            continue
        if value is None:
            continue
        kind, name = spec
        if kind == _SCALAR:
            ct[name] = value if type(value) is str else as_str(value)
        elif kind == _OTHER:
            continue
        elif kind == _POLY:
            if value != {} and _poly(
                name, value, json_text(value), ct, flattened=flattened, flattener=flattener
            ):
                truncated = True
        elif kind == _BOOL:
            b = value if (value is True or value is False) else _bool(value)
            if b is not None:
                ct[name] = b
            else:
                if unmapped is None:
                    unmapped = {}
                unmapped[key] = value
        elif kind == _CHECK_STR:
            if type(value) is not str:
                if unmapped is None:
                    unmapped = {}
                unmapped[key] = value
        elif key == "resources":
            if type(value) is list:
                ct["resources"] = [stable(r) for r in value if type(r) is dict]
            else:
                if unmapped is None:
                    unmapped = {}
                unmapped[key] = value
        elif key == "tlsDetails":
            ct["tls_details"] = stable(value)
        elif key == "awsRegion":
            if "region" not in cloud:
                ct["aws_region"] = as_str(value)
        elif key == "userIdentity" and type(value) is not dict:
            if unmapped is None:
                unmapped = {}
            unmapped[key] = value
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


def _iam_subjects(
    record: dict[str, Any], user: dict[str, Any], doc: dict[str, Any], related: list[str]
) -> dict[str, Any]:
    """IAM user and group changes: ``user.target.*`` (the user acted on), ``user.changes.name``
    (a rename), ``group.*``; the names also go to ``related.user``."""
    rp = record.get("requestParameters")
    if not isinstance(rp, dict):
        return user
    re_ = record.get("responseElements")
    resp = re_ if isinstance(re_, dict) else {}
    target = rp.get("userName")
    if isinstance(target, str) and target:
        tgt: dict[str, Any] = {"name": target}
        created = resp.get("user")
        if isinstance(created, dict) and isinstance(created.get("userId"), str):
            tgt["id"] = created["userId"]
        user = {**user, "target": tgt}
        related.append(target)
        new_name = rp.get("newUserName")
        if isinstance(new_name, str) and new_name:
            user["changes"] = {"name": new_name}
            related.append(new_name)
    group_name = rp.get("groupName")
    if isinstance(group_name, str) and group_name:
        group: dict[str, Any] = {"name": group_name}
        made = resp.get("group")
        if isinstance(made, dict) and isinstance(made.get("groupId"), str):
            group["id"] = made["groupId"]
        doc["group"] = group
    return user


_TLS_VERSIONS: dict[str, tuple[str, str]] = {}


def _tls(details: dict[str, Any]) -> dict[str, Any]:
    """``tlsDetails`` as ECS ``tls.*``: ``TLSv1.2`` → version ``1.2``, version_protocol
    ``tls``; the cipher suite and the host header the client sent (``client.server_name``)."""
    out: dict[str, Any] = {}
    version = details.get("tlsVersion")
    if type(version) is str and version:
        hit = _TLS_VERSIONS.get(version)
        if hit is None:
            low = version.lower()
            proto, _, number = low.partition("v")
            hit = (number, proto) if number and proto in ("tls", "ssl") else ("", "")
            if len(_TLS_VERSIONS) < 64:
                _TLS_VERSIONS[version] = hit
        if hit[0]:
            out["version"], out["version_protocol"] = hit
    cipher = details.get("cipherSuite")
    if type(cipher) is str and cipher:
        out["cipher"] = cipher
    host = details.get("clientProvidedHostHeader")
    if type(host) is str and host:
        out["client"] = {"server_name": host}
    return out


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
