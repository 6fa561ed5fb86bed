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

    from aggregator import retention

    settings = load_or_exit(args.config)
    report = asyncio.run(retention.run_once(settings, dry_run=args.dry_run))
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        print(retention.render_report(report))
    return 0 if report.ok else 1


def _integrity(name: str) -> Run:
    def run(args: argparse.Namespace) -> int:
        from aggregator import integrity_cli

        return int(getattr(integrity_cli, name)(args))

    return run


def _integrity_args(name: str) -> AddArgs:
    def add(p: argparse.ArgumentParser) -> None:
        from aggregator import integrity_cli

        getattr(integrity_cli, name)(p)

    return add


# ---------------------------------------------------------------- detect


def _detect_args(p: argparse.ArgumentParser) -> None:
    from aggregator.detect.cli import add_arguments

    add_arguments(p)


def _run_detect(args: argparse.Namespace) -> int:
    from aggregator.detect.cli import run

    return run(args)


# ---------------------------------------------------------------- discover


def _discover_args(p: argparse.ArgumentParser) -> None:
    _config_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _run_discover(args: argparse.Namespace) -> int:
    from aggregator.discovery import run_cli

    return run_cli(load_or_exit(args.config), as_json=args.json)


# ---------------------------------------------------------------- doctor


def _doctor_args(p: argparse.ArgumentParser) -> None:
    _config_arg(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _run_doctor(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from aggregator import doctor
    from aggregator.discovery import DiscoveryError

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


COMMANDS: list[tuple[str, str, AddArgs, Run]] = [
    ("validate", "check a config file without touching the network", _config_arg, _run_validate),
    ("retention", "expire the central archive and prune state", _retention_args, _run_retention),
    (
        "doctor",
        "check live access per account x region (assume, list, read, write central)",
        _doctor_args,
        _run_doctor,
    ),
    # integrity room (aggregator/integrity_cli.py)
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
    ("detect", "run detection rules over CloudTrail files or stdin", _detect_args, _run_detect),
    (
        "discover",
        "list the accounts, regions, trails and log prefixes that would be collected",
        _discover_args,
        _run_discover,
    ),
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
