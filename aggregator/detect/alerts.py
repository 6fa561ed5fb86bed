"""Alerts: one per (rule, event key), as a flat line and as an OCSF 1.1 Detection Finding.

Pure code: time is passed in. Delivery lives in :mod:`aggregator.detect.sinks`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from hashlib import blake2b
from typing import Any

from aggregator import __version__
from aggregator.detect.attack import attack_data

SEVERITY_IDS = {"informational": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
OCSF_VERSION = "1.1.0"
DETECTION_FINDING_CLASS = 2004
FINDINGS_CATEGORY = 2
ACTIVITY_CREATE = 1


@dataclass(frozen=True)
class ArchivePointer:
    """Where the triggering event lives in the central archive."""

    bucket: str
    key: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class Alert:
    rule_id: str
    title: str
    severity: str
    description: str
    cis: tuple[str, ...]
    attack: tuple[str, ...]
    event_key: str
    event_id: str | None
    event_name: str | None
    event_source: str | None
    event_time: str | None
    account_id: str | None
    region: str | None
    actor: str | None
    source_ip: str | None
    detected_at: float
    archive: ArchivePointer | None = None
    kind: str = "rule"
    extra: dict[str, Any] = field(default_factory=dict)
    request_id: str | None = None  # the record's requestID (OCSF api.request.uid)

    @property
    def uid(self) -> str:
        """Stable id of this alert: equal for a re-detection of the same rule on the same event."""
        text = f"{self.rule_id}\x1f{self.event_key}".encode()
        return blake2b(text, digest_size=16).hexdigest()

    @property
    def event_epoch(self) -> int:
        ms = _epoch_ms(self.event_time)
        return int(self.detected_at) if ms is None else ms // 1000

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-safe (for the outbox); :meth:`from_dict` reverses it."""
        d = asdict(self)
        d["cis"], d["attack"] = list(self.cis), list(self.attack)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Alert:
        d = dict(d)
        d["cis"], d["attack"] = tuple(d["cis"]), tuple(d["attack"])
        if d.get("archive") is not None:
            d["archive"] = ArchivePointer(**d["archive"])
        return cls(**d)

    def to_line(self) -> dict[str, Any]:
        """The flat form printed by ``ctagg detect`` and sent to webhooks."""
        out: dict[str, Any] = {
            "alert_id": self.uid,
            "kind": self.kind,
            "rule_id": self.rule_id,
            "title": self.title,
            "severity": self.severity,
            "event_id": self.event_id,
            "event_key": self.event_key,
            "account_id": self.account_id,
            "region": self.region,
            "event_name": self.event_name,
            "event_source": self.event_source,
            "event_time": self.event_time,
            "actor": self.actor,
            "source_ip": self.source_ip,
            "cis": list(self.cis),
            "attack": list(self.attack),
        }
        if self.archive is not None:
            out["archive"] = {"bucket": self.archive.bucket, "key": self.archive.key}
        if self.extra:
            out["details"] = self.extra
        return out

    def summary(self) -> str:
        who = f" by {self.actor}" if self.actor else ""
        where = "/".join(x for x in (self.account_id, self.region) if x)
        what = self.event_name or self.kind
        cis = f" (CIS {', '.join(self.cis)})" if self.cis else ""
        return f"[{self.severity.upper()}] {self.title}{cis}: {what}{who} in {where or '?'}"

    def to_ocsf(self) -> dict[str, Any]:
        """An OCSF 1.1 Detection Finding (class_uid 2004)."""
        time_ms = _epoch_ms(self.event_time) or int(self.detected_at * 1000)
        attacks = attack_objects(self.attack)
        finding: dict[str, Any] = {
            "uid": self.uid,
            "title": self.title,
            "desc": self.description,
            "types": [self.kind],
            "created_time": int(self.detected_at * 1000),
            "first_seen_time": time_ms,
            "last_seen_time": time_ms,
            "analytic": {
                "uid": self.rule_id,
                "name": self.title,
                "type_id": 1 if self.kind == "rule" else 2,
                "type": "Rule" if self.kind == "rule" else "Behavioral",
            },
        }
        if attacks:
            finding["attacks"] = attacks
        if self.archive is not None:
            finding["src_url"] = self.archive.url
        severity_id = SEVERITY_IDS.get(self.severity, 0)
        out: dict[str, Any] = {
            "class_uid": DETECTION_FINDING_CLASS,
            "class_name": "Detection Finding",
            "category_uid": FINDINGS_CATEGORY,
            "category_name": "Findings",
            "activity_id": ACTIVITY_CREATE,
            "activity_name": "Create",
            "type_uid": DETECTION_FINDING_CLASS * 100 + ACTIVITY_CREATE,
            "type_name": "Detection Finding: Create",
            "severity_id": severity_id,
            "severity": self.severity.capitalize() if severity_id else "Unknown",
            "status_id": 1,
            "status": "New",
            "time": time_ms,
            "message": self.summary(),
            "finding_info": finding,
            "metadata": {
                "version": OCSF_VERSION,
                "uid": self.uid,
                "product": {
                    "name": "cloudtrail-aggregator",
                    "vendor_name": "cloudtrail-aggregator",
                    "version": __version__,
                },
                "log_name": "cloudtrail",
            },
            "cloud": _cloud(self.account_id, self.region),
            "unmapped": {"cis": list(self.cis), "event_key": self.event_key},
        }
        out["metadata"]["profiles"] = ["cloud"]  # cloud is a profile attribute in 1.1.0
        evidence: dict[str, Any] = {}
        if self.event_name or self.event_source:
            evidence["api"] = _api(self.event_name, self.event_source, self.request_id)
        if self.actor:
            evidence["actor"] = {"user": {"uid": self.actor, "name": self.actor.rsplit("/", 1)[-1]}}
        if self.source_ip:
            evidence["src_endpoint"] = _endpoint(self.source_ip)
        if evidence:
            out["evidences"] = [evidence]
        if self.archive is not None:
            out["unmapped"]["archive"] = {"bucket": self.archive.bucket, "key": self.archive.key}
        if self.extra:
            out["unmapped"]["details"] = self.extra
        return out


