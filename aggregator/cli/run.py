"""``ctagg run``: the daemon (aggregator/service/daemon.py)."""

from __future__ import annotations

import argparse

from aggregator.cli._common import config_arg, load_or_exit, shard_arg


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
    p.add_argument(
        "--health-port",
        type=int,
        default=None,
        help="the health/metrics port (default: service.health_port; 0 picks a free one)",
    )
    shard_arg(p)
    p.add_argument(
        "--shards",
        type=_shard_count,
        default=None,
        metavar="N",
        help="run N shards on this host: N processes 'ctagg run CONFIG --shard I/N', shard I "
        "on health port service.health_port + I; SIGTERM/SIGINT are passed on to them",
    )


def _shard_count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"not a shard count: {text!r} (a whole number >= 1)")
    return n


def run_run(args: argparse.Namespace) -> int:
    """The scheduler, the health/metrics port, a clean SIGTERM."""
    import asyncio
    import sys

    from aggregator.service import daemon

    if getattr(args, "shards", None) is not None:
        if args.shard is not None:
            from aggregator.cli._errors import EXIT_CONFIG

            print("ctagg run: give --shard I/N or --shards N, not both", file=sys.stderr)
            return EXIT_CONFIG
        return run_shards(args)
    settings = load_or_exit(args.config, shard=args.shard)
    overrides = {
        k: v
        for k, v in (
            ("ingest_interval_secs", args.interval_secs),
            ("discovery_interval_secs", args.discovery_interval_secs),
            ("health_port", args.health_port),
        )
        if v is not None
    }
    if overrides:
        service = settings.service.model_copy(update=overrides)
        settings = settings.model_copy(update={"service": service})
    return asyncio.run(daemon.serve(settings))


def run_shards(args: argparse.Namespace) -> int:
    """``ctagg run CONFIG --shards N``: N child processes ``ctagg run CONFIG --shard I/N``
    (health port ``service.health_port + I``, or 0 each when it is 0); SIGTERM and SIGINT are
    passed on to every child; exits when all have exited, with the first non-zero exit code
    of a child (0 when all exited cleanly)."""
    import signal
    import subprocess
    import sys

    settings = load_or_exit(args.config)  # a bad config is said once, not N times
    count: int = args.shards
    base = settings.service.health_port if args.health_port is None else args.health_port
    children: list[subprocess.Popen[bytes]] = []
    forwarded: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        forwarded.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for i in range(count):
            cmd = [sys.executable, "-m", "aggregator", "--log-level", args.log_level]
            cmd += ["--log-format", args.log_format] + (["--debug"] if args.debug else [])
            cmd += ["run", args.config, "--shard", f"{i}/{count}"]
            cmd += ["--health-port", str(base + i if base else 0)]
            for flag, value in (
                ("--interval-secs", args.interval_secs),
                ("--discovery-interval-secs", args.discovery_interval_secs),
            ):
                if value is not None:
                    cmd += [flag, str(value)]
            if forwarded:  # stopped while starting: start no more
                break
            children.append(subprocess.Popen(cmd))  # noqa: S603 - our own interpreter and CLI
        codes = [child.wait() for child in children]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    bad = [c for c in codes if c != 0]
    if not bad:
        return 0
    if forwarded and all(c in (130, -signal.SIGTERM, -signal.SIGINT) for c in bad):
        return 130
    return next(c if c > 0 else 128 - c for c in bad)
