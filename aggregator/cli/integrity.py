"""``ctagg audit | completeness | validate-digests | reconcile``: the trail audit (CIS),
expected vs ingested log files per hour, CloudTrail digest validation, and the central
archive checked against the state (with repair). The work is in ``aggregator/integrity/``.
Exit codes: 0 all good, 1 findings (something failed / missing / invalid), 2 cannot run
(config, missing component)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Iterable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from aggregator.cli._common import NO_SINKS, config_arg, load_or_exit, open_state, when
from aggregator.cli._errors import EXIT_CONFIG, EXIT_OK, EXIT_PARTIAL, EXIT_PROBLEMS, CliError
from aggregator.cli._table import Column

if TYPE_CHECKING:
    from rich.console import Console

    from aggregator.integrity.audit import AuditReport, Finding
    from aggregator.integrity.completeness import CompletenessReport, RefreshReport
    from aggregator.integrity.reconcile import ReconcileReport


def _format_args(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true", help="JSON output")
    g.add_argument("--csv", action="store_true", help="CSV output")


def _window(args: argparse.Namespace) -> tuple[datetime, datetime]:
    until = args.until or datetime.now(UTC)
    since = args.since or until - timedelta(hours=24)
    if since >= until:
        raise CliError(
            f"--since {since.isoformat()} is not before --until {until.isoformat()}",
            "give a window that ends after it starts",
            EXIT_CONFIG,
        )
    return since, until


# ---------------------------------------------------------------------------- audit


def add_audit_args(p: argparse.ArgumentParser) -> None:
    _format_args(p)
    p.add_argument("--failed-only", action="store_true", help="table: hide passing checks")
    p.add_argument("--metrics", action="store_true", help="print Prometheus metrics")


def run_audit(args: argparse.Namespace) -> int:
    import asyncio

    from prometheus_client import CollectorRegistry, generate_latest

    from aggregator.aws.clients import Aws, ClientPool
    from aggregator.aws.credentials import CredentialBroker
    from aggregator.integrity import audit
    from aggregator.integrity.jobs import discover_inventory

    settings = load_or_exit(args.config, NO_SINKS)

    async def go() -> audit.AuditReport:
        aws = Aws(settings.aws)
        sessions = CredentialBroker(settings, aws)
        inv = await discover_inventory(settings, aws, sessions)
        async with ClientPool(aws) as pool:
            return await audit.run_audit(
                inv, audit.pool_client_for(sessions, pool), settings.integrity.audit
            )

    report = asyncio.run(go())
    if args.metrics:
        reg = CollectorRegistry()
        audit.audit_metrics(report, reg)
        sys.stdout.write(generate_latest(reg).decode())
    elif args.json:
        print(audit_json(report))
    elif args.csv:
        sys.stdout.write(audit_csv(report.findings))
    else:
        print_audit_table(report, sys.stdout, failed_only=args.failed_only)
    return EXIT_PROBLEMS if report.failed() else EXIT_OK


AUDIT_FIELDS = ["account_id", "region", "check", "status", "cis", "trails", "detail"]


def audit_json(report: AuditReport) -> str:
    from aggregator.integrity.audit import BENCHMARK

    return json.dumps(
        {
            "benchmark": BENCHMARK,
            "counts": report.counts(),
            "findings": [asdict(f) | {"description": f.description} for f in report.findings],
        },
        sort_keys=True,
    )


def audit_csv(findings: Iterable[Finding]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*AUDIT_FIELDS, "description"])
    for f in findings:
        w.writerow([*(getattr(f, k) for k in AUDIT_FIELDS), f.description])
    return buf.getvalue()


AUDIT_COLUMNS = (
    Column("account", 0, elide=False),
    Column("region", 1, elide=False),
    Column("check", 2, elide=False),
    Column("status", 3, elide=False),
    Column("CIS", 4, elide=False),
    Column("detail", 5, min_width=20, wrap=True),
    Column("trails", 6, min_width=12),
)


def print_audit_table(
    report: AuditReport, out: Any, *, failed_only: bool = False, console: Console | None = None
) -> None:
    """The findings (fitted to a terminal, whole on a pipe) and the counts, to ``out`` (or the
    ``console`` given)."""
    from aggregator.cli._table import console_for, esc, print_table
    from aggregator.integrity.audit import BENCHMARK

    style = {"pass": "green", "fail": "red", "unknown": "yellow"}
    rows = [
        [
            f.account_id,
            f.region,
            f.check,
            f"[{style[f.status]}]{f.status}[/]",
            f.cis or "-",
            esc(f.detail),
            esc(f.trails),
        ]
        for f in report.findings
        if not (failed_only and f.status == "pass")
    ]
    console = console or console_for(out)
    print_table(console, AUDIT_COLUMNS, rows, title=f"Trail audit ({BENCHMARK})")
    c = report.counts()
    console.print(f"{c['fail']} failed, {c['unknown']} unknown, {c['pass']} passed")


# ---------------------------------------------------------------------------- completeness


def add_completeness_args(p: argparse.ArgumentParser) -> None:
    _format_args(p)
    p.add_argument("--since", type=when, help="UTC date/time (default: 24 hours ago)")
    p.add_argument("--until", type=when, help="UTC date/time (default: now)")
    p.add_argument(
        "--offline",
        action="store_true",
        help="compute from state only; do not read new digests from the trail buckets",
    )
    p.add_argument("--no-retry", action="store_true", help="do not queue missing files")


def run_completeness(args: argparse.Namespace) -> int:
    import asyncio

    from aggregator.integrity import jobs
    from aggregator.state import StateLocked, holder_of

    settings = load_or_exit(args.config, NO_SINKS)
    since, until = _window(args)
    offline, retry = args.offline, not args.no_retry
    holder = holder_of(settings.state.path)
    if holder is not None:
        # beside a running writer (the daemon): report from what its completeness job
        # recorded, read-only; nothing is refreshed or queued
        note = StateLocked(settings.state.path, holder)
        print(f"note: {note}; reporting from the state read-only", file=sys.stderr)
        state = open_state(settings, "ctagg completeness", read_only=True)
        offline, retry = True, False
    else:
        state = open_state(settings, "ctagg completeness", writer=False)
    try:
        if not offline:
            from aggregator.cli._progress import progress

            with progress("completeness: digests per source", unit="sources") as bar:
                refresh = jobs.refresh_sources(
                    settings, since, until, state, check_logs=False, progress=bar.report
                )
                errors = asyncio.run(refresh).errors
            for err in errors:
                print(f"warning: {err}", file=sys.stderr)
        report, _ = jobs.completeness_pass(settings, state, since, until, retry=retry)
    finally:
        state.close()
    if args.json:
        print(completeness_json(report))
    elif args.csv:
        sys.stdout.write(completeness_csv(report))
    else:
        print_completeness_table(report, sys.stdout)
    return EXIT_PROBLEMS if report.missing or report.unlisted_days else EXIT_OK


COMPLETENESS_FIELDS = [
    "account_id",
    "region",
    "hour",
    "expected",
    "ingested",
    "missing_count",
    "missing",
]


def completeness_json(report: CompletenessReport) -> str:
    return json.dumps(report.as_dict(), sort_keys=True)


def completeness_csv(report: CompletenessReport) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COMPLETENESS_FIELDS)
    for h in report.hours:
        w.writerow(
            [
                h.account_id,
                h.region,
                h.hour,
                h.expected,
                h.ingested,
                len(h.missing),
                " ".join(h.missing),
            ]
        )
    return buf.getvalue()


COMPLETENESS_COLUMNS = (
    Column("account", 0, elide=False),
    Column("region", 1, elide=False),
    Column("hour", 2, elide=False),
    Column("expected", 3, justify="right", elide=False),
    Column("ingested", 4, justify="right", elide=False),
    Column("missing", 5, min_width=20, wrap=True),
)


def print_completeness_table(
    report: CompletenessReport, out: Any, *, console: Console | None = None
) -> None:
    """Expected vs ingested per hour (fitted to a terminal, whole on a pipe) and the totals."""
    from aggregator.cli._table import console_for, esc, print_table

    rows = []
    for h in report.hours:
        miss = "\n".join(k.rsplit("/", 1)[-1] for k in h.missing)
        rows.append(
            [
                h.account_id,
                h.region,
                h.hour,
                str(h.expected),
                str(h.ingested),
                f"[red]{esc(miss)}[/]" if miss else "[green]0[/]",
            ]
        )
    console = console or console_for(out)
    print_table(
        console,
        COMPLETENESS_COLUMNS,
        rows,
        title=f"Completeness {report.since} .. {report.until} (UTC hours)",
    )
    console.print(
        f"{report.expected} expected, {len(report.missing)} missing, "
        f"{report.pending} too recent to judge; ratio {report.ratio:.6f}"
    )
    if report.unlisted_days:
        console.print(
            f"[red]{len(report.unlisted_days)} backfill day(s) never listed[/] "
            "(listed again every ingest cycle until a listing completes):"
        )
        for d in report.unlisted_days[:50]:
            console.print(f"  {d['day']}  s3://{d['stream']}")


# ---------------------------------------------------------------------------- digests


def add_validate_args(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    p.add_argument("--since", type=when, help="UTC date/time (default: 24 hours ago)")
    p.add_argument("--until", type=when, help="UTC date/time (default: now)")
    p.add_argument("--json", action="store_true", help="JSON output")


def run_validate_digests(args: argparse.Namespace) -> int:
    """Validate CloudTrail digests and every log file they list (reads each log file)."""
    import asyncio
    import time

    from aggregator.cli._progress import progress
    from aggregator.integrity.jobs import refresh_sources

    settings = load_or_exit(args.config, NO_SINKS)
    since, until = _window(args)
    state = open_state(settings, "ctagg validate-digests", writer=False)
    try:
        with progress("validate-digests", unit="sources") as bar:
            rep = asyncio.run(
                refresh_sources(settings, since, until, state, check_logs=True, progress=bar.report)
            )
        rows = [r for r in state.digests.results() if r["checked_at"] >= time.time() - 3600]
    finally:
        state.close()
    bad = [r for r in rows if r["status"] != "valid"]
    unlisted = rep.not_in_any_digest
    if args.json:
        doc = {
            "statuses": rep.statuses,
            "problems": bad,
            "not_in_any_digest": unlisted,
            "sources_without_digests": rep.without_digests,
            "errors": rep.errors,
        }
        print(json.dumps(doc, sort_keys=True))
    else:
        print(render_digests(rep, bad))
    if bad or unlisted:
        return EXIT_PROBLEMS
    return EXIT_PARTIAL if rep.errors else EXIT_OK


def render_digests(rep: RefreshReport, bad: list[dict[str, Any]], limit: int = 20) -> str:
    """``validate-digests`` for people: counts by outcome, then each problem."""
    lines = []
    if rep.statuses:
        counts = ", ".join(
            f"{n} {status.replace('_', ' ')}" for status, n in sorted(rep.statuses.items())
        )
        lines.append(f"digests: {counts} (from {rep.sources} sources)")
    else:
        lines.append(f"digests: none found in the window (from {rep.sources} sources)")
    for r in bad:
        lines.append(f"  {r['status']:18} s3://{r['bucket']}/{r['key']}  {r['detail']}")
    if rep.not_in_any_digest:
        lines.append(f"log files in no digest: {len(rep.not_in_any_digest)}")
        lines += [f"  {k}" for k in rep.not_in_any_digest[:limit]]
        if len(rep.not_in_any_digest) > limit:
            lines.append(f"  ... and {len(rep.not_in_any_digest) - limit} more (--json lists all)")
    if rep.without_digests:
        lines.append(
            f"sources with log files but no digest file: {len(rep.without_digests)} (log file "
            "validation is off for their trail, or its digests were removed; 'ctagg audit "
            "CONFIG' shows which trails validate, CIS 3.2)"
        )
        lines += [f"  {s}" for s in rep.without_digests[:limit]]
    for err in rep.errors:
        lines.append(f"  error: {err}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- reconcile


def add_reconcile_args(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    p.add_argument(
        "--since", type=when, help="first UTC day (default: integrity.reconcile.days ago)"
    )
    p.add_argument("--until", type=when, help="last UTC day, included (default: today)")
    p.add_argument(
        "--repair",
        action="store_true",
        help="remove provably redundant copies (never the last copy of an event) and adopt "
        "unknown objects with events of their own; takes the state's writer lock",
    )
    p.add_argument("--json", action="store_true", help="one JSON summary document")


def _reconcile_days(args: argparse.Namespace, days: int) -> tuple[Any, Any]:
    from aggregator.integrity.reconcile import recent_days

    today = datetime.now(UTC).date()
    if args.since is None and args.until is None:
        return recent_days(days, today)
    until = args.until.date() if args.until is not None else today
    since = args.since.date() if args.since is not None else recent_days(days, until)[0]
    if since > until:
        raise CliError(
            f"--since {since.isoformat()} is after --until {until.isoformat()}",
            "give a range of days that ends after it starts",
            EXIT_CONFIG,
        )
    return since, until


def run_reconcile(args: argparse.Namespace) -> int:
    """The central archive's days against the state: objects outside the ledger, rows whose
    object is missing or modified, events archived twice, keys outside the layout. Exit 1 when
    anything was found (also when ``--repair`` repaired it)."""
    import asyncio

    from aggregator.archive.store import opened
    from aggregator.aws.clients import Aws
    from aggregator.cli._progress import progress
    from aggregator.integrity.reconcile import reconcile

    settings = load_or_exit(args.config, NO_SINKS)
    since, until = _reconcile_days(args, settings.integrity.reconcile.days)
    if args.repair:
        state = open_state(settings, "ctagg reconcile --repair")
    else:  # read-only: works beside the daemon
        state = open_state(settings, "ctagg reconcile", read_only=True)

    async def go(report: Any) -> ReconcileReport:
        async with opened(settings, Aws(settings.aws)) as archive:
            return await reconcile(
                archive,
                state,
                since=since,
                until=until,
                repair=args.repair,
                compress_level=settings.archive.compress_level,
                concurrency=settings.integrity.reconcile.concurrency,
                progress=report,
            )

    try:
        with progress("reconcile", unit="objects") as bar:
            rep = asyncio.run(go(bar.report))
    finally:
        state.close()
    if args.json:
        print(json.dumps(rep.as_dict(), sort_keys=True))
    else:
        print(render_reconcile(rep))
    return EXIT_PROBLEMS if rep.found else EXIT_OK


RECONCILE_LABELS = {
    "unknown_objects": "objects not in the state (ledger, archive_known, intents)",
    "missing_objects": "rows whose object is missing",
    "sha_mismatch": "rows whose object's SHA-256 differs (modified)",
    "duplicate_events": "events in more than one copy",
    "outside_layout": "keys outside the CloudTrail layout",
    "unreadable": "objects that do not decode",
}


def render_reconcile(rep: ReconcileReport, limit: int = 10) -> str:
    """``reconcile`` for people: what was examined, each kind of finding with examples, and
    what a repair did."""
    lines = [
        f"reconcile {rep.since} .. {rep.until}: {rep.objects} object(s), {rep.events} event(s)"
        + (f", {rep.in_flight} write(s) in flight (not judged)" if rep.in_flight else "")
        + f" in {rep.duration_secs:.1f} s"
    ]
    if not rep.found:
        lines.append("OK: nothing found")
    for kind, label in RECONCILE_LABELS.items():
        n = rep.counts[kind]
        if not n:
            continue
        lines.append(f"{n:>8}  {label}")
        for ex in rep.examples[kind][:limit]:
            if kind == "duplicate_events":
                lines.append(
                    f"            {ex['event_key']} x{ex['copies']}: {' '.join(ex['objects'])}"
                )
            elif kind == "sha_mismatch":
                lines.append(f"            {ex['key']} ({ex['table']})")
            else:
                lines.append(f"            {ex['key']}")
        if n > limit:
            lines.append(
                f"            ... and {n - limit} more (--json has {len(rep.examples[kind])})"
            )
    if rep.repair:
        r = rep.repaired
        lines.append(
            f"repair: {r['rewritten']} rewritten, {r['deleted']} deleted, {r['adopted']} adopted, "
            f"{r['events_removed']} redundant cop(ies) removed, {r['rows_updated']} row(s) "
            f"updated, {r['rows_deleted']} row(s) deleted, {len(rep.skipped)} skipped"
        )
        lines += [f"  skipped: {m}" for m in rep.skipped[:limit]]
        lines.append(
            "missing objects, SHA-256 mismatches, unreadable objects and keys outside the layout "
            "are reported only"
        )
    elif rep.found:
        lines.append("run again with --repair to remove redundant copies and adopt unknown objects")
    return "\n".join(lines)
