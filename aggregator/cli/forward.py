"""``ctagg replay``."""

from __future__ import annotations

import argparse

from aggregator.cli._common import config_arg, load_or_exit, when


def add_replay_args(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    p.add_argument("--connector", required=True, help="forward.connectors[].name")
    p.add_argument("--since", required=True, type=when, help="ISO date/time (UTC)")
    p.add_argument("--until", required=True, type=when, help="ISO date/time, exclusive")


def run_replay(args: argparse.Namespace) -> int:
    import asyncio

    from aggregator.forward.replay import replay_with_settings
    from connectors.base import Fatal

    settings = load_or_exit(args.config)
    names = [c.name for c in settings.forward.connectors if c.enabled]
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
    print(
        f"replayed {report.events} events from {report.objects} central objects to "
        f"{args.connector}: {report.delivered} delivered, {report.rejected} dead-lettered"
    )
    return 0 if report.rejected == 0 else 1