def _is_technique(tag: str) -> bool:
    return tag[:1] in ("t", "T") and tag[1:2].isdigit()


def attack_objects(tags: tuple[str, ...]) -> list[dict[str, Any]]:
    """OCSF 1.1 ``attack`` objects for a rule's ATT&CK tags, from pySigma's ATT&CK data.

    One object per (technique, tactic) pair, ``tactic`` (singular, 1.1) being each of the
    technique's *own* tactics; a sub-technique is ``sub_technique`` under its parent
    ``technique``. A tactic tag no technique accounts for stands alone; an id unknown to the data
    keeps its uid and no tactic."""
    data = attack_data()
    version = f"v{data.version}"
    out: list[dict[str, Any]] = []
    covered: set[str] = set()
    for tag in tags:
        if not _is_technique(tag):
            continue
        tech = data.techniques.get(tag.upper())
        base: dict[str, Any] = {"version": version}
        if tech is None:
            out.append({**base, "technique": {"uid": tag.upper()}})
            continue
        if "." in tech.uid:
            parent = data.techniques.get(tech.parent)
            base["technique"] = {"uid": tech.parent, **({"name": parent.name} if parent else {})}
            base["sub_technique"] = {"uid": tech.uid, "name": tech.name}
        else:
            base["technique"] = {"uid": tech.uid, "name": tech.name}
        for tactic in tech.tactics or (None,):
            obj = dict(base)
            if tactic is not None:
                obj["tactic"] = {"uid": tactic.uid, "name": tactic.name}
                covered.add(tactic.shortname)
            out.append(obj)
    for tag in tags:
        tactic = data.tactics.get(tag.lower())
        if tactic is not None and tactic.shortname not in covered:
            covered.add(tactic.shortname)
            out.append({"version": version, "tactic": {"uid": tactic.uid, "name": tactic.name}})
    return out


def _cloud(account_id: str | None, region: str | None) -> dict[str, Any]:
    cloud: dict[str, Any] = {"provider": "AWS"}
    if region:
        cloud["region"] = region
    if account_id:
        cloud["account"] = {"uid": account_id}
    return cloud


def _api(operation: str | None, service: str | None, request_id: str | None) -> dict[str, Any]:
    api: dict[str, Any] = {"operation": operation or "Unknown"}  # required by OCSF
    if service:
        api["service"] = {"name": service}
    if request_id:
        api["request"] = {"uid": request_id}
    return api


def _endpoint(source: str) -> dict[str, Any]:
    """``sourceIPAddress`` as an OCSF endpoint: an IP (the first of several), an AWS service
    (``cloudformation.amazonaws.com``, ``AWS Internal``), or, for anything else, its name."""
    first = source.split(",", 1)[0].strip()
    try:
        ipaddress.ip_address(first)
    except ValueError:
        pass
    else:
        return {"ip": first}
    if _SERVICE.match(source):
        return {"svc_name": source, "domain": source}
    return {"svc_name": source} if source == "AWS Internal" else {"name": source}


_SERVICE = re.compile(r"^[a-z0-9-]+(\.[a-z0-9-]+)*\.amazonaws\.com$")


def _epoch_ms(value: str | None) -> int | None:
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def actor_of(record: dict[str, Any]) -> str | None:
    ui = record.get("userIdentity")
    if not isinstance(ui, dict):
        return None
    return _str(ui.get("arn")) or _str(ui.get("userName")) or _str(ui.get("principalId"))
