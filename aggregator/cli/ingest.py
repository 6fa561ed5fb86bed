"""``ctagg once | status | quarantine | retry-quarantined``: one ingest cycle, and what the
state says about collection."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aggregator.cli._common import (
    NO_SINKS,
    STATE_ONLY,
    config_arg,
    human_secs,
    json_line,
    load_or_exit,
    open_state,
    shard_arg,
    source_label,
)
from aggregator.cli._errors import EXIT_OK, EXIT_PARTIAL, CliError, explain
from aggregator.cli._table import Column

if TYPE_CHECKING:
    from rich.console import Console

    from aggregator.config import Settings
    from aggregator.state import StatusRow


def add_once_args(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    p.add_argument(
        "--json",
        action="store_true",
        help="print the cycle report as one JSON line (the default when stdout is not a terminal)",
    )
    shard_arg(p)


def run_once(args: argparse.Namespace) -> int:
    """0: a clean cycle; 4: it ran with errors; 3: discovery could not run; 6: the state
    cannot be used; 7: another process writes the state (``_errors``)."""
    import asyncio

    from aggregator.log import get_logger
    from aggregator.service.app import App
    from aggregator.service.scheduler import describe_error

    log = get_logger("aggregator.cli")

    settings = load_or_exit(args.config, NO_SINKS, shard=getattr(args, "shard", None))

    async def go() -> dict[str, object]:
        app = App(settings, writer="ctagg once")
        try:
            report = await app.run_once()
            done = report.as_dict()
            if not report.stopped:  # what a resize starts the new shards from
                try:
                    published = await app.ingestor.release()
                except Exception as exc:  # the cycle's work stands; the exit code says it
                    log.error("snapshot.failed", error=describe_error(exc))
                    done["errors"] = int(done["errors"]) + 1
                    done["snapshot"] = "failed"
                else:
                    if published is not None:
                        done["snapshot"] = published.key
            return done
        finally:
            await app.close()

    report = asyncio.run(go())
    if getattr(args, "json", False) or not sys.stdout.isatty():
        print(json_line(report))
    else:
        print(render_once(report))
    return EXIT_PARTIAL if report["errors"] or report["failed_accounts"] else EXIT_OK


def render_once(r: dict[str, Any]) -> str:
    """A short summary of one cycle for people (``once`` on a terminal)."""
    kinds: dict[str, int] = dict(r.get("by_kind") or {})
    logs = kinds.get("log", 0) + kinds.get("insight", 0)
    problems = f"{r['errors']} errors, {r['failed_accounts']} accounts with failures"
    lines = [
        f"ctagg once: cycle done in {human_secs(r['duration_secs'])}"
        + (" (stopped early)" if r.get("stopped") else ""),
        f"  scope     {r['accounts']} accounts, {r['regions']} regions, {r['sources']} sources",
        f"  objects   {logs:,} log objects, {kinds.get('digest', 0):,} digests, "
        f"{r['quarantined']:,} quarantined",
        f"  events    {r['events_in']:,} read, {r['duplicates']:,} duplicates dropped, "
        f"{r['events_archived']:,} archived in {r['central_objects']:,} central objects",
        f"  problems  {problems}" + ("; see 'ctagg status CONFIG'" if r["errors"] else ""),
    ]
    if r.get("lookup_windows"):
        lines.insert(
            4,
            f"  lookup    {r['lookup_windows']} LookupEvents windows, "
            f"{r['lookup_requests']} requests, {r['gaps_filled']} gaps filled",
        )
    return "\n".join(lines)


def run_status(args: argparse.Namespace) -> int:
    import time
    from dataclasses import asdict

    from aggregator.cli.forward import forwarding_items, print_forwarding

    settings = load_or_exit(args.config, STATE_ONLY, shard=getattr(args, "shard", None))
    shard = shard_line(settings)
    state = open_state(settings, "ctagg status", read_only=True)
    try:
        rows = state.sources.status()
        failures = state.failures.rows()
        forward = forwarding_items(settings, state)
    finally:
        state.close()
    now = time.time()
    owners: dict[str, Any] | None = None
    owners_error: CliError | None = None
    if shard is not None and not args.local:
        try:
            owners = read_owners(args.config, getattr(args, "shard", None), now)
        except Exception as exc:  # the local rows are still shown; the exit code says it
            owners_error = explain(exc)
            print(owners_error.line(), file=sys.stderr)
    code = EXIT_OK if owners_error is None else owners_error.code
    if args.json:
        if shard is not None:
            print(json_line({"shard": shard}))
        if owners is not None:
            print(json_line({"layout": owners["layout"]}))
            for owner in owners["shards"]:
                print(json_line({"shard_owner": owner}))
        elif owners_error is not None:
            print(json_line({"shard_owners_error": owners_error.what}))
        for r in rows:
            lag = lag_secs(r.newest_event_time, now)
            print(
                json_line(
                    {**asdict(r), "source": source_label(r.bucket, r.prefix), "lag_secs": lag}
                )
            )
        for f in failures:
            print(json_line({"failure": f}))
        for item in forward:
            print(json_line({"forward": item}))
        return code
    from aggregator.cli._table import console_for, esc

    console = console_for()

    if shard is not None:
        console.print(
            f"shard {shard['index']} of {shard['count']} (0 .. {shard['count'] - 1}): "
            f"{len(shard['slots_owned'])} of {shard['slots']} slots, state {shard['state']}"
        )
        if owners is not None:
            print_owners(console, owners, shard["index"])
        elif owners_error is not None:
            console.print(f"[red]shards' writers unknown[/red]: {esc(owners_error.what)}")
    print_status(console, rows, failures, now)
    print_forwarding(console, forward)
    return code


def read_owners(config: str, shard: tuple[int, int] | None, now: float) -> dict[str, Any]:
    """The layout record and every shard's writer marker and snapshot, from the central
    bucket (the config read again with the sections the archive's identity needs). Each
    writer and snapshot gets ``age_secs``."""
    import asyncio

    from aggregator.archive.store import opened
    from aggregator.aws.clients import Aws
    from aggregator.config import Settings, load_settings
    from aggregator.ingest.resize import shard_owners

    uses = STATE_ONLY | {"aws", "credentials"}
    settings = load_settings(config, defer=tuple(set(Settings.model_fields) - uses), shard=shard)

    async def go() -> dict[str, Any]:
        async with opened(settings, Aws(settings.aws)) as archive:
            return await shard_owners(settings, archive)

    out = asyncio.run(go())
    for owner in out["shards"]:
        for part, at in (("writer", "written_at"), ("snapshot", "taken_at")):
            if owner[part] is not None:
                owner[part]["age_secs"] = lag_secs(owner[part].get(at), now)
    return out


OWNER_COLUMNS = (
    Column("shard", 0, justify="right", elide=False),
    Column("slots", 1, justify="right", elide=False),
    Column("writer (host, pid)", 2, min_width=12),
    Column("generation", 3, justify="right", elide=False),
    Column("last claimed", 4, elide=False),
    Column("snapshot", 5, elide=False),
)


def print_owners(console: Console, owners: dict[str, Any], me: int) -> None:
    """The layout the central bucket records and each shard's slots, writer and snapshot."""
    from aggregator.cli._table import esc, print_table

    layout = owners["layout"]
    if layout is None:
        console.print("layout: none recorded yet (the first shard's first cycle records it)")
    else:
        fits = "fits this config" if layout["agrees"] else "[red]differs from this config[/red]"
        before = layout["previous"]
        since = "" if before is None else f", resized from {before['shards']} shard(s)"
        console.print(
            f"layout: {layout['shards']} shard(s) of {layout['slots']} slots, epoch "
            f"{layout['epoch']}{since}: {fits}"
        )
    cells = []
    for o in owners["shards"]:
        w, snap = o["writer"], o["snapshot"]
        if w is None:
            writer, generation, claimed = "-", "-", "never"
        else:
            writer = f"{w.get('host')} ({w.get('pid')})"
            writer += " retired" if w.get("retired") else " stopped" if w.get("stopped_at") else ""
            generation = str(w.get("generation"))
            claimed = f"{human_secs(w.get('age_secs'))} ago"
        if snap is None:
            taken = "none"
        else:
            current = w is not None and snap.get("generation") == w.get("generation")
            taken = f"{human_secs(snap.get('age_secs'))} ago, generation {snap.get('generation')}"
            taken += " (current)" if current else ""
        cells.append(
            [
                f"{o['index']}" + (" *" if o["index"] == me else ""),
                str(o["slots"]),
                esc(writer),
                generation,
                claimed,
                esc(taken),
            ]
        )
    print_table(
        console, OWNER_COLUMNS, cells, title="shards (* this one): slots, writers, snapshots"
    )


def add_status_args(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument(
        "--local",
        action="store_true",
        help="the local state only: with shard.count > 1, skip reading the shards' layout, "
        "writers and snapshots from the central bucket",
    )
    shard_arg(p)


def shard_line(settings: Settings) -> dict[str, Any] | None:
    """This config's shard (None with one shard): index, count, slots and the slots owned."""
    from aggregator.aws.slots import owned_slots

    shard = settings.shard
    if shard.count <= 1:
        return None
    return {
        "index": shard.ordinal,
        "count": shard.count,
        "slots": shard.slots,
        "slots_owned": owned_slots(shard),
        "state": settings.state.path,
    }


def lag_secs(newest: str | None, now: float) -> float | None:
    """Seconds from the newest archived eventTime to ``now`` (None when unknown or odd)."""
    from datetime import UTC, datetime

    if not newest:
        return None
    try:
        t = datetime.fromisoformat(newest.replace("Z", "+00:00"))
    except ValueError:  # a record with an odd eventTime must not break the report
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return round(now - t.timestamp())


STATUS_COLUMNS = (
    Column("account", 0, elide=False),
    Column("region", 1, elide=False),
    Column("source", 2, min_width=10),
    Column("lag", 3, justify="right", elide=False),
    Column("logs", 4, justify="right", elide=False),
    Column("events", 5, justify="right", elide=False),
    Column("errors", 6, justify="right", elide=False),
    Column("digests", 7, justify="right", elide=False),
    Column("newest eventTime", 8, elide=False),
    Column("last error", 10, min_width=12, max_width=80),
    Column("last log object", 9, min_width=16),
)


def print_status(
    console: Console, rows: Sequence[StatusRow], failures: Sequence[dict[str, Any]], now: float
) -> None:
    """The status table (fitted to the terminal, whole on a pipe) and the account failures."""
    from aggregator.cli._table import esc, print_table

    cells = [
        [
            r.account_id,
            r.region,
            source_label(r.bucket, r.prefix),
            human_secs(lag_secs(r.newest_event_time, now)),
            str(r.objects),
            str(r.events),
            f"[red]{r.errors}[/red]" if r.last_error else str(r.errors),
            str(r.digests),
            r.newest_event_time or "-",
            esc(r.last_error or ""),
            (r.last_key or "-").rsplit("/", 1)[-1],
        ]
        for r in rows
    ]
    print_table(
        console,
        STATUS_COLUMNS,
        cells,
        title="ctagg status: per account × region source (logs, events; digests apart)",
    )
    if not rows:
        console.print("no source handled yet: run 'ctagg once CONFIG' or the daemon")
    for f in failures:
        console.print(
            f"[red]account {f['account_id']}[/red] {esc(f['stage'])}: {esc(f['reason'])} "
            f"(x{f['count']})"
        )


def run_quarantine(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    settings = load_or_exit(args.config, STATE_ONLY)
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
    settings = load_or_exit(args.config, STATE_ONLY)
    state = open_state(settings, "ctagg retry-quarantined", writer=False)
    try:
        n = state.quarantine.retry(args.bucket)
    finally:
        state.close()
    print(f"{n} quarantined object(s) will be tried again in the next cycle")
    return 0
