"""``ctagg once | status | quarantine | retry-quarantined``: one ingest cycle, and what the
state says about collection."""

from __future__ import annotations

import argparse
import sys

from aggregator.cli._common import (
    EXIT_DISCOVERY,
    EXIT_LOCKED,
    EXIT_STATE,
    config_arg,
    human_secs,
    json_line,
    load_or_exit,
    open_state,
)


def run_once(args: argparse.Namespace) -> int:
    """0: a clean cycle; 1: it ran with errors; 3: discovery could not run; 4: the state
    cannot be used; 5: another process writes the state (see ``_common``)."""
    import asyncio

    from aggregator.aws.discovery import DiscoveryError
    from aggregator.service.app import App
    from aggregator.state import StateLocked, StorageError

    settings = load_or_exit(args.config)

    async def go() -> dict[str, object]:
        app = App(settings, writer="ctagg once")
        try:
            return (await app.run_once()).as_dict()
        finally:
            await app.close()

    try:
        report = asyncio.run(go())
    except DiscoveryError as exc:
        print(f"ctagg once: discovery failed: {exc}", file=sys.stderr)
        return EXIT_DISCOVERY
    except StateLocked as exc:
        print(f"ctagg once: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except StorageError as exc:
        print(f"ctagg once: {exc}", file=sys.stderr)
        return EXIT_STATE
    print(json_line(report))
    return 1 if report["errors"] else 0


def run_status(args: argparse.Namespace) -> int:
    import time
    from dataclasses import asdict
    from datetime import UTC, datetime

    settings = load_or_exit(args.config)
    state = open_state(settings, "ctagg status", read_only=True)
    try:
        rows = state.sources.status()
        failures = state.failures.rows()
    finally:
        state.close()
    now = time.time()

    def lag(newest: str | None) -> float | None:
        if not newest:
            return None
        try:
            t = datetime.fromisoformat(newest.replace("Z", "+00:00"))
        except ValueError:  # a record with an odd eventTime must not break the report
            return None
        if t.tzinfo is None:
            t = t.replace(tzinfo=UTC)
        return round(now - t.timestamp())

    if args.json:
        for r in rows:
            print(json_line({**asdict(r), "lag_secs": lag(r.newest_event_time)}))
        for f in failures:
            print(json_line({"failure": f}))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="ctagg status: per account × region source")
    for col in (
        "account",
        "region",
        "newest eventTime",
        "lag",
        "objects",
        "events",
        "errors",
        "last object",
    ):
        table.add_column(col, no_wrap=col != "errors")
    for r in rows:
        table.add_row(
            r.account_id,
            r.region,
            r.newest_event_time or "-",
            human_secs(lag(r.newest_event_time)),
            str(r.objects),
            str(r.events),
            f"{r.errors} ({r.last_error[:80]})" if r.last_error else str(r.errors),
            (r.last_key or "-").rsplit("/", 1)[-1],
        )
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)
    for f in failures:
        console.print(
            f"[red]account {f['account_id']}[/red] {f['stage']}: {f['reason']} (x{f['count']})"
        )
    return 0


def run_quarantine(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    settings = load_or_exit(args.config)
    state = open_state(settings, "ctagg quarantine", read_only=True)
    try:
        rows = state.quarantine.rows()
    finally:
        state.close()
    for q in rows:
        if args.json:
            print(json_line(asdict(q)))
        else:
            print(f"{q.status:5} s3://{q.bucket}/{q.key}  ({q.attempts}x) {q.reason}")
    if not rows and not args.json:
        print("nothing quarantined")
    return 0


def add_retry_args(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    p.add_argument("--bucket", help="only objects from this source bucket")


def run_retry(args: argparse.Namespace) -> int:
    settings = load_or_exit(args.config)
    state = open_state(settings, "ctagg retry-quarantined", writer=False)
    try:
        n = state.quarantine.retry(args.bucket)
    finally:
        state.close()
    print(f"{n} quarantined object(s) will be tried again in the next cycle")
    return 0
