"""The retention job: expire the central archive and prune the SQLite state.

Central archive (``retention.archive_days``), two modes:

* ``delete``: list every object (every version, in a versioned bucket) under
  ``[prefix]AWSLogs/``, keep only keys in the CloudTrail layout whose day (``YYYY/MM/DD`` in the
  key) is older than the cutoff, and delete them (each version by id, so nothing survives behind
  a delete marker). Objects protected by S3 Object Lock (retention date in the future or legal
  hold on, seen with ``HeadObject`` or from the delete error) are skipped and reported, never
  an error, never bypassed. Objects a forwarder has not passed yet (ledger id at or above the
  slowest cursor) are kept.
* ``lifecycle``: install (or update) one S3 lifecycle rule with id ``ctagg-archive-retention``
  that expires objects under the same prefix after ``archive_days``; other rules are kept. S3
  counts days from the object's creation, not from the day in its key.

Cartography's rule: nothing is deleted when the data a decision is made from could not be read
completely. A failed listing page deletes nothing; a failed HEAD skips that object; a lifecycle
configuration that cannot be read is not overwritten.

State (SQLite): event keys older than the dedupe window, closed day prefixes older than
``closed_prefix_days`` (and beyond the collector's backfill horizon, so they are never listed
again), ledger rows older than ``ledger_days`` that every forwarder has passed, and whatever
other rooms register as pruners (dead letters, expired sink indices).

``dry_run`` computes and reports the same decisions and changes nothing.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

from aggregator.archive.store import archive_session
from aggregator.aws.clients import Aws, ClientPool, Session, SessionProvider
from aggregator.aws.errors import error_code, error_message
from aggregator.aws.slots import owns
from aggregator.config import Settings
from aggregator.log import get_logger
from aggregator.state import State

log = get_logger("aggregator.retention")

RULE_ID = "ctagg-archive-retention"
DELETE_BATCH = 1000
HEAD_CONCURRENCY = 16
# [prefix]AWSLogs/[o-xxx/]<account>/CloudTrail[-Insight]/<region>/YYYY/MM/DD/<name>
_CENTRAL_KEY = re.compile(
    r"AWSLogs/(?:o-[a-z0-9]{10,32}/)?\d{12}/CloudTrail(?:-Insight)?/[a-z0-9-]+/"
    r"(\d{4})/(\d{2})/(\d{2})/[^/]+$"
)


class RetentionCounters(Protocol):
    """The counters retention moves (the service's Metrics has them)."""

    retention_deleted: Any
    retention_locked: Any
    retention_pruned: Any


# A pruner other rooms register: (cutoff epoch, dry_run) -> rows/items removed (or that would be).
Pruner = Callable[[float, bool], Awaitable[int]]


@dataclass
class Expired:
    key: str
    version_id: str | None
    day: str
    is_delete_marker: bool = False


@dataclass
class RetentionReport:
    dry_run: bool
    mode: str | None = None
    cutoff_day: str | None = None
    listed: int = 0
    foreign: int = 0  # keys not in the CloudTrail layout: never touched
    expired: int = 0
    deleted: list[str] = field(default_factory=list)
    locked: list[dict[str, str | None]] = field(default_factory=list)
    pending_forward: int = 0
    errors: list[str] = field(default_factory=list)
    listing_complete: bool = True
    lifecycle_rule: dict[str, Any] | None = None
    lifecycle_changed: bool = False
    pruned: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def ok(self) -> bool:
        return not self.errors and self.listing_complete


_CENTRAL_PAIR = re.compile(
    r"AWSLogs/(?:o-[a-z0-9]{10,32}/)?(\d{12})/CloudTrail(?:-Insight)?/([a-z0-9-]+)/"
)


def key_pair(key: str) -> tuple[str, str] | None:
    """(account, region) of a central key in the CloudTrail layout, else None."""
    m = _CENTRAL_PAIR.search(key)
    return (m[1], m[2]) if m else None


def key_day(key: str) -> str | None:
    """'YYYY-MM-DD' of a central key in the CloudTrail layout, else None."""
    m = _CENTRAL_KEY.search(key)
    return f"{m[1]}-{m[2]}-{m[3]}" if m else None


def utc_today(now: float) -> date:
    return datetime.fromtimestamp(now, UTC).date()


class Retention:
    """One retention pass. ``ledger_floor``: the lowest ledger id some forwarder still needs
    (None when no forwarder is configured); ``pruners``: extra state/sink pruners by name."""

    def __init__(
        self,
        settings: Settings,
        state: State,
        sessions: SessionProvider,
        aws: Aws,
        *,
        metrics: RetentionCounters | None = None,
        ledger_floor: Callable[[], int | None] | None = None,
        pruners: Mapping[str, Pruner] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.state = state
        self.sessions = sessions
        self.aws = aws
        self.metrics = metrics
        self.ledger_floor = ledger_floor
        self.pruners = dict(pruners or {})
        self.clock = clock

    async def run(self, *, dry_run: bool = False) -> RetentionReport:
        report = RetentionReport(dry_run=dry_run)
        started = time.perf_counter()
        floor = self.ledger_floor() if self.ledger_floor is not None else None
        if self.settings.retention.archive_days:
            await self._archive(report, dry_run, floor)
        else:
            report.skipped["archive"] = "retention.archive_days not set"
        await self._prune_state(report, dry_run, floor)
        log.info(
            "retention.done",
            dry_run=dry_run,
            mode=report.mode,
            cutoff_day=report.cutoff_day,
            listed=report.listed,
            expired=report.expired,
            deleted=len(report.deleted),
            locked=len(report.locked),
            pending_forward=report.pending_forward,
            errors=len(report.errors),
            pruned=report.pruned,
            duration_ms=int((time.perf_counter() - started) * 1000),
        )
        return report

    # ------------------------------------------------------------------ archive

    async def _archive(self, report: RetentionReport, dry_run: bool, floor: int | None) -> None:
        cfg = self.settings.retention
        days = int(cfg.archive_days or 0)
        report.mode = cfg.archive_mode
        today = utc_today(self.clock())
        report.cutoff_day = (today - timedelta(days=days)).isoformat()
        session = await archive_session(self.settings, self.sessions)
        async with ClientPool(self.aws) as pool:
            s3 = await pool.get(session, "s3")
            if cfg.archive_mode == "lifecycle":
                await self._lifecycle(s3, report, days, dry_run)
            else:
                await self._delete_expired(s3, report, dry_run, floor)

    def _root(self) -> str:
        return f"{self.settings.archive.prefix}AWSLogs/"

    async def _bucket_flags(self, s3: Any) -> tuple[bool, bool]:
        """(versioned, object lock enabled) of the central bucket."""
        bucket = self.settings.archive.bucket
        versioning = await s3.get_bucket_versioning(Bucket=bucket)
        versioned = versioning.get("Status") in ("Enabled", "Suspended")
        try:
            lock = await s3.get_object_lock_configuration(Bucket=bucket)
            locked = lock.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
        except Exception as exc:
            if error_code(exc) != "ObjectLockConfigurationNotFoundError":
                raise
            locked = False
        return versioned, locked

    async def _list_expired(
        self, s3: Any, report: RetentionReport, versioned: bool
    ) -> list[Expired]:
        """Every expired object (version) under the archive root. Raises when a page fails."""
        bucket = self.settings.archive.bucket
        cutoff = report.cutoff_day or ""
        out: list[Expired] = []

        shard = self.settings.shard

        def consider(key: str, version: str | None, marker: bool) -> None:
            pair = key_pair(key) if shard.count > 1 else None
            if pair is not None and not owns(shard, *pair):
                return  # another shard's object: its retention (and its forwarders' hold)
            report.listed += 1
            day = key_day(key)
            if day is None:
                report.foreign += 1
            elif day < cutoff:
                out.append(Expired(key, version, day, marker))

        if versioned:
            pages = s3.get_paginator("list_object_versions").paginate(
                Bucket=bucket, Prefix=self._root()
            )
            async for page in pages:
                for v in page.get("Versions", ()):
                    consider(v["Key"], v.get("VersionId"), False)
                for m in page.get("DeleteMarkers", ()):
                    consider(m["Key"], m.get("VersionId"), True)
        else:
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=self._root())
            async for page in pages:
                for o in page.get("Contents", ()):
                    consider(o["Key"], None, False)
        return out

    async def _delete_expired(
        self, s3: Any, report: RetentionReport, dry_run: bool, floor: int | None
    ) -> None:
        bucket = self.settings.archive.bucket
        try:
            versioned, lock_enabled = await self._bucket_flags(s3)
            expired = await self._list_expired(s3, report, versioned)
        except Exception as exc:
            report.listing_complete = False
            report.errors.append(f"listing {bucket}: {error_message(exc)}")
            log.error(
                "retention.listing_failed",
                bucket=bucket,
                error_type=error_code(exc),
                reason=error_message(exc),
            )
            return  # cartography rule: an incomplete listing deletes nothing
        report.expired = len(expired)
        expired = self._hold_for_forwarders(expired, report, floor)
        if lock_enabled:
            expired = await self._skip_locked(s3, expired, report)
        if dry_run:
            report.deleted = [_label(e) for e in expired]
            return
        deleted: list[tuple[str, str, str | None, str, str | None]] = []
        for i in range(0, len(expired), DELETE_BATCH):
            batch = expired[i : i + DELETE_BATCH]
            objs = [
                {"Key": e.key, **({"VersionId": e.version_id} if e.version_id else {})}
                for e in batch
            ]
            try:
                resp = await s3.delete_objects(
                    Bucket=bucket, Delete={"Objects": objs, "Quiet": False}
                )
            except Exception as exc:
                report.errors.append(f"delete batch of {len(batch)}: {error_message(exc)}")
                log.error(
                    "retention.delete_failed",
                    bucket=bucket,
                    count=len(batch),
                    error_type=error_code(exc),
                )
                continue
            for d in resp.get("Deleted", ()):
                report.deleted.append(_label_kv(d["Key"], d.get("VersionId")))
                deleted.append(
                    (
                        bucket,
                        d["Key"],
                        d.get("VersionId"),
                        "deleted",
                        f"older than {report.cutoff_day}",
                    )
                )
            for err in resp.get("Errors", ()):
                code, msg = err.get("Code", ""), err.get("Message", "")
                if code == "AccessDenied" and "lock" in msg.lower():
                    self._locked(report, err["Key"], err.get("VersionId"), "object lock (delete)")
                else:
                    report.errors.append(f"{err['Key']}: {code}: {msg}")
        if deleted:
            self.state.retention_log.record(deleted)
        if self.metrics:
            self.metrics.retention_deleted.inc(len(deleted))
            self.metrics.retention_locked.inc(len(report.locked))
        if report.locked:
            self.state.retention_log.record(
                [
                    (bucket, str(x["key"]), x["version_id"], "locked", x["reason"])
                    for x in report.locked
                ]
            )

    def _hold_for_forwarders(
        self, expired: list[Expired], report: RetentionReport, floor: int | None
    ) -> list[Expired]:
        """Keep central objects some forwarder has not delivered yet (ledger id >= floor)."""
        if floor is None or not expired:
            return expired
        pending = self.state.ledger.ids_at_or_above(floor, [e.key for e in expired])
        keep = [e for e in expired if e.key not in pending]
        report.pending_forward = len(expired) - len(keep)
        return keep

    def _locked(
        self, report: RetentionReport, key: str, version_id: str | None, reason: str
    ) -> None:
        report.locked.append({"key": key, "version_id": version_id, "reason": reason})

    async def _skip_locked(
        self, s3: Any, expired: list[Expired], report: RetentionReport
    ) -> list[Expired]:
        """HEAD each expired version; locked ones are reported and dropped, and so are those
        whose HEAD failed (not knowing is not permission to delete)."""
        bucket = self.settings.archive.bucket
        now = datetime.fromtimestamp(self.clock(), UTC)
        sem = asyncio.Semaphore(HEAD_CONCURRENCY)

        async def check(e: Expired) -> Expired | None:
            if e.is_delete_marker:
                return e  # markers carry no data and no lock
            async with sem:
                try:
                    kw = {"VersionId": e.version_id} if e.version_id else {}
                    head = await s3.head_object(Bucket=bucket, Key=e.key, **kw)
                except Exception as exc:
                    report.errors.append(f"{e.key}: head: {error_message(exc)}")
                    return None
            until = head.get("ObjectLockRetainUntilDate")
            if head.get("ObjectLockLegalHoldStatus") == "ON":
                self._locked(report, e.key, e.version_id, "legal hold")
                return None
            if until is not None and until > now:
                mode = head.get("ObjectLockMode") or "retention"
                self._locked(report, e.key, e.version_id, f"{mode} until {until.isoformat()}")
                return None
            return e

        results = await asyncio.gather(*(check(e) for e in expired))
        return [e for e in results if e is not None]

    async def _lifecycle(self, s3: Any, report: RetentionReport, days: int, dry_run: bool) -> None:
        bucket = self.settings.archive.bucket
        rule: dict[str, Any] = {
            "ID": RULE_ID,
            "Status": "Enabled",
            "Filter": {"Prefix": self._root()},
            "Expiration": {"Days": days},
            "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
        }
        report.lifecycle_rule = rule
        try:
            resp = await s3.get_bucket_lifecycle_configuration(Bucket=bucket)
            rules = list(resp.get("Rules", []))
        except Exception as exc:
            if error_code(exc) != "NoSuchLifecycleConfiguration":
                report.listing_complete = False
                report.errors.append(f"reading lifecycle of {bucket}: {error_message(exc)}")
                return  # never overwrite rules we could not read
            rules = []
        current = next((r for r in rules if r.get("ID") == RULE_ID), None)
        if current is not None and _same_rule(current, rule):
            return
        report.lifecycle_changed = True
        if dry_run:
            return
        others = [r for r in rules if r.get("ID") != RULE_ID]
        await s3.put_bucket_lifecycle_configuration(
            Bucket=bucket, LifecycleConfiguration={"Rules": [*others, rule]}
        )
        log.info("retention.lifecycle_installed", bucket=bucket, days=days)

    # ------------------------------------------------------------------ state

    async def _prune_state(self, report: RetentionReport, dry_run: bool, floor: int | None) -> None:
        cfg = self.settings.retention
        now = self.clock()
        today = utc_today(now)
        if cfg.prune_dedupe:
            before = int(now - self.settings.dedupe.window_days * 86400)
            report.pruned["dedupe"] = self.state.prune_window(
                before, self.settings.dedupe.readback_lag_days, dry_run=dry_run
            )
        if cfg.closed_prefix_days:
            backfill = self.settings.collect.backfill_days
            if backfill is None:
                report.skipped["prefixes"] = (
                    "collect.backfill_days is null: a forgotten day prefix would be read again"
                )
            else:
                horizon = max(
                    cfg.closed_prefix_days, backfill + self.settings.collect.relist_days + 1
                )
                before_day = (today - timedelta(days=horizon)).isoformat()
                report.pruned["prefixes"] = self.state.checkpoints.prune_closed(
                    before_day, dry_run=dry_run
                )
        if cfg.ledger_days:
            if self.ledger_floor is not None and floor is None:
                report.skipped["ledger"] = "forwarder cursors unknown"
            else:
                report.pruned["ledger"] = self.state.ledger.prune(
                    now - cfg.ledger_days * 86400, floor, dry_run=dry_run
                )
                report.pruned["archive_known"] = self.state.archive_known.prune(
                    now - cfg.ledger_days * 86400, dry_run=dry_run
                )
        for name, pruner in self.pruners.items():
            days = cfg.dead_letter_days if name == "dead_letters" else None
            if name == "dead_letters" and not days:
                continue
            cutoff = now - (days or 0) * 86400
            try:
                report.pruned[name] = await pruner(cutoff, dry_run)
            except Exception as exc:
                report.errors.append(f"pruner {name}: {type(exc).__name__}")
                log.error("retention.pruner_failed", stage=name, error_type=type(exc).__name__)
        if self.metrics and not dry_run:
            for table, n in report.pruned.items():
                self.metrics.retention_pruned.labels(table).inc(n)


def _label(e: Expired) -> str:
    return _label_kv(e.key, e.version_id)


def _label_kv(key: str, version_id: str | None) -> str:
    return f"{key}?versionId={version_id}" if version_id else key


def _same_rule(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    keys = ("Status", "Filter", "Expiration", "NoncurrentVersionExpiration")
    return all(a.get(k) == b.get(k) for k in keys)


class BaseSessions:
    """The base identity for every account (benchmarks, tests)."""

    def __init__(self, aws: Aws) -> None:
        self.aws = aws

    async def session_for(self, account_id: str | None) -> Session:
        return self.aws.base_session()
