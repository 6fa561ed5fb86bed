"""``ctagg replay`` and ``ctagg dead-letters``; and the forwarding block of ``ctagg status``."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from aggregator.cli._common import config_arg, human_secs, json_arg, json_line, load_or_exit, when

if TYPE_CHECKING:
    from aggregator.config import Settings


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

    settings = load_or_exit(args.config)
    names = _enabled(settings)
    if args.connector not in names:
        print(f"no enabled connector named {args.connector!r}; have {names}")
        return 2
    if args.until <= args.since:
        print("--until must be after --since")
        return 2
    try:
        report = asyncio.run(replay_with_settings(settings, args.connector, args.since, args.until))
    except Fatal as exc:
        print(f"replay stopped: {exc}")
        return 1
    except GaveUp as exc:
        print(f"replay stopped: {args.connector} is not accepting events ({exc}); try again later")
        return 1
    filtered = f", {report.filtered} filtered out" if report.filtered else ""
    resolved = f", {report.resolved} dead letter(s) resolved" if report.resolved else ""
    print(
        f"replayed {report.events} events from {report.objects} central objects to "
        f"{args.connector}: {report.delivered} delivered, {report.rejected} dead-lettered"
        f"{filtered}{resolved}"
    )
    return 0 if report.rejected == 0 else 1


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
    return f"s3://{bucket}/{row['central_key']}#{row['record_index']}"


def run_dead_letters(args: argparse.Namespace) -> int:
    settings = load_or_exit(args.config)
    configured = [c.name for c in settings.forward.connectors]
    if args.connector is not None and args.connector not in configured:
        print(f"no connector named {args.connector!r}; have {configured}", file=sys.stderr)
        return 2
    if args.retry:
        return _retry(args, settings)
    from aggregator.forward.store import ForwardStore
    from aggregator.state import State

    state = State(settings.state.path)
    try:
        rows = ForwardStore(state).dead_letters(args.connector, include_resolved=args.all)
    finally:
        state.close()
    bucket = settings.archive.bucket
    if args.json:
        for r in rows:
            print(json_line({**r, "archive": _pointer(bucket, r)}))
        return 0
    if not rows:
        print("no dead letters" if args.all else "no open dead letters")
        return 0
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
    return 0


def _retry(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from aggregator.forward.replay import GaveUp, retry_with_settings
    from aggregator.forward.store import ForwardStore
    from aggregator.state import State
    from connectors.base import Fatal

    names = [args.connector] if args.connector else _enabled(settings)
    if args.connector is not None and args.connector not in _enabled(settings):
        print(f"connector {args.connector!r} is not enabled", file=sys.stderr)
        return 2
    state = State(settings.state.path)
    try:
        store = ForwardStore(state)
        todo = [n for n in names if store.open_dead_letters(n)]
    finally:
        state.close()
    if not todo:
        print("no open dead letters to retry")
        return 0
    code = 0
    for name in todo:
        try:
            report = asyncio.run(retry_with_settings(settings, name))
        except Fatal as exc:
            print(f"{name}: retry stopped: {exc}")
            code = 1
            continue
        except GaveUp as exc:
            print(f"{name}: not accepting events ({exc}); the dead letters stay open")
            code = 1
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
            code = 1
    return code


# ---------------------------------------------------------------------------- status


def forwarding_status(settings: Settings, *, as_json: bool) -> None:
    """The forwarding block of ``ctagg status``: per connector its state, cursor, backlog,
    lag (how long the oldest undelivered central object has waited), last delivery and open
    dead letters, from the state (the daemon need not run)."""
    import time

    from aggregator.forward.store import ForwardStore
    from aggregator.state import State

    configured = {c.name: c for c in settings.forward.connectors}
    if not configured:
        return
    state = State(settings.state.path)
    try:
        store = ForwardStore(state)
        rows = {r.connector: r for r in store.connectors()}
        never = {n: state.ledger.count_from(0) for n in configured if n not in rows}
    finally:
        state.close()
    now = time.time()
    out: list[dict[str, Any]] = []
    for name, c in configured.items():
        r = rows.get(name)
        item: dict[str, Any] = {"connector": name, "type": c.type, "enabled": c.enabled}
        if r is None:
            item.update(state="no cursor yet", backlog=never[name])
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
        r = rows[name]
        out.append({"connector": name, "state": "not configured", "backlog": r.backlog})
    if as_json:
        for item in out:
            print(json_line({"forward": item}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="forwarding: per connector")
    for col in ("connector", "state", "cursor", "backlog", "lag", "last delivery", "dead",
                "reason"):  # fmt: skip
        table.add_column(col, no_wrap=col != "reason", overflow="fold")
    for item in out:
        cur = item.get("cursor")
        last = item.get("last_delivered_secs")
        state_text = str(item["state"])
        color = {"ok": "green", "failing": "yellow", "fatal": "red"}.get(state_text)
        table.add_row(
            item["connector"],
            f"[{color}]{state_text}[/{color}]" if color else state_text,
            f"{cur['ledger_id']}:{cur['offset']}" if cur else "-",
            str(item.get("backlog", "-")),
            human_secs(item.get("lag_secs")) if cur else "-",
            f"{human_secs(last)} ago" if last is not None else "never",
            str(item.get("dead_letters_open", 0)),
            str(item.get("reason") or "")[:160],
        )
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)
