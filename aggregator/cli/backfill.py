"""``ctagg backfill CONFIG --since DATE [--until DATE] [--rate EVENTS_PER_S]``: collect a
window of history at a bounded rate; interrupt it (Ctrl-C, SIGTERM) and run it again to go on
where it stopped (aggregator/service/backfill.py)."""

from __future__ import annotations

import argparse
import sys
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from aggregator.cli._common import (
    NO_SINKS,
    config_arg,
    human_secs,
    json_line,
    load_or_exit,
    open_state,
    when,
)
from aggregator.cli._errors import EXIT_CONFIG, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, CliError

if TYPE_CHECKING:
    from aggregator.service.backfill import BackfillReport


def add_backfill_args(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    p.add_argument(
        "--since", required=True, type=when, help="first day to collect (UTC date, inclusive)"
    )
    p.add_argument(
        "--until", type=when, help="end of the window (UTC date, exclusive; default: none)"
    )
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        metavar="EVENTS_PER_S",
        help="archive at most this many events per second on average (default: unlimited)",
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")


def _day(t: datetime, *, end: bool) -> date:
    """A window bound as a day: an exclusive end that is not midnight includes its day."""
    d = t.date()
    if end and t.timetz().replace(tzinfo=None) != time(0):
        return d + timedelta(days=1)
    return d


def run_backfill(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from aggregator.cli._progress import progress
    from aggregator.service.backfill import backfill

    settings = load_or_exit(args.config, NO_SINKS)
    since = _day(args.since, end=False)
    until = _day(args.until, end=True) if args.until else None
    if until is not None and until <= since:
        raise CliError(
            f"--until {until.isoformat()} is not after --since {since.isoformat()}",
            "give a window that ends after it starts",
            EXIT_CONFIG,
        )
    if args.rate is not None and args.rate <= 0:
        raise CliError(f"--rate {args.rate:g}: must be above 0", "", EXIT_CONFIG)
    apps: list[Any] = []

    def stop_gracefully() -> None:
        if not apps:
            raise KeyboardInterrupt
        print(
            "ctagg backfill: stopping after the objects in flight (again to abort); run the "
            "same command again to continue",
            file=sys.stderr,
        )
        apps[0].request_stop()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)  # a second one interrupts at once

    async def go() -> BackfillReport:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop_gracefully)
        window = f"{since.isoformat()}..{until.isoformat() if until else ''}"
        with progress(f"backfill {window}", unit="objects") as bar:
            return await backfill(
                settings,
                since,
                until,
                rate=args.rate,
                progress=bar.report,
                on_app=apps.append,
            )

    open_state(settings, "ctagg backfill").close()  # named before any AWS call
    report = asyncio.run(go())
    if args.json:
        print(json_line(report.as_dict()))
    else:
        print(render_backfill(report))
    if report.stopped:
        return EXIT_INTERRUPTED
    return EXIT_PARTIAL if report.errors or report.failed_accounts else EXIT_OK


def render_backfill(r: BackfillReport) -> str:
    window = f"{r.since} .. {r.until or 'now'}"
    head = "stopped" if r.stopped else "done"
    lines = [
        f"ctagg backfill {window}: {head} in {human_secs(r.duration_secs)}",
        f"  window    {r.days_opened} day prefixes opened in {r.streams} streams, "
        f"{r.days_closed_before} done before",
        f"  objects   {r.objects:,} handled, {r.quarantined:,} quarantined",
        f"  events    {r.events_in:,} read, {r.duplicates:,} duplicates dropped, "
        f"{r.events_archived:,} archived",
    ]
    if r.waited_secs:
        lines.append(f"  rate      held back {human_secs(r.waited_secs)} by --rate")
    if r.errors or r.failed_accounts or r.problems:
        lines.append(
            f"  problems  {r.errors} errors, {r.failed_accounts} accounts with failures"
            + (f", {len(r.problems)} streams not listed" if r.problems else "")
            + "; see 'ctagg status CONFIG'"
        )
    if r.stopped:
        lines.append("  run the same command again to continue where it stopped")
    return "\n".join(lines)
