"""``ctagg run``: the daemon (aggregator/service/daemon.py)."""

from __future__ import annotations

import argparse

from aggregator.cli._common import config_arg, load_or_exit


def add_run_args(p: argparse.ArgumentParser) -> None:
    config_arg(p)
    p.add_argument(
        "--interval-secs",
        type=float,
        default=None,
        help="between ingest cycles (default: service.ingest_interval_secs)",
    )
    p.add_argument(
        "--discovery-interval-secs",
        type=float,
        default=None,
        help="between discovery refreshes (default: service.discovery_interval_secs)",
    )


def run_run(args: argparse.Namespace) -> int:
    """The scheduler, the health/metrics port, a clean SIGTERM."""
    import asyncio

    from aggregator.service import daemon

    settings = load_or_exit(args.config)
    overrides = {
        k: v
        for k, v in (
            ("ingest_interval_secs", args.interval_secs),
            ("discovery_interval_secs", args.discovery_interval_secs),
        )
        if v is not None
    }
    if overrides:
        service = settings.service.model_copy(update=overrides)
        settings = settings.model_copy(update={"service": service})
    return asyncio.run(daemon.serve(settings))
