"""``ctagg audit | completeness | validate-digests | archive-digest | verify-archive``: argument
parsing and wiring only; the work is in audit.py, completeness.py, digest.py and
archive_digest.py. Exit codes: 0 all good, 1 findings (something failed / missing / invalid),
2 cannot run (config, missing component)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, generate_latest

from aggregator.archive.store import archive_session
from aggregator.aws.clients import Aws, ClientPool
from aggregator.aws.discovery import Inventory, Source
from aggregator.config import Settings
from aggregator.state import State

T = TypeVar("T")


class _BaseOnly:
    """Sessions when aggregator.credentials is not in this build: the base identity only."""

    def __init__(self, aws: Aws) -> None:
        self.aws = aws

    async def session_for(self, account_id: str | None) -> Any:
        if account_id is None:
            return self.aws.base_session()
        raise RuntimeError(f"assuming a role in {account_id} needs aggregator.credentials")


def sessions_for(settings: Settings, aws: Aws) -> Any:
    try:
        mod = importlib.import_module("aggregator.aws.credentials")
        return mod.CredentialBroker(settings, aws)
    except (ImportError, AttributeError):
        return _BaseOnly(aws)


async def discover_inventory(settings: Settings, aws: Aws, sessions: Any) -> Inventory:
    discover = getattr(importlib.import_module("aggregator.aws.discovery"), "discover", None)
    if discover is None:
        raise SystemExit("this build has no discovery (aggregator.discovery.discover)")
    inv: Inventory = await discover(settings, sessions, aws)
    return inv


def _load(args: argparse.Namespace) -> Settings:
    from aggregator.cli import load_or_exit

    return load_or_exit(args.config)


def _fmt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help="YAML config file")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true", help="JSON output")
    g.add_argument("--csv", action="store_true", help="CSV output")


def _run(coro: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(coro())


# ---------------------------------------------------------------------------- audit


def add_audit_args(p: argparse.ArgumentParser) -> None:
    _fmt_args(p)
    p.add_argument("--failed-only", action="store_true", help="table: hide passing checks")
    p.add_argument("--metrics", action="store_true", help="print Prometheus metrics")


def run_audit_cmd(args: argparse.Namespace) -> int:
    from aggregator.integrity import audit

    settings = _load(args)

    async def go() -> audit.AuditReport:
        aws = Aws(settings.aws)
        sessions = sessions_for(settings, aws)
        inv = await discover_inventory(settings, aws, sessions)
        async with ClientPool(aws) as pool:
            return await audit.run_audit(
                inv, audit.pool_client_for(sessions, pool), settings.integrity.audit
            )

    report = _run(go)
    if args.metrics:
        reg = CollectorRegistry()
        audit.audit_metrics(report, reg)
        sys.stdout.write(generate_latest(reg).decode())
    elif args.json:
        print(audit.findings_json(report))
    elif args.csv:
        sys.stdout.write(audit.findings_csv(report.findings))
    else:
        audit.print_table(report, sys.stdout, failed_only=args.failed_only)
    return 1 if report.failed() else 0


# ---------------------------------------------------------------------------- completeness


def _when(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date/time: {text!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def add_completeness_args(p: argparse.ArgumentParser) -> None:
    _fmt_args(p)
    p.add_argument("--since", type=_when, help="UTC date/time (default: 24 hours ago)")
    p.add_argument("--until", type=_when, help="UTC date/time (default: now)")
    p.add_argument(
        "--offline",
        action="store_true",
        help="compute from state only; do not read new digests from the trail buckets",
    )
    p.add_argument("--no-retry", action="store_true", help="do not queue missing files")


def _days(since: datetime, until: datetime) -> list[str]:
    out = []
    d = since.date()
    while d <= until.date():
        out.append(f"{d:%Y/%m/%d}")
        d += timedelta(days=1)
    return out


async def _public_keys(settings: Settings, aws: Aws, sessions: Any, pool: ClientPool) -> Any:
    from aggregator.integrity.digest import PublicKeyStore, cloudtrail_key_lister

    cfg = settings.integrity
    lister = None
    if cfg.list_public_keys:
        base = await sessions.session_for(None)

        async def client_for(region: str) -> Any:
            return await pool.get(base, "cloudtrail", region)

        lister = cloudtrail_key_lister(client_for)
    store = PublicKeyStore(lister)
    if cfg.public_key_dir:
        store.load_dir(cfg.public_key_dir)
    return store


async def refresh_sources(
    settings: Settings,
    since: datetime,
    until: datetime,
    state: State,
    *,
    check_logs: bool,
    sources: Sequence[Source] | None = None,
    aws: Aws | None = None,
    sessions: Any = None,
) -> Any:
    """Validate new digests of ``sources`` (default: discover them now) for the days around
    [since, until] and record the log files they list. The daemon passes its own inventory's
    sources, AWS factory and credential broker."""
    from aggregator.integrity.completeness import refresh_expected

    aws = aws or Aws(settings.aws)
    sessions = sessions or sessions_for(settings, aws)
    if sources is None:
        sources = (await discover_inventory(settings, aws, sessions)).sources
    async with ClientPool(aws) as pool:
        keys = await _public_keys(settings, aws, sessions, pool)

        async def s3_for(src: Source) -> Any:
            return await pool.get(await sessions.session_for(src.reader_account_id), "s3")

        return await refresh_expected(
            state,
            sources,
            s3_for,
            keys,
            days=_days(since - timedelta(hours=2), until + timedelta(hours=2)),
            check_logs=check_logs,
        )


def completeness_pass(
    settings: Settings,
    state: State,
    since: datetime,
    until: datetime,
    *,
    retry: bool,
    now: float | None = None,
) -> Any:
    """``compute`` over [since, until) and, when ``retry`` and ``integrity.retry_missing``,
    queue the missing files for ingest. Returns (report, newly queued)."""
    from aggregator.integrity import completeness as comp

    report = comp.compute(
        state, since, until, now=now, grace_secs=settings.integrity.completeness_grace_secs
    )
    queued = 0
    if settings.integrity.retry_missing and retry:
        queued = comp.queue_missing(state, report)
    return report, queued


def run_completeness_cmd(args: argparse.Namespace) -> int:
    from aggregator.integrity import completeness as comp

    settings = _load(args)
    until = args.until or datetime.now(UTC)
    since = args.since or until - timedelta(hours=24)
    if since >= until:
        print("--since must be before --until", file=sys.stderr)
        return 2
    state = State(settings.state.path)
    try:
        if not args.offline:
            rep = _run(lambda: refresh_sources(settings, since, until, state, check_logs=False))
            for err in rep.errors:
                print(f"warning: {err}", file=sys.stderr)
        report, _ = completeness_pass(settings, state, since, until, retry=not args.no_retry)
    finally:
        state.close()
    if args.json:
        print(comp.report_json(report))
    elif args.csv:
        sys.stdout.write(comp.report_csv(report))
    else:
        comp.print_table(report, sys.stdout)
    return 1 if report.missing else 0


# ---------------------------------------------------------------------------- digests


def add_validate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help="YAML config file")
    p.add_argument("--since", type=_when, help="UTC date/time (default: 24 hours ago)")
    p.add_argument("--until", type=_when, help="UTC date/time (default: now)")
    p.add_argument("--json", action="store_true", help="JSON output")


def run_validate_cmd(args: argparse.Namespace) -> int:
    """Validate CloudTrail digests and every log file they list (reads each log file)."""
    from aggregator.state import integrity as istate

    settings = _load(args)
    until = args.until or datetime.now(UTC)
    since = args.since or until - timedelta(hours=24)
    state = State(settings.state.path)
    try:
        rep = _run(lambda: refresh_sources(settings, since, until, state, check_logs=True))
        rows = [r for r in istate.digest_results(state) if r["checked_at"] >= time.time() - 3600]
    finally:
        state.close()
    bad = [r for r in rows if r["status"] != "valid"]
    unlisted = rep.not_in_any_digest
    if args.json:
        doc = {"statuses": rep.statuses, "problems": bad, "not_in_any_digest": unlisted}
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(f"digests: {rep.statuses or 'none found'}")
        for r in bad:
            print(f"  {r['status']:18} s3://{r['bucket']}/{r['key']}  {r['detail']}")
        if unlisted:
            print(f"log files in no digest: {len(unlisted)}")
            for k in unlisted[:20]:
                print(f"  {k}")
        for err in rep.errors:
            print(f"  error: {err}")
    return 1 if bad or unlisted or rep.errors else 0


# ---------------------------------------------------------------------------- archive


async def archive_client_and_key(
    settings: Settings, pool: ClientPool, *, for_signing: bool, sessions: Any = None
) -> tuple[Any, Any]:
    """The central bucket's S3 client and the archive digest key (signing or public)."""
    from aggregator.archive import digests as ad

    aws = pool.aws
    sessions = sessions or sessions_for(settings, aws)
    session = await archive_session(settings, sessions)
    s3 = await pool.get(session, "s3")
    cfg = settings.integrity.archive_digest
    if for_signing:
        if cfg.kms_key_id:
            return s3, await ad.kms_signing_key(await pool.get(session, "kms"), cfg.kms_key_id)
        if not cfg.signing_key_path:
            raise SystemExit("integrity.archive_digest: no signing_key_path or kms_key_id")
        return s3, ad.local_signing_key(cfg.signing_key_path)
    if cfg.public_key_path:
        return s3, ad.load_public_key_file(cfg.public_key_path)
    if cfg.signing_key_path:
        return s3, ad.load_private_key(cfg.signing_key_path).public_key()
    if cfg.kms_key_id:
        key = await ad.kms_signing_key(await pool.get(session, "kms"), cfg.kms_key_id)
        return s3, key.public_key
    raise SystemExit(
        "integrity.archive_digest: set public_key_path, signing_key_path or kms_key_id"
    )


