"""``ctagg``: the command line, the top floor. Every command parses its arguments, calls a
stage, and prints; nothing below this package imports it (an import-linter contract).

Each subcommand is one row of :data:`COMMANDS`: (name, help, add_arguments, run); ``run``
returns the exit code. Command modules import only the standard library at module level, so
``ctagg --help`` starts in a fraction of a second; a command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from aggregator import __version__
from aggregator.cli import (
    archive,
    backfill,
    config,
    demo,
    detect,
    discover,
    forward,
    ingest,
    integrity,
    run,
)
from aggregator.cli import normalize as normalize_cmd
from aggregator.cli._common import AddArgs, Run, config_and_json
from aggregator.cli._errors import EXIT_CODES, EXIT_INTERRUPTED, report

COMMANDS: list[tuple[str, str, AddArgs, Run]] = [
    (
        "validate",
        "check a config file without touching the network",
        config.add_validate_args,
        config.run_validate,
    ),
    (
        "discover",
        "list the accounts, regions, trails and log prefixes that would be collected",
        discover.add_discover_args,
        discover.run_discover,
    ),
    (
        "doctor",
        "check live access per account x region (assume, list, read, write central)",
        discover.add_doctor_args,
        discover.run_doctor,
    ),
    (
        "once",
        "run one ingest cycle (discovery, collect, dedupe, archive) and exit",
        ingest.add_once_args,
        ingest.run_once,
    ),
    (
        "backfill",
        "collect a window of history, rate-limited; run again to resume",
        backfill.add_backfill_args,
        backfill.run_backfill,
    ),
    ("run", "run as a daemon until SIGTERM", run.add_run_args, run.run_run),
    (
        "status",
        "per account × region progress, lag and errors (reads state only)",
        ingest.add_status_args,
        ingest.run_status,
    ),
    (
        "quarantine",
        "list quarantined source objects with their reasons",
        config_and_json,
        ingest.run_quarantine,
    ),
    (
        "retry-quarantined",
        "try quarantined objects again in the next cycle",
        ingest.add_retry_args,
        ingest.run_retry,
    ),
    (
        "replay",
        "re-send archived events to one connector",
        forward.add_replay_args,
        forward.run_replay,
    ),
    (
        "dead-letters",
        "list the events sinks rejected for good; --retry sends them again",
        forward.add_dead_letter_args,
        forward.run_dead_letters,
    ),
    (
        "normalize",
        "print CloudTrail events as ECS, OCSF or raw JSON lines",
        normalize_cmd.add_arguments,
        normalize_cmd.run,
    ),
    (
        "detect",
        "run detection rules over CloudTrail files or stdin",
        detect.add_arguments,
        detect.run,
    ),
    (
        "alerts",
        "list the alerts detection raised and stored (newest first)",
        detect.add_alerts_args,
        detect.run_alerts,
    ),
    (
        "audit",
        "audit every account x region's CloudTrail setup (CIS)",
        integrity.add_audit_args,
        integrity.run_audit,
    ),
    (
        "completeness",
        "expected (CloudTrail digests) vs ingested log files per hour",
        integrity.add_completeness_args,
        integrity.run_completeness,
    ),
    (
        "validate-digests",
        "validate CloudTrail digests and the log files they list",
        integrity.add_validate_args,
        integrity.run_validate_digests,
    ),
    (
        "archive-digest",
        "write the central archive's signed hourly digests now",
        archive.add_archive_args,
        archive.run_archive_digest,
    ),
    (
        "verify-archive",
        "verify the central archive end to end against its digests",
        archive.add_verify_args,
        archive.run_verify_archive,
    ),
    (
        "reconcile",
        "check the central archive against the state (orphans, missing, modified, "
        "duplicates); --repair removes redundant copies",
        integrity.add_reconcile_args,
        integrity.run_reconcile,
    ),
    (
        "retention",
        "expire the central archive and prune state",
        archive.add_retention_args,
        archive.run_retention,
    ),
    (
        "demo",
        "run the real pipeline against an embedded moto Organization",
        demo.add_demo_args,
        demo.run_demo,
    ),
]


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _epilog() -> str:
    codes = "\n".join(f"  {code:<4} {text}" for code, text in EXIT_CODES.items())
    return f"exit codes (every command):\n{codes}"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ctagg",
        description="cloudtrail-aggregator: collect, dedupe, verify and forward CloudTrail.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--version", action="version", version=f"ctagg {__version__}")
    ap.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="DEBUG, INFO, WARNING or ERROR (any case)",
    )
    ap.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")
    ap.add_argument("--debug", action="store_true", help="on an error, print the traceback too")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, add_args, run_fn in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(_run=run_fn)
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
        return EXIT_INTERRUPTED
    except Exception as exc:
        return report(exc, prog=f"ctagg {args.command}", debug=args.debug)
