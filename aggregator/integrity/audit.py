"""Trail audit: for every account × region, is CloudTrail set up so nothing can be missed or
changed unnoticed? Each finding names the CIS control it maps to.

CIS numbering is the **CIS Amazon Web Services Foundations Benchmark v1.4.0**, section 3
"Logging" (unchanged in v1.5.0 and v2.0.0; v3.0.0 renumbered the section):

=====  ===================================================================================
3.1    Ensure CloudTrail is enabled in all regions (multi-region trail, logging, management
       events read and write)
3.2    Ensure CloudTrail log file validation is enabled
3.3    Ensure the S3 bucket used to store CloudTrail logs is not publicly accessible
3.4    Ensure CloudTrail trails are integrated with CloudWatch Logs
3.6    Ensure S3 bucket access logging is enabled on the CloudTrail S3 bucket
3.7    Ensure CloudTrail logs are encrypted at rest using KMS CMKs
3.10   Ensure that Object-level logging for write events is enabled for S3 bucket
3.11   Ensure that Object-level logging for read events is enabled for S3 bucket
=====  ===================================================================================

Checks without a CIS control (Insights, delivery errors, bucket versioning and Object Lock)
carry ``cis = ""``. Reads AWS (CloudTrail and S3 read-only calls); writes nothing.

Metrics: :func:`audit_metrics` fills plain prometheus-client gauges in a registry you pass (kept
separate from aggregator/metrics.py, which the service room owns).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Gauge

from aggregator.aws.clients import SessionProvider
from aggregator.aws.errors import error_code, error_message, is_not_found
from aggregator.aws.inventory import Inventory, Trail
from aggregator.config import AuditSettings
from aggregator.log import get_logger
from aggregator.normalize.policy import policy_is_public

log = get_logger("aggregator.audit")

BENCHMARK = "CIS AWS Foundations Benchmark v1.4.0"
Status = Literal["pass", "fail", "unknown"]

# check id -> (CIS control, what it means)
CHECKS: dict[str, tuple[str, str]] = {
    "trail_covered": ("3.1", "a trail records this account and region"),
    "multi_region_trail": ("3.1", "covered by an organization or multi-region trail"),
    "logging_on": ("3.1", "a covering trail is logging"),
    "management_events": ("3.1", "management events, read and write"),
    "log_file_validation": ("3.2", "log file validation (digests) on"),
    "bucket_not_public": ("3.3", "trail bucket not public (block public access, policy, ACL)"),
    "cloudwatch_logs": ("3.4", "trail delivers to CloudWatch Logs"),
    "bucket_access_logging": ("3.6", "server access logging on the trail bucket"),
    "kms_encryption": ("3.7", "trail logs encrypted with a KMS key"),
    "data_events_write": ("3.10", "S3 object-level write events logged"),
    "data_events_read": ("3.11", "S3 object-level read events logged"),
    "insights": ("", "CloudTrail Insights enabled"),
    "no_delivery_errors": ("", "no log or digest delivery errors (get_trail_status)"),
    "bucket_versioning": ("", "trail bucket versioning enabled"),
    "bucket_object_lock": ("", "trail bucket Object Lock enabled"),
}


ClientFor = Callable[[str | None, str, str], Awaitable[Any]]  # (account, service, region)


@dataclass(frozen=True)
class Finding:
    account_id: str
    region: str
    check: str
    status: Status
    cis: str
    trails: str  # names of the trails the verdict is about, comma-separated
    detail: str

    @property
    def description(self) -> str:
        return CHECKS[self.check][1]


@dataclass
class TrailFacts:
    trail: Trail
    error: str = ""
    logging: bool | None = None
    validation: bool | None = None
    kms_key_id: str | None = None
    cloudwatch: bool | None = None
    mgmt_read: bool | None = None
    mgmt_write: bool | None = None
    data_read: bool | None = None
    data_write: bool | None = None
    insights: bool | None = None
    delivery_error: str = ""


@dataclass
class BucketFacts:
    bucket: str
    error: str = ""
    public: bool | None = None
    public_reason: str = ""
    versioning: bool | None = None
    object_lock: bool | None = None
    access_logging: bool | None = None


@dataclass
class AuditReport:
    findings: list[Finding] = field(default_factory=list)
    trails: list[TrailFacts] = field(default_factory=list)
    buckets: list[BucketFacts] = field(default_factory=list)

    def failed(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "fail"]

    def counts(self) -> dict[str, int]:
        out = {"pass": 0, "fail": 0, "unknown": 0}
        for f in self.findings:
            out[f.status] += 1
        return out


# ---------------------------------------------------------------------------- selectors


def _selector_flags(resp: dict[str, Any]) -> tuple[bool, bool, bool, bool]:
    """(mgmt_read, mgmt_write, s3_data_read, s3_data_write) from get_event_selectors."""
    mr = mw = dr = dw = False
    basic = resp.get("EventSelectors")
    advanced = resp.get("AdvancedEventSelectors")
    if not basic and not advanced:
        return True, True, False, False  # no selectors configured: the default, all mgmt
    for sel in basic or []:
        rw = sel.get("ReadWriteType", "All")
        reads, writes = rw in ("All", "ReadOnly"), rw in ("All", "WriteOnly")
        if sel.get("IncludeManagementEvents", True):
            mr, mw = mr or reads, mw or writes
        for dres in sel.get("DataResources") or []:
            if dres.get("Type") == "AWS::S3::Object" and dres.get("Values"):
                dr, dw = dr or reads, dw or writes
    for sel in advanced or []:
        fields = {f.get("Field"): f for f in sel.get("FieldSelectors") or []}
        category = (fields.get("eventCategory") or {}).get("Equals") or []
        ro = fields.get("readOnly")
        if ro and ro.get("Equals"):
            reads, writes = "true" in ro["Equals"], "false" in ro["Equals"]
        else:
            reads = writes = True
        if "Management" in category:
            mr, mw = mr or reads, mw or writes
        if "Data" in category:
            rtype = (fields.get("resources.type") or {}).get("Equals") or []
            if "AWS::S3::Object" in rtype:
                dr, dw = dr or reads, dw or writes
    return mr, mw, dr, dw


_PUBLIC_GRANTEES = (
    "http://acs.amazonaws.com/groups/global/AllUsers",
    "http://acs.amazonaws.com/groups/global/AuthenticatedUsers",
)


# ---------------------------------------------------------------------------- gathering


async def _trail_facts(trail: Trail, client_for: ClientFor) -> TrailFacts:
    tf = TrailFacts(trail)
    try:
        ct = await client_for(trail.owner_account_id, "cloudtrail", trail.home_region)
        got = (await ct.get_trail(Name=trail.arn)).get("Trail") or {}
        tf.validation = bool(got.get("LogFileValidationEnabled"))
        tf.kms_key_id = got.get("KmsKeyId") or None
        tf.cloudwatch = bool(got.get("CloudWatchLogsLogGroupArn"))
        tf.insights = bool(got.get("HasInsightSelectors"))
        status = await ct.get_trail_status(Name=trail.arn)
        tf.logging = bool(status.get("IsLogging"))
        errors = [
            f"{k}: {status[k]}"
            for k in ("LatestDeliveryError", "LatestDigestDeliveryError")
            if status.get(k)
        ]
        tf.delivery_error = "; ".join(errors)
        sel = await ct.get_event_selectors(TrailName=trail.arn)
        tf.mgmt_read, tf.mgmt_write, tf.data_read, tf.data_write = _selector_flags(sel)
        if not tf.insights:  # absent or False: ask (moto never sets HasInsightSelectors)
            try:
                ins = await ct.get_insight_selectors(TrailName=trail.arn)
                tf.insights = bool(ins.get("InsightSelectors"))
            except Exception as exc:
                if error_code(exc) != "InsightNotEnabledException":
                    raise
                tf.insights = False
    except Exception as exc:
        tf.error = error_message(exc)
        log.warning(
            "audit.trail_failed",
            account_id=trail.owner_account_id,
            region=trail.home_region,
            error_type=error_code(exc),
            reason=tf.error,
        )
    return tf


async def _bucket_facts(bucket: str, account_id: str | None, client_for: ClientFor) -> BucketFacts:
    bf = BucketFacts(bucket)
    try:
        s3 = await client_for(account_id, "s3", "")
        reasons: list[str] = []
        blocked = False
        try:
            pab = (await s3.get_public_access_block(Bucket=bucket)).get(
                "PublicAccessBlockConfiguration"
            ) or {}
            blocked = all(
                pab.get(k)
                for k in (
                    "BlockPublicAcls",
                    "IgnorePublicAcls",
                    "BlockPublicPolicy",
                    "RestrictPublicBuckets",
                )
            )
        except Exception as exc:
            if error_code(exc) != "NoSuchPublicAccessBlockConfiguration":
                raise
        try:
            policy = json.loads((await s3.get_bucket_policy(Bucket=bucket))["Policy"])
            if policy_is_public(policy):
                reasons.append("bucket policy allows '*'")
        except Exception as exc:
            if error_code(exc) != "NoSuchBucketPolicy":
                raise
        acl = await s3.get_bucket_acl(Bucket=bucket)
        for grant in acl.get("Grants") or []:
            uri = (grant.get("Grantee") or {}).get("URI")
            if uri in _PUBLIC_GRANTEES:
                reasons.append(f"ACL grants {grant.get('Permission')} to {uri.rsplit('/', 1)[-1]}")
        bf.public = bool(reasons) and not blocked
        bf.public_reason = "; ".join(reasons) if bf.public else ""
        if not blocked and not reasons:
            bf.public_reason = "no bucket-level public access block"
        ver = await s3.get_bucket_versioning(Bucket=bucket)
        bf.versioning = ver.get("Status") == "Enabled"
        try:
            ol = await s3.get_object_lock_configuration(Bucket=bucket)
            bf.object_lock = (ol.get("ObjectLockConfiguration") or {}).get(
                "ObjectLockEnabled"
            ) == "Enabled"
        except Exception as exc:
            if error_code(exc) != "ObjectLockConfigurationNotFoundError":
                raise
            bf.object_lock = False
        logging_cfg = await s3.get_bucket_logging(Bucket=bucket)
        bf.access_logging = bool(logging_cfg.get("LoggingEnabled"))
    except Exception as exc:
        bf.error = error_message(exc)
        if is_not_found(exc):
            bf.error = f"bucket not found: {bf.error}"
        log.warning("audit.bucket_failed", bucket=bucket, error_type=error_code(exc))
    return bf


def covers(trail: Trail, account_id: str, region: str, org_accounts: set[str]) -> bool:
    if trail.is_organization:
        if account_id not in org_accounts and account_id != trail.owner_account_id:
            return False
    elif trail.owner_account_id != account_id:
        return False
    return trail.is_multi_region or trail.home_region == region


# ---------------------------------------------------------------------------- evaluation


def _verdict(
    facts: Sequence[TrailFacts], pred: Callable[[TrailFacts], bool | None]
) -> tuple[Status, str]:
    """pass when any covering trail satisfies ``pred``; unknown when none could be read."""
    values = [(tf, pred(tf)) for tf in facts]
    if any(v for _, v in values):
        return "pass", ",".join(tf.trail.name for tf, v in values if v)
    if all(v is None for _, v in values):
        return "unknown", ",".join(tf.trail.name for tf in facts)
    return "fail", ",".join(tf.trail.name for tf in facts)


def evaluate(
    inventory: Inventory,
    trails: Sequence[TrailFacts],
    buckets: dict[str, BucketFacts],
    options: AuditSettings,
) -> list[Finding]:
    org_accounts = {a.id for a in inventory.accounts}
    out: list[Finding] = []
    for account_id in sorted(inventory.regions):
        for region in sorted(inventory.regions[account_id]):
            covering = [tf for tf in trails if covers(tf.trail, account_id, region, org_accounts)]
            out.extend(_evaluate_pair(account_id, region, covering, buckets, options))
    return out


def _evaluate_pair(
    account_id: str,
    region: str,
    covering: list[TrailFacts],
    buckets: dict[str, BucketFacts],
    options: AuditSettings,
) -> list[Finding]:
    out: list[Finding] = []

    def add(check: str, status: Status, names: str, detail: str) -> None:
        out.append(Finding(account_id, region, check, status, CHECKS[check][0], names, detail))

    if not covering:
        add("trail_covered", "fail", "", "no trail records this account and region")
        add("multi_region_trail", "fail", "", "no trail")
        return out
    names = ",".join(tf.trail.name for tf in covering)
    add("trail_covered", "pass", names, "")
    multi = [tf for tf in covering if tf.trail.is_multi_region or tf.trail.is_organization]
    add(
        "multi_region_trail",
        "pass" if multi else "fail",
        names,
        "" if multi else "only single-region trails",
    )
    st, n = _verdict(covering, lambda tf: tf.logging)
    add("logging_on", st, n, "" if st == "pass" else "no covering trail is logging")
    live = [tf for tf in covering if tf.logging] or covering
    st, n = _verdict(
        live,
        lambda tf: None if tf.mgmt_read is None else bool(tf.mgmt_read and tf.mgmt_write),
    )
    detail = ""
    if st == "fail":
        parts = [f"{tf.trail.name}: read={tf.mgmt_read} write={tf.mgmt_write}" for tf in live]
        detail = "; ".join(parts)
    add("management_events", st, n, detail)
    st, n = _verdict(live, lambda tf: tf.validation)
    add(
        "log_file_validation",
        st,
        n,
        "" if st == "pass" else "no digests: changes to log files cannot be detected",
    )
    st, n = _verdict(live, lambda tf: None if tf.error else bool(tf.kms_key_id))
    add("kms_encryption", st, n, "" if st == "pass" else "SSE-S3 only")
    if options.require_cloudwatch_logs:
        st, n = _verdict(live, lambda tf: tf.cloudwatch)
        add("cloudwatch_logs", st, n, "")
    if options.require_data_events:
        st, n = _verdict(live, lambda tf: tf.data_write)
        add("data_events_write", st, n, "")
        st, n = _verdict(live, lambda tf: tf.data_read)
        add("data_events_read", st, n, "")
    if options.require_insights:
        st, n = _verdict(live, lambda tf: tf.insights)
        add("insights", st, n, "")
    errs = [tf for tf in covering if tf.delivery_error]
    add(
        "no_delivery_errors",
        "fail" if errs else "pass",
        ",".join(tf.trail.name for tf in errs) or names,
        "; ".join(f"{tf.trail.name}: {tf.delivery_error}" for tf in errs),
    )
    bfs = list(
        {
            tf.trail.bucket: buckets[tf.trail.bucket] for tf in live if tf.trail.bucket in buckets
        }.values()
    )
    bnames = ",".join(sorted({b.bucket for b in bfs}))

    def bucket_check(check: str, pred: Callable[[BucketFacts], bool | None], why: str) -> None:
        vals = [pred(b) for b in bfs]
        if not bfs or all(v is None for v in vals):
            why_unknown = "; ".join(b.error for b in bfs if b.error)
            add(check, "unknown", bnames, why_unknown or "bucket not readable")
        elif all(v for v in vals if v is not None) and None not in vals:
            add(check, "pass", bnames, "")
        else:
            bad = [b.bucket for b, v in zip(bfs, vals, strict=True) if not v]
            add(check, "fail", ",".join(bad), why)

    bucket_check(
        "bucket_not_public",
        lambda b: None if b.public is None else not b.public,
        "; ".join(b.public_reason for b in bfs if b.public) or "public",
    )
    if options.require_access_logging:
        bucket_check("bucket_access_logging", lambda b: b.access_logging, "off")
    bucket_check("bucket_versioning", lambda b: b.versioning, "versioning not enabled")
    if options.require_object_lock:
        bucket_check("bucket_object_lock", lambda b: b.object_lock, "Object Lock not enabled")
    return out


async def run_audit(
    inventory: Inventory,
    client_for: ClientFor,
    options: AuditSettings,
    *,
    bucket_readers: dict[str, str | None] | None = None,
    max_concurrency: int = 8,
) -> AuditReport:
    """Gather facts about every trail and trail bucket, then evaluate every account × region.

    ``bucket_readers`` maps a bucket to the account whose role reads it; default: the reader of
    a source in that bucket, else the trail owner."""
    sem = asyncio.Semaphore(max_concurrency)
    readers: dict[str, str | None] = {}
    for s in inventory.sources:
        readers.setdefault(s.bucket, s.reader_account_id)
    for t in inventory.trails:
        readers.setdefault(t.bucket, t.owner_account_id)
    readers.update(bucket_readers or {})

    async def one_trail(t: Trail) -> TrailFacts:
        async with sem:
            return await _trail_facts(t, client_for)

    async def one_bucket(b: str) -> BucketFacts:
        async with sem:
            return await _bucket_facts(b, readers.get(b), client_for)

    trails = list(await asyncio.gather(*(one_trail(t) for t in inventory.trails)))
    bucket_list = list(
        await asyncio.gather(*(one_bucket(b) for b in sorted({t.bucket for t in inventory.trails})))
    )
    report = AuditReport(trails=trails, buckets=bucket_list)
    report.findings = evaluate(inventory, trails, {b.bucket: b for b in bucket_list}, options)
    c = report.counts()
    log.info("audit.done", trails=len(trails), buckets=len(bucket_list), **c)
    return report


def pool_client_for(sessions: SessionProvider, pool: Any) -> ClientFor:
    """A ClientFor over a SessionProvider and an aggregator.aws.ClientPool."""

    async def client_for(account_id: str | None, service: str, region: str) -> Any:
        session = await sessions.session_for(account_id)
        return await pool.get(session, service, region or None)

    return client_for


def audit_metrics(report: AuditReport, registry: CollectorRegistry) -> Gauge:
    """``ctagg_audit_finding{account_id,region,check,cis}``: 1 failed, 0 passed, -1 unknown."""
    g = Gauge(
        "ctagg_audit_finding",
        "Trail audit result per account, region and check (1 fail, 0 pass, -1 unknown)",
        ["account_id", "region", "check", "cis"],
        registry=registry,
    )
    value = {"fail": 1.0, "pass": 0.0, "unknown": -1.0}
    for f in report.findings:
        g.labels(f.account_id, f.region, f.check, f.cis or "none").set(value[f.status])
    return g
