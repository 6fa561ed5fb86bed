"""``ctagg``: the command line. Entry points and wiring only; the work lives in the rooms.

Each subcommand is one row of COMMANDS: (name, help, add_arguments, run). ``run`` returns the
exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from aggregator import __version__
from aggregator.config import ConfigError, Settings, load_settings
from aggregator.forward import forwarder as forward

AddArgs = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help="YAML config file")


def load_or_exit(path: str) -> Settings:
    """Load a config or print every problem (with its path) and exit 2."""
    try:
        return load_settings(path)
    except ConfigError as exc:
        print(f"config {path}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        raise SystemExit(2) from None


# ---------------------------------------------------------------- validate


def _run_validate(args: argparse.Namespace) -> int:
    load_or_exit(args.config)
    print(f"{args.config}: ok")
    return 0


# ---------------------------------------------------------------- retention


def _retention_args(p: argparse.ArgumentParser) -> None:
    _config_arg(p)
    p.add_argument("--dry-run", action="store_true", help="list what would go; change nothing")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _run_retention(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from aggregator.archive import retention

    settings = load_or_exit(args.config)
    report = asyncio.run(retention.run_once(settings, dry_run=args.dry_run))
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        print(retention.render_report(report))
    return 0 if report.ok else 1


def _integrity(name: str) -> Run:
    def run(args: argparse.Namespace) -> int:
        from aggregator.cli import integrity as integrity_cli

        return int(getattr(integrity_cli, name)(args))

    return run


def _integrity_args(name: str) -> AddArgs:
    def add(p: argparse.ArgumentParser) -> None:
        from aggregator.cli import integrity as integrity_cli

        getattr(integrity_cli, name)(p)

    return add


# ---------------------------------------------------------------- normalize


def _normalize_args(p: argparse.ArgumentParser) -> None:
    from aggregator.cli.normalize import add_arguments

    add_arguments(p)


def _run_normalize(args: argparse.Namespace) -> int:
    from aggregator.cli.normalize import run

    return run(args)


# ---------------------------------------------------------------- detect


def _detect_args(p: argparse.ArgumentParser) -> None:
    from aggregator.cli.detect import add_arguments

    add_arguments(p)


def _run_detect(args: argparse.Namespace) -> int:
    from aggregator.cli.detect import run

    return run(args)


# ---------------------------------------------------------------- discover


def _discover_args(p: argparse.ArgumentParser) -> None:
    _config_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _run_discover(args: argparse.Namespace) -> int:
    from aggregator.aws.discovery import run_cli

    return run_cli(load_or_exit(args.config), as_json=args.json)


# ---------------------------------------------------------------- doctor


def _doctor_args(p: argparse.ArgumentParser) -> None:
    _config_arg(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _run_doctor(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from aggregator.aws.discovery import DiscoveryError
    from aggregator.integrity import doctor

    settings = load_or_exit(args.config)
    try:
        report = asyncio.run(doctor.run_live(settings))
    except DiscoveryError as exc:
        print(f"doctor: discovery failed: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        from rich.console import Console

        console = Console()
        console.print(doctor.render_table(report))
        for line in doctor.render_text(report):
            console.print(line)
    return 0 if report.ok else 1


# ---------------------------------------------------------------- once / run


def _run_once(args: argparse.Namespace) -> int:
    import asyncio

    from aggregator.service.app import App

    settings = load_or_exit(args.config)

    async def go() -> dict[str, object]:
        app = App(settings)
        try:
            return (await app.run_once()).as_dict()
        finally:
            await app.close()

    report = asyncio.run(go())
    print(_json(report))
    return 1 if report["errors"] else 0


def _args_run(p: argparse.ArgumentParser) -> None:
    _config_arg(p)
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


def _run_run(args: argparse.Namespace) -> int:
    """The daemon (aggregator/daemon.py): scheduler, health/metrics port, clean SIGTERM."""
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


# ---------------------------------------------------------------- status / quarantine


def _args_json(p: argparse.ArgumentParser) -> None:
    _config_arg(p)
    p.add_argument("--json", action="store_true", help="one JSON object per line")


def _json(obj: object) -> str:
    import orjson

    return orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def _human_secs(secs: float | None) -> str:
    if secs is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if abs(secs) >= size:
            return f"{secs / size:.1f} {unit}"
    return f"{secs:.0f} s"


def _run_status(args: argparse.Namespace) -> int:
    import time
    from dataclasses import asdict
    from datetime import UTC, datetime

    from aggregator.state import State

    settings = load_or_exit(args.config)
    state = State(settings.state.path)
    try:
        rows = state.status()
        failures = state.failures()
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
            print(_json({**asdict(r), "lag_secs": lag(r.newest_event_time)}))
        for f in failures:
            print(_json({"failure": f}))
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
            _human_secs(lag(r.newest_event_time)),
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


def _run_quarantine(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from aggregator.state import State

    settings = load_or_exit(args.config)
    state = State(settings.state.path)
    try:
        rows = state.quarantined()
    finally:
        state.close()
    for q in rows:
        if args.json:
            print(_json(asdict(q)))
        else:
            print(f"{q.status:5} s3://{q.bucket}/{q.key}  ({q.attempts}x) {q.reason}")
    if not rows and not args.json:
        print("nothing quarantined")
    return 0


def _args_retry(p: argparse.ArgumentParser) -> None:
    _config_arg(p)
    p.add_argument("--bucket", help="only objects from this source bucket")


def _run_retry(args: argparse.Namespace) -> int:
    from aggregator.state import State

    settings = load_or_exit(args.config)
    state = State(settings.state.path)
    try:
        n = state.retry_quarantined(args.bucket)
    finally:
        state.close()
    print(f"{n} quarantined object(s) will be tried again in the next cycle")
    return 0


# ---------------------------------------------------------------- demo


def _args_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--workdir", default=".demo", help="where state, config and archive go")
    p.add_argument("--testdata", help="shared/testdata folder (default: found beside the repo)")


def _run_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from aggregator.service import demo

    testdata = Path(args.testdata) if args.testdata else demo.find_testdata(Path.cwd())
    testdata = testdata or demo.find_testdata()
    if testdata is None or not testdata.is_dir():
        print("ctagg demo: shared/testdata not found; pass --testdata DIR", file=sys.stderr)
        return 2
    summary = demo.run_demo(Path(args.workdir).resolve(), testdata)
    if args.json:
        print(_json(summary))
        return 0
    print(demo.render_summary(summary))
    return 0


COMMANDS: list[tuple[str, str, AddArgs, Run]] = [
    ("validate", "check a config file without touching the network", _config_arg, _run_validate),
    (
        "discover",
        "list the accounts, regions, trails and log prefixes that would be collected",
        _discover_args,
        _run_discover,
    ),
    (
        "doctor",
        "check live access per account x region (assume, list, read, write central)",
        _doctor_args,
        _run_doctor,
    ),
    (
        "once",
        "run one ingest cycle (discovery, collect, dedupe, archive) and exit",
        _config_arg,
        _run_once,
    ),
    ("run", "run as a daemon until SIGTERM", _args_run, _run_run),
    (
        "status",
        "per account × region progress, lag and errors (reads state only)",
        _args_json,
        _run_status,
    ),
    (
        "quarantine",
        "list quarantined source objects with their reasons",
        _args_json,
        _run_quarantine,
    ),
    (
        "retry-quarantined",
        "try quarantined objects again in the next cycle",
        _args_retry,
        _run_retry,
    ),
    (
        "replay",
        "re-send archived events to one connector",
        forward.add_replay_args,
        forward.run_replay,
    ),
    (
        "normalize",
        "print CloudTrail events as ECS, OCSF or raw JSON lines",
        _normalize_args,
        _run_normalize,
    ),
    ("detect", "run detection rules over CloudTrail files or stdin", _detect_args, _run_detect),
    (
        "audit",
        "audit every account x region's CloudTrail setup (CIS)",
        _integrity_args("add_audit_args"),
        _integrity("run_audit_cmd"),
    ),
    (
        "completeness",
        "expected (CloudTrail digests) vs ingested log files per hour",
        _integrity_args("add_completeness_args"),
        _integrity("run_completeness_cmd"),
    ),
    (
        "validate-digests",
        "validate CloudTrail digests and the log files they list",
        _integrity_args("add_validate_args"),
        _integrity("run_validate_cmd"),
    ),
    (
        "archive-digest",
        "write the central archive's signed hourly digests now",
        _integrity_args("add_archive_args"),
        _integrity("run_archive_digest_cmd"),
    ),
    (
        "verify-archive",
        "verify the central archive end to end against its digests",
        _integrity_args("add_verify_args"),
        _integrity("run_verify_archive_cmd"),
    ),
    ("retention", "expire the central archive and prune state", _retention_args, _run_retention),
    ("demo", "run the real pipeline against an embedded moto Organization", _args_demo, _run_demo),
]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ctagg",
        description="cloudtrail-aggregator: collect, dedupe, verify and forward CloudTrail.",
    )
    ap.add_argument("--version", action="version", version=f"ctagg {__version__}")
    ap.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    ap.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, add_args, run in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(_run=run)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    from aggregator import log

    args = build_parser().parse_args(argv)
    log.configure(
        args.log_level,
        json=None if args.log_format == "auto" else args.log_format == "json",
    )
    try:
        return int(args._run(args))
    except KeyboardInterrupt:
        return 130
