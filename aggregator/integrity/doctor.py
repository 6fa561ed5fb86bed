"""``ctagg doctor``: does the live AWS setup let ctagg do its job, per account × region?

For each discovered (account, region): can the reader role be assumed, can it list the trail
log prefix, can it read an object there; and once for the whole run: can the writer identity
write the central bucket (with its KMS key). Every failure names the permission to grant
(from :mod:`aggregator.iam`).

The central write check writes one tiny object, ``[prefix]_ctagg/doctor-probe``, with
``If-None-Match: *``: the first run creates it, later runs get ``412 Precondition Failed``,
which S3 only answers after authorizing the PutObject, so nothing else is ever written (and
nothing needs deleting, which Object Lock could forbid).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from aggregator.archive.store import PROBE_KEY, archive_session, probe_params
from aggregator.aws.clients import Aws, ClientPool, SessionProvider
from aggregator.aws.errors import error_code, error_message, is_access_denied
from aggregator.aws.iam import missing_permission
from aggregator.aws.inventory import Inventory, Source
from aggregator.config import Settings
from aggregator.log import get_logger

log = get_logger("aggregator.doctor")

OK = "ok"
__all__ = ["PROBE_KEY", "Doctor", "DoctorReport", "run_live"]


@dataclass
class Check:
    name: str  # assume | list | read | write_central
    ok: bool
    detail: str = ""  # what was checked, or why it failed
    missing: str = ""  # permission to grant, when the failure is a denial

    def cell(self) -> str:
        return OK if self.ok else "FAIL"


@dataclass
class Row:
    account_id: str
    region: str
    bucket: str = ""
    prefix: str = ""
    reader: str = "base identity"
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)


@dataclass
class DoctorReport:
    rows: list[Row]
    central: Check
    duration_secs: float = 0.0
    warnings: list[str] = field(default_factory=list)  # coverage lost to the config

    @property
    def ok(self) -> bool:
        return self.central.ok and all(r.ok for r in self.rows)

    @property
    def failing(self) -> int:
        """Failing rows, plus one for a central write that fails."""
        return sum(1 for r in self.rows if not r.ok) + (0 if self.central.ok else 1)

    @property
    def roles_denied(self) -> list[str]:
        """Accounts whose role (the one ctagg assumes there) cannot be assumed."""
        return sorted(
            {
                r.reader
                for r in self.rows
                if (c := r.check("assume")) and not c.ok and r.reader != "base identity"
            }
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "failing": self.failing,
            "roles_denied": self.roles_denied,
            "warnings": list(self.warnings),
            "central": asdict(self.central),
            "rows": [{**asdict(r), "ok": r.ok} for r in self.rows],
        }


def _failed(name: str, exc: BaseException, service: str, op: str, params: dict[str, Any]) -> Check:
    missing = missing_permission(service, op, params) if is_access_denied(exc) else ""
    return Check(name, False, error_message(exc)[:300], missing)


class Doctor:
    def __init__(self, settings: Settings, sessions: SessionProvider, aws: Aws) -> None:
        self.settings = settings
        self.sessions = sessions
        self.aws = aws
        self._role_arn = getattr(sessions, "role_arn", None)

    async def run(self, inventory: Inventory) -> DoctorReport:
        started = time.perf_counter()
        async with ClientPool(self.aws) as pool:
            central = await self._write_central(pool)
            rows: list[Row] = []
            denied = {f.account_id: f for f in inventory.failures if f.stage == "assume_role"}
            covered: set[tuple[str, str]] = set()
            for src in sorted(inventory.sources, key=lambda s: (s.account_id, s.region)):
                covered.add((src.account_id, src.region))
                rows.append(await self._source_row(pool, src))
            for account_id, regions in sorted(inventory.regions.items()):
                for region in regions:
                    if (account_id, region) in covered:
                        continue
                    row = Row(account_id, region)
                    row.checks.append(Check("list", False, "no trail log prefix discovered"))
                    rows.append(row)
            # Every account whose own role cannot be assumed gets its row, also when the
            # organization trail (read with another account's role) covers its regions: its
            # account trails, regions and LookupEvents are out of reach.
            for account_id, failure in sorted(denied.items()):
                row = Row(account_id, "*", reader=account_id)
                row.checks.append(
                    Check("assume", False, failure.reason[:300], self._assume_missing(account_id))
                )
                rows.append(row)
            for f in inventory.failures:
                if f.stage != "assume_role" and not any(r.account_id == f.account_id for r in rows):
                    row = Row(f.account_id, "*")
                    row.checks.append(Check(f.stage, False, f.reason[:300]))
                    rows.append(row)
        report = DoctorReport(
            rows,
            central,
            round(time.perf_counter() - started, 3),
            warnings=list(getattr(inventory, "warnings", [])),
        )
        log.info(
            "doctor.done",
            count=len(rows),
            failing=sum(1 for r in rows if not r.ok),
            central_ok=central.ok,
            duration_ms=int(report.duration_secs * 1000),
        )
        return report

    def _assume_missing(self, account_id: str) -> str:
        role = self._role_arn(account_id) if callable(self._role_arn) else "the member role"
        return (
            f"sts:AssumeRole on {role} (hub policy), and the member role's trust policy "
            "must allow the hub role with the ExternalId"
        )

    async def _source_row(self, pool: ClientPool, src: Source) -> Row:
        reader = src.reader_account_id
        row = Row(src.account_id, src.region, src.bucket, src.prefix, reader or "base identity")
        try:
            session = await self.sessions.session_for(reader)
            row.checks.append(Check("assume", True, reader or "base identity"))
        except Exception as exc:
            missing = self._assume_missing(reader) if reader else ""
            row.checks.append(Check("assume", False, error_message(exc)[:300], missing))
            return row
        s3 = await pool.get(session, "s3", src.region)
        params: dict[str, Any] = {"Bucket": src.bucket, "Prefix": src.prefix, "MaxKeys": 5}
        try:
            resp = await s3.list_objects_v2(**params)
        except Exception as exc:
            row.checks.append(_failed("list", exc, "s3", "ListObjectsV2", params))
            return row
        keys = [o["Key"] for o in resp.get("Contents", ()) if o.get("Size", 0) > 0]
        row.checks.append(Check("list", True, f"s3://{src.bucket}/{src.prefix}"))
        if not keys:
            row.checks.append(Check("read", False, "no object under the prefix to read yet"))
            return row
        get = {"Bucket": src.bucket, "Key": keys[0], "Range": "bytes=0-15"}
        try:
            obj = await s3.get_object(**get)
            async with obj["Body"] as body:
                await body.read()
            row.checks.append(Check("read", True, keys[0].rsplit("/", 1)[-1]))
        except Exception as exc:
            row.checks.append(_failed("read", exc, "s3", "GetObject", get))
        return row

    async def _write_central(self, pool: ClientPool) -> Check:
        params = probe_params(self.settings.archive)
        target = f"s3://{params['Bucket']}/{params['Key']}"
        try:
            session = await archive_session(self.settings, self.sessions)
            s3 = await pool.get(session, "s3")
        except Exception as exc:
            return Check("write_central", False, f"writer identity: {error_message(exc)[:300]}")
        try:
            await s3.put_object(**params)
            return Check("write_central", True, f"{target} written")
        except Exception as exc:
            if error_code(exc) in ("PreconditionFailed", "412"):
                return Check("write_central", True, f"{target} exists (write authorized)")
            return _failed("write_central", exc, "s3", "PutObject", params)


async def run_live(settings: Settings) -> DoctorReport:
    """Discover with the configured identity, then check every account × region."""
    from aggregator.aws.credentials import CredentialBroker
    from aggregator.aws.discovery import discover

    aws = Aws(settings.aws)
    broker = CredentialBroker(settings, aws)
    inventory = await discover(settings, broker, aws)
    return await Doctor(settings, broker, aws).run(inventory)