async def write_archive_digests(
    settings: Settings,
    state: State,
    *,
    aws: Aws | None = None,
    sessions: Any = None,
    clock: Callable[[], float] = time.time,
) -> Any:
    """Write the archive digests due now (``ctagg archive-digest`` and the daemon's job)."""
    from aggregator.archive.digests import ArchiveDigester

    async with ClientPool(aws or Aws(settings.aws)) as pool:
        s3, key = await archive_client_and_key(settings, pool, for_signing=True, sessions=sessions)
        return await ArchiveDigester(
            state, s3, settings.archive, settings.integrity.archive_digest, key, clock=clock
        ).run()


def add_archive_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help="YAML config file")
    p.add_argument("--json", action="store_true", help="JSON output")


def run_archive_digest_cmd(args: argparse.Namespace) -> int:
    """Write the archive digests due now (the service does this hourly)."""
    settings = _load(args)
    state = State(settings.state.path)
    try:
        rep = _run(lambda: write_archive_digests(settings, state))
    finally:
        state.close()
    out = {"digests": rep.digests, "objects": rep.objects, "retained": rep.retained}
    print(
        json.dumps(out, indent=2)
        if args.json
        else f"{len(rep.digests)} digest(s), {rep.objects} object(s), {rep.retained} retained"
    )
    return 0


