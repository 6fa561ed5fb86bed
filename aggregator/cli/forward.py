"""``ctagg replay``."""

from __future__ import annotations

import argparse

from aggregator.cli._common import NO_SINKS, config_arg, load_or_exit, when
from aggregator.cli._errors import EXIT_ACCESS, EXIT_CONFIG, EXIT_OK, EXIT_PARTIAL, CliError


def add_replay_args(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    p.add_argument("--connector", required=True, help="forward.connectors[].name")
    p.add_argument("--since", required=True, type=when, help="ISO date/time (UTC)")
    p.add_argument("--until", required=True, type=when, help="ISO date/time, exclusive")


def run_replay(args: argparse.Namespace) -> int:
    import asyncio

    from aggregator.forward.replay import replay_with_settings
    from connectors.base import Fatal

    settings = load_or_exit(args.config, NO_SINKS | {"forward", "normalize"})
    names = [c.name for c in settings.forward.connectors if c.enabled]
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
    print(
        f"replayed {report.events} events from {report.objects} central objects to "
        f"{args.connector}: {report.delivered} delivered, {report.rejected} dead-lettered"
    )
    return EXIT_OK if report.rejected == 0 else EXIT_PARTIAL
