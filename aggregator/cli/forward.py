"""``ctagg replay`` and ``ctagg dead-letters``; and the forwarding block of ``ctagg status``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from aggregator.cli._common import (
    NO_SINKS,
    config_arg,
    human_secs,
    json_arg,
    json_line,
    load_or_exit,
    open_state,
    when,
)
from aggregator.cli._errors import EXIT_ACCESS, EXIT_CONFIG, EXIT_OK, EXIT_PARTIAL, CliError
from aggregator.cli._table import Column

if TYPE_CHECKING:
    from rich.console import Console

    from aggregator.config import Settings
    from aggregator.state import State


def add_replay_args(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    p.add_argument("--connector", required=True, help="forward.connectors[].name")
    p.add_argument("--since", required=True, type=when, help="ISO date/time (UTC)")
    p.add_argument("--until", required=True, type=when, help="ISO date/time, exclusive")


def _enabled(settings: Settings) -> list[str]:
    return [c.name for c in settings.forward.connectors if c.enabled]


def run_replay(args: argparse.Namespace) -> int:
    import asyncio

    from aggregator.forward.replay import GaveUp, replay_with_settings
    from connectors.base import Fatal

    settings = load_or_exit(args.config, NO_SINKS | {"forward", "normalize"})
    names = _enabled(settings)
    if args.connector not in names:
        raise CliError(
            f"no enabled connector named {args.connector!r} "
            f"(enabled: {', '.join(names) or 'none'})",
            "name one of forward.connectors[].name",
            EXIT_CONFIG,
        )
    if args.until <= args.since:
        raise CliError(
            f"--until {args.until.isoformat()} is not after --since {args.since.isoformat()}",
            "give a window that ends after it starts",
            EXIT_CONFIG,
        )
    from aggregator.cli._progress import progress

    try:
        with progress(f"replay to {args.connector}", unit="objects") as bar:
            report = asyncio.run(
                replay_with_settings(
                    settings, args.connector, args.since, args.until, progress=bar.report
                )
            )
    except Fatal as exc:
        raise CliError(
            f"replay to {args.connector} stopped: {exc}",
            "fix the connector (credentials, URL) and replay again",
            EXIT_ACCESS,
        ) from exc
    except GaveUp as exc:
        raise CliError(
            f"replay to {args.connector} stopped: it is not accepting events ({exc})",
            "try again when the sink is back; nothing was lost (the archive keeps the events)",
            EXIT_PARTIAL,
        ) from exc
    import sys

    for m in report.modified:
        print(
            f"ctagg: refused s3://{settings.archive.bucket}/{m.key}: central object modified "
            f"(sha256 {m.actual} != ledger {m.expected}); none of its events was sent",
            file=sys.stderr,
        )
    filtered = f", {report.filtered} filtered out" if report.filtered else ""
    resolved = f", {report.resolved} dead letter(s) resolved" if report.resolved else ""
    refused = f", {len(report.modified)} modified object(s) refused" if report.modified else ""
    print(
        f"replayed {report.events} events from {report.objects} central objects to "
        f"{args.connector}: {report.delivered} delivered, {report.rejected} dead-lettered"
        f"{filtered}{resolved}{refused}"
    )
    return EXIT_OK if report.rejected == 0 and not report.modified else EXIT_PARTIAL


# ---------------------------------------------------------------------------- dead letters


def add_dead_letter_args(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    p.add_argument("--connector", help="only this forward.connectors[].name")
    json_arg(p, "one JSON object per line")
    p.add_argument("--all", action="store_true", help="also the resolved ones")
    p.add_argument(
        "--retry",
        action="store_true",
        help="send the open ones again from the archive (the normal path: filters, "
        "normalizer, batching); delivered ones are marked resolved",
    )


def _pointer(bucket: str, row: dict[str, Any]) -> str:
    if int(row["record_index"]) < 0:  # a whole central object (refused: it was modified)
        return f"s3://{bucket}/{row['central_key']}"
    return f"s3://{bucket}/{row['central_key']}#{row['record_index']}"


def run_dead_letters(args: argparse.Namespace) -> int:
    uses = NO_SINKS | {"forward", "normalize"} if args.retry else NO_SINKS
    settings = load_or_exit(args.config, uses)
    configured = [c.name for c in settings.forward.connectors]
    if args.connector is not None and args.connector not in configured:
        raise CliError(
            f"no connector named {args.connector!r} "
            f"(configured: {', '.join(configured) or 'none'})",
            "name one of forward.connectors[].name",
            EXIT_CONFIG,
        )
    if args.retry:
        return _retry(args, settings)
    from aggregator.forward.store import ForwardStore

    state = open_state(settings, "ctagg dead-letters", read_only=True)
    try:
        rows = ForwardStore(state).dead_letters(args.connector, include_resolved=args.all)
    finally:
        state.close()
    bucket = settings.archive.bucket
    if args.json:
        for r in rows:
            print(json_line({**r, "archive": _pointer(bucket, r)}))
        return EXIT_OK
    if not rows:
        print("no dead letters" if args.all else "no open dead letters")
        return EXIT_OK
    import time

    now = time.time()
    for r in rows:
        state_text = f"resolved ({r['resolution']})" if r["resolved_at"] else "open"
        print(
            f"{r['connector']:12} {state_text:20} {_pointer(bucket, r)}  x{r['attempts']}  "
            f"{human_secs(now - float(r['last_at']))} ago  {r['reason'][:200]}"
        )
    opened = sum(1 for r in rows if not r["resolved_at"])
    print(f"{len(rows)} dead letter(s), {opened} open; `--retry` sends the open ones again")
    return EXIT_OK


def _retry(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from aggregator.forward.replay import GaveUp, retry_with_settings
    from aggregator.forward.store import ForwardStore
    from connectors.base import Fatal

    names = [args.connector] if args.connector else _enabled(settings)
    if args.connector is not None and args.connector not in _enabled(settings):
        raise CliError(
            f"connector {args.connector!r} is not enabled",
            f"set enabled: true on forward.connectors[{args.connector}] to retry into it",
            EXIT_CONFIG,
        )
    state = open_state(settings, "ctagg dead-letters", writer=False)
    try:
        store = ForwardStore(state)
        todo = [n for n in names if store.open_dead_letters(n)]
    finally:
        state.close()
    if not todo:
        print("no open dead letters to retry")
        return EXIT_OK
    code = EXIT_OK
    for name in todo:
        try:
            report = asyncio.run(retry_with_settings(settings, name))
        except Fatal as exc:
            print(f"{name}: retry stopped: {exc}")
            code = EXIT_ACCESS
            continue
        except GaveUp as exc:
            print(f"{name}: not accepting events ({exc}); the dead letters stay open")
            code = code or EXIT_PARTIAL
            continue
        left = len(report.still_dead)
        print(f"{name}: {report.events} retried, {report.resolved} resolved, {left} still open")
        if args.json:
            for r in report.still_dead:
                print(json_line({**r, "archive": _pointer(settings.archive.bucket, r)}))
        else:
            for r in report.still_dead[:20]:
                print(f"  {_pointer(settings.archive.bucket, r)}  {r['reason'][:200]}")
        if left:
            code = code or EXIT_PARTIAL
    return code


# ---------------------------------------------------------------------------- status


def forwarding_items(settings: Settings, state: State) -> list[dict[str, Any]]:
    """The forwarding block of ``ctagg status``: per connector its state, cursor, backlog,
    lag (how long the oldest undelivered central object has waited), last delivery and open
    dead letters, from the state (the daemon need not run)."""
    import time

    from aggregator.forward.store import ForwardStore

    configured = {c.name: c for c in settings.forward.connectors}
    if not configured:
        return []
    store = ForwardStore(state)
    rows = {r.connector: r for r in store.connectors()}
    now = time.time()
    out: list[dict[str, Any]] = []
    for name, c in configured.items():
        r = rows.get(name)
        item: dict[str, Any] = {"connector": name, "type": c.type, "enabled": c.enabled}
        if r is None:
            item.update(state="no cursor yet", backlog=state.ledger.count_from(0))
        else:
            item.update(
                state=r.state if c.enabled else "disabled",
                reason=r.state_reason,
                state_since=r.state_since,
                cursor={"ledger_id": r.ledger_id, "offset": r.offset},
                backlog=r.backlog,
                lag_secs=(
                    round(now - r.oldest_pending_written_at) if r.oldest_pending_written_at else 0
                ),
                last_delivered_secs=(
                    round(now - r.last_delivered_at) if r.last_delivered_at else None
                ),
                delivered=r.delivered,
                rejected=r.rejected,
                filtered=r.filtered,
                dead_letters_open=r.dead_letters_open,
            )
        out.append(item)
    for name in sorted(set(rows) - set(configured)):
        out.append({"connector": name, "state": "not configured", "backlog": rows[name].backlog})
    return out


FORWARD_COLUMNS = (
    Column("connector", 0, elide=False),
    Column("state", 1, elide=False),
    Column("backlog", 2, justify="right", elide=False),
    Column("lag", 3, justify="right", elide=False),
    Column("last delivery", 4, elide=False),
    Column("dead", 5, justify="right", elide=False),
    Column("cursor", 7, elide=False),
    Column("reason", 6, min_width=12, max_width=160, wrap=True),
)


def print_forwarding(console: Console, items: list[dict[str, Any]]) -> None:
    """The forwarding table (fitted like the status table)."""
    if not items:
        return
    from aggregator.cli._table import esc, print_table

    cells = []
    for item in items:
        cur = item.get("cursor")
        last = item.get("last_delivered_secs")
        state_text = str(item["state"])
        color = {"ok": "green", "failing": "yellow", "fatal": "red"}.get(state_text)
        cells.append(
            [
                esc(item["connector"]),
                f"[{color}]{state_text}[/{color}]" if color else esc(state_text),
                str(item.get("backlog", "-")),
                human_secs(item.get("lag_secs")) if cur else "-",
                f"{human_secs(last)} ago" if last is not None else "never",
                str(item.get("dead_letters_open", 0)),
                f"{cur['ledger_id']}:{cur['offset']}" if cur else "-",
                esc(str(item.get("reason") or "")),
            ]
        )
    print_table(console, FORWARD_COLUMNS, cells, title="forwarding: per connector")