def add_verify_args(p: argparse.ArgumentParser) -> None:
    add_archive_args(p)
    p.add_argument(
        "--digests-only", action="store_true", help="check signatures and chain, not objects"
    )


def run_verify_archive_cmd(args: argparse.Namespace) -> int:
    from aggregator.archive.digests import verify_archive

    settings = _load(args)
    state = State(settings.state.path)

    async def go() -> Any:
        async with ClientPool(Aws(settings.aws)) as pool:
            s3, public_key = await archive_client_and_key(settings, pool, for_signing=False)
            return await verify_archive(
                s3,
                settings.archive,
                settings.integrity.archive_digest,
                public_key,
                state=state,
                check_objects=not args.digests_only,
            )

    try:
        rep = _run(go)
    finally:
        state.close()
    if args.json:
        print(json.dumps(rep.as_dict(), indent=2, sort_keys=True))
    else:
        print(
            f"{'OK' if rep.ok else 'FAILED'}: {rep.digests} digest(s), "
            f"{rep.objects_ok}/{rep.objects} object(s) verified, "
            f"{rep.undigested_ledger_rows} ledger row(s) not digested yet, "
            f"{len(rep.expired)} expired by retention"
        )
        for label, items in (
            ("signature invalid", rep.signature_invalid),
            ("chain broken", rep.chain_broken),
            ("modified", rep.modified),
            ("missing", rep.missing),
            ("unreadable", rep.unreadable),
            ("ledger mismatch", rep.ledger_mismatch),
        ):
            for item in items:
                print(f"  {label}: {item}")
        if rep.head_problem:
            print(f"  head: {rep.head_problem}")
    return 0 if rep.ok else 1
